"""Metrics against cases with known answers."""

import math

import numpy as np
import pytest
import torch

from eval import metrics

RATE = 16000


def tone(freq=440.0, seconds=1.0, phase=0.0):
    t = np.arange(int(seconds * RATE)) / RATE
    return np.sin(2 * np.pi * freq * t + phase)


def test_global_sdr_known_values():
    ref = np.stack([tone(), tone(220)])
    assert metrics.global_sdr(ref, 0.9 * ref) == pytest.approx(20.0, abs=1e-6)  # error 0.1·ref
    assert metrics.global_sdr(ref, np.zeros_like(ref)) == pytest.approx(0.0, abs=1e-6)
    # channels are scored jointly: one sum over channels and time
    est = ref.copy()
    est[1] = 0
    expected = 10 * math.log10(np.sum(ref**2) / np.sum(ref[1] ** 2))
    assert metrics.global_sdr(ref, est) == pytest.approx(expected, abs=1e-6)


def test_si_sdr_is_scale_invariant_and_exact():
    ref = np.stack([tone()] * 2)
    noise = np.stack([tone(phase=np.pi / 2)] * 2)  # orthogonal to ref over whole periods
    est = 3 * ref + 0.3 * noise  # target energy 9, noise energy 0.09 → 20 dB
    assert metrics.si_sdr(ref, est) == pytest.approx(20.0, abs=1e-6)
    assert metrics.si_sdr(ref, 5 * est) == pytest.approx(20.0, abs=1e-6)
    assert metrics.si_sdr(torch.from_numpy(ref), torch.from_numpy(est)) == pytest.approx(20.0)
    # zero-mean per channel: a DC offset does not change the score
    assert metrics.si_sdr(ref, est + 0.5) == pytest.approx(20.0, abs=1e-6)


def test_improvement_and_silent_reference_is_nan():
    ref = tone()
    mix = ref + tone(1000)  # 0 dB
    assert metrics.si_sdr_improvement(ref, ref, mix) > 50
    assert metrics.si_sdr(ref, mix) == pytest.approx(0.0, abs=0.01)
    silent = np.zeros(RATE)
    assert math.isnan(metrics.si_sdr(silent, mix))
    assert math.isnan(metrics.global_sdr(silent, mix))
    assert math.isnan(metrics.estoi(silent, mix, RATE))


def test_bss_eval_v4_perfect_and_swapped():
    rng = np.random.default_rng(0)
    refs = rng.standard_normal((2, 2, 3 * RATE)) * 0.1
    good = metrics.bss_eval_v4(refs, refs + 1e-3 * rng.standard_normal(refs.shape), RATE)
    bad = metrics.bss_eval_v4(refs, refs[::-1], RATE)
    assert set(good) == {"sdr", "sir", "sar", "isr"}
    assert (good["sdr"] > 30).all()
    assert (bad["sdr"] < 0).all()


def test_speech_metrics_identical_and_degraded():
    rng = np.random.default_rng(1)
    t = np.arange(3 * RATE) / RATE
    speechlike = np.sin(2 * np.pi * 150 * t) * (np.sin(2 * np.pi * 3 * t) > 0)
    speechlike += 0.3 * np.sin(2 * np.pi * 900 * t) * (np.sin(2 * np.pi * 3 * t) > 0)
    noisy = speechlike + 0.5 * rng.standard_normal(len(t))
    assert metrics.estoi(speechlike, speechlike, RATE) == pytest.approx(1.0, abs=1e-3)
    assert metrics.estoi(speechlike, noisy, RATE) < 0.9
    assert metrics.pesq_wb(speechlike, speechlike, RATE) > 4.0
    assert metrics.pesq_wb(speechlike, noisy, RATE) < 3.0


def test_shapes_must_match():
    """numpy would broadcast a mono reference against a stereo estimate (a perfect estimate
    then scored 3 dB SI-SDR): different shapes are refused."""
    ref = tone()[None]
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.si_sdr(ref, np.repeat(ref, 2, axis=0))
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.global_sdr(ref, ref[:, :-1])


def test_bss_eval_scores_the_others_when_a_stem_is_silent():
    """museval refuses a wholly silent reference or estimate; that stem is NaN and the rest are
    scored (a silent stem in a user's song used to stop the whole benchmark)."""
    rng = np.random.default_rng(0)
    refs = rng.standard_normal((3, 2, 3 * RATE)) * 0.1
    ests = refs + 1e-3 * rng.standard_normal(refs.shape)
    ests[1] = 0.0
    frames = metrics.bss_eval_frames(refs, ests, RATE)
    assert frames["sdr"].shape == (3, 3)
    assert np.isnan(frames["sdr"][1]).all()
    assert (frames["sdr"][[0, 2]] > 30).all()
    medians = metrics.bss_eval_v4(refs, ests, RATE)
    assert np.isnan(medians["sdr"][1]) and (medians["sdr"][[0, 2]] > 30).all()


def test_samples_by_channels_are_refused_not_scored_as_thousands_of_channels():
    """museval's and soundfile's (samples, channels) order was taken as (channels, samples):
    si_sdr scored nonsense and BSSEval tried to allocate petabytes."""
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((2, RATE))
    with pytest.raises(ValueError, match=r"Pass \(channels, samples\)"):
        metrics.si_sdr(ref.T, ref.T)
    with pytest.raises(ValueError, match=r"Pass \(channels, samples\)"):
        metrics.bss_eval_v4(ref.T[None], ref.T[None], RATE)
    assert metrics.si_sdr(ref, ref) > 100  # (channels, samples) as ever
