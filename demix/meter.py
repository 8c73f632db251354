"""Streaming loudness metering for files of any length: BS.1770-4 integrated loudness, EBU Tech
3342 loudness range, true peak.

pyloudnorm (and torchaudio) measure a whole signal held in memory, which a two-hour 5.1 reel
(8 GB as float32) is not; this meter keeps only one mean square per channel and 100 ms of
the K-weighted signal, applying pyloudnorm's own K-weighting filter coefficients block by
block with carried filter state, so its integrated loudness matches ``loudness_lufs``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyloudnorm
import scipy.signal
import soxr

# BS.1770 channel weights by speaker name (demix.wav.speakers): surrounds +1.5 dB, LFE out.
SPEAKER_WEIGHTS = {"LFE": 0.0, "BL": 1.41, "BR": 1.41, "SL": 1.41, "SR": 1.41}
_STEP_S = 0.1  # gating blocks advance by 100 ms (75 % overlap of 400 ms blocks)


def weights_for(names: Sequence[str]) -> list[float]:
    """BS.1770 weight of each channel named by ``demix.wav.speakers``."""
    return [SPEAKER_WEIGHTS.get(name, 1.0) for name in names]


def true_peak_oversampler(
    sample_rate: int, channels: int
) -> tuple[int, soxr.ResampleStream | None]:
    """The oversampling factor that BS.1770-4 Annex 2's true peak needs at ``sample_rate``
    (to at least 192 kHz: 4 at 48 kHz) and a streaming resampler to it (None when the rate
    is already that high). Its output is aligned with its input (output sample j is at input
    time j / factor) and lags it by the filter's delay; the meter and the REMIX limiter
    (``cdx.post.PeakLimiter``) share it, so the limiter holds what the meter reads."""
    factor = max(1, int(np.ceil(192000 / sample_rate)))
    if factor == 1:
        return 1, None
    return factor, soxr.ResampleStream(sample_rate, sample_rate * factor, channels, "float32", "HQ")


class LoudnessMeter:
    """Feed blocks [c, t] with ``add``; read integrated loudness, loudness range, true peak.

    Args:
        sample_rate: the signal's rate.
        channels: channel count.
        weights: BS.1770 weight per channel (default: 1 each; see ``weights_for``).
        true_peak: False skips the oversampling (most of the meter's time) and reads the
            sample peak instead.
    """

    def __init__(
        self,
        sample_rate: int,
        channels: int,
        weights: Sequence[float] | None = None,
        true_peak: bool = True,
    ):
        self.sample_rate, self.channels = sample_rate, channels
        self.weights = np.asarray(weights if weights is not None else [1.0] * channels)
        meter = pyloudnorm.Meter(sample_rate)
        self._filters = [(f.b, f.a) for f in meter._filters.values()]  # K-weighting stages
        self._state = [np.zeros((channels, max(len(a), len(b)) - 1)) for b, a in self._filters]
        self._step = int(round(_STEP_S * sample_rate))
        self._carry = np.zeros((channels, 0))
        # mean square per channel of each 100 ms step [steps, c]: one growing array (a list
        # of 72,000 small arrays per two hours and meter took 60 MB of object headers)
        self._powers = np.zeros((1024, channels))
        self._steps = 0
        self._upsample = true_peak_oversampler(sample_rate, channels)[1] if true_peak else None
        self._peak = 0.0

    def add(self, block: np.ndarray) -> None:
        """Meter the next block [c, t] of the signal (in pieces of at most one second, so
        that the float64 filtering and 4x oversampled copies stay small whatever the
        block's length; the state carries across pieces, so the figures are the same)."""
        block = np.asarray(block)
        for start in range(0, block.shape[1], self.sample_rate):
            self._add(block[:, start : start + self.sample_rate])

    def _add(self, block: np.ndarray) -> None:
        x = np.asarray(block, dtype=np.float64)
        self._peak = max(self._peak, float(np.abs(x).max(initial=0.0)))
        if self._upsample is not None and x.shape[1]:
            up = self._upsample.resample_chunk(np.ascontiguousarray(x.T, dtype=np.float32))
            self._peak = max(self._peak, float(np.abs(up).max(initial=0.0)))
        for i, (b, a) in enumerate(self._filters):
            x, self._state[i] = scipy.signal.lfilter(b, a, x, axis=1, zi=self._state[i])
        x = np.concatenate([self._carry, x], axis=1)
        whole = x.shape[1] // self._step * self._step
        if whole:
            steps = x[:, :whole].reshape(self.channels, -1, self._step)
            powers = (steps**2).mean(axis=2).T
            end = self._steps + len(powers)
            if end > len(self._powers):  # grow by half again: amortised, few copies
                grown = np.zeros((max(end, len(self._powers) * 3 // 2), self.channels))
                grown[: self._steps] = self._powers[: self._steps]
                self._powers = grown
            self._powers[self._steps : end] = powers
            self._steps = end
        self._carry = x[:, whole:]

    def state(self) -> dict[str, np.ndarray]:
        """The meter's figures so far, as arrays (for a resume checkpoint; see ``restore``)."""
        saved = {f"filter{i}": z for i, z in enumerate(self._state)}
        saved["carry"] = self._carry
        saved["powers"] = self._powers[: self._steps]
        saved["peak"] = np.asarray(self._peak)
        return saved

    def restore(self, saved: dict[str, np.ndarray], history: np.ndarray | None = None) -> None:
        """Continue from ``state()`` of a meter of the same signal (same rate and channels).

        The true-peak oversampler's filter memory is not part of the state (soxr keeps it
        inside): ``history``, the last samples [c, t] before the resume point (a few
        milliseconds are enough), refills it, so the first samples after the resume point
        are not oversampled against silence.
        """
        self._state = [np.asarray(saved[f"filter{i}"]) for i in range(len(self._filters))]
        self._carry = np.asarray(saved["carry"]).reshape(self.channels, -1)
        powers = np.asarray(saved["powers"], dtype=np.float64).reshape(-1, self.channels)
        self._powers = np.zeros((max(1024, len(powers) * 3 // 2), self.channels))
        self._powers[: len(powers)] = powers
        self._steps = len(powers)
        self._peak = float(saved["peak"])
        if self._upsample is not None and history is not None and history.shape[1]:
            self._upsample.resample_chunk(np.ascontiguousarray(history.T, dtype=np.float32))

    def _loudness(self, steps_per_block: int) -> np.ndarray:
        """Loudness (LUFS) of every window of ``steps_per_block`` 100-ms steps, step 100 ms."""
        powers = self._powers[: self._steps]
        if len(powers) < steps_per_block:
            return np.zeros(0)
        kernel = np.ones(steps_per_block) / steps_per_block
        means = np.stack(
            [np.convolve(powers[:, c], kernel, "valid") for c in range(self.channels)], 1
        )
        with np.errstate(divide="ignore"):
            return -0.691 + 10 * np.log10(means @ self.weights)

    def integrated_lufs(self) -> float:
        """Gated integrated loudness (BS.1770-4: 400 ms blocks, -70 LUFS and -10 LU gates)."""
        blocks = self._loudness(4)
        blocks = blocks[blocks > -70.0]
        if not len(blocks):
            return float("-inf")
        gate = _energy_mean(blocks) - 10.0
        return float(_energy_mean(blocks[blocks > gate]))

    def loudness_range_lu(self) -> float:
        """Loudness range (EBU Tech 3342: 3 s windows, -70 LUFS and -20 LU gates, 10th to 95th
        percentile); 0 for signals shorter than 3 s or silent."""
        short = self._loudness(30)
        short = short[short > -70.0]
        if not len(short):
            return 0.0
        short = short[short > _energy_mean(short) - 20.0]
        return float(np.percentile(short, 95) - np.percentile(short, 10))

    def true_peak_dbtp(self) -> float:
        """True peak (BS.1770-4 Annex 2, oversampled to at least 192 kHz) in dBTP (the sample
        peak in dBFS for a meter made with ``true_peak=False``)."""
        return 20 * float(np.log10(self._peak)) if self._peak > 0 else float("-inf")


def _energy_mean(loudness: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(10 ** (loudness / 10))))
