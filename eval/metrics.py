"""Separation metrics as pure functions on arrays shaped (channels, samples).

Channels are scored jointly. A silent reference has no defined score: NaN is returned and
must be reported as such (never averaged as a number).
"""

from __future__ import annotations

import numpy as np
import torch

_EPS = 1e-8


def _as_numpy(x) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().to("cpu", torch.float64).numpy()
    x = np.asarray(x, dtype=np.float64)
    return x[None] if x.ndim == 1 else x


def global_sdr(ref, est) -> float:
    """Sound Demixing Challenge SDR: 10·log10(Σ ref² / Σ (ref − est)²) over channels and time.

    Args:
        ref, est: (channels, samples) or (samples,).
    """
    ref, est = _as_numpy(ref), _as_numpy(est)
    num = float(np.sum(ref**2))
    if num <= _EPS:
        return float("nan")
    den = float(np.sum((ref - est) ** 2))
    return float(10 * np.log10((num + _EPS) / (den + _EPS)))


def si_sdr(ref, est) -> float:
    """Scale-invariant SDR: each channel made zero-mean, one projection over all channels.

    Args:
        ref, est: (channels, samples) or (samples,).
    """
    ref, est = _as_numpy(ref), _as_numpy(est)
    ref = ref - ref.mean(axis=-1, keepdims=True)
    est = est - est.mean(axis=-1, keepdims=True)
    energy = float(np.sum(ref**2))
    if energy <= _EPS:
        return float("nan")
    scale = float(np.sum(ref * est)) / energy
    target = scale * ref
    noise = est - target
    return float(10 * np.log10((np.sum(target**2) + _EPS) / (np.sum(noise**2) + _EPS)))
