"""The registered models (band-split, dual-path): shapes, heads, one backbone pass for several
heads, even initial split, level handling, checkpoint round trip."""

import pytest
import torch

from cdx import CDX_STEMS
from demix.checkpoint import load_checkpoint, save_checkpoint
from demix.models import BandSplitConfig, BandSplitModel, DualPathConfig, DualPathModel
from demix.models.bandsplit import band_layout
from demix.registry import build_model, model_names
from mdx import MDX_STEMS

HEADS = {"film": CDX_STEMS, "music": MDX_STEMS}


MODELS = ["bandsplit", "dualpath"]


def tiny(name="bandsplit", **kw):
    torch.manual_seed(0)
    if name == "dualpath":
        config = DualPathConfig(dim=16, layers=2, rnn_hidden=8, mask_hidden=16, heads=HEADS, **kw)
        return DualPathModel(config).eval()
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


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("length", [1024, 44100 + 17])
def test_forward_shapes_for_each_head(length, name):
    model = tiny(name)
    mix = torch.randn(2, 2, length)
    with torch.no_grad():
        out = model(mix)
    assert set(out) == {"film", "music"}
    assert out["film"].shape == (2, 3, 2, length)
    assert out["music"].shape == (2, 6, 2, length)
    assert torch.isfinite(out["music"]).all()


@pytest.mark.parametrize("name", MODELS)
def test_both_heads_cost_one_backbone_pass(name):
    model = tiny(name)
    calls = []
    model.blocks.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        out = model(torch.randn(1, 2, 8192), heads=["film", "music"])
    assert len(calls) == 1 and set(out) == {"film", "music"}
    with torch.no_grad():
        film_only = model(torch.randn(1, 2, 8192), heads=["film"])
    assert set(film_only) == {"film"}


@pytest.mark.parametrize("name", MODELS)
def test_initial_masks_split_the_mix_evenly(name):
    model = tiny(name)
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


@pytest.mark.parametrize("name", MODELS)
def test_unknown_head_and_wrong_channels_rejected(name):
    model = tiny(name)
    with pytest.raises(KeyError):
        model(torch.randn(1, 2, 4096), heads=["karaoke"])
    with pytest.raises(ValueError):
        model(torch.randn(1, 1, 4096))


def test_dualpath_is_level_invariant_and_silence_stays_silent():
    """The dual-path model sees its input over the mix's RMS and masks the original spectrum:
    a louder mix gives the same stems, louder by the same factor."""
    model = tiny("dualpath")
    mix = 0.1 * torch.randn(1, 2, 22050)
    with torch.no_grad():
        quiet = model(mix)["film"]
        loud = model(8.0 * mix)["film"]
        silent = model(torch.zeros(1, 2, 22050))["film"]
    torch.testing.assert_close(loud, 8.0 * quiet, atol=1e-4, rtol=1e-3)
    assert silent.abs().max() == 0


@pytest.mark.parametrize("block", ["prenorm", "speechbrain"])
def test_dualpath_blocks_and_checkpoint_round_trip(tmp_path, block):
    if block == "speechbrain":
        pytest.importorskip("speechbrain", reason="speechbrain not installed (demix[train])")
    model = tiny("dualpath", block=block, band_attention=True, attention_heads=2)
    path = tmp_path / "dp.safetensors"
    save_checkpoint(path, model, "dualpath", {"test": True})
    loaded, meta = load_checkpoint(path)
    assert meta["model"] == "dualpath" and loaded.config == model.config
    mix = torch.randn(1, 2, 8192)
    with torch.no_grad():
        torch.testing.assert_close(loaded(mix)["music"], model(mix)["music"])
    with pytest.raises(ValueError, match="rnn"):
        tiny("dualpath", rnn="transformer")


@pytest.mark.parametrize("grad", [False, True])
def test_synthesise_is_masks_times_spectrum_then_istft(grad):
    model = tiny("dualpath")
    cfg = model.config
    mix = torch.randn(2, 2, 3000)
    spec = model.analyse(mix)  # [b, c, f, n, 2]
    b, c, f, n, _ = spec.shape
    masks = torch.randn(b, n, f + 3, 3, c, 2)[:, :, :f]  # a slice, as the mask heads give
    masks.requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        stems = model.synthesise(spec, masks, mix.shape[-1])
    # Reference, written the plain way: est[b, s, c, f, n] = mask[b, n, f, s, c] * spec[b, c, f, n]
    m = torch.complex(masks[..., 0], masks[..., 1]).detach()
    z = torch.complex(spec[..., 0], spec[..., 1])
    est = torch.einsum("bnfsc,bcfn->bscfn", m, z)
    ref = torch.istft(
        est.reshape(-1, f, n), cfg.n_fft, cfg.hop_samples, window=model.window, length=3000
    ).reshape(b, 3, c, 3000)
    torch.testing.assert_close(stems.detach(), ref, rtol=1e-4, atol=1e-5)
    if grad:
        stems.square().sum().backward()
        assert masks.grad is not None and masks.grad.abs().sum() > 0
