"""Experiment: how should the part of the mix that no stem's mask took be shared among the
stems? (docs/EXPERIMENTS.md, 2026-11-26 "residual sharing")

``python -m eval.residual_share [--model demix-small] [--modes even,power1,power2,wiener1]``

The separator makes the stems sum to the mix by adding the residual (mix − Σ stems) to every
stem evenly. The alternatives share it in the STFT domain in proportion to each stem's
estimated magnitude (``powerP``: |Y_s|^P / Σ|Y|^P times the residual), or replace the
complex masks by a ratio mask from the estimates (``wienerP``: |Y_s|^P / Σ|Y|^P times the
mix, keeping the mix's phase: single-step Wiener filtering as in Open-Unmix's norbert).
Each mode is scored with ``eval.dev`` (SI-SDR on the seeded dev film, foley and song items)
on the torch backend, whose ``synthesise`` is swapped for the mode's.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from demix import Separator
from demix.models import spectral
from demix.models.spectral import complex_mul
from eval import dev


def shared_synthesise(mode: str):
    """A ``MaskingModel.synthesise`` that shares the residual as ``mode`` says."""
    even = spectral.MaskingModel.synthesise

    def synthesise(self, spec: torch.Tensor, masks: torch.Tensor, length: int) -> torch.Tensor:
        if mode == "even":
            return even(self, spec, masks, length)
        b, c, f, n, _ = spec.shape
        spec_nf = spec.float().permute(0, 3, 2, 1, 4)[:, :, :, None]  # [b, n, f, 1, c, 2]
        est = complex_mul(masks.float(), spec_nf)  # [b, n, f, s, c, 2]
        power = float(mode.removeprefix("power").removeprefix("wiener"))
        weight = est.pow(2).sum(-1).pow(power / 2)  # [b, n, f, s, c]
        weight = weight / weight.sum(3, keepdim=True).clamp_min(1e-12)
        if mode.startswith("power"):
            residual = spec_nf[:, :, :, 0] - est.sum(3)  # [b, n, f, c, 2]
            est = est + weight[..., None] * residual[:, :, :, None]
        else:
            est = weight[..., None] * spec_nf
        s = est.shape[3]
        est = torch.view_as_complex(est.permute(0, 3, 4, 2, 1, 5).contiguous())
        wav = torch.istft(est.reshape(b * s * c, f, n), self.config.n_fft,
                          self.config.hop_samples, window=self.window, length=length)  # fmt: skip
        return wav.reshape(b, s, c, length)

    return synthesise


def main(argv: list[str] | None = None) -> int:
    """Score each mode; one line of mean SI-SDR per stem each."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="demix-small")
    p.add_argument("--modes", default="even,power1,power2,wiener1")
    p.add_argument("--film-items", type=int, default=24)
    p.add_argument("--foley-items", type=int, default=12)
    args = p.parse_args(argv)
    items = dev.film_items(args.film_items) + dev.film_items(args.foley_items, foley=True)
    items += dev.music_items(20.0)
    sep = Separator.from_pretrained(args.model, backend="torch")
    original = spectral.MaskingModel.synthesise
    try:
        for mode in args.modes.split(","):
            spectral.MaskingModel.synthesise = shared_synthesise(mode)
            started = time.time()
            scores = dev.summary(dev.evaluate(sep, items))
            means = ", ".join(f"{k} {v[0]:.2f}" for k, v in scores.items())
            print(f"{mode} ({time.time() - started:.0f} s): {means}", flush=True)
    finally:
        spectral.MaskingModel.synthesise = original
    return 0


if __name__ == "__main__":
    sys.exit(main())
