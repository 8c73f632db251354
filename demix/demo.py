"""A generated film-like demo clip, so the first command works on a machine with no audio.

The clip is synthetic (no recordings are shipped): a formant-synthesised voice speaking in
syllables with pauses (dialogue), sustained chords (music), and a rain bed with knocks and a
whoosh (effects), mixed at film loudness (−17 / −24 / −21 LUFS). It is meant for trying the
tool and for tests, not for judging quality: use real recordings for that.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from demix import audio
from demix.data import set_loudness

_VOWELS = (
    (730, 1090, 2440),
    (270, 2290, 3010),
    (300, 870, 2240),
    (530, 1840, 2480),
    (570, 840, 2410),
)


def _voice(seconds: float, rate: int, rng: np.random.Generator) -> np.ndarray:
    n = int(seconds * rate)
    out = np.zeros(n, np.float32)
    time = 0.3
    while time < seconds - 0.3:
        words = int(rng.integers(3, 9))
        f0 = rng.uniform(100, 200)
        for _ in range(words):
            dur = rng.uniform(0.12, 0.3)
            m = int(dur * rate)
            a = int(time * rate)
            if a + m >= n:
                break
            t = np.arange(m) / rate
            pitch = f0 * (1 + 0.1 * np.sin(np.pi * t / dur) + rng.uniform(-0.05, 0.05))
            phase = 2 * np.pi * np.cumsum(pitch) / rate
            formants = _VOWELS[int(rng.integers(len(_VOWELS)))]
            syl = np.zeros(m)
            for k in range(1, 40):
                fk = f0 * k
                if fk > 5000:
                    break
                gain = sum(np.exp(-0.5 * ((fk - fm) / 90) ** 2) for fm in formants) + 0.01
                syl += gain / k**0.3 * np.sin(k * phase)
            syl += rng.normal(0, 0.05, m) * (t < 0.03)  # consonant onset
            out[a : a + m] += (syl * np.sin(np.pi * t / dur) ** 0.5).astype(np.float32)
            time += dur + rng.uniform(0.02, 0.12)
        time += rng.uniform(0.4, 1.2)  # pause between phrases
    return out


def _music(seconds: float, rate: int, rng: np.random.Generator) -> np.ndarray:
    n = int(seconds * rate)
    t = np.arange(n) / rate
    out = np.zeros((2, n))
    chords = ((57, 60, 64), (53, 57, 60), (55, 59, 62), (52, 55, 59))
    bar = seconds / 4
    for i, chord in enumerate(chords):
        env = np.clip((t - i * bar) / 0.5, 0, 1) * np.clip(((i + 1) * bar - t) / 0.5, 0, 1)
        for j, p in enumerate(chord):
            f = 440 * 2 ** ((p - 69) / 12)
            for k in range(1, 6):
                wave = np.sin(2 * np.pi * f * k * t + rng.uniform(0, 6.28)) / k**1.5
                out[j % 2] += env * wave
                out[1 - j % 2] += 0.5 * env * wave
    return out.astype(np.float32)


def _effects(seconds: float, rate: int, rng: np.random.Generator) -> np.ndarray:
    n = int(seconds * rate)
    rain = rng.normal(0, 1, n)
    rain = np.fft.irfft(np.fft.rfft(rain) * np.linspace(0.2, 1, n // 2 + 1), n) * 0.05
    out = np.stack([rain, np.roll(rain, 441)])
    for _ in range(int(seconds / 2)):
        a = int(rng.uniform(0, seconds - 0.5) * rate)
        t = np.arange(int(0.3 * rate)) / rate
        knock = np.sin(2 * np.pi * rng.uniform(150, 400) * t) * np.exp(-t / 0.03)
        pan = rng.uniform(0, 1)
        out[0, a : a + len(t)] += pan * knock
        out[1, a : a + len(t)] += (1 - pan) * knock
    return out.astype(np.float32)


def demo_clip(
    seconds: float = 12.0, sample_rate: int = 44100, seed: int = 0
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A synthetic film clip: (mix [2, t], {"dialogue", "music", "effects": [2, t]})."""
    rng = np.random.default_rng(seed)
    voice = _voice(seconds, sample_rate, rng)
    stems = {
        "dialogue": set_loudness(np.stack([voice, voice]), sample_rate, -17.0),
        "music": set_loudness(_music(seconds, sample_rate, rng), sample_rate, -24.0),
        "effects": set_loudness(_effects(seconds, sample_rate, rng), sample_rate, -21.0),
    }
    mix = sum(stems.values())
    peak = float(np.abs(mix).max())
    if peak > 0.95:
        stems = {k: v * (0.95 / peak) for k, v in stems.items()}
        mix = sum(stems.values())
    return mix.astype(np.float32), stems


def write_demo_clip(path: str | Path, seconds: float = 12.0, sample_rate: int = 44100) -> Path:
    """Write the demo clip as 24-bit wav (atomically) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mix, _ = demo_clip(seconds, sample_rate)
    audio.write(path, mix, sample_rate, "wav", "24")
    return path
