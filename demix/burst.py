"""A short training burst on a lent machine (a GPU), from a training pack, to be continued
on the CPU: ``python -m demix.burst CONFIG PACK OUT [--minutes 8] [--init-from CKPT]``.

It unpacks the pack (``demix.pack``) into a local cache, then trains CONFIG's recipe on it:
the same model, sources, loss and optimiser, every source's batch multiplied by
``--batch-scale``, bfloat16 autocast, as many data workers as the CPUs allow, for
``--minutes`` of wall time, checkpointing every ``--checkpoint-seconds`` into ``OUT/run``
(``last.safetensors``, ``ema.safetensors``, ``log.csv``, ``config.yaml``). Continue here
with ``demix train CONFIG --set init_from=OUT/run/last.safetensors --set run_dir=...``.

The device tool runs it as one call (see docs/TRAINING.md, "A GPU burst").
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from demix import pack as packs
from demix.config import load_yaml
from demix.train import TrainConfig, train


def burst_config(
    cfg: TrainConfig,
    pack_dir: Path,
    cache_dir: Path,
    run_dir: Path,
    minutes: float,
    batch_scale: int,
    device: str,
    init_from: str = "",
    checkpoint_seconds: float = 90.0,
    workers: int = -1,
    seed: int = 1,
) -> TrainConfig:
    """CONFIG's recipe turned into a burst: data from the unpacked pack, batches scaled,
    bfloat16, a wall-time limit, time-based checkpoints, a fresh run folder, and its own
    ``seed`` (so that it draws other examples than the CPU run it continues)."""
    if workers < 0:  # every CPU but two (the training process, the system), split by source
        workers = max(1, ((os.cpu_count() or 2) - 2) // max(len(cfg.sources), 1))
    sources = tuple(
        dataclasses.replace(
            src,
            batch_size=(src.batch_size or cfg.batch_size) * batch_scale,
            config=dict(src.config, data_root=str(pack_dir / "data"), cache_dir=str(cache_dir)),
        )
        for src in cfg.sources
    )
    return dataclasses.replace(
        cfg,
        sources=sources,
        run_dir=str(run_dir),
        init_from=init_from,
        device=device,
        autocast_bf16=True,
        num_workers=workers,
        max_minutes=minutes,
        checkpoint_every=10**9,
        checkpoint_every_seconds=checkpoint_seconds,
        snapshot_every=0,
        seed=seed,
        info=dict(cfg.info, burst=f"{batch_scale}x batch, {minutes:g} min on {device}"),
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m demix.burst CONFIG PACK OUT``."""
    parser = argparse.ArgumentParser(
        prog="python -m demix.burst", description=__doc__.split("\n")[0]
    )
    parser.add_argument("config", help="training config (YAML): the recipe to train")
    parser.add_argument("pack", help="training pack folder (python -m demix.pack)")
    parser.add_argument("out", help="output folder: the run goes to OUT/run")
    parser.add_argument("--minutes", type=float, default=8.0, help="wall-time limit of training")
    parser.add_argument("--batch-scale", type=int, default=12, help="batch multiplier")
    parser.add_argument("--init-from", default="", help="checkpoint to start from")
    parser.add_argument("--checkpoint-seconds", type=float, default=90.0)
    parser.add_argument(
        "--workers", type=int, default=-1, help="data workers per source (-1: from the CPUs)"
    )
    parser.add_argument("--lr", type=float, default=0.0, help="learning rate (0: the config's)")
    parser.add_argument("--warmup-steps", type=int, default=-1)
    parser.add_argument("--seed", type=int, default=1, help="data seed (the CPU runs use 0)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    started = time.time()
    cfg = load_yaml(TrainConfig, args.config, [])
    cache = Path(tempfile.mkdtemp(prefix="demix-burst-cache-"))
    try:
        return _unpack_and_train(args, cfg, cache, started)
    finally:
        shutil.rmtree(cache, ignore_errors=True)  # also when the pack is refused


def _unpack_and_train(
    args: argparse.Namespace, cfg: TrainConfig, cache: Path, started: float
) -> int:
    try:
        info = packs.unpack(Path(args.pack), cache)
    except (FileNotFoundError, ValueError) as exc:
        print(f"demix.burst: {exc}", file=sys.stderr)
        return 1
    print(
        f"unpacked {len(info['pools'])} pools ({info['mb']} MiB) in {time.time() - started:.0f} s",
        file=sys.stderr,
    )
    cfg = burst_config(
        cfg,
        Path(args.pack),
        cache,
        Path(args.out) / "run",
        args.minutes,
        args.batch_scale,
        args.device,
        args.init_from,
        args.checkpoint_seconds,
        args.workers,
        args.seed,
    )
    if args.lr:
        cfg = dataclasses.replace(cfg, lr=args.lr)
    if args.warmup_steps >= 0:
        cfg = dataclasses.replace(cfg, warmup_steps=args.warmup_steps)
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    train(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
