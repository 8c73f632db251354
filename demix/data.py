"""Task-agnostic training data plumbing: manifests, decoded clip pools, loudness, augmentation.

Decoding compressed audio is the slowest part of dynamic mixing, so every pool is decoded
once, resampled to the model's rate and cached as one float16 array (``<cache>/<key>.npy``
plus an index), memory-mapped by every data worker. Arrays are float32 [c, t] in use.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyloudnorm
import soxr
from tqdm import tqdm

from demix import audio

# Licences a shipped model may be trained on. NC (non-commercial) material is evaluation-only.
TRAINABLE_LICENSES = (
    "CC0", "CC-BY-3.0", "CC-BY-4.0", "Apache-2.0", "MIT", "public domain", "public-domain"
)  # fmt: skip


def default_data_root() -> Path:
    """The development data folder: ``$DEMIX_DATA`` or ``../shared/data`` beside the project."""
    env = os.environ.get("DEMIX_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def license_is_trainable(license_name: str) -> bool:
    """True for licences that allow training a shipped model (never NC)."""
    if "NC" in license_name.upper().split("-"):
        return False
    return any(license_name.startswith(ok) for ok in TRAINABLE_LICENSES)


class SourceUnavailable(RuntimeError):
    """A renderer's material is not on this machine (no SoundFont, no FluidSynth, no drum kit
    or strums) and nothing is cached: a source may be left out of the mix for this (or, where
    the config requires it, ``MissingSourceError``). Other errors of a render are not this."""


class MissingSourceError(RuntimeError):
    """Training material that a data source's config requires is missing (a Debian package,
    a SoundFont): ``demix train`` stops with this one-line reason instead of training on less."""


@dataclass(frozen=True)
class ManifestRow:
    """One file of a manifest (``path`` absolute)."""

    path: Path
    kind: str
    split: str
    group: str
    license: str
    seconds: float


def read_manifest(
    root: Path,
    kinds: Iterable[str] | None = None,
    split: str | None = None,
    trainable_only: bool = False,
    path_prefix: str | tuple[str, ...] | None = None,
    manifest: Path | None = None,
) -> list[ManifestRow]:
    """Rows of ``root/MANIFEST.csv`` filtered by kind, split, licence and path prefix.

    ``path_prefix`` is one prefix or a tuple of them (a row matching any is kept).
    ``manifest`` reads another manifest file of the same columns instead (its paths still
    relative to ``root``): seeded evaluation sets read the committed copy of the rows they were
    built from (``eval.sets.PINNED_MANIFEST``), so that files added to the corpus later, even
    to the same folders, do not change them.
    """
    kinds = set(kinds) if kinds is not None else None
    rows = []
    with open(manifest or root / "MANIFEST.csv", newline="") as f:
        for r in csv.DictReader(f):
            if kinds is not None and r["kind"] not in kinds:
                continue
            if split is not None and r["split"] != split:
                continue
            if trainable_only and not license_is_trainable(r["license"]):
                continue
            if path_prefix and not r["path"].startswith(path_prefix):
                continue
            rows.append(
                ManifestRow(
                    root / r["path"],
                    r["kind"],
                    r["split"],
                    r["group"],
                    r["license"],
                    float(r["seconds"]),
                )
            )
    return rows


def subset_manifest(
    root: Path,
    out_dir: Path,
    per_group: int = 2,
    split: str | None = "train",
    per_kind: int | None = None,
) -> Path:
    """Write ``out_dir/MANIFEST.csv``: at most ``per_group`` files of every (kind, group) and
    ``per_kind`` of every kind of ``root``'s manifest (licence-clean rows of ``split``),
    with absolute paths into ``root``. A small data root for quick experiments, notebooks and
    tests; returns ``out_dir``.
    """
    root, out_dir = Path(root), Path(out_dir)
    with open(root / "MANIFEST.csv", newline="") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        rows = [r for r in reader if license_is_trainable(r["license"])]
    count: dict[tuple[str, str], int] = {}
    keep = []
    for r in rows:
        if split is not None and r["split"] != split:
            continue
        key, kind = (r["kind"], r["group"]), (r["kind"], "")
        if count.get(key, 0) < per_group and count.get(kind, 0) < (per_kind or len(rows)):
            count[key] = count.get(key, 0) + 1
            count[kind] = count.get(kind, 0) + 1
            keep.append(dict(r, path=str((root / r["path"]).resolve())))
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "MANIFEST.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(keep)
    return out_dir


def pool_digest(key: str) -> str:
    """The file name part of a pool cache (``pool-<digest>.npy`` / ``.json``) for its key."""
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def relative_names(paths: Iterable[Path], root: Path | None) -> list[str]:
    """Paths as strings relative to ``root`` (as given when ``root`` is None): what pool
    cache keys name, so that a cache does not depend on where the corpus lies."""
    if root is None:
        return [str(p) for p in paths]
    return [os.path.relpath(p, root) for p in paths]


def write_pool_cache(
    data_file: Path, samples: np.ndarray, names: list[str], offsets: list[int]
) -> None:
    """Write a pool cache: ``samples`` [c, total] (float16) as ``data_file`` (``.npy``) and
    its index (clip names, offsets) beside it as ``.json``, each atomically, the index last
    (its presence marks the cache complete)."""
    # Unique temporary names: several processes may build the same pool at once.
    tmp = data_file.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, samples)
    os.replace(tmp, data_file)
    tmp_index = data_file.with_suffix(f".{os.getpid()}.tmp")
    tmp_index.write_text(json.dumps({"names": names, "offsets": offsets}))
    os.replace(tmp_index, data_file.with_suffix(".json"))


class ClipPool:
    """Decoded clips at one sample rate, cached as float16 and memory-mapped.

    Args:
        paths: audio files of the pool.
        sample_rate: rate every clip is resampled to.
        cache_dir: where the decoded cache lives (built on first use).
        channels: 1 (mixed down) or 2 (mono clips duplicated).
        min_seconds: clips shorter than this are dropped.
        key_root: the data root: the cache is keyed by the paths relative to it, so that a
            cache (or a training pack, ``demix.pack``) serves the same corpus wherever it
            lies. None: keyed by the paths as given.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        sample_rate: int,
        cache_dir: Path,
        channels: int = 1,
        min_seconds: float = 0.05,
        key_root: Path | None = None,
    ):
        paths = sorted(Path(p) for p in paths)
        if not paths:
            raise ValueError("empty clip pool")
        key = json.dumps([relative_names(paths, key_root), sample_rate, channels])
        # Caches made before keys were relative to the data root are taken over (hard link).
        legacy = json.dumps([[str(p) for p in paths], sample_rate, channels])

        def decoded() -> Iterable[tuple[str, np.ndarray]]:
            for p in tqdm(paths, desc=f"decoding pool ({len(paths)} files)", leave=False):
                wav, _ = audio.read(p, sample_rate)
                if wav.shape[1] >= min_seconds * sample_rate:
                    yield str(p), wav

        self._open(key, decoded, sample_rate, Path(cache_dir), channels, legacy)

    @classmethod
    def rendered(
        cls,
        key: str,
        render: Callable[[], Iterable[tuple[str, np.ndarray]]],
        sample_rate: int,
        cache_dir: Path,
        channels: int = 1,
        legacy_key: str | None = None,
    ) -> ClipPool:
        """A pool of generated clips, built once by ``render()`` and cached under ``key``.

        ``render`` yields ``(name, clip [c, t])`` at ``sample_rate``; ``key`` must change
        whenever what ``render`` produces changes (include a version and the seed), and should
        not name machine-specific paths (see ``relative_names``). A cache under
        ``legacy_key`` (an older form of the same key) is taken over.
        """
        pool = cls.__new__(cls)
        pool._open(key, render, sample_rate, Path(cache_dir), channels, legacy_key)
        return pool

    def _open(
        self,
        key: str,
        produce: Callable[[], Iterable[tuple[str, np.ndarray]]],
        sample_rate: int,
        cache_dir: Path,
        channels: int,
        legacy_key: str | None = None,
    ) -> None:
        digest = pool_digest(key)
        self.key, self.digest = key, digest
        self.sample_rate = sample_rate
        self.channels = channels
        data_file = cache_dir / f"pool-{digest}.npy"
        index_file = cache_dir / f"pool-{digest}.json"
        if not index_file.exists() and legacy_key is not None and legacy_key != key:
            old = pool_digest(legacy_key)
            if (cache_dir / f"pool-{old}.json").exists():
                for suffix in (".npy", ".json"):  # data first: the index marks it complete
                    with contextlib.suppress(FileExistsError):
                        os.link(cache_dir / f"pool-{old}{suffix}", data_file.with_suffix(suffix))
        if not index_file.exists():
            self._build(produce(), data_file)
        index = json.loads(index_file.read_text())
        self.names: list[str] = index["names"]
        self.offsets = np.asarray(index["offsets"], dtype=np.int64)  # [clips + 1]
        self.data = np.load(data_file, mmap_mode="r")  # [channels, total] float16

    def _build(self, clips_in: Iterable[tuple[str, np.ndarray]], data_file: Path) -> None:
        data_file.parent.mkdir(parents=True, exist_ok=True)
        clips, names = [], []
        for name, wav in clips_in:
            if self.channels == 1:
                wav = wav.mean(axis=0, keepdims=True)
            elif wav.shape[0] == 1:
                wav = np.repeat(wav, 2, axis=0)
            else:
                wav = wav[:2]
            peak = float(np.abs(wav).max())
            if peak > 1.0:
                wav = wav / peak
            clips.append(wav.astype(np.float16))
            names.append(name)
        if not clips:
            raise ValueError(f"{data_file.name}: the pool produced no clips")
        offsets = np.cumsum([0] + [c.shape[1] for c in clips]).tolist()
        write_pool_cache(data_file, np.concatenate(clips, axis=1), names, offsets)

    def __len__(self) -> int:
        return len(self.names)

    def clip(self, i: int) -> np.ndarray:
        """Whole clip ``i`` as float32 [channels, t]."""
        return np.asarray(self.data[:, self.offsets[i] : self.offsets[i + 1]], dtype=np.float32)

    def length(self, i: int) -> int:
        """Length of clip ``i`` in samples."""
        return int(self.offsets[i + 1] - self.offsets[i])

    def random_crop(
        self, rng: np.random.Generator, samples: int, loop: bool = True, record: list | None = None
    ) -> np.ndarray:
        """A random excerpt of ``samples`` from a random clip, float32 [channels, samples].

        Short clips are looped (``loop``) or placed at a random offset in silence. When
        ``record`` is given, the clip's file name is appended to it (provenance).
        """
        i = int(rng.integers(len(self)))
        if record is not None:
            record.append(Path(self.names[i]).name)
        n = self.length(i)
        if n >= samples:
            start = int(rng.integers(n - samples + 1))
            base = int(self.offsets[i]) + start
            return np.asarray(self.data[:, base : base + samples], dtype=np.float32)
        clip = self.clip(i)
        if loop:
            reps = -(-samples // n) + 1
            tiled = np.tile(clip, (1, reps))
            start = int(rng.integers(n))
            return tiled[:, start : start + samples]
        out = np.zeros((self.channels, samples), dtype=np.float32)
        start = int(rng.integers(samples - n + 1))
        out[:, start : start + n] = clip
        return out


_METERS: dict[int, pyloudnorm.Meter] = {}


# BS.1770-4 channel weights by channel count, in WAV (SMPTE) order: 5.1 is L R C LFE Ls Rs,
# 7.1 is L R C LFE Lb Rb Ls Rs; the LFE is excluded (weight 0), surrounds count +1.5 dB.
BS1770_WEIGHTS = {
    5: (1.0, 1.0, 1.0, 1.41, 1.41),
    6: (1.0, 1.0, 1.0, 0.0, 1.41, 1.41),
    8: (1.0, 1.0, 1.0, 0.0, 1.41, 1.41, 1.41, 1.41),
}


def loudness_lufs(x: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness (ITU-R BS.1770-4) of float32 [c, t]; -inf for silence.

    Up to five channels this is pyloudnorm's meter. pyloudnorm (and torchaudio) refuse more
    channels, so 5.1, 7.1 and other layouts are measured here with pyloudnorm's K-weighting
    filters and the standard's 400-ms blocks and two gates, with :data:`BS1770_WEIGHTS` (other
    counts: every channel at weight 1).
    """
    meter = _METERS.setdefault(sample_rate, pyloudnorm.Meter(sample_rate))
    if x.shape[1] < int(0.4 * sample_rate):
        x = np.pad(x, ((0, 0), (0, int(0.4 * sample_rate) - x.shape[1])))
    if x.shape[0] > 5:
        weights = BS1770_WEIGHTS.get(x.shape[0], (1.0,) * x.shape[0])
        return _gated_loudness(meter, x, sample_rate, np.asarray(weights))
    with np.errstate(divide="ignore"):
        value = meter.integrated_loudness(np.ascontiguousarray(x.T.astype(np.float64)))
    return float(value)


def true_peak_dbtp(x: np.ndarray, sample_rate: int) -> float:
    """True peak (ITU-R BS.1770-4 Annex 2) of float32 [c, t] in dBTP; -inf for silence.

    The signal is oversampled to at least 192 kHz (4x at 44.1/48 kHz) and the largest absolute
    sample taken, so inter-sample peaks that a DAC would reproduce are counted. pyloudnorm and
    torchaudio have no true-peak meter; the oversampling is soxr's, as everywhere in demix.
    """
    factor = max(1, int(np.ceil(192000 / sample_rate)))
    x = np.asarray(x, dtype=np.float32)
    if factor > 1 and x.shape[1] > 0:
        up = soxr.resample(np.ascontiguousarray(x.T), sample_rate, sample_rate * factor, "HQ")
        peak = max(float(np.abs(up).max(initial=0.0)), float(np.abs(x).max(initial=0.0)))
    else:
        peak = float(np.abs(x).max(initial=0.0))
    return 20.0 * float(np.log10(peak)) if peak > 0 else float("-inf")


def _gated_loudness(meter, x: np.ndarray, sample_rate: int, weights: np.ndarray) -> float:
    """BS.1770-4 gated loudness of [c, t] with per-channel ``weights``."""
    y = np.asarray(x, dtype=np.float64)
    for stage in meter._filters.values():  # pyloudnorm's K-weighting (high shelf, high pass)
        y = np.stack([stage.apply_filter(channel) for channel in y])
    block, step = int(round(0.4 * sample_rate)), int(round(0.1 * sample_rate))
    blocks = 1 + (y.shape[1] - block) // step
    power = np.concatenate([np.zeros((y.shape[0], 1)), np.cumsum(y**2, axis=1)], axis=1)
    starts = np.arange(blocks) * step
    z = (power[:, starts + block] - power[:, starts]) / block  # [c, blocks] mean squares
    energy = weights @ z
    with np.errstate(divide="ignore"):
        level = -0.691 + 10.0 * np.log10(energy)
        kept = level >= -70.0  # absolute gate
        if not kept.any():
            return float("-inf")
        relative = -0.691 + 10.0 * np.log10(energy[kept].mean()) - 10.0
        kept &= level > relative
        if not kept.any():
            return float("-inf")
        return float(-0.691 + 10.0 * np.log10(energy[kept].mean()))


def set_loudness(x: np.ndarray, sample_rate: int, target_lufs: float) -> np.ndarray:
    """Scale ``x`` [c, t] to ``target_lufs``; silent input is returned unchanged."""
    current = loudness_lufs(x, sample_rate)
    if not np.isfinite(current):
        return x
    return x * np.float32(10.0 ** ((target_lufs - current) / 20.0))


def pan_mono(x: np.ndarray, pan: float) -> np.ndarray:
    """Constant-power pan of mono [1, t] to stereo [2, t]; ``pan`` in [-1 (left), 1 (right)]."""
    angle = (pan + 1.0) * np.pi / 4.0
    return np.concatenate([x * np.cos(angle), x * np.sin(angle)], axis=0).astype(np.float32)


def random_eq(
    x: np.ndarray, rng: np.random.Generator, sample_rate: int, max_gain_db: float = 6.0
) -> np.ndarray:
    """Random smooth spectral tilt/bump (a few dB) applied in the frequency domain."""
    spec = np.fft.rfft(x, axis=-1)
    freqs = np.fft.rfftfreq(x.shape[-1], 1.0 / sample_rate)
    log_f = np.log2(np.maximum(freqs, 20.0) / 1000.0)
    tilt = rng.uniform(-1, 1) * max_gain_db / 4.0 * log_f
    centre, width = rng.uniform(-3, 3.5), rng.uniform(0.5, 2.0)
    bump = rng.uniform(-1, 1) * max_gain_db * np.exp(-0.5 * ((log_f - centre) / width) ** 2)
    gain = 10.0 ** (np.clip(tilt + bump, -max_gain_db * 2, max_gain_db * 2) / 20.0)
    return np.fft.irfft(spec * gain, n=x.shape[-1], axis=-1).astype(np.float32)


def lowpass(x: np.ndarray, sample_rate: int, cutoff_hz: float) -> np.ndarray:
    """Brick-wall low-pass (frequency domain) with a short cosine transition."""
    spec = np.fft.rfft(x, axis=-1)
    freqs = np.fft.rfftfreq(x.shape[-1], 1.0 / sample_rate)
    ramp = np.clip((cutoff_hz * 1.1 - freqs) / (cutoff_hz * 0.1), 0.0, 1.0)
    return np.fft.irfft(spec * (0.5 - 0.5 * np.cos(np.pi * ramp)), n=x.shape[-1], axis=-1).astype(
        np.float32
    )


def reverb(x: np.ndarray, rir: np.ndarray, wet: float) -> np.ndarray:
    """Convolve [c, t] with a mono room impulse response [t_rir]; mix ``wet`` in [0, 1]."""
    n = x.shape[-1]
    size = 1 << int(np.ceil(np.log2(n + len(rir))))
    rir = rir / (np.sqrt(np.sum(rir**2)) + 1e-8)
    wet_sig = np.fft.irfft(np.fft.rfft(x, size, axis=-1) * np.fft.rfft(rir, size), size, axis=-1)[
        ..., :n
    ]
    return ((1 - wet) * x + wet * wet_sig).astype(np.float32)


def overdrive(
    x: np.ndarray, drive: float, sample_rate: int, cabinet_hz: float = 5000.0
) -> np.ndarray:
    """Guitar-amp style distortion: tanh waveshaping with gain ``drive``, then a cabinet
    low-pass. Output peak is normalised to the input's."""
    peak = float(np.abs(x).max()) + 1e-9
    y = np.tanh(drive * x / peak) / np.tanh(drive)
    return lowpass(y * peak, sample_rate, cabinet_hz)


def synthetic_rir(sample_rate: int, rt60_s: float, rng: np.random.Generator) -> np.ndarray:
    """A room impulse response [t]: exponentially decaying noise with a ``rt60_s`` decay,
    a direct path and a few early reflections. Complements the handful of recorded RIRs."""
    n = max(int(rt60_s * sample_rate), 16)
    t = np.arange(n) / sample_rate
    tail = rng.normal(0.0, 1.0, n) * 10.0 ** (-3.0 * t / rt60_s)
    tail[: int(0.005 * sample_rate)] = 0.0  # reflections arrive after the direct path
    rir = 0.3 * tail / (np.sqrt(np.sum(tail**2)) + 1e-9)
    rir[0] = 1.0
    for _ in range(4):
        rir[int(rng.uniform(0.003, 0.03) * sample_rate)] += rng.uniform(-0.5, 0.5)
    return rir.astype(np.float32)


def fit_peak(stems: np.ndarray, limit: float = 0.99) -> np.ndarray:
    """Scale stems [s, c, t] in place so that their sum peaks at ``limit`` at most (the mix
    never clips and the stems still sum to it); returns them."""
    peak = np.abs(stems.sum(0)).max()
    if peak > limit:
        stems *= limit / peak
    return stems


FOLD_GAIN_DB = (-20.0, -6.0)  # range of the folded image's level, for the mixers' draws


def fold_bandwidth(x: np.ndarray, sample_rate: int, cutoff_hz: float, gain_db: float) -> np.ndarray:
    """Fill the empty band above ``cutoff_hz`` of a band-limited signal [c, t] with a mirror
    image of the band below it (spectral folding, as in zero-stuffing upsampling), attenuated
    by ``gain_db`` at the cutoff and rolling off further above it.

    Speech here is recorded at 16 kHz: without this, a model learns that nothing above 8 kHz
    is ever dialogue and sends the sibilants of full-band dialogue to effects.
    """
    n = x.shape[-1]
    spec = np.fft.rfft(x, axis=-1)
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    bin_hz = freqs[1]
    above = (freqs > cutoff_hz) & (freqs < 2.0 * cutoff_hz)
    source = np.clip(np.round((2.0 * cutoff_hz - freqs[above]) / bin_hz).astype(int), 0, None)
    octaves = np.log2(freqs[above] / cutoff_hz)
    gain = 10.0 ** ((gain_db - 12.0 * octaves) / 20.0)
    spec[..., above] += spec[..., source] * gain
    return np.fft.irfft(spec, n=n, axis=-1).astype(np.float32)


def colored_noise(samples: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Noise [samples] with a 1/f^exponent power spectrum (0 white, 1 pink, 2 brown), unit RMS."""
    spec = np.fft.rfft(rng.normal(0.0, 1.0, samples))
    freqs = np.fft.rfftfreq(samples)
    spec[1:] /= freqs[1:] ** (exponent / 2.0)
    spec[0] = 0.0
    out = np.fft.irfft(spec, n=samples)
    return (out / (np.sqrt(np.mean(out**2)) + 1e-12)).astype(np.float32)
