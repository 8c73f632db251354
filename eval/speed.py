"""Speed and memory benchmark of demix on this machine's CPU, against HTDemucs.

``python -m eval.speed [--model NAME_OR_PATH] [--seconds 60] [--long-minutes 10 60]
[--long-head film] [--repeats 2] [--threads N] [--backends torch onnxruntime onnxruntime-int8]
[--batch-sizes 4] [--skip-htdemucs] [--out FILE.md]``

Everything is measured in the same run, on this machine, and printed as a markdown table
(also written to ``--out``); progress goes to stderr:

1. real-time factor (processing seconds / audio seconds) of ``Separator.separate`` on
   ``--seconds`` of stereo 44.1 kHz audio (the synthetic demo clip, tiled) for head film,
   music and both, for every backend (torch, onnxruntime, onnxruntime-int8) and batch size
   asked for, with the time ratios of consecutive configurations: one warm-up on a short
   input, then the best of ``--repeats`` runs, the configurations taking turns;
2. the HTDemucs reference: the architecture of the released ``htdemucs`` model with random
   weights (timing only, nothing is downloaded), run on the same input through
   ``demucs.apply.apply_model(model, mix[None], split=True, overlap=0.25)``, its standard
   chunked inference; reported as its real-time factor and HTDemucs time / demix time per head;
3. peak resident memory of ``Separator.separate_file`` (streaming) on long 16-bit wav files
   (``--long-minutes``, written block by block to a temporary folder, deleted afterwards),
   each separated in a fresh subprocess that reports its own peak RSS (VmHWM), so the
   figures are not contaminated by this process or by one another;
4. the targets, with PASS/FAIL: real-time factor ≤ 0.1 per head, ≥ 10× faster than HTDemucs
   per head, peak RSS ≤ 1500 MB whatever the length, and peak RSS of the longest over the
   shortest file ≤ 1.2 (memory must not grow with the input's length).

MB means 10⁶ bytes. Temporary files go to the system temporary folder (``TMPDIR``); a
60-minute run needs about 2.6 GB there (the input plus the stems of the film head).

The HTDemucs reference needs the ``demucs`` package (``pip install demucs``; demucs 4.1.0
requires only ``torch>=2.1`` and installs without changing torch or torchaudio). Without it
the reference is reported as skipped, with the reason, and everything else still runs.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from demix import SeparationError, Separator
from demix.separator import BACKENDS

SAMPLE_RATE = 44100
CHANNELS = 2
HEADS = ("film", "music", "both")
WARMUP_SECONDS = 1.0
DEMO_SECONDS = 12.0  # the demo clip is generated once at this length and tiled

RTF_TARGET = 0.1
SPEEDUP_TARGET = 10.0
PEAK_RSS_TARGET_MB = 1500.0
RSS_GROWTH_TARGET = 1.2

HTDEMUCS_STEMS = ("drums", "bass", "other", "vocals")
# Constructor arguments of the released ``htdemucs`` model (the ``kwargs`` stored in its
# checkpoint, signature 955717e8) where they differ from ``HTDemucs``'s defaults. The package
# only ships the bag's name list (remote/htdemucs.yaml), not these, so they are written here to
# time the architecture people actually run, with random weights and without a download.
HTDEMUCS_KWARGS = {
    "segment": Fraction(39, 5),
    "dconv_mode": 3,
    "bottom_channels": 512,
    "t_dropout": 0.02,
    "multi_freqs": [],
}


@dataclass(frozen=True)
class Row:
    """One line of the results table."""

    measure: str
    value: str
    target: str = "—"
    result: str = ""


# ----------------------------------------------------------------------------- inputs
@functools.cache
def _clip(sample_rate: int) -> np.ndarray:
    """The synthetic demo clip [2, t], generated once (read-only: callers copy)."""
    from demix.demo import demo_clip  # imported here: the measured subprocess must not need it

    clip, _ = demo_clip(DEMO_SECONDS, sample_rate)
    clip.flags.writeable = False
    return clip


def demo_mix(seconds: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The synthetic demo clip tiled to ``seconds``: float32 [2, t]."""
    clip = _clip(sample_rate)
    frames = int(round(seconds * sample_rate))
    reps = -(-frames // clip.shape[1])
    return np.ascontiguousarray(np.tile(clip, (1, reps))[:, :frames])


def write_long_wav(
    path: str | os.PathLike, minutes: float, sample_rate: int = SAMPLE_RATE
) -> float:
    """Write ``minutes`` of the tiled demo clip as stereo 16-bit wav, one clip at a time.

    Memory stays at one clip (about 4 MB) whatever the length.

    Returns:
        The file's duration in seconds.
    """
    block = np.ascontiguousarray(_clip(sample_rate).T)  # [t, c], soundfile's layout
    frames = int(round(minutes * 60 * sample_rate))
    with sf.SoundFile(
        str(path), "w", samplerate=sample_rate, channels=CHANNELS, format="WAV", subtype="PCM_16"
    ) as f:
        written = 0
        while written < frames:
            n = min(block.shape[0], frames - written)
            f.write(block[:n])
            written += n
    return frames / sample_rate


# ----------------------------------------------------------------------------- timing
def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Shortest wall-clock time of ``repeats`` calls of ``fn`` (seconds)."""
    times = []
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def time_heads(
    separators: dict[tuple[str, int], Separator],
    mix: torch.Tensor,
    heads: Sequence[str] = HEADS,
    repeats: int = 2,
    sample_rate: int = SAMPLE_RATE,
) -> dict[tuple[str, int], dict[str, float]]:
    """Best-of-``repeats`` seconds of ``separator.separate(mix)`` per configuration and head,
    after a warm-up of each.

    The configurations take turns (round r times every one of them before round r + 1), so
    that drift in the machine's speed or in this process's heap weighs on all alike: timed
    one after another, the later ones measured up to 1.5x slower here (docs/EXPERIMENTS.md).

    Args:
        separators: the loaded models, by configuration (backend, batch size).
        mix: [c, t] at ``sample_rate``.
        heads: heads to time ("film", "music", "both").
        repeats: timed runs per configuration and head; the shortest is kept.
        sample_rate: the rate of ``mix``.

    Returns:
        {configuration: {head: seconds}}.
    """
    warmup = mix[:, : int(WARMUP_SECONDS * sample_rate)]
    for separator in separators.values():
        for head in heads:
            separator.separate(warmup, sample_rate, head=head)
    times = {key: {head: math.inf for head in heads} for key in separators}
    for round_ in range(max(repeats, 1)):
        for head in heads:
            _log(f"round {round_ + 1}, head {head} on {mix.shape[-1] / sample_rate:g} s ...")
            for key, separator in separators.items():
                run = functools.partial(separator.separate, mix, sample_rate, head=head)
                seconds = best_time(run, 1)
                times[key][head] = min(times[key][head], seconds)
    return times


def build_htdemucs() -> torch.nn.Module:
    """HTDemucs with the released model's architecture and random weights, in eval mode.

    Raises:
        ImportError: the ``demucs`` package is not installed (or fails to import).
    """
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(0)
    return HTDemucs(sources=list(HTDEMUCS_STEMS), **HTDEMUCS_KWARGS).eval()


def time_htdemucs(
    model: torch.nn.Module, mix: torch.Tensor, repeats: int = 2, sample_rate: int = SAMPLE_RATE
) -> float:
    """Best-of-``repeats`` seconds of demucs's standard chunked inference on ``mix`` [c, t]."""
    from demucs.apply import apply_model

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return apply_model(model, x[None], split=True, overlap=0.25)

    run(mix[:, : int(WARMUP_SECONDS * sample_rate)])
    _log(f"timing HTDemucs on {mix.shape[-1] / sample_rate:g} s ...")
    return best_time(lambda: run(mix), repeats)


# ----------------------------------------------------------------------------- memory
def _proc_status_mb(*keys: str) -> dict[str, float]:
    """Fields of /proc/self/status given in kB, in MB ({} where /proc is missing)."""
    fields = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in keys:
                fields[key] = int(value.split()[0]) * 1024 / 1e6
    except OSError:
        pass
    return fields


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB.

    VmHWM belongs to the process's current address space. ``ru_maxrss`` is only the fallback:
    Linux carries it across ``exec``, so a child started by ``subprocess`` (vfork + exec)
    inherits its parent's peak and over-reports.
    """
    hwm = _proc_status_mb("VmHWM").get("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6  # bytes vs KiB


def current_rss_mb() -> tuple[float, float | None]:
    """This process's resident set size now and its file-backed part, in MB.

    The file-backed part (mapped shared libraries, torch's above all) is None where
    /proc/self/status is missing; the total is then the peak so far.
    """
    fields = _proc_status_mb("VmRSS", "RssFile")
    return fields.get("VmRSS", peak_rss_mb()), fields.get("RssFile")


def separate_file_child(
    model: str,
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    head: str,
    threads: int,
    backend: str = "torch",
) -> dict[str, float]:
    """Separate ``path`` with ``separate_file`` in this (fresh) process and measure it.

    Returns:
        {"audio_seconds", "seconds" (separation only), "loaded_rss_mb" and
        "loaded_file_rss_mb" (model loaded, before separating; its file-backed part or None),
        "peak_rss_mb" (of the whole process)}.
    """
    torch.set_num_threads(threads)
    separator = Separator.from_pretrained(model, backend=backend)
    loaded, loaded_file = current_rss_mb()
    meta = sf.info(str(path))
    start = time.perf_counter()
    separator.separate_file(path, out_dir, head=head, overwrite=True)
    seconds = time.perf_counter() - start
    return {
        "audio_seconds": meta.frames / meta.samplerate,
        "seconds": seconds,
        "loaded_rss_mb": loaded,
        "loaded_file_rss_mb": loaded_file,
        "peak_rss_mb": peak_rss_mb(),
    }


def measure_long_file(
    model: str, path: Path, out_dir: Path, head: str, threads: int, backend: str = "torch"
) -> dict[str, float]:
    """Run ``separate_file_child`` in a fresh Python process and return its report."""
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    cmd = [
        sys.executable,
        "-m",
        "eval.speed",
        "--model",
        model,
        "--long-head",
        head,
        "--threads",
        str(threads),
        "--backends",
        backend,
        "--child-file",
        str(path),
        "--child-out",
        str(out_dir),
    ]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)  # stderr shown
    if proc.returncode != 0:
        raise RuntimeError(f"separating {path.name} failed in the subprocess ({proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- report
def verdict(value: float, target: float, at_most: bool = True) -> str:
    """PASS when ``value`` meets ``target`` (≤ if ``at_most`` else ≥), else FAIL."""
    ok = value <= target if at_most else value >= target
    return "PASS" if ok else "FAIL"


def _minutes(m: float) -> str:
    return f"{m:g} min"


def render(header: Sequence[str], rows: Sequence[Row], notes: Sequence[str]) -> str:
    """The report: header lines, the markdown table, then notes."""
    lines = ["# demix speed and memory benchmark", ""]
    lines += [f"- {h}" for h in header]
    lines += ["", "| Measure | Value | Target | Result |", "|---|---|---|---|"]
    lines += [f"| {r.measure} | {r.value} | {r.target} | {r.result} |" for r in rows]
    if notes:
        lines.append("")
        lines += list(notes)
    return "\n".join(lines) + "\n"


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else the platform's guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_header(args: argparse.Namespace, separator: Separator) -> list[str]:
    """Lines describing the run: machine, software, model and inputs."""
    cpu = cpu_name()
    params = sum(p.numel() for p in separator.model.parameters())
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return [
        f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"machine: {cpu}, {os.cpu_count()} logical CPUs, torch threads {args.threads}, "
        f"load average at start {load}",
        f"software: python {platform.python_version()}, torch {torch.__version__}",
        f"model: {args.model} ({params / 1e6:.2f} M parameters, chunk "
        f"{separator.chunk_samples / separator.sample_rate:g} s, hop "
        f"{separator.hop_samples / separator.sample_rate:g} s, batch {separator.batch_size}), "
        f"on {separator.device}"
        + (
            f" ({torch.cuda.get_device_name(separator.device)})"
            if separator.device != "cpu"
            else ""
        ),  # fmt: skip
        f"input: {args.seconds:g} s stereo {SAMPLE_RATE} Hz (synthetic demo clip, tiled); "
        f"best of {args.repeats} after a warm-up; RTF = processing seconds / audio seconds",
    ]


def run_benchmark(args: argparse.Namespace) -> str:
    """Run every measurement asked for by ``args`` and return the markdown report."""
    torch.set_num_threads(args.threads)
    separator = Separator.from_pretrained(args.model, args.device, backend=args.backends[0])
    header = machine_header(args, separator)
    rows: list[Row] = []
    notes: list[str] = []
    mix = torch.from_numpy(demo_mix(args.seconds))
    audio_seconds = mix.shape[-1] / SAMPLE_RATE
    span = f"{args.seconds:g} s"

    # Every backend and batch size on the same input, in this run: (backend, batch) → times.
    separators = {
        (backend, batch): Separator.from_pretrained(
            args.model, args.device, backend=backend, batch_size=batch
        )
        for backend in args.backends
        for batch in args.batch_sizes
    }
    runs = time_heads(separators, mix, HEADS, args.repeats)
    for (backend, batch), times in runs.items():
        for head, seconds in times.items():
            rtf = seconds / audio_seconds
            rows.append(
                Row(
                    f"RTF `separate`, {backend}, batch {batch}, head {head} ({span})",
                    f"{rtf:.3f}",
                    f"≤ {RTF_TARGET:g}",
                    verdict(rtf, RTF_TARGET),
                )
            )
    for first, second in zip(list(runs), list(runs)[1:]):
        for head in HEADS:
            rows.append(
                Row(
                    f"time {first[0]} batch {first[1]} / {second[0]} batch {second[1]}, "
                    f"head {head}",
                    f"{runs[first][head] / runs[second][head]:.2f}",
                )
            )
    best = min(runs, key=lambda key: sum(runs[key].values()))
    demix_times = runs[best]
    notes.append(f"HTDemucs is compared with the fastest: {best[0]}, batch {best[1]}.")

    reference = None
    if args.skip_htdemucs:
        notes.append("HTDemucs reference skipped: --skip-htdemucs was given.")
    else:
        try:
            model = build_htdemucs()
        except Exception as exc:  # noqa: BLE001 - any import/build failure means "skip"
            notes.append(
                f"HTDemucs reference skipped: demucs is not usable here "
                f"({type(exc).__name__}: {exc}); install it with `pip install demucs`."
            )
        else:
            reference = time_htdemucs(model, mix, args.repeats)
            del model
            rows.append(
                Row(
                    f"RTF HTDemucs, random weights, `apply_model` split, overlap 0.25 ({span})",
                    f"{reference / audio_seconds:.3f}",
                )
            )
    for head, seconds in demix_times.items():
        measure = f"HTDemucs time / demix time, head {head}"
        if reference is None:
            rows.append(Row(measure, "—", f"≥ {SPEEDUP_TARGET:g}×", "SKIPPED"))
        else:
            ratio = reference / seconds
            rows.append(
                Row(
                    measure,
                    f"{ratio:.1f}×",
                    f"≥ {SPEEDUP_TARGET:g}×",
                    verdict(ratio, SPEEDUP_TARGET, at_most=False),
                )
            )
    del separator

    if args.long_minutes:
        rows += long_file_rows(args, notes)
    return render(header, rows, notes)


def long_file_rows(args: argparse.Namespace, notes: list[str]) -> list[Row]:
    """Write each long file, separate it in a subprocess, delete it; rows for the table."""
    rows: list[Row] = []
    reports: list[tuple[float, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="demix-speed-") as tmp:
        for minutes in args.long_minutes:
            path = Path(tmp) / f"long-{minutes:g}min.wav"
            out_dir = Path(tmp) / "stems"
            _log(f"writing {_minutes(minutes)} of audio to {path} ...")
            write_long_wav(path, minutes)
            _log(f"separating {path.name} (head {args.long_head}) in a subprocess ...")
            try:
                report = measure_long_file(
                    args.model, path, out_dir, args.long_head, args.threads, args.backends[0]
                )
                reports.append((minutes, report))
            finally:  # keep the disk use to one input and its stems at a time
                path.unlink(missing_ok=True)
                shutil.rmtree(out_dir, ignore_errors=True)
    for minutes, report in reports:
        what = (
            f"{_minutes(minutes)} file, head {args.long_head}, `separate_file` ({args.backends[0]})"
        )
        peak = report["peak_rss_mb"]
        rows.append(
            Row(
                f"peak RSS, {what}",
                f"{peak:.0f} MB",
                f"≤ {PEAK_RSS_TARGET_MB:g} MB",
                verdict(peak, PEAK_RSS_TARGET_MB),
            )
        )
        rows.append(Row(f"RTF, {what}", f"{report['seconds'] / report['audio_seconds']:.3f}"))
    (first, first_report), (last, last_report) = reports[0], reports[-1]
    if len(reports) > 1:
        growth = last_report["peak_rss_mb"] / first_report["peak_rss_mb"]
        rows.append(
            Row(
                f"peak RSS {_minutes(last)} / {_minutes(first)}",
                f"{growth:.2f}",
                f"≤ {RSS_GROWTH_TARGET:g}",
                verdict(growth, RSS_GROWTH_TARGET),
            )
        )
    else:
        notes.append("Peak RSS growth not measured: give two lengths to --long-minutes.")
    loaded = f"{first_report['loaded_rss_mb']:.0f} MB"
    if first_report.get("loaded_file_rss_mb") is not None:
        loaded += f" ({first_report['loaded_file_rss_mb']:.0f} MB file-backed: shared libraries)"
    rows.append(Row(f"RSS with the model loaded, before separating ({_minutes(first)})", loaded))
    return rows


def _log(message: str) -> None:
    print(f"[eval.speed] {message}", file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="demix-small", help="embedded model name or checkpoint")
    p.add_argument(
        "--device", default="cpu", help="where the model runs: cpu or cuda (the in-memory "
        "timings; HTDemucs and the long files stay on the CPU)",
    )  # fmt: skip
    p.add_argument("--seconds", type=float, default=60.0, help="length of the in-memory input")
    p.add_argument(
        "--long-minutes",
        type=float,
        nargs="*",
        default=[10.0, 60.0],
        help="lengths of the long files for the memory test (none: skip it)",
    )
    p.add_argument("--long-head", default="film", help="head used for the long files")
    p.add_argument("--repeats", type=int, default=2, help="timed runs (the best is kept)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    p.add_argument(
        "--backends",
        nargs="+",
        choices=list(BACKENDS),
        help="backends timed side by side (default: every one the device can run: all on "
        "the CPU, torch and onnxruntime on a GPU); the long files use the first",
    )
    p.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=[4],
        help="Separator batch sizes timed per backend (default 4)",
    )
    p.add_argument("--skip-htdemucs", action="store_true", help="do not time HTDemucs")
    p.add_argument("--out", type=Path, help="also write the report to this markdown file")
    p.add_argument("--child-file", help=argparse.SUPPRESS)  # internal: the subprocess side
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    if not args.backends:  # every backend the device can run (int8 is CPU-only)
        args.backends = [b for b in BACKENDS if args.device == "cpu" or not b.endswith("int8")]
    if args.child_file:
        report = separate_file_child(
            args.model, args.child_file, args.child_out, args.long_head, args.threads,
            args.backends[0],
        )  # fmt: skip
        print(json.dumps(report))
        return 0
    if args.seconds <= 0 or any(m <= 0 for m in args.long_minutes):
        _parser().error("--seconds and --long-minutes must be positive")
    if any(b < 1 for b in args.batch_sizes):
        _parser().error("--batch-sizes must be positive")
    try:
        text = run_benchmark(args)
    except SeparationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
