"""Catalogue throughput: minutes of audio separated per minute of wall time, plain
``demix separate`` against ``--files-together N`` (several files' chunks sharing model
calls) and ``demix separate --ray`` with 1 and 2 workers, in one run.

``python -m eval.throughput [--files 8] [--seconds 30] [--workers 1 2] [--together 4]
[--batch-size 4] [--model demix-small] [--head film] [--repeats 1] [--out FILE.md]``

Writes ``--files`` stereo 44.1 kHz clips (the synthetic demo clip, ``--seconds`` each) to a
temporary folder, then separates the whole folder with each configuration as a fresh
``demix separate`` process (so Ray's start-up and every model load are counted, as a user
pays them): the plain CLI with all CPU threads, the same with ``--files-together N`` for each
N of ``--together``, and ``--ray --workers N --jobs CPUs/N`` for each
N. Prints a markdown table (wall seconds, audio minutes per minute, speed-up over the plain
CLI) and the machine; the best of ``--repeats`` runs of each is kept.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from demix.demo import demo_clip

RATE = 44100


def write_inputs(folder: Path, files: int, seconds: float) -> float:
    """``files`` demo clips of ``seconds`` (each from its own seed); total audio seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        mix, _ = demo_clip(seconds, RATE, seed=i)
        sf.write(folder / f"clip{i:03d}.wav", mix.T.astype(np.float32), RATE, subtype="PCM_16")
    return files * seconds


def time_command(args: list[str], out: Path) -> float:
    """Wall seconds of one ``demix separate`` run into a fresh ``out``; raises on failure."""
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr[-500:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    """Run the configurations and print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    p.add_argument("--together", type=int, nargs="*", default=[4])
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="cpu", help="cpu or cuda (passed to demix separate)")
    p.add_argument("--model", default="demix-small")
    p.add_argument("--head", default="film")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    cpus = os.cpu_count() or 1
    base = [sys.executable, "-m", "demix.cli", "separate", "--model", args.model,
            "--head", args.head, "--batch-size", str(args.batch_size),
            "--device", args.device, "-q"]  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory(prefix="demix-throughput-") as tmp:
        inputs, out = Path(tmp) / "in", Path(tmp) / "out"
        audio_s = write_inputs(inputs, args.files, args.seconds)
        configs = [("plain `demix separate`", [*base, str(inputs), "-o", str(out)])]
        for n in args.together:
            command = [*base, str(inputs), "-o", str(out), "--files-together", str(n)]
            configs.append((f"`--files-together {n}`", command))
        for n in args.workers:
            threads = max(1, cpus // n)
            configs.append((
                f"`--ray --workers {n} --jobs {threads}`",
                [*base, str(inputs), "-o", str(out), "--ray", "--workers", str(n),
                 "--jobs", str(threads)],
            ))  # fmt: skip
        for name, command in configs:
            print(f"[eval.throughput] {name} ...", file=sys.stderr, flush=True)
            best = min(time_command(command, out) for _ in range(max(args.repeats, 1)))
            rows.append((name, best))
    plain = rows[0][1]
    lines = [
        f"{args.files} files x {args.seconds:g} s (stereo 44.1 kHz, 16-bit), head {args.head}, "
        f"model {args.model}, --batch-size {args.batch_size}, --device {args.device}, "
        f"{cpus} CPUs; whole "
        f"`demix separate` processes, best of {args.repeats}",
        "",
        "| configuration | wall seconds | audio minutes per minute | vs plain |",
        "|---|---|---|---|",
    ]
    for name, seconds in rows:
        lines.append(
            f"| {name} | {seconds:.1f} | {audio_s / seconds:.2f} | {plain / seconds:.2f}x |"
        )
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
