"""Failure-analysis helpers (eval.analysis) and remixing (demix.remix), on known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from demix import remix
from demix.data import default_data_root
from eval import analysis

RATE = 8000


def _stems(seconds: float = 4.0, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    return {name: rng.normal(0, 0.1, (2, n)).astype(np.float32) for name in ("a", "b", "c")}


def test_leakage_of_a_perfect_separation_is_diagonal():
    refs = _stems()
    m = analysis.leakage_matrix(refs, refs, RATE)
    assert list(m.index) == ["a", "b", "c"] and list(m.columns) == ["a", "b", "c"]
    np.testing.assert_allclose(np.diag(m.to_numpy()), 0.0, atol=1e-6)
    off = m.to_numpy()[~np.eye(3, dtype=bool)]
    assert (off < -60).all()


def test_leakage_measures_what_leaks_and_when():
    refs = _stems()
    half = refs["a"].shape[1] // 2
    leaky = refs["b"].copy()
    leaky[:, :half] += 0.1 * refs["a"][:, :half]  # −20 dB of "a" in "b", first half only
    est = {"a": refs["a"], "b": leaky, "c": refs["c"]}
    m = analysis.leakage_matrix(refs, est, RATE)
    assert m.loc["a", "b"] == pytest.approx(-20 + 10 * np.log10(0.5), abs=0.3)
    assert m.loc["b", "b"] == pytest.approx(0.0, abs=0.05)
    mix = sum(refs.values())
    identity = analysis.leakage_matrix(refs, {k: mix for k in refs}, RATE)
    np.testing.assert_allclose(identity.to_numpy(), 0.0, atol=0.05)  # everything everywhere


def test_leakage_of_a_silent_stem_is_nan_and_means_average_power():
    refs = _stems()
    refs["c"] = np.zeros_like(refs["c"])
    m = analysis.leakage_matrix(refs, refs, RATE)
    assert m.loc["c"].isna().all()
    m1 = pd.DataFrame([[0.0, -10.0]], index=["x"], columns=["x", "y"])
    m2 = pd.DataFrame([[0.0, -30.0]], index=["x"], columns=["x", "y"])
    mean = analysis.mean_leakage([m1, m2])
    assert mean.loc["x", "y"] == pytest.approx(10 * np.log10((0.1 + 0.001) / 2), abs=1e-6)


def test_frame_metrics_find_the_broken_second():
    refs = _stems(seconds=5.0)
    est = {k: v + 0.01 * np.random.default_rng(1).normal(size=v.shape) for k, v in refs.items()}
    est["b"] = est["b"].copy()
    est["b"][:, 3 * RATE : 4 * RATE] = refs["a"][:, 3 * RATE : 4 * RATE]  # second 3 is wrong
    frames = analysis.frame_metrics(refs, est, RATE)
    assert len(frames) == 3 * 5
    assert set(frames.columns) >= {"stem", "frame", "start_s", "sdr", "sir", "sar", "isr"}
    worst = analysis.worst_segments(frames, k=2)
    assert worst.loc[0, "stem"] == "b" and worst.loc[0, "start_s"] == 3.0
    assert worst["sdr"].is_monotonic_increasing
    only_a = analysis.worst_segments(frames, k=1, stem="a")
    assert only_a.loc[0, "stem"] == "a" and only_a.loc[0, "sdr"] > 15
    # A frame where the reference is 40 dB down (a fade-out) is not ranked, however bad.
    refs["c"][:, 4 * RATE :] *= 0.01
    est["c"] = refs["c"].copy()
    est["c"][:, 4 * RATE :] = refs["a"][:, 4 * RATE :]
    frames = analysis.frame_metrics(refs, est, RATE)
    quiet = frames[(frames["stem"] == "c") & (frames["frame"] == 4)]
    assert quiet["ref_db"].iloc[0] < frames["ref_db"].max() - 35
    assert 4.0 not in set(analysis.worst_segments(frames, k=15, stem="c")["start_s"])
    clip = analysis.excerpt(est["b"], RATE, 3.0, 1.0)
    np.testing.assert_array_equal(clip, refs["a"][:, 3 * RATE : 4 * RATE])


def test_level_buckets():
    assert analysis.level_bucket(-9) == "< -6 dB"
    assert analysis.level_bucket(-3) == "-6…0 dB"
    assert analysis.level_bucket(2) == "0…6 dB"
    assert analysis.level_bucket(6) == "≥ 6 dB"
    assert analysis.level_bucket(float("nan")) == "n/a"


def test_remix_gains_mute_and_solo():
    stems = {"dialogue": np.ones((2, 4), np.float32), "music": 2 * np.ones((2, 4), np.float32)}
    np.testing.assert_allclose(remix(stems), 3.0)
    np.testing.assert_allclose(remix(stems, {"dialogue": 20 * np.log10(2)}), 4.0, rtol=1e-6)
    np.testing.assert_allclose(remix(stems, mute={"music"}), 1.0)
    np.testing.assert_allclose(remix(stems, solo={"music"}), 2.0)
    np.testing.assert_allclose(remix(stems, {"music": -100.0}), 1.0)  # below MUTE_DB
    with pytest.raises(ValueError, match="unknown stems"):
        remix(stems, {"effects": 3.0})


def test_remix_of_two_heads_is_the_mix_at_unity_gain():
    """Head "both": film stems and music stems each sum to the mix; summing all of them
    would be 6 dB too loud."""
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(2, 64)).astype(np.float32)
    film = {"dialogue": 0.5 * mix, "music": 0.3 * mix, "effects": 0.2 * mix}
    music = {"vocals": 0.6 * mix, "music_rest": 0.4 * mix}
    stems = {**film, **music}
    groups = [list(film), list(music)]
    np.testing.assert_allclose(remix(stems, groups=groups), mix, atol=1e-6)
    np.testing.assert_allclose(remix(stems), 2 * mix, atol=1e-6)  # one group: a plain sum
    # Muting film dialogue removes it from the film estimate only: half its level in all.
    np.testing.assert_allclose(
        remix(stems, mute={"dialogue"}, groups=groups), mix - 0.25 * mix, atol=1e-6
    )
    with pytest.raises(ValueError, match="partition"):
        remix(stems, groups=[list(film)])


@pytest.mark.skipif(
    not (default_data_root() / "MANIFEST.csv").exists(), reason="development data not found"
)
def test_film_categories_and_grouped_scores(tmp_path):
    from eval.sets import build_film_set, load_set

    build_film_set(tmp_path / "film", count=3, seconds=2.0)
    groups = analysis.manifest_groups()
    cats = pd.DataFrame([analysis.film_categories(i, groups) for i in load_set(tmp_path / "film")])
    assert list(cats["item"]) == ["film-000", "film-001", "film-002"]
    esc10 = {"Dog bark", "Rain", "Sea waves", "Baby cry", "Clock tick", "Person sneeze",
             "Helicopter", "Chainsaw", "Rooster", "Fire crackling"}  # fmt: skip
    assert all(set(c) <= esc10 and c for c in cats["effect_classes"])
    assert set(cats["speech_source"]) <= {"cv-hsb", "librispeech"}
    assert cats["music_type"].iloc[0] != "other"
    scores = pd.DataFrame(
        {
            "item": ["film-000", "film-001", "film-002"],
            "system": "m",
            "stem": "dialogue",
            "metric": "si_sdr",
            "value": [1.0, 2.0, 6.0],
        }
    )
    table = analysis.by_category(scores, cats, "speech_source", "m", "dialogue")
    assert table["count"].sum() == 3
    assert table["mean"].min() <= table["mean"].max()


def test_song_stem_shares_sum_to_one_and_skip_silent_stems(tiny_checkpoint):
    """eval.song_shares: the outputs sum to the input, so each song stem's shares over the
    output stems sum to 1 (any model, here a random one); a silent stem has no row."""
    from demix import Separator
    from eval.song_shares import stem_shares

    rate = 44100
    rng = np.random.default_rng(0)
    t = np.arange(3 * rate) / rate
    stems = {
        "vocals": (0.1 * np.sin(2 * np.pi * 220 * t) * np.ones((2, 1))).astype(np.float32),
        "drums": (0.05 * rng.normal(size=(2, t.size))).astype(np.float32),
        "bass": np.zeros((2, t.size), np.float32),
    }
    sep = Separator.from_pretrained(str(tiny_checkpoint), backend="torch")
    shares = stem_shares(sep, stems, rate, head="film")
    assert set(shares) == {"vocals", "drums"}
    for name, row in shares.items():
        assert set(row) == {"dialogue", "music", "effects"}
        assert sum(row.values()) == pytest.approx(1.0, abs=1e-3), name
