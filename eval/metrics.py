"""Separation metrics as pure functions on arrays shaped (channels, samples).

Channels are scored jointly. A silent reference has no defined score: NaN is returned and
must be reported as such (never averaged as a number).
"""

from __future__ import annotations

import numpy as np
import torch

_EPS = 1e-8


MAX_CHANNELS = 64  # more "channels" than this: samples × channels passed the other way round


def _as_numpy(x) -> np.ndarray:
    """float64 [..., channels, samples]; refuses samples × channels (soundfile's and
    museval's order), which would be scored as thousands of one-sample channels."""
    if torch.is_tensor(x):
        x = x.detach().to("cpu", torch.float64).numpy()
    x = np.asarray(x, dtype=np.float64)
    x = x[None] if x.ndim == 1 else x
    if x.shape[-2] > MAX_CHANNELS and x.shape[-2] > x.shape[-1]:
        raise ValueError(
            f"audio of shape {x.shape}: {x.shape[-2]} channels of {x.shape[-1]} samples? "
            "Pass (channels, samples), e.g. x.T for soundfile's or museval's (samples, channels)"
        )
    return x


def _pair(ref, est) -> tuple[np.ndarray, np.ndarray]:
    """Both as float64 (channels, samples), refusing different shapes (numpy would broadcast
    a mono reference against a stereo estimate and score a wrong number)."""
    ref, est = _as_numpy(ref), _as_numpy(est)
    if ref.shape != est.shape:
        raise ValueError(f"reference {ref.shape} and estimate {est.shape} differ in shape")
    return ref, est


def global_sdr(ref, est) -> float:
    """Sound Demixing Challenge SDR: 10·log10(Σ ref² / Σ (ref − est)²) over channels and time.

    Args:
        ref, est: (channels, samples) or (samples,), the same shape.
    """
    ref, est = _pair(ref, est)
    num = float(np.sum(ref**2))
    if num <= _EPS:
        return float("nan")
    den = float(np.sum((ref - est) ** 2))
    return float(10 * np.log10((num + _EPS) / (den + _EPS)))


def si_sdr(ref, est) -> float:
    """Scale-invariant SDR: each channel made zero-mean, one projection over all channels.
    A silent estimate scores 0 dB, as in asteroid and torchmetrics (its error is the whole
    reference).

    Args:
        ref, est: (channels, samples) or (samples,), the same shape.
    """
    ref, est = _pair(ref, est)
    ref = ref - ref.mean(axis=-1, keepdims=True)
    est = est - est.mean(axis=-1, keepdims=True)
    energy = float(np.sum(ref**2))
    if energy <= _EPS:
        return float("nan")
    scale = float(np.sum(ref * est)) / energy
    target = scale * ref
    noise = est - target
    return float(10 * np.log10((np.sum(target**2) + _EPS) / (np.sum(noise**2) + _EPS)))


def si_sdr_improvement(ref, est, mix) -> float:
    """SI-SDR of ``est`` minus SI-SDR of the unprocessed ``mix`` (both against ``ref``)."""
    return si_sdr(ref, est) - si_sdr(ref, mix)


def _museval_metrics():
    """museval's BSSEval module, loaded without ``museval/__init__``.

    The package's ``__init__`` imports musdb → stempeg, which refuses to import unless system
    ``ffmpeg`` *and* ``ffprobe`` binaries are on PATH; BSSEval itself needs only numpy/scipy,
    so its module is loaded from the installed file directly.
    """
    import importlib.util
    import sys
    from pathlib import Path

    name = "_demix_museval_metrics"
    if name not in sys.modules:
        spec = importlib.util.find_spec("museval")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("museval is not installed (pip install 'demix[eval]')")
        path = Path(next(iter(spec.submodule_search_locations))) / "metrics.py"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def bss_eval_frames(
    refs, ests, sample_rate: int, window_seconds: float = 1.0
) -> dict[str, np.ndarray]:
    """museval BSSEval v4 per frame (``window_seconds`` windows, no overlap).

    Args:
        refs, ests: (stems, channels, samples) arrays; all stems are scored jointly
            (SIR needs the other stems as interferers).
        sample_rate: of both arrays.

    Returns:
        {"sdr", "sir", "sar", "isr"}: arrays [stems, frames]; NaN for every stem in a frame
        where any stem's reference or estimate is silent (museval's rule), for every frame
        of a stem whose whole reference or estimate is silent (museval refuses those; the
        other stems are scored without them), and where an estimate is exact (infinite).
    """
    refs = np.stack([_as_numpy(r) for r in refs])  # [s, c, t]
    ests = np.stack([_as_numpy(e) for e in ests])
    if refs.shape != ests.shape:
        raise ValueError(f"references {refs.shape} and estimates {ests.shape} differ in shape")
    window = int(window_seconds * sample_rate)
    frames = max(1, -(-refs.shape[-1] // window))
    out = {name: np.full((len(refs), frames), np.nan) for name in ("sdr", "sir", "sar", "isr")}
    audible = [i for i in range(len(refs)) if np.any(refs[i]) and np.any(ests[i])]
    if not audible:
        return out
    metrics = _museval_metrics()
    sdr, isr, sir, sar, _ = metrics.bss_eval(
        refs[audible].transpose(0, 2, 1),
        ests[audible].transpose(0, 2, 1),
        window=window,
        hop=window,
        framewise_filters=False,
        bsseval_sources_version=False,
        compute_permutation=False,
    )
    for name, v in (("sdr", sdr), ("sir", sir), ("sar", sar), ("isr", isr)):
        if v.shape[1] != frames:  # museval's framing of the tail, if it ever differs
            out[name] = np.full((len(refs), v.shape[1]), np.nan)
        # An exact estimate's +inf becomes NaN too: one infinite frame would make every
        # mean over items infinite (an identity whose mix is that one stem, say).
        out[name][audible] = np.where(np.isfinite(v), v, np.nan)
    return out


def bss_eval_v4(refs, ests, sample_rate: int, window_seconds: float = 1.0) -> dict[str, np.ndarray]:
    """museval BSSEval v4 (as in SiSEC 2018): per stem, the median over 1-s frames.

    Args:
        refs, ests: (stems, channels, samples) arrays, scored jointly.
        sample_rate: of both arrays.

    Returns:
        {"sdr", "sir", "sar", "isr"}: arrays of shape (stems,), NaN where every frame of a
        stem is NaN (see ``bss_eval_frames``).
    """
    frames = bss_eval_frames(refs, ests, sample_rate, window_seconds)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN stems stay NaN
        return {name: np.nanmedian(v, axis=1) for name, v in frames.items()}


def _speech_16k(x, sample_rate: int) -> np.ndarray:
    from demix.audio import resample

    mono = _as_numpy(x).mean(axis=0, keepdims=True).astype(np.float32)
    return resample(mono, sample_rate, 16000)[0].astype(np.float64)


def estoi(ref, est, sample_rate: int) -> float:
    """Extended STOI (pystoi) at 16 kHz on the channel average; NaN for a silent reference."""
    from pystoi import stoi

    r, e = _speech_16k(ref, sample_rate), _speech_16k(est, sample_rate)
    if np.sum(r**2) <= _EPS:
        return float("nan")
    return float(stoi(r, e, 16000, extended=True))


def pesq_wb(ref, est, sample_rate: int) -> float:
    """Wide-band PESQ (ITU-T P.862.2, ``pesq`` package) at 16 kHz; NaN if it cannot score."""
    from pesq import pesq
    from pesq.cypesq import PesqError

    r, e = _speech_16k(ref, sample_rate), _speech_16k(est, sample_rate)
    if np.sum(r**2) <= _EPS:
        return float("nan")
    try:
        return float(pesq(16000, r, e, "wb"))
    except PesqError:  # e.g. no utterance detected
        return float("nan")
