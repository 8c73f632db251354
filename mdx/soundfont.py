"""Synthetic multitracks: procedural MIDI rendered one instrument at a time through a
General MIDI SoundFont, for the stems real data here lacks (piano, guitar, more of the rest).

A song is composed from a seeded sketch (key, mode, tempo, chords; ``mdx.synth``) as parts,
each one General MIDI program with its notes; every part is rendered on its own with
FluidSynth (``pyfluidsynth`` + the system ``libfluidsynth``), so the stems are exact and sum to
the render. Programs map to the six stems with :func:`stem_for_program` (the MoisesDB-style
grouping: pianos → piano, guitars → guitar, basses → bass, choir and voice → vocals, the
percussion channel → drums, everything else → other). FluidSynth's own reverb and chorus
are off: effects are added per stem by the mixer.

Licence chain: the MIDI is generated here (the project's licence); the default SoundFont is
FluidR3_GM by Frank Wen (MIT, Debian package ``fluid-soundfont-gm``); renders therefore carry
no restriction beyond MIT attribution. Set ``$DEMIX_SOUNDFONT`` to use another ``.sf2``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from demix import data
from mdx import MDX_STEMS, synth

SOUNDFONT_VERSION = 2  # bump when composition or rendering changes: it keys cached pools
SOUNDFONT_PATHS = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/usr/share/soundfonts/default.sf2",
)

# Folders searched for a SoundFont named by file name (``resolve_soundfont``), e.g. Debian's
# musescore-general-soundfont (MIT): MuseScore_General_Full.sf3, whose grand piano is a
# public-domain, close-miked Steinway D, far better than FluidR3's.
SOUNDFONT_DIRS = ("/usr/share/sounds/sf3", "/usr/share/sounds/sf2", "/usr/share/soundfonts")

# General MIDI programs (0-based) per stem; the percussion channel is always drums.
PROGRAMS: dict[str, tuple[int, ...]] = {
    "piano": tuple(range(0, 8)),  # acoustic and electric pianos, harpsichord, clavinet
    "guitar": tuple(range(24, 32)),  # nylon, steel, jazz, clean, muted, overdriven, distortion
    "bass": tuple(range(32, 40)),  # acoustic, finger, pick, fretless, slap, synth basses
    "vocals": (52, 53, 54),  # choir aahs, voice oohs, synth voice
}
# Programs the composer picks for "other" (a subset of what maps there).
OTHER_PROGRAMS = (
    *range(8, 24),  # chromatic percussion, organs, accordion
    *range(40, 52),  # strings and ensembles
    *range(56, 80),  # brass, reeds, pipes
    *range(80, 96),  # synth leads and pads
)
DRUM_NOTES = {"kick": 36, "snare": 38, "closed_hat": 42, "open_hat": 46, "crash": 49, "ride": 51}


def stem_for_program(program: int, percussion: bool = False) -> str:
    """The six-stem name a General MIDI program (0-127) belongs to."""
    if percussion:
        return "drums"
    for stem, programs in PROGRAMS.items():
        if program in programs:
            return stem
    if not 0 <= program < 128:
        raise ValueError(f"General MIDI programs are 0-127, got {program}")
    return "other"


def find_soundfont() -> Path | None:
    """``$DEMIX_SOUNDFONT`` or a General MIDI SoundFont in the usual system places."""
    env = os.environ.get("DEMIX_SOUNDFONT")
    candidates = [env] if env else list(SOUNDFONT_PATHS)
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    return None


def resolve_soundfont(name: str) -> Path:
    """A SoundFont given as a path, or as a file name found in ``SOUNDFONT_DIRS``; a name
    found nowhere comes back as is (a cached or packed render of it can still serve)."""
    if Path(name).is_file():
        return Path(name)
    for folder in SOUNDFONT_DIRS:
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return Path(name)


def renderer_unavailable() -> str | None:
    """Why SoundFont rendering cannot run here (a one-line reason), or None when it can.

    ``pyfluidsynth`` imports the system ``libfluidsynth`` when it is imported, so a pip
    install without the library fails with ImportError (not ModuleNotFoundError) or OSError.
    """
    if find_soundfont() is None:
        return "no General MIDI SoundFont: install fluid-soundfont-gm or set $DEMIX_SOUNDFONT"
    try:
        import fluidsynth  # noqa: F401
    except (ImportError, OSError) as exc:  # OSError: the shared library is missing
        return f"FluidSynth unavailable ({exc}): apt install libfluidsynth3"
    return None


@dataclass(frozen=True)
class Note:
    """One MIDI note: onset and length in seconds, pitch and velocity (0-127)."""

    start_seconds: float
    length_seconds: float
    pitch: int
    velocity: int


@dataclass(frozen=True)
class Part:
    """One instrument's notes; ``program`` is ignored on the percussion channel."""

    program: int
    notes: tuple[Note, ...]
    percussion: bool = False
    stem: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stem", stem_for_program(self.program, self.percussion))


def compose(sketch: synth.Sketch, seconds: float, rng: np.random.Generator) -> list[Part]:
    """A song's parts over ``sketch``: drums, bass, and a random subset of piano, guitar,
    choir and other instruments (each with its own rhythm and register)."""
    beat = sketch.beat_seconds
    bar = 4 * beat
    bars = int(np.ceil(seconds / bar)) + 1
    steps = (0, 2, 3, 5, 7, 8, 10) if sketch.minor else (0, 2, 4, 5, 7, 9, 11)
    scale = [p for p in range(24, 100) if (p - sketch.key) % 12 in steps]

    def chord_at(b: int) -> tuple[int, ...]:
        return sketch.chords[b % len(sketch.chords)]

    def voiced(chord: tuple[int, ...], low: int) -> list[int]:
        return sorted(low + (p - low) % 12 for p in chord)

    def vel(lo: int = 60, hi: int = 110) -> int:
        return int(rng.integers(lo, hi))

    parts: list[Part] = []
    # Drums: kick on 1 and 3 (plus pickups), snare on 2 and 4, hats or ride in eighths.
    notes = []
    cymbal = DRUM_NOTES["ride"] if rng.random() < 0.25 else DRUM_NOTES["closed_hat"]
    for b in range(bars):
        t0 = b * bar
        if b % 4 == 0 and rng.random() < 0.5:
            notes.append(Note(t0, 0.5, DRUM_NOTES["crash"], vel(80, 120)))
        for i in range(8):
            t = t0 + i * beat / 2
            notes.append(Note(t, 0.1, cymbal, vel(40, 90)))
            if i in (0, 4) or (i == 5 and rng.random() < 0.3):
                notes.append(Note(t, 0.2, DRUM_NOTES["kick"], vel(90, 127)))
            if i in (2, 6):
                notes.append(Note(t, 0.2, DRUM_NOTES["snare"], vel(80, 120)))
    parts.append(Part(0, tuple(notes), percussion=True))
    # Bass: chord roots in quarters or eighths, an octave jump now and then.
    division = float(rng.choice([1.0, 0.5]))
    notes = []
    for b in range(bars):
        root = 28 + (chord_at(b)[0] - 28) % 12
        for i in range(int(4 / division)):
            pitch = root + (12 if rng.random() < 0.15 else 0)
            notes.append(Note(b * bar + i * beat * division, beat * division * 0.9, pitch, vel()))
    parts.append(Part(int(rng.choice(PROGRAMS["bass"])), tuple(notes)))
    # Piano: block chords on the bar plus a few upper notes.
    if rng.random() < 0.75:
        notes = []
        for b in range(bars):
            for p in voiced(chord_at(b), int(rng.integers(48, 60))):
                notes.append(Note(b * bar, bar * rng.uniform(0.5, 1.0), p, vel(50, 100)))
            for _ in range(int(rng.integers(0, 5))):
                t = b * bar + beat * int(rng.integers(0, 8)) / 2
                notes.append(Note(t, beat, int(rng.choice(scale[28:42])), vel(50, 100)))
        parts.append(Part(int(rng.choice(PROGRAMS["piano"])), tuple(notes)))
    # Guitar: strummed chords (down-strokes with a few ms between strings) or arpeggios.
    if rng.random() < 0.75:
        notes = []
        strum = rng.random() < 0.6
        for b in range(bars):
            pitches = voiced(chord_at(b), 40) + voiced(chord_at(b), 52)
            for i in range(8 if not strum else 4):
                t = b * bar + i * beat * (0.5 if not strum else 1.0)
                if strum:
                    for j, p in enumerate(pitches):
                        notes.append(Note(t + 0.012 * j, beat * 0.95, p, vel(60, 110)))
                else:
                    notes.append(Note(t, beat, pitches[i % len(pitches)], vel(60, 110)))
        parts.append(Part(int(rng.choice(PROGRAMS["guitar"])), tuple(notes)))
    # Other: sustained chords (strings, pads, organ) or a lead line (brass, reeds, leads).
    for _ in range(int(rng.integers(0, 3))):
        program = int(rng.choice(OTHER_PROGRAMS))
        notes = []
        if rng.random() < 0.5:
            for b in range(bars):
                for p in voiced(chord_at(b), int(rng.integers(55, 67))):
                    notes.append(Note(b * bar, bar, p, vel(50, 90)))
        else:
            idx = int(rng.integers(24, 34))
            t = 0.0
            while t < bars * bar:
                length = beat * float(rng.choice([0.5, 1, 2]))
                idx = int(np.clip(idx + rng.integers(-2, 3), 20, len(scale) - 1))
                notes.append(Note(t, length * 0.95, scale[idx], vel(60, 110)))
                t += length
        parts.append(Part(program, tuple(notes)))
    # Choir / voice: a slow melody or sustained chords.
    if rng.random() < 0.25:
        notes = []
        for b in range(bars):
            for p in voiced(chord_at(b), 60)[: int(rng.integers(1, 4))]:
                notes.append(Note(b * bar, bar, p, vel(50, 90)))
        parts.append(Part(int(rng.choice(PROGRAMS["vocals"])), tuple(notes)))
    return parts


class Renderer:
    """Renders parts through one FluidSynth instance (reverb and chorus off).

    Raises:
        demix.data.SourceUnavailable: no SoundFont found, or FluidSynth (``pyfluidsynth`` and
            the system library ``libfluidsynth``) unavailable.
    """

    def __init__(self, sample_rate: int = 44100, soundfont: Path | None = None):
        soundfont = soundfont or find_soundfont()
        if soundfont is None:
            raise data.SourceUnavailable(
                "no General MIDI SoundFont: install fluid-soundfont-gm or set $DEMIX_SOUNDFONT"
            )
        try:
            import fluidsynth
        except (ImportError, OSError) as exc:  # OSError: the shared library is missing
            raise data.SourceUnavailable(
                f"FluidSynth unavailable ({exc}); install libfluidsynth3"
            ) from exc
        self.sample_rate = sample_rate
        self.synth = fluidsynth.Synth(
            gain=0.5,
            samplerate=float(sample_rate),
            **{"synth.reverb.active": 0, "synth.chorus.active": 0},
        )
        self.clock = 0  # samples rendered so far
        self.soundfont_id = self.synth.sfload(str(soundfont))
        if self.soundfont_id < 0:
            raise data.SourceUnavailable(f"{soundfont}: FluidSynth could not load this SoundFont")

    def _pull(self, samples: int) -> np.ndarray:
        self.clock += samples
        return self.synth.get_samples(samples)

    def render(self, parts: Part | list[Part], seconds: float) -> np.ndarray:
        """One part, or several played together (one MIDI channel each), float32
        [2, seconds × sample_rate]; notes past the end are cut.

        The same parts render to the same samples whatever was rendered before them.
        """
        parts = [parts] if isinstance(parts, Part) else list(parts)
        melodic = [c for c in range(16) if c != 9]
        if sum(not p.percussion for p in parts) > len(melodic):
            raise ValueError(f"at most {len(melodic)} melodic parts play together")
        # FluidSynth runs in 64-sample blocks and applies events at block boundaries:
        # start every render on a boundary so that its timing does not depend on history.
        if self.clock % 64:
            self._pull(64 - self.clock % 64)
        events = []
        free = iter(melodic)
        for part in parts:
            channel = 9 if part.percussion else next(free)
            self.synth.program_select(
                channel,
                self.soundfont_id,
                128 if part.percussion else 0,
                0 if part.percussion else part.program,
            )
            for note in part.notes:
                events.append((note.start_seconds, 1, channel, note.pitch, note.velocity))
                end = note.start_seconds + note.length_seconds
                events.append((end, 0, channel, note.pitch, 0))
        events.sort(key=lambda e: (e[0], e[1]))
        total = int(seconds * self.sample_rate)
        blocks, done = [], 0
        for time_s, on, channel, pitch, velocity in events:
            at = min(int(time_s * self.sample_rate), total)
            if at > done:
                blocks.append(self._pull(at - done))
                done = at
            if done >= total:
                break
            if on:
                self.synth.noteon(channel, pitch, velocity)
            else:
                self.synth.noteoff(channel, pitch)
        if total > done:
            blocks.append(self._pull(total - done))
        self.synth.system_reset()
        # Voices still sounding at the cut keep releasing (pads for seconds, even after
        # "all sounds off"): run the synth until it is silent so the next render starts clean.
        for _ in range(300):
            if not np.any(self._pull(self.sample_rate // 10)):
                break
        pcm = np.concatenate(blocks).astype(np.float32) / 32768.0
        return pcm.reshape(-1, 2).T.copy()

    def render_song(self, parts: list[Part], seconds: float) -> dict[str, np.ndarray]:
        """Every stem of a song, float32 [2, t] each (silent for stems without parts)."""
        n = int(seconds * self.sample_rate)
        stems = {s: np.zeros((2, n), np.float32) for s in MDX_STEMS}
        for stem in stems:
            mine = [p for p in parts if p.stem == stem]
            if mine:
                stems[stem] = self.render(mine, seconds)
        return stems


def stem_pools(
    sample_rate: int,
    cache_dir: Path,
    songs: int = 80,
    seconds: float = 10.0,
    seed: int = 0,
    soundfont: Path | None = None,
) -> dict[str, data.ClipPool]:
    """Cached per-stem pools of ``songs`` rendered songs (mono clips; songs where a stem has no
    part are left out of that stem's pool). Stems without any part in any song are absent.

    The cache is keyed by the SoundFont's file name, not its folder, so a cached (or packed,
    ``demix.pack``) render serves on a machine without FluidSynth or the SoundFont; rendering
    anew there raises ``demix.data.SourceUnavailable``.
    """
    soundfont = soundfont or find_soundfont()
    soundfont_name = Path(soundfont).name if soundfont else Path(SOUNDFONT_PATHS[0]).name
    pools = {}
    for stem in MDX_STEMS:

        def render(stem: str = stem) -> Iterator[tuple[str, np.ndarray]]:
            from tqdm import tqdm

            renderer = Renderer(sample_rate, soundfont)
            for i in tqdm(range(songs), desc=f"rendering {stem} (SoundFont)", leave=False):
                rng = np.random.default_rng([seed, SOUNDFONT_VERSION, i])
                parts = [
                    p for p in compose(synth.random_sketch(rng), seconds, rng) if p.stem == stem
                ]
                if parts:
                    audio = renderer.render(parts, seconds)
                    if np.abs(audio).max() > 1e-4:
                        yield f"song{i:04d}-{stem}", audio

        def key(font: object, stem: str = stem) -> str:
            spec = f"{stem} {sample_rate} {songs} {seconds} {seed}"
            return f"soundfont v{SOUNDFONT_VERSION} {font} {spec}"

        try:
            pools[stem] = data.ClipPool.rendered(
                key(soundfont_name), render, sample_rate, cache_dir, 1, legacy_key=key(soundfont)
            )
        except ValueError:  # no song had this stem
            continue
    return pools
