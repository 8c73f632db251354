"""Singing-like voices from licence-clean speech, for the vocals stem and for songs in films.

No licence-clean singing exists in the development data, yet both heads need it: the music
head's vocals stem, and the film head, which must send songs under dialogue to music. Speech
is analysed with the WORLD vocoder (``pyworld``: F0, spectral envelope, aperiodicity), slowed
down so syllables become sustained notes (the vowels held longer than the consonants, as a
singer holds a note), and resynthesised on a melody: a pitch contour
snapped to the song's scale, with portamento between notes and delayed vibrato. The spectral
envelope is kept, so formants (and the words) stay the speaker's while the pitch becomes
sung. Phrases may be doubled (a second, slightly detuned and delayed take) or harmonised, and
get reverb. Arrays are float32 [t] (mono) unless stated.

Material rendered here comes from the training split of speech only (Common Voice CC0,
LibriSpeech CC-BY-4.0), so it inherits those licences.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from demix import audio, data
from mdx import synth

SING_VERSION = 2  # bump when the rendering changes: it keys the cached pools
FRAME_MS = 5.0


def melody_f0(
    sketch: synth.Sketch,
    frames: int,
    base_pitch: int,
    rng: np.random.Generator,
    frame_ms: float = FRAME_MS,
    ornaments: bool = True,
) -> np.ndarray:
    """A sung pitch contour in Hz, one value per WORLD frame [frames].

    Notes are drawn from the sketch's scale within an octave above ``base_pitch`` (MIDI),
    lasting half a beat to two beats; the contour glides between notes (portamento) and, with
    ``ornaments``, gets vibrato that fades in after each note's onset and a slow intonation
    drift (the random draws are the same either way).
    """
    frame_s = frame_ms / 1000.0
    steps = (0, 2, 3, 5, 7, 8, 10) if sketch.minor else (0, 2, 4, 5, 7, 9, 11)
    scale = sorted(
        p for p in range(base_pitch - 2, base_pitch + 13) if (p - sketch.key) % 12 in steps
    )
    pitch = np.zeros(frames)
    onsets = np.zeros(frames)
    i, note = 0, int(rng.integers(len(scale)))
    while i < frames:
        length = int(sketch.beat_seconds * float(rng.choice([0.5, 1, 1, 1.5, 2])) / frame_s)
        note = int(np.clip(note + rng.choice([-2, -1, -1, 0, 1, 1, 2, 3]), 0, len(scale) - 1))
        pitch[i : i + length] = scale[note]
        onsets[i : i + length] = np.arange(min(length, frames - i)) * frame_s
        i += max(length, 1)
    # Portamento: a one-pole glide of 20-60 ms between note pitches.
    alpha = np.exp(-frame_s / rng.uniform(0.02, 0.06))
    glided = np.empty_like(pitch)
    state = pitch[0]
    for k, target in enumerate(pitch):
        state = alpha * state + (1 - alpha) * target
        glided[k] = state
    t = np.arange(frames) * frame_s
    depth_semitones = rng.uniform(0.2, 0.7)
    fade = np.clip((onsets - rng.uniform(0.1, 0.3)) / 0.3, 0.0, 1.0)
    vibrato = depth_semitones * fade * np.sin(2 * np.pi * rng.uniform(4.5, 6.5) * t)
    drift = np.cumsum(rng.normal(0.0, 0.01, frames))  # slow intonation wander
    if not ornaments:
        return synth.midi_hz(glided)
    return synth.midi_hz(glided + vibrato + np.clip(drift, -0.3, 0.3))


def sing(
    speech: np.ndarray,
    sample_rate: int,
    sketch: synth.Sketch,
    rng: np.random.Generator,
    stretch: float | None = None,
    transpose: int = 0,
    contour: np.ndarray | None = None,
    hold: float = 1.0,
) -> np.ndarray:
    """Resynthesise ``speech`` [t] as singing over ``sketch``; returns [t × stretch] (longer
    with ``hold`` > 1).

    Args:
        speech: a mono utterance (float, at most about 10 s for speed).
        sample_rate: its rate (WORLD works at any rate; 16 kHz speech stays 16 kHz).
        sketch: the song's key, mode and tempo.
        stretch: time-stretch factor (syllables → notes); random in [1.2, 2.0] when None.
        transpose: semitones added to the melody (harmonies).
        contour: the pitch in Hz per output frame (5 ms) instead of a random melody; frames
            where the speech is unvoiced stay unvoiced.
        hold: extra stretch of the voiced frames only: vowels held as notes while the
            consonants keep ``stretch`` (1: every frame alike). Uniformly slowed speech still
            has speech's rhythm, syllables of a few hundred milliseconds, where a singer
            holds vowels for most of a beat; real singing otherwise reads as dialogue.
    """
    import pyworld  # imported here: only training-data rendering needs it

    x = np.ascontiguousarray(speech, dtype=np.float64)
    f0, times = pyworld.dio(x, sample_rate, f0_floor=60.0, f0_ceil=600.0, frame_period=FRAME_MS)
    f0 = pyworld.stonemask(x, f0, times, sample_rate)
    envelope = pyworld.cheaptrick(x, f0, times, sample_rate)
    aperiodicity = pyworld.d4c(x, f0, times, sample_rate)
    voiced = f0 > 0
    stretch = float(rng.uniform(1.2, 2.0)) if stretch is None else stretch
    if hold == 1.0:  # the uniform mapping as before: renders of the pinned eval sets stay equal
        index = np.minimum((np.arange(int(len(f0) * stretch)) / stretch).astype(int), len(f0) - 1)
    else:  # each input frame lasts stretch (x hold where voiced) output frames
        durations = stretch * np.where(voiced, hold, 1.0)
        starts = np.cumsum(durations) - durations
        frames_out = int(starts[-1] + durations[-1])
        index = np.searchsorted(starts, np.arange(frames_out), side="right") - 1
    speaker_pitch = 12 * np.log2(np.median(f0[voiced]) / 440.0) + 69 if voiced.any() else 57.0
    base = int(round(speaker_pitch)) + int(rng.integers(-2, 6)) + transpose
    if contour is None:
        contour = melody_f0(sketch, len(index), base, rng)
    elif len(contour) < len(index):
        raise ValueError(f"contour has {len(contour)} frames, the phrase needs {len(index)}")
    contour = contour[: len(index)]
    y = pyworld.synthesize(
        np.where(voiced[index], contour, 0.0),
        np.ascontiguousarray(envelope[index]),
        np.ascontiguousarray(aperiodicity[index]),
        sample_rate,
        FRAME_MS,
    )
    return y.astype(np.float32)


def sung_phrase(
    speech: np.ndarray, speech_rate: int, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """One vocal-track phrase at ``sample_rate`` [t]: a sung take of ``speech`` (sampled at
    ``speech_rate``), sometimes doubled or harmonised, with reverb."""
    sketch = synth.random_sketch(rng)
    stretch = float(rng.uniform(1.2, 2.0))
    hold = float(rng.uniform(1.5, 3.0))  # vowels of about 0.2-0.6 s
    state = rng.bit_generator.state
    lead = sing(speech, speech_rate, sketch, rng, stretch, hold=hold)
    roll = rng.random()
    if roll < 0.5:  # a second take (double) or a harmony a third/fifth up, same melody
        rng_copy = np.random.default_rng()
        rng_copy.bit_generator.state = state
        interval = 0 if roll < 0.3 else int(rng.choice([3, 4, 7]))
        other = sing(speech, speech_rate, sketch, rng_copy, stretch, interval, hold=hold)
        if interval == 0:  # a double: detuned by a few cents through a tiny resample
            other = audio.resample(other[None], speech_rate, int(speech_rate * 1.004))[0]
        delay = int(rng.uniform(0.01, 0.04) * speech_rate)
        other = np.concatenate([np.zeros(delay, np.float32), other])[: len(lead)]
        lead = lead + float(rng.uniform(0.4, 0.8)) * np.pad(other, (0, len(lead) - len(other)))
    out = audio.resample(lead[None], speech_rate, sample_rate)
    if rng.random() < 0.8:
        rir = data.synthetic_rir(sample_rate, float(rng.uniform(0.3, 2.0)), rng)
        out = data.reverb(out, rir, float(rng.uniform(0.1, 0.4)))
    return out[0]


def singing_pool(
    speech_paths: Sequence[Path],
    sample_rate: int,
    cache_dir: Path,
    phrases: int = 160,
    seed: int = 0,
    max_seconds: float = 6.0,
    key_root: Path | None = None,
) -> data.ClipPool:
    """A cached pool of ``phrases`` sung phrases rendered from random ``speech_paths``
    (cached under their paths relative to ``key_root``, the data root)."""
    paths = sorted(Path(p) for p in speech_paths)
    if not paths:
        raise ValueError("no speech to sing")

    def render() -> Iterator[tuple[str, np.ndarray]]:
        from tqdm import tqdm

        rng = np.random.default_rng([seed, SING_VERSION])
        for _ in tqdm(range(phrases), desc="rendering sung phrases", leave=False):
            path = paths[int(rng.integers(len(paths)))]
            wav, rate = audio.read(path)
            speech = wav.mean(0)
            limit = int(max_seconds * rate)
            if len(speech) > limit:
                start = int(rng.integers(len(speech) - limit + 1))
                speech = speech[start : start + limit]
            yield path.name, sung_phrase(speech, rate, sample_rate, rng)[None]

    def key(names: list[str]) -> str:
        return f"sing v{SING_VERSION} {names} {sample_rate} {phrases} {seed}"

    return data.ClipPool.rendered(
        key(data.relative_names(paths, key_root)),
        render,
        sample_rate,
        cache_dir,
        channels=1,
        legacy_key=key(data.relative_names(paths, None)),
    )
