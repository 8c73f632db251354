"""Real film-audio datasets for training the film head: Divide and Remaster (DnR v2, v3).

Layout (both versions): ``ROOT/<split>/<id>/{mix,speech,music,sfx}.wav`` with splits
``tr``, ``cv``, ``tt`` (or the id folders directly under ``ROOT``). speech → dialogue,
music → music, sfx → effects; the mixture file is not read (the stems sum to it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cdx import CDX_STEMS
from demix.layouts import MultitrackDataset, Track, audio_files, usable_tracks, visible_entries
from demix.registry import register_dataset

DNR_FILES = {"dialogue": "speech", "music": "music", "effects": "sfx"}


def dnr_tracks(root: Path, split: str = "tr") -> list[Track]:
    """The tracks of a DnR folder (``split`` folder if it exists, else ``root`` itself); an
    item without one of its stems, or with an unreadable one, is skipped with a warning.

    Raises:
        FileNotFoundError: no DnR items found there.
    """
    root = Path(root)
    base = root / split if split and (root / split).is_dir() else root

    def items():
        for folder in [p for p in visible_entries(base) if p.is_dir()] if base.is_dir() else []:
            files = {stem: audio_files(folder, name) for stem, name in DNR_FILES.items()}
            lacking = [f"{DNR_FILES[stem]}.wav" for stem, found in files.items() if not found]
            yield folder.name, f"no {' or '.join(lacking)}" if lacking else files

    return usable_tracks(
        items(), base, "Divide-and-Remaster items (folders with speech, music and sfx .wav)"
    )


@dataclass(frozen=True)
class DnRConfig:
    """A DnR copy to train on."""

    root: str
    split: str = "tr"
    sample_rate: int = 44100
    segment_seconds: float = 3.0
    p_remix: float = 0.5
    epoch_size: int = 1_000_000


@register_dataset("cdx.dnr", DnRConfig)
def dnr(config: DnRConfig, seed: int = 0) -> MultitrackDataset:
    """Registered training source: random (and remixed) segments of Divide and Remaster."""
    return MultitrackDataset.from_config(
        dnr_tracks(Path(config.root), config.split), CDX_STEMS, config, seed
    )
