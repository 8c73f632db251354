"""Learning curves: dev-split metrics of a run's EMA snapshots against training time.

``python -m eval.curve RUN_DIR [--film-items 8] [--foley-items 0] [--music-seconds 20]
[--every 1]``

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
    run: Path,
    film_count: int = 8,
    music_seconds: float = 20.0,
    every: int = 1,
    foley_count: int = 0,
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
    items = film_items(film_count) + film_items(foley_count, foley=True)
    items += music_items(music_seconds)
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


def plot_comparison(
    tables: dict[str, pd.DataFrame], path: Path, step_seconds: dict[str, float] | None = None
) -> None:
    """One panel per stem: dev SI-SDR against training minutes, one line per run (the
    matched-compute comparison of candidate backbones). ``step_seconds`` (run → seconds per
    step measured on an idle machine, ``eval.train_speed``) puts every run on idle-machine
    minutes (step × seconds), which a run that shared the cores with other work needs."""
    step_seconds = step_seconds or {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stems = sorted({s for t in tables.values() for s in t["stem"].unique()})
    cols = 4
    rows_n = -(-len(stems) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4 * cols, 3 * rows_n), squeeze=False)
    for ax, stem in zip(axes.flat, stems):
        for name, table in tables.items():
            rows = table[table["stem"] == stem].sort_values("step")
            if name in step_seconds:
                minutes = rows["step"] * step_seconds[name] / 60
            else:
                minutes = rows["hours"] * 60
            ax.plot(minutes, rows["si_sdr"], marker="o", ms=3, label=name)
        ax.set_title(stem, fontsize=10)
        unit = "idle-machine minutes" if step_seconds else "training minutes"
        ax.set_xlabel(f"{unit} (2 CPU cores)", fontsize=8)
        ax.set_ylabel("dev SI-SDR (dB)", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(stems) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m eval.curve``."""
    p = argparse.ArgumentParser(prog="python -m eval.curve")
    p.add_argument("run", help="training run folder (with snapshots/)")
    p.add_argument(
        "--compare",
        nargs="+",
        default=[],
        metavar="RUN",
        help="more run folders: score them too and plot all runs against training minutes",
    )
    p.add_argument("--out", help="where the comparison plot goes (default RUN/compare.png)")
    p.add_argument(
        "--step-seconds",
        action="append",
        default=[],
        metavar="RUN=SECONDS",
        help="idle-machine seconds per step of a run (eval.train_speed): the comparison's "
        "x-axis becomes step × seconds (repeatable, one per run folder name)",
    )
    p.add_argument("--film-items", type=int, default=8)
    p.add_argument("--foley-items", type=int, default=0, help="film mixtures, Foley pools")
    p.add_argument("--music-seconds", type=float, default=20.0)
    p.add_argument("--every", type=int, default=1, help="score steps that are multiples of this")
    args = p.parse_args(argv)
    tables = {}
    for run in [Path(args.run), *map(Path, args.compare)]:
        if not (run / "snapshots").is_dir():
            print(f"{run}: no snapshots/ (train with snapshot_every: N)", file=sys.stderr)
            return 1
        table = score_snapshots(
            run, args.film_items, args.music_seconds, args.every, args.foley_items
        )
        if len(table):
            plot(table, run / "curve.png")
            print(f"wrote {run / 'curve.csv'} and {run / 'curve.png'}")
            tables[run.name] = table
    if args.compare and tables:
        out = Path(args.out) if args.out else Path(args.run) / "compare.png"
        step_seconds = {}
        for item in args.step_seconds:
            name, _, value = item.partition("=")
            step_seconds[Path(name).name] = float(value)
        plot_comparison(tables, out, step_seconds)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
