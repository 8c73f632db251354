"""Training entry point: ``demix train CONFIG [--set key=value ...]`` or ``python -m demix.train``.

Multi-task: every step draws one batch from each configured source (e.g. film mixes for the
film head, music mixes for the music head) and sums their losses; the backbone is shared.
Runs are resumable exactly: the data source is indexed by (seed, example index), and the
model, EMA, optimiser and step are checkpointed together in the run folder.

Run folder layout: ``last.safetensors`` (raw weights), ``ema.safetensors`` (the model to
ship), ``state.pt`` (optimiser + step, tensors only), ``log.csv``, ``config.yaml``.

Several processes (GPUs or nodes): launch with torchrun, e.g.
``torchrun --nproc_per_node 4 -m demix.train CONFIG --set device=cuda``; PyTorch's
DistributedDataParallel averages gradients (NCCL on GPUs, gloo on CPUs), every rank draws
its own examples (its rank is part of the data seed), and rank 0 writes logs and
checkpoints. ``autocast_bf16`` turns on bfloat16 mixed precision (worth it on GPUs).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from tqdm import tqdm

from demix import models  # noqa: F401 - registers the models
from demix.audio import AudioError, one_line_error
from demix.checkpoint import load_checkpoint, save_checkpoint
from demix.config import from_dict, load_yaml, to_dict
from demix.data import MissingSourceError
from demix.losses import project_to_mix, separation_loss
from demix.models.spectral import mix_rms
from demix.registry import build_model, dataset_entry, model_config_cls


@dataclass(frozen=True)
class SourceConfig:
    """One training data source feeding one head."""

    name: str  # registered dataset, e.g. "cdx.film_mix"
    head: str  # head trained on it, e.g. "film"
    weight: float = 1.0
    batch_size: int = 0  # examples per step from this source (0: the run's batch_size)
    stem_weights: dict[str, float] = field(default_factory=dict)  # loss weight per stem (1)
    # Each stem's error relative to its level (demix.losses) for this source's examples only;
    # None: the run's ``relative_loss``.
    relative_loss: bool | None = None
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainConfig:
    """A training run."""

    sources: tuple[SourceConfig, ...]
    model: str = "bandsplit"
    model_config: dict[str, Any] = field(default_factory=dict)
    run_dir: str = "runs/demix-small"
    init_from: str = ""  # checkpoint whose weights start a new run (fine-tuning)
    batch_size: int = 4
    steps: int = 100_000  # length of the learning-rate schedule
    # Cosine decay over the last ``decay_steps`` (constant before, after the warm-up), so a
    # run can go on across sessions at full rate and be annealed at the end; 0: cosine over
    # every step after the warm-up.
    decay_steps: int = 0
    stop_at_step: int = 0  # end the run here, on the schedule of ``steps`` (0: at ``steps``)
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 200
    grad_clip: float = 5.0
    ema_decay: float = 0.999
    stft_loss_weight: float = 1.0
    relative_loss: bool = False  # each stem's error relative to its level (demix.losses)
    # Losses on the scale of the mix's RMS (each example counts alike whatever its level; the
    # dualpath model sees its input at that scale too).
    loss_on_mix_rms: bool = False
    stft_loss_ffts: tuple[int, ...] = (512, 2048)
    seed: int = 0
    num_workers: int = 1
    threads: int = 0  # 0: torch's default
    autocast_bf16: bool = False
    checkpoint_every: int = 200
    checkpoint_every_seconds: float = 0.0  # also checkpoint when this long has passed (0: off)
    snapshot_every: int = 0  # keep a copy of the EMA weights every N steps (learning curves)
    tensorboard: bool = False  # also log to RUN_DIR/tensorboard (pip install tensorboard)
    log_every: int = 10
    max_minutes: float = 0.0  # stop cleanly after this long in this process (0: no limit)
    # Extra optimiser steps on every fetched batch, its stems remixed (each stem shuffled
    # across the batch's examples, the mix re-summed: Demucs's "remix"), for a lent GPU that
    # waits on the CPU workers making mixes; a source with a batch of one gets fresh mixes.
    # 0: every step on fresh mixes.
    remix_steps: int = 0
    # Micro-batches whose gradients are summed into one optimiser step (the batch a lent GPU
    # takes at once, on the CPU's memory: accumulate_steps 12 at batch 2 + 1 is a burst's
    # 24 + 12). Each is scaled by 1/accumulate_steps, so the rate is the large batch's.
    accumulate_steps: int = 1
    device: str = "cpu"
    info: dict[str, Any] = field(default_factory=dict)  # provenance stored in checkpoints


def _relative(src: SourceConfig, cfg: TrainConfig) -> bool:
    """Whether ``src``'s loss is relative to each stem's level (its own flag, else the run's)."""
    return cfg.relative_loss if src.relative_loss is None else src.relative_loss


class TrainSetupError(Exception):
    """A run that cannot start as configured: a data source that cannot be read, examples
    at another rate than the model's, weights that do not fit, a run folder in use."""


class _Stop:
    """Set by SIGINT/SIGTERM so the loop checkpoints and exits cleanly."""

    requested = False


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_from = cfg.steps - cfg.decay_steps if cfg.decay_steps else cfg.warmup_steps
    if step < decay_from:
        return cfg.lr
    progress = min((step - decay_from) / max(cfg.steps - decay_from, 1), 1.0)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def build_sources(
    cfg: TrainConfig, rank: int = 0
) -> list[tuple[SourceConfig, torch.utils.data.Dataset]]:
    """Instantiate every registered data source of the run (``rank`` picks its examples).

    Raises:
        TrainSetupError: a source's config or data cannot be used (the message names it).
    """
    out = []
    for i, src in enumerate(cfg.sources):
        entry = dataset_entry(src.name)
        try:
            ds_config = from_dict(entry.config_cls, src.config, f"sources[{i}].config")
            ds = entry.factory(ds_config, cfg.seed + 1000 * i + 1_000_003 * rank)
        except (ValueError, AudioError) as exc:  # ConfigError is a ValueError
            raise TrainSetupError(f"sources[{i}] ({src.name}): {exc}") from exc
        out.append((src, ds))
    return out


def _brief(exc: BaseException) -> str:
    """``exc`` on one line, cut to 300 characters (load_state_dict lists every tensor)."""
    return " ".join(str(exc).split())[:300]


def check_sample_rates(model: torch.nn.Module, sources) -> None:
    """Every source must make its examples at the model's rate (a 16-kHz model trained on
    44.1-kHz examples learns the wrong frequencies and says nothing).

    Raises:
        TrainSetupError: naming the source, both rates and the settings to change.
    """
    for i, (src, ds) in enumerate(sources):
        rate = getattr(ds, "sample_rate", None) or getattr(
            getattr(ds, "config", None), "sample_rate", None
        )
        if rate is not None and int(rate) != model.sample_rate:
            raise TrainSetupError(
                f"sources[{i}] ({src.name}) makes examples at {rate} Hz but the model runs "
                f"at {model.sample_rate} Hz: set sources[{i}].config.sample_rate and "
                "model_config.sample_rate to the same rate"
            )


def load_initial_weights(model: torch.nn.Module, path: Path, device: str) -> list[str]:
    """Load ``path``'s weights into ``model`` to fine-tune it: a head of the checkpoint that
    this run has no source for is left out, and a head this run adds starts fresh. Returns
    notes on what was left out or added.

    Raises:
        TrainSetupError: the checkpoint cannot be read, or its backbone or a shared head does
            not fit ``model_config`` (size or stems).
    """
    from demix.checkpoint import CheckpointError

    try:
        loaded, _ = load_checkpoint(path, device)
    except (CheckpointError, OSError, ValueError) as exc:
        raise TrainSetupError(f"init_from {path}: {exc}") from exc
    if loaded.sample_rate != model.sample_rate:
        raise TrainSetupError(
            f"init_from {path}: its weights run at {loaded.sample_rate} Hz, this run's model "
            f"at {model.sample_rate} Hz (model_config.sample_rate)"
        )
    ours, theirs = set(model.heads), set(loaded.heads)
    weights = {
        key: value
        for key, value in loaded.state_dict().items()
        if not key.startswith("mask_heads.") or key.split(".")[1] in ours
    }
    for head in ours & theirs:
        if tuple(model.heads[head]) != tuple(loaded.heads[head]):
            raise TrainSetupError(
                f"init_from {path}: its {head} head has stems {list(loaded.heads[head])}, "
                f"this run's sources {list(model.heads[head])}"
            )
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # a size mismatch
        raise TrainSetupError(
            f"init_from {path}: its weights do not fit model_config ({_brief(exc)})"
        ) from exc
    fresh = {f"mask_heads.{h}." for h in ours - theirs}
    missing = [k for k in missing if not k.startswith(tuple(fresh))]
    if missing or unexpected:
        raise TrainSetupError(
            f"init_from {path}: its weights do not fit model_config (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    notes = [f"init_from: its {h} head is left out (no source trains it)" for h in theirs - ours]
    notes += [
        f"init_from: the {h} head starts fresh (the checkpoint has none)" for h in ours - theirs
    ]
    return sorted(notes)


def loss_columns(sources: list[SourceConfig]) -> list[str]:
    """``log.csv``'s loss column per source: ``loss_<head>``, or ``loss_<head>_<i>`` (the
    source's index) where several sources train one head."""
    heads = [src.head for src in sources]
    return [
        f"loss_{head}" if heads.count(head) == 1 else f"loss_{head}_{i}"
        for i, head in enumerate(heads)
    ]


def build_run_model(cfg: TrainConfig, sources) -> torch.nn.Module:
    """The model with one head per source head, stems taken from the data sources (a source
    may train a head with finer stems than its own, see ``demix.layouts``)."""
    heads: dict[str, tuple[str, ...]] = {}
    for src, ds in sources:
        stems = tuple(getattr(ds, "head_stems", ds.stems))
        if heads.setdefault(src.head, stems) != stems:
            raise ValueError(
                f"sources for head {src.head!r} disagree on its stems: "
                f"{list(heads[src.head])} vs {list(stems)}"
            )
    model_cfg = dict(cfg.model_config)
    model_cfg["heads"] = heads
    config = from_dict(model_config_cls(cfg.model), model_cfg, "model_config")
    return build_model(cfg.model, config)


class MultiTask(torch.nn.Module):
    """One forward pass over every source's batch, so that a step has exactly one forward
    and one backward (what DistributedDataParallel synchronises on)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batches: list[tuple[torch.Tensor, str]]) -> list[torch.Tensor]:
        """[(mix [b, c, t], head)] → [stems [b, s, c, t]] per batch."""
        return [self.model(mix, heads=[head])[head] for mix, head in batches]


def remix_batch(
    stems: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """New mixtures from a batch's stems [b, s, c, t]: the first stem stays with its example,
    every other stem is shuffled across the b examples on its own (redrawn while no stem
    moved); returns ``(mix [b, c, t], stems [b, s, c, t])``, the mix their sum (the mixers'
    mixes are exactly that sum)."""
    b, s = stems.shape[:2]
    order = torch.arange(b)[:, None].repeat(1, s)  # [b, s]
    for _ in range(8):  # a batch of 2 keeps its pairing with probability 2^-(s-1)
        for j in range(1, s):
            order[:, j] = torch.randperm(b, generator=generator)
        if b < 2 or s < 2 or (order != torch.arange(b)[:, None]).any():
            break
    remixed = stems[order.to(stems.device), torch.arange(s, device=stems.device)]
    return remixed.sum(1), remixed


def _next_batch(loader, device: str) -> tuple[torch.Tensor, ...]:
    """The loader's next ``(mix, stems)`` on ``device``."""
    return tuple(t.to(device) for t in next(loader))


def _grouped(est: torch.Tensor, groups: torch.Tensor | None) -> torch.Tensor:
    """Head outputs [b, s_head, c, t] summed into a dataset's (coarser) stems with its
    ``group_matrix()`` [s_data, s_head]; unchanged when the dataset has none."""
    if groups is None:
        return est
    return torch.einsum("ij,bjct->bict", groups.to(est), est)


def _stem_weights(src: SourceConfig, ds, device: str) -> torch.Tensor | None:
    """The source's ``stem_weights`` as a [s] tensor over the dataset's stems (None: equal)."""
    if not src.stem_weights:
        return None
    unknown = sorted(set(src.stem_weights) - set(ds.stems))
    if unknown:
        raise ValueError(
            f"source {src.name}: stem_weights names {unknown}, not among its stems {list(ds.stems)}"
        )
    return torch.tensor([float(src.stem_weights.get(s, 1.0)) for s in ds.stems], device=device)


def _ignore_stop_signals(_worker_id: int) -> None:
    # Ctrl-C reaches the whole process group: data workers ignore it so that the main
    # process can checkpoint, then shut them down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _loader(ds, src: SourceConfig, cfg: TrainConfig, start_step: int):
    batch_size = src.batch_size or cfg.batch_size
    # A resumed run goes on with examples it has not drawn (``accumulate_steps`` batches a step).
    indices = range(start_step * cfg.accumulate_steps * batch_size, len(ds))
    return iter(
        torch.utils.data.DataLoader(
            ds,
            batch_size=batch_size,
            sampler=indices,
            num_workers=cfg.num_workers,
            persistent_workers=cfg.num_workers > 0,
            prefetch_factor=4 if cfg.num_workers else None,
            worker_init_fn=_ignore_stop_signals if cfg.num_workers else None,
        )
    )


def bf16_autocast_works(device: str) -> bool:
    """Whether an LSTM's forward and backward pass run under bfloat16 autocast on ``device``.

    On CPUs oneDNN's bf16 LSTM needs AVX-512 (e.g. an AVX2-only AMD EPYC fails with "could
    not create a primitive descriptor for the LSTM forward propagation primitive"), so a
    config that asks for bf16 is probed once with a tiny LSTM instead of failing mid-run.
    """
    with torch.random.fork_rng(devices=[]):  # leaves the run's random stream as it was
        lstm = torch.nn.LSTM(8, 8, batch_first=True, bidirectional=True).to(device)
        x = torch.randn(2, 4, 8).to(device).requires_grad_()
    try:
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            y, _ = lstm(x)
        y.float().sum().backward()
    except RuntimeError:
        return False
    return True


def train(cfg: TrainConfig, on_checkpoint: Callable[[Path], None] | None = None) -> Path:
    """Run (or resume) training; returns the run folder. ``on_checkpoint(run_folder)`` is
    called after every checkpoint is written (on the main process), e.g. to copy it away."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = cfg.device
    if world > 1:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.startswith("cuda"):
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    main = rank == 0
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model_config_cls(cfg.model)  # an unknown model: said before minutes of data preparation
    if cfg.remix_steps < 0:
        raise ValueError(f"remix_steps must be 0 or more, not {cfg.remix_steps}")
    if cfg.accumulate_steps < 1:
        raise ValueError(f"accumulate_steps must be 1 or more, not {cfg.accumulate_steps}")
    run = Path(cfg.run_dir)
    if run.exists() and not run.is_dir():
        raise NotADirectoryError(f"run_dir {run} is a file, not a folder")
    sources = build_sources(cfg, rank)  # first: missing data leaves no run folder behind
    model = build_run_model(cfg, sources).to(device)
    check_sample_rates(model, sources)
    run.mkdir(parents=True, exist_ok=True)
    from demix.separator import folder_lock

    with folder_lock(run) if main else contextlib.nullcontext(True) as locked:
        refused = not locked
        if world > 1:  # every rank stops when rank 0 is refused (they would wait for it)
            flag = torch.tensor([float(refused)], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            refused = bool(flag.item())
        if refused:
            raise TrainSetupError(
                f"run_dir {run}: another demix train is using it; wait for it to stop or "
                "choose another run_dir"
            )
        return _train_in(run, cfg, sources, model, device, rank, world, on_checkpoint)


def _train_in(run, cfg, sources, model, device, rank, world, on_checkpoint) -> Path:
    """The body of ``train``, with the run folder locked."""
    main = rank == 0
    ema = build_run_model(cfg, sources).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step = 0
    elapsed_s = 0.0  # training time before this process (log "seconds" spans resumes)
    if (run / "state.pt").exists():
        try:
            loaded, _ = load_checkpoint(run / "last.safetensors", device)
            model.load_state_dict(loaded.state_dict())
            loaded, _ = load_checkpoint(run / "ema.safetensors", device)
            ema.load_state_dict(loaded.state_dict())
        except (ValueError, RuntimeError) as exc:  # CheckpointError is a ValueError
            raise TrainSetupError(
                f"run_dir {run}: its checkpoints do not fit this config's model or sources "
                f"({_brief(exc)}); resume with the run's own "
                f"{run / 'config.yaml'} or choose another run_dir"
            ) from exc
        state = torch.load(run / "state.pt", map_location=device, weights_only=True)
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        elapsed_s = float(state.get("elapsed_s", _last_logged_seconds(run / "log.csv")))
        torch.set_rng_state(state["rng"])
        print(f"resumed {run} at step {step}", file=sys.stderr)
    else:
        if cfg.init_from:
            for note in load_initial_weights(model, Path(cfg.init_from), device):
                print(note, file=sys.stderr)
            print(f"initialised from {cfg.init_from}", file=sys.stderr)
        ema.load_state_dict(model.state_dict())
    if main:  # (after the weights loaded: a resume that failed keeps the run's own record)
        (run / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    ema.requires_grad_(False)
    net: torch.nn.Module = MultiTask(model)
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net)  # also syncs rank 0's weights
    n_params = sum(p.numel() for p in model.parameters())
    if main:
        print(
            f"model {cfg.model}: {n_params / 1e6:.2f} M parameters, heads "
            f"{ {h: list(s) for h, s in model.heads.items()} }"
            + (f", {world} processes" if world > 1 else ""),
            file=sys.stderr,
        )

    groups = [ds.group_matrix().to(device) if hasattr(ds, "group_matrix") else None
              for _, ds in sources]  # fmt: skip
    stem_weights = [_stem_weights(src, ds, device) for src, ds in sources]
    log_path = run / "log.csv"
    new_log = not log_path.exists()
    log_file = open(log_path, "a", newline="") if main else open(os.devnull, "w")
    log = csv.writer(log_file)
    if new_log and main:
        log.writerow(
            ["step", "seconds", "examples_per_second", "lr"]
            + loss_columns([src for src, _ in sources])
        )

    board = None
    if cfg.tensorboard and main:
        from torch.utils.tensorboard import SummaryWriter

        board = SummaryWriter(str(run / "tensorboard"))

    def info() -> dict[str, Any]:
        started_from = {"init_from": cfg.init_from} if cfg.init_from else {}
        return {**started_from, **cfg.info, "steps": step, "run_dir": str(run)}

    def checkpoint() -> None:
        if not main:
            return
        save_checkpoint(run / "last.safetensors", model, cfg.model, info())
        save_checkpoint(run / "ema.safetensors", ema, cfg.model, info())
        tmp = run / "state.pt.tmp"
        torch.save(
            {
                "optimizer": opt.state_dict(),
                "step": step,
                "rng": torch.get_rng_state(),
                "elapsed_s": time.time() - started,
            },
            tmp,
        )
        os.replace(tmp, run / "state.pt")
        if on_checkpoint is not None:
            on_checkpoint(run)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: setattr(_Stop, "requested", True))
    process_start = last_checkpoint = time.time()
    started = process_start - elapsed_s
    window_start, window_examples = time.time(), 0
    running: list[float | None] = [None] * len(sources)  # smoothed losses for the progress line
    bar = tqdm(
        total=cfg.steps,
        initial=step,
        desc="train",
        dynamic_ncols=True,
        disable=not (main and sys.stderr.isatty()),
    )
    model.train()
    last_step = min(cfg.steps, cfg.stop_at_step) if cfg.stop_at_step else cfg.steps
    use_bf16 = cfg.autocast_bf16 and bf16_autocast_works(device)
    if cfg.autocast_bf16 and not use_bf16 and main:
        print(
            f"autocast_bf16: this {device} cannot run the LSTMs in bfloat16; training in float32",
            file=sys.stderr,
        )
    remix_generator = torch.Generator()
    remixes_left, fetched = 0, []
    # The data workers last: they are forked with the run folder's lock descriptor, and
    # only the ``finally`` below shuts them down.
    loaders = [_loader(ds, src, cfg, step) for src, ds in sources]
    try:
        while step < last_step and not _Stop.requested:
            lr = _lr_at(step, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            losses = [0.0] * len(sources)
            for micro in range(cfg.accumulate_steps):
                if remixes_left == 0:
                    fetched = [_next_batch(loader, device) for loader in loaders]
                    batches, remixes_left = fetched, cfg.remix_steps
                    remix_generator.manual_seed(  # resumable
                        cfg.seed * 1_000_003 + rank * 100_003 + step * cfg.accumulate_steps + micro
                    )
                else:
                    batches = [
                        remix_batch(stems, remix_generator)
                        if stems.shape[0] > 1
                        else _next_batch(loader, device)
                        for (_, stems), loader in zip(fetched, loaders)
                    ]
                    remixes_left -= 1
                with torch.autocast(
                    torch.device(device).type, dtype=torch.bfloat16, enabled=use_bf16
                ):
                    estimates = net(
                        [(mix, src.head) for (mix, _), (src, _) in zip(batches, sources)]
                    )
                total = 0.0
                for i, ((mix, stems), est, (src, _)) in enumerate(zip(batches, estimates, sources)):
                    est = _grouped(project_to_mix(est.float(), mix), groups[i])
                    ref = stems
                    if cfg.loss_on_mix_rms:
                        rms = mix_rms(mix)[:, None, None, None]
                        est, ref, mix = est / rms, ref / rms, mix / rms[:, 0]
                    loss = separation_loss(
                        est,
                        ref,
                        cfg.stft_loss_weight,
                        stem_weights[i],
                        mix=mix if _relative(src, cfg) else None,
                        n_ffts=cfg.stft_loss_ffts,
                    )
                    total = total + src.weight * loss
                    losses[i] += loss.item() / cfg.accumulate_steps
                    window_examples += mix.shape[0] * world
                (total / cfg.accumulate_steps).backward()
            for i, value in enumerate(losses):
                previous = running[i]
                running[i] = value if previous is None else 0.9 * previous + 0.1 * value
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            with torch.no_grad():
                decay = min(cfg.ema_decay, (1 + step) / (10 + step))
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm, 1 - decay)
            step += 1
            bar.update(1)
            bar.set_postfix({s.head: f"{r:.4f}" for (s, _), r in zip(sources, running)})
            if step % cfg.log_every == 0:
                now = time.time()
                rate = window_examples / (now - window_start)
                log.writerow(
                    [step, round(now - started, 3), round(rate, 2), f"{lr:.2e}"]
                    + [f"{x:.5f}" for x in losses]
                )
                log_file.flush()
                if board is not None:
                    board.add_scalar("lr", lr, step)
                    board.add_scalar("examples_per_second", rate, step)
                    for (src, _), value in zip(sources, losses):
                        board.add_scalar(f"loss/{src.head}", value, step)
                if main and not sys.stderr.isatty():
                    print(
                        f"step {step} ex/s {rate:.2f} lr {lr:.2e} "
                        + " ".join(f"{s.head} {r:.4f}" for (s, _), r in zip(sources, running)),
                        file=sys.stderr,
                        flush=True,
                    )
                window_start, window_examples = now, 0
            if step % cfg.checkpoint_every == 0 or (
                cfg.checkpoint_every_seconds
                and time.time() - last_checkpoint > cfg.checkpoint_every_seconds
            ):
                checkpoint()
                last_checkpoint = time.time()
            if main and cfg.snapshot_every and step % cfg.snapshot_every == 0:
                snapshot = run / "snapshots" / f"ema-{step:07d}.safetensors"
                save_checkpoint(snapshot, ema, cfg.model, info())
            if cfg.max_minutes and time.time() - process_start > cfg.max_minutes * 60:
                _Stop.requested = True
            if world > 1:  # every rank stops at the same step when any rank is asked to
                flag = torch.tensor([float(_Stop.requested)], device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                _Stop.requested = bool(flag.item())
    finally:
        # An error in the loop must not leave the data workers alive: they ignore SIGTERM
        # (_ignore_stop_signals), so Python's exit would wait for them forever while the
        # traceback keeps this frame. Dropping the iterators shuts the workers down now.
        loaders.clear()
    checkpoint()
    bar.close()
    log_file.close()
    if board is not None:
        board.close()
    if world > 1:
        _check_ranks_agree(model, device)
        dist.destroy_process_group()
    if main:
        print(f"stopped at step {step}; checkpoints in {run}", file=sys.stderr)
    return run


def _last_logged_seconds(log_path: Path) -> float:
    """The training time of the last log row (runs from before ``elapsed_s`` was saved)."""
    if not log_path.exists():
        return 0.0
    rows = log_path.read_text().strip().splitlines()
    return float(rows[-1].split(",")[1]) if len(rows) > 1 else 0.0


def _check_ranks_agree(model: torch.nn.Module, device: str) -> None:
    """Raise unless every rank ends with the same weights (DDP kept them in sync)."""
    total = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum()
    low, high = total.clone().to(device), total.clone().to(device)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if low.item() != high.item():
        raise RuntimeError(f"ranks disagree on the weights ({low.item()} vs {high.item()})")
    if dist.get_rank() == 0:
        print(f"{dist.get_world_size()} ranks agree on the weights", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """``demix train CONFIG [--set key=value ...]``."""
    parser = argparse.ArgumentParser(prog="demix train", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="training config (YAML)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (dotted key)",
    )
    args = parser.parse_args(argv)
    try:
        cfg = load_yaml(TrainConfig, args.config, args.overrides)
    except (ValueError, OSError, yaml.YAMLError) as exc:  # ConfigError is a ValueError
        print(f"demix train: {one_line_error(exc, args.config)}", file=sys.stderr)
        return 2
    try:
        train(cfg)
    except (
        KeyError, FileNotFoundError, NotADirectoryError, MissingSourceError, TrainSetupError
    ) as exc:  # fmt: skip
        # an unknown model or source, missing data, a run_dir that is a file or in use, a
        # package the recipe requires, data or weights that do not fit
        if isinstance(exc, KeyError) and not str(exc.args[0] if exc.args else "").startswith(
            "unknown "
        ):
            raise  # not the registry's: a bug, with its traceback
        text = exc.args[0] if isinstance(exc, KeyError) else exc
        print(f"demix train: {args.config}: {' '.join(str(text).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
