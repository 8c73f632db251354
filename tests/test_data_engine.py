"""The data engine: film and music mixers, singing, SoundFont renderer, augmentation."""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

from demix import data
from demix.data import default_data_root
from mdx import soundfont, synth

DATA = default_data_root()
needs_data = pytest.mark.skipif(
    not (DATA / "MANIFEST.csv").exists(), reason=f"development data not found at {DATA}"
)


def _has(module: str) -> bool:
    try:
        __import__(module)
    except (ImportError, OSError):
        return False
    return True


# ------------------------------------------------------------------ augmentation helpers
def test_fold_bandwidth_fills_the_empty_band_only():
    rate = 44100
    rng = np.random.default_rng(0)
    x = data.lowpass(rng.normal(0, 0.1, (1, rate)).astype(np.float32), rate, 7000)
    y = data.fold_bandwidth(x, rate, 8000, gain_db=-10)
    freqs = np.fft.rfftfreq(rate, 1 / rate)
    px, py = np.abs(np.fft.rfft(x[0])) ** 2, np.abs(np.fft.rfft(y[0])) ** 2
    high = (freqs > 9000) & (freqs < 14000)
    low = freqs < 7000
    assert py[high].sum() > 1000 * px[high].sum()  # the top band is no longer empty
    np.testing.assert_allclose(py[low], px[low], rtol=1e-3, atol=1e-6)  # the rest untouched
    ratio_db = 10 * np.log10(py[high].mean() / px[(freqs > 2000) & (freqs < 7000)].mean())
    assert -30 < ratio_db < -10  # folded image at −10 dB and rolling off above


def test_colored_noise_slope():
    rng = np.random.default_rng(0)
    pink = data.colored_noise(1 << 16, 1.0, rng)
    spec = np.abs(np.fft.rfft(pink)) ** 2
    freqs = np.fft.rfftfreq(1 << 16)
    low = spec[(freqs > 0.001) & (freqs < 0.002)].mean()
    high = spec[(freqs > 0.1) & (freqs < 0.2)].mean()
    assert 10 * np.log10(low / high) == pytest.approx(20.0, abs=3.0)  # −10 dB/decade × 2
    assert np.sqrt(np.mean(pink**2)) == pytest.approx(1.0, rel=1e-3)


def test_synthetic_rir_decays():
    rir = data.synthetic_rir(16000, 0.5, np.random.default_rng(0))
    assert rir[0] == 1.0 and len(rir) == 8000
    early, late = np.sum(rir[100:2000] ** 2), np.sum(rir[6000:] ** 2)
    assert late < early / 100


# ------------------------------------------------------------------ SoundFont renderer
def test_programs_map_to_the_six_stems():
    from mdx.soundfont import stem_for_program

    assert stem_for_program(0) == "piano"  # acoustic grand
    assert stem_for_program(4) == "piano"  # electric piano
    assert stem_for_program(25) == "guitar"  # steel-string
    assert stem_for_program(30) == "guitar"  # distortion
    assert stem_for_program(33) == "bass"  # finger bass
    assert stem_for_program(38) == "bass"  # synth bass
    assert stem_for_program(52) == "vocals"  # choir aahs
    assert stem_for_program(48) == "other"  # strings
    assert stem_for_program(19) == "other"  # church organ
    assert stem_for_program(0, percussion=True) == "drums"
    with pytest.raises(ValueError):
        stem_for_program(128)


def test_composed_parts_land_in_their_stems():
    from mdx.soundfont import PROGRAMS, compose

    seen = set()
    for seed in range(10):
        rng = np.random.default_rng(seed)
        for part in compose(synth.random_sketch(rng), 4.0, rng):
            seen.add(part.stem)
            if part.percussion:
                assert part.stem == "drums"
            elif part.stem != "other":
                assert part.program in PROGRAMS[part.stem]
            assert part.notes and all(0 <= n.pitch < 128 for n in part.notes)
    assert seen == {"drums", "bass", "piano", "guitar", "other", "vocals"}


soundfont_ready = pytest.mark.skipif(
    soundfont.renderer_unavailable() is not None,
    reason=str(soundfont.renderer_unavailable()),
)


@soundfont_ready
def test_rendered_stems_sum_to_the_render():
    from mdx.soundfont import Renderer, compose, find_soundfont

    if find_soundfont() is None:
        pytest.skip("no General MIDI SoundFont (apt install fluid-soundfont-gm)")
    renderer = Renderer(44100)
    rng = np.random.default_rng(3)
    parts = compose(synth.random_sketch(rng), 3.0, rng)
    stems = renderer.render_song(parts, 3.0)
    together = renderer.render(parts, 3.0)
    assert together.shape == (2, 3 * 44100)
    assert np.abs(together).max() > 0.01
    residual = together - sum(stems.values())
    assert 10 * np.log10(np.sum(together**2) / np.sum(residual**2)) > 40
    for part in parts:  # each part is audible in its own stem
        assert np.abs(stems[part.stem]).max() > 1e-3
    # The same part renders identically whatever was rendered before it (up to FluidSynth's
    # free-running modulators).
    again = renderer.render(parts[1], 3.0)
    first = Renderer(44100).render(parts[1], 3.0)
    assert np.sum((again - first) ** 2) < 1e-3 * np.sum(first**2)


# ------------------------------------------------------------------ singing
def test_melody_stays_in_the_scale():
    from mdx.sing import melody_f0

    sketch = synth.Sketch(key=2, minor=False, beat_seconds=0.5, chords=((2, 6, 9),))
    plain = melody_f0(sketch, 2000, 57, np.random.default_rng(0), ornaments=False)
    sung = melody_f0(sketch, 2000, 57, np.random.default_rng(0))
    pitch = 12 * np.log2(plain / 440) + 69
    d_major = {(2 + s) % 12 for s in (0, 2, 4, 5, 7, 9, 11)}
    assert np.mean([int(c) in d_major for c in np.round(pitch) % 12]) > 0.95  # glides stray
    assert 55 <= np.median(pitch) <= 71
    assert len(np.unique(np.round(pitch))) >= 4  # a melody, not a drone
    ornament = 12 * np.log2(sung / plain)
    assert 0.1 < np.std(ornament) < 1.0  # vibrato and drift within a semitone


@pytest.mark.skipif(not _has("pyworld"), reason="pyworld not installed (pip install -e .[train])")
def test_sung_speech_follows_the_melody_and_is_stretched():
    import pyworld

    from mdx.sing import sing

    rate = 16000
    t = np.arange(int(1.5 * rate)) / rate
    # A vowel-like buzz gliding like speech intonation (150 → 110 Hz).
    f0 = 150 - 40 * t / t[-1]
    speech = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / rate) / k for k in range(1, 30))
    speech = (0.1 * speech * np.hanning(len(t))).astype(np.float32)
    sketch = synth.Sketch(key=0, minor=False, beat_seconds=0.4, chords=((0, 4, 7),))
    sung = sing(speech, rate, sketch, np.random.default_rng(1), stretch=1.5)
    assert len(sung) == pytest.approx(1.5 * len(speech), rel=0.02)
    # Given a contour (a C-major scale run, 0.25 s per note), the voice sings it.
    frames = int(1.5 * len(speech) / rate / 0.005) + 1
    notes = np.array([60, 62, 64, 65, 67, 69, 71, 72, 71, 69])
    target = synth.midi_hz(notes[np.minimum(np.arange(frames) // 50, len(notes) - 1)])
    sung = sing(speech, rate, sketch, np.random.default_rng(1), stretch=1.5, contour=target)
    est, _ = pyworld.harvest(sung.astype(np.float64), rate, frame_period=5.0)
    voiced = (est > 0)[: len(target)]
    error = 12 * np.log2(est[: len(target)][voiced] / target[: len(est)][voiced])
    assert voiced.mean() > 0.5
    assert np.median(np.abs(error)) < 0.3  # within a third of a semitone


@pytest.mark.skipif(not _has("pyworld"), reason="pyworld not installed (pip install -e .[train])")
def test_held_vowels_stretch_the_voiced_frames_only():
    """hold > 1: the voiced stretch (a vowel) lasts hold x longer, the unvoiced (noise, a
    consonant) keeps the plain stretch."""
    import pyworld

    from mdx.sing import sing

    rate = 16000
    rng = np.random.default_rng(0)
    t = np.arange(rate) / rate
    buzz = sum(np.sin(2 * np.pi * k * 130 * t) / k for k in range(1, 30)) * np.hanning(rate)
    noise = rng.normal(0, 0.3, rate // 2) * np.hanning(rate // 2)
    speech = (0.1 * np.concatenate([noise, buzz, noise])).astype(np.float32)  # 0.5 + 1 + 0.5 s
    sketch = synth.Sketch(key=0, minor=False, beat_seconds=0.4, chords=((0, 4, 7),))

    def voiced_seconds(y):
        f0, _ = pyworld.harvest(y.astype(np.float64), rate, frame_period=5.0)
        return float(np.sum(f0 > 0)) * 0.005

    plain = sing(speech, rate, sketch, np.random.default_rng(1), stretch=1.5)
    held = sing(speech, rate, sketch, np.random.default_rng(1), stretch=1.5, hold=2.0)
    assert len(plain) == pytest.approx(1.5 * len(speech), rel=0.02)
    extra = (len(held) - len(plain)) / rate  # the voiced input seconds x 1.5 x (2 - 1)
    f0, _ = pyworld.dio(speech.astype(np.float64), rate, 60.0, 600.0, frame_period=5.0)
    voiced_in = float(np.sum(f0 > 0)) * 0.005  # as sing() finds them (the buzz, its edges)
    assert 0.9 < voiced_in < 1.5
    assert extra == pytest.approx(1.5 * voiced_in, rel=0.05)
    assert voiced_seconds(held) == pytest.approx(2 * voiced_seconds(plain), rel=0.15)


# ------------------------------------------------------------------ mixers
def _mini_root(tmp_path: Path) -> Path:
    """A small manifest pointing into ../shared/data (a few files per kind, both splits)."""
    rows = list(csv.DictReader(open(DATA / "MANIFEST.csv", newline="")))
    keep, count = [], {}
    for r in rows:
        if not data.license_is_trainable(r["license"]) or r["split"] != "train":
            continue
        kind = r["kind"]
        special = r["path"].split("/")[-1].startswith(("singing-female", "guit_", "bd_", "sn_"))
        if count.get(kind, 0) < 5 or special and count.get(r["path"][:20], 0) < 2:
            count[kind] = count.get(kind, 0) + 1
            count[r["path"][:20]] = count.get(r["path"][:20], 0) + 1
            keep.append(dict(r, path=str(DATA / r["path"])))
    root = tmp_path / "mini"
    root.mkdir()
    with open(root / "MANIFEST.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(keep)
    return root


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory) -> Path:
    if not (DATA / "MANIFEST.csv").exists():
        pytest.skip(f"development data not found at {DATA}")
    return _mini_root(tmp_path_factory.mktemp("data"))


def _film(mini_root: Path, **overrides):
    from cdx.mix import FilmMixConfig, FilmMixDataset

    config = FilmMixConfig(
        data_root=str(mini_root),
        cache_dir=str(mini_root.parent / "cache"),  # shared by the tests of this module
        segment_seconds=2.0,
        **overrides,
    )
    return FilmMixDataset(config, seed=0)


_SMALL_SONGS = {"p_song": 0.0}


@needs_data
def test_film_mixes_are_reproducible_and_sum(mini_root):
    film = _film(mini_root, **_SMALL_SONGS)
    mix_a, stems_a = film[7]
    mix_b, stems_b = film[7]
    mix_c, _ = film[8]
    assert stems_a.shape == (3, 2, 88200)
    np.testing.assert_array_equal(mix_a.numpy(), mix_b.numpy())
    np.testing.assert_array_equal(stems_a.numpy(), stems_b.numpy())
    assert not np.array_equal(mix_a.numpy(), mix_c.numpy())
    np.testing.assert_allclose(stems_a.sum(0).numpy(), mix_a.numpy(), atol=1e-6)
    assert np.abs(mix_a.numpy()).max() <= 0.99 + 1e-6


@needs_data
def test_film_mixes_meet_their_loudness_targets(mini_root):
    film = _film(
        mini_root,
        p_lowpass_mix=0.0,
        p_silent_dialogue=0.0,
        p_silent_music=0.0,
        p_silent_effects=0.0,
        **_SMALL_SONGS,
    )
    for i in range(6):
        prov: dict = {}
        _, stems = film.make(np.random.default_rng([5, i]), prov)
        targets = prov["loudness_targets_lufs"]
        loud = {s: data.loudness_lufs(stems[k], 44100) for k, s in enumerate(film.stems)}
        # One common gain moves every stem: the differences are what the recipe sets.
        for a, b in (("dialogue", "music"), ("dialogue", "effects")):
            assert loud[a] - loud[b] == pytest.approx(targets[a] - targets[b], abs=0.6)
        assert abs(targets["music"] - -24) <= 3 and abs(targets["effects"] - -21) <= 3


@needs_data
def test_film_mixes_with_dnr3_levels(mini_root):
    """DnR v3 levels: dialogue around -27 LUFS, music and foreground effects around -32, the
    bed on its own around -40; relative levels as drawn."""
    film = _film(
        mini_root,
        p_dnr3_levels=1.0,
        p_wide_snr=0.0,
        p_lowpass_mix=0.0,
        p_noise_bed=0.0,
        p_silent_dialogue=0.0,
        p_silent_music=0.0,
        p_silent_effects=0.0,
        **_SMALL_SONGS,
    )
    drawn = {"dialogue": [], "music": [], "effects": [], "effects_bed": []}
    for i in range(24):
        prov: dict = {}
        _, stems = film.make(np.random.default_rng([7, i]), prov)
        targets = prov["loudness_targets_lufs"]
        for k, v in targets.items():
            drawn[k].append(v)
        loud = {s: data.loudness_lufs(stems[k], 44100) for k, s in enumerate(film.stems)}
        # (a faint short event can fall under BS.1770's absolute gate after the mix's gain)
        if "effects_bed" not in targets and np.isfinite(loud["effects"]):
            diff = loud["dialogue"] - loud["effects"]
            assert diff == pytest.approx(targets["dialogue"] - targets["effects"], abs=0.6)
        diff = loud["dialogue"] - loud["music"]
        assert diff == pytest.approx(targets["dialogue"] - targets["music"], abs=0.6)
    assert abs(np.mean(drawn["dialogue"]) - -27) < 3 and abs(np.mean(drawn["music"]) - -32) < 4
    assert drawn["effects_bed"] and np.mean(drawn["effects_bed"]) < np.mean(drawn["effects"])


@needs_data
@pytest.mark.skipif(not _has("pyworld"), reason="pyworld not installed")
def test_sung_vocals_are_music_in_film_mixes(mini_root):
    film = _film(
        mini_root,
        p_song=1.0,
        p_silent_music=0.0,
        p_silent_dialogue=1.0,
        song_sung_phrases=4,  # a small singing pool for speed
        song_soundfont_songs=2,
    )
    sources = []
    for i in range(12):
        prov: dict = {}
        _, stems = film.make(np.random.default_rng([9, i]), prov)
        (song,) = prov["clips"]["music"]
        assert song.startswith("song")
        sources.append(song)
        assert np.abs(stems[0]).max() == 0  # no dialogue in these mixes...
        assert np.abs(stems[1]).max() > 0  # ...and the song, vocals included, is music
    assert any("vocals: sung" in s for s in sources)
    assert not any("vocals: speech" in s for s in sources)  # speech is never music in films


@needs_data
def test_music_mixes_are_reproducible_and_sum(mini_root):
    from mdx.mix import MusicMixConfig, MusicMixDataset

    music = MusicMixDataset(
        MusicMixConfig(
            data_root=str(mini_root),
            cache_dir=str(mini_root.parent / "cache"),
            segment_seconds=2.0,
            sung_phrases=0,
            p_soundfont=0.0,
        ),
        seed=1,
    )
    mix_a, stems_a = music[3]
    mix_b, stems_b = music[3]
    assert stems_a.shape == (6, 2, 88200)
    np.testing.assert_array_equal(stems_a.numpy(), stems_b.numpy())
    np.testing.assert_allclose(stems_a.sum(0).numpy(), mix_a.numpy(), atol=1e-6)
    present = [(np.abs(music[i][1].numpy()).reshape(6, -1).max(1) > 0) for i in range(10)]
    assert np.array(present).any(0).all()  # every stem shows up


def test_bs1770_loudness_of_surround_layouts():
    """5.1 and 7.1 (beyond pyloudnorm's five channels): LFE excluded, surrounds +1.5 dB,
    the same gating as pyloudnorm's meter."""
    import pyloudnorm

    rate = 48000
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(5, 3 * rate)) * np.array([0.1, 0.2, 0.05, 0.3, 0.01])[:, None]).astype(
        np.float32
    )
    x[:, :rate] *= 1e-3  # a quiet second the relative gate drops
    meter = pyloudnorm.Meter(rate)
    weights = np.asarray(data.BS1770_WEIGHTS[5])
    assert data._gated_loudness(meter, x, rate, weights) == pytest.approx(
        data.loudness_lufs(x, rate), abs=1e-6
    )
    stereo = x[:2]
    surround = np.zeros((6, x.shape[1]), np.float32)
    surround[:2] = stereo
    assert data.loudness_lufs(surround, rate) == pytest.approx(
        data.loudness_lufs(stereo, rate), abs=1e-6
    )
    surround[3] = 0.5 * rng.normal(size=x.shape[1])  # a loud LFE does not count
    assert data.loudness_lufs(surround, rate) == pytest.approx(
        data.loudness_lufs(stereo, rate), abs=1e-6
    )
    left_surround = np.zeros((6, x.shape[1]), np.float32)
    left_surround[4] = x[0]
    front_left = np.zeros((6, x.shape[1]), np.float32)
    front_left[0] = x[0]
    difference = data.loudness_lufs(left_surround, rate) - data.loudness_lufs(front_left, rate)
    assert difference == pytest.approx(10 * np.log10(1.41), abs=1e-3)
    seven_one = np.zeros((8, x.shape[1]), np.float32)
    seven_one[6] = x[0]
    assert data.loudness_lufs(seven_one, rate) == pytest.approx(
        data.loudness_lufs(left_surround, rate), abs=1e-6
    )
    assert data.loudness_lufs(np.zeros((6, rate), np.float32), rate) == float("-inf")


@pytest.mark.parametrize(
    ("licence", "trainable"),
    [("public-domain", True), ("public domain", True), ("CC0-1.0", True), ("MIT (Expat)", True),
     ("CC-BY-NC-SA-4.0", False), ("CC-BY-NC-SA (MUSDB18 sample)", False), ("GPL-2.0", False)],
)  # fmt: skip
def test_licences_a_shipped_model_may_train_on(licence: str, trainable: bool):
    assert data.license_is_trainable(licence) is trainable


@pytest.mark.parametrize(
    ("name", "parsed"),
    [("Amajor_00", (9, "maj", "any")), ("Asharp minro7b5_DOWN_02", (10, "m7b5", "down")),
     ("Bflat major_UP_01", (10, "maj", "up")), ("Cmajor_Down_03", (0, "maj", "down")),
     ("Dsharp minor7b5_DOWN_02wav", (3, "m7b5", "down")), ("Bminor7b5_UP_00", (11, "m7b5", "up")),
     ("drumkit", None), ("Hmajor_00", None)],
)  # fmt: skip
def test_strum_names_parse(name, parsed):
    from mdx import strums

    assert strums.parse_strum(name) == parsed


def _strum_folder(folder: Path, rate: int = 48000) -> Path:
    """Chord "strums": 1.5 s of decaying noise per chord and direction, as the Debian kit
    names them."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    decay = np.exp(-np.arange(int(1.5 * rate)) / (0.4 * rate))
    for chord in ("Cmajor", "Fmajor", "Gmajor", "Aminor"):
        for direction in ("", "_DOWN", "_UP"):
            x = (0.5 * rng.standard_normal((len(decay), 2)) * decay[:, None]).astype(np.float32)
            sf.write(folder / f"{chord}{direction}_00.flac", x, rate)
    return folder


def test_strummed_parts_follow_a_grid_and_are_cached(tmp_path, monkeypatch):
    from mdx import strums

    # named as the Debian kit: a cached render is found by the kit's name, wherever it is
    folder = _strum_folder(tmp_path / "belofilms_GuitarStrums")
    loaded = strums.load_strums(folder, 44100)
    assert set(loaded) == {(0, "maj"), (5, "maj"), (7, "maj"), (9, "min")}
    part = strums.strum_part(loaded, 4.0, 44100, np.random.default_rng(3))
    again = strums.strum_part(loaded, 4.0, 44100, np.random.default_rng(3))
    assert part.shape == (2, 4 * 44100) and np.array_equal(part, again)
    envelope = np.abs(part).max(0).reshape(-1, 441).max(1)  # per 10 ms
    onsets = np.flatnonzero((envelope[1:] > 2.5 * envelope[:-1]) & (envelope[1:] > 0.05))
    assert len(onsets) >= 4  # strums, not one sustained sound
    assert np.abs(part[:, : int(0.02 * 44100)]).max() > 0  # the bar starts with a strum
    monkeypatch.setenv("DEMIX_STRUMS", str(folder))
    pool = strums.strum_pool(44100, tmp_path / "cache", parts=3, seconds=3.0)
    assert len(pool) == 3 and pool.channels == 2
    monkeypatch.setenv("DEMIX_STRUMS", str(tmp_path / "missing"))
    cached = strums.strum_pool(44100, tmp_path / "cache", parts=3, seconds=3.0)
    np.testing.assert_array_equal(cached.clip(1)[0], pool.clip(1)[0])  # served from the cache
    with pytest.raises(data.SourceUnavailable, match="no guitar strums"):
        strums.strum_pool(44100, tmp_path / "cache", parts=4, seconds=3.0)


@needs_data
def test_music_mixes_take_strummed_guitar(mini_root, tmp_path, monkeypatch):
    from mdx.mix import MusicMixConfig, MusicMixDataset

    monkeypatch.setenv("DEMIX_STRUMS", str(_strum_folder(tmp_path / "strums")))
    config = MusicMixConfig(data_root=str(mini_root), cache_dir=str(tmp_path / "cache"),
                            segment_seconds=2.0, sung_phrases=0, p_soundfont=0.0,
                            p_strums=1.0, strum_parts=4, p_missing=0.0)  # fmt: skip
    music = MusicMixDataset(config, seed=1)
    assert music.strums is not None and len(music.strums) == 4
    mix, stems = music[0]
    guitar = stems[3].numpy()
    assert np.abs(guitar).max() > 0
    np.testing.assert_allclose(stems.sum(0).numpy(), mix.numpy(), atol=1e-6)


@needs_data
def test_a_recipe_that_requires_its_sources_refuses_to_start_without_them(
    mini_root, tmp_path, monkeypatch, capsys
):
    """A shipped recipe's mixes never quietly lose the strums or kits it asks for."""
    from mdx.mix import MusicMixConfig, MusicMixDataset

    monkeypatch.setenv("DEMIX_STRUMS", str(tmp_path / "no-strums"))
    config = MusicMixConfig(data_root=str(mini_root), cache_dir=str(tmp_path / "cache"),
                            segment_seconds=2.0, sung_phrases=0, p_soundfont=0.0,
                            p_strums=0.5, strum_parts=2)  # fmt: skip
    with pytest.warns(UserWarning, match="no strummed guitar"):
        assert MusicMixDataset(config, seed=1).strums is None  # a dev run goes on without
    strict = dataclasses.replace(config, require_sources=True)
    with pytest.raises(data.MissingSourceError, match="strummed guitar.*require_sources"):
        MusicMixDataset(strict, seed=1)
    from demix.train import main  # demix train: one line naming the config, exit 2

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model: dualpath\nrun_dir: {tmp_path / 'run'}\nsources:\n  - name: mdx.music_mix\n"
        f"    head: music\n    config: {{data_root: '{mini_root}', cache_dir: "
        f"'{tmp_path / 'cache'}', sung_phrases: 0, p_soundfont: 0.0, p_strums: 0.5, "
        "require_sources: true}\n"
    )
    assert main([str(recipe)]) == 2
    err = capsys.readouterr().err  # the pools' progress, then the reason
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"demix train: {recipe}: no strummed guitar")
    assert not (tmp_path / "run").exists()

    # a render that fails for another reason is an error, not a source quietly left out
    import mdx.strums

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the renderer")

    monkeypatch.setattr(mdx.strums, "strum_pool", broken)
    with pytest.raises(RuntimeError, match="a bug in the renderer"):
        MusicMixDataset(config, seed=1)


@needs_data
def test_music_mixes_draw_from_extra_soundfonts(mini_root, tmp_path):
    import shutil

    from mdx.mix import MusicMixConfig, MusicMixDataset

    why = soundfont.renderer_unavailable()
    if why:
        pytest.skip(why)
    other = tmp_path / "Other_GM.sf2"  # the same font under another name: its own renders
    shutil.copy(soundfont.find_soundfont(), other)
    assert soundfont.resolve_soundfont(str(other)) == other
    assert soundfont.resolve_soundfont("FluidR3_GM.sf2").is_file()  # found by its name
    config = MusicMixConfig(data_root=str(mini_root), cache_dir=str(tmp_path / "cache"),
                            segment_seconds=2.0, sung_phrases=0, p_soundfont=1.0,
                            soundfont_songs=3, p_missing=0.0, p_strums=0.0,
                            extra_soundfonts=(str(other), "Missing_GM.sf2"))  # fmt: skip
    with pytest.warns(UserWarning, match="no Missing_GM.sf2 renders"):
        music = MusicMixDataset(config, seed=1)
    assert len(music.extra_soundfont) == 1 and "piano" in music.extra_soundfont[0]
    first, extra = music.soundfont["bass"], music.extra_soundfont[0]["bass"]
    assert first.digest != extra.digest  # other songs, cached apart
    mix, stems = music[0]
    np.testing.assert_allclose(stems.sum(0).numpy(), mix.numpy(), atol=1e-6)


@pytest.mark.parametrize(
    ("name", "role"),
    [("c3 - bass drum 1", "kick"), ("Kick", "kick"), ("c#3 - stick", "rim"),
     ("d3 - snare 1", "snare"), ("f#3 - hi-hat closed", "hat"), ("g#3 - hi-hat pedal", "hat_pedal"),
     ("Open HH", "hat_open"), ("Closed HH", "hat"), ("b3 - low tom", "tom_low"),
     ("Tom Hi", "tom_high"), ("c4 - middle tom", "tom_mid"), ("f4 - ride bell", "ride"),
     ("d#4 - cymbal 1", "crash"), ("g#4 - cowbell", "cowbell"), ("Hand Clap", "clap"),
     ("Sample: beats_08-37.flac", None), ("f#4 - ", None)],
)  # fmt: skip
def test_drum_kit_pieces_map_to_roles(name, role):
    from mdx import drumkits

    assert drumkits.role_of(name) == role


@pytest.mark.parametrize(
    ("licence", "ok"),
    [("This work is licensed under the Creative Commons 0 License.", True),
     ("cc-by ==> http://creativecommons.org/licenses/by/3.0/", True),
     ("CC-BY 3.0 Unported", True), ("GPL", False),
     ("This drumkit is distributed under the GPL version 2 license", False),
     ("Attribution-Share Alike 3.0 United States", False),
     ("Creative Commons - Attribution-ShareAlike 3.0 Unported", False),
     ("CC-BY-NC 4.0", False), ("", False)],
)  # fmt: skip
def test_drum_kit_licences(licence, ok):
    from mdx import drumkits

    assert drumkits.licence_is_trainable(licence) is ok


def _drum_kits(root: Path, rate: int = 48000) -> Path:
    """Four kits as Hydrogen writes them: a flat old-format kit (CC-BY), a namespaced kit
    with two velocity layers per piece (CC0), a GPL kit and a kit without a snare."""
    import soundfile as sf

    rng = np.random.default_rng(0)

    def hit(path: Path, seconds: float, hz: float) -> str:
        t = np.arange(int(seconds * rate)) / rate
        x = np.sin(2 * np.pi * hz * t) * np.exp(-t / (seconds / 4)) + 0.1 * rng.standard_normal(
            len(t)
        ) * np.exp(-t / 0.02)
        sf.write(path, (0.8 * x).astype(np.float32), rate)
        return path.name

    def flat(folder: Path, licence: str, names: list[str]) -> None:
        folder.mkdir(parents=True)
        body = "".join(
            f"<instrument><id>{i}</id><name>{name}</name>"
            f"<filename>{hit(folder / f's{i}.flac', 0.3, 60 + 150 * i)}</filename>"
            "<volume>0.9</volume></instrument>"
            for i, name in enumerate(names)
        )
        (folder / "drumkit.xml").write_text(
            f"<drumkit_info><name>{folder.name}</name><license>{licence}</license>"
            f"<instrumentList>{body}</instrumentList></drumkit_info>"
        )

    flat(root / "flat_kit", "cc-by ==> http://creativecommons.org/licenses/by/3.0/",
         ["c3 - bass drum 1", "d3 - snare 1", "f#3 - hi-hat closed", "a#3 - hi-hat open",
          "b3 - low tom", "c#4 - crash", "Sample: beats_01.flac"])  # fmt: skip
    flat(root / "gpl_kit", "GPL", ["Kick", "Snare", "Closed HH"])
    flat(root / "no_snare", "CC0", ["Kick", "Closed HH"])
    layered = root / "layered_kit"
    layered.mkdir()
    pieces = ""
    for i, name in enumerate(["Kick", "Snare Rock", "Closed HH", "Ride Jazz"]):
        soft = hit(layered / f"{i}_soft.wav", 0.2, 80 + 100 * i)
        hard = hit(layered / f"{i}_hard.wav", 0.4, 80 + 100 * i)
        pieces += (
            f"<instrument><id>{i}</id><name>{name}</name><volume>1</volume>"
            f"<layer><filename>{soft}</filename><min>0</min><max>0.5</max><gain>1</gain></layer>"
            f"<layer><filename>{hard}</filename><min>0.5</min><max>1</max><gain>1</gain></layer>"
            "</instrument>"
        )
    (layered / "drumkit.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<drumkit_info xmlns="http://www.hydrogen-music.org/drumkit"><name>Layered</name>'
        "<license>This work is licensed under the Creative Commons 0 License.</license>"
        f"<instrumentList>{pieces}</instrumentList></drumkit_info>"
    )
    (root / "broken").mkdir()
    (root / "broken" / "drumkit.xml").write_text("<drumkit_info><name>")
    return root


def test_drum_kits_are_read_in_both_formats_and_only_licence_clean(tmp_path, monkeypatch):
    from mdx import drumkits

    root = _drum_kits(tmp_path / "kits")
    flat = drumkits.read_drumkit(root / "flat_kit")
    roles = {r: len(p) for r, p in flat.roles().items()}  # the unnamed sample plays none
    assert roles == dict.fromkeys(["kick", "snare", "hat", "hat_open", "tom_low", "crash"], 1)
    layered = drumkits.read_drumkit(root / "layered_kit")
    assert layered.name == "Layered" and layered.trainable and layered.playable
    assert [(la.low, la.high) for la in layered.roles()["kick"][0].layers] == [(0, 0.5), (0.5, 1)]
    with pytest.raises(ValueError, match=r"broken.drumkit\.xml: not a readable"):
        drumkits.read_drumkit(root / "broken")
    monkeypatch.setenv("DEMIX_DRUMKITS", str(root))
    assert [k.folder.name for k in drumkits.find_drumkits()] == ["layered_kit", "flat_kit"]
    # a kit folder itself, beside a folder of kits
    monkeypatch.setenv("DEMIX_DRUMKITS", f"{root / 'flat_kit'}{os.pathsep}{tmp_path / 'none'}")
    assert [k.name for k in drumkits.find_drumkits()] == ["flat_kit"]


def test_drum_kit_grooves_play_velocity_layers_and_are_cached(tmp_path, monkeypatch):
    from mdx import drumkits

    root = _drum_kits(tmp_path / "kits")
    layered = drumkits.KitSamples(drumkits.read_drumkit(root / "layered_kit"), 44100)
    kick = layered.kit.roles()["kick"][0]
    sound = drumkits._Sound([(la.low, la.high, layered.samples[la.path]) for la in kick.layers])
    rng = np.random.default_rng(0)
    assert sound.take(0.3, rng).shape[1] == int(0.2 * 44100)  # the soft layer
    assert sound.take(0.9, rng).shape[1] == int(0.4 * 44100)  # the hard one
    kits = [layered, drumkits.KitSamples(drumkits.read_drumkit(root / "flat_kit"), 44100)]
    part = drumkits.groove(kits, 4.0, 44100, np.random.default_rng(5))
    again = drumkits.groove(kits, 4.0, 44100, np.random.default_rng(5))
    assert part.shape == (2, 4 * 44100) and np.array_equal(part, again)
    assert not np.allclose(part[0], part[1])  # pieces panned across the image
    envelope = np.abs(part).max(0).reshape(-1, 441).max(1)  # per 10 ms
    onsets = np.flatnonzero((envelope[1:] > 2 * envelope[:-1]) & (envelope[1:] > 0.05))
    assert len(onsets) >= 8  # a groove at 70-170 BPM, not a few sounds
    monkeypatch.setenv("DEMIX_DRUMKITS", str(root))
    pool = drumkits.drumkit_pool(44100, tmp_path / "cache", parts=3, seconds=3.0)
    assert len(pool) == 3 and pool.channels == 2
    found = drumkits.find_drumkits()
    monkeypatch.setenv("DEMIX_DRUMKITS", str(tmp_path / "missing"))
    cached = drumkits.drumkit_pool(44100, tmp_path / "cache", parts=3, seconds=3.0, kits=found)
    np.testing.assert_array_equal(cached.clip(1)[0], pool.clip(1)[0])  # served from the cache
    with pytest.raises(data.SourceUnavailable, match="no licence-clean drum kits"):
        drumkits.drumkit_pool(44100, tmp_path / "cache", parts=4, seconds=3.0)


def test_drum_kit_pool_without_kits_opens_the_debian_kits_render(tmp_path, monkeypatch):
    """A machine without the kits (a lent GPU with a training pack) computes the cache key
    of the pool rendered where the Debian kits are installed."""
    from mdx import drumkits

    assert list(drumkits.DEBIAN_KIT_NAMES) == sorted(drumkits.DEBIAN_KIT_NAMES)  # by name
    monkeypatch.delenv("DEMIX_DRUMKITS", raising=False)
    installed = drumkits.find_drumkits()
    if not installed:
        pytest.skip("Debian's hydrogen-drumkits is not installed")
    assert tuple(k.name for k in installed) == drumkits.DEBIAN_KIT_NAMES
    pool = drumkits.drumkit_pool(44100, tmp_path, parts=1, seconds=2.0)
    monkeypatch.setenv("DEMIX_DRUMKITS", str(tmp_path / "missing"))
    cached = drumkits.drumkit_pool(44100, tmp_path, parts=1, seconds=2.0)
    np.testing.assert_array_equal(cached.clip(0), pool.clip(0))


@needs_data
def test_music_mixes_take_drum_kit_grooves(mini_root, tmp_path, monkeypatch):
    from mdx.mix import MusicMixConfig, MusicMixDataset

    monkeypatch.setenv("DEMIX_DRUMKITS", str(_drum_kits(tmp_path / "kits")))
    config = MusicMixConfig(data_root=str(mini_root), cache_dir=str(tmp_path / "cache"),
                            segment_seconds=2.0, sung_phrases=0, p_soundfont=0.0,
                            p_drumkits=1.0, drumkit_parts=4, p_missing=0.0)  # fmt: skip
    music = MusicMixDataset(config, seed=1)
    assert music.drumkits is not None and len(music.drumkits) == 4
    mix, stems = music[0]
    assert np.abs(stems[0].numpy()).max() > 0
    np.testing.assert_allclose(stems.sum(0).numpy(), mix.numpy(), atol=1e-6)
