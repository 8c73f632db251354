"""Experiment: how should a clip shorter than one chunk be filled to the chunk's length?
(docs/EXPERIMENTS.md, 2026-11-27 "chunk edges")

``python -m eval.short_clips [--model demix-small] [--seconds 3 5] [--modes zeros,looped,own]``

The film dev items of ``eval.dev`` (16 film, 16 with Foley pools, 10 s each) are cut into
their first and second ``seconds``, and each cut is separated on its own: ``zeros`` pads it
with silence to the model's chunk (demix before 2026-11-27), ``looped`` repeats it
(``demix.separate.fill_chunk``, as shipped), ``own`` separates it as one chunk of its own
length. Mean SI-SDR per stem over the cuts where the stem is not silent.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager

import numpy as np
import torch

import demix.separate
from demix import Separator
from eval import dev
from eval.metrics import si_sdr


def _zeros(segment: torch.Tensor, chunk_samples: int) -> torch.Tensor:
    return torch.nn.functional.pad(segment, (0, chunk_samples - segment.shape[-1]))


@contextmanager
def filled_with(fill):
    """``iter_separate`` fills short signals with ``fill`` inside the block."""
    shipped = demix.separate.fill_chunk
    demix.separate.fill_chunk = fill
    try:
        yield
    finally:
        demix.separate.fill_chunk = shipped


def score(sep: Separator, items: list[dev.Item], seconds: float) -> dict[str, float]:
    """{stem: mean SI-SDR} over the first and second ``seconds`` of every item."""
    scores: dict[str, list[float]] = {}
    for item in items:
        n = int(seconds * item.sample_rate)
        for start in (0, n):
            cut = slice(start, start + n)
            est = sep.separate(item.mix[:, cut], item.sample_rate, head=item.head)
            for stem, ref in item.stems.items():
                value = si_sdr(ref[:, cut], est[stem].numpy())
                if np.isfinite(value):
                    key = f"{item.group} {stem}" if item.group else stem
                    scores.setdefault(key, []).append(value)
    return {k: float(np.mean(v)) for k, v in scores.items()}


def main(argv: list[str] | None = None) -> int:
    """Print one line per clip length and mode."""
    p = argparse.ArgumentParser(prog="python -m eval.short_clips", description=__doc__)
    p.add_argument("--model", default="demix-small")
    p.add_argument("--seconds", type=float, nargs="+", default=[3.0, 5.0])
    p.add_argument("--modes", default="zeros,looped,own")
    args = p.parse_args(argv)
    items = dev.film_items(16) + dev.film_items(16, foley=True)
    shipped = Separator.from_pretrained(args.model)
    for seconds in args.seconds:
        for mode in args.modes.split(","):
            if mode == "own":
                sep = Separator.from_pretrained(args.model, segment_seconds=seconds)
                table = score(sep, items, seconds)
            elif mode in ("zeros", "looped"):
                fill = _zeros if mode == "zeros" else demix.separate.fill_chunk
                with filled_with(fill):
                    table = score(shipped, items, seconds)
            else:
                p.error(f"unknown mode {mode!r} (zeros, looped, own)")
            print(f"{seconds:g} s {mode}: " + ", ".join(f"{k} {v:.2f}" for k, v in table.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
