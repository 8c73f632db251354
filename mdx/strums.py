"""Strummed rhythm-guitar parts from real recorded chord strums, for the guitar stem.

Real songs' guitars are mostly strummed or driven rhythm parts, while the guitar material here
is three lead-guitar stems, a few samples, SoundFont guitars and synthesised plucks. Debian's
``hydrogen-drumkits-effects`` installs ``belofilms_GuitarStrums`` (CC-BY-3.0, Gabriel Verdugo
Soto): about 290 recordings of an acoustic guitar strumming one chord (24 roots and
qualities: major, minor, minor 7 flat 5), each as a plain strum, a down- and an up-strum,
about 2 s, 96 kHz stereo. A part is a chord progression of those strums on an eighth-note
grid: down-strums on the beats, up-strums between them, a random pattern per part, each
strum damped when the next one starts (as a strumming hand does), with small timing and
level variations. Parts are rendered once into a cached pool (``demix.data.ClipPool``).
``$DEMIX_STRUMS`` names another folder laid out the same way.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from demix import audio, data

STRUMS_VERSION = 1  # bump when the parts change: it keys the cached pool
STRUMS_DIRS = ("/usr/share/hydrogen/data/drumkits/belofilms_GuitarStrums",)
_NOTES = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
# "Asharp minro7b5_DOWN_02", "Bflat major_UP_00", "Cmajor_Down_01", "Dsharp minor7b5_DOWN_02wav"
_NAME = re.compile(
    r"^(?P<root>[A-G])(?P<accidental>sharp|flat)?\s*(?P<quality>major|minor|minro)(?P<ext>7b5)?"
    r"(?:_(?P<direction>down|up))?_\d+(?:wav)?$",
    re.IGNORECASE,
)


def find_strums() -> Path | None:
    """``$DEMIX_STRUMS`` or the Debian package's folder, when it holds strums."""
    env = os.environ.get("DEMIX_STRUMS")
    for folder in [env] if env else STRUMS_DIRS:
        if folder and Path(folder).is_dir() and any(Path(folder).glob("*.flac")):
            return Path(folder)
    return None


def parse_strum(name: str) -> tuple[int, str, str] | None:
    """(root pitch class 0-11, quality "maj" / "min" / "m7b5", direction "any" / "down" /
    "up") from a strum file's stem, or None for a name that is not a strum."""
    m = _NAME.match(name)
    if m is None:
        return None
    root = (
        _NOTES[m["root"].upper()]
        + {"sharp": 1, "flat": -1, None: 0}[m["accidental"] and m["accidental"].lower()]
    )
    quality = "maj" if m["quality"].lower() == "major" else "min"
    if m["ext"]:
        quality = "m7b5"
    return root % 12, quality, (m["direction"] or "any").lower()


def load_strums(folder: Path, sample_rate: int) -> dict[tuple[int, str], dict[str, list]]:
    """{(root, quality): {direction: [strum [2, t] at ``sample_rate``]}} of a folder."""
    strums: dict[tuple[int, str], dict[str, list]] = {}
    for path in sorted(folder.glob("*.flac")):
        parsed = parse_strum(path.stem)
        if parsed is None:
            continue
        root, quality, direction = parsed
        x, _ = audio.read(path, sample_rate)
        x = x[:2] if x.shape[0] >= 2 else np.repeat(x, 2, 0)
        strums.setdefault((root, quality), {}).setdefault(direction, []).append(
            x.astype(np.float32)
        )
    return strums


def _progression(chords: list[tuple[int, str]], rng: np.random.Generator) -> list:
    """Four chords of one key where the recordings allow (I, IV, V, vi in a major key, i,
    iv, v, VI in a minor one), else any four."""
    have = set(chords)
    for _ in range(20):
        tonic, mode = chords[int(rng.integers(len(chords)))]
        if mode == "m7b5":
            continue
        steps = [(0, "maj"), (5, "maj"), (7, "maj"), (9, "min")] if mode == "maj" else [
            (0, "min"), (5, "min"), (7, "min"), (8, "maj")
        ]  # fmt: skip
        key = [((tonic + s) % 12, q) for s, q in steps]
        key = [c for c in key if c in have]
        if len(key) >= 3:
            return [key[int(i)] for i in rng.permutation(len(key))]
    return [chords[int(i)] for i in rng.integers(len(chords), size=4)]


def strum_part(
    strums: dict[tuple[int, str], dict[str, list]],
    seconds: float,
    sample_rate: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """A strummed part [2, t] of ``seconds``: a four-chord progression (a chord per bar or
    half bar) at 70-150 BPM on an eighth-note grid."""
    n = int(round(seconds * sample_rate))
    out = np.zeros((2, n), np.float32)
    chords = _progression(sorted(strums), rng)
    beat = 60.0 / rng.uniform(70, 150) * sample_rate
    eighth = beat / 2
    # Which of a bar's eight eighths are strummed: always the first; downs on beats.
    pattern = rng.random(8) < rng.uniform(0.4, 0.9)
    pattern[0] = True
    bars_per_chord = 1 if rng.random() < 0.7 else 0.5
    fade = int(0.03 * sample_rate)  # the hand damps the strings before the next strum
    onsets = []
    step = 0
    while step * eighth < n:
        if pattern[step % 8]:
            onsets.append(step)
        step += 1
    for i, step in enumerate(onsets):
        start = int(step * eighth + rng.normal(0, 0.008) * sample_rate)
        start = min(max(start, 0), n - 1)
        chord = chords[int(step // (8 * bars_per_chord)) % len(chords)]
        kinds = strums[chord]
        direction = "down" if step % 2 == 0 else "up"
        takes = kinds.get(direction) or kinds.get("any") or next(iter(kinds.values()))
        x = takes[int(rng.integers(len(takes)))]
        gain = 10 ** ((rng.normal(0, 1.5) - (4.0 if direction == "up" else 0.0)) / 20)
        end = n
        if i + 1 < len(onsets):  # damped at the next strum
            end = min(n, int(onsets[i + 1] * eighth) + fade)
        length = min(end - start, x.shape[1])
        piece = x[:, :length] * np.float32(gain)
        if end < n and length == end - start and length > fade:
            piece[:, -fade:] *= np.linspace(1, 0, fade, dtype=np.float32)
        out[:, start : start + length] += piece
    return out


def strum_pool(
    sample_rate: int,
    cache_dir: Path,
    parts: int = 60,
    seconds: float = 10.0,
    seed: int = 0,
    folder: Path | None = None,
) -> data.ClipPool:
    """A cached pool of ``parts`` strummed parts (stereo) from ``folder`` (default
    ``find_strums()``). Raises ``data.SourceUnavailable`` where there are no strums and no
    cached render."""
    folder = folder or find_strums()

    def render() -> Iterator[tuple[str, np.ndarray]]:
        from tqdm import tqdm

        if folder is None:
            raise data.SourceUnavailable(
                "no guitar strums: install hydrogen-drumkits-effects or set $DEMIX_STRUMS"
            )
        strums = load_strums(folder, sample_rate)
        if not strums:
            raise data.SourceUnavailable(
                f"{folder}: no chord strums (*.flac named like Amajor_DOWN_00)"
            )
        for i in tqdm(range(parts), desc="rendering strummed guitar", leave=False):
            rng = np.random.default_rng([seed, STRUMS_VERSION, i])
            yield f"strums{i:04d}", strum_part(strums, seconds, sample_rate, rng)

    name = folder.name if folder else Path(STRUMS_DIRS[0]).name
    key = f"strums v{STRUMS_VERSION} {name} {sample_rate} {parts} {seconds} {seed}"
    return data.ClipPool.rendered(key, render, sample_rate, cache_dir, channels=2)
