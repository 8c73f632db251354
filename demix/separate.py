"""The one chunked overlap-add separation routine, streaming and whole-signal.

``iter_separate`` is the implementation: it consumes input blocks of any size, runs the
model on fixed-length chunks placed every ``hop_samples`` (batched), overlap-adds the results
with a never-zero window whose weights are normalised by their sum, and yields each region of
output as soon as no later chunk can touch it, so memory does not grow with the input's
length. ``separate_chunked`` is the same routine fed one block.

Shapes: input blocks [g, c, t] (g independent signals separated together); the model
function maps [b, c, chunk] → [b, *out, chunk] (e.g. out = (s, c)); outputs are [g, *out, t].
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch

ModelFn = Callable[[torch.Tensor], torch.Tensor]


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
        for i in range(0, len(starts), batch_size):
            group = starts[i : i + batch_size]
            segments = []
            for start in group:
                seg = buf[..., start - buf_start : start - buf_start + chunk_samples]
                if seg.shape[-1] < chunk_samples:
                    seg = torch.nn.functional.pad(seg, (0, chunk_samples - seg.shape[-1]))
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
                acc[..., a : a + chunk_samples] += chunk_out * window
                weight[a : a + chunk_samples] += window
        limit = total if ended else next_chunk * hop_samples
        ready = limit - acc_start
        if acc is not None and ready > 0:
            yield acc[..., :ready] / weight[:ready]
            acc, weight = acc[..., ready:], weight[ready:]
            acc_start = limit
        keep_from = min(next_chunk * hop_samples, total)
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
