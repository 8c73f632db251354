"""Function-preserving growth of a trained dual-path model: more layers, a wider mask head.

``python -m demix.grow SRC DST [--layers N] [--mask-hidden H]``

A bigger model trained from scratch would need many CPU-hours to catch up with the shipped
one; a grown one starts exactly where the trained one is (same outputs) and only has to learn
what the new capacity adds:

- new dual-path layers go after the trained ones (before the band attention, if any); their
  output projections are zero, so each new layer starts as the identity (its residual);
- new hidden units of each mask head get fresh input weights and zero output weights, so
  they add nothing until training moves them.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from demix.checkpoint import load_checkpoint, save_checkpoint
from demix.models.dualpath import DualPathBlock, DualPathModel


def grow_dualpath(
    model: DualPathModel,
    layers: int | None = None,
    mask_hidden: int | None = None,
    seed: int = 0,
) -> DualPathModel:
    """A copy of ``model`` with ``layers`` dual-path layers and mask heads ``mask_hidden``
    wide that computes the same function (up to float rounding).

    Args:
        model: a trained ``dualpath`` model with the ``prenorm`` block.
        layers: the new number of dual-path layers (≥ the current; None keeps it).
        mask_hidden: the new mask-head width (≥ the current; None keeps it).
        seed: seeds the fresh weights of the new layers and hidden units.
    """
    old = model.config
    if old.block != "prenorm":
        raise ValueError(f"only the prenorm block can grow (this model has {old.block!r})")
    layers = old.layers if layers is None else layers
    mask_hidden = old.mask_hidden if mask_hidden is None else mask_hidden
    if layers < old.layers or mask_hidden < old.mask_hidden:
        raise ValueError(
            f"a model only grows: layers {old.layers} → {layers}, "
            f"mask_hidden {old.mask_hidden} → {mask_hidden}"
        )
    torch.manual_seed(seed)
    grown = DualPathModel(dataclasses.replace(old, layers=layers, mask_hidden=mask_hidden))
    source = model.state_dict()
    target = grown.state_dict()
    for key, value in source.items():
        new_key = key
        if key.startswith("blocks.") and old.band_attention:
            index, rest = key[len("blocks.") :].split(".", 1)
            if int(index) == old.layers:  # the attention block moves behind the new layers
                new_key = f"blocks.{layers}.{rest}"
        slot = target[new_key]
        if slot.shape == value.shape:
            slot.copy_(value)
        elif key.startswith("mask_heads.") and ".fc." in key:  # [hidden, dim] or [hidden]
            slot[: value.shape[0]].copy_(value)
        elif key.startswith("mask_heads.") and ".weights." in key:  # [count, hidden, fan_out]
            slot.zero_()
            slot[:, : value.shape[1]].copy_(value)
        else:
            raise ValueError(f"cannot grow {key}: {tuple(value.shape)} → {tuple(slot.shape)}")
    grown.load_state_dict(target)
    with torch.no_grad():
        for block in grown.blocks[old.layers : layers]:
            assert isinstance(block, DualPathBlock)
            for path in (block.time, block.band):
                path.proj.weight.zero_()
                path.proj.bias.zero_()
    return grown.train(model.training)


def main(argv: list[str] | None = None) -> int:
    """Grow a checkpoint and save it with its provenance extended."""
    p = argparse.ArgumentParser(prog="python -m demix.grow", description=__doc__.splitlines()[0])
    p.add_argument("src", help="a dualpath checkpoint (.safetensors)")
    p.add_argument("dst", help="where to write the grown checkpoint")
    p.add_argument("--layers", type=int, help="dual-path layers (default: as in src)")
    p.add_argument("--mask-hidden", type=int, help="mask-head width (default: as in src)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        model, meta = load_checkpoint(args.src)
        if meta["model"] != "dualpath":
            raise ValueError(f"only dualpath models grow (this one is {meta['model']!r})")
        grown = grow_dualpath(model, args.layers, args.mask_hidden, args.seed)
    except ValueError as exc:
        print(f"{args.src}: {exc}", file=sys.stderr)
        return 1
    info = dict(meta["info"])
    info["grown_from"] = (
        f"{Path(args.src).name}: layers {model.config.layers} → {grown.config.layers}, "
        f"mask_hidden {model.config.mask_hidden} → {grown.config.mask_hidden}"
    )
    save_checkpoint(args.dst, grown, "dualpath", info)
    params = sum(p.numel() for p in grown.parameters())
    print(f"wrote {args.dst}: {params / 1e6:.2f} M parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
