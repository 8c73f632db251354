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
    ``features(spec, level) -> x[b, n, k, d]``.

    ``forward`` is three steps: ``analyse`` (STFT), ``core`` (the network between the STFT
    and the iSTFT, on real tensors only: what ``demix export`` writes as ONNX) and
    ``synthesise`` (masks times spectrum, iSTFT).
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

    def features(self, spec: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """Band features [b, n, k, d] of ``spec[b, c, f, n, 2]`` (real, imaginary) and the
        mix's RMS ``level[b]`` (``mix_rms``)."""
        raise NotImplementedError

    def check_heads(self, heads: Sequence[str] | None) -> list[str]:
        """The asked heads (default: all), each checked to exist."""
        heads = list(self.heads) if heads is None else list(heads)
        for head in heads:
            if head not in self.heads:
                raise KeyError(f"unknown head {head!r} (this model has {', '.join(self.heads)})")
        return heads

    def analyse(self, mix: torch.Tensor) -> torch.Tensor:
        """STFT of ``mix[b, c, t]`` as real pairs [b, c, f, n, 2], in float32 even under
        autocast (bf16 FFTs are not supported and lose precision)."""
        b, c, t = mix.shape
        if c != self.channels:
            raise ValueError(f"model expects {self.channels} channels, got {c}")
        with torch.autocast(mix.device.type, enabled=False):
            spec = torch.stft(
                mix.float().reshape(b * c, t),
                self.config.n_fft,
                self.config.hop_samples,
                window=self.window,
                pad_mode="constant",  # any length works (reflect needs t > n_fft / 2)
                return_complex=True,
            )
        return torch.view_as_real(spec).reshape(b, c, *spec.shape[-2:], 2)

    def core(
        self, spec: torch.Tensor, level: torch.Tensor, heads: Sequence[str]
    ) -> list[torch.Tensor]:
        """Complex masks [b, n, f, s, c, 2] (float32) per head in ``heads``, from the
        spectrum ``spec[b, c, f, n, 2]`` and the mix's RMS ``level[b]``."""
        x = self.features(spec, level)
        f = spec.shape[2]
        return [self.mask_heads[head](x)[:, :, :f].float() for head in heads]

    def synthesise(self, spec: torch.Tensor, masks: torch.Tensor, length: int) -> torch.Tensor:
        """Stems [b, s, c, length]: ``masks[b, n, f, s, c, 2]`` times ``spec[b, c, f, n, 2]``,
        then the iSTFT (float32)."""
        b, c, f, n, _ = spec.shape
        with torch.autocast(spec.device.type, enabled=False):
            # One complex product written straight into the iSTFT's layout: the masks are the
            # largest tensors in the model, and the product on real pairs (four products, a
            # stack and a transposing copy) took about 4x as long (music head, batch 4).
            m = torch.view_as_complex(masks.float()).permute(0, 3, 4, 2, 1)  # [b, s, c, f, n]
            z = torch.view_as_complex(spec.float())[:, None]  # [b, 1, c, f, n]
            if torch.is_grad_enabled() and (m.requires_grad or z.requires_grad):
                est = (m * z).contiguous()
            else:  # inference: multiply in place in a fresh contiguous copy of the masks
                est = m.clone(memory_format=torch.contiguous_format).mul_(z)
            s = est.shape[1]
            wav = torch.istft(
                est.reshape(b * s * c, f, n),
                self.config.n_fft,
                self.config.hop_samples,
                window=self.window,
                length=length,
            )
        return wav.reshape(b, s, c, length)

    def forward(
        self, mix: torch.Tensor, heads: Sequence[str] | None = None
    ) -> Mapping[str, torch.Tensor]:
        """Separate ``mix[b, c, t]`` into ``{head: stems[b, s, c, t]}`` for the asked heads;
        several heads cost one backbone pass."""
        heads = self.check_heads(heads)
        spec = self.analyse(mix)
        masks = self.core(spec, mix_rms(mix), heads)
        return {h: self.synthesise(spec, m, mix.shape[-1]) for h, m in zip(heads, masks)}


def complex_mul(a: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Complex product of tensors stored as [..., 2] (real, imaginary), broadcasting."""
    ar, ai = a.unbind(-1)
    zr, zi = z.unbind(-1)
    return torch.stack((ar * zr - ai * zi, ar * zi + ai * zr), dim=-1)
