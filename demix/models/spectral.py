"""What every mask-based spectral model shares: heads checked, STFT in float32, the backbone's
band features turned into complex masks per head, masked spectra back to waveforms.

Dimension letters: b batch, s stems, c channels, t time samples, f frequency bins,
n STFT frames, k bands, d features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn


def mix_rms(mix: torch.Tensor) -> torch.Tensor:
    """RMS level [b] of ``mix[b, c, t]`` over channels and time, floored at 1e-5 (the scale
    the dual-path model sees its input at, and training's ``loss_on_mix_rms`` scores at)."""
    return mix.float().pow(2).mean(dim=(1, 2)).sqrt().clamp_min(1e-5)


class MaskingModel(nn.Module):
    """Base of the registered spectral models.

    ``__init__(config)`` sets ``config`` (with ``n_fft``, ``hop_samples``, ``sample_rate``,
    ``channels``, ``segment_seconds`` and ``heads``), ``sample_rate``, ``channels``, ``heads``
    and ``segment_samples``. A subclass then sets ``window`` (a buffer) and ``mask_heads``
    (head → module giving masks [b, n, f_padded, s, c, 2] from band features) and implements
    ``features(spec, mix) -> x[b, n, k, d]``.
    """

    window: torch.Tensor
    mask_heads: nn.ModuleDict

    def __init__(self, config):
        super().__init__()
        if not config.heads:
            raise ValueError(
                f"{type(config).__name__}.heads is empty: name at least one head and its stems"
            )
        self.config = config
        self.sample_rate: int = config.sample_rate
        self.channels: int = config.channels
        self.heads: dict[str, tuple[str, ...]] = {h: tuple(s) for h, s in config.heads.items()}
        self.segment_samples = int(round(config.segment_seconds * config.sample_rate))

    def features(self, spec: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
        """Band features [b, n, k, d] of ``spec[b, c, f, n]`` (complex) and ``mix[b, c, t]``."""
        raise NotImplementedError

    def forward(
        self, mix: torch.Tensor, heads: Sequence[str] | None = None
    ) -> Mapping[str, torch.Tensor]:
        """Separate ``mix[b, c, t]`` into ``{head: stems[b, s, c, t]}`` for the asked heads;
        several heads cost one backbone pass."""
        heads = list(self.heads) if heads is None else list(heads)
        for head in heads:
            if head not in self.heads:
                raise KeyError(f"unknown head {head!r} (this model has {', '.join(self.heads)})")
        b, c, t = mix.shape
        if c != self.channels:
            raise ValueError(f"model expects {self.channels} channels, got {c}")
        n_fft, hop = self.config.n_fft, self.config.hop_samples
        # STFT in float32 even under autocast: bf16 FFTs are not supported and lose precision.
        with torch.autocast(mix.device.type, enabled=False):
            mix = mix.float()
            spec = torch.stft(
                mix.reshape(b * c, t),
                n_fft,
                hop,
                window=self.window,
                pad_mode="constant",  # any length works (reflect needs t > n_fft / 2)
                return_complex=True,
            )
            spec = spec.reshape(b, c, *spec.shape[-2:])  # [b, c, f, n]
        x = self.features(spec, mix)
        f, n = spec.shape[-2:]
        spec_nf = torch.view_as_real(spec).permute(0, 3, 2, 1, 4)[:, :, :, None]  # [b,n,f,1,c,2]
        out = {}
        for head in heads:
            masks = self.mask_heads[head](x)[:, :, :f].float()  # [b, n, f, s, c, 2]
            with torch.autocast(mix.device.type, enabled=False):
                est = complex_mul(masks, spec_nf)  # [b, n, f, s, c, 2]
                s = est.shape[3]
                est = torch.view_as_complex(est.permute(0, 3, 4, 2, 1, 5).contiguous())
                wav = torch.istft(
                    est.reshape(b * s * c, f, n), n_fft, hop, window=self.window, length=t
                )
            out[head] = wav.reshape(b, s, c, t)
        return out


def complex_mul(a: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Complex product of tensors stored as [..., 2] (real, imaginary), broadcasting."""
    ar, ai = a.unbind(-1)
    zr, zi = z.unbind(-1)
    return torch.stack((ar * zr - ai * zi, ar * zi + ai * zr), dim=-1)
