"""Dialogue cleanup for post-production: DX, MX, FX and ME deliverables that null to the input.

``post_file`` separates one input with the film head through ``Separator.stream`` (the one
inference path) and writes, for the deliverables asked for, ``<name>_DX.wav`` (dialogue),
``_MX`` (music), ``_FX`` (effects) and ``_ME`` (music + effects, the M&E of a dub):

- **Null test exact in the files**: the deliverables are computed in the output's integer
  format: DX (and MX) are quantised, then ME = input − DX and FX = input − DX − MX, so
  DX + ME and DX + MX + FX give the input back sample for sample, on hot mixes too (where
  a difference would pass full scale, DX or MX moves towards the mix just enough for it to
  fit; those samples are counted and reported). 32-bit float inputs give
  float deliverables, exact to float rounding.
- **Format kept**: rate, bit depth (16, 24, 32f; a video's PCM depth too; 32-bit integer
  inputs are delivered as 24-bit, so they null to within a 24-bit step), length, channel mask
  (WAVE_FORMAT_EXTENSIBLE), RF64 past 4 GiB, and the input's ``bext`` and ``iXML`` chunks
  (description, originator, date, time reference: the stems land on the timeline at the
  input's timecode) copied byte for byte into every deliverable (``demix.wav``).
- **Centre-aware channels** (``ChannelPlan.centre_aware``): C is separated on its own (as
  dual mono: its dialogue centred, as in training), L/R and the surrounds as stereo pairs,
  LFE never goes to dialogue (it is effects, so M&E).
- **Levels**: integrated loudness (BS.1770, LUFS), true peak (dBTP) and loudness range (LU)
  of every deliverable, and the dialogue-to-M&E difference, metered while streaming
  (``demix.meter``), so memory stays flat in the input's length.

With ``dialogue_gain_db``, also ``<name>_REMIX.wav``: an accessible mix (ME + DX raised),
true-peak limited to -1 dBTP, optionally normalised to -24 LKFS (ATSC A/85) or -23 LUFS (EBU
R128) as measured after limiting; the stems are never normalised.

``post_batch`` runs a list of inputs, skipping those whose deliverables are complete,
keeping going past bad files, and writes ``report.csv`` and ``report.json``.

**Resume within a reel**: every ``RESUME_EVERY_S`` the partial deliverables are synced to
disk and a checkpoint records how far they go, with the loudness meters' state (``_Resume``);
after Ctrl-C, SIGTERM, a crash or a power cut, the same command continues from there: the
separation restarts a chunk earlier on the same chunk grid (``Separator.restart_point``), so
the continued files are those of an uninterrupted run to float rounding (tested).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from demix import audio, wav
from demix.meter import LoudnessMeter, true_peak_oversampler, weights_for
from demix.separator import (
    ChannelPlan,
    OutputClaims,
    SeparationError,
    Separator,
    folder_lock,
    take_samples,
)

DELIVERABLES = {"dx": "DX", "mx": "MX", "fx": "FX", "me": "ME"}
DEFAULT_DELIVER = ("dx", "me")
RESUME_EVERY_S = 30.0  # wall seconds between resume checkpoints of a deliverable in progress
LAYOUT_NAMES = {0x4: "mono", 0x3: "stereo", 0x3F: "5.1", 0x60F: "5.1", 0x63F: "7.1"}


@dataclass
class PostResult:
    """One input's row of the report."""

    file: str
    status: str  # "done", "skipped" (deliverables already complete) or "failed"
    error: str = ""
    duration_s: float = 0.0
    sample_rate: int = 0
    bit_depth: str = ""
    layout: str = ""
    seconds_taken: float = 0.0
    levels: dict[str, dict[str, float]] = field(default_factory=dict)  # DX → lufs, dbtp, lra
    dialogue_to_me_db: float | None = None
    clipped_samples: int = 0  # where DX or MX moved so that ME or FX fit in the format
    outputs: list[str] = field(default_factory=list)
    remix: dict[str, float | str | None] = field(default_factory=dict)  # see accessible_remix
    resumed_from_s: float = 0.0  # an interrupted run's deliverables were continued from here
    notes: list[str] = field(default_factory=list)  # odd but readable input (audio.info)


def parse_deliver(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"dx,me"`` → ("dx", "me"); raises ValueError naming what is unknown."""
    items = text.split(",") if isinstance(text, str) else list(text)
    wanted = tuple(dict.fromkeys(i.strip().lower() for i in items if i.strip()))
    unknown = [w for w in wanted if w not in DELIVERABLES]
    if unknown or not wanted:
        raise ValueError(
            f"--deliver {','.join(unknown) or '(nothing)'}: choose from "
            f"{', '.join(DELIVERABLES)} (e.g. dx,me or dx,mx,fx,me)"
        )
    return wanted


def deliverable_paths(path: Path, out_dir: Path, deliver: Sequence[str]) -> dict[str, Path]:
    """``out_dir/<name>_DX.wav`` (and so on) for each deliverable asked for."""
    return {d: Path(out_dir) / f"{Path(path).stem}_{DELIVERABLES[d]}.wav" for d in deliver}


def remix_path_for(path: Path, out_dir: Path) -> Path:
    """``out_dir/<name>_REMIX.wav``, the ``--dialogue-gain`` remix of ``path``."""
    return Path(out_dir) / f"{Path(path).stem}_REMIX.wav"


def layout_name(mask: int, channels: int) -> str:
    """A short description of a channel layout: ``5.1 (FL FR FC LFE SL SR)``."""
    names = " ".join(wav.speakers(mask, channels))
    common = LAYOUT_NAMES.get(mask) if bin(mask).count("1") == channels else None
    return f"{common} ({names})" if common else f"{channels} ch ({names})"


def post_file(
    separator: Separator,
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    deliver: Sequence[str] = DEFAULT_DELIVER,
    overwrite: bool = False,
    progress: Callable[[float], None] | None = None,
    dialogue_gain_db: float | None = None,
    normalise: str | None = None,
    stage: Callable[[str], None] | None = None,
) -> PostResult:
    """Write the deliverables of one input (see the module docstring).

    Args:
        separator: a model with a film head (dialogue, music, effects).
        path: the input (any format demix reads; metadata chunks are read from WAV).
        out_dir: where the deliverables go.
        deliver: a subset of "dx", "mx", "fx", "me".
        overwrite: replace complete deliverables (otherwise the input is skipped).
        progress: called with the seconds of input done since the last call.
        dialogue_gain_db: also write ``<name>_REMIX.wav``, ME + DX raised by this much
            (needs dx and me), limited below -1 dBFS (``accessible_remix``).
        normalise: "atsc" (-24 LKFS) or "ebu" (-23 LUFS) for that remix.
        stage: called with what the remix is doing once the deliverables are written
            ("REMIX: metering pass 2", "REMIX: writing"): each pass over a two-hour reel
            takes minutes.

    Returns:
        The report row; failures are returned as status "failed" with the one-line reason,
        never raised (except KeyboardInterrupt), and leave no deliverable behind.
    """
    path, out_dir = Path(path), Path(out_dir)
    started = time.time()
    _bound_heap()
    result = PostResult(str(path), "done")
    targets = deliverable_paths(path, out_dir, deliver)
    remix_path = remix_path_for(path, out_dir)
    try:
        if dialogue_gain_db is not None and not abs(dialogue_gain_db) <= MAX_DIALOGUE_GAIN_DB:
            raise ValueError(
                f"--dialogue-gain {dialogue_gain_db:g}: choose a gain within "
                f"±{MAX_DIALOGUE_GAIN_DB:g} dB (an accessible mix raises dialogue by 3 to 12)"
            )
        if dialogue_gain_db is not None and not {"dx", "me"} <= set(deliver):
            raise ValueError("--dialogue-gain remixes DX and ME: deliver dx and me")
        if normalise is not None and (dialogue_gain_db is None or normalise not in NORMALISE_LUFS):
            raise ValueError("--normalise atsc|ebu applies to the --dialogue-gain remix")
        if not {"dialogue", "music", "effects"} <= set(separator.heads.get("film", ())):
            raise SeparationError("the model has no film head with dialogue, music, effects")
        wanted = [*targets.values()] + ([remix_path] if dialogue_gain_db is not None else [])
        existing = [t for t in wanted if t.exists()]
        if not overwrite and len(existing) == len(wanted):
            result.status = "skipped"
            result.outputs = [str(t) for t in wanted]
            return result
        if not overwrite and existing:  # e.g. a mixer's own DX beside the reel, or a new
            # --dialogue-gain over finished stems: never replaced unless asked
            raise SeparationError(f"{existing[0]}: already exists (--overwrite replaces it)")
        meta = audio.info(path)
        result.notes = list(meta.notes)
        if meta.backend == "soundfile" and path.suffix.lower() in (".wav", ".wave"):
            layout = wav.read_layout(path)
        else:  # the layout a container names, else 5.1 / 7.1 by count, else tracks
            chunks = {}
            if meta.timecode_seconds is not None:  # a video's timecode → the BWF time reference
                chunks[b"bext"] = wav.bext_chunk(
                    f"demix post of {path.name}",
                    "demix",
                    round(meta.timecode_seconds * meta.sample_rate),
                )
            if meta.channels <= 2:  # mono and stereo stems are labelled as such in post
                mask = wav.assumed_mask(meta.channels)
            else:
                mask = wav.surround_mask_of(path, meta.channels, meta.speakers)
            layout = wav.WavLayout(meta.channels, mask or 0, False, chunks)
        names = wav.speakers(layout.channel_mask, meta.channels)
        if not layout.channel_mask and meta.speakers:  # named past what a WAV labels (9.1.6)
            names = list(meta.speakers)
        result.duration_s, result.sample_rate = meta.seconds, meta.sample_rate
        result.bit_depth, result.layout = (
            meta.bit_depth,
            layout_name(layout.channel_mask, meta.channels),
        )
        for target in targets.values():
            if target.resolve() == path.resolve():
                raise SeparationError(f"{target}: output would overwrite the input")
        out_dir.mkdir(parents=True, exist_ok=True)
        with folder_lock(out_dir) as locked:  # a second run here would adopt and cut back
            # this run's partial files while it writes them
            if not locked:
                raise SeparationError(
                    f"{out_dir}: another demix process is writing here; wait for it or "
                    "choose another -o"
                )
            _write(separator, path, meta, layout, names, targets, result, progress)
            if dialogue_gain_db is not None:
                result.remix = accessible_remix(
                    targets["dx"],
                    targets["me"],
                    remix_path,
                    dialogue_gain_db,
                    normalise,
                    stage=stage,
                )
                result.outputs.append(str(remix_path))
    except (audio.AudioError, SeparationError, OSError, ValueError) as exc:
        result.status, result.error = "failed", audio.one_line_error(exc, path)
    result.seconds_taken = round(time.time() - started, 2)
    return result


def _write(separator, path, meta, layout, names, targets, result, progress) -> None:
    """Stream the separation into the deliverables (all or nothing), continuing an
    interrupted run's partial files where its resume checkpoint allows (``_Resume``)."""
    integer = meta.bit_depth in ("16", "24")
    scale = float(1 << (int(meta.bit_depth) - 1)) if integer else 1.0
    plan = ChannelPlan.centre_aware(names) if meta.channels > 2 else None
    meters = {
        d: LoudnessMeter(meta.sample_rate, meta.channels, weights_for(names))
        for d in (*targets, "mix")
    }
    # A checkpoint of this very input, model and deliverables is continued even with
    # --overwrite: what it holds is what redoing would write.
    resume = _Resume(separator, path, meta, targets)
    writers: dict[str, wav.WavWriter] = {}

    def open_writers(frames: int) -> None:
        for d, target in targets.items():
            writers[d] = wav.WavWriter(
                target, meta.sample_rate, meta.channels, meta.bit_depth,
                layout.channel_mask, layout.chunks, resume.partials[d], frames,
            )  # fmt: skip

    done = resume.frames  # frames already in the partial files
    try:
        open_writers(done)
    except (audio.AudioError, OSError):
        for writer in writers.values():
            writer.abort()
        writers.clear()
        if not done:
            raise
        resume.discard()  # partial files that do not match their checkpoint: start over
        done = 0
        open_writers(0)
    position = separator.restart_point(meta.sample_rate, done) if done else 0
    if done:
        result.resumed_from_s = round(done / meta.sample_rate, 3)
        result.clipped_samples = resume.clipped_samples
        if progress is not None:
            progress(done / meta.sample_rate)
    history_frames = int(0.01 * meta.sample_rate)  # refills the true-peak oversamplers
    committed: list[Path] = []
    pending: deque[np.ndarray] = deque()
    consistent = not done  # the meters are where the files are (on resume: once restored)
    saved_at = time.monotonic()

    def blocks():
        for block in audio.iter_blocks(path, meta=meta, start_frame=position):
            pending.append(block)
            yield block

    try:
        stems = separator.stream(
            blocks(), meta.sample_rate, meta.channels, "film", channel_plan=plan
        )
        for out in stems:
            n = out["dialogue"].shape[1]
            mix = take_samples(pending, n, meta.channels)
            if integer:  # exact: the file's integers
                mix = np.rint(mix.astype(np.float64) * scale).astype(np.int32)
            gain = np.float32(1.0 / scale)
            skip = min(max(done - position, 0), n)  # written before the interruption
            position += n
            if skip:
                if position >= done:  # the resume point: the meters go on from their state
                    lead = slice(max(0, skip - history_frames), skip)
                    parts = _deliverables(
                        {k: v[:, lead] for k, v in out.items()}, mix[:, lead], scale,
                        integer, targets, PostResult("", ""),
                    )  # fmt: skip
                    parts["mix"] = mix[:, lead]
                    for d, meter in meters.items():
                        meter.restore(resume.meters[d], parts[d].astype(np.float32) * gain)
                    consistent = True
                out = {k: v[:, skip:] for k, v in out.items()}
                mix = mix[:, skip:]
                if not mix.shape[1]:
                    continue
            with _interrupts_held():  # every deliverable and meter takes the region whole
                parts = _deliverables(out, mix, scale, integer, targets, result)
                for d, writer in writers.items():
                    if integer:
                        writer.write_ints(parts[d])
                    else:
                        writer.write_floats(parts[d])
                    meters[d].add(parts[d].astype(np.float32) * gain)
                meters["mix"].add(mix.astype(np.float32) * gain)
            _return_free_memory()
            if progress is not None:
                progress(mix.shape[1] / meta.sample_rate)
            if time.monotonic() - saved_at >= RESUME_EVERY_S:
                resume.save(writers, meters, result.clipped_samples)
                saved_at = time.monotonic()
        with _interrupts_held():  # all deliverables or none, then no checkpoint
            for d, writer in writers.items():
                writer.commit()
                committed.append(targets[d])
            resume.discard()
    except (KeyboardInterrupt, OSError):  # also SIGTERM (the CLI), a full disk: keep what a
        # rerun can continue (it cuts the files back to the checkpoint)
        if consistent and len(writers) == len(targets) and min(w.frames for w in
                                                                writers.values()) > 0:  # fmt: skip
            with contextlib.suppress(Exception):  # the interruption is what matters
                resume.save(writers, meters, result.clipped_samples)
        for writer in writers.values():
            with contextlib.suppress(Exception):
                writer.close()
        if not resume.saved:  # nothing a rerun could continue
            resume.discard()
        raise
    except BaseException:
        for writer in writers.values():
            writer.abort()
        for target in committed:
            target.unlink(missing_ok=True)
        resume.discard()
        raise
    for d, meter in meters.items():
        key = DELIVERABLES.get(d, "mix")
        result.levels[key] = {
            "lufs": _finite(meter.integrated_lufs()),
            "dbtp": _finite(meter.true_peak_dbtp()),
            "lra": round(meter.loudness_range_lu(), 2),
        }
    dx = meters["dx"].integrated_lufs() if "dx" in meters else None
    me = meters["me"].integrated_lufs() if "me" in meters else None
    if dx is not None and me is not None and np.isfinite(dx) and np.isfinite(me):
        result.dialogue_to_me_db = round(dx - me, 2)
    result.outputs = [str(t) for t in targets.values()]


class _Resume:
    """The resume checkpoint of one input's deliverables: fixed partial file names beside
    the outputs (``.<name>_DX.wav.partial``) and ``.<name>.demix-post.npz`` holding the frames
    they hold for certain (written after the partial files are synced), every loudness
    meter's state and the clipped-sample count, under a fingerprint of the input (path,
    size, modification time), the deliverables, the model and its chunking. A checkpoint
    whose fingerprint differs is ignored (and replaced): the run starts over.

    Args:
        separator: the model that will run.
        path, meta: the input and what ``audio.info`` says of it.
        targets: deliverable → final path.
    """

    FORMAT = 1  # of the checkpoint file

    def __init__(self, separator, path: Path, meta, targets: dict[str, Path]):
        out_dir = next(iter(targets.values())).parent
        self.file = out_dir / f".{path.stem}.demix-post.npz"
        self.partials = {d: t.with_name(f".{t.name}.partial") for d, t in targets.items()}
        stat = path.stat()
        self.fingerprint = json.dumps(
            {
                "checkpoint": self.FORMAT,
                "input": str(path.resolve()),
                "bytes": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "format": [meta.sample_rate, meta.channels, meta.bit_depth, meta.speakers],
                "deliver": list(targets),
                "model": separator.metadata,
                "chunking": [separator.chunk_samples, separator.hop_samples,
                             separator.batch_size, separator.shifts],
            },
            sort_keys=True, default=str,
        )  # fmt: skip
        self.frames, self.clipped_samples = 0, 0
        self.saved = False  # a checkpoint on disk matches the partial files
        self.meters: dict[str, dict[str, np.ndarray]] = {}
        self._load(meta.frames)
        if not self.saved:  # starting over: partial files of an earlier, other run go
            self.file.unlink(missing_ok=True)
            for name in DELIVERABLES.values():  # exactly this input's (not R1_alt's for R1)
                (out_dir / f".{path.stem}_{name}.wav.partial").unlink(missing_ok=True)

    def _load(self, total_frames: int) -> None:
        try:
            with np.load(self.file, allow_pickle=False) as saved:
                arrays = {k: saved[k] for k in saved.files}
        except Exception:  # noqa: BLE001 - none, truncated or not ours: start over
            return
        frames = int(arrays.pop("frames", -1))
        if (
            str(arrays.pop("fingerprint", "")) != self.fingerprint
            or not 0 < frames < total_frames
            or not all(p.exists() for p in self.partials.values())
        ):
            return
        meters: dict[str, dict[str, np.ndarray]] = {}
        for key, value in arrays.items():  # "<meter>/<array>"
            meter, _, name = key.partition("/")
            meters.setdefault(meter, {})[name] = value
        self.clipped_samples = int(meters.pop("clipped_samples", {}).get("", 0))
        self.frames, self.saved, self.meters = frames, True, meters

    def save(self, writers: dict, meters: dict, clipped_samples: int) -> None:
        """Sync the partial files, then record (atomically) what they hold."""
        for writer in writers.values():
            writer.sync()
        arrays = {
            f"{d}/{name}": value for d, meter in meters.items()
            for name, value in meter.state().items()
        }  # fmt: skip
        arrays["frames"] = np.asarray(min(w.frames for w in writers.values()))
        arrays["fingerprint"] = np.asarray(self.fingerprint)
        arrays["clipped_samples"] = np.asarray(clipped_samples)
        tmp = audio.temporary_path(self.file)
        try:
            with tmp.open("wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.file)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.saved = True

    def discard(self) -> None:
        """Remove the checkpoint (the deliverables are complete, or failed for good)."""
        self.saved = False
        self.file.unlink(missing_ok=True)
        for partial in self.partials.values():
            partial.unlink(missing_ok=True)


def _deliverables(
    out: dict[str, np.ndarray],
    mix: np.ndarray,
    scale: float,
    integer: bool,
    wanted: Sequence[str],
    result: PostResult,
) -> dict[str, np.ndarray]:
    """The ``wanted`` ones of DX, MX (quantised), ME = mix − DX, FX = mix − DX − MX, on the
    output's scale (int32 for integer formats: differences of 24-bit codes are exact in it,
    at half the memory of float64).

    In an integer format a difference can pass full scale (a hot mix, DX of the opposite
    sign at its peaks): DX is then moved towards the mix at those samples, just enough for
    ME to fit (and MX for FX), so the null stays exact; those samples are counted in
    ``result.clipped_samples`` (clipping ME instead broke the null by up to −31 dBFS). DX
    and MX are fitted whether or not ME and FX are wanted, so that deliverables of separate
    runs (``--deliver dx`` now, ``--deliver me`` later) null too."""
    bits = int(np.log2(scale)) + 1 if integer else 0
    low, high = -int(scale), int(scale) - 1

    def quantised(x: np.ndarray) -> np.ndarray:
        return audio.quantise(x, bits) if integer else x.astype(np.float32)

    def fitted(part: np.ndarray, total: np.ndarray) -> np.ndarray:
        """``part`` where ``total - part`` fits the format (``total`` does)."""
        if not integer:
            return part
        lowest, highest = np.maximum(total - high, low), np.minimum(total - low, high)
        moved = (part < lowest) | (part > highest)
        count = int(np.count_nonzero(moved))
        if not count:
            return part
        result.clipped_samples += count
        return np.clip(part, lowest, highest).astype(part.dtype)

    mix = np.asarray(mix, dtype=np.int32 if integer else np.float32)
    if integer:  # a decoded lossy input can pass full scale: the null is to what fits
        mix = np.clip(mix, low, high)
    dx = fitted(quantised(out["dialogue"]), mix)
    parts = {"dx": dx}
    me = mix - dx
    if "me" in wanted:
        parts["me"] = me
    if {"mx", "fx"} & set(wanted):
        mx = fitted(quantised(out["music"]), me)
        parts["mx"] = mx
        if "fx" in wanted:
            parts["fx"] = me - mx
    return parts


NORMALISE_LUFS = {"atsc": -24.0, "ebu": -23.0}  # ATSC A/85 (LKFS = LUFS), EBU R128
MAX_DIALOGUE_GAIN_DB = 40.0  # past this the REMIX is the limiter's, not a mix (nan: refused)


TRUE_PEAK_MARGIN_DB = 0.02  # how far under its ceiling the limiter aims


class PeakLimiter:
    """A look-ahead brickwall limiter that never lets the true peak past ``ceiling``.

    The peak at each input sample is the larger of the sample itself and the oversampled
    signal from it to the next sample (BS.1770-4 Annex 2, through the loudness meter's own
    oversampler, ``demix.meter.true_peak_oversampler``: a sample-peak limiter let inter-sample
    peaks read +0.1 dBTP over a -1 dBFS ceiling). The gain needed at each sample (ceiling /
    peak across channels, at most 1) is taken as the minimum over ±``window`` samples, then
    averaged over a centred window of the same length: every averaged value is at most the
    gain needed at the centre, so no output sample passes the ceiling, and the gain moves
    smoothly (over ``window_s``) rather than clipping. Offline (it looks ahead as far as it
    looks back); state carries across blocks.

    Args:
        sample_rate: the signal's rate.
        channels: channel count.
        ceiling: the largest true peak let through (linear, full scale 1.0).
        window_s: the gain's attack and release window.
        true_peak: False limits sample peaks only.
    """

    def __init__(
        self,
        sample_rate: int,
        channels: int,
        ceiling: float,
        window_s: float = 0.02,
        true_peak: bool = True,
    ):
        # aim 0.02 dB under: the gain's own movement lifts the true peak between samples by a
        # few thousandths of a dB (0.004 seen on gated high-frequency bursts)
        self.ceiling = ceiling * 10 ** (-TRUE_PEAK_MARGIN_DB / 20)
        self.half = max(1, int(window_s * sample_rate) // 2)
        self._input = np.zeros((channels, 0))
        self._need = np.ones(0)
        self._started = False
        self.limited_samples = 0
        self.max_reduction_db = 0.0
        self._factor, self._upsample = (
            true_peak_oversampler(sample_rate, channels) if true_peak else (1, None)
        )
        self._sample_peaks = np.zeros(0)  # |x| of inputs still waiting for their oversampled
        self._between_peaks = np.zeros(0)  # values (the resampler lags), and those values

    def _peaks(self, block: np.ndarray, last: bool) -> np.ndarray:
        """Peak across channels [t'] of the inputs whose oversampled values have all come out
        of the resampler (all of them once ``last``)."""
        sample_peaks = np.abs(block).max(axis=0) if block.shape[1] else np.zeros(0)
        if self._upsample is None:
            return sample_peaks
        up = self._upsample.resample_chunk(np.ascontiguousarray(block.T, dtype=np.float32), last)
        self._sample_peaks = np.concatenate([self._sample_peaks, sample_peaks])
        self._between_peaks = np.concatenate(
            [self._between_peaks, np.abs(up).max(axis=1) if len(up) else np.zeros(0)]
        )
        done = min(len(self._between_peaks) // self._factor, len(self._sample_peaks))
        if last:  # the flushed resampler has given every input its values; pad any rounding
            done = len(self._sample_peaks)
            short = done * self._factor - len(self._between_peaks)
            self._between_peaks = np.pad(self._between_peaks, (0, max(0, short)))
        between = self._between_peaks[: done * self._factor].reshape(done, self._factor)
        peaks = np.maximum(self._sample_peaks[:done], between.max(axis=1, initial=0.0))
        self._sample_peaks = self._sample_peaks[done:]
        self._between_peaks = self._between_peaks[done * self._factor :]
        return peaks

    def process(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        """Feed [c, t]; returns the limited signal delayed by the look-ahead (all of it once
        ``last``)."""
        from scipy.ndimage import minimum_filter1d, uniform_filter1d

        h = self.half
        if not self._started:  # context before the start: no limiting needed there
            self._input = np.zeros((block.shape[0], 2 * h))
            self._need = np.ones(2 * h)
            self._started = True
        need = np.minimum(1.0, self.ceiling / np.maximum(self._peaks(block, last), 1e-12))
        self._input = np.concatenate([self._input, block], axis=1)
        self._need = np.concatenate([self._need, need])
        if last:
            self._input = np.pad(self._input, ((0, 0), (0, 2 * h)))
            self._need = np.concatenate([self._need, np.ones(2 * h)])
        ready = self._need.shape[0] - 4 * h  # outputs whose ±2h context has arrived
        if ready <= 0:
            return np.zeros((block.shape[0], 0))
        held = minimum_filter1d(self._need, 2 * h + 1, mode="nearest")
        gain = uniform_filter1d(held, 2 * h + 1, mode="nearest")[2 * h : 2 * h + ready]
        gain = np.minimum(gain, self._need[2 * h : 2 * h + ready])
        out = self._input[:, 2 * h : 2 * h + ready] * gain
        self.limited_samples += int(np.count_nonzero(gain < 1.0))
        if gain.size:
            self.max_reduction_db = max(self.max_reduction_db, -20 * float(np.log10(gain.min())))
        self._input = self._input[:, ready:]
        self._need = self._need[ready:]
        return out


NORMALISE_TOLERANCE_LU = 0.1  # how close to the target a normalised REMIX must come
NORMALISE_PASSES = 8  # metering passes at most when the limiter's gain lowers the loudness
NORMALISE_MAX_LIMITING_DB = 30.0  # gain past the unlimited answer that normalising may add


def accessible_remix(
    dx_path: Path,
    me_path: Path,
    out_path: Path,
    dialogue_gain_db: float,
    normalise: str | None = None,
    ceiling_dbfs: float = -1.0,
    stage: Callable[[str], None] | None = None,
) -> dict[str, float | None]:
    """Write ME + DX raised by ``dialogue_gain_db`` (an accessible "dialogue up" mix), limited
    so that no true peak passes ``ceiling_dbfs`` (dBTP); with ``normalise`` ("atsc" or "ebu")
    the remix, never the stems, is brought to −24 LKFS or −23 LUFS (within
    ``NORMALISE_TOLERANCE_LU``) *after* limiting: where the limiter's gain lowers the
    loudness of a peaky mix, the gain is raised and the mix metered again (up to
    ``NORMALISE_PASSES`` passes, secant steps), as a loudness processor would. Every pass
    streams the written deliverables, so memory stays flat: one pass without ``normalise``;
    with it, a mix whose peaks stay under the ceiling at the normalising gain takes two
    (meter, then write).

    ``stage``, if given, is called with each pass's name before it starts.

    Returns:
        {"lufs", "dbtp", "normalise_gain_db", "limited_samples", "max_reduction_db"}: the
        written remix's figures and the gain applied before the limiter.
    """
    say = stage or (lambda _: None)
    import soundfile as sf

    layout = wav.read_layout(dx_path)
    info = sf.info(os.fsencode(dx_path))
    depth = {"PCM_16": "16", "PCM_24": "24"}.get(info.subtype, "32f")
    names = wav.speakers(layout.channel_mask, info.channels)
    gain = 10 ** (dialogue_gain_db / 20)
    ceiling = 10 ** (ceiling_dbfs / 20)

    def remixed():
        with sf.SoundFile(os.fsencode(dx_path)) as dx, sf.SoundFile(os.fsencode(me_path)) as me:
            while True:
                a = dx.read(1 << 18, dtype="float64", always_2d=True)
                b = me.read(1 << 18, dtype="float64", always_2d=True)
                if not len(a):
                    return
                yield (b + gain * a).T

    def render(norm_db: float, writer: wav.WavWriter | None) -> tuple[LoudnessMeter, PeakLimiter]:
        """The limited remix at ``norm_db`` metered (its loudness only when not written),
        and written when ``writer`` is given."""
        scale = 10 ** (norm_db / 20)
        limiter = PeakLimiter(info.samplerate, info.channels, ceiling)
        final = LoudnessMeter(
            info.samplerate, info.channels, weights_for(names), true_peak=writer is not None
        )

        def emit(block: np.ndarray) -> None:
            if writer is not None and depth == "32f":
                writer.write_floats(block)
            elif writer is not None:  # meter what the file holds: the quantised samples
                ints = audio.quantise(block, int(depth))
                writer.write_ints(ints)
                block = ints / float(1 << (int(depth) - 1))
            final.add(block)

        for block in remixed():
            emit(limiter.process(block * scale))
        emit(limiter.process(np.zeros((info.channels, 0)), last=True))
        return final, limiter

    norm_db = 0.0
    if normalise is not None:  # the unlimited remix's loudness and true peak: a pass of its own
        say("REMIX: metering")
        meter = LoudnessMeter(info.samplerate, info.channels, weights_for(names))
        for block in remixed():
            meter.add(block)
        level = meter.integrated_lufs()
        passes = iter(range(1, NORMALISE_PASSES + 1))

        def metering_pass(gain_db: float) -> tuple[LoudnessMeter, PeakLimiter]:
            say(f"REMIX: normalising, pass {next(passes)} of at most {NORMALISE_PASSES}")
            return render(gain_db, None)

        if np.isfinite(level):
            norm_db = _normalising_gain_db(
                metering_pass,
                NORMALISE_LUFS[normalise],
                level,
                meter.true_peak_dbtp(),
                ceiling_dbfs,
            )
    writer = wav.WavWriter(
        out_path, info.samplerate, info.channels, depth, layout.channel_mask, layout.chunks
    )
    say("REMIX: writing")
    try:
        final, limiter = render(norm_db, writer)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return {
        "dialogue_gain_db": dialogue_gain_db,
        "normalise": normalise,
        "lufs": _finite(final.integrated_lufs()),
        "dbtp": _finite(final.true_peak_dbtp()),
        "normalise_gain_db": round(norm_db, 2),
        "limited_samples": limiter.limited_samples,
        "max_reduction_db": round(limiter.max_reduction_db, 2),
    }


def _normalising_gain_db(
    limited: Callable[[float], tuple[LoudnessMeter, PeakLimiter]],
    target_lufs: float,
    level_lufs: float,
    true_peak_dbtp: float,
    ceiling_dbfs: float,
) -> float:
    """The gain (dB) before the limiter that brings the limited mix to ``target_lufs``.

    ``level_lufs`` and ``true_peak_dbtp`` are the unlimited mix's; ``limited(gain_db)``
    meters the limited mix at a gain. Without limiting the answer is ``target - level``
    exactly; limiting only ever lowers the loudness, and more gain never lowers it, so the
    search brackets the answer from there upwards (doubling steps) and then closes in by
    regula falsi (Illinois), within ``NORMALISE_PASSES`` passes and at most
    ``NORMALISE_MAX_LIMITING_DB`` above the unlimited answer; the closest pass wins.
    """
    low = target_lufs - level_lufs
    if true_peak_dbtp + low < ceiling_dbfs:  # nothing will be limited: the loudness is exact
        return low
    cap = low + NORMALISE_MAX_LIMITING_DB
    tried: list[tuple[float, float]] = []  # (gain dB, limited loudness - target LU)

    def miss(gain_db: float) -> float:
        meter, limiter = limited(gain_db)
        value = 0.0 if limiter.limited_samples == 0 else meter.integrated_lufs() - target_lufs
        tried.append((gain_db, value))
        return value

    low_miss = miss(low)  # at most 0: limiting only lowers the loudness
    high = high_miss = None
    weights = {"low": 1.0, "high": 1.0}  # Illinois: the end kept twice weighs half
    step, side = max(-low_miss, 0.5), ""
    found = not low_miss < -NORMALISE_TOLERANCE_LU
    while not found and len(tried) < NORMALISE_PASSES:
        if high is None:  # bracket: each step twice the last, from the shortfall on
            if low >= cap:
                break  # still short at the cap: the closest pass wins
            gain_db = min(low + step, cap)
            step *= 2
        else:  # regula falsi between the bracket's ends; halving where it cannot
            f_low, f_high = low_miss * weights["low"], high_miss * weights["high"]
            gain_db = (low + high) / 2
            if np.isfinite(f_low) and f_high > f_low:
                gain_db = low - f_low * (high - low) / (f_high - f_low)
            if not low < gain_db < high:
                gain_db = (low + high) / 2
        gain_miss = miss(gain_db)
        found = abs(gain_miss) <= NORMALISE_TOLERANCE_LU
        moved = "low" if gain_miss < 0 else "high"
        if moved == side:
            weights["high" if moved == "low" else "low"] /= 2
        weights[moved], side = 1.0, moved
        if moved == "low":
            low, low_miss = gain_db, gain_miss
        else:
            high, high_miss = gain_db, gain_miss
    return min(tried, key=lambda t: abs(t[1]))[0]


def post_batch(
    separator: Separator,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    deliver: Sequence[str] = DEFAULT_DELIVER,
    overwrite: bool = False,
    progress: Callable[[float, float, str], None] | None = None,
    dialogue_gain_db: float | None = None,
    normalise: str | None = None,
) -> list[PostResult]:
    """``post_file`` for every input (folders searched recursively, subfolders mirrored under
    ``out_dir``); writes ``out_dir/report.csv`` and ``report.json``.

    ``progress(done_seconds, total_seconds, file)`` follows the whole batch (while a
    reel's REMIX passes run, ``file`` says which: "R1.wav (REMIX: writing)"). The report is
    rewritten after every input; an input skipped because its deliverables are complete
    keeps its row from the last run's report, and the rows of earlier runs' inputs that
    are not in this batch stay first (reels delivered one by one into one folder).
    Existing files are never replaced without ``overwrite``, nor an input of the batch
    even with it.

    Raises:
        audio.AudioError: ``out_dir`` is one of the input folders.
    """
    out_dir = Path(out_dir)
    audio.check_output_folder([str(i) for i in inputs], out_dir)
    files = audio.find_inputs([str(i) for i in inputs], out_dir)
    durations = []
    for f, _ in files:
        with contextlib.suppress(audio.AudioError, OSError):
            durations.append(audio.info(f).seconds)
            continue
        durations.append(0.0)
    total, done = sum(durations), 0.0
    results: list[PostResult] = []
    batch_inputs = {f.resolve(): f for f, _ in files}
    earlier = audio.read_report_rows(out_dir / "report.json", PostResult)
    previous = {
        Path(r.file).resolve(): r for r in earlier if r.levels
    }  # a rerun that skips these inputs keeps their measurements (however the path is given;
    # a reel failed for its REMIX settings keeps them too, so that the check holds next time)
    kept = [r for r in earlier if Path(r.file).resolve() not in batch_inputs]

    def report() -> None:
        write_report([*kept, *results], out_dir, deliver)

    claims = OutputClaims()  # deliverable → the input of this batch that writes it
    for (f, sub), seconds in zip(files, durations):
        if progress is not None:
            progress(done, total, str(f))
        targets = deliverable_paths(f, out_dir / sub, deliver).values()
        if dialogue_gain_db is not None:
            targets = [*targets, remix_path_for(f, out_dir / sub)]
        clash = claims.claim(f, targets)
        overwritten = next((t for t in targets if t.resolve() in batch_inputs), None)
        if clash is not None or overwritten is not None:
            error = (  # two inputs of one name (a/mix.wav, b/mix.wav given as files), or
                # a reel's deliverable name taken by another input (R1_DX.wav beside R1.wav)
                f"{f}: its deliverables would be those of {clash} ({next(iter(targets)).name}"
                "): give the folders, or rename one"
                if clash is not None
                else f"{f}: its deliverable {overwritten} is an input of this batch: write "
                "the deliverables to another folder (-o)"
            )
            results.append(PostResult(str(f), "failed", error=error))
            report()
            done += seconds
            continue

        def step(dt: float, f=f) -> None:
            nonlocal done
            done += dt
            if progress is not None:
                progress(done, total, str(f))

        def stage(what: str, f=f) -> None:  # the remix's passes, after the reel's seconds
            if progress is not None:
                progress(done, total, f"{f} ({what})")  # noqa: B023 - the running total, now

        before = done
        try:
            result = post_file(
                separator, f, out_dir / sub, deliver, overwrite, step, dialogue_gain_db,
                normalise, stage,
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - one bad input never stops the batch
            result = PostResult(str(f), "failed", error=audio.one_line_error(exc, f))
        if result.status == "skipped" and f.resolve() in previous:  # keep the run that made
            result = replace(previous[f.resolve()], file=str(f), status="skipped")  # them
            made = result.remix
            asked = {"dialogue_gain_db": dialogue_gain_db, "normalise": normalise}
            if (
                dialogue_gain_db is not None
                and "dialogue_gain_db" in made
                and any(made.get(k) != v for k, v in asked.items())
            ):  # a finished REMIX of other settings is not this run's: never quietly kept
                result = replace(result, status="failed", error=(
                    f"{remix_path_for(f, out_dir / sub)}: made with --dialogue-gain "
                    f"{made['dialogue_gain_db']:g} --normalise {made.get('normalise') or 'none'}"
                    f", not {dialogue_gain_db:g} / {normalise or 'none'} (--overwrite remakes "
                    "the deliverables)"
                ))  # fmt: skip
        results.append(result)
        report()  # after every input: an interrupted batch
        # still reports what it finished
        done = before + seconds  # skipped and failed inputs count as done
    if progress is not None:
        progress(total, total, "")
    report()
    return results


def write_report(results: Sequence[PostResult], out_dir: Path, deliver: Sequence[str]) -> None:
    """``report.json`` (every field) and ``report.csv`` (one row per input, one column per
    level), written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = [DELIVERABLES[d] for d in deliver]
    # rows kept from earlier runs with other deliverables keep their columns too
    measured = {k for r in results for k in r.levels}
    keys += [k for k in DELIVERABLES.values() if k in measured and k not in keys] + ["mix"]
    payload = {
        "deliver": [DELIVERABLES[d] for d in deliver],
        "inputs": [asdict(r) for r in results],
    }
    audio.write_text_atomic(out_dir / "report.json", json.dumps(payload, indent=2) + "\n")
    columns = ["file", "status", "error", "duration_s", "sample_rate", "bit_depth", "layout",
               "seconds_taken", "dialogue_to_me_db", "clipped_samples"]  # fmt: skip
    remix_keys = ["lufs", "dbtp", "normalise_gain_db", "limited_samples", "max_reduction_db",
                  "dialogue_gain_db", "normalise"]  # fmt: skip
    levels = [f"{k}_{m}" for k in keys for m in ("lufs", "dbtp", "lra")]
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(columns + levels + [f"remix_{k}" for k in remix_keys])
    for r in results:
        row = [getattr(r, c) for c in columns]
        row += [r.levels.get(k, {}).get(m, "") for k in keys for m in ("lufs", "dbtp", "lra")]
        row += [r.remix.get(k, "") for k in remix_keys]
        writer.writerow(["" if v is None else v for v in row])
    audio.write_text_atomic(out_dir / "report.csv", text.getvalue())


def describe_metadata(path: str | os.PathLike) -> str:
    """What ``demix post --check`` prints for a WAV file: layout and BWF/iXML metadata
    (read with wavinfo)."""
    import wavinfo

    path = Path(path)
    meta = audio.info(path)  # a missing, empty or unreadable file: its one-line error
    if meta.backend != "soundfile" or path.suffix.lower() not in (".wav", ".wave"):
        raise audio.AudioError(f"{path}: not a WAV file (--check reads a WAV's layout, bext, iXML)")
    layout = wav.read_layout(path)
    info = wavinfo.WavInfoReader(str(path))
    lines = [f"{path}", f"  layout      {layout_name(layout.channel_mask, layout.channels)}"]
    lines.append(f"  format      {info.fmt.sample_rate} Hz, {info.fmt.bits_per_sample}-bit")
    bext = info.bext
    if bext is None:
        lines.append("  bext        none")
    else:
        seconds = bext.time_reference / info.fmt.sample_rate
        lines += [
            f"  description {bext.description.strip()}",
            f"  originator  {bext.originator.strip()} ({bext.originator_ref.strip()})",
            f"  origination {bext.originator_date} {bext.originator_time}",
            f"  time ref    {bext.time_reference} samples = {_timecode(seconds)}",
        ]
    lines.append(f"  iXML        {'present' if layout.chunks.get(b'iXML') else 'none'}")
    return "\n".join(lines)


def _timecode(seconds: float) -> str:
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{int(h):02d}:{int(m):02d}:{s:06.3f}"


@contextlib.contextmanager
def _interrupts_held():
    """Hold SIGINT and SIGTERM until the block ends, then let them act as they would have
    (raised again once the usual handlers are back), so that an interruption never falls
    between the writes of one region: the files and meters stay in step for the checkpoint
    taken on the way out. Outside the main thread (where Python delivers no signal) the
    block just runs."""
    caught: list[int] = []
    wanted = (signal.SIGINT, signal.SIGTERM)
    try:
        previous = {
            s: signal.signal(s, lambda signum, _frame: caught.append(signum)) for s in wanted
        }
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if caught:
        signal.raise_signal(caught[0])


def _bound_heap() -> None:
    """glibc only: a fixed 16 MiB mmap threshold (glibc raises it as big blocks are freed, up
    to 32 MB, so later ones come from the heap and fragment it: transient peaks of a few
    hundred MB in a reel) and at most two arenas (one per thread otherwise). Measured on a
    1-min 5.1 reel, all four deliverables (peak RSS, wall): unbounded 1,332 MB, 26.0 s;
    16 MiB 1,233 MB, 28.0 s; 4 MiB 1,188 MB, 35.3 s; 1 MiB 1,171 MB, 37 s. 16 MiB keeps
    most of the gain for 8 % of the time; elsewhere this does nothing."""
    libc = _libc()
    if libc:
        libc.mallopt(-3, 16 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-8, 2)  # M_ARENA_MAX


def _libc():
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
            _LIBC.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        except (OSError, AttributeError):
            _LIBC = False
    return _LIBC


def _return_free_memory() -> None:
    """Give freed heap memory back to the system (glibc's ``malloc_trim``).

    Every block allocates and frees arrays of tens of MB; glibc raises its mmap threshold as
    such blocks are freed, so later ones come from the heap, which fragments and keeps
    growing with the reel's length (measured: peak RSS 2.2 GB after 1 min, 2.8 GB after 5).
    Trimming after each block keeps it flat. Elsewhere (no glibc) this does nothing.
    """
    libc = _libc()
    if libc:
        libc.malloc_trim(0)


_LIBC = None


def _finite(value: float) -> float | None:
    return round(float(value), 2) if np.isfinite(value) else None
