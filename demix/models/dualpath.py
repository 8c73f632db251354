"""Dual-path band-split backbone (BSRNN-style): an RNN along time within each band, then an RNN
across the bands within each frame, with one complex-mask head per task.

Dimension letters used throughout: b batch, s stems, c channels, t time samples,
f frequency bins, n STFT frames, k bands, d features.

Pipeline: mix[b, c, t] → STFT (hop 512) → spectrum divided by the mix's RMS (the model sees
every example at one level; the masks multiply the original spectrum, so the level comes back)
→ split into bands (4 bins below 1 kHz up to 48 bins to 16 kHz) → per-band projection of both
channels' real and imaginary parts to width d → L dual-path layers (pre-LayerNorm, BiLSTM along
time per band, linear back to d, residual; then the same across the bands of each frame;
optionally self-attention across bands in the last layer) → per task head: an MLP (shared
hidden layer, per-band output layer) giving unbounded complex masks per stem and channel →
masked STFT → iSTFT → stems[b, s, c, t].

Why recurrent along time here, where ``bandsplit`` is convolutional: on two CPU cores a
matched-wall-time comparison (docs/EXPERIMENTS.md) decides; published small-width ablations
put dilated convolutions 0.5–1.3 dB behind LSTMs along time, and bf16 autocast speeds LSTMs
up on this CPU. ``block="speechbrain"`` builds the layers from speechbrain's
``Dual_Computation_Block`` (``SBRNNBlock`` intra and inter models); the default ``"prenorm"``
block is ours because it measured faster here (2 CPU cores, batch 2 × 4 s, bf16: 1.25 s against
1.49 s a training step; film-head inference RTF 0.056 against 0.083) and because speechbrain's
normalises each path's output over the whole chunk (global layer norm, after the RNN), which
makes a frame's features depend on the rest of the chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from demix.models.bandsplit import BandBlock, BandSplit, MaskHead, band_layout
from demix.models.spectral import MaskingModel
from demix.registry import register_model


@dataclass(frozen=True)
class DualPathConfig:
    """Architecture of the dual-path band-split model.

    ``band_groups`` lists (number of bands, bins per band) from low to high frequency (the
    default gives 44 bands at n_fft 2048); a width of 0 in the last group shares the rest.
    ``heads`` maps each task head to its stem names (set by the training recipe).
    """

    sample_rate: int = 44100
    channels: int = 2
    n_fft: int = 2048
    hop_samples: int = 512
    band_groups: tuple[tuple[int, int], ...] = ((12, 4), (6, 8), (8, 12), (8, 24), (8, 48), (2, 0))
    dim: int = 64
    layers: int = 4
    rnn_hidden: int = 64  # units per direction
    rnn: str = "lstm"  # "lstm" or "gru"
    block: str = "prenorm"  # "prenorm" (ours) or "speechbrain" (Dual_Computation_Block)
    band_attention: bool = False  # self-attention across bands after the last layer
    attention_heads: int = 4
    mask_hidden: int = 128
    segment_seconds: float = 6.0
    heads: dict[str, tuple[str, ...]] = field(default_factory=dict)


_RNNS = {"lstm": nn.LSTM, "gru": nn.GRU}


class RNNPath(nn.Module):
    """Pre-LayerNorm bidirectional RNN over the middle axis of x[B, L, d], projected back to d
    and added to its input."""

    def __init__(self, dim: int, hidden: int, rnn: str):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.rnn = _RNNS[rnn](dim, hidden, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(2 * hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(self.norm(x))
        return x + self.proj(y)


class DualPathBlock(nn.Module):
    """Along time within each band, then across bands within each frame: x[b, n, k, d]."""

    def __init__(self, dim: int, hidden: int, rnn: str):
        super().__init__()
        self.time = RNNPath(dim, hidden, rnn)
        self.band = RNNPath(dim, hidden, rnn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, k, d = x.shape
        y = self.time(x.transpose(1, 2).reshape(b * k, n, d))
        y = y.reshape(b, k, n, d).transpose(1, 2).reshape(b * n, k, d)
        return self.band(y).reshape(b, n, k, d)


class SpeechbrainDualPathBlock(nn.Module):
    """speechbrain's ``Dual_Computation_Block`` (SBRNNBlock intra and inter models) on
    x[b, n, k, d]: intra along time (speechbrain's chunk axis K), inter across bands (S)."""

    def __init__(self, dim: int, hidden: int, rnn: str):
        super().__init__()
        from speechbrain.lobes.models.dual_path import Dual_Computation_Block, SBRNNBlock

        rnn_type = {"lstm": "LSTM", "gru": "GRU"}[rnn]
        self.block = Dual_Computation_Block(
            SBRNNBlock(dim, hidden, num_layers=1, rnn_type=rnn_type, bidirectional=True),
            SBRNNBlock(dim, hidden, num_layers=1, rnn_type=rnn_type, bidirectional=True),
            out_channels=dim,
            norm="ln",
            skip_around_intra=True,
            linear_layer_after_inter_intra=True,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # speechbrain's layout is [B, N(features), K(intra), S(inter)].
        return self.block(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


_BLOCKS = {"prenorm": DualPathBlock, "speechbrain": SpeechbrainDualPathBlock}


@register_model("dualpath", DualPathConfig)
class DualPathModel(MaskingModel):
    """Shared dual-path band-split backbone with one mask head per task.

    ``forward(mix[b, c, t], heads=None) -> {head: stems[b, s, c, t]}``; asking for several
    heads costs one backbone pass. Attributes: ``sample_rate``, ``channels``, ``heads``
    (head → stem names), ``segment_samples`` (the chunk length for chunked separation).
    """

    def __init__(self, config: DualPathConfig):
        super().__init__(config)
        if config.rnn not in _RNNS:
            raise ValueError(f"rnn must be one of {sorted(_RNNS)}, got {config.rnn!r}")
        if config.block not in _BLOCKS:
            raise ValueError(f"block must be one of {sorted(_BLOCKS)}, got {config.block!r}")
        self.layout = band_layout(config.n_fft // 2 + 1, config.band_groups)
        self.band_split = BandSplit(self.layout, config.channels, config.dim)
        block = _BLOCKS[config.block]
        blocks: list[nn.Module] = [
            block(config.dim, config.rnn_hidden, config.rnn) for _ in range(config.layers)
        ]
        if config.band_attention:
            blocks.append(BandBlock(config.dim, config.attention_heads))
        self.blocks = nn.Sequential(*blocks)
        self.mask_heads = nn.ModuleDict(
            {
                head: MaskHead(
                    self.layout, config.dim, config.mask_hidden, len(stems), config.channels
                )
                for head, stems in self.heads.items()
            }
        )
        self.register_buffer("window", torch.hann_window(config.n_fft), persistent=False)

    def features(self, spec: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """Band features [b, n, k, d] of the spectrum [b, c, f, n, 2] over the mix's RMS
        ``level[b]``: one level for every example (a silent chunk stays silent: its masks
        multiply zeros)."""
        with torch.autocast(spec.device.type, enabled=False):
            features = spec.float() / level.float()[:, None, None, None, None]
        return self.blocks(self.band_split(features))
