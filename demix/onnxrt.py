"""ONNX export of a model's core, and the ONNX Runtime backend of ``Separator``.

What is exported is ``MaskingModel.core``: the network between the STFT and the iSTFT, both
heads, on real tensors (``spec[b, c, f, n, 2]`` and the mix's RMS ``level[b]`` in, one
``masks_<head>[b, n, f, s, c, 2]`` per head out), with the batch and frame axes dynamic. The
STFT and iSTFT stay in torch around it (``OnnxModel``): ONNX has an STFT op (opset 17) but no
inverse one, and both take a few per cent of the time. The file carries the checkpoint's
metadata (``demix`` in ``metadata_props``, the same JSON as a safetensors checkpoint), so an
exported model is self-describing and loads offline like any checkpoint.

``quantize_onnx`` makes an int8 variant (ONNX Runtime's dynamic quantisation: LSTM and
matrix-product weights stored as int8, activations quantised per call): on 2 CPU cores
whole separations took 0.82x float32's time (film head) before the per-band layers were
quantised too, and every ``eval.dev`` stem of demix-small v4 stayed within 0.05 dB of the
float32 export's (docs/EXPERIMENTS.md). It is the ``onnxruntime-int8``
backend, the default on the CPU.

Exported with torch's TorchScript-based exporter (``dynamo=False``: the dynamo exporter
needs onnxscript and gave nothing more here); ``nn.RMSNorm`` is swapped for the same
arithmetic in plain ops first, since that exporter has no ``aten::rms_norm`` at opset 17.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from demix.audio import temporary_path
from demix.checkpoint import load_checkpoint
from demix.models.spectral import mix_rms
from demix.registry import build_model

ONNX_OPSET = 17
# Exports kept in the cache (the most recently used); older ones are removed. A checkpoint
# run on the default int8 backend leaves four (float32 and int8, all heads and film only).
CACHE_KEEP = 16
_EXPORT_FRAMES = 64  # frames of the example input traced (the axis is dynamic)


class OnnxError(ValueError):
    """An ONNX file that is not a demix export, or an ONNX Runtime that cannot run it."""


class _PlainRMSNorm(nn.Module):
    """``nn.RMSNorm`` in elementary ops (same weights, same eps) for the exporter."""

    def __init__(self, norm: nn.RMSNorm):
        super().__init__()
        self.weight = norm.weight
        self.eps = norm.eps if norm.eps is not None else torch.finfo(torch.float32).eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class _Core(nn.Module):
    """``model.core`` for ``heads`` (default every head), in the order of ``model.heads``."""

    def __init__(self, model: nn.Module, heads: Sequence[str] | None = None):
        super().__init__()
        self.model = copy.deepcopy(model).float().eval()
        for module in list(self.model.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.RMSNorm):
                    setattr(module, name, _PlainRMSNorm(child))
        self.heads = [h for h in model.heads if heads is None or h in heads]

    def forward(self, spec: torch.Tensor, level: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.core(spec, level, self.heads))


def export_onnx(
    model: nn.Module,
    metadata: dict[str, Any],
    path: str | os.PathLike,
    heads: Sequence[str] | None = None,
) -> Path:
    """Write ``model``'s core (see the module docstring) to ``path`` as ONNX, atomically,
    with ``metadata`` (the checkpoint's) inside; only ``heads`` (default: all) are computed.

    Raises:
        OnnxError: the ``onnx`` package is missing.
    """
    try:
        import onnx  # noqa: F401 - checked here: the exporter and _stamp need it
    except ImportError as exc:  # the exporter itself needs it
        raise OnnxError("exporting to ONNX needs the onnx package: pip install onnx") from exc
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    core = _Core(model.to("cpu"), heads)
    samples = (_EXPORT_FRAMES - 1) * model.config.hop_samples
    mix = 0.1 * torch.randn(1, model.channels, samples, generator=torch.Generator().manual_seed(0))
    spec, level = model.analyse(mix), mix_rms(mix)
    outputs = [f"masks_{head}" for head in core.heads]
    axes = {"spec": {0: "batch", 3: "frames"}, "level": {0: "batch"}}
    axes.update({name: {0: "batch", 1: "frames"} for name in outputs})
    tmp = temporary_path(path)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's notes on LSTMs and batch sizes
            torch.onnx.export(
                core, (spec, level), str(tmp), input_names=["spec", "level"],
                output_names=outputs, dynamic_axes=axes, opset_version=ONNX_OPSET,
                dynamo=False,
            )  # fmt: skip
        _stamp(tmp, json.dumps(metadata))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _stamp(path: Path, metadata: str) -> None:
    """Set an ONNX file's demix metadata (JSON, as in a safetensors checkpoint) in place."""
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = "demix", metadata
    proto.producer_name = "demix"
    onnx.save(proto, str(path))


# What dynamic quantisation stores as int8: the BiLSTMs (most of the time) and the linear
# layers, the per-band ones included (exported as MatMuls: ``per_band_linear``).
INT8_OPS = ("LSTM", "MatMul")


def quantize_onnx(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Write the int8 variant of an ``export_onnx`` file to ``path``, atomically: ONNX
    Runtime's dynamic quantisation of ``INT8_OPS`` (int8 weights, activations quantised per
    call); the demix metadata is kept, so the result loads like any export.

    Raises:
        OnnxError: onnxruntime (or onnx) is missing, or ``source`` is not a demix export.
    """
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise OnnxError(
            "int8 quantisation needs onnxruntime and onnx: pip install onnxruntime onnx"
        ) from exc
    source, path = Path(source), Path(path)
    try:
        proto = onnx.load(str(source), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises its own types
        reason = " ".join(str(exc).split())[:200]
        raise OnnxError(f"{source}: not an ONNX model ({reason})") from exc
    meta = {p.key: p.value for p in proto.metadata_props}
    if "demix" not in meta:
        raise OnnxError(f"{source}: no demix metadata (not exported by demix export)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with warnings.catch_warnings(), _quiet_root_logger():
            warnings.simplefilter("ignore")
            try:
                # The quantiser writes "<name>-inferred.onnx" beside its input: processes
                # quantising the same export at once (a Ray batch's workers on a checkpoint's
                # first use) deleted each other's. Each quantises its own copy.
                with tempfile.TemporaryDirectory(prefix=".demix-quant-", dir=path.parent) as work:
                    private = Path(work) / source.name
                    shutil.copyfile(source, private)
                    quantize_dynamic(
                        private,
                        tmp,
                        weight_type=QuantType.QInt8,
                        op_types_to_quantize=list(INT8_OPS),
                    )
            except Exception as exc:  # noqa: BLE001 - the quantiser raises many types
                reason = " ".join(str(exc).split())[:200]
                raise OnnxError(f"{source}: cannot quantise to int8 ({reason})") from exc
        _stamp(tmp, meta["demix"])  # the quantiser keeps it in ORT 1.32; made sure
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _is_int8(path: str | os.PathLike) -> bool:
    """Whether an ONNX file's graph quantises its activations (a ``quantize_onnx`` file)."""
    try:
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # noqa: BLE001 - onnx missing or unreadable: ONNX Runtime has read it
        return False
    return any(node.op_type.startswith("DynamicQuantize") for node in graph.node)


_LOGGING_LOCK = threading.Lock()  # quantisations in several threads restore in turn


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """The quantiser logs advice through ``logging.warning``, which would also install a
    stderr handler on the root logger for good: a null handler stands in while it runs."""
    with _LOGGING_LOCK:
        root = logging.getLogger()
        null = logging.NullHandler()
        root.addHandler(null)
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(previous)
            root.removeHandler(null)


def _onnxruntime_version() -> str:
    """The installed onnxruntime's version ("none" without it): part of an int8 cache key."""
    try:
        import onnxruntime
    except ImportError:
        return "none"
    return onnxruntime.__version__


class OnnxModel(nn.Module):
    """Stands in for a registered model in ``Separator``: STFT and iSTFT in torch, the core
    in an ONNX Runtime session. ``forward(mix[b, c, t], heads) -> {head: stems[b, s, c, t]}``.

    Args:
        skeleton: the registered model rebuilt from the metadata (its STFT settings and
            window are used, its weights are not).
        session: an ``onnxruntime.InferenceSession`` of an ``export_onnx`` file.
    """

    def __init__(self, skeleton: nn.Module, session, head_sessions=None, per_item: bool = False):
        super().__init__()
        # An int8 export quantises its activations with one scale per call: chunks called
        # together would change one another's rounding, so each goes alone (as fast on 2
        # CPU cores: whole `demix separate` runs at batch 1 and 4 took the same time).
        self.per_item = per_item
        self.skeleton = skeleton.eval()
        self.session = session
        # heads → a session computing only those (a film-only call then never builds the
        # music masks: on a batch of 6-s chunks they are the largest tensors); made on demand
        self._head_sessions = head_sessions
        self.config = skeleton.config
        self.sample_rate, self.channels = skeleton.sample_rate, skeleton.channels
        self.heads, self.segment_samples = skeleton.heads, skeleton.segment_samples
        # the exporter drops an input the graph does not use (``level`` of a model whose
        # features ignore the mix's RMS)
        self._inputs = {i.name for i in session.get_inputs()}

    def forward(self, mix: torch.Tensor, heads: Sequence[str] | None = None):
        heads = self.skeleton.check_heads(heads)
        if self.per_item and len(mix) > 1:
            # Each chunk on its own from end to end: the level's mean over a batch rounds
            # differently (by 4e-9) from the chunk's alone, and the int8 activation
            # scales magnified that to -60 dBFS in the stems (--batch-size 1 against 8).
            calls = [self.forward(mix[i : i + 1], heads) for i in range(len(mix))]
            return {h: torch.cat([c[h] for c in calls]) for h in heads}
        spec = self.skeleton.analyse(mix)
        feeds = {
            "spec": spec.detach().cpu().numpy(),
            "level": mix_rms(mix).detach().cpu().numpy(),
        }
        session = self.session
        if self._head_sessions is not None and len(heads) < len(self.heads):
            session = self._head_sessions(tuple(heads))
        feeds = {k: v for k, v in feeds.items() if k in self._inputs}
        names = [f"masks_{h}" for h in heads]
        masks = session.run(names, feeds)
        return {
            h: self.skeleton.synthesise(spec, torch.from_numpy(m).to(spec.device), mix.shape[-1])
            for h, m in zip(heads, masks)
        }


def load_onnx(
    path: str | os.PathLike,
    device: str = "cpu",
    checkpoint: str | os.PathLike | None = None,
    int8: bool = False,
) -> tuple[OnnxModel, dict[str, Any]]:
    """An ``export_onnx`` file as (``OnnxModel``, metadata), on the CPU or, where ONNX
    Runtime has the CUDA provider, the GPU. With the ``checkpoint`` it was exported from,
    calls for fewer heads run on exports of just those (``cached_export``, made on demand,
    quantised as ``path`` is when ``int8``).

    Raises:
        OnnxError: not a demix export, no onnxruntime, no CUDA provider for ``device``, or
            an int8 export on a GPU.
    """
    # a file made from a checkpoint here is int8 exactly when asked for; only a file given by
    # path is read to tell
    per_item = int8 if checkpoint is not None else _is_int8(path)
    if per_item and device != "cpu":
        raise OnnxError(
            f"{path}: an int8 export runs on the CPU only (its quantised LSTM kernel has no "
            f"GPU version), not on {device}"
        )
    session, meta, skeleton = _session(path, device)
    head_sessions = None
    if checkpoint is not None:
        made: dict[tuple[str, ...], Any] = {}

        def head_sessions(heads: tuple[str, ...]):
            if heads not in made:
                made[heads] = _session(cached_export(checkpoint, heads, int8), device)[0]
            return made[heads]

    return OnnxModel(skeleton, session, head_sessions, per_item=per_item), meta


def _session(path: str | os.PathLike, device: str):
    """(an ONNX Runtime session of ``path``, its demix metadata, the model rebuilt from it)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise OnnxError(
            "the onnxruntime backend needs the onnxruntime package: pip install onnxruntime"
        ) from exc
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise OnnxError(
                f"device {device}: this onnxruntime has no CUDA provider "
                "(pip install onnxruntime-gpu, or use --backend torch)"
            )
        index = int(device.split(":")[1]) if ":" in device else 0
        providers = [("CUDAExecutionProvider", {"device_id": index}), *providers]
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # as torch would (OMP_NUM_THREADS)
    options.log_severity_level = 3  # errors only: not its notes on unused initialisers
    # No arena: it keeps the largest call's buffers (both heads' masks for a batch of chunks,
    # hundreds of MB) for the life of the session.
    options.enable_cpu_mem_arena = False
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
        raw = session.get_modelmeta().custom_metadata_map.get("demix")
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise OnnxError(f"{path}: not an ONNX model ({' '.join(str(exc).split())[:200]})") from exc
    if device.startswith("cuda") and "CUDAExecutionProvider" not in session.get_providers():
        raise OnnxError(f"device {device}: onnxruntime could not start its CUDA provider here")
    if raw is None:
        raise OnnxError(f"{path}: no demix metadata (not exported by demix export)")
    meta = json.loads(raw)
    try:
        skeleton = build_model(meta["model"], meta["config"])
    except (KeyError, ValueError, TypeError) as exc:
        raise OnnxError(f"{path}: cannot rebuild the model around it ({exc})") from exc
    return session, meta, skeleton


def cache_dir() -> Path:
    """Where exports of checkpoints are kept for the onnxruntime backend: ``$DEMIX_CACHE``,
    else ``$XDG_CACHE_HOME/demix``, else ``~/.cache/demix``."""
    if os.environ.get("DEMIX_CACHE"):
        return Path(os.environ["DEMIX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "demix"


def cached_export(
    checkpoint: str | os.PathLike, heads: Sequence[str] | None = None, int8: bool = False
) -> Path:
    """The ONNX export of a safetensors checkpoint (``int8``: its ``quantize_onnx`` variant),
    made once (a few seconds) and kept in ``cache_dir()/onnx`` under the checkpoint's content
    hash; a temporary folder when the cache cannot be written."""
    checkpoint = Path(checkpoint)
    digest = hashlib.sha256(checkpoint.read_bytes())
    # the code that traces the core is part of what is cached: a changed model file or
    # exporter makes a new export instead of serving one made by older code
    for source in sorted(Path(__file__).parent.glob("models/*.py")) + [Path(__file__)]:
        digest.update(source.read_bytes())
    if int8:  # and so is the quantiser
        digest.update(_onnxruntime_version().encode())
    which = "-" + "+".join(heads) if heads else ""
    which += "-int8" if int8 else ""
    name = f"{checkpoint.stem}{which}-{digest.hexdigest()[:16]}-opset{ONNX_OPSET}.onnx"
    private = (
        Path(tempfile.gettempdir()) / f"demix-onnx-{os.getuid() if hasattr(os, 'getuid') else 0}"
    )
    for folder in (cache_dir() / "onnx", private):
        path = folder / name
        if path.exists():
            with contextlib.suppress(OSError):
                os.utime(path)  # recently used: kept by the clean-up below
            return path
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError:
            continue
        if folder == private and folder.stat().st_uid != getattr(os, "getuid", lambda: 0)():
            continue  # a shared temporary folder: never load a model someone else left
        if os.access(folder, os.W_OK):
            if int8:
                quantize_onnx(cached_export(checkpoint, heads), path)
            else:
                model, meta = load_checkpoint(checkpoint)
                export_onnx(model, meta, path, heads)
            # evaluating many snapshots would otherwise fill the cache (6-23 MB each)
            with contextlib.suppress(OSError):  # another process may be pruning too
                exports = sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime)
                for old in exports[:-CACHE_KEEP]:
                    old.unlink(missing_ok=True)
            return path
    raise OnnxError(f"{checkpoint}: no writable folder for its ONNX export (set DEMIX_CACHE)")
