"""The band-split model: shapes, heads, one backbone pass for several heads."""

import pytest
import torch

from cdx import CDX_STEMS
from demix.models import BandSplitConfig, BandSplitModel
from demix.models.bandsplit import band_layout
from demix.registry import build_model, model_names
from mdx import MDX_STEMS

HEADS = {"film": CDX_STEMS, "music": MDX_STEMS}


def tiny(**kw):
    torch.manual_seed(0)
    return BandSplitModel(BandSplitConfig(dim=16, layers=2, heads=HEADS, **kw)).eval()


def test_registry_builds_bandsplit_from_mapping():
    assert "bandsplit" in model_names()
    model = build_model(
        "bandsplit",
        {"dim": 8, "layers": 1, "attention_heads": 2, "heads": {"film": list(CDX_STEMS)}},
    )
    assert model.heads == {"film": CDX_STEMS}
    with pytest.raises(KeyError):
        build_model("no-such-model")


@pytest.mark.parametrize("length", [1024, 44100 + 17])
def test_forward_shapes_for_each_head(length):
    model = tiny()
    mix = torch.randn(2, 2, length)
    with torch.no_grad():
        out = model(mix)
    assert set(out) == {"film", "music"}
    assert out["film"].shape == (2, 3, 2, length)
    assert out["music"].shape == (2, 6, 2, length)
    assert torch.isfinite(out["music"]).all()


def test_both_heads_cost_one_backbone_pass():
    model = tiny()
    calls = []
    model.blocks.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        out = model(torch.randn(1, 2, 8192), heads=["film", "music"])
    assert len(calls) == 1 and set(out) == {"film", "music"}
    with torch.no_grad():
        film_only = model(torch.randn(1, 2, 8192), heads=["film"])
    assert set(film_only) == {"film"}


def test_initial_masks_split_the_mix_evenly():
    model = tiny()
    for head in model.mask_heads.values():  # zero the learned part: only the biases remain
        for w in head.weights:
            torch.nn.init.zeros_(w)
    mix = torch.randn(1, 2, 16384)
    with torch.no_grad():
        film = model(mix, heads=["film"])["film"]
    torch.testing.assert_close(film.sum(dim=1), mix, atol=1e-4, rtol=1e-4)


def test_band_layout_covers_all_bins():
    layout = band_layout(1025, ((16, 4), (12, 16), (8, 48), (4, 0)))
    start, count, width = layout[-1]
    assert start + count * width >= 1025
    with pytest.raises(ValueError):
        band_layout(1025, ((16, 4),))


def test_unknown_head_and_wrong_channels_rejected():
    model = tiny()
    with pytest.raises(KeyError):
        model(torch.randn(1, 2, 4096), heads=["karaoke"])
    with pytest.raises(ValueError):
        model(torch.randn(1, 1, 4096))
