"""Learning curves: dev-split metrics of a run's EMA snapshots against training time.

``python -m eval.curve RUN_DIR [--film-items 8] [--music-seconds 20] [--every 1]``

Training with ``snapshot_every: N`` keeps ``RUN_DIR/snapshots/ema-<step>.safetensors``; this
scores each one with the quick dev check (``eval.dev``: seeded film mixtures of the dev split
and excerpts of the dev multitrack songs, SI-SDR per stem), resumably, into
``RUN_DIR/curve.csv`` (step, training hours from ``log.csv``, stem, SI-SDR) and plots
``RUN_DIR/curve.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from demix import Separator
from eval.dev import evaluate, film_items, music_items, summary


def training_hours(run: Path) -> dict[int, float]:
    """Step → cumulative training time in hours, from the run's ``log.csv``."""
    log = pd.read_csv(run / "log.csv")
    return dict(zip(log["step"].astype(int), log["seconds"] / 3600.0))


def score_snapshots(
    run: Path, film_count: int = 8, music_seconds: float = 20.0, every: int = 1
) -> pd.DataFrame:
    """Score every snapshot not yet in ``run/curve.csv`` (only steps that are multiples of
    ``every``); return the whole table."""
    out = run / "curve.csv"
    table = pd.read_csv(out) if out.exists() else pd.DataFrame()
    done = set(table["step"]) if len(table) else set()
    snapshots = sorted((run / "snapshots").glob("ema-*.safetensors"))
    steps = {p: int(p.stem.split("-")[1]) for p in snapshots}
    todo = [p for p in snapshots if steps[p] not in done and steps[p] % every == 0]
    if not todo:
        return table
    items = film_items(film_count) + music_items(music_seconds)
    hours = training_hours(run)
    rows = []
    for path in todo:
        step = int(path.stem.split("-")[1])
        result = summary(evaluate(Separator.from_pretrained(str(path)), items))
        for stem, (model, identity, n) in result.items():
            rows.append(
                {
                    "step": step,
                    "hours": hours.get(step, float("nan")),
                    "stem": stem,
                    "si_sdr": model,
                    "identity": identity,
                    "items": n,
                }
            )
        print(
            f"step {step}: "
            + ", ".join(f"{r['stem']} {r['si_sdr']:.2f}" for r in rows[-len(result) :])
        )
    table = pd.concat([table, pd.DataFrame(rows)], ignore_index=True).sort_values(["step", "stem"])
    table.to_csv(out, index=False)
    return table


def plot(table: pd.DataFrame, path: Path) -> None:
    """SI-SDR per stem against training hours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for stem, rows in table.groupby("stem"):
        ax.plot(rows["hours"], rows["si_sdr"], marker="o", label=stem)
    ax.set_xlabel("training time (hours, 2 CPU cores)")
    ax.set_ylabel("dev SI-SDR (dB)")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m eval.curve``."""
    p = argparse.ArgumentParser(prog="python -m eval.curve")
    p.add_argument("run", help="training run folder (with snapshots/)")
    p.add_argument("--film-items", type=int, default=8)
    p.add_argument("--music-seconds", type=float, default=20.0)
    p.add_argument("--every", type=int, default=1, help="score steps that are multiples of this")
    args = p.parse_args(argv)
    run = Path(args.run)
    if not (run / "snapshots").is_dir():
        print(f"{run}: no snapshots/ (train with snapshot_every: N)", file=sys.stderr)
        return 1
    table = score_snapshots(run, args.film_items, args.music_seconds, args.every)
    if len(table):
        plot(table, run / "curve.png")
        print(f"wrote {run / 'curve.csv'} and {run / 'curve.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
