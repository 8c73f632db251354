"""A short training burst on a lent machine (a GPU), from a training pack, to be continued
on the CPU: ``python -m demix.burst CONFIG PACK OUT [--minutes 8] [--init-from CKPT]``.

It unpacks the pack (``demix.pack``) into a local cache, then trains CONFIG's recipe on it:
the same model, sources, loss and optimiser, every source's batch multiplied by
``--batch-scale``, bfloat16 autocast, as many data workers as the CPUs allow, for
``--minutes`` of wall time, checkpointing every ``--checkpoint-seconds`` into ``OUT/run``
(``last.safetensors``, ``ema.safetensors``, ``log.csv``, ``config.yaml``). Continue here
with ``demix train CONFIG --set init_from=OUT/run/last.safetensors --set run_dir=...``.

Where only small files come back from the lent machine (the device tool: 16 MiB a file, 8
files), ``--part-mb 15`` keeps the run in a local folder and, after every checkpoint, copies
its EMA weights into OUT in parts (``ema.safetensors.step0000852.part1of2``, ...) beside
``log.csv``; a copy cut short leaves an incomplete set, which joining ignores for the
previous complete one. Here, ``python -m demix.burst --join OUT [--to DEST]`` puts the
latest complete copy back together.

The device tool runs it as one call (see docs/TRAINING.md, "A GPU burst").
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from demix import pack as packs
from demix.checkpoint import read_metadata
from demix.config import load_yaml
from demix.train import TrainConfig, build_sources, train

# A checkpoint copied in parts: NAME.stepSSSSSSS.partIofN, so that a copy cut short (a call
# stopped at its time limit) leaves an incomplete set that joining ignores, beside the
# previous complete one.
PART_PATTERN = re.compile(r"^(?P<name>.+)\.step(?P<step>\d+)\.part(?P<i>\d+)of(?P<n>\d+)$")


def _part_name(name: str, step: int, i: int, n: int) -> str:
    """Part ``i`` of ``n`` of ``name`` at ``step`` (the names ``PART_PATTERN`` reads)."""
    return f"{name}.step{step:07d}.part{i}of{n}"


def _local_run_dir(cache: Path) -> Path:
    """Where a ``--part-mb`` burst keeps its run: beside its cache, removed with it."""
    return cache.with_name(cache.name + "-run")


def copy_in_parts(src: Path, out_dir: Path, part_bytes: int, step: int) -> list[Path]:
    """Copy ``src`` into ``out_dir`` as ``NAME.stepSSSSSSS.part1ofN`` ... of at most
    ``part_bytes`` each (every part written atomically), then remove the parts of earlier
    copies of ``NAME``."""
    data = src.read_bytes()
    starts = range(0, max(len(data), 1), part_bytes)
    parts = []
    for i, start in enumerate(starts, 1):
        part = out_dir / _part_name(src.name, step, i, len(starts))
        tmp = part.with_name(part.name + ".tmp")
        tmp.write_bytes(data[start : start + part_bytes])
        os.replace(tmp, part)
        parts.append(part)
    for old in out_dir.glob(f"{src.name}.step*.part*of*"):
        if old not in parts and PART_PATTERN.match(old.name):
            old.unlink()
    return parts


def join_parts(folder: Path, dest: Path | None = None) -> list[Path]:
    """For every file copied in parts into ``folder``, join its latest complete copy into
    ``dest/NAME`` (default ``folder``; written atomically); returns the files written."""
    dest = dest or folder
    sets: dict[tuple[str, int, int], set[int]] = {}
    for path in folder.iterdir():
        if m := PART_PATTERN.match(path.name):
            key = (m["name"], int(m["step"]), int(m["n"]))
            sets.setdefault(key, set()).add(int(m["i"]))
    latest: dict[str, tuple[int, int]] = {}
    for (name, step, n), found in sets.items():
        if found == set(range(1, n + 1)) and step >= latest.get(name, (-1, 0))[0]:
            latest[name] = (step, n)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (step, n) in sorted(latest.items()):
        tmp = dest / f"{name}.tmp"
        with open(tmp, "wb") as whole:
            for i in range(1, n + 1):
                whole.write((folder / _part_name(name, step, i, n)).read_bytes())
        os.replace(tmp, dest / name)
        written.append(dest / name)
    return written


def _checkpoint_copier(out_dir: Path, part_bytes: int):
    """``train``'s ``on_checkpoint``: the run's EMA weights into ``out_dir`` in parts, its log
    beside them (the EMA is what the CPU run goes on from; the optimiser state and the raw
    weights stay behind, which keeps a burst to three files)."""

    copied: list[int] = []

    def copy(run: Path) -> None:
        step = int(read_metadata(run / "ema.safetensors")["info"].get("steps", 0))
        if copied and copied[-1] == step:  # the same weights: keep the complete copy
            return
        copy_in_parts(run / "ema.safetensors", out_dir, part_bytes, step)
        copied.append(step)
        if (run / "log.csv").exists():
            shutil.copyfile(run / "log.csv", out_dir / "log.csv")

    return copy


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
    parser.add_argument("config", nargs="?", help="training config (YAML): the recipe to train")
    parser.add_argument("pack", nargs="?", help="training pack folder (python -m demix.pack)")
    parser.add_argument("out", nargs="?", help="output folder: the run goes to OUT/run")
    parser.add_argument("--minutes", type=float, default=8.0, help="wall-time limit of training")
    parser.add_argument("--batch-scale", type=int, default=12, help="batch multiplier")
    parser.add_argument("--init-from", default="", help="checkpoint to start from")
    parser.add_argument("--checkpoint-seconds", type=float, default=90.0)
    parser.add_argument(
        "--workers", type=int, default=-1, help="data workers per source (-1: from the CPUs)"
    )
    parser.add_argument("--lr", type=float, default=0.0, help="learning rate (0: the config's)")
    parser.add_argument("--warmup-steps", type=int, default=-1)
    parser.add_argument(
        "--remix-steps",
        type=int,
        default=0,
        help="extra steps on every fetched batch with its stems remixed across the batch "
        "(TrainConfig.remix_steps; for a GPU that waits on the data workers)",
    )
    parser.add_argument("--seed", type=int, default=1, help="data seed (the CPU runs use 0)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--part-mb",
        type=float,
        default=0.0,
        help="keep the run in a local folder and copy its weights into OUT in parts of at "
        "most this many MiB after every checkpoint (0: the run goes to OUT/run)",
    )
    parser.add_argument(
        "--join", metavar="FOLDER", help="put the parts in FOLDER back together, then exit"
    )
    parser.add_argument("--to", metavar="DEST", help="where --join writes (default: FOLDER)")
    args = parser.parse_intermixed_args(argv)
    if args.join:
        written = join_parts(Path(args.join), Path(args.to) if args.to else None)
        if not written:
            print(
                f"demix.burst: {args.join}: no complete set of parts (NAME.stepS.partIofN)",
                file=sys.stderr,
            )
            return 1
        for path in written:
            print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
        return 0
    if not (args.config and args.pack and args.out):
        parser.error("CONFIG, PACK and OUT are required (or --join FOLDER)")
    if args.remix_steps < 0:
        parser.error("--remix-steps must be 0 or more")
    started = time.time()
    cfg = load_yaml(TrainConfig, args.config, [])
    cache = Path(tempfile.mkdtemp(prefix="demix-burst-cache-"))
    try:
        return _unpack_and_train(args, cfg, cache, started)
    finally:
        shutil.rmtree(cache, ignore_errors=True)  # also when the pack is refused
        shutil.rmtree(_local_run_dir(cache), ignore_errors=True)  # its weights are in OUT


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
    out = Path(args.out)
    on_checkpoint = None
    run_dir = out / "run"
    if args.part_mb > 0:
        out.mkdir(parents=True, exist_ok=True)
        run_dir = _local_run_dir(cache)
        on_checkpoint = _checkpoint_copier(out, int(args.part_mb * 2**20))
    cfg = burst_config(
        cfg,
        Path(args.pack),
        cache,
        run_dir,
        args.minutes,
        args.batch_scale,
        args.device,
        args.init_from,
        args.checkpoint_seconds,
        args.workers,
        args.seed,
    )
    unopened = packs.unopened_pools(info, build_sources(cfg))
    if unopened:
        print(
            f"demix.burst: WARNING: the recipe did not open {len(unopened)} of the pack's "
            f"pools here (a cache key differs on this machine): {'; '.join(unopened)}",
            file=sys.stderr,
        )
    if args.lr:
        cfg = dataclasses.replace(cfg, lr=args.lr)
    if args.warmup_steps >= 0:
        cfg = dataclasses.replace(cfg, warmup_steps=args.warmup_steps)
    if args.remix_steps:
        cfg = dataclasses.replace(cfg, remix_steps=args.remix_steps)
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    train(cfg, on_checkpoint)
    if on_checkpoint is not None:
        print(
            f"weights in {out} in parts of at most {args.part_mb:g} MiB: join them with "
            f"python -m demix.burst --join {out}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
