"""Peak memory of ``demix post`` on long 5.1 reels: flat in the reel's length?

``python -m eval.post_memory [--minutes 1 5] [--model demix-small] [--deliver dx,mx,fx,me]``

For each length, a 5.1 48 kHz 24-bit WAV reel with a ``bext`` chunk is written block by block
to a temporary folder (noise under a slow loudness envelope, so nothing is held in memory),
then ``demix post`` runs on it in a fresh Python process that reports its own peak resident
set size (VmHWM) and the seconds taken. Prints a markdown table with the target (peak RSS
≤ 1500 MB, and the longest reel's peak over the shortest's ≤ 1.2) and PASS/FAIL. A
two-hour reel needs about 2.5 GB for the input and as much per deliverable.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from demix import wav

RATE, CHANNELS, MASK = 48000, 6, 0x60F
TARGET_MB, FLAT_RATIO = 1500.0, 1.2

_CHILD = """
import json, sys, time
from demix.cli import main
from eval.speed import peak_rss_mb
start = time.perf_counter()
code = main(["post", sys.argv[1], "-o", sys.argv[2], "--model", sys.argv[3],
             "--deliver", sys.argv[4], "--overwrite", "-q"])
print(json.dumps({"code": code, "seconds": time.perf_counter() - start,
                  "peak_rss_mb": peak_rss_mb()}))
"""


def write_reel(path: Path, minutes: float, seed: int = 0) -> None:
    """A 5.1 24-bit reel of ``minutes``, written in one-second blocks."""
    rng = np.random.default_rng(seed)
    writer = wav.WavWriter(path, RATE, CHANNELS, "24", MASK, {b"bext": bytes(602)})
    try:
        for second in range(int(minutes * 60)):
            level = 0.05 * (1.2 + np.sin(2 * np.pi * second / 37))
            block = level * rng.standard_normal((CHANNELS, RATE))
            writer.write_ints(np.clip(np.rint(block * 2**23), -(2**23), 2**23 - 1).astype(np.int32))
        writer.commit()
    except BaseException:
        writer.abort()
        raise


def measure(path: Path, out: Path, model: str, deliver: str) -> dict:
    """Run ``demix post`` on ``path`` in a fresh process; its exit code, seconds, peak RSS."""
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path), str(out), model, deliver],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    trace = []  # resident set size (MB) every second: flat, or growing with the reel?
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            rss = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
            trace.append(int(rss.split()[1]) / 1000.0)
        except (OSError, StopIteration):
            pass
        time.sleep(1.0)
    stdout = proc.stdout.read()
    if proc.returncode != 0:
        raise RuntimeError(f"demix post failed on {path.name} ({proc.returncode})")
    report = json.loads(stdout.strip().splitlines()[-1])
    report["rss_trace_mb"] = trace
    return report


def main(argv: list[str] | None = None) -> int:
    """Measure and print the table; exit 1 when a target fails."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, nargs="+", default=[1.0, 5.0])
    p.add_argument("--model", default="demix-small")
    p.add_argument("--deliver", default="dx,mx,fx,me")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="demix-post-memory-") as tmp:
        for minutes in sorted(args.minutes):
            reel = Path(tmp) / f"reel_{minutes:g}min.wav"
            print(f"writing {reel.name} ...", file=sys.stderr)
            write_reel(reel, minutes)
            print(f"demix post {reel.name} ...", file=sys.stderr)
            started = time.perf_counter()
            report = measure(reel, Path(tmp) / "out", args.model, args.deliver)
            report["wall_seconds"] = time.perf_counter() - started
            rows.append((minutes, report))
            for f in [reel, *Path(tmp, "out").glob("*.wav")]:
                f.unlink()
    peaks = [r["peak_rss_mb"] for _, r in rows]
    ratio = peaks[-1] / peaks[0]
    lines = [
        f"`demix post` ({args.deliver}), 5.1 48 kHz 24-bit reels, model {args.model}, "
        f"{os.cpu_count()} CPU cores",
        "",
        "| reel | seconds taken | real-time factor | peak RSS (MB) | RSS at 25 / 50 / 75 / 100 % "
        "of the run (MB) |",
        "|---|---|---|---|---|",
    ]
    for minutes, r in rows:
        trace = r.get("rss_trace_mb") or [0.0]
        quarters = " / ".join(
            f"{trace[min(len(trace) - 1, int(q * len(trace)))]:.0f}" for q in (0.25, 0.5, 0.75, 1)
        )
        lines.append(
            f"| {minutes:g} min | {r['seconds']:.1f} | {r['seconds'] / (60 * minutes):.3f} "
            f"| {r['peak_rss_mb']:.0f} | {quarters} |"
        )
    ok_peak, ok_flat = max(peaks) <= TARGET_MB, ratio <= FLAT_RATIO
    lines += [
        "",
        f"- peak RSS ≤ {TARGET_MB:.0f} MB: {'PASS' if ok_peak else 'FAIL'} ({max(peaks):.0f} MB)",
        f"- longest / shortest peak ≤ {FLAT_RATIO}: {'PASS' if ok_flat else 'FAIL'} ({ratio:.2f})",
    ]
    print("\n".join(lines))
    return 0 if ok_peak and ok_flat else 1


if __name__ == "__main__":
    sys.exit(main())
