"""The public separation API: ``Separator.from_pretrained(...).separate(...)``.

Everything a user calls goes through one streaming pipeline (``Separator.stream``):

1. input blocks [c, t] at the file's rate are resampled (soxr, streaming) to the model's rate;
2. channels are mapped to the model's stereo input: stereo as is, mono duplicated, and
   layouts with more than two channels (5.1, 7.1, ...) separated channel by channel as dual
   mono, so the centre (dialogue) channel is treated on its own rather than folded down;
3. ``iter_separate`` (the one chunked overlap-add routine) runs the model;
4. stems are mapped back to the input's layout and resampled to the input's rate;
5. **stems sum to the mix**: per head, the residual (mix − Σ stems) is added evenly to every
   stem (the least-squares correction, also used in training), so the stems add back to the
   input to float precision (the "null test");
6. "selected stems + rest": ``rest`` = mix − Σ selected, i.e. the sum of the others.

Memory is bounded by the chunk length, not the input's length.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import math
import os
import queue
import shutil
import string
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr
import torch

from demix import audio, models, wav  # noqa: F401 - models registers the architectures
from demix.checkpoint import CheckpointError, load_checkpoint
from demix.separate import BatchCancelled, SharedCalls, iter_separate

PRETRAINED_DIR = Path(__file__).parent / "pretrained"
BOTH = "both"
DEFAULT_FILENAME = "{track}/{stem}.{ext}"


class SeparationError(ValueError):
    """A request that cannot be served (unknown head or stem, bad input)."""


@dataclass(frozen=True)
class Plan:
    """What to output: per head, the stems asked for (``rest`` added when it is a subset)."""

    heads: tuple[str, ...]
    selected: dict[str, tuple[str, ...]]
    outputs: tuple[str, ...]
    rest_names: dict[str, str | None]


@dataclass(frozen=True)
class ChannelPlan:
    """How the channels of a layout meet a stereo model.

    ``pairs``: each model input's (left, right) input channels; a channel in several pairs
    gets the mean of its estimates, a pair (i, i) is channel i as dual mono. ``bypass``:
    channels that are not separated, each wholly given to the named stem (e.g. LFE to
    effects) in the heads that have it, and split evenly between the stems of a head that
    has not.
    """

    pairs: tuple[tuple[int, int], ...]
    bypass: tuple[tuple[int, str], ...] = ()

    @classmethod
    def dual_mono(cls, channels: int) -> ChannelPlan:
        """Every channel on its own (the default beyond stereo)."""
        return cls(tuple((i, i) for i in range(channels)))

    @classmethod
    def centre_aware(
        cls, names: Sequence[str], lfe_stems: Sequence[str] = ("effects", "bass")
    ) -> ChannelPlan:
        """A surround layout by speaker names (``demix.wav.speakers``): the centre on its own
        as dual mono, so that its dialogue (or lead vocal) sits in the middle of the stereo
        image as in every training mix; each left/right pair (FL/FR, surrounds BL/BR, SL/SR,
        ...) as a stereo pair; LFE is not separated and goes to the first of ``lfe_stems``
        that a head has (film: effects, never dialogue; music: bass); anything else as dual
        mono.

        (Pairing the centre with each front channel, (FL, FC) and (FC, FR), was tried first:
        the model then hears the dialogue hard-panned, unlike anything it was trained on.
        On a 5.1 reel with dialogue in C only, the dialogue stem's correlation with the true
        dialogue in C was 0.75 that way and 0.999 with C as dual mono, demix-small v3.)
        """
        index = {name: i for i, name in enumerate(names)}
        pairs, used = [], set()
        if "FC" in index:
            pairs.append((index["FC"], index["FC"]))
            used.add(index["FC"])
        for left, right in (
            ("FL", "FR"), ("BL", "BR"), ("SL", "SR"), ("FLC", "FRC"), ("TFL", "TFR"),
            ("TBL", "TBR"),
        ):  # fmt: skip
            if left in index and right in index and not {index[left], index[right]} & used:
                pairs.append((index[left], index[right]))
                used |= {index[left], index[right]}
        bypass = tuple((index["LFE"], stem) for stem in lfe_stems if "LFE" in index)
        used |= {i for i, _ in bypass}
        pairs += [(i, i) for i in range(len(names)) if i not in used]
        return cls(tuple(pairs), bypass)


def as_float_samples(x: torch.Tensor | np.ndarray, copy: bool = True) -> np.ndarray:
    """Samples as float32 (a new array, or with ``copy`` False float32 input as it is, as
    ``stream`` takes file blocks): float as it is; signed integer PCM scaled by its full
    scale (int16 / 32768); 8-bit unsigned PCM centred on 128 (WAV's 8-bit); torch tensors
    of any float dtype (bfloat16 too) on any device.

    Raises:
        SeparationError: other unsigned integers, booleans, complex or non-numeric samples.
    """
    if torch.is_tensor(x):
        x = x.detach().to("cpu")
        x = (x.float() if x.is_floating_point() else x).numpy()
    x = np.asarray(x)
    kind = x.dtype.kind
    if kind == "i":
        return (x / np.float32(2.0 ** (8 * x.dtype.itemsize - 1))).astype(np.float32)
    if kind == "u" and x.dtype.itemsize == 1:
        return ((x.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    if kind != "f":
        raise SeparationError(
            f"samples of type {x.dtype} (give float, signed integer PCM or 8-bit unsigned)"
        )
    return np.array(x, dtype=np.float32, copy=True) if copy else np.asarray(x, np.float32)


def _checked_rate(sample_rate) -> int:
    """``sample_rate`` as a positive int (a whole float such as 44100.0, a numpy scalar or a
    0-d array or tensor too)."""
    try:
        if isinstance(sample_rate, (str, bytes, bool)) or np.ndim(sample_rate) != 0:
            raise TypeError
        rate = float(sample_rate)
    except (TypeError, ValueError):
        raise SeparationError(
            f"sample_rate {sample_rate!r}: give a number of samples a second"
        ) from None
    if not (rate > 0 and rate.is_integer()):
        raise SeparationError(f"sample_rate {sample_rate!r}: give a positive whole number")
    return int(sample_rate)


def available_models() -> list[str]:
    """Names of the checkpoints embedded in the package."""
    return sorted(p.stem for p in PRETRAINED_DIR.glob("*.safetensors"))


class _Resampler:
    """Streaming resampler over [c, t] blocks (identity when the rates match)."""

    def __init__(self, from_rate: int, to_rate: int, channels: int):
        self.stream = None
        if from_rate != to_rate:
            self.stream = soxr.ResampleStream(
                from_rate, to_rate, channels, dtype="float32", quality="HQ"
            )
        self.channels = channels

    def __call__(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        if self.stream is None:
            return block
        out = self.stream.resample_chunk(np.ascontiguousarray(block.T), last=last)
        return np.ascontiguousarray(out.reshape(-1, self.channels).T)


def checkpoint_path(name_or_path: str | Path) -> Path:
    """The checkpoint file behind an embedded model name (``demix-small``) or a path.

    Raises:
        SeparationError: unknown name or missing file.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = PRETRAINED_DIR / f"{name_or_path}.safetensors"
        if not path.exists():
            known = ", ".join(available_models()) or "none"
            raise SeparationError(
                f"unknown model {name_or_path!r} (embedded: {known}; "
                "or give the path of a .safetensors checkpoint or .onnx export)"
            )
    elif not path.exists():
        raise SeparationError(f"{path}: no such checkpoint")
    return path


def _load_torch(path: Path, device: str) -> tuple[torch.nn.Module, dict]:
    if path.suffix == ".onnx":
        raise SeparationError(f"{path}: an ONNX export runs on the onnxruntime backend")
    return load_checkpoint(path, device)


def _load_onnxruntime(path: Path, device: str, int8: bool = False) -> tuple[torch.nn.Module, dict]:
    from demix import onnxrt  # onnx and onnxruntime are imported only when asked for

    if int8 and device != "cpu":
        raise SeparationError(
            f"device {device}: the onnxruntime-int8 backend runs on the CPU only (its "
            "quantised LSTM kernel has no GPU version); use --backend onnxruntime"
        )
    if int8 and path.suffix == ".onnx":
        raise SeparationError(
            f"{path}: an ONNX file runs as it is (backend onnxruntime); for int8, give the "
            "checkpoint or export it with demix export --int8"
        )
    try:
        onnx_path = path if path.suffix == ".onnx" else onnxrt.cached_export(path, None, int8)
    except onnxrt.OnnxError as exc:
        raise SeparationError(str(exc)) from exc
    except CheckpointError:
        raise  # the file, not the backend: the same one-line error as on torch
    except Exception as exc:  # noqa: BLE001 - torch's exporter raises many types
        text = " ".join(str(exc).split())[:200]
        raise SeparationError(
            f"{path}: cannot export to ONNX ({type(exc).__name__}: {text})"
        ) from exc
    try:
        checkpoint = None if path.suffix == ".onnx" else path
        return onnxrt.load_onnx(onnx_path, device, checkpoint, int8)
    except onnxrt.OnnxError as exc:
        raise SeparationError(str(exc)) from exc


# What runs the model between the STFT and the iSTFT: backend name → loader(path, device).
BACKENDS = {
    "torch": _load_torch,
    "onnxruntime": _load_onnxruntime,
    "onnxruntime-int8": functools.partial(_load_onnxruntime, int8=True),
}
# The default backend per device type: a speed choice, measured on 2 CPU cores.
# - onnxruntime against torch (eval.speed, 60 s, batch 4): real-time factor film 0.097 against
#   0.110, both heads 0.145 against 0.175; whole `demix separate` runs of 60 s, 17.2 s against
#   37.9 s with another job on the machine (torch's threads suffer more from sharing); peak
#   memory the same (1,024 against 983 MiB) with per-head exports and no ORT arena. Re-measured
#   2026-11-27: torch 1.02x (film) and 0.91x (both heads) onnxruntime's wall time on idle
#   cores, but 2.6x while a training run shared them.
# - onnxruntime-int8 against onnxruntime (demix-small v4, docs/EXPERIMENTS.md): the core 1.47x
#   faster, every eval.dev stem within 0.05 dB. Its LSTM kernel (DynamicQuantizeLSTM) is
#   CPU-only, so a GPU runs the float32 export.
DEFAULT_BACKENDS = {"cpu": "onnxruntime-int8", "cuda": "onnxruntime"}
# Where the default backend cannot run, the next one in this order does.
BACKEND_FALLBACKS = ("onnxruntime-int8", "onnxruntime", "torch")


def default_backend(device: str) -> str:
    """The backend ``Separator.from_pretrained`` uses on ``device`` unless told otherwise."""
    return DEFAULT_BACKENDS[torch.device(device).type]


def check_device(device: str) -> str:
    """Normalise a device name ("cpu", "cuda", "cuda:N") or raise a one-line SeparationError
    saying why it cannot be used here."""
    text = str(device).strip().lower()
    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise SeparationError(f"unknown device {device!r} (choose cpu, cuda or cuda:N)")
    if parsed.type == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        raise SeparationError(f"device {device!r} asked for, but no CUDA GPU is available here")
    if parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise SeparationError(
            f"device {device!r}: there are only {torch.cuda.device_count()} CUDA GPU(s)"
        )
    return str(parsed)


class Separator:
    """A loaded model plus the chunking settings used to run it.

    Args:
        model: a registered separation model (``heads``, ``sample_rate``, ``segment_samples``).
        metadata: the checkpoint metadata (shown by ``describe``).
        device: "cpu" or "cuda".
        overlap_seconds: overlap between consecutive chunks.
        batch_size: stereo signals per model call (chunks of a stereo input; a multichannel
            input's channel pairs): peak memory grows with it.
        segment_seconds: chunk length (default: the model's training-time segment).
        shifts: model passes averaged per chunk (demucs' "shift trick"): 1 is a single pass;
            N > 1 adds N − 1 passes on the chunk delayed by a random 1 sample to 0.5 s, each
            output sample averaging the passes that saw it. Costs N times the compute; the
            offsets come from a seeded generator, so a rerun gives the same stems.
        backend: what runs ``model`` ("torch", or "onnxruntime" / "onnxruntime-int8" for a
            ``demix.onnxrt`` model); recorded for reports (``from_pretrained`` picks the
            loader by it).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        metadata: dict | None = None,
        device: str = "cpu",
        overlap_seconds: float = 1.0,
        batch_size: int = 4,
        segment_seconds: float | None = None,
        shifts: int = 1,
        backend: str = "torch",
    ):
        device = check_device(device)
        self.backend = backend
        if not 1 <= shifts <= 20:
            raise SeparationError(f"shifts {shifts}: choose 1 (no shift) to 20")
        self.shifts = shifts
        self.model = model.to(device).eval()
        self.metadata = metadata or {}
        self.device = device
        self.sample_rate: int = model.sample_rate
        self.heads: dict[str, tuple[str, ...]] = dict(model.heads)
        self.chunk_samples: int = model.segment_samples
        if segment_seconds is not None:
            if not 0.5 <= segment_seconds <= 600:
                raise SeparationError(
                    f"segment of {segment_seconds:g} s: choose between 0.5 and 600 seconds"
                )
            self.chunk_samples = int(round(segment_seconds * self.sample_rate))
        if overlap_seconds < 0:
            raise SeparationError(f"overlap of {overlap_seconds:g} s: must not be negative")
        # At most half a chunk of overlap: a short-chunk model must not degenerate into one
        # model call per sample.
        overlap = min(int(round(overlap_seconds * self.sample_rate)), self.chunk_samples // 2)
        self.hop_samples: int = self.chunk_samples - overlap
        self.batch_size = batch_size
        # (heads, calls) while ``separate_files`` runs several files' streams together
        self._shared: tuple[tuple[str, ...], SharedCalls] | None = None

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = "demix-small",
        device: str = "cpu",
        backend: str | None = None,
        **kwargs,
    ) -> Separator:
        """Load an embedded model by name (``demix-small``), a checkpoint file or an ONNX
        export (``demix export``) by path.

        ``backend``: "torch", "onnxruntime" (a checkpoint is exported once into the cache,
        ``demix.onnxrt.cached_export``) or "onnxruntime-int8" (that export quantised);
        default ``default_backend(device)``, and "onnxruntime" for an ``.onnx`` file. Nothing
        is downloaded: names resolve to files shipped inside the package.
        """
        device = check_device(device)
        path = checkpoint_path(name_or_path)
        asked = backend or ("onnxruntime" if path.suffix == ".onnx" else None)
        backend = asked or default_backend(device)
        if backend not in BACKENDS:
            raise SeparationError(f"unknown backend {backend!r} (choose {', '.join(BACKENDS)})")
        if asked is not None:
            return cls(*BACKENDS[backend](path, device), device, backend=backend, **kwargs)
        # The default backend is a speed choice: where it cannot run here (no onnxruntime, no
        # CUDA provider, no writable cache, a failed quantisation), the next one down runs
        # the same model: int8 → float32 onnxruntime → torch.
        errors: list[SeparationError] = []
        chain = BACKEND_FALLBACKS[BACKEND_FALLBACKS.index(backend) :]
        for backend in chain:  # noqa: B020 - the one that runs is the one recorded
            try:
                model, meta = BACKENDS[backend](path, device)
                break
            except SeparationError as exc:
                errors.append(exc)
        else:
            raise errors[-1]
        if errors:  # one warning: why the default could not run, and what did
            warnings.warn(f"{errors[0]}; running it on {backend} instead", stacklevel=2)
        return cls(model, meta, device, backend=backend, **kwargs)

    # ----------------------------------------------------------------- planning
    def head_for(self, stems: Sequence[str] | None) -> str:
        """The head to separate ``stems`` with when none is named: the one head that has
        them all (``vocals`` → music), else "both" where the heads together have them
        (``dialogue,vocals``; also where some are unknown: ``plan`` then names only those),
        else the head that has the known ones (the first head where none is known). Stem
        names match in any case."""
        first = next(iter(self.heads))
        if not stems:
            return first
        wanted = {s.lower() for s in stems}
        has = {h: len(wanted & {s.lower() for s in names}) for h, names in self.heads.items()}
        if sum(n == len(wanted) for n in has.values()) == 1:
            return max(has, key=has.__getitem__)
        every = {s.lower() for names in self.heads.values() for s in names}
        known = wanted & every  # where some are unknown, plan names only those
        if (
            len(self.heads) > 1
            and known
            and not any(known <= {s.lower() for s in names} for names in self.heads.values())
        ):
            return BOTH
        return max(has, key=has.__getitem__) if any(has.values()) else first

    def plan(self, head: str | None = None, stems: Sequence[str] | None = None) -> Plan:
        """Resolve ``head`` ("film", "music" or "both"; None: the head that has ``stems``,
        ``head_for``, as the CLI chooses it) and a stem selection to outputs.

        Raises:
            SeparationError: unknown head, or a stem that none of the heads has.
        """
        if isinstance(stems, str):  # "vocals": one stem, not the letters v, o, c...
            stems = [s.strip() for s in stems.split(",") if s.strip()]  # "vocals,drums" too
        if head is None:
            head = self.head_for(stems)
        if head == BOTH:
            heads = tuple(self.heads)
        elif head in self.heads:
            heads = (head,)
        else:
            raise SeparationError(
                f"unknown head {head!r} (choose {', '.join(self.heads)} or {BOTH})"
            )
        wanted = None
        if stems:  # in any case: --stems Dialogue, a checkpoint's "Vocals"
            by_lower = {s.lower(): s for h in heads for s in self.heads[h]}
            wanted = list(dict.fromkeys(by_lower.get(s.lower(), s) for s in stems))
            known = set(by_lower.values())
            unknown = [s for s in wanted if s not in known]
            if unknown:
                others = "".join(  # the other heads' stems: what a user may have looked for
                    f"; the {h} head has {', '.join(names)}"
                    for h, names in self.heads.items()
                    if h not in heads
                )
                raise SeparationError(
                    f"unknown stem(s) {', '.join(unknown)} for head {head} "
                    f"(choose from {', '.join(s for h in heads for s in self.heads[h])}{others})"
                )
        selected, rest_names, outputs = {}, {}, []
        for h in heads:
            chosen = tuple(s for s in self.heads[h] if wanted is None or s in wanted)
            if wanted is not None and not chosen:
                continue  # head both: this head contributes nothing asked for
            selected[h] = chosen
            partial = len(chosen) < len(self.heads[h])
            rest_names[h] = ("rest" if len(heads) == 1 else f"{h}_rest") if partial else None
            outputs += list(chosen) + ([rest_names[h]] if partial else [])
        return Plan(tuple(selected), selected, tuple(outputs), rest_names)

    # ----------------------------------------------------------------- the pipeline
    def _model_call(self, heads: tuple[str, ...]):
        def once(x: torch.Tensor) -> torch.Tensor:  # [b, 2, t] → [b, S_total, 2, t]
            out = self.model(x, heads=list(heads))
            return torch.cat([out[h] for h in heads], dim=1)

        return once

    def _model_fn(self, heads: tuple[str, ...]):
        shared = self._shared
        once = shared[1] if shared is not None and shared[0] == heads else self._model_call(heads)
        if self.shifts == 1:
            return once
        rng = np.random.default_rng(0)  # per stream: the same file gives the same stems
        max_shift = int(0.5 * self.sample_rate)

        def shifted(x: torch.Tensor) -> torch.Tensor:
            # Each pass sees the chunk from sample o on (real audio, no padding); sample n
            # averages the passes with o <= n. The chunk's first samples, seen by fewer
            # passes, lie in the overlap ramp, where the next chunk's estimate dominates.
            t = x.shape[-1]
            total = once(x)
            count = torch.ones(t, device=total.device)
            for _ in range(self.shifts - 1):
                o = int(rng.integers(1, max(2, min(max_shift, t // 2))))
                total[..., o:] += once(x[..., o:])
                count[o:] += 1
            return total / count

        return shifted

    def stream(
        self,
        blocks: Iterable[np.ndarray],
        sample_rate: int,
        channels: int,
        head: str | None = None,
        stems: Sequence[str] | None = None,
        channel_plan: ChannelPlan | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Separate a stream of input blocks [c, t] (samples of any type ``separate`` takes);
        yields {output: float32 block [c, t]} in order.

        The yielded blocks of each output concatenate to exactly the input's length.
        ``channel_plan``: how channels meet the stereo model (default: stereo as is, mono
        duplicated, more channels each as dual mono).
        """
        plan = self.plan(head, stems)
        sample_rate = _checked_rate(sample_rate)
        if not 1 <= channels <= audio.MAX_CHANNELS:
            raise SeparationError(f"{channels} channels (demix handles 1 to {audio.MAX_CHANNELS})")
        model_channels = self.model.channels
        n_stems = sum(len(self.heads[h]) for h in plan.heads)
        down = _Resampler(sample_rate, self.sample_rate, channels)
        up = _Resampler(self.sample_rate, sample_rate, n_stems * channels)
        pending: deque[np.ndarray] = deque()  # input at the file's rate awaiting its stems
        counts = {"in": 0}

        if channel_plan is None and channels > model_channels:
            channel_plan = ChannelPlan.dual_mono(channels)
        if channel_plan is not None:
            if model_channels != 2 or any(
                not 0 <= i < channels for pair in channel_plan.pairs for i in pair
            ):
                raise SeparationError(f"channel plan {channel_plan} for {channels} channels")
            left = torch.tensor([a for a, _ in channel_plan.pairs])
            right = torch.tensor([b for _, b in channel_plan.pairs])
            per_channel = torch.bincount(torch.cat([left, right]), minlength=channels).float()

        def to_model(x: np.ndarray) -> torch.Tensor:  # [c, t] → [g, 2, t]
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            if channel_plan is not None:
                return torch.stack([t[left], t[right]], dim=1)
            if channels == model_channels:
                return t[None]
            return t.expand(model_channels, -1)[None]  # mono: duplicate

        def model_blocks() -> Iterator[torch.Tensor]:
            for block in blocks:
                block = as_float_samples(block, copy=False)  # (no copy per file block)
                if block.ndim != 2 or block.shape[0] != channels:
                    raise SeparationError(f"block shape {block.shape}, expected ({channels}, t)")
                if not np.isfinite(block).all():
                    raise SeparationError("input contains NaN or infinite samples")
                pending.append(block)
                counts["in"] += block.shape[1]
                yield to_model(down(block))
            yield to_model(down(np.zeros((channels, 0), np.float32), last=True))

        def from_model(y: torch.Tensor) -> np.ndarray:  # [g, S, 2, t] → [S*c, t]
            if channel_plan is not None:  # each channel: the mean of its estimates
                acc = y.new_zeros(y.shape[1], channels, y.shape[-1])
                acc.index_add_(1, left, y[:, :, 0].transpose(0, 1))
                acc.index_add_(1, right, y[:, :, 1].transpose(0, 1))
                y = acc / per_channel.clamp_min(1)[:, None]
            elif channels == model_channels:
                y = y[0]
            else:
                y = y.mean(dim=2).transpose(0, 1)  # mono: [S, 1, t]
            return y.reshape(-1, y.shape[-1]).numpy()

        emitted = 0

        def finish(stems_block: np.ndarray) -> dict[str, np.ndarray]:
            nonlocal emitted
            n = stems_block.shape[1]
            mix = take_samples(pending, n, channels)
            emitted += n
            stems_block = stems_block.reshape(n_stems, channels, n)
            outputs: dict[str, np.ndarray] = {}
            offset = 0
            for h in plan.heads:
                names = self.heads[h]
                est = stems_block[offset : offset + len(names)]
                offset += len(names)
                est = est + (mix - est.sum(axis=0)) / len(names)  # stems sum to the mix
                given = set()
                for channel, stem in channel_plan.bypass if channel_plan else ():
                    if stem in names and channel not in given:  # all of it to one stem
                        given.add(channel)
                        est[:, channel] = 0.0
                        est[names.index(stem), channel] = mix[channel]
                chosen = plan.selected[h]
                for i, name in enumerate(names):
                    if name in chosen:
                        outputs[name] = est[i]
                if plan.rest_names[h]:
                    picked = sum(outputs[s] for s in chosen)
                    outputs[plan.rest_names[h]] = mix - picked
            return {k: outputs[k].astype(np.float32) for k in plan.outputs}

        whole_fn = self._model_fn(plan.heads)

        def model_fn(x: torch.Tensor) -> torch.Tensor:
            # At most batch_size signals per model call: a chunk of a 5.1 input carries one
            # stereo signal per channel pair, and the call's activations grow with the
            # signals in it (about 150 MB per 6-s signal on the CPU).
            if x.shape[0] <= self.batch_size:
                return whole_fn(x)
            return torch.cat([whole_fn(part) for part in x.split(self.batch_size)])

        # Each chunk carries one signal per channel pair: as many signals per call as for a
        # stereo input.
        groups = len(channel_plan.pairs) if channel_plan is not None else 1
        chunks_per_call = max(1, self.batch_size // groups)
        for region in iter_separate(
            model_fn,
            model_blocks(),
            self.chunk_samples,
            self.hop_samples,
            chunks_per_call,
            self.device,
        ):
            back = up(from_model(region))
            # Never emit beyond the input received so far (resampler rounding at the end).
            back = back[:, : max(counts["in"] - emitted, 0)]
            if back.shape[1]:
                yield finish(back)
        tail = up(np.zeros((n_stems * channels, 0), np.float32), last=True)
        missing = counts["in"] - emitted
        if missing > 0:  # pad/trim the resampler's last samples to the exact input length
            tail = tail[:, :missing]
            if tail.shape[1] < missing:
                tail = np.pad(tail, ((0, 0), (0, missing - tail.shape[1])))
            yield finish(tail)

    def restart_point(self, sample_rate: int, done_samples: int) -> int:
        """Where a new ``stream`` must start (an input sample at ``sample_rate``, at or
        before ``done_samples``) to give, from ``done_samples`` on, the outputs of the stream
        that was interrupted there: on the chunk grid at the model's rate (chunks fall where
        they fell), a whole chunk and 0.1 s (the resamplers' filters) before it, so every
        chunk that touches ``done_samples`` on sees the same input.

        The outputs are the same to float rounding: at the model's rate, with one signal per
        model call (``batch_size`` 1, as ``demix post`` runs) and ``shifts`` 1, in the last
        bit of a rare sample (regions cut elsewhere meet vectorised arithmetic elsewhere);
        at other rates the restarted resamplers differ by about 3e-7, which came out of a
        small model as 6e-6 of full scale (-104 dBFS).
        """
        if self.shifts > 1:
            return 0  # the shifts' random offsets start again: only a whole rerun is the same
        g = math.gcd(sample_rate, self.sample_rate)
        unit_in, unit_model = sample_rate // g, self.sample_rate // g  # a common instant
        step = unit_in * (self.hop_samples // math.gcd(self.hop_samples, unit_model))
        margin = math.ceil((self.chunk_samples + 0.1 * self.sample_rate) * unit_in / unit_model)
        return max(0, (done_samples - margin) // step * step)

    # ----------------------------------------------------------------- conveniences
    def separate(
        self,
        mix: torch.Tensor | np.ndarray,
        sample_rate: int,
        head: str | None = None,
        stems: Sequence[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Separate an in-memory signal.

        Args:
            mix: [c, t] or [t] (mono); any sample rate. The caller's tensor is not modified.
                Integer PCM (e.g. int16 from ``soundfile.read(..., dtype="int16")``) is scaled
                to float by its full scale, 8-bit unsigned PCM centred on 128 first
                (``as_float_samples``); NaN or infinite samples are refused.
            sample_rate: the rate of ``mix``; stems come back at the same rate.
            head: "film", "music" or "both"; default: the head that has ``stems``
                (``stems=["vocals"]`` → music), the first head (film) without them.
            stems: a subset of the head's stems; the output then adds ``rest``.

        Returns:
            {name: Tensor[c, t]} (or [t] for 1-D input); the stems of each head sum to ``mix``.
        """
        x = as_float_samples(mix)  # a copy: the caller's samples are never touched
        if not np.isfinite(x).all():
            raise SeparationError("mix holds NaN or infinite samples")
        flat = x.ndim == 1
        if flat:
            x = x[None]
        if x.ndim != 2:
            raise SeparationError(f"mix must be [c, t] or [t], got shape {tuple(x.shape)}")
        if x.shape[1] == 0:
            raise SeparationError("mix has zero length")
        parts: dict[str, list[np.ndarray]] = {}
        for out in self.stream([x], sample_rate, x.shape[0], head, stems):
            for k, v in out.items():
                parts.setdefault(k, []).append(v)
        result = {k: torch.from_numpy(np.concatenate(v, axis=1)) for k, v in parts.items()}
        return {k: v[0] for k, v in result.items()} if flat else result

    def separate_file(
        self,
        path: str | os.PathLike,
        out_dir: str | os.PathLike,
        head: str | None = None,
        stems: Sequence[str] | None = None,
        fmt: str = "wav",
        bit_depth: str | None = None,
        overwrite: bool = False,
        progress=None,
        warn=None,
        filename: str = DEFAULT_FILENAME,
        bitrate_kbps: int = 320,
    ) -> dict[str, Path]:
        """Separate one file into ``out_dir/<track>/<stem>.<fmt>`` (or as ``filename`` says),
        streaming, atomically.

        Args:
            path: input audio or video file.
            out_dir: output root; the track folder is created inside it.
            head, stems: as in ``separate``.
            fmt: "wav", "flac" or "mp3" (lossy: its stems do not sum exactly to the input).
            bit_depth: "16", "24" or "32f"; default keeps the input's depth (not for mp3).
            overwrite: replace existing stems (otherwise refuse).
            progress: optional callable(seconds_done, seconds_total).
            warn: callable(message) for what went through but deserves a word (samples of an
                integer-format stem clipped at full scale); default ``warnings.warn``.
            filename: where each stem goes under ``out_dir``: a template with ``{track}``,
                ``{trackext}``, ``{stem}`` and ``{ext}`` (see ``stem_paths``).
            bitrate_kbps: constant bitrate of mp3 stems.

        Returns:
            {stem name: written path}.

        Raises:
            audio.AudioError, SeparationError: with a message naming the file and the reason.
        """
        path = Path(path)
        meta = audio.info(path)
        say = warn or _warn_caller
        for note in meta.notes:
            say(note)
        plan = self.plan(head, stems)
        groups = _null_groups(plan)
        depth = bit_depth or meta.bit_depth
        if bit_depth is None and fmt == "flac" and depth == "32f":
            depth = "24"  # FLAC has no float samples: a float input's default is 24-bit
        audio.subtype_for(fmt, depth)  # validate before doing any work
        if fmt == "mp3":
            try:
                audio.check_mp3(meta.sample_rate, meta.channels)
            except audio.AudioError as exc:
                raise SeparationError(f"{path}: {exc}") from exc
            top = audio.mp3_top_bitrate(meta.sample_rate)
            if bitrate_kbps > top:
                say(
                    f"{path}: an mp3 at {meta.sample_rate} Hz holds at most {top} kb/s: its "
                    f"stems are {top} kb/s, not {bitrate_kbps}"
                )
        targets = stem_paths(path, out_dir, plan.outputs, fmt, filename)
        for target in targets.values():
            if target.resolve() == path.resolve():
                raise SeparationError(f"{path}: output would overwrite the input")
            if target.exists() and not overwrite:
                raise SeparationError(f"{target}: exists (use --overwrite to replace it)")
        folders = sorted({t.parent for t in targets.values()})
        created = []  # folders this call made, removed again if it fails
        for folder in folders:
            missing = [folder, *folder.parents]
            missing = [f for f in missing if not f.exists()]
            try:
                audio.output_folder(folder)  # made, or refused: a file, not writable
            except audio.AudioError as exc:
                raise SeparationError(str(exc)) from exc
            created += missing
        with contextlib.ExitStack() as stack:
            for folder in folders:
                if not stack.enter_context(folder_lock(folder)):
                    raise SeparationError(
                        f"{folder}: another demix process is writing stems here; "
                        "wait for it or choose another -o"
                    )
            try:
                clipped = self._write_stems(
                    path, meta, targets, fmt, depth, bitrate_kbps, head, stems, groups, progress
                )
            except BaseException:
                for folder in sorted(set(created), key=lambda f: len(f.parts), reverse=True):
                    with contextlib.suppress(OSError):  # leave no empty folder behind
                        folder.rmdir()
                raise
            if overwrite:
                self._warn_of_other_stems(path, out_dir, plan, fmt, filename, say)
        if clipped:
            counts = ", ".join(f"{name} {n}" for name, n in clipped.items())
            kind = "mp3" if fmt == "mp3" else f"{depth}-bit"
            last = [names[-1] for names in groups]
            if fmt == "mp3" or set(clipped) & set(last):
                outcome = "they no longer sum exactly to the input"
            else:  # _write_nulling: the head's last stem took what the others lost
                outcome = f"{' and '.join(last)} took the difference, so they still sum to it"
            keep = {  # FLAC and mp3 have no float samples
                "wav": "use --bit-depth 32f to keep them",
                "flac": "FLAC has no float samples: write WAV with --bit-depth 32f to keep them",
                "mp3": "mp3 cannot keep them: write WAV with --bit-depth 32f",
            }[fmt]
            message = (
                f"{path}: samples beyond full scale clipped in the {kind} stems ({counts}); "
                f"{outcome} ({keep}, or turn the input down)"
            )
            say(message)
        return targets

    def _warn_of_other_stems(self, path, out_dir, plan, fmt, filename, say) -> None:
        """After ``--overwrite``: name this track's stem files of the heads just written that
        the run did not write (the ``rest`` of an earlier ``--stems dialogue`` beside new
        ``music`` and ``effects``): the stems there no longer sum to the input. Nothing is
        deleted (a name alone does not say that demix wrote a file); templates without
        ``{track}`` say nothing about whose a file is, so they are not looked at."""
        if "{track" not in filename:
            return
        heads = plan.heads
        names = {s for h in heads for s in self.heads[h]} | {"rest"} | {f"{h}_rest" for h in heads}
        stale = [
            str(p)
            for p in stem_paths(
                path, out_dir, sorted(names - set(plan.outputs)), fmt, filename
            ).values()
            if p.is_file() and p.resolve() != Path(path).resolve()
        ]
        if stale:
            message = (
                f"{path}: {', '.join(stale)} of an earlier run with other stems is still there; "
                "with it the stems there do not sum to the input (remove it if it is not yours)"
            )
            say(message)

    def separate_files(
        self,
        jobs: Sequence[tuple[str | os.PathLike, str | os.PathLike]],
        head: str | None = None,
        stems: Sequence[str] | None = None,
        files_together: int = 1,
        progress: Callable[[Path, float, float], None] | None = None,
        **settings,
    ) -> Iterator[FileOutcome]:
        """Separate many files, each as ``separate_file(path, out_dir, ...)``; yields each
        file's outcome as it completes (one that fails does not stop the others).

        Args:
            jobs: (input file, output root) pairs.
            head, stems: as in ``separate``.
            files_together: files separated at once, each in a thread, whose chunks share
                model calls of up to ``batch_size`` signals (``SharedCalls``): several short
                files fill one batch, which keeps a GPU busy. The stems are those of one file
                at a time (to float rounding). 1: one file after another, in this thread.
                Files whose stems share a folder (a ``filename`` without a folder per track)
                go one after another, since ``separate_file`` locks the folders it writes.
            progress: optional callable(file, seconds done, seconds in the file), called
                from one thread at a time.
            settings: the other ``separate_file`` arguments (fmt, bit_depth, overwrite, ...).

        Raises:
            KeyboardInterrupt: (in this thread) the files being separated are dropped, as
                ``separate_file`` drops an interrupted file, and nothing more is started.
        """
        if files_together < 1:
            raise SeparationError(f"files together {files_together}: choose 1 or more")
        jobs = [(Path(p), Path(o)) for p, o in jobs]
        lock = threading.Lock()

        def one(path: Path, out: Path) -> FileOutcome:
            def report(done: float, total: float) -> None:
                if progress is not None:
                    with lock:
                        progress(path, done, total)

            started = time.time()
            try:
                written = self.separate_file(
                    path, out, head=head, stems=stems, progress=report, **settings
                )
            except BatchCancelled:
                raise
            except Exception as exc:  # noqa: BLE001 - one bad file must not stop the batch
                return FileOutcome(path, {}, exc, time.time() - started)
            return FileOutcome(path, written, None, time.time() - started)

        if files_together == 1 or len(jobs) < 2:
            for path, out in jobs:
                yield one(path, out)
            return
        plan = self.plan(head, stems)
        fmt, filename = settings.get("fmt", "wav"), settings.get("filename", DEFAULT_FILENAME)
        groups = group_by_folders(
            jobs,
            lambda job: {t.parent for t in stem_paths(*job, plan.outputs, fmt, filename).values()},
        )
        threads = min(files_together, len(groups))
        calls = SharedCalls(self._model_call(plan.heads), self.batch_size, threads)
        todo: queue.Queue = queue.Queue()
        for group in groups:
            todo.put(group)
        done: queue.Queue = queue.Queue()
        stop = threading.Event()

        def work() -> None:
            try:
                while not stop.is_set():
                    try:
                        group = todo.get_nowait()
                    except queue.Empty:
                        return
                    for path, out in group:
                        if stop.is_set():
                            return
                        done.put(one(path, out))
            except BatchCancelled:
                return
            finally:
                calls.leave()
                done.put(None)

        self._shared = (plan.heads, calls)
        workers = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
        try:
            for worker in workers:
                worker.start()
            finished = 0
            while finished < threads:
                try:
                    outcome = done.get(timeout=0.5)  # a timeout: Ctrl-C gets through
                except queue.Empty:
                    continue
                if outcome is None:
                    finished += 1
                else:
                    yield outcome
        finally:
            stop.set()
            calls.cancel("interrupted")
            for worker in workers:
                worker.join()
            self._shared = None

    def _write_stems(
        self, path, meta, targets, fmt, depth, bitrate_kbps, head, stems, groups, progress
    ):
        """The body of ``separate_file``, run while the output folders are locked; returns
        the number of clipped samples per stem (stems with none left out). ``groups``: the
        plan's outputs that sum to the mix, per head (``_null_groups``)."""
        for target in targets.values():
            # Temporaries of an earlier run that was killed (SIGKILL, power loss): the folder
            # lock says no other demix is writing them now.
            for stale in target.parent.glob(f".{target.name}.*.tmp"):
                stale.unlink(missing_ok=True)
        # Stems keep the input's rate and layout; overwritten stems free their space only at the
        # rename, so they count as needed too.
        first = next(iter(targets.values())).parent
        needed = _bytes_needed(meta, fmt, depth, bitrate_kbps) * len(targets)
        free = shutil.disk_usage(first).free
        if needed > free:
            raise SeparationError(
                f"{first}: no space left on device for the stems of {path.name} "
                f"(about {needed / 1e6:.0f} MB needed, {free / 1e6:.0f} MB free)"
            )
        writers: dict[str, audio.AtomicWriter] = {}
        committed: list[Path] = []
        done = 0
        if progress is not None:
            progress(0.0, meta.seconds)
        try:
            mask = None
            if meta.channels > 2:
                mask = wav.surround_mask_of(path, meta.channels, meta.speakers)
            # The stems' header states the layout where the input's does (WAV, a container's
            # named layout: "5.1(side)") or its format fixes one (FLAC); a container's
            # "6 channels" is separated as 5.1 but its stems stay unlabelled.
            known = meta.backend == "soundfile" or meta.speakers is not None
            labelled = mask if known else None
            for name, target in targets.items():
                writers[name] = audio.AtomicWriter(
                    target, meta.sample_rate, meta.channels, fmt, depth, bitrate_kbps,
                    meta.frames, channel_mask=labelled,
                )  # fmt: skip
            blocks = audio.iter_blocks(path, meta=meta)
            channel_plan = None
            if mask is not None:  # surround: by the file's speakers (demix post does too)
                channel_plan = ChannelPlan.centre_aware(wav.speakers(mask, meta.channels))
            elif meta.channels > 2 and meta.speakers:  # named, past what a WAV can label
                channel_plan = ChannelPlan.centre_aware(meta.speakers)
            bits = next(iter(writers.values())).bits  # 0: float or mp3 stems
            held: deque[np.ndarray] = deque()  # the input, for integer stems that null

            def teed(blocks=blocks):
                for block in blocks:
                    if bits:
                        held.append(block)
                    yield block

            for out in self.stream(
                teed(), meta.sample_rate, meta.channels, head, stems, channel_plan
            ):
                n = next(iter(out.values())).shape[1]
                if bits:
                    _write_nulling(writers, out, take_samples(held, n, meta.channels), bits, groups)
                else:
                    for name, block in out.items():
                        writers[name].write(block)
                done += n
                if progress is not None:
                    progress(done / meta.sample_rate, meta.seconds)
            for name, writer in writers.items():
                writer.commit()
                committed.append(targets[name])
            return {name: w.clipped for name, w in writers.items() if w.clipped}
        except BaseException as exc:
            # (before the temporaries go, which frees the space again)
            full = isinstance(exc, Exception) and _disk_full(exc, first)
            # All or nothing: drop temporaries and any stem of this track already renamed.
            for writer in writers.values():
                writer.abort()
            for target in committed:
                target.unlink(missing_ok=True)
            if full:
                raise SeparationError(
                    f"{first}: no space left on device while writing the stems of "
                    f"{path.name} (nothing was kept)"
                ) from exc
            raise


def _warn_caller(text: str) -> None:
    """``separate_file``'s default ``warn``: a ``UserWarning`` at its caller's line."""
    warnings.warn(text, stacklevel=3)


def _null_groups(plan: Plan) -> list[list[str]]:
    """The outputs of each head of ``plan``, which sum to the mix: its stems and its rest."""
    return [
        [*plan.selected[h], *([plan.rest_names[h]] if plan.rest_names[h] else [])]
        for h in plan.heads
    ]


def _write_nulling(
    writers: Mapping[str, audio.AtomicWriter],
    out: Mapping[str, np.ndarray],
    mix: np.ndarray,
    bits: int,
    groups: Sequence[Sequence[str]],
) -> None:
    """Write one block of integer stems so that each head's stems sum to the input's integers
    exactly: each stem rounds on its own, but its head's last is the input minus the others
    (rounding every stem alone left the sum up to one step per stem off the input).
    ``out``: {output: block [c, t]}; ``mix``: the input's block [c, t].

    The input's integers are not clipped: a float or lossy input past full scale leaves its
    overs to the last stem, which clips (and counts) only what it cannot hold itself, not
    the inverted overs a clipped mix minus the others would put there."""
    mix_ints = np.rint(mix.astype(np.float64) * float(1 << (bits - 1))).astype(np.int64)
    for names in groups:
        others = np.zeros_like(mix_ints)
        for name in names[:-1]:
            others += writers[name].write(out[name])  # quantised, clipped and counted
        writers[names[-1]].write_ints(mix_ints - others)


@dataclass
class FileOutcome:
    """What became of one file of ``Separator.separate_files``."""

    path: Path
    written: dict[str, Path]  # {stem: file}; empty when it failed
    error: Exception | None  # AudioError, SeparationError, OSError, or an unexpected one
    seconds: float  # wall time it took


class OutputClaims:
    """Which input of a batch writes each output file: the first to claim a file keeps it,
    and a later input whose outputs would overwrite it is refused (two inputs of one name
    given from two folders, or a ``--filename`` without ``{trackext}``)."""

    def __init__(self) -> None:
        self._owner: dict[Path, Path] = {}

    def claim(self, source: str | os.PathLike, targets: Iterable[str | os.PathLike]) -> Path | None:
        """Claim ``targets`` for ``source``; returns the input already holding one of them
        (nothing is claimed then), or None."""
        targets = [Path(t) for t in targets]
        holder = next((self._owner[t] for t in targets if t in self._owner), None)
        if holder is None:
            self._owner.update(dict.fromkeys(targets, Path(source)))
        return holder


@dataclass(frozen=True)
class PlannedInput:
    """One input of a batch as ``plan_inputs`` finds it, before any separation."""

    path: Path
    folder: Path  # the output folder with the input's mirrored subfolder
    targets: dict[str, Path]  # {output: stem file}; empty where it failed
    status: str  # "run", "skipped" (its stems are all there) or "failed"
    error: str | None = None  # why it failed, one line naming the input


def plan_inputs(
    files: Sequence[tuple[Path, Path]],
    out_dir: Path,
    outputs: Sequence[str],
    fmt: str,
    filename: str = DEFAULT_FILENAME,
    overwrite: bool = False,
) -> list[PlannedInput]:
    """What a batch does with each of ``files`` (``separation_inputs``: file, output
    subfolder), in order: the one planning step of ``demix separate`` and of ``--ray``.
    An input fails where ``filename`` cannot name its stems as ``fmt`` files or where its
    stems would be another input's of this batch; it is skipped where every stem is there
    and ``overwrite`` is off (a rerun resumes an interrupted batch)."""
    claims = OutputClaims()  # stem file → the input of this batch that writes it
    planned = []
    for path, subfolder in files:
        folder = out_dir / subfolder
        try:
            targets = stem_paths(path, folder, outputs, fmt, filename)
        except (SeparationError, ValueError) as exc:  # e.g. a {trackext} template, an mp3
            planned.append(
                PlannedInput(path, folder, {}, "failed", audio.one_line_error(exc, path))
            )
            continue
        clash = claims.claim(path, targets.values())
        if clash is not None:
            error = (
                f"{path}: its stems would go to {next(iter(targets.values()))}, already "
                f"written for {clash} in this batch (use another -o or a --filename with "
                "{trackext})"
            )
            planned.append(PlannedInput(path, folder, targets, "failed", error))
        elif not overwrite and all(t.exists() for t in targets.values()):
            planned.append(PlannedInput(path, folder, targets, "skipped"))
        else:
            planned.append(PlannedInput(path, folder, targets, "run"))
    return planned


def group_by_folders(items: Sequence, folders: Callable[[object], Iterable[Path]]) -> list[list]:
    """``items`` in groups, in order, such that items whose ``folders(item)`` share a folder
    are in one group (union-find): what must be written one after another."""
    parent = list(range(len(items)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[Path, int] = {}
    for i, item in enumerate(items):
        for folder in folders(item):
            if folder in owner:
                parent[root(i)] = root(owner[folder])
            else:
                owner[folder] = i
    groups: dict[int, list] = {}
    for i, item in enumerate(items):
        groups.setdefault(root(i), []).append(item)
    return list(groups.values())


def output_names(heads: Mapping[str, Sequence[str]]) -> set[str]:
    """Every name a stem file of a model with these heads can have (its stems, ``rest`` and
    ``<head>_rest``), whatever stems a run asks for."""
    return {s for stems in heads.values() for s in stems} | {"rest"} | {f"{h}_rest" for h in heads}


def without_earlier_stems(
    files: Sequence[tuple[Path, Path]],
    names: Iterable[str],
    filename: str = DEFAULT_FILENAME,
    given: Iterable[str | os.PathLike] = (),
) -> list[tuple[Path, Path]]:
    """``files`` (``audio.find_inputs``: file, output subfolder) without those found in a
    folder that are the stems of another of them: files whose path ends where ``filename``
    or the default template puts a stem of that input under its mirrored subfolder (any of
    ``names``, any output format), in any output folder. With ``-o`` the input folder, or
    another ``-o`` inside it, an earlier run's stems (``reels/film/r1/music.wav`` beside
    ``reels/r1.wav``) must not be separated again. Templates without ``{track}`` or
    ``{trackext}`` say nothing about whose stem a file is, so they are not used. Files
    named in ``given`` are always kept: the user asked for them. What is left out is said
    in one line on stderr."""
    kept_always = {Path(g).absolute() for g in given}
    names = list(names)
    templates = []
    for template in dict.fromkeys((filename, DEFAULT_FILENAME)):
        with contextlib.suppress(ValueError):
            fields = {f for _, f, _, _ in string.Formatter().parse(template) if f}
            if fields & {"track", "trackext"}:
                templates.append(template)
    owners: dict[tuple[str, ...], Path] = {}  # a stem's path under an output folder → input
    for path, subfolder in files:
        for template in templates:
            for fmt in audio.OUTPUT_FORMATS:
                with contextlib.suppress(SeparationError, ValueError):  # a name it cannot use
                    for target in stem_paths(path, subfolder, names, fmt, template).values():
                        owners.setdefault(target.parts, path)
    longest = max((len(k) for k in owners), default=0)
    stems_of: dict[Path, Path] = {}  # stem file → the input it belongs to
    for path, _ in files:
        where = path.absolute()
        if where in kept_always:
            continue
        parts = where.parts
        for k in range(1, min(longest, len(parts)) + 1):
            owner = owners.get(parts[-k:])
            if owner is not None and owner.absolute() != where:
                stems_of[path] = owner
                break
    kept = [(path, sub) for path, sub in files if path not in stems_of]
    if stems_of:
        first = sorted(stems_of)[0]
        print(
            f"demix: left out {len(stems_of)} file(s) that are stems of other inputs, written "
            f"by an earlier run (e.g. {first}, of {stems_of[first]})",
            file=sys.stderr,
        )
    return kept


def separation_inputs(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    names: Iterable[str],
    filename: str = DEFAULT_FILENAME,
) -> list[tuple[Path, Path]]:
    """The (file, output subfolder) pairs a batch separates: ``audio.find_inputs`` (folders
    searched recursively, ``out_dir`` and hidden files skipped) without the stems an earlier
    run wrote among them (``without_earlier_stems``). ``names``: every stem name the model
    can write (``output_names``). ``demix separate`` and ``--ray`` both plan from this list."""
    found = audio.find_inputs([str(i) for i in inputs], out_dir)
    given = [i for i in inputs if not Path(i).is_dir()]
    return without_earlier_stems(found, names, filename, given)


def stem_paths(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    outputs: Sequence[str],
    fmt: str = "wav",
    filename: str = DEFAULT_FILENAME,
) -> dict[str, Path]:
    """{output: file} for the stems of ``path``: ``out_dir / filename`` with ``{track}`` (the
    input's name without extension), ``{trackext}`` (with it), ``{stem}`` and ``{ext}``
    filled in, as demucs' ``--filename``.

    Raises:
        SeparationError: unknown field, no ``{stem}``, or a path that leaves ``out_dir``.
    """
    try:
        parsed = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(filename)]
    except ValueError as exc:
        raise SeparationError(f"--filename {filename!r}: {exc}") from exc
    fields = {f for f, _, _ in parsed if f is not None}
    dressed = [f for f, spec, conv in parsed if f is not None and (spec or conv)]
    if dressed:  # {track!r} puts quotes in file names, {stem:>10} spaces
        raise SeparationError(
            f"--filename {filename!r}: write {{{dressed[0]}}} plain, without a conversion "
            "(!r) or a format (:...)"
        )
    unknown = fields - {"track", "trackext", "stem", "ext"}
    if unknown:
        raise SeparationError(
            f"--filename {filename!r}: unknown field(s) {', '.join(sorted(unknown))} "
            "(use {track}, {trackext}, {stem}, {ext})"
        )
    if "stem" not in fields:
        raise SeparationError(f"--filename {filename!r}: needs {{stem}}, or every stem collides")
    path = Path(path)
    targets = {}
    for name in outputs:
        rel = Path(filename.format(track=path.stem, trackext=path.name, stem=name, ext=fmt))
        if rel.is_absolute() or ".." in rel.parts or not rel.name:
            raise SeparationError(
                f"--filename {filename!r}: gives {rel}, which is not a file inside the "
                "output folder"
            )
        if rel.suffix.lower() != f".{fmt}":  # WAV data in music.mp3, or in a bare name
            raise SeparationError(
                f"--filename {filename!r}: gives {rel.name}, not a .{fmt} file for "
                f"--format {fmt} (end the template with .{{ext}})"
            )
        targets[name] = Path(out_dir) / rel
    return targets


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[bool]:
    """Hold an exclusive advisory lock on ``folder`` (flock on the folder itself, so no lock
    file is left behind); yields False when another process holds it. Where flock is missing
    (Windows, file systems without it), yields True without locking."""
    try:
        import fcntl
    except ImportError:
        yield True
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        except OSError as exc:  # a file system without flock (some NFS or Lustre mounts)
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _bytes_needed(meta: audio.AudioInfo, fmt: str, depth: str, bitrate_kbps: int) -> int:
    """Rough size of one stem file: PCM size for wav, about 70 % of it for flac (noise-like
    stems compress little; the check must not refuse a run that fits), the bitrate for mp3."""
    if fmt == "mp3":
        return int(meta.seconds * bitrate_kbps * 1000 / 8)
    size = meta.frames * meta.channels * audio.SAMPLE_BYTES[depth]
    return int(size * (0.7 if fmt == "flac" else 1.0))


def _disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether a write failure is a full disk (libsndfile reports ENOSPC as "System error")."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    try:
        return shutil.disk_usage(folder).free < (1 << 20)
    except OSError:
        return False


def take_samples(pending: deque[np.ndarray], n: int, channels: int) -> np.ndarray:
    """Pop exactly ``n`` samples [c, n] from the front of a queue of blocks [c, t]."""
    out = np.empty((channels, n), np.float32)
    filled = 0
    while filled < n:
        block = pending[0]
        k = min(n - filled, block.shape[1])
        out[:, filled : filled + k] = block[:, :k]
        filled += k
        if k == block.shape[1]:
            pending.popleft()
        else:
            pending[0] = block[:, k:]
    return out
