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


def test_demix_small_beats_identity_on_dev_mixtures():
    from eval.dev import evaluate, film_items, music_items, summary

    sep = Separator.from_pretrained("demix-small")
    items = film_items(4) + music_items(8.0)[:3]
    table = summary(evaluate(sep, items))
    assert {"dialogue", "music", "effects", "drums", "bass", "vocals", "guitar"} <= set(table)
    for stem, (model, identity, n) in table.items():
        assert n > 0 and np.isfinite(model)
        assert model > identity, f"{stem}: {model:.2f} dB <= identity {identity:.2f} dB"
