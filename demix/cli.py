"""Command line: ``demix separate``, ``demix train``, ``demix info`` (thin layer over the library).

Exit status: 0 when every input succeeded, 1 when any failed, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from tqdm import tqdm

from demix import audio

DEMO_SECONDS = 12.0
SEPARATE_EXAMPLES = """examples:
  demix separate film.wav -o stems/                        dialogue, music, effects
  demix separate film.mov -o stems/ --stems dialogue       dialogue + rest (the M&E)
  demix separate songs/ -o stems/ --head music --stems vocals,drums
  demix separate song.flac -o stems/ --head both --format flac --bit-depth 24
"""
_BAR = "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s audio [{elapsed}<{remaining}]"


def _expand_inputs(inputs: list[str]) -> list[tuple[Path, Path]]:
    """(file, its output subfolder): files as given go to the output folder itself; folders
    are expanded (recursively) to the audio/video files inside, whose subfolders are mirrored
    under the output folder (``reel1/mix.wav`` → ``OUT/reel1/mix/``)."""
    files: list[tuple[Path, Path]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(
                f
                for f in p.rglob("*")
                if f.is_file() and f.suffix.lower() in audio.AUDIO_EXTENSIONS
            )
            if not found:
                print(f"demix: {p}: folder holds no audio files", file=sys.stderr)
            files += [(f, f.parent.relative_to(p)) for f in found]
        else:
            files.append((p, Path()))
    return files


def _parse_stems(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [s.strip() for s in text.replace("+", ",").split(",") if s.strip()]


def _terminate(signum: int, _frame) -> None:
    """SIGTERM (kill, a job scheduler, a closed terminal) takes the Ctrl-C path: the stems
    being written are dropped, no temporary file is left."""
    raise KeyboardInterrupt(f"signal {signum}")


class _ProgressBar:
    """``progress(done_seconds, total_seconds)`` for ``separate_file``: the bar appears on the
    first call (0 / the file's duration, reported before any work), so a file that fails
    before its separation starts shows no bar, and the file is probed once, not twice."""

    def __init__(self, label: str, disabled: bool):
        self.label, self.disabled = label, disabled
        self.bar: tqdm | None = None

    def __call__(self, done_seconds: float, total_seconds: float) -> None:
        if self.bar is None:
            self.bar = tqdm(
                total=round(total_seconds, 1),
                desc=self.label,
                unit="s",
                dynamic_ncols=True,
                bar_format=_BAR,
                disable=self.disabled,
                leave=True,
                file=sys.stderr,
            )
        self.bar.total = round(total_seconds, 1)
        self.bar.n = round(done_seconds, 1)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_separate(args: argparse.Namespace) -> int:
    """Separate every input; one line per failure, a summary at the end."""
    from demix.separator import SeparationError, Separator

    signal.signal(signal.SIGTERM, _terminate)

    inputs = list(args.inputs)
    out_dir = Path(args.output)
    if args.demo:
        from demix.demo import write_demo_clip

        demo = write_demo_clip(out_dir / "demo-input" / "demo_film.wav", DEMO_SECONDS)
        print(f"demo clip (generated): {demo}")
        inputs.append(str(demo))
    if not inputs:
        print("demix separate: no inputs (give files or folders, or --demo)", file=sys.stderr)
        return 2
    if args.two_stems:
        if args.stems:
            print("demix separate: give --stems or --two-stems, not both", file=sys.stderr)
            return 2
        args.stems = args.two_stems
    if args.jobs:
        import torch

        torch.set_num_threads(args.jobs)
    options = {}
    if args.segment is not None:
        options["segment_seconds"] = args.segment
    try:
        sep = Separator.from_pretrained(args.model, device=args.device, **options)
        if args.overlap is not None:
            if not 0 <= args.overlap < 1:
                raise SeparationError(f"--overlap {args.overlap:g}: a fraction in [0, 1)")
            sep = Separator(
                sep.model,
                sep.metadata,
                sep.device,
                overlap_seconds=args.overlap * sep.chunk_samples / sep.sample_rate,
                **options,
            )
        sep.plan(args.head, _parse_stems(args.stems))  # validate before touching any file
    except (SeparationError, ValueError) as exc:
        print(f"demix: {exc}", file=sys.stderr)
        return 2
    files = _expand_inputs(inputs)
    ok, failed = [], []
    tracks: dict[Path, Path] = {}  # track folder → the input that uses it
    started = time.time()
    for i, (path, subfolder) in enumerate(files, 1):
        label = f"[{i}/{len(files)}] {path.name}"
        bar = _ProgressBar(label, disabled=args.quiet)
        t0 = time.time()
        first = tracks.setdefault(out_dir / subfolder / path.stem, path)
        if first != path:
            bar.close()
            failed.append(path)
            print(
                f"demix: error: {path}: its stems would go to {out_dir / subfolder / path.stem}/, "
                f"already used by {first} in this batch (separate it with another -o)",
                file=sys.stderr,
            )
            continue
        try:
            written = sep.separate_file(
                path,
                out_dir / subfolder,
                head=args.head,
                stems=_parse_stems(args.stems),
                fmt=args.format,
                bit_depth=args.bit_depth,
                overwrite=args.overwrite,
                progress=bar,
                warn=lambda text: print(f"demix: warning: {text}", file=sys.stderr),
            )
        except (audio.AudioError, SeparationError, OSError) as exc:
            bar.close()
            failed.append(path)
            print(f"demix: error: {exc}", file=sys.stderr)
            continue
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the batch
            bar.close()
            failed.append(path)
            print(
                f"demix: error: {path}: unexpected failure ({type(exc).__name__}: {exc})",
                file=sys.stderr,
            )
            continue
        except KeyboardInterrupt:
            bar.close()
            print(
                f"demix: interrupted while separating {path}; no partial stems were kept",
                file=sys.stderr,
            )
            return 130
        bar.close()
        ok.append(path)
        folder = next(iter(written.values())).parent
        print(f"{path} -> {folder}/ ({', '.join(written)}) in {time.time() - t0:.1f} s")
    print(
        f"done: {len(ok)} separated, {len(failed)} failed, {time.time() - started:.1f} s; "
        f"stems in {out_dir}/"
    )
    return 0 if not failed and files else 1


def cmd_info(args: argparse.Namespace) -> int:
    """Print a model's metadata: heads, stems, sample rate, training provenance."""
    import json

    from demix.separator import SeparationError, Separator, available_models

    try:
        sep = Separator.from_pretrained(args.model)
    except (SeparationError, ValueError) as exc:
        print(f"demix: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"embedded": available_models(), **sep.metadata}, indent=2))
    else:
        print(model_summary(args.model, sep.metadata, sep.heads))
    return 0


def model_summary(name: str, metadata: dict, heads: dict[str, tuple[str, ...]]) -> str:
    """A short, human description of a checkpoint's metadata (``demix info``)."""
    info = metadata.get("info", {})
    config = metadata.get("config", {})
    label = " ".join(str(x) for x in (info.get("name", name), info.get("version", "")) if x)
    lines = [f"model      {label} ({metadata.get('model', '?')} architecture)"]
    for head, stems in heads.items():
        lines.append(f"head       {head}: {', '.join(stems)}")
    lines.append(
        f"audio      {metadata.get('sample_rate', '?')} Hz internally; any rate and channel "
        "layout in, the same out"
    )
    if "segment_seconds" in config:
        lines.append(f"chunks     {config['segment_seconds']:g} s")
    steps = info.get("total_steps", info.get("steps"))
    minutes = info.get("training_minutes_total", info.get("training_minutes"))
    trained = [
        f"{steps} steps" if steps is not None else "",
        f"{minutes} min" if minutes is not None else "",
        str(info.get("hardware", "")),
    ]
    if any(trained):
        lines.append(f"training   {', '.join(t for t in trained if t)}")
    if info.get("licences"):
        lines.append(f"licences   {info['licences']}")
    scores = info.get("dev_si_sdr_db", {})
    if scores:
        text = ", ".join(f"{stem} {v['model']:+.1f}" for stem, v in scores.items())
        lines.append(f"dev SI-SDR {text} dB (identity: the mix as every stem; see eval/RESULTS.md)")
    lines.append("more       demix info --json (all metadata); docs/MODEL_CARD.md")
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> int:
    """Start the Gradio demo (the app lives in ``apps``; imported only for this command)."""
    try:
        from apps.demo import Limits, launch
    except ImportError as exc:
        print(f"demix demo needs the app extra: pip install 'demix[app]' ({exc})", file=sys.stderr)
        return 2
    launch(
        args.model,
        args.host,
        args.port,
        args.share,
        Limits(max_upload_mb=args.max_upload_mb, max_seconds=args.max_seconds),
        args.compare,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``demix`` argument parser."""
    parser = argparse.ArgumentParser(prog="demix", description="Cinematic demixer.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "separate",
        help="separate audio/video files into stems",
        description="Separate audio or video files into stems that sum back to the input.",
        epilog=SEPARATE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="*", help="audio/video files or folders")
    p.add_argument("-o", "--output", required=True, help="output folder: OUT/<track>/<stem>.ext")
    p.add_argument(
        "--head",
        default="film",
        choices=["film", "music", "both"],
        help="film: dialogue, music, effects; music: drums, bass, vocals, guitar, piano, "
        "other; both: every stem of both (default film)",
    )
    p.add_argument(
        "--stems",
        help="comma-separated stems to keep, e.g. dialogue or vocals,drums; the others are "
        "summed into 'rest'",
    )
    p.add_argument(
        "--format",
        default="wav",
        choices=["wav", "flac"],
        help="file format of the stems (default wav)",
    )
    p.add_argument("--bit-depth", choices=["16", "24", "32f"], help="default: the input's")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "-n",
        "--name",
        "--model",
        dest="model",
        default="demix-small",
        help="embedded model name or checkpoint path (default demix-small)",
    )
    p.add_argument(
        "--two-stems",
        metavar="STEM",
        help="STEM and the rest (as demucs' --two-stems), e.g. --two-stems vocals",
    )
    p.add_argument(
        "--segment", type=float, metavar="SECONDS", help="chunk length (default: the model's)"
    )
    p.add_argument(
        "--overlap",
        type=float,
        metavar="FRACTION",
        help="overlap of consecutive chunks as a fraction of the chunk (default 1 s)",
    )
    p.add_argument("-j", "--jobs", type=int, metavar="N", help="CPU threads (default: all)")
    p.add_argument("--overwrite", action="store_true", help="replace existing stems")
    p.add_argument(
        "--demo",
        action="store_true",
        help="also separate a generated film clip (speech, music, effects)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_separate)
    t = sub.add_parser("train", help="train a model from a YAML config", add_help=False)
    t.set_defaults(func=None)
    d = sub.add_parser("demo", help="start the Gradio demo in a local web server")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, default=7860)
    d.add_argument("--share", action="store_true", help="also create a public Gradio link")
    d.add_argument("--model", default="demix-small")
    d.add_argument("--max-upload-mb", type=float, default=200.0)
    d.add_argument("--max-seconds", type=float, default=600.0, help="longest accepted input")
    d.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="CHECKPOINT",
        help="another model to offer for A/B comparison (repeatable)",
    )
    d.set_defaults(func=cmd_demo)
    i = sub.add_parser("info", help="describe a model: heads, stems, training, scores")
    i.add_argument("--model", default="demix-small", help="embedded name or checkpoint path")
    i.add_argument("--json", action="store_true", help="print every metadata field as JSON")
    i.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``demix`` command."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "train":
        from demix.train import main as train_main

        return train_main(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
