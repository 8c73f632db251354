"""The one chunked overlap-add separation routine, streaming and whole-signal.

``iter_separate`` is the implementation: it consumes input blocks of any size, runs the
model on fixed-length chunks placed every ``hop_samples`` (batched), overlap-adds the results
with a never-zero window whose weights are normalised by their sum, and yields each region of
output as soon as no later chunk can touch it, so memory does not grow with the input's
length. ``separate_chunked`` is the same routine fed one block.

Shapes: input blocks [g, c, t] (g independent signals separated together); the model
function maps [b, c, chunk] → [b, *out, chunk] (e.g. out = (s, c)); outputs are [g, *out, t].

``SharedCalls`` lets the streams of several files, each in its own thread, put their chunks
through one model function together (dynamic batching across files): a GPU gets full batches
even from files shorter than one chunk.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator

import torch

ModelFn = Callable[[torch.Tensor], torch.Tensor]

# Bump when the same model's outputs change (benchmarks' cached scores key on it). 2: the
# last chunk ends with the input and short signals are looped, never zero-padded.
SEPARATION_VERSION = 2


def overlap_window(chunk_samples: int, hop_samples: int, floor: float = 1e-3) -> torch.Tensor:
    """Trapezoid window [chunk]: linear ramps over the overlap, flat in between, never zero.

    Complementary ramps make neighbouring chunks cross-fade; the floor keeps every sample
    weighted so that normalising by the sum of weights is always defined (first and last
    chunks included).
    """
    overlap = chunk_samples - hop_samples
    window = torch.ones(chunk_samples)
    if overlap > 0:
        ramp = (torch.arange(overlap, dtype=torch.float32) + 0.5) / overlap
        window[:overlap] = ramp
        window[-overlap:] = ramp.flip(0)
    return window.clamp_min(floor)


def fill_chunk(segment: torch.Tensor, chunk_samples: int) -> torch.Tensor:
    """A whole signal shorter than a chunk [..., t] looped to fill it [..., chunk_samples].

    Looped rather than zero-padded: the model sees the signal's own level and spectrum all
    through the chunk, as in training. On 3- and 5-s dev film clips (demix-small v3.1) that
    gave +0.1 to +3.0 dB SI-SDR on dialogue, music and effects over zero padding, and
    -0.6 to -1.4 dB on Foley effects (docs/EXPERIMENTS.md, "chunk edges")."""
    repeats = -(-chunk_samples // segment.shape[-1])
    return segment.repeat(*([1] * (segment.dim() - 1)), repeats)[..., :chunk_samples]


def iter_separate(
    model_fn: ModelFn,
    blocks: Iterable[torch.Tensor],
    chunk_samples: int,
    hop_samples: int,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
) -> Iterator[torch.Tensor]:
    """Streaming chunked separation: yields finished output regions [g, *out, t_region].

    Args:
        model_fn: maps [b, c, chunk_samples] → [b, *out, chunk_samples].
        blocks: input blocks [g, c, t_block] in time order (any sizes, t_block ≥ 0).
        chunk_samples: length of each model call.
        hop_samples: distance between chunk starts (0 < hop ≤ chunk).
        batch_size: chunks per model call (each holds g signals).
        device: where ``model_fn`` runs; outputs are float32 on the CPU.

    The concatenation of the yielded regions has exactly the input's total length.
    """
    if not 0 < hop_samples <= chunk_samples:
        raise ValueError(f"need 0 < hop ({hop_samples}) <= chunk ({chunk_samples})")
    window = overlap_window(chunk_samples, hop_samples)
    buf: torch.Tensor | None = None  # input not yet consumed, from absolute sample buf_start
    buf_start = 0
    acc: torch.Tensor | None = None  # weighted output sum, from absolute sample acc_start
    weight = torch.zeros(0)
    acc_start = 0
    next_chunk = 0
    total = 0
    blocks = iter(blocks)
    ended = False
    while not ended:
        try:
            block = next(blocks)
        except StopIteration:
            ended = True
        else:
            block = block.detach().to("cpu", torch.float32)
            if block.shape[-1] == 0:
                continue
            buf = block if buf is None else torch.cat([buf, block], dim=-1)
            total += block.shape[-1]
        if buf is None:  # no input at all
            return
        starts = []
        while True:
            start = next_chunk * hop_samples
            if ended:
                previous_end = (next_chunk - 1) * hop_samples + chunk_samples
                if next_chunk > 0 and previous_end >= total:
                    break
            elif start + chunk_samples > total:
                break
            starts.append(start)
            next_chunk += 1
        # The last chunk would run past the end: where the input is at least a chunk long it
        # is moved back to end with the input (whole audio, no zero padding, which the models
        # never saw in training and which cost up to 1 dB on 10-s clips). It contributes from
        # its grid start on, so a stream cut anywhere gives the same output as a whole signal.
        skip = 0
        if ended and starts and starts[-1] + chunk_samples > total >= chunk_samples:
            skip = starts[-1] - (total - chunk_samples)
        for i in range(0, len(starts), batch_size):
            group = starts[i : i + batch_size]
            segments = []
            for start in group:
                if skip and start == starts[-1]:
                    start -= skip
                seg = buf[..., start - buf_start : start - buf_start + chunk_samples]
                if seg.shape[-1] < chunk_samples:
                    seg = fill_chunk(seg, chunk_samples)
                segments.append(seg)
            g = buf.shape[0]
            batch = torch.stack(segments).reshape(len(group) * g, *buf.shape[1:-1], chunk_samples)
            with torch.inference_mode():
                out = model_fn(batch.to(device)).to("cpu", torch.float32)
            out = out.reshape(len(group), g, *out.shape[1:])
            if acc is None:
                acc = torch.zeros(*out.shape[1:-1], 0)
            end = group[-1] + chunk_samples
            grow = end - (acc_start + acc.shape[-1])
            if grow > 0:
                acc = torch.cat([acc, acc.new_zeros(*acc.shape[:-1], grow)], dim=-1)
                weight = torch.cat([weight, weight.new_zeros(grow)])
            for start, chunk_out in zip(group, out):
                a = start - acc_start
                if skip and start == starts[-1]:  # from the grid start, ramp in as usual
                    w = window[: chunk_samples - skip]
                    acc[..., a : a + chunk_samples - skip] += chunk_out[..., skip:] * w
                    weight[a : a + chunk_samples - skip] += w
                    continue
                acc[..., a : a + chunk_samples] += chunk_out * window
                weight[a : a + chunk_samples] += window
        limit = total if ended else next_chunk * hop_samples
        ready = limit - acc_start
        if acc is not None and ready > 0:
            yield acc[..., :ready] / weight[:ready]
            acc, weight = acc[..., ready:], weight[ready:]
            acc_start = limit
        # A chunk's worth before the next grid start stays: a last chunk moved back to the
        # input's end may start there.
        keep_from = max(min(next_chunk * hop_samples, total) - chunk_samples, 0)
        if keep_from > buf_start:
            buf = buf[..., keep_from - buf_start :]
            buf_start = keep_from


def separate_chunked(
    model_fn: ModelFn,
    mix: torch.Tensor,
    chunk_samples: int,
    hop_samples: int,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Chunked overlap-add separation of a whole signal: mix [g, c, t] → [g, *out, t]."""
    regions = list(iter_separate(model_fn, [mix], chunk_samples, hop_samples, batch_size, device))
    return torch.cat(regions, dim=-1)


class BatchCancelled(RuntimeError):
    """Raised in every thread waiting on (or calling) a cancelled ``SharedCalls``."""


class _Call:
    __slots__ = ("x", "since", "result", "error")

    def __init__(self, x: torch.Tensor):
        self.x = x
        self.since = time.monotonic()
        self.result: torch.Tensor | None = None
        self.error: BaseException | None = None


class SharedCalls:
    """A model function shared by the streams of several threads: the chunks they submit go
    through it together, up to ``max_signals`` signals per call.

    A call is made as soon as the queued requests of one shape hold ``max_signals`` signals,
    or every thread still separating is waiting on one, or the oldest has waited
    ``max_wait_seconds`` (a thread busy decoding or writing does not hold the others up for
    longer). One call runs at a time, in one of the waiting threads; while it runs the other
    threads read, resample and write. Each request gets back exactly its own rows, so what a
    stream computes does not depend on which others shared its calls (to float rounding:
    the same arithmetic over a larger batch).

    Args:
        model_fn: maps [b, ...] → [b, ...] (rows independent of each other).
        max_signals: signals (rows) per call; a single larger request still goes in one call.
        streams: threads that will call it; each says ``leave()`` when it is done.
        max_wait_seconds: the longest a request waits for company.
    """

    def __init__(
        self,
        model_fn: ModelFn,
        max_signals: int,
        streams: int,
        max_wait_seconds: float = 0.05,
    ):
        self._fn = model_fn
        self._max = max(1, max_signals)
        self._streams = streams
        self._wait = max_wait_seconds
        self._cond = threading.Condition()
        self._queue: list[_Call] = []
        self._busy = False
        self._cancelled: str | None = None
        self.calls = 0  # model calls made
        self.rows = 0  # signals through them

    def leave(self) -> None:
        """A stream's thread has nothing more to submit (the others stop waiting for it)."""
        with self._cond:
            self._streams -= 1
            self._cond.notify_all()

    def cancel(self, reason: str) -> None:
        """Every waiting and later request raises ``BatchCancelled(reason)``."""
        with self._cond:
            self._cancelled = reason
            self._cond.notify_all()

    def _take(self) -> list[_Call] | None:
        """The requests of the next call, or None when it is not yet time (lock held)."""
        if self._busy or not self._queue:
            return None
        first = self._queue[0]
        same = [c for c in self._queue if c.x.shape[1:] == first.x.shape[1:]]
        rows = sum(c.x.shape[0] for c in same)
        if (
            rows < self._max
            and len(self._queue) < self._streams
            and time.monotonic() - first.since < self._wait
        ):
            return None
        batch, rows = [], 0
        for c in same:
            if batch and rows + c.x.shape[0] > self._max:
                break
            batch.append(c)
            rows += c.x.shape[0]
        for c in batch:
            self._queue.remove(c)
        self._busy = True
        return batch

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mine = _Call(x)
        with self._cond:  # (once cancelled, the loop below takes it out again and raises)
            self._queue.append(mine)
            self._cond.notify_all()
        while True:
            with self._cond:
                while True:
                    if mine.error is not None:
                        raise mine.error
                    if mine.result is not None:
                        return mine.result
                    if self._cancelled is not None:
                        if mine in self._queue:
                            self._queue.remove(mine)
                        raise BatchCancelled(self._cancelled)
                    batch = self._take()
                    if batch is not None:
                        break
                    left = self._wait - (time.monotonic() - self._queue[0].since) if (
                        self._queue and not self._busy
                    ) else None  # fmt: skip
                    self._cond.wait(None if left is None else max(left, 1e-4))
            try:  # outside the lock: the other threads go on with their own work
                out = self._fn(torch.cat([c.x for c in batch]))
                offset = 0
                for c in batch:
                    c.result = out[offset : offset + c.x.shape[0]]
                    offset += c.x.shape[0]
            except BaseException as exc:  # every request of the call gets the failure
                for c in batch:
                    c.error = exc
            finally:
                with self._cond:
                    self._busy = False
                    self.calls += 1
                    self.rows += sum(c.x.shape[0] for c in batch)
                    self._cond.notify_all()
