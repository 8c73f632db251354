"""Plotting helpers (matplotlib, imported lazily): spectrograms for the demo and notebooks."""

from __future__ import annotations

import numpy as np
import torch


def spectrogram_db(x: np.ndarray, n_fft: int = 2048) -> np.ndarray:
    """Log-magnitude spectrogram in dB of [c, t] (channels averaged), [bins, frames]."""
    mono = torch.from_numpy(np.asarray(x, dtype=np.float32).reshape(-1, x.shape[-1]).mean(0))
    if mono.shape[0] <= n_fft // 2:  # (stft's reflect padding needs more than half a window)
        mono = torch.nn.functional.pad(mono, (0, n_fft // 2 + 1 - mono.shape[0]))
    spec = torch.stft(
        mono, n_fft, n_fft // 4, window=torch.hann_window(n_fft), return_complex=True
    ).abs()
    return (20 * torch.log10(spec + 1e-5)).numpy()


def plot_spectrogram(ax, x: np.ndarray, sample_rate: int, title: str = "") -> None:
    """Draw the spectrogram of [c, t] on a matplotlib axis (time in s, frequency in kHz)."""
    db = spectrogram_db(x)
    ax.imshow(
        db,
        origin="lower",
        aspect="auto",
        vmin=-80,
        vmax=max(float(db.max()), -79),
        extent=(0, x.shape[-1] / sample_rate, 0, sample_rate / 2000),
        cmap="magma",
    )
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("s", fontsize=8)
    ax.set_ylabel("kHz", fontsize=8)
    ax.tick_params(labelsize=7)
