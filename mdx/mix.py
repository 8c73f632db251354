"""Dynamic six-stem music mixes from real clips, SoundFont renders, sung speech and
procedural parts.

Per stem, each example draws real licence-clean material (drum one-shots and loops, grooves
played on sampled drum kits (``mdx.drumkits``), guitar samples, strummed chords, solo
instrument phrases, singing phrases), a crop of that stem from a SoundFont-rendered song
(``mdx.soundfont``), sung speech for vocals (``mdx.sing``), or a procedural part rendered
over a shared song sketch (``mdx.synth``). Stems of different songs are mixed
together (Demucs-style remixing) at random loudness, panned, and sometimes left out.
SoundFont and singing pools are optional: without FluidSynth, a SoundFont or pyworld the
mixer says so once and uses the other sources.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from demix import data
from demix.registry import register_dataset
from mdx import MDX_STEMS, drumkits, sing, soundfont, strums, synth

_VOCAL_PHRASES = ("singing-female", "soprano", "vignesh", "carnatic")
_PIANO_PHRASES = ("piano",)


@dataclass(frozen=True)
class MusicMixConfig:
    """Where the pools come from and how the music mixes are made."""

    data_root: str = ""
    cache_dir: str = "runs/cache"
    split: str = "train"
    sample_rate: int = 44100
    segment_seconds: float = 3.0
    stem_lufs_min: float = -30.0
    stem_lufs_max: float = -18.0
    p_missing: float = 0.15
    p_real: float = 0.4
    p_soundfont: float = 0.35  # per stem: a SoundFont-rendered part (when available)
    soundfont_songs: int = 80
    sung_phrases: int = 120
    # guitar: a strummed rhythm part from real recorded chord strums (mdx.strums; Debian's
    # hydrogen-drumkits-effects, CC-BY-3.0), when installed or cached
    p_strums: float = 0.0
    strum_parts: int = 60
    # drums: a groove played on real sampled drum kits (mdx.drumkits; Debian's
    # hydrogen-drumkits, the CC-BY-3.0 and CC0 kits only), when installed or cached
    p_drumkits: float = 0.0
    drumkit_parts: int = 80
    # more SoundFonts (paths, or file names found by mdx.soundfont.resolve_soundfont) whose
    # renders share the SoundFont draws with the default's, e.g. "MuseScore_General_Full.sf3"
    extra_soundfonts: tuple[str, ...] = ()
    speech_bandwidth_hz: float = 8000.0  # speech (and singing made from it) is band-limited
    p_fold_bandwidth: float = 0.5
    epoch_size: int = 1_000_000
    # True: material the config asks for (sung phrases, strums, drum kits, SoundFonts) must be
    # there, else the dataset refuses to start. A recipe that ships a model sets it, so that a
    # machine without a Debian package cannot train a different model with only a warning.
    require_sources: bool = False


def _missing(config: MusicMixConfig, what: str, exc: Exception, stacklevel: int = 3) -> None:
    """Raise MissingSourceError where ``config.require_sources``, else warn and go on."""
    if config.require_sources:
        raise data.MissingSourceError(
            f"no {what} for music mixes ({exc}); the config asks for it "
            "(require_sources: true, set it false to train without)"
        ) from exc
    warnings.warn(f"no {what} in music mixes: {exc}", stacklevel=stacklevel)


def _optional_pool(
    config: MusicMixConfig, what: str, make: Callable[[], data.ClipPool]
) -> data.ClipPool | None:
    """``make()``, or None where its material is missing: see ``_missing``."""
    try:
        return make()
    except data.SourceUnavailable as exc:
        _missing(config, what, exc, stacklevel=4)
        return None


class MusicMixDataset(torch.utils.data.Dataset):
    """Map-style dataset of six-stem music mixes: item i is reproducible from (seed, i).

    Returns ``(mix[c, t], stems[s, c, t])`` float32 tensors with s = len(MDX_STEMS), c = 2.
    """

    stems = MDX_STEMS

    def __init__(self, config: MusicMixConfig, seed: int = 0):
        self.config = config
        self.seed = seed
        root = Path(config.data_root) if config.data_root else data.default_data_root()
        if not (root / "MANIFEST.csv").exists():
            raise FileNotFoundError(f"{root}: no MANIFEST.csv (development data not found)")
        rate, cache = config.sample_rate, Path(config.cache_dir)
        rows = data.read_manifest(root, None, config.split, trainable_only=True)

        def named(prefixes, kind=None):
            return [
                r.path
                for r in rows
                if (kind is None or r.kind == kind)
                and any(r.path.name.startswith(p) for p in prefixes)
            ]

        def pool(paths, channels=1):
            return data.ClipPool(paths, rate, cache, channels, key_root=root) if paths else None

        sonic = [r for r in rows if "sonic-pi" in str(r.path)]
        self.drum_loops = pool(
            [r.path for r in sonic if r.path.name.startswith(("loop_", "arovane_beat", "tabla_"))],
            2,
        )
        hit_names = {
            "kick": ("bd_", "drum_bass", "elec_hollow_kick", "elec_soft_kick"),
            "snare": ("sn_", "drum_snare", "elec_snare", "elec_hi_snare"),
            "hat": ("hat_", "drum_cymbal", "drum_tom"),
        }
        self.hit_pools = {
            kind: pool([r.path for r in sonic if r.path.name.startswith(prefixes)])
            for kind, prefixes in hit_names.items()
        }
        self.hits = {}
        for kind, hit_pool in self.hit_pools.items():
            clips = [hit_pool.clip(i)[0] for i in range(len(hit_pool))] if hit_pool else []
            self.hits[kind] = [c[: int(rate * 1.0)] / (np.abs(c).max() + 1e-6) for c in clips]
        # Real guitar: sonic-pi's guitar samples and the lead-guitar stems of real multitracks
        # (stems/<song>/guitar.*, e.g. Frets on Fire, MIT); their backing stems mix drums, bass
        # and rhythm parts together, so they serve no single stem.
        real_guitar = [
            r.path for r in rows if r.kind == "stem" and r.path.name.startswith("guitar")
        ]
        self.guitar = pool(named(("guit_",)) + real_guitar)
        phrases = [r for r in rows if r.kind == "music" and "sms-tools" in str(r.path)]
        self.vocal_phrases = pool(
            [r.path for r in phrases if r.path.name.startswith(_VOCAL_PHRASES)]
        )
        self.piano = pool([r.path for r in phrases if r.path.name.startswith(_PIANO_PHRASES)])
        other = [
            r.path for r in phrases if not r.path.name.startswith(_VOCAL_PHRASES + _PIANO_PHRASES)
        ]
        self.other = pool(other + named(("ambi_",)))
        speech_paths = [r.path for r in rows if r.kind == "speech"]
        self.speech = pool(speech_paths)
        self.sung = None
        if config.sung_phrases and speech_paths:
            try:
                self.sung = sing.singing_pool(
                    speech_paths, rate, cache, config.sung_phrases, seed=0, key_root=root
                )
            except ImportError as exc:
                _missing(config, "sung vocals", exc)
        elif config.sung_phrases:
            _missing(config, "sung vocals", RuntimeError("no speech in the manifest to sing"))
        self.strums = self.drumkits = None
        if config.p_strums > 0:
            self.strums = _optional_pool(
                config,
                "strummed guitar",
                lambda: strums.strum_pool(rate, cache, config.strum_parts),
            )
        if config.p_drumkits > 0:
            self.drumkits = _optional_pool(
                config,
                "drum kit grooves",
                lambda: drumkits.drumkit_pool(rate, cache, config.drumkit_parts),
            )
        self.soundfont: dict[str, data.ClipPool] = {}
        self.extra_soundfont: list[dict[str, data.ClipPool]] = []
        if config.p_soundfont > 0:
            try:
                self.soundfont = soundfont.stem_pools(rate, cache, config.soundfont_songs)
            except data.SourceUnavailable as exc:
                _missing(config, "SoundFont renders", exc)
            for k, name in enumerate(config.extra_soundfonts, 1):
                path = soundfont.resolve_soundfont(name)
                try:  # other songs (another seed), not the same ones in other sounds
                    pools = soundfont.stem_pools(
                        rate, cache, config.soundfont_songs, seed=k, soundfont=path
                    )
                except data.SourceUnavailable as exc:
                    _missing(config, f"{name} renders", exc)
                    continue
                self.extra_soundfont.append(pools)

    def __len__(self) -> int:
        return self.config.epoch_size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        mix, stems = self.make(rng)
        return torch.from_numpy(mix), torch.from_numpy(stems)

    def _vocals(
        self, sketch: synth.Sketch, n: int, rng: np.random.Generator, sung_only: bool
    ) -> tuple[np.ndarray, str]:
        """A vocal track [1, n]. Real voices transfer to real songs better than synthesis:
        mostly sung speech (WORLD) and recorded singing phrases, some plain speech (rap,
        spoken word; never with ``sung_only``, which film mixes use so that speech is always
        dialogue there), some SoundFont choir and formant-synthesised vowels.

        Returns the track and which kind of source it came from."""
        cfg = self.config
        choices = {
            "sung": 0.45 if self.sung is not None else 0.0,
            "phrases": 0.2 if self.vocal_phrases is not None else 0.0,
            "speech": 0.15 if self.speech is not None and not sung_only else 0.0,
            "choir": 0.05 if "vocals" in self.soundfont else 0.0,
            "formant": 0.15,
        }
        weights = np.array(list(choices.values()))
        choice = list(choices)[int(rng.choice(len(choices), p=weights / weights.sum()))]
        if choice == "sung":
            x = self.sung.random_crop(rng, n)
        elif choice == "phrases":
            x = self.vocal_phrases.random_crop(rng, n)
        elif choice == "speech":
            x = self.speech.random_crop(rng, n, loop=False)
        elif choice == "choir":
            x = self.soundfont["vocals"].random_crop(rng, n)
        else:
            x = synth.render_voice(sketch, n / cfg.sample_rate, cfg.sample_rate, rng)[None]
        if choice in ("sung", "speech") and rng.random() < cfg.p_fold_bandwidth:
            x = data.fold_bandwidth(
                x, cfg.sample_rate, cfg.speech_bandwidth_hz, float(rng.uniform(*data.FOLD_GAIN_DB))
            )
        return x, choice

    def _real_or_synth(
        self,
        stem: str,
        sketch: synth.Sketch,
        n: int,
        rng: np.random.Generator,
        sung_only: bool = False,
        provenance: dict | None = None,
    ) -> np.ndarray:
        cfg = self.config
        rate = cfg.sample_rate
        seconds = n / rate
        real = rng.random() < cfg.p_real
        if stem == "guitar" and self.strums is not None and rng.random() < cfg.p_strums:
            return self.strums.random_crop(rng, n)
        if stem == "drums" and self.drumkits is not None and rng.random() < cfg.p_drumkits:
            return self.drumkits.random_crop(rng, n)
        fonts = [f for f in (self.soundfont, *self.extra_soundfont) if stem in f]
        if stem != "vocals" and fonts and rng.random() < cfg.p_soundfont:
            return fonts[int(rng.integers(len(fonts)))][stem].random_crop(rng, n)
        if stem == "drums":
            if real and self.drum_loops is not None:
                return self.drum_loops.random_crop(rng, n)
            return synth.render_drums(sketch, seconds, rate, rng, self.hits)[None]
        if stem == "bass":
            return synth.render_part(sketch, "bass", seconds, rate, rng)[None]
        if stem == "vocals":
            x, source = self._vocals(sketch, n, rng, sung_only)
            if provenance is not None:
                provenance["vocals"] = source
            return x
        if stem == "guitar":
            if real and self.guitar is not None and rng.random() < 0.3:
                return self.guitar.random_crop(rng, n)
            return synth.render_part(sketch, "guitar", seconds, rate, rng)[None]
        if stem == "piano":
            if real and self.piano is not None:
                return self.piano.random_crop(rng, n)
            return synth.render_part(sketch, "piano", seconds, rate, rng)[None]
        if real and self.other is not None:
            return self.other.random_crop(rng, n)
        return synth.render_part(sketch, "pad", seconds, rate, rng)[None]

    def make(
        self,
        rng: np.random.Generator,
        samples: int | None = None,
        sung_only: bool = False,
        p_vocals: float | None = None,
        provenance: dict | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One example: (mix [2, t], stems [6, 2, t]) float32.

        Args:
            samples: length (default: the configured segment).
            sung_only: vocals are always sung, never plain speech (for songs in film mixes).
            p_vocals: probability that the vocals stem is present (default 1 − p_missing).
            provenance: if given, filled with the source kind of the vocals ("vocals": "sung",
                "phrases", "speech", "choir" or "formant") when they are present.
        """
        cfg = self.config
        rate = cfg.sample_rate
        n = samples or int(round(cfg.segment_seconds * rate))
        sketch = synth.random_sketch(rng)
        stems = np.zeros((len(MDX_STEMS), 2, n), np.float32)
        present = rng.random(len(MDX_STEMS)) >= cfg.p_missing
        if p_vocals is not None:
            present[MDX_STEMS.index("vocals")] = rng.random() < p_vocals
        if not present.any():
            present[int(rng.integers(len(MDX_STEMS)))] = True
        for s, stem in enumerate(MDX_STEMS):
            if not present[s]:
                continue
            x = self._real_or_synth(stem, sketch, n, rng, sung_only, provenance)
            if stem == "guitar" and rng.random() < 0.6:  # rock guitars are mostly driven
                x = data.overdrive(x, rng.uniform(3, 40), rate, rng.uniform(3500, 7000))
            elif stem == "bass" and rng.random() < 0.2:
                x = data.overdrive(x, rng.uniform(1.5, 6), rate, rng.uniform(2000, 5000))
            if x.shape[0] == 1:
                spread = 0.1 if stem in ("bass", "vocals", "drums") else 0.7
                x = data.pan_mono(x, rng.uniform(-spread, spread))
            if rng.random() < 0.5:
                x = data.random_eq(x, rng, rate, 4.0)
            target = rng.uniform(cfg.stem_lufs_min, cfg.stem_lufs_max)
            stems[s] = data.set_loudness(x, rate, target)
        data.fit_peak(stems)
        return stems.sum(0), stems


@register_dataset("mdx.music_mix", MusicMixConfig)
def music_mix(config: MusicMixConfig, seed: int = 0) -> MusicMixDataset:
    """Registered training source: dynamic six-stem music mixes."""
    return MusicMixDataset(config, seed)
