"""Training throughput of configs on this machine, in fp32 and bf16 autocast.

``python -m eval.train_speed CONFIG [CONFIG ...] [--steps 40] [--warmup-steps 10] [--out FILE.md]``

Each config trains for ``--steps`` steps from scratch in a temporary run folder (its data
sources, batch sizes, loss and model unchanged; ``autocast_bf16`` set each way), and the
seconds per step are read from its ``log.csv`` after ``--warmup-steps`` (data workers and
first allocations excluded). Run it on an otherwise idle machine: the figures convert a run's
steps into idle wall time, which is how the backbone comparison in docs/EXPERIMENTS.md puts
candidates at matched compute.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import pandas as pd

from demix.config import load_yaml
from demix.train import TrainConfig, bf16_autocast_works, train


def seconds_per_step(cfg: TrainConfig, steps: int, warmup_steps: int) -> float:
    """Train ``steps`` steps of ``cfg`` in a temporary folder; seconds per step after warm-up."""
    with tempfile.TemporaryDirectory(prefix="demix-train-speed-") as tmp:
        run = replace(
            cfg,
            run_dir=tmp,
            init_from="",
            stop_at_step=steps,
            max_minutes=0.0,
            log_every=1,
            checkpoint_every=10**9,
            snapshot_every=0,
            tensorboard=False,
        )
        train(run)
        log = pd.read_csv(Path(tmp) / "log.csv").set_index("step")["seconds"]
    return float((log[steps] - log[warmup_steps]) / (steps - warmup_steps))


def main(argv: list[str] | None = None) -> int:
    """Print (and optionally write) a markdown table of seconds per step and examples/s."""
    p = argparse.ArgumentParser(
        prog="python -m eval.train_speed", description=__doc__.split("\n")[0]
    )
    p.add_argument("configs", nargs="+", help="training configs (YAML)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--out", help="also write the table here")
    args = p.parse_args(argv)
    if args.steps <= args.warmup_steps:
        p.error("--steps must be larger than --warmup-steps")
    rows = []
    for path in args.configs:
        cfg = load_yaml(TrainConfig, path, [])
        examples = sum(s.batch_size or cfg.batch_size for s in cfg.sources)
        for bf16 in (False, True):
            if bf16 and not bf16_autocast_works(cfg.device):
                rows.append(  # e.g. an AVX2-only CPU: train() would fall back to fp32
                    {"config": path, "model": cfg.model,
                     "precision": f"bf16 autocast (this {cfg.device} cannot)"}
                )  # fmt: skip
                continue
            seconds = seconds_per_step(
                replace(cfg, autocast_bf16=bf16), args.steps, args.warmup_steps
            )
            rows.append(
                {
                    "config": path,
                    "model": cfg.model,
                    "precision": "bf16 autocast" if bf16 else "fp32",
                    "examples per step": examples,
                    "seconds per step": round(seconds, 3),
                    "examples per second": round(examples / seconds, 2),
                }
            )
            print(rows[-1], file=sys.stderr, flush=True)
    table = pd.DataFrame(rows).to_markdown(index=False)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
