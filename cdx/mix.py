"""Dynamic film mixes (Divide-and-Remaster recipe) from dialogue, music and effects pools.

Every example draws fresh clips and mixes them at film-like loudness: dialogue −17 LUFS,
music −24, effects −21 (each jittered), dialogue near the centre, music wide, effects as
panned events and beds, sometimes with a stem missing (dialogue-free stretches, no score).

Beyond the recipe, for real films and for speech in noise (each switched off by a zero
probability, which gives back the plain recipe, as the evaluation sets use):
- songs: part of the music is a six-stem music mix (``mdx.mix``) with **sung vocals**, which
  belong to music (its vocals are always sung, never plain speech, so speech is always
  dialogue);
- bandwidth: speech here is recorded at 16 kHz, so dialogue often gets its empty top octave
  filled by spectral folding, and whole mixes are sometimes low-passed, so that "nothing above
  8 kHz" never identifies dialogue;
- level: some dialogue is mixed far quieter or louder than the recipe (speech in noise);
- rooms: recorded and synthetic impulse responses; stationary noise beds (hiss, rumble).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cdx import CDX_STEMS
from demix import data
from demix.config import from_dict
from demix.registry import dataset_entry, register_dataset


@dataclass(frozen=True)
class FilmMixConfig:
    """Where the pools come from and how the film mixes are made."""

    data_root: str = ""  # "" → $DEMIX_DATA or ../shared/data
    cache_dir: str = "runs/cache"
    split: str = "train"
    # Manifest path prefixes each pool draws from (empty: every file of its kind). Training
    # takes whatever the corpus offers; seeded evaluation sets pin the folders they were built
    # from (eval.sets.DEV_SPEECH, DEV_MUSIC, DEV_EFFECTS), so that they stay the same as the
    # corpus grows.
    speech_sources: tuple[str, ...] = ()
    music_sources: tuple[str, ...] = ()
    effects_sources: tuple[str, ...] = ()
    # A manifest file read instead of data_root/MANIFEST.csv (paths relative to data_root):
    # seeded evaluation sets pass eval.sets.PINNED_MANIFEST, the rows they were built from.
    manifest: str = ""
    sample_rate: int = 44100
    segment_seconds: float = 3.0
    dialogue_lufs: float = -17.0
    music_lufs: float = -24.0
    effects_lufs: float = -21.0
    jitter_db: float = 3.0
    # DnR v3 levels instead of the v2 targets above, per example with this probability:
    # integrated LUFS drawn from normal distributions (mean, standard deviation), the effects
    # bed set on its own under the foreground events (DnR v3 paper, its level statistics).
    p_dnr3_levels: float = 0.0
    dnr3_dialogue_lufs: tuple[float, float] = (-27.0, 4.0)
    dnr3_music_lufs: tuple[float, float] = (-32.0, 6.0)
    dnr3_foreground_lufs: tuple[float, float] = (-32.0, 6.0)
    dnr3_background_lufs: tuple[float, float] = (-40.0, 6.0)
    p_silent_dialogue: float = 0.1
    p_silent_music: float = 0.1
    p_silent_effects: float = 0.1
    p_reverb: float = 0.3
    p_synthetic_room: float = 0.5
    p_song: float = 0.3  # music is a song with sung vocals
    song_source: str = "mdx.music_mix"  # registered mixer whose make() gives the songs
    song_sung_phrases: int = 120  # pool sizes of the song mixer (as mdx.music_mix's defaults,
    song_soundfont_songs: int = 80  # so that both share one cache)
    p_wide_snr: float = 0.25  # dialogue level drawn from a wider range
    wide_snr_db: tuple[float, float] = (-12.0, 6.0)  # offset to dialogue_lufs
    speech_bandwidth_hz: float = 8000.0
    p_fold_bandwidth: float = 0.5
    p_lowpass_mix: float = 0.1
    p_noise_bed: float = 0.15
    epoch_size: int = 1_000_000


class FilmMixDataset(torch.utils.data.Dataset):
    """Map-style dataset of dynamic film mixes: item i is reproducible from (seed, i).

    Returns ``(mix[c, t], stems[s, c, t])`` float32 tensors with s = len(CDX_STEMS), c = 2.
    """

    stems = CDX_STEMS

    def __init__(self, config: FilmMixConfig, seed: int = 0):
        self.config = config
        self.seed = seed
        root = Path(config.data_root) if config.data_root else data.default_data_root()
        if not (root / "MANIFEST.csv").exists():
            raise FileNotFoundError(f"{root}: no MANIFEST.csv (development data not found)")
        cache = Path(config.cache_dir)
        rate = config.sample_rate
        manifest = Path(config.manifest) if config.manifest else None

        def pool(kinds, channels, prefix=None):
            rows = data.read_manifest(
                root,
                kinds,
                config.split,
                trainable_only=True,
                path_prefix=prefix,
                manifest=manifest,
            )
            if not rows:
                raise FileNotFoundError(
                    f"{root}: no {'/'.join(kinds)} files in split {config.split!r}"
                    + (f" under {', '.join(prefix)}" if prefix else "")
                )
            return data.ClipPool([r.path for r in rows], rate, cache, channels, key_root=root)

        self.speech = pool(["speech"], 1, config.speech_sources)
        self.music = pool(["music"], 2, config.music_sources)
        self.effects = pool(["effects"], 1, config.effects_sources)
        rir_rows = data.read_manifest(root, ["rir"], None, trainable_only=True, manifest=manifest)
        # Impulse responses: a pool like the others (cached, and carried by training packs).
        self.rir_pool = None
        if rir_rows:
            self.rir_pool = data.ClipPool([r.path for r in rir_rows], rate, cache, 1, key_root=root)
        pool_clips = range(len(self.rir_pool)) if self.rir_pool else []
        self.rirs = [self.rir_pool.clip(i)[0] for i in pool_clips]
        self.songs = None
        if config.p_song > 0:
            # Songs come from the music track's mixer, looked up by name in the registry
            # (cdx never imports mdx); any source with the same ``make`` signature will do.
            entry = dataset_entry(config.song_source)
            song_config = from_dict(
                entry.config_cls,
                {
                    "data_root": config.data_root,
                    "cache_dir": config.cache_dir,
                    "split": config.split,
                    "sample_rate": rate,
                    "segment_seconds": config.segment_seconds,
                    "sung_phrases": config.song_sung_phrases,
                    "soundfont_songs": config.song_soundfont_songs,
                },
                "song_source",
            )
            self.songs = entry.factory(song_config, seed)

    def __len__(self) -> int:
        return self.config.epoch_size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        mix, stems = self.make(rng)
        return torch.from_numpy(mix), torch.from_numpy(stems)

    def make(
        self, rng: np.random.Generator, provenance: dict | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One example: (mix [2, t], stems [3, 2, t]) float32.

        ``provenance``, if given, is filled with the clips used, the loudness targets and the
        dialogue's reverb (wet fraction, 0 when dry).
        """
        used: dict[str, list] = {"dialogue": [], "music": [], "effects": []}
        reverb_wet = 0.0
        targets: dict[str, float] = {}
        cfg = self.config
        rate = cfg.sample_rate
        n = int(round(cfg.segment_seconds * rate))

        dnr3 = _chance(rng, cfg.p_dnr3_levels)

        def jitter(target: float) -> float:
            return target + rng.uniform(-cfg.jitter_db, cfg.jitter_db)

        def level(v2_target: float, v3: tuple[float, float]) -> float:
            return float(rng.normal(*v3)) if dnr3 else jitter(v2_target)

        # Dialogue: one or two utterances near the centre, sometimes with pauses or reverb.
        dialogue = np.zeros((2, n), np.float32)
        if rng.random() >= cfg.p_silent_dialogue:
            voice = self.speech.random_crop(rng, n, loop=False, record=used["dialogue"])
            if rng.random() < 0.3:  # a pause inside the segment
                a = int(rng.integers(n))
                voice[:, a : a + int(rng.integers(n // 4, n // 2))] = 0.0
            if _chance(rng, cfg.p_fold_bandwidth):
                voice = data.fold_bandwidth(
                    voice, rate, cfg.speech_bandwidth_hz, float(rng.uniform(*data.FOLD_GAIN_DB))
                )
            if (self.rirs or cfg.p_synthetic_room) and rng.random() < cfg.p_reverb:
                room = self._room(rng)
                reverb_wet = float(rng.uniform(0.1, 0.5))
                voice = data.reverb(voice, room, reverb_wet)
            voice = data.random_eq(voice, rng, rate, 4.0)
            dialogue = data.pan_mono(voice, rng.uniform(-0.15, 0.15))
            if _chance(rng, cfg.p_wide_snr):
                targets["dialogue"] = cfg.dialogue_lufs + rng.uniform(*cfg.wide_snr_db)
            else:
                targets["dialogue"] = level(cfg.dialogue_lufs, cfg.dnr3_dialogue_lufs)
            dialogue = data.set_loudness(dialogue, rate, targets["dialogue"])

        music = np.zeros((2, n), np.float32)
        if rng.random() >= cfg.p_silent_music:
            if self.songs is not None and _chance(rng, cfg.p_song):
                song_info: dict[str, str] = {}
                music, _ = self.songs.make(
                    rng, n, sung_only=True, p_vocals=0.8, provenance=song_info
                )
                vocals = song_info.get("vocals")
                used["music"].append(f"song (vocals: {vocals})" if vocals else "song")
            else:
                music = self.music.random_crop(rng, n, record=used["music"])
            if rng.random() < 0.5:
                music = data.random_eq(music, rng, rate, 6.0)
            targets["music"] = level(cfg.music_lufs, cfg.dnr3_music_lufs)
            music = data.set_loudness(music, rate, targets["music"])

        effects = np.zeros((2, n), np.float32)
        if rng.random() >= cfg.p_silent_effects:
            bed_part = None
            if rng.random() < 0.3:  # a bed (rain, sea, room tone...) under events
                bed = self.effects.random_crop(rng, n, loop=True, record=used["effects"])
                bed_part = data.pan_mono(bed, rng.uniform(-0.5, 0.5))
                if dnr3:
                    targets["effects_bed"] = float(rng.normal(*cfg.dnr3_background_lufs))
                    bed_part = data.set_loudness(bed_part, rate, targets["effects_bed"])
                else:
                    effects += bed_part * rng.uniform(0.2, 0.6)
            for _ in range(int(rng.integers(1, 5))):
                event = self.effects.random_crop(rng, n, loop=False, record=used["effects"])
                if rng.random() < 0.5:  # a short event somewhere in the segment
                    keep = int(rng.integers(n // 8, n))
                    a = int(rng.integers(n - keep + 1))
                    mask = np.zeros(n, np.float32)
                    mask[a : a + keep] = np.hanning(keep).astype(np.float32) ** 0.1
                    event = event * mask
                effects += data.pan_mono(event, rng.uniform(-1, 1)) * rng.uniform(0.3, 1.0)
            if _chance(rng, cfg.p_noise_bed):  # hiss, hum-free rumble, air conditioning...
                noise = data.colored_noise(n, float(rng.uniform(0.0, 2.0)), rng)[None]
                effects += np.repeat(noise, 2, 0) * np.float32(rng.uniform(0.02, 0.2))
            targets["effects"] = level(cfg.effects_lufs, cfg.dnr3_foreground_lufs)
            effects = data.set_loudness(effects, rate, targets["effects"])
            if dnr3 and bed_part is not None:  # the bed at its own level under the events
                effects = effects + bed_part

        stems = np.stack([dialogue, music, effects]).astype(np.float32)
        if _chance(rng, cfg.p_lowpass_mix):  # a band-limited delivery: every stem alike
            stems = data.lowpass(stems, rate, float(rng.uniform(4000, 16000)))
        gain = 10.0 ** (rng.uniform(-6.0, 3.0) / 20.0)
        stems *= gain
        data.fit_peak(stems)
        if provenance is not None:
            provenance.update(
                clips=used, loudness_targets_lufs=targets, dialogue_reverb_wet=reverb_wet
            )
        return stems.sum(0), stems

    def _room(self, rng: np.random.Generator) -> np.ndarray:
        """A synthetic RIR (with probability ``p_synthetic_room``, or when no recorded RIR
        exists), else a recorded one."""
        if not self.rirs or _chance(rng, self.config.p_synthetic_room):
            return data.synthetic_rir(self.config.sample_rate, float(rng.uniform(0.2, 1.2)), rng)
        return self.rirs[int(rng.integers(len(self.rirs)))]


def _chance(rng: np.random.Generator, p: float) -> bool:
    """True with probability ``p``; draws nothing when ``p`` is 0, so that switching an
    augmentation off leaves every other draw (and the DnR-recipe evaluation sets) as they
    were before it existed."""
    return p > 0 and bool(rng.random() < p)


@register_dataset("cdx.film_mix", FilmMixConfig)
def film_mix(config: FilmMixConfig, seed: int = 0) -> FilmMixDataset:
    """Registered training source: dynamic film mixes."""
    return FilmMixDataset(config, seed)
