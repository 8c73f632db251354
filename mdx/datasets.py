"""Real music datasets for training the music head: MUSDB18-HQ, MUSDB18 (``.stem.mp4``)
and MoisesDB, mapped to the six stems.

- MUSDB18-HQ: ``ROOT/{train,test}/<song>/{mixture,drums,bass,other,vocals}.wav``. Its
  "other" is guitar + piano + other: it trains the sum of those three outputs.
- MUSDB18: ``ROOT/{train,test}/<song>.stem.mp4`` (streams: mixture, drums, bass, other,
  vocals), decoded once through ffmpeg into a flac cache, then read like MUSDB18-HQ.
- MoisesDB: ``ROOT/<song>/<stem folder>/<track>.wav`` (+ ``data.json``); stem folders map to
  the six stems with :data:`MOISESDB_STEMS` (percussion → drums, other keys, strings, wind,
  other plucked... → other); every track of a folder is summed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from demix import audio
from demix.layouts import (
    AUDIO_SUFFIXES,
    MultitrackDataset,
    Track,
    audio_files,
    usable_tracks,
    visible_entries,
)
from demix.registry import register_dataset
from mdx import MDX_STEMS

MUSDB_STEMS = ("drums", "bass", "vocals", "other")
MUSDB_STREAMS = {"drums": 1, "bass": 2, "other": 3, "vocals": 4}  # NI Stems order
MUSDB_GROUPS = {"other": ("guitar", "piano", "other")}
MOISESDB_STEMS = {
    "vocals": "vocals",
    "drums": "drums",
    "percussion": "drums",
    "bass": "bass",
    "guitar": "guitar",
    "piano": "piano",
}  # every other MoisesDB stem folder → "other"


def decode_stem_mp4(path: Path, cache_dir: Path, sample_rate: int = 44100) -> Path:
    """Decode a MUSDB18 ``.stem.mp4`` into ``cache_dir/<song>-<hash>/<stem>.flac`` once;
    returns that folder."""
    key = hashlib.sha1(f"{path.resolve()} {path.stat().st_size}".encode()).hexdigest()[:10]
    folder = Path(cache_dir) / f"{path.name.removesuffix('.stem.mp4')}-{key}"
    if (folder / "vocals.flac").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for stem, stream in MUSDB_STREAMS.items():
        wav = audio.read_stream(path, stream, sample_rate)
        tmp = folder / f".{stem}.{os.getpid()}.flac"
        audio.write(tmp, wav, sample_rate, "flac", "16")
        os.replace(tmp, folder / f"{stem}.flac")
    return folder


def musdb_tracks(root: Path, split: str = "train", cache_dir: Path | None = None) -> list[Track]:
    """The songs of a MUSDB18-HQ folder, or of MUSDB18 ``.stem.mp4`` files (decoded into
    ``cache_dir``, default ``runs/cache/musdb``).

    Raises:
        FileNotFoundError: no songs found.
    """
    base = Path(root) / split if (Path(root) / split).is_dir() else Path(root)

    def items():
        for entry in visible_entries(base) if base.is_dir() else []:
            if entry.name.endswith(".stem.mp4"):
                entry = decode_stem_mp4(entry, cache_dir or Path("runs/cache/musdb"))
            if not entry.is_dir():
                continue
            files = {stem: audio_files(entry, stem) for stem in MUSDB_STEMS}
            lacking = [f"{stem}.wav" for stem, found in files.items() if not found]
            yield entry.name, f"no {' or '.join(lacking)}" if lacking else files

    return usable_tracks(
        items(),
        base,
        "MUSDB18 songs (folders with drums, bass, other, vocals .wav, or .stem.mp4 files)",
    )


def moisesdb_tracks(root: Path) -> list[Track]:
    """The songs of a MoisesDB folder, each stem folder mapped to one of the six stems.

    Raises:
        FileNotFoundError: no songs found.
    """
    base = Path(root)

    def items():
        for song in [p for p in visible_entries(base) if p.is_dir()] if base.is_dir() else []:
            files: dict[str, list[Path]] = {stem: [] for stem in MDX_STEMS}
            for folder in (p for p in visible_entries(song) if p.is_dir()):
                stem = MOISESDB_STEMS.get(folder.name, "other")
                files[stem] += [p for p in visible_entries(folder) if p.suffix in AUDIO_SUFFIXES]
            yield song.name, files if any(files.values()) else "no stem folders with audio"

    return usable_tracks(items(), base, "MoisesDB songs (<song>/<stem>/<track>.wav)")


@dataclass(frozen=True)
class MusdbConfig:
    """A MUSDB18(-HQ) copy to train on."""

    root: str
    split: str = "train"
    cache_dir: str = "runs/cache/musdb"
    sample_rate: int = 44100
    segment_seconds: float = 3.0
    p_remix: float = 0.5
    epoch_size: int = 1_000_000


@dataclass(frozen=True)
class MoisesDBConfig:
    """A MoisesDB copy to train on."""

    root: str
    sample_rate: int = 44100
    segment_seconds: float = 3.0
    p_remix: float = 0.5
    epoch_size: int = 1_000_000


@register_dataset("mdx.musdb", MusdbConfig)
def musdb(config: MusdbConfig, seed: int = 0) -> MultitrackDataset:
    """Registered training source: MUSDB18(-HQ) segments for the six-stem head ("other"
    supervises guitar + piano + other)."""
    return MultitrackDataset.from_config(
        musdb_tracks(Path(config.root), config.split, Path(config.cache_dir)),
        MUSDB_STEMS,
        config,
        seed,
        head_stems=MDX_STEMS,
        groups=MUSDB_GROUPS,
    )


@register_dataset("mdx.moisesdb", MoisesDBConfig)
def moisesdb(config: MoisesDBConfig, seed: int = 0) -> MultitrackDataset:
    """Registered training source: MoisesDB segments, six stems."""
    return MultitrackDataset.from_config(
        moisesdb_tracks(Path(config.root)), MDX_STEMS, config, seed
    )
