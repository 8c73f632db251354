"""Self-describing safetensors checkpoints: round trip and strict loading."""

import json

import pytest
import torch
from safetensors.torch import save_file

from cdx import CDX_STEMS
from demix.checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint
from demix.models import BandSplitConfig, BandSplitModel


def _model():
    torch.manual_seed(1)
    return BandSplitModel(
        BandSplitConfig(dim=8, layers=1, attention_heads=2, heads={"film": CDX_STEMS})
    )


def _metadata(model, **extra):
    meta = {
        "format_version": 1,
        "model": "bandsplit",
        "config": {},
        "heads": {},
        "sample_rate": 44100,
        "info": {},
    }
    from demix.config import to_dict

    meta["config"] = to_dict(model.config)
    meta.update(extra)
    return meta


def test_round_trip_same_outputs_and_metadata(tmp_path):
    model = _model().eval()
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, "bandsplit", {"data": "unit test", "steps": 3})
    loaded, meta = load_checkpoint(path)
    assert meta["heads"] == {"film": list(CDX_STEMS)}
    assert meta["info"] == {"data": "unit test", "steps": 3}
    assert meta["sample_rate"] == 44100
    mix = torch.randn(1, 2, 4096)
    with torch.no_grad():
        torch.testing.assert_close(model(mix)["film"], loaded(mix)["film"])
    assert not list(tmp_path.glob("*.tmp"))


def test_refuses_unknown_metadata_key(tmp_path):
    model = _model()
    path = tmp_path / "m.safetensors"
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, path, metadata={"demix": json.dumps(_metadata(model, pickle="x"))})
    with pytest.raises(CheckpointError, match="pickle"):
        read_metadata(path)


def test_refuses_unknown_config_key(tmp_path):
    model = _model()
    meta = _metadata(model)
    meta["config"]["secret_layer"] = 3
    path = tmp_path / "m.safetensors"
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, path, metadata={"demix": json.dumps(meta)})
    with pytest.raises(CheckpointError, match="secret_layer"):
        load_checkpoint(path)


def test_refuses_unexpected_or_missing_tensors(tmp_path):
    model = _model()
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    meta = {"demix": json.dumps(_metadata(model))}
    extra = dict(tensors, **{"evil.weight": torch.zeros(1)})
    save_file(extra, tmp_path / "extra.safetensors", metadata=meta)
    with pytest.raises(CheckpointError, match="unexpected"):
        load_checkpoint(tmp_path / "extra.safetensors")
    fewer = dict(list(tensors.items())[1:])
    save_file(fewer, tmp_path / "fewer.safetensors", metadata=meta)
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path / "fewer.safetensors")


def test_refuses_non_checkpoints(tmp_path):
    bogus = tmp_path / "x.safetensors"
    bogus.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError):
        load_checkpoint(bogus)
    plain = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match="no demix metadata"):
        load_checkpoint(plain)


def test_checkpoint_file_has_plain_permissions(tmp_path):
    import os

    from demix.checkpoint import save_checkpoint
    from demix.models import BandSplitConfig, BandSplitModel

    umask = os.umask(0o022)
    try:
        path = tmp_path / "m.safetensors"
        model = BandSplitModel(BandSplitConfig(dim=8, layers=1, heads={"a": ("x", "y")}))
        save_checkpoint(path, model, "bandsplit")
        assert path.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(umask)
