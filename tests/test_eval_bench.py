"""Evaluation sets (determinism, layouts) and a benchmark end to end on a tiny set."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from demix import Separator, audio
from demix.data import default_data_root
from eval.bench import oracle_irm, run_benchmark
from eval.sets import build_film_set, build_speech_set, load_set

DATA = default_data_root()
pytestmark = pytest.mark.skipif(
    not (DATA / "MANIFEST.csv").exists(), reason=f"development data not found at {DATA}"
)


def _same_set(a, b) -> bool:
    """Same items, metadata and audio (to float rounding: numpy's FFT may differ in the last
    bit from run to run, so byte digests are not a fair test)."""
    items_a, items_b = list(load_set(a)), list(load_set(b))
    if [i.name for i in items_a] != [i.name for i in items_b]:
        return False
    for x, y in zip(items_a, items_b):
        if x.meta != y.meta or x.stems.keys() != y.stems.keys():
            return False
        if not all(np.allclose(x.stems[k], y.stems[k], atol=1e-6) for k in x.stems):
            return False
    return True


def test_film_set_is_deterministic_and_readable(tmp_path):
    build_film_set(tmp_path / "a", count=2, seconds=2.0)
    build_film_set(tmp_path / "b", count=2, seconds=2.0)
    build_film_set(tmp_path / "c", count=2, seconds=2.0, seed=99)
    assert _same_set(tmp_path / "a", tmp_path / "b")
    assert not _same_set(tmp_path / "a", tmp_path / "c")
    items = list(load_set(tmp_path / "a"))
    assert [i.name for i in items] == ["film-000", "film-001"]
    item = items[0]
    assert list(item.stems) == ["dialogue", "music", "effects"]
    assert abs(sum(item.stems.values()) - item.mix).max() < 1e-6
    assert item.meta["clips"]["dialogue"]


def test_film_set_recipe_is_frozen(tmp_path):
    """The evaluation mixtures must not change when the training mixer gains augmentations
    (RESULTS.md numbers are only comparable on the same set). If the recipe is changed on
    purpose, update these values and rerun ``python -m eval.results``."""
    build_film_set(tmp_path / "a", count=2, seconds=2.0)
    items = list(load_set(tmp_path / "a"))
    expected = [
        ("Dangerous.ogg", ["4-194711-A.ogg", "4-188033-A.ogg"], (-19.9083, -23.344, -21.85),
         (0.05002, 0.03441, 0.03603)),
        ("Zombie Hoodoo.ogg", ["4-180380-A.ogg", "4-188033-A.ogg"], (-19.0718, -24.248, -22.0949),
         (0.11887, 0.06078, 0.05807)),
    ]  # fmt: skip
    for item, (music, effects, lufs, rms) in zip(items, expected):
        assert item.meta["clips"]["music"] == [music]
        assert item.meta["clips"]["effects"] == effects
        targets = item.meta["loudness_targets_lufs"]
        got = [targets[s] for s in ("dialogue", "music", "effects")]
        assert got == pytest.approx(lufs, abs=1e-3)
        got = [
            float(np.sqrt(np.mean(item.stems[s] ** 2))) for s in ("dialogue", "music", "effects")
        ]
        assert got == pytest.approx(rms, rel=1e-3)


def test_speech_set_snr_is_what_it_says(tmp_path):
    folders = build_speech_set(tmp_path, utterances=1)
    assert len(folders) == 4 * 6
    for item in load_set(tmp_path):
        speech, noise = item.stems["speech"], item.stems["noise"]
        snr = 10 * np.log10(np.sum(speech**2) / np.sum(noise**2))
        assert snr == pytest.approx(item.meta["snr_db"], abs=0.01)


def test_benchmark_end_to_end_and_resumable(tmp_path, tiny_checkpoint):
    build_film_set(tmp_path / "set", count=2, seconds=2.0)
    sep = Separator.from_pretrained(str(tiny_checkpoint))
    out = tmp_path / "out"
    scores = run_benchmark(
        "film", sep, "tiny", tmp_path / "set", out, progress=False, anchors=False
    )
    assert set(scores["system"]) == {"tiny", "identity", "oracle-irm"}
    assert set(scores["stem"]) == {"dialogue", "music", "effects"}
    assert len(scores) == 2 * 3 * 3 * 2  # items × systems × stems × metrics
    oracle = scores[(scores.system == "oracle-irm") & (scores.metric == "si_sdr")]["value"]
    ident = scores[(scores.system == "identity") & (scores.metric == "si_sdr")]["value"]
    assert oracle.mean() > ident.mean() + 5
    assert (out / "summary.md").read_text().count("oracle-irm") >= 3
    assert (out / "film_si_sdr.png").stat().st_size > 1000
    again = run_benchmark("film", sep, "tiny", tmp_path / "set", out, progress=False, anchors=False)
    assert len(again) == len(scores)  # nothing recomputed
    assert len(pd.read_csv(out / "scores.csv")) == len(scores)


def test_oracle_mask_reconstructs_the_mix(tmp_path):
    build_film_set(tmp_path, count=1, seconds=2.0)
    item = next(load_set(tmp_path))
    est = oracle_irm(item)
    assert abs(sum(est.values()) - item.mix).max() < 1e-4


def test_speech_anchors_improve_a_noisy_utterance(tmp_path):
    from eval.anchors import available_anchors
    from eval.metrics import si_sdr

    build_speech_set(tmp_path, utterances=1)
    ready, missing = available_anchors()
    if not ready:
        pytest.skip(f"no speech anchor installed: {missing}")
    item = next(i for i in load_set(tmp_path) if i.name.endswith("esc10-+0dB"))
    base = si_sdr(item.stems["speech"], item.mix)
    for name, anchor in ready.items():
        est = anchor(item.mix, item.sample_rate)
        assert est.shape == item.mix.shape
        assert si_sdr(item.stems["speech"], est) > base + 3, name


def test_spleeter_anchor_separates_vocals():
    from eval.anchors import spleeter_2stems, spleeter_python
    from eval.metrics import global_sdr

    if not spleeter_python().exists():
        pytest.skip(f"no Spleeter environment at {spleeter_python()} (eval/spleeter_worker.py)")
    song = sorted(p for p in (DATA / "stems" / "musdb-fixtures").iterdir() if p.is_dir())[0]
    stems = {f.stem: audio.read(f)[0][:, : 3 * 44100] for f in song.glob("*.flac")}
    mix = sum(stems.values())
    vocals = spleeter_2stems()(mix, 44100)["vocals"]
    assert vocals.shape == mix.shape
    assert global_sdr(stems["vocals"], vocals) > global_sdr(stems["vocals"], mix) + 5


def test_scores_csv_takes_new_columns(tmp_path):
    from eval.bench import _append

    path = tmp_path / "scores.csv"
    _append(path, pd.DataFrame([{"item": "a", "value": 1.0, "meta_x": 1}]))
    _append(path, pd.DataFrame([{"item": "b", "value": 2.0, "meta_x": 2}]))
    _append(path, pd.DataFrame([{"item": "c", "value": 3.0, "meta_y": "new", "meta_x": 3}]))
    _append(path, pd.DataFrame([{"item": "d", "value": 4.0}]))
    table = pd.read_csv(path)
    assert list(table["item"]) == ["a", "b", "c", "d"]
    assert list(table["value"]) == [1.0, 2.0, 3.0, 4.0]
    assert table.loc[2, "meta_y"] == "new" and pd.isna(table.loc[0, "meta_y"])


def test_synthetic_music_set_is_held_back_deterministic_and_sums(tmp_path):
    from mdx.soundfont import renderer_unavailable

    # Not importorskip: pyfluidsynth without the system library raises ImportError (or
    # OSError) on import, which importorskip lets through as an error.
    if reason := renderer_unavailable():
        pytest.skip(reason)
    from eval.sets import MUSIC_SYNTH_LUFS, build_music_synth_set

    build_music_synth_set(tmp_path / "a", songs=2, seconds=6.0)
    build_music_synth_set(tmp_path / "b", songs=2, seconds=6.0)
    assert _same_set(tmp_path / "a", tmp_path / "b")
    items = list(load_set(tmp_path / "a"))
    assert [i.name for i in items] == ["synth000", "synth001"]
    for item in items:
        assert set(item.stems) <= set(MUSIC_SYNTH_LUFS) and {"drums", "bass", "vocals"} <= set(
            item.stems
        )
        np.testing.assert_allclose(sum(item.stems.values()), item.mix, atol=1e-5)
        assert item.meta["seed"] != 0 and item.meta["sung_speech"]  # not the training seed
        for stem, x in item.stems.items():
            assert np.sqrt(np.mean(x**2)) > 1e-3, stem  # silent stems are not written


def test_music_scores_bsseval_only_when_asked():
    from eval.bench import score
    from eval.sets import SetItem

    rng = np.random.default_rng(0)
    stems = {s: rng.normal(0, 0.1, (2, 44100)).astype(np.float32) for s in ("bass", "drums")}
    item = SetItem("x", sum(stems.values()), stems, 44100)
    est = {k: v + rng.normal(0, 0.01, v.shape).astype(np.float32) for k, v in stems.items()}
    with_bss = {m for _, m, _ in score("music", item, est)}
    without = {m for _, m, _ in score("music", item, est, bss=False)}
    assert {"bss_sdr", "bss_sir"} <= with_bss and "global_sdr" in without
    assert not any(m.startswith("bss_") for m in without)


def test_seeded_sets_do_not_change_when_the_corpus_grows(tmp_path):
    """The corpus in ../shared/data grows; the seeded sets pin the folders they draw from.
    A root whose manifest lacks every pool outside those folders builds the same items."""
    from eval.sets import DEV_EFFECTS, DEV_MUSIC, DEV_SPEECH

    root = default_data_root()
    small = tmp_path / "small"
    small.mkdir()
    for entry in root.iterdir():
        if entry.name != "MANIFEST.csv":
            (small / entry.name).symlink_to(entry)
    pinned = (*DEV_SPEECH, *DEV_MUSIC, *DEV_EFFECTS)
    lines = (root / "MANIFEST.csv").read_text().splitlines(keepends=True)
    kept = [ln for ln in lines[1:] if ",dev," not in ln or ln.startswith(pinned)]
    assert len(kept) < len(lines) - 1, "the corpus should hold dev files outside the pinned ones"
    (small / "MANIFEST.csv").write_text(lines[0] + "".join(kept))
    for name, r in (("grown", root), ("small", small)):
        build_film_set(tmp_path / name / "film", count=2, seconds=2.0, root=r)
        build_speech_set(tmp_path / name / "speech", utterances=1, root=r, snrs_db=(0,))
    for kind in ("film", "speech"):
        grown = list(load_set(tmp_path / "grown" / kind))
        same = list(load_set(tmp_path / "small" / kind))
        assert [i.name for i in grown] == [i.name for i in same]
        for a, b in zip(grown, same):
            np.testing.assert_array_equal(a.mix, b.mix)


def _grown_corpus(tmp_path):
    """The corpus plus one new file in a pinned dev speech folder, one new impulse response
    and one new dev song, listed first in the manifest (a reordered, grown corpus). Folders
    on the way to the new files are made of links to the corpus's own entries."""
    import shutil

    root = default_data_root()
    grown = tmp_path / "grown-root"

    def mirror(relative: str) -> None:  # a real folder of links, to add entries to
        (grown / relative).mkdir(parents=True)
        for entry in (root / relative).iterdir():
            (grown / relative / entry.name).symlink_to(entry)

    mirror(".")
    (grown / "MANIFEST.csv").unlink()
    for relative in ("speech", "speech/cv-hsb", "rir", "stems", "stems/mdb"):
        (grown / relative).unlink()
        mirror(relative)
    lines = (root / "MANIFEST.csv").read_text().splitlines(keepends=True)
    speech = next(ln for ln in lines if ln.startswith("speech/cv-hsb/") and ",dev," in ln)
    old_path = speech.split(",")[0]
    new_path = f"speech/cv-hsb/CVNEW/{Path(old_path).name}"
    (grown / new_path).parent.mkdir()
    shutil.copy(root / old_path, grown / new_path)
    rir = next(ln for ln in lines if ln.startswith("rir/"))
    (grown / "rir" / "new").mkdir()
    shutil.copy(root / rir.split(",")[0], grown / "rir" / "new" / "r.flac")
    song = sorted((root / "stems" / "mdb").iterdir())[-1]
    (grown / "stems" / "mdb" / "0New").symlink_to(song)
    new_rows = [
        new_path + speech[speech.index(",") :],
        "rir/new/r.flac" + rir[rir.index(",") :],
        *(
            ln.replace(f"stems/mdb/{song.name}/", "stems/mdb/0New/")
            for ln in lines
            if ln.startswith(f"stems/mdb/{song.name}/")
        ),
    ]
    (grown / "MANIFEST.csv").write_text(lines[0] + "".join(new_rows) + "".join(lines[1:]))
    return grown


def test_seeded_sets_do_not_change_when_files_join_their_folders(tmp_path):
    """Files added to the very folders a set draws from (and listed first) leave it as it was:
    the sets read the committed eval/pinned/MANIFEST.csv, not the growing manifest."""
    from eval import dev
    from eval.sets import build_music_set

    grown = _grown_corpus(tmp_path)
    for name, r in (("now", default_data_root()), ("grown", grown)):
        build_film_set(tmp_path / name / "film", count=2, seconds=2.0, root=r)
        build_speech_set(tmp_path / name / "speech", utterances=2, root=r, snrs_db=(0,))
        build_music_set(tmp_path / name / "music", root=r)
    for kind in ("film", "speech", "music"):
        now = list(load_set(tmp_path / "now" / kind))
        later = list(load_set(tmp_path / "grown" / kind))
        assert [i.name for i in now] == [i.name for i in later]
        for a, b in zip(now, later):
            np.testing.assert_array_equal(a.mix, b.mix)
    assert [i.name for i in dev.music_items(2.0, grown)] == [i.name for i in dev.music_items(2.0)]


def test_a_pinned_file_that_is_gone_is_named(tmp_path):
    from eval.sets import PINNED_MANIFEST, build_speech_set

    (tmp_path / "MANIFEST.csv").write_text(PINNED_MANIFEST.read_text())
    with pytest.raises(FileNotFoundError, match=r"speech/.*listed in .*pinned/MANIFEST.csv"):
        build_speech_set(tmp_path / "out", utterances=1, root=tmp_path)


def test_music_set_counts_each_recording_once_and_other_is_the_rest(tmp_path, tiny_checkpoint):
    """MUSDB18's "Music Delta - 80s Rock" is MedleyDB's 80sRock (already among the mdb songs);
    on a four-stem MUSDB song the model's guitar and piano are scored inside its "other"."""
    from eval.bench import model_system
    from eval.sets import build_music_set

    names = [f.name for f in build_music_set(tmp_path / "music")]
    assert "80sRock" in names and "Music Delta - 80s Rock" not in names
    musdb = next(i for i in load_set(tmp_path / "music") if "other" in i.stems)
    assert set(musdb.stems) == {"drums", "bass", "other", "vocals"}
    sep = Separator.from_pretrained(str(tiny_checkpoint))
    short = type(musdb)(musdb.name, musdb.mix[:, :44100], {
        k: v[:, :44100] for k, v in musdb.stems.items()
    }, musdb.sample_rate)  # fmt: skip
    est = model_system(sep, "music")(short)
    assert set(est) == {"drums", "bass", "other", "vocals"}
    np.testing.assert_allclose(sum(est.values()), short.mix, atol=1e-4)  # nothing dropped


def test_bench_cli_refuses_a_missing_set_or_model(tmp_path, capsys):
    from eval.bench import main

    for argv, reason in (
        (["film", "--set", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], "no such folder"),
        (["film", "--set", str(tmp_path), "--out", str(tmp_path / "o"), "--model", "nosuch"],
         "nosuch"),
    ):  # fmt: skip
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2
        assert reason in capsys.readouterr().err


def test_a_rebuilt_set_drops_every_cached_score(tmp_path, tiny_checkpoint):
    """Scores cached for one set are not mixed with a set rebuilt from other material under
    the same item names (only a changed model's rows used to be dropped)."""
    import shutil

    sep = Separator.from_pretrained(str(tiny_checkpoint))
    build_film_set(tmp_path / "set", count=1, seconds=2.0)
    out = tmp_path / "out"

    def bench():
        return run_benchmark(
            "film", sep, "tiny", tmp_path / "set", out, progress=False, anchors=False
        )

    def identity(scores):
        return scores[(scores.system == "identity") & (scores.metric == "si_sdr")]["value"]

    first = bench()
    shutil.rmtree(tmp_path / "set")
    build_film_set(tmp_path / "set", count=1, seconds=2.0, seed=5)
    second = bench()
    assert len(second) == len(first)  # replaced, not appended to
    assert identity(second).tolist() != identity(first).tolist()
    assert len(bench()) == len(first)  # the same set again: nothing rescored


def test_results_tables_compare_systems_on_the_same_items():
    """A NaN for one system (a PESQ error) drops that item from every system's mean."""
    from eval.results import _table

    scores = pd.DataFrame(
        [
            {"item": item, "system": system, "stem": "speech", "metric": "pesq_wb", "value": v}
            for item, system, v in (
                ("a", "model", 2.0), ("a", "anchor", 1.0),
                ("b", "model", 4.0), ("b", "anchor", float("nan")),
            )
        ]
    )  # fmt: skip
    rows = {
        cells[1].strip(): cells[2].strip()
        for cells in (
            line.split("|") for line in _table(scores, "pesq_wb", ["speech"], True).splitlines()[2:]
        )
    }
    assert rows == {"anchor": "1.00", "model": "2.00", "(items)": "1"}  # model: not 3.00


def test_a_users_music_set_names_the_item_that_cannot_be_scored(tmp_path, tiny_checkpoint, capsys):
    """A researcher's own MUSDB-layout folder: a stem shorter than its mixture or mono under
    a stereo mixture stopped the whole benchmark with a shape error naming no file; a
    misnamed stem (vocal.wav) became a stem of its own; a missing stem was scored as if the
    rest summed to the mix. Now: one line naming the file, and a warning for the sum."""
    from eval.bench import main
    from eval.sets import SetError

    rng = np.random.default_rng(0)

    def song(folder: Path, **odd: np.ndarray) -> None:
        stems = {s: 0.1 * rng.standard_normal((2, 44100)) for s in ("drums", "bass", "vocals")}
        folder.mkdir(parents=True)
        for name, x in {**stems, "mixture": sum(stems.values()), **odd}.items():
            audio.write(folder / f"{name}.wav", x.astype(np.float32), 44100, "wav", "32f")

    song(tmp_path / "good" / "a")
    assert [item.name for item in load_set(tmp_path / "good")] == ["a"]
    song(tmp_path / "short" / "a", bass=np.zeros((2, 22050)))
    with pytest.raises(SetError, match=r"short/a/bass\.wav: 2 channel\(s\) × 22050 samples"):
        list(load_set(tmp_path / "short"))
    song(tmp_path / "mono" / "a", vocals=np.zeros((1, 44100)))
    with pytest.raises(SetError, match=r"vocals\.wav: 1 channel"):
        list(load_set(tmp_path / "mono"))
    song(tmp_path / "misnamed" / "a", vocal=np.zeros((2, 44100)))
    with pytest.raises(SetError, match=r"vocal\.wav: not a stem name"):
        list(load_set(tmp_path / "misnamed"))
    song(tmp_path / "gone" / "a")
    (tmp_path / "gone" / "a" / "vocals.wav").unlink()
    with pytest.warns(UserWarning, match=r"gone/a: its references \(bass, drums\) do not sum"):
        assert len(list(load_set(tmp_path / "gone"))) == 1
    (tmp_path / "alone" / "a").mkdir(parents=True)  # a mixture alone: read, nothing to score
    audio.write(tmp_path / "alone" / "a" / "mixture.wav", np.zeros((2, 100), np.float32), 44100,
                "wav", "32f")  # fmt: skip
    assert [item.stems for item in load_set(tmp_path / "alone")] == [{}]
    dnr = tmp_path / "dnr" / "1"  # DnR: the file is named as it is on disk, not as its stem
    dnr.mkdir(parents=True)
    for name, channels in (("mix", 2), ("speech", 1), ("music", 2), ("sfx", 2)):
        audio.write(dnr / f"{name}.wav", np.zeros((channels, 100), np.float32), 44100, "wav",
                    "32f")  # fmt: skip
    with pytest.raises(SetError, match=r"dnr/1/speech\.wav: 1 channel"):
        list(load_set(dnr.parent))
    argv = ["music", "--model", str(tiny_checkpoint), "--set", str(tmp_path / "short"),
            "--out", str(tmp_path / "out"), "--no-anchors"]  # fmt: skip
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("python -m eval: ") and "bass.wav" in lines[-1], lines
