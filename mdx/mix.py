"""Dynamic six-stem music mixes from real clips and procedural parts.

Per stem, each example draws either real licence-clean material (drum one-shots and loops,
guitar samples, solo instrument phrases, speech and singing phrases for vocals) or a
procedural part rendered over a shared song sketch (mdx.synth), so stems are in the same key
and tempo. Stems are mixed at random loudness, panned, and sometimes left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from demix import data
from demix.registry import register_dataset
from mdx import MDX_STEMS, synth

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
    epoch_size: int = 1_000_000


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
            return data.ClipPool(paths, rate, cache, channels) if paths else None

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
        self.hits = {}
        for kind, prefixes in hit_names.items():
            clips = [
                data.audio.read(r.path, rate)[0].mean(0)
                for r in sonic
                if r.path.name.startswith(prefixes)
            ]
            self.hits[kind] = [c[: int(rate * 1.0)] / (np.abs(c).max() + 1e-6) for c in clips]
        self.guitar = pool(named(("guit_",)))
        phrases = [r for r in rows if r.kind == "music" and "sms-tools" in str(r.path)]
        self.vocal_phrases = pool(
            [r.path for r in phrases if r.path.name.startswith(_VOCAL_PHRASES)]
        )
        self.piano = pool([r.path for r in phrases if r.path.name.startswith(_PIANO_PHRASES)])
        other = [
            r.path for r in phrases if not r.path.name.startswith(_VOCAL_PHRASES + _PIANO_PHRASES)
        ]
        self.other = pool(other + named(("ambi_",)))
        self.speech = pool([r.path for r in rows if r.kind == "speech"])

    def __len__(self) -> int:
        return self.config.epoch_size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        mix, stems = self.make(rng)
        return torch.from_numpy(mix), torch.from_numpy(stems)

    def _real_or_synth(
        self, stem: str, sketch: synth.Sketch, n: int, rng: np.random.Generator
    ) -> np.ndarray:
        cfg = self.config
        rate = cfg.sample_rate
        seconds = n / rate
        real = rng.random() < cfg.p_real
        if stem == "drums":
            if real and self.drum_loops is not None:
                return self.drum_loops.random_crop(rng, n)
            return synth.render_drums(sketch, seconds, rate, rng, self.hits)[None]
        if stem == "bass":
            return synth.render_part(sketch, "bass", seconds, rate, rng)[None]
        if stem == "vocals":
            # Real voices transfer to real songs better than the formant synthesiser: half of
            # the vocals are recorded speech, a quarter sung phrases, a quarter synthetic.
            choice = rng.random()
            if choice < 0.25 and self.vocal_phrases is not None:
                return self.vocal_phrases.random_crop(rng, n)
            if choice < 0.75 and self.speech is not None:
                return self.speech.random_crop(rng, n, loop=False)
            return synth.render_voice(sketch, seconds, rate, rng)[None]
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

    def make(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One example: (mix [2, t], stems [6, 2, t]) float32."""
        cfg = self.config
        rate = cfg.sample_rate
        n = int(round(cfg.segment_seconds * rate))
        sketch = synth.random_sketch(rng)
        stems = np.zeros((len(MDX_STEMS), 2, n), np.float32)
        present = rng.random(len(MDX_STEMS)) >= cfg.p_missing
        if not present.any():
            present[int(rng.integers(len(MDX_STEMS)))] = True
        for s, stem in enumerate(MDX_STEMS):
            if not present[s]:
                continue
            x = self._real_or_synth(stem, sketch, n, rng)
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
        peak = np.abs(stems.sum(0)).max()
        if peak > 0.99:
            stems *= 0.99 / peak
        return stems.sum(0), stems


@register_dataset("mdx.music_mix", MusicMixConfig)
def music_mix(config: MusicMixConfig, seed: int = 0) -> MusicMixDataset:
    """Registered training source: dynamic six-stem music mixes."""
    return MusicMixDataset(config, seed)
