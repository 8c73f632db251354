"""Evaluation sets: seeded builders from the dev split of ``../shared/data``, and one reader.

``python -m eval.sets build film|film-sung|speech|music|music-synth|all --out DIR``

Every set draws only from ``eval/pinned/MANIFEST.csv`` (``PINNED_MANIFEST``), a committed copy
of the corpus rows they were built from: files added to ``../shared/data`` do not change them.

Layouts written (and read back by ``load_set``; users' own copies of these layouts work too):

- film, DnR layout: ``DIR/<id>/{mix,speech,music,sfx}.wav`` + ``meta.json`` (what went in);
  also film-sung, the same with songs (a singer) as the music;
- speech in noise: ``DIR/<id>/{mix,speech,noise}.wav`` + ``meta.json`` (SNR, noise type);
- music, MUSDB18-HQ layout: ``DIR/<song>/{mixture,<stem>...}.wav``; also music-synth,
  held-back SoundFont songs with sung vocals (the only piano and other references).

Files are 32-bit float wav, so the sets are bit-exact inputs to every system.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from demix import audio, data

FILM_SEED = 17
FILM_SUNG_SEED = 19
SPEECH_SEED = 23
MUSIC_SYNTH_SEED = 29  # training renders use seed 0 (mdx.soundfont.stem_pools)
# Stem loudness of the synthetic songs (LUFS, each ±2 dB): vocals on top, as in pop mixes.
MUSIC_SYNTH_LUFS = {
    "vocals": -18.0, "drums": -20.0, "bass": -21.0, "guitar": -23.0, "piano": -23.0, "other": -24.0,
}  # fmt: skip
SNRS_DB = (-5, 0, 5, 10, 15, 20)
NOISE_TYPES = ("esc10", "demand", "music", "pink")
DNR_NAMES = {"speech": "dialogue", "music": "music", "sfx": "effects"}
# The dev-split folders every seeded set draws from (manifest path prefixes). ../shared/data
# grows; pinning the sources keeps each set identical when files are added. New pools are for
# training unless a set names them here.
DEV_SPEECH = ("speech/cv-hsb/", "speech/librispeech/")
DEV_MUSIC = ("music/macleod/",)
DEV_EFFECTS = ("effects/esc10/",)
# A second film dev set closer to film sound: Foley, sci-fi and ambience effects and cinematic
# scores from the game-data pools (dev split), same dialogue (eval.dev's "foley" items).
DEV_FOLEY_MUSIC = ("music/ufoai/", "music/openclonk/")
DEV_FOLEY_EFFECTS = (
    "effects/openclonk/", "effects/endless-sky/", "effects/minetest/", "effects/hyperrogue/"
)  # fmt: skip
# The rows of ../shared/data/MANIFEST.csv the seeded sets draw from (every dev-split row and
# the impulse responses, as of 2026-12-06), committed: the sets read this copy, not the
# growing manifest, so files added later, even to the folders above, leave them unchanged.
# ``python -m eval.sets pin`` rewrites it from the corpus (deliberately: it changes the sets).
PINNED_MANIFEST = Path(__file__).parent / "pinned" / "MANIFEST.csv"


def pinned_rows(
    root: Path, kinds: list[str], path_prefix: tuple[str, ...], split: str | None = "dev"
) -> list[data.ManifestRow]:
    """Rows of ``PINNED_MANIFEST`` (files under ``root``), in its order; a listed file that is
    missing raises FileNotFoundError naming it (the set could not be rebuilt as pinned)."""
    rows = data.read_manifest(root, kinds, split, path_prefix=path_prefix, manifest=PINNED_MANIFEST)
    for row in rows:
        if not row.path.exists():
            raise FileNotFoundError(
                f"{row.path}: listed in {PINNED_MANIFEST} but missing (the seeded evaluation "
                "sets need the corpus they were pinned on)"
            )
    return rows


def pinned_songs(root: Path, folder: str) -> list[tuple[str, dict[str, Path]]]:
    """The multitrack songs under ``folder`` (e.g. ``stems/mdb/``) in the pinned manifest:
    (song folder name, {stem: path}), sorted by name."""
    songs: dict[str, dict[str, Path]] = {}
    for row in pinned_rows(root, ["stem"], (folder,)):
        songs.setdefault(row.path.parent.name, {})[row.path.name.split(".")[0]] = row.path
    return [(name, dict(sorted(songs[name].items()))) for name in sorted(songs)]


def pin_manifest(root: Path, out: Path = PINNED_MANIFEST) -> int:
    """Write ``out``: the header and every dev-split or impulse-response row of
    ``root/MANIFEST.csv``, in its order; returns the number of rows."""
    import csv

    with open(root / "MANIFEST.csv", newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        rows = [r for r in reader if r["split"] == "dev" or r["kind"] == "rir"]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


@dataclass
class SetItem:
    """One mixture and its references, float32 [c, t] at ``sample_rate``."""

    name: str
    mix: np.ndarray
    stems: dict[str, np.ndarray]
    sample_rate: int
    meta: dict = field(default_factory=dict)


def _write_item(folder: Path, arrays: dict[str, np.ndarray], rate: int, meta: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, x in arrays.items():
        audio.write(folder / f"{name}.wav", x, rate, "wav", "32f")
    (folder / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))


def dev_film_mixer(
    seconds: float,
    seed: int,
    root: Path | None = None,
    music: tuple[str, ...] = DEV_MUSIC,
    effects: tuple[str, ...] = DEV_EFFECTS,
    split: str = "dev",
    dnr3_levels: bool = False,
):
    """The film mixer on the dev pools, every stem always present (evaluation mixtures);
    ``music`` and ``effects`` pick the dev folders (manifest path prefixes) drawn from.
    ``split="train"`` draws the same folders' training files instead (the same recipe on
    what the model learned from: the train/dev gap tells data limits from capacity).
    ``dnr3_levels``: every stem's loudness drawn from DnR v3's wide distributions (as spread
    as in films) instead of DnR v2's fixed targets ± 3 dB."""
    from cdx.mix import FilmMixConfig, FilmMixDataset

    cfg = FilmMixConfig(
        data_root=str(root or ""),
        split=split,
        segment_seconds=seconds,
        p_silent_dialogue=0.0,
        p_silent_music=0.0,
        p_silent_effects=0.0,
        # The plain Divide-and-Remaster recipe: none of the training-only augmentations.
        p_song=0.0,
        p_wide_snr=0.0,
        p_fold_bandwidth=0.0,
        p_lowpass_mix=0.0,
        p_noise_bed=0.0,
        p_synthetic_room=0.0,
        p_dnr3_levels=1.0 if dnr3_levels else 0.0,
        speech_sources=DEV_SPEECH,
        music_sources=music,
        effects_sources=effects,
        # The dev sets are pinned; the train-split variant is a diagnostic on whatever the
        # corpus holds now.
        manifest=str(PINNED_MANIFEST) if split == "dev" else "",
    )
    if split == "dev":  # a pinned file gone: one clear error naming it
        where = root or data.default_data_root()
        pinned_rows(where, ["speech", "music", "effects"], DEV_SPEECH + music + effects)
        pinned_rows(where, ["rir"], ("rir/",), split=None)
    return FilmMixDataset(cfg, seed=seed)


def build_film_set(
    out: Path,
    count: int = 48,
    seconds: float = 10.0,
    seed: int = FILM_SEED,
    root: Path | None = None,
) -> list[Path]:
    """DnR-recipe film mixtures from dev speech, dev music and ESC-10 fold 4."""
    return _write_film_items(dev_film_mixer(seconds, seed, root), out, count, seed)


def build_film_sung_set(
    out: Path,
    count: int = 16,
    seconds: float = 10.0,
    seed: int = FILM_SUNG_SEED,
    root: Path | None = None,
) -> list[Path]:
    """Film mixtures whose music is a song with sung vocals: the DnR recipe with the music
    drawn from the dev multitrack songs (stems/mdb, evaluation only: NC licence), from
    stretches where the singer is active. The singing must land in music, not dialogue."""
    ds = dev_film_mixer(seconds, seed, root)
    ds.music = sung_music_pool(root or data.default_data_root(), ds.config, seconds)
    return _write_film_items(ds, out, count, seed, {"sung_vocals": True})


def _write_film_items(ds, out: Path, count: int, seed: int, extra: dict | None = None):
    folders = []
    for i in range(count):
        provenance: dict = {}
        mix, stems = ds.make(np.random.default_rng([seed, i]), provenance)
        folder = Path(out) / f"film-{i:03d}"
        arrays = {"mix": mix, "speech": stems[0], "music": stems[1], "sfx": stems[2]}
        meta = {"seed": seed, "index": i, **provenance, **(extra or {})}
        _write_item(folder, arrays, ds.config.sample_rate, meta)
        folders.append(folder)
    return folders


def sung_music_pool(root: Path, config, seconds: float) -> data.ClipPool:
    """Song mixtures (sum of stems) of stems/mdb, cut to the stretches of at least
    ``seconds`` where the vocals are within 20 dB of their loudest second."""
    rate = config.sample_rate

    def render():
        for song, paths in pinned_songs(root, "stems/mdb/"):
            stems = {stem: audio.read(f, rate)[0] for stem, f in paths.items()}
            if "vocals" not in stems:
                continue
            length = min(x.shape[1] for x in stems.values())
            mix = sum(np.broadcast_to(x[:, :length], (2, length)) for x in stems.values())
            vocals = stems["vocals"][:, :length]
            seconds_total = length // rate
            rms = np.sqrt(
                np.mean(
                    vocals[:, : seconds_total * rate].reshape(-1, seconds_total, rate) ** 2,
                    axis=(0, 2),
                )
            )
            active = rms > 0.1 * rms.max()
            start = None
            for k, on in enumerate(np.append(active, False)):
                if on and start is None:
                    start = k
                elif not on and start is not None:
                    if k - start >= seconds:
                        yield f"{song}@{start}s", mix[:, start * rate : k * rate]
                    start = None

    key = f"sung film music v1 {root} {rate} {seconds}"
    return data.ClipPool.rendered(key, render, rate, Path(config.cache_dir), channels=2)


def _noise_sources(root: Path, rate: int) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Dev noises per type: ESC-10 fold 4, DEMAND (Valentini noisy − clean), dev music,
    and generated pink noise."""
    sources: dict[str, list[tuple[str, np.ndarray]]] = {}
    rows = pinned_rows(root, ["effects"], DEV_EFFECTS)
    sources["esc10"] = [(r.path.name, audio.read(r.path, rate)[0].mean(0)) for r in rows]
    demand = []
    pairs = pinned_rows(root, ["paired"], ("paired/valentini/clean/",))
    for clean in sorted(r.path for r in pairs):
        noisy = root / "paired" / "valentini" / "noisy" / clean.name
        c, _ = audio.read(clean, rate)
        n, _ = audio.read(noisy, rate)
        length = min(c.shape[1], n.shape[1])
        demand.append((clean.name, (n[:, :length] - c[:, :length]).mean(0)))
    sources["demand"] = demand
    rows = pinned_rows(root, ["music"], DEV_MUSIC)
    sources["music"] = [(r.path.name, audio.read(r.path, rate)[0].mean(0)) for r in rows]
    rng = np.random.default_rng(0)
    white = rng.standard_normal(rate * 30)
    spec = np.fft.rfft(white) / np.sqrt(np.maximum(np.fft.rfftfreq(len(white), 1 / rate), 20))
    sources["pink"] = [("pink", np.fft.irfft(spec, len(white)).astype(np.float32))]
    return sources


def build_speech_set(
    out: Path,
    utterances: int = 8,
    seed: int = SPEECH_SEED,
    root: Path | None = None,
    sample_rate: int = 44100,
    snrs_db: tuple[int, ...] = SNRS_DB,
) -> list[Path]:
    """Dev utterances in dev noises at SNR −5…20 dB (one folder per utterance×noise×SNR);
    ``snrs_db`` picks a subset of SNRs (the random draws do not depend on it)."""
    root = root or data.default_data_root()
    rng = np.random.default_rng(seed)
    speech_rows = pinned_rows(root, ["speech"], DEV_SPEECH)
    chosen = rng.choice(len(speech_rows), size=min(utterances, len(speech_rows)), replace=False)
    noises = _noise_sources(root, sample_rate)
    folders = []
    for u in sorted(int(c) for c in chosen):
        row = speech_rows[u]
        speech, _ = audio.read(row.path, sample_rate)
        speech = np.repeat(speech.mean(0, keepdims=True), 2, axis=0)
        speech = data.set_loudness(speech, sample_rate, -23.0)
        n = speech.shape[1]
        for noise_type in NOISE_TYPES:
            name, clip = noises[noise_type][int(rng.integers(len(noises[noise_type])))]
            reps = -(-n // len(clip))
            start = int(rng.integers(len(clip)))
            noise = np.tile(clip, reps + 1)[start : start + n]
            noise = np.repeat(noise[None], 2, axis=0).astype(np.float32)
            for snr in snrs_db:
                gain = np.sqrt(np.sum(speech**2) / (np.sum(noise**2) * 10 ** (snr / 10) + 1e-12))
                scaled = (noise * gain).astype(np.float32)
                mix = speech + scaled
                peak = float(np.abs(mix).max())
                scale = 0.95 / peak if peak > 0.95 else 1.0
                folder = Path(out) / f"{row.path.stem}-{noise_type}-{snr:+d}dB"
                _write_item(
                    folder,
                    {"mix": mix * scale, "speech": speech * scale, "noise": scaled * scale},
                    sample_rate,
                    {
                        "utterance": str(row.path.relative_to(root)),
                        "speaker": row.group,
                        "noise_type": noise_type,
                        "noise_file": name,
                        "snr_db": snr,
                    },
                )
                folders.append(folder)
    return folders


def _song_key(name: str) -> str:
    """A song's name without case, spaces or punctuation: MedleyDB's ``MusicDelta_80sRock``
    and MUSDB18's ``Music Delta - 80s Rock`` are the same recording."""
    return "".join(c for c in name.lower() if c.isalnum())


def build_music_set(out: Path, root: Path | None = None) -> list[Path]:
    """The dev multitrack songs (stems/mdb, stems/musdb-fixtures) in MUSDB layout;
    mixture = sum of the stems (evaluation only: NC licence). A MUSDB fixture that is one of
    the MedleyDB songs (MUSDB18 took its Music Delta songs from MedleyDB) is left out, so no
    recording counts twice."""
    root = root or data.default_data_root()
    mdb = pinned_songs(root, "stems/mdb/")
    medleydb = {
        _song_key(r.group.split(":")[0]) for r in pinned_rows(root, ["stem"], ("stems/mdb/",))
    }
    fixtures = [
        (name, paths)
        for name, paths in pinned_songs(root, "stems/musdb-fixtures/")
        if _song_key(name) not in medleydb
    ]
    folders = []
    for name, paths in mdb + fixtures:
        stems = {}
        rate = 44100
        for stem, f in paths.items():
            x, rate = audio.read(f)
            stems[stem] = np.repeat(x, 2, axis=0) if x.shape[0] == 1 else x
        length = min(s.shape[1] for s in stems.values())
        stems = {k: v[:, :length] for k, v in stems.items()}
        folder = Path(out) / name
        _write_item(
            folder,
            {"mixture": sum(stems.values()), **stems},
            rate,
            {"source": str(next(iter(paths.values())).parent.relative_to(root))},
        )
        folders.append(folder)
    return folders


def build_music_synth_set(
    out: Path, songs: int = 12, seconds: float = 20.0, root: Path | None = None
) -> list[Path]:
    """Held-back synthetic songs in MUSDB layout, the only place piano and other are scored.

    Each song is composed and rendered one instrument at a time like the training renders
    (``mdx.soundfont``), from seeds training never draws (``MUSIC_SYNTH_SEED``), with dev-split
    speech sung over the song's chords (``mdx.sing``) as its vocals. The instruments are the same
    SoundFont presets as in training, so these figures flatter the model: they measure
    held-back compositions, not unseen instruments. Stems a song has no part for are not written
    (not scored).
    """
    from mdx import sing, soundfont, synth

    root = root or data.default_data_root()
    rate = 44100
    renderer = soundfont.Renderer(rate)
    speech = sorted(r.path for r in pinned_rows(root, ["speech"], DEV_SPEECH))
    if not speech:
        raise FileNotFoundError(f"{root}: no dev-split speech to sing")
    n = int(seconds * rate)
    folders = []
    for i in range(songs):
        rng = np.random.default_rng([MUSIC_SYNTH_SEED, soundfont.SOUNDFONT_VERSION, i])
        sketch = synth.random_sketch(rng)
        stems = renderer.render_song(soundfont.compose(sketch, seconds, rng), seconds)
        vocals = stems["vocals"][0].copy()  # a choir part, when the song has one
        used = []
        start = int(rng.uniform(0.5, 2.0) * rate)
        while start < n - rate:  # sung phrases with breaths between them
            path = speech[int(rng.integers(len(speech)))]
            wav, speech_rate = audio.read(path)
            phrase = sing.sing(wav.mean(0)[: 6 * speech_rate], speech_rate, sketch, rng)
            phrase = audio.resample(phrase[None], speech_rate, rate)[0][: n - start]
            vocals[start : start + len(phrase)] += phrase
            used.append(path.name)
            start += len(phrase) + int(rng.uniform(0.5, 3.0) * rate)
        rir = data.synthetic_rir(rate, float(rng.uniform(0.3, 1.5)), rng)
        stems["vocals"] = data.pan_mono(data.reverb(vocals[None], rir, 0.2), 0.0)
        names = [stem for stem, x in stems.items() if np.sqrt(np.mean(x**2)) >= 1e-4]
        written = np.stack(
            [
                data.set_loudness(
                    stems[k].astype(np.float32), rate, MUSIC_SYNTH_LUFS[k] + rng.uniform(-2.0, 2.0)
                )
                for k in names
            ]
        )
        data.fit_peak(written)
        folder = Path(out) / f"synth{i:03d}"
        meta = {"seed": MUSIC_SYNTH_SEED, "song": i, "sung_speech": " ".join(used)}
        _write_item(folder, {"mixture": written.sum(0), **dict(zip(names, written))}, rate, meta)
        folders.append(folder)
    return folders


class SetError(ValueError):
    """An item of an evaluation set that cannot be scored; the message names it and why."""


def _checked(item: SetItem, folder: Path, paths: dict[str, Path]) -> SetItem:
    """``item`` (of ``folder``; ``paths``: each reference's file) after checking that its
    references can be scored against its mix: each the mix's channels and length (a shorter
    stem failed the whole benchmark with a shape error naming no file); a warning where they
    do not sum to the mix (a missing stem: every score of the item would assume they do)."""
    for name, x in item.stems.items():
        if x.shape != item.mix.shape:
            raise SetError(
                f"{paths[name]}: {x.shape[0]} channel(s) × {x.shape[1]} "
                f"samples, its mix {item.mix.shape[0]} × {item.mix.shape[1]} (at "
                f"{item.sample_rate} Hz): a reference must have the mix's channels and length"
            )
    rest = item.mix.astype(np.float64) - sum(x.astype(np.float64) for x in item.stems.values())
    mix_energy = float(np.sum(np.square(item.mix, dtype=np.float64)))
    if mix_energy > 0 and item.stems:  # (a mixture alone: nothing to check it against)
        left_db = 10 * np.log10(max(float(np.sum(rest**2)), 1e-30) / mix_energy)
        if left_db > -20:
            warnings.warn(
                f"{folder}: its references ({', '.join(item.stems)}) do not sum to its mix "
                f"(what is left is {left_db:.0f} dB below it): is a stem missing? Its scores "
                "assume they do",
                stacklevel=3,
            )
    return item


def load_set(path: Path) -> Iterator[SetItem]:
    """Read every item of a set folder in any of the three layouts (sorted by name).

    Raises:
        SetError: an item whose references cannot be scored (another length or channel
            count than its mix, a file in the MUSDB layout that names no stem); an item
            whose references do not sum to its mix is read with a warning.
    """
    for folder in sorted(p for p in Path(path).iterdir() if p.is_dir()):
        meta = (
            json.loads((folder / "meta.json").read_text())
            if (folder / "meta.json").exists()
            else {}
        )
        files = {
            f.stem: f
            for f in folder.iterdir()
            if f.suffix.lower() in (".wav", ".flac") and not f.name.startswith(".")
        }
        if "mixture" in files:  # MUSDB
            from mdx import MDX_STEMS

            mix, rate = audio.read(files.pop("mixture"))
            unknown = sorted(set(files) - set(MDX_STEMS))
            if unknown:
                raise SetError(
                    f"{files[unknown[0]]}: not a stem name of the MUSDB layout "
                    f"({', '.join(MDX_STEMS)}): rename it or move it out of the set"
                )
            paths = dict(sorted(files.items()))
        elif "mix" in files and "sfx" in files:  # DnR
            mix, rate = audio.read(files["mix"])
            paths = {DNR_NAMES[k]: files[k] for k in DNR_NAMES}
        elif "mix" in files and "speech" in files:  # speech in noise
            if "noise" not in files:
                raise SetError(f"{folder}: a mix and its speech but no noise.wav")
            mix, rate = audio.read(files["mix"])
            paths = {"speech": files["speech"], "noise": files["noise"]}
        else:
            continue
        stems = {name: audio.read(path, rate)[0] for name, path in paths.items()}
        yield _checked(SetItem(folder.name, mix, stems, rate, meta), folder, paths)


def main(argv: list[str] | None = None) -> int:
    """``python -m eval.sets build film|film-sung|speech|music|music-synth|all --out DIR``, or
    ``python -m eval.sets pin`` (rewrite ``PINNED_MANIFEST`` from the corpus: changes the sets)."""
    p = argparse.ArgumentParser(prog="python -m eval.sets")
    p.add_argument("action", choices=["build", "pin"])
    p.add_argument(
        "which", nargs="?", choices=["film", "film-sung", "speech", "music", "music-synth", "all"]
    )
    p.add_argument("--out", help="root folder; each set goes in OUT/<set>")
    p.add_argument("--count", type=int, default=48, help="film mixtures")
    p.add_argument("--utterances", type=int, default=8, help="speech-in-noise utterances")
    args = p.parse_args(argv)
    if args.action == "build" and (args.which is None or args.out is None):
        p.error("build needs a set (or all) and --out")
    root = data.default_data_root()
    if not (root / "MANIFEST.csv").exists():
        print(f"no development data at {root}", file=sys.stderr)
        return 1
    if args.action == "pin":
        count = pin_manifest(root)
        print(f"{PINNED_MANIFEST}: {count} rows of {root / 'MANIFEST.csv'} (the sets change)")
        return 0
    out = Path(args.out)
    builders = {
        "film": lambda folder: build_film_set(folder, args.count),
        "film-sung": build_film_sung_set,
        "speech": lambda folder: build_speech_set(folder, args.utterances),
        "music": build_music_set,
        "music-synth": build_music_synth_set,
    }
    for which in builders if args.which == "all" else [args.which]:
        made = builders[which](out / which)
        print(f"{which}: {len(made)} items in {out / which}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
