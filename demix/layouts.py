"""Training on real multitrack datasets: tracks of aligned stem files, random segments.

The layout readers (``cdx.datasets``: Divide and Remaster; ``mdx.datasets``: MUSDB18-HQ,
MUSDB18 ``.stem.mp4``, MoisesDB) turn a dataset folder into :class:`Track` lists; this
module turns tracks into training examples the same way for all of them:

- a random segment of a random track, every stem at the same offset; or, with probability
  ``p_remix``, each stem from a different random track (Demucs-style remixing);
- a random gain per stem and a random left/right swap; mono files become stereo;
- segments are read from disk with seeking (wav, flac: no full decode), resampled when the
  file's rate differs from the model's.

A dataset whose stems are coarser than its head's (MUSDB's "other" holds guitar and piano)
declares ``groups``: for each of its stems, the head stems it is the sum of. Training then
scores the sum of those head outputs against it (partial supervision), see
``demix.train``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch

from demix import audio, data

AUDIO_SUFFIXES = (".wav", ".flac")  # what the layout readers look for


def visible_entries(folder: Path) -> list[Path]:
    """``folder``'s files and folders, sorted, without hidden ones (macOS's "._x.wav" resource
    forks, ``.ipynb_checkpoints``): what a layout reader looks at."""
    return sorted(p for p in Path(folder).iterdir() if not p.name.startswith("."))


def audio_files(folder: Path, name: str) -> list[Path]:
    """``folder/<name>.wav`` and/or ``.flac`` where they exist (a stem file of a layout)."""
    return [folder / f"{name}{s}" for s in AUDIO_SUFFIXES if (folder / f"{name}{s}").is_file()]


@dataclass(frozen=True)
class Track:
    """One song or scene: for each stem, the files that sum to it (a shorter file is silent
    after its end)."""

    name: str
    files: dict[str, tuple[Path, ...]]
    frames: int  # length of its longest file, at ``sample_rate``
    sample_rate: int


def track_from_files(name: str, files: dict[str, Sequence[Path]]) -> Track:
    """A :class:`Track` after checking that every file exists and reading its length.
    A stem with no files is silent in this track.

    Raises:
        FileNotFoundError, ValueError, audio.AudioError: a missing or unreadable file, no
            file at all, files of different rates, or one stem given as both ``x.wav`` and
            ``x.flac`` (summing both would double it).
    """
    lengths, rates = [], set()
    for stem, paths in files.items():
        names = [Path(p).with_suffix("") for p in paths]
        twice = next((n for n in names if names.count(n) > 1), None)
        if twice is not None:
            copies = sorted(Path(p).name for p in paths if Path(p).with_suffix("") == twice)
            raise ValueError(f"{name}: {stem} is there twice ({', '.join(copies)}): keep one")
        for p in paths:
            if not Path(p).is_file():
                raise FileNotFoundError(f"{p}: no such file (track {name}, stem {stem})")
            meta = audio.info(p)
            lengths.append(meta.frames)
            rates.add(meta.sample_rate)
    if not rates:
        raise ValueError(f"{name}: no stem files")
    if len(rates) != 1:
        raise ValueError(f"{name}: stem files at different sample rates {sorted(rates)}")
    return Track(
        name, {k: tuple(Path(p) for p in v) for k, v in files.items()}, max(lengths), rates.pop()
    )


def usable_tracks(
    items: Iterable[tuple[str, dict[str, Sequence[Path]] | str]], where: Path, expected: str
) -> list[Track]:
    """The tracks of a layout reader's items, given as (name, {stem: files}) or, for an item
    that lacks what the layout needs, (name, reason). Items that lack something or whose
    files cannot be used (``track_from_files``) are skipped; one warning says how many and
    why (the first three reasons).

    Raises:
        FileNotFoundError: no usable item in ``where`` (``expected`` says what was looked
            for; the first reason is given).
    """
    tracks, skipped, count = [], [], 0
    for name, files in items:
        count += 1
        if isinstance(files, str):
            skipped.append(f"{name}: {files}")
            continue
        try:
            tracks.append(track_from_files(name, files))
        except (FileNotFoundError, ValueError, audio.AudioError) as exc:
            skipped.append(str(exc))
    if not tracks:
        more = ", ..." if len(skipped) > 1 else ""
        reason = f"; {len(skipped)} skipped ({skipped[0]}{more})" if skipped else ""
        raise FileNotFoundError(f"{where}: no {expected}{reason}")
    if skipped:
        more = f"; and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        warnings.warn(
            f"{where}: {len(skipped)} of {count} items skipped ({'; '.join(skipped[:3])}{more})",
            stacklevel=3,
        )
    return tracks


def read_segment(path: Path, start: int, frames: int, file_rate: int, rate: int) -> np.ndarray:
    """``frames`` samples at ``rate`` starting at ``start`` (in the file's own samples),
    stereo float32 [2, frames]; zero-padded past the end of the file."""
    want = int(np.ceil(frames * file_rate / rate)) + 16
    try:
        x, _ = soundfile.read(str(path), start=start, frames=want, dtype="float32", always_2d=True)
        x = x.T
    except (soundfile.LibsndfileError, RuntimeError):  # not seekable: decode all, then crop
        x = audio.read(path)[0][:, start : start + want]
    if x.shape[0] == 1:
        x = np.repeat(x, 2, axis=0)
    x = audio.resample(x[:2], file_rate, rate)[:, :frames]
    if x.shape[1] < frames:
        x = np.pad(x, ((0, 0), (0, frames - x.shape[1])))
    return np.ascontiguousarray(x, dtype=np.float32)


class MultitrackDataset(torch.utils.data.Dataset):
    """Random segments of multitrack ``tracks``; item i is reproducible from (seed, i).

    Returns ``(mix[2, t], stems[s, 2, t])`` float32 with s = len(stems); the mix is the sum
    of the (augmented) stems.

    Args:
        tracks: the dataset's tracks (each has every stem in ``stems``).
        stems: the dataset's stem names, in output order.
        sample_rate: model rate.
        segment_seconds: example length.
        p_remix: probability that each stem comes from a different random track.
        gain_db: (low, high) random gain per stem.
        epoch_size: nominal length (examples are drawn at random anyway).
        seed: base of every example's random generator.
        head_stems: the stems of the head this dataset trains (default: ``stems``).
        groups: for each dataset stem, the head stems that sum to it (default: itself).
    """

    def __init__(
        self,
        tracks: Sequence[Track],
        stems: Sequence[str],
        sample_rate: int,
        segment_seconds: float,
        p_remix: float = 0.5,
        gain_db: tuple[float, float] = (-6.0, 3.0),
        epoch_size: int = 1_000_000,
        seed: int = 0,
        head_stems: Sequence[str] | None = None,
        groups: dict[str, tuple[str, ...]] | None = None,
    ):
        if not tracks:
            raise ValueError("no tracks")
        self.tracks = list(tracks)
        self.stems = tuple(stems)
        self.head_stems = tuple(head_stems or stems)
        self.groups = {s: tuple((groups or {}).get(s, (s,))) for s in self.stems}
        for stem, members in self.groups.items():
            unknown = set(members) - set(self.head_stems)
            if unknown:
                raise ValueError(f"stem {stem!r} groups unknown head stems {sorted(unknown)}")
        self.sample_rate = sample_rate
        self.frames = int(round(segment_seconds * sample_rate))
        self.p_remix = p_remix
        self.gain_db = gain_db
        self.epoch_size = epoch_size
        self.seed = seed

    def __len__(self) -> int:
        return self.epoch_size

    @classmethod
    def from_config(cls, tracks: Sequence[Track], stems: Sequence[str], config, seed: int, **kw):
        """The dataset with ``config``'s ``sample_rate``, ``segment_seconds``, ``p_remix`` and
        ``epoch_size`` (the fields every layout reader's config has)."""
        return cls(
            tracks,
            stems,
            config.sample_rate,
            config.segment_seconds,
            config.p_remix,
            epoch_size=config.epoch_size,
            seed=seed,
            **kw,
        )

    def _random_start(self, track: Track, rng: np.random.Generator) -> int:
        """A segment start (in the track's samples) that keeps the segment inside it."""
        need = int(np.ceil(self.frames * track.sample_rate / self.sample_rate))
        return int(rng.integers(max(track.frames - need, 0) + 1))

    def _read(self, track: Track, stem: str, start: int) -> np.ndarray:
        out = np.zeros((2, self.frames), np.float32)
        for p in track.files.get(stem, ()):
            out += read_segment(p, start, self.frames, track.sample_rate, self.sample_rate)
        return out

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        stems = np.zeros((len(self.stems), 2, self.frames), np.float32)
        if rng.random() < self.p_remix:
            for s, stem in enumerate(self.stems):
                track = self.tracks[int(rng.integers(len(self.tracks)))]
                stems[s] = self._read(track, stem, self._random_start(track, rng))
        else:
            track = self.tracks[int(rng.integers(len(self.tracks)))]
            start = self._random_start(track, rng)
            for s, stem in enumerate(self.stems):
                stems[s] = self._read(track, stem, start)
        gains = 10.0 ** (rng.uniform(*self.gain_db, size=len(self.stems)) / 20.0)
        stems *= gains[:, None, None].astype(np.float32)
        if rng.random() < 0.5:
            stems = stems[:, ::-1]
        data.fit_peak(stems)
        stems = np.ascontiguousarray(stems)
        return torch.from_numpy(stems.sum(0)), torch.from_numpy(stems)

    def group_matrix(self) -> torch.Tensor:
        """[dataset stems, head stems] 0/1 matrix: dataset stem i = Σ_j M[i, j] · head stem j."""
        m = torch.zeros(len(self.stems), len(self.head_stems))
        for i, stem in enumerate(self.stems):
            for member in self.groups[stem]:
                m[i, self.head_stems.index(member)] = 1.0
        return m
