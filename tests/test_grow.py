"""Growing a trained dual-path model keeps its outputs (demix.grow)."""

import pytest
import torch

from cdx import CDX_STEMS
from demix.checkpoint import load_checkpoint, save_checkpoint
from demix.grow import grow_dualpath, main
from demix.models import DualPathConfig, DualPathModel
from mdx import MDX_STEMS


def trained_like(band_attention: bool) -> DualPathModel:
    """A small dual-path model whose every weight is non-trivial (as after training)."""
    torch.manual_seed(1)
    config = DualPathConfig(
        sample_rate=16000,
        n_fft=256,
        hop_samples=64,
        band_groups=((4, 8), (4, 16), (1, 0)),
        dim=16,
        layers=2,
        rnn_hidden=8,
        mask_hidden=12,
        band_attention=band_attention,
        attention_heads=2,
        segment_seconds=0.5,
        heads={"film": CDX_STEMS, "music": MDX_STEMS},
    )
    model = DualPathModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("band_attention", [False, True])
def test_grown_model_computes_the_same_stems(band_attention):
    model = trained_like(band_attention)
    grown = grow_dualpath(model, layers=4, mask_hidden=20).eval()
    assert grown.config.layers == 4 and grown.config.mask_hidden == 20
    n_old = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in grown.parameters()) > n_old
    mix = torch.randn(2, 2, 8000)
    with torch.no_grad():
        before, after = model(mix), grown(mix)
    for head in before:
        torch.testing.assert_close(after[head], before[head], rtol=1e-4, atol=1e-5)


def test_grown_model_learns_through_its_new_weights():
    grown = grow_dualpath(trained_like(False), layers=3, mask_hidden=16)
    out = grown(torch.randn(1, 2, 4000))
    (out["film"].square().mean() + out["music"].square().mean()).backward()
    new_layer = grown.blocks[2]
    assert new_layer.time.proj.weight.grad.abs().sum() > 0
    head = grown.mask_heads["music"]
    assert head.weights[0].grad[:, 12:].abs().sum() > 0  # the new hidden units' outputs


def test_grow_refuses_to_shrink():
    with pytest.raises(ValueError, match="only grows"):
        grow_dualpath(trained_like(False), layers=1)


def test_grow_cli_writes_a_loadable_checkpoint(tmp_path, capsys):
    src, dst = tmp_path / "small.safetensors", tmp_path / "grown.safetensors"
    model = trained_like(False)
    save_checkpoint(src, model, "dualpath", {"name": "test"})
    assert main([str(src), str(dst), "--layers", "3", "--mask-hidden", "16"]) == 0
    grown, meta = load_checkpoint(dst)
    assert grown.config.layers == 3 and grown.config.mask_hidden == 16
    assert "layers 2 → 3" in meta["info"]["grown_from"]
    assert main([str(dst), str(tmp_path / "x.safetensors"), "--layers", "1"]) == 1
    assert "only grows" in capsys.readouterr().err
