"""Self-describing checkpoints: safetensors weights + JSON metadata in the same file.

The safetensors header's ``__metadata__`` holds one key, ``demix``, whose JSON value names
the format version, the registered model and its full config, the heads and their stems, the
sample rate, and free-form provenance (training data and licences, steps, metrics). Loading
never unpickles anything and refuses unknown metadata keys, config keys or tensor names.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from demix.audio import temporary_path
from demix.config import to_dict
from demix.registry import build_model

FORMAT_VERSION = 1
_KNOWN_KEYS = {"format_version", "model", "config", "heads", "sample_rate", "info"}


class CheckpointError(ValueError):
    """A checkpoint file that is not a valid demix checkpoint."""


def save_checkpoint(
    path: str | os.PathLike, model: torch.nn.Module, name: str, info: dict[str, Any] | None = None
) -> None:
    """Write ``model`` (registered as ``name``) and its metadata to ``path``, atomically.

    Args:
        path: destination ``.safetensors`` file.
        model: a registered model with ``config``, ``heads`` and ``sample_rate`` attributes.
        name: the registry name the model is rebuilt with.
        info: provenance (data, licences, steps, metrics) stored as JSON.
    """
    meta = {
        "format_version": FORMAT_VERSION,
        "model": name,
        "config": to_dict(model.config),
        "heads": {h: list(s) for h, s in model.heads.items()},
        "sample_rate": model.sample_rate,
        "info": info or {},
    }
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        save_file(tensors, str(tmp), metadata={"demix": json.dumps(meta)})
        # safetensors writes a new file with mode 0600: give it a plain file's permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's metadata dict (validated keys), without loading weights."""
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("demix")
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types
        raise CheckpointError(f"{path}: not a safetensors file ({exc})") from exc
    if raw is None:
        raise CheckpointError(f"{path}: no demix metadata (not a demix checkpoint)")
    meta = json.loads(raw)
    unknown = sorted(set(meta) - _KNOWN_KEYS)
    if unknown:
        raise CheckpointError(f"{path}: unknown metadata key(s) {', '.join(unknown)}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format version {meta.get('format_version')} "
            f"(this demix reads {FORMAT_VERSION})"
        )
    return meta


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the registered model from ``path`` and load its weights (strictly).

    Returns:
        (model in eval mode, metadata dict).
    """
    meta = read_metadata(path)
    try:
        model = build_model(meta["model"], meta["config"])
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild model ({exc})") from exc
    tensors = {}
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        for key in f.keys():
            tensors[key] = f.get_tensor(key)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model.to(device).eval(), meta


def export_checkpoint(
    src: str | os.PathLike, dst: str | os.PathLike, info_update: dict[str, Any] | None = None
) -> None:
    """Copy a checkpoint (e.g. a run's EMA weights) to ``dst`` with extra provenance merged
    into its ``info`` (measured metrics, model card summary)."""
    model, meta = load_checkpoint(src)
    info = dict(meta["info"], **(info_update or {}))
    save_checkpoint(dst, model, meta["model"], info)


def main(argv: list[str] | None = None) -> int:
    """``python -m demix.checkpoint SRC DST [--info FILE.json]``: export a checkpoint."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m demix.checkpoint", description=main.__doc__)
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--info", help="JSON file whose keys are merged into the metadata info")
    args = parser.parse_args(argv)
    update = json.loads(Path(args.info).read_text()) if args.info else {}
    export_checkpoint(args.src, args.dst, update)
    print(f"wrote {args.dst} ({Path(args.dst).stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
