"""``python -m eval film|music|speech|speed ...``: the benchmark suite's one entry point."""

import sys


def main(argv: list[str] | None = None) -> int:
    """Dispatch to the benchmark (film, music, speech) or the speed/memory benchmark."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "speed":
        from eval.speed import main as speed_main

        return speed_main(argv[1:])
    from eval.bench import main as bench_main

    return bench_main(argv)


if __name__ == "__main__":
    sys.exit(main())
