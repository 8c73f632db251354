"""Procedural instrument synthesis for six-stem training material that real data here lacks.

No licence-clean piano, guitar or bass stems exist in the development data, so notes are
generated from a seeded random song sketch (key, tempo, chord progression) and rendered
additively with instrument-like spectra and envelopes: plucked strings (guitar), hammered
inharmonic strings (piano), a low harmonic bass, bowed/pad sounds (other) and a formant-shaped
sung vowel (vocals). It is a stand-in for SoundFont rendering, not a replacement.
Arrays are float32 [t] (mono) unless stated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Vowel formants (F1, F2, F3 in Hz) for the sung-vowel voice.
_VOWELS = (
    (800, 1150, 2900),
    (400, 1600, 2700),
    (350, 600, 2700),
    (270, 2140, 2950),
    (500, 700, 2500),
    (600, 1040, 2250),
)


@dataclass(frozen=True)
class Sketch:
    """A random song sketch shared by all stems of one example."""

    key: int  # MIDI pitch class of the tonic
    minor: bool
    beat_seconds: float
    chords: tuple[tuple[int, ...], ...]  # one chord (MIDI pitch classes) per bar


def random_sketch(rng: np.random.Generator) -> Sketch:
    """Key, mode, tempo (70-160 bpm) and a four-bar progression."""
    key = int(rng.integers(12))
    minor = bool(rng.random() < 0.4)
    scale = (0, 2, 3, 5, 7, 8, 10) if minor else (0, 2, 4, 5, 7, 9, 11)
    degrees = rng.choice([0, 3, 4, 5, 1, 2], size=4)
    chords = tuple(tuple((key + scale[(d + j) % 7]) % 12 for j in (0, 2, 4)) for d in degrees)
    return Sketch(key, minor, 60.0 / rng.uniform(70, 160), chords)


def midi_hz(pitch: float) -> float:
    """Frequency of a MIDI pitch."""
    return 440.0 * 2.0 ** ((pitch - 69.0) / 12.0)


_TABLE = 2048  # wavetable length (samples per period)


def _note(
    f0: float,
    seconds: float,
    sample_rate: int,
    partials: int,
    amp_power: float,
    decay_s: float,
    decay_power: float,
    inharmonic: float,
    attack_s: float,
    rng: np.random.Generator,
    vibrato: float = 0.0,
) -> np.ndarray:
    """One note from two wavetables: a sustained body and a bright, faster-decaying attack.

    Splitting the partials into two groups with their own envelopes keeps the
    "high partials die first" character of plucked and struck strings at the cost of two table
    look-ups per sample (rendering every partial with its own envelope was 10x slower).
    ``inharmonic`` stretches the attack table's partials (a piano-like detuned onset).
    """
    n = max(int(seconds * sample_rate), 1)
    t = np.arange(n, dtype=np.float32) / sample_rate
    x = np.arange(_TABLE, dtype=np.float32) / _TABLE
    body = np.zeros(_TABLE, np.float32)
    bright = np.zeros(_TABLE, np.float32)
    split = max(2, partials // 4)
    for k in range(1, partials + 1):
        if f0 * k >= sample_rate / 2 * 0.9:
            break
        k_eff = k * np.sqrt(1.0 + inharmonic * k * k) if k > split else k
        wave = (
            k ** (-amp_power)
            * rng.uniform(0.7, 1.3)
            * np.sin(2 * np.pi * np.round(k_eff) * x + rng.uniform(0, 2 * np.pi))
        )
        if k <= split:
            body += wave
        else:
            bright += wave
    phase = f0 * t
    if vibrato:
        rate = rng.uniform(4.5, 6.5)
        phase = phase + f0 * vibrato * np.sin(2 * np.pi * rate * t) / rate
    idx = ((phase % 1.0) * _TABLE).astype(np.int64) % _TABLE
    env_body = np.exp(-t / decay_s)
    env_bright = np.exp(-t / (decay_s / (split + 1) ** decay_power))
    out = body[idx] * env_body + bright[idx] * env_bright
    attack = np.clip(t / max(attack_s, 1e-4), 0, 1)
    release = np.clip((seconds - t) / 0.02, 0, 1)
    return (out * attack * release).astype(np.float32)


INSTRUMENTS = {
    # name: (partials, amp_power, decay_s, decay_power, inharmonic, attack_s, vibrato)
    "bass": (10, 1.4, 0.8, 0.5, 0.0, 0.005, 0.0),
    "guitar": (20, 1.0, 1.2, 0.8, 2e-5, 0.002, 0.0),
    "piano": (16, 1.2, 2.0, 0.6, 1.5e-4, 0.001, 0.0),
    "pad": (12, 1.0, 8.0, 0.1, 0.0, 0.25, 0.003),
}


def render_part(
    sketch: Sketch, instrument: str, seconds: float, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """One instrument's part over the sketch, float32 [t]."""
    n = int(seconds * sample_rate)
    out = np.zeros(n, np.float32)
    params = INSTRUMENTS[instrument]
    beat = sketch.beat_seconds
    bar = 4 * beat
    start = -rng.uniform(0, bar)
    time = start
    cache: dict[tuple[int, int], np.ndarray] = {}  # repeated (pitch, length) notes render once
    while time < seconds:
        chord = sketch.chords[int((time - start) // bar) % len(sketch.chords)]
        if instrument == "bass":
            events = [
                (time + i * beat * rng.choice([1, 0.5]), [chord[0] + 36 + 12 * (i % 2 == 3)])
                for i in range(4)
            ]
            length = beat * rng.uniform(0.4, 1.0)
        elif instrument == "guitar":
            low = 52 if rng.random() < 0.5 else 40
            voicing = sorted({low + (p - low) % 12 + 12 * j for p in chord for j in (0, 1)})
            pattern = rng.choice([1.0, 0.5])
            events = []
            for i in range(int(4 / pattern)):
                onset = time + i * beat * pattern
                notes = voicing if rng.random() < 0.6 else [int(rng.choice(voicing))]
                events.append((onset, notes))
            length = beat * pattern * rng.uniform(0.8, 2.0)
        elif instrument == "piano":
            root = 48 + int(rng.integers(0, 12))
            voicing = [root + (p - root) % 12 for p in chord]
            events = [(time, voicing)]
            events += [
                (
                    time + beat * rng.uniform(0.5, 3.5),
                    [int(rng.choice(voicing)) + 12 * int(rng.integers(1, 3))],
                )
                for _ in range(int(rng.integers(1, 6)))
            ]
            length = beat * rng.uniform(0.5, 3.0)
        else:  # pad / strings
            root = 55 + int(rng.integers(0, 12))
            events = [(time, [root + (p - root) % 12 for p in chord])]
            length = bar
        for onset, notes in events:
            for j, pitch in enumerate(notes):
                strum = j * rng.uniform(0.005, 0.02) if instrument == "guitar" else 0.0
                a = int((onset + strum) * sample_rate)
                if a >= n:
                    continue
                length = max(round(length / beat * 4) / 4, 0.25) * beat  # quarter-beat grid
                key = (int(pitch), int(length * 1000))
                if key not in cache:
                    cache[key] = _note(
                        midi_hz(pitch), length, sample_rate, *params[:6], rng=rng, vibrato=params[6]
                    )
                note = cache[key]
                lo = max(a, 0)
                seg = note[lo - a : lo - a + n - lo]
                out[lo : lo + len(seg)] += seg * rng.uniform(0.6, 1.0)
        time += bar
    return out


def render_voice(
    sketch: Sketch, seconds: float, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """A sung-vowel melody over the sketch (harmonic source through vowel formants), [t]."""
    n = int(seconds * sample_rate)
    out = np.zeros(n, np.float32)
    scale = [
        sketch.key + s for s in ((0, 2, 3, 5, 7, 8, 10) if sketch.minor else (0, 2, 4, 5, 7, 9, 11))
    ]
    base = 57 + int(rng.integers(-7, 8))
    time = rng.uniform(0, sketch.beat_seconds)
    while time < seconds:
        length = sketch.beat_seconds * float(rng.choice([0.5, 1, 1, 2, 3]))
        if rng.random() < 0.2:  # rest
            time += length
            continue
        pitch = base + (int(rng.choice(scale)) - base) % 12
        f0 = midi_hz(pitch)
        m = int(length * sample_rate)
        t = np.arange(m, dtype=np.float32) / sample_rate
        vib = 1.0 + 0.01 * np.sin(2 * np.pi * rng.uniform(4.5, 6.5) * t) * np.clip(t / 0.3, 0, 1)
        phase = 2 * np.pi * np.cumsum(f0 * vib) / sample_rate
        formants = _VOWELS[int(rng.integers(len(_VOWELS)))]
        note = np.zeros(m, np.float32)
        for k in range(1, 40):
            fk = f0 * k
            if fk > 0.45 * sample_rate:
                break
            gain = sum(np.exp(-0.5 * ((fk - fm) / (60 + 0.06 * fm)) ** 2) for fm in formants)
            note += (gain + 0.02) / k**0.5 * np.sin(k * phase)
        breath = rng.normal(0, 0.01, m).astype(np.float32)
        env = np.clip(t / 0.04, 0, 1) * np.clip((length - t) / 0.06, 0, 1)
        a = int(time * sample_rate)
        seg = ((note + breath) * env)[: max(n - a, 0)]
        out[a : a + len(seg)] += seg
        time += length
    return out


def render_drums(
    sketch: Sketch,
    seconds: float,
    sample_rate: int,
    rng: np.random.Generator,
    hits: dict[str, list[np.ndarray]] | None = None,
) -> np.ndarray:
    """A drum groove (kick, snare, hats) from one-shots in ``hits`` or synthesised, [t]."""
    n = int(seconds * sample_rate)
    out = np.zeros(n, np.float32)

    def synth(kind: str) -> np.ndarray:
        m = int(0.4 * sample_rate)
        t = np.arange(m, dtype=np.float32) / sample_rate
        if kind == "kick":
            f = 50 + 100 * np.exp(-t / 0.03)
            return (np.sin(2 * np.pi * np.cumsum(f) / sample_rate) * np.exp(-t / 0.15)).astype(
                np.float32
            )
        noise = rng.normal(0, 1, m).astype(np.float32)
        if kind == "snare":
            return (
                0.6 * noise * np.exp(-t / 0.08) + np.sin(2 * np.pi * 190 * t) * np.exp(-t / 0.05)
            ).astype(np.float32)
        return (np.diff(noise, prepend=0) * np.exp(-t / 0.03)).astype(np.float32)

    def hit(kind: str) -> np.ndarray:
        if hits and hits.get(kind) and rng.random() < 0.7:
            return hits[kind][int(rng.integers(len(hits[kind])))]
        return synth(kind)

    sounds = {k: hit(k) for k in ("kick", "snare", "hat")}
    step = sketch.beat_seconds / 2
    time = -rng.uniform(0, 4 * sketch.beat_seconds)
    i = 0
    while time < seconds:
        kinds = ["hat"] if rng.random() < 0.9 else []
        if i % 4 == 0 or (i % 8 == 5 and rng.random() < 0.5):
            kinds.append("kick")
        if i % 4 == 2:
            kinds.append("snare")
        for kind in kinds:
            a = int(time * sample_rate)
            s = sounds[kind] * (0.5 if kind == "hat" else 1.0) * rng.uniform(0.7, 1.0)
            lo = max(a, 0)
            seg = s[lo - a : lo - a + n - lo]
            if len(seg):
                out[lo : lo + len(seg)] += seg
        time += step
        i += 1
    return out
