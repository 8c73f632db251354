"""Shared fixtures: a tiny, randomly initialised two-head checkpoint (no trained weights)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cdx import CDX_STEMS
from demix.checkpoint import save_checkpoint
from demix.models import BandSplitConfig, BandSplitModel
from mdx import MDX_STEMS


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small band-split model with the film and music heads, saved as a demix checkpoint.

    Returns:
        Path of the ``.safetensors`` file (usable as ``--model PATH`` or ``from_pretrained``).
    """
    torch.manual_seed(0)
    config = BandSplitConfig(
        dim=16,
        layers=2,
        segment_seconds=2.0,
        heads={"film": CDX_STEMS, "music": MDX_STEMS},
    )
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.safetensors"
    save_checkpoint(path, BandSplitModel(config), "bandsplit", {"test": True})
    return path
