"""Catalogue-scale separation on a Ray cluster: ``demix separate IN... -o OUT --ray [ADDRESS]``.

The driver lists the inputs (folders recursively, as ``demix separate`` does), skips those
whose stems are all there already (so a rerun resumes), and hands the rest to a pool of Ray
actors, each holding one loaded ``Separator`` (the model is loaded once per actor, on the CPUs
or the GPU Ray gives it). Each actor runs ``Separator.separate_file`` on whole files: long ones
are streamed in flat memory and every stem is written under a temporary name and renamed when
complete, as without Ray. One bad file is one "failed" row, never the end of the batch; an
actor that dies is replaced and its file reported failed. Every input ends up in
``OUT/report.csv`` and ``OUT/report.json``: status, duration, seconds taken, the worker.

Without an address a local cluster is started for the run (and stopped after it); with one
(``auto``, ``ray://head:10001``) the run joins an existing cluster, whose nodes must have demix
installed and see the inputs and ``OUT`` at the same paths (a shared file system).
Ray is optional (``pip install demix[ray]``); nothing here imports it until a run starts.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from demix import audio
from demix.separator import (
    SeparationError,
    Separator,
    group_by_folders,
    output_names,
    plan_inputs,
    separation_inputs,
)


@dataclass
class CatalogueResult:
    """One input's row of the report."""

    file: str
    status: str  # "done", "skipped" (its stems were already there) or "failed"
    error: str = ""
    duration_s: float = 0.0
    seconds_taken: float = 0.0
    worker: str = ""  # host:pid of the actor that ran it
    outputs: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _File:
    file: str  # as the driver lists it (the report's name for it)
    path: str  # absolute
    out_dir: str  # absolute
    duration_s: float


@dataclass(frozen=True)
class _Job:
    """Files one actor separates in turn: those whose stems share an output folder (a
    ``--filename`` without a folder per track) go together, since ``separate_file`` locks
    the folders it writes to."""

    files: tuple[_File, ...]

    @property
    def duration_s(self) -> float:
        return sum(f.duration_s for f in self.files)


class _Worker:
    """A Ray actor's state: one loaded separator, and what each file is separated with."""

    def __init__(self, model: str, device: str, backend: str | None, options: dict,
                 threads: int, settings: dict):  # fmt: skip
        import torch

        torch.set_num_threads(max(1, threads))
        self.separator = Separator.from_pretrained(model, device=device, backend=backend, **options)
        self.settings = settings
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def ready(self) -> str:
        """The actor's name, once its model is loaded."""
        return self.name

    def run(self, job: _Job) -> list[CatalogueResult]:
        return [self._one(f) for f in job.files]

    def _one(self, item: _File) -> CatalogueResult:
        started = time.time()
        result = CatalogueResult(item.file, "done", duration_s=item.duration_s, worker=self.name)
        try:
            written = self.separator.separate_file(item.path, item.out_dir, **self.settings)
            result.outputs = [str(p) for p in written.values()]
        except (audio.AudioError, SeparationError, OSError) as exc:
            result.status, result.error = "failed", audio.one_line_error(exc, item.path)
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the batch
            result.status = "failed"
            result.error = f"{item.path}: unexpected failure ({type(exc).__name__}: {exc})"
        result.seconds_taken = round(time.time() - started, 2)
        return result


READY_TIMEOUT_S = 300.0  # for the actors to be placed and load the model


def separate_catalogue(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    model: str = "demix-small",
    head: str | None = None,
    stems: Sequence[str] | None = None,
    fmt: str = "wav",
    bit_depth: str | None = None,
    filename: str = "{track}/{stem}.{ext}",
    bitrate_kbps: int = 320,
    overwrite: bool = False,
    address: str | None = None,
    workers: int | None = None,
    threads_per_worker: int = 1,
    device: str = "cpu",
    backend: str | None = None,
    separator_options: dict[str, Any] | None = None,
    progress: Callable[[float, float, int, int], None] | None = None,
    outputs: Sequence[str] | None = None,
    heads: Mapping[str, Sequence[str]] | None = None,
) -> list[CatalogueResult]:
    """Separate every input on a Ray cluster; returns this run's rows and writes the report
    (with the rows of earlier runs' other inputs into ``out_dir``).

    Args:
        inputs: files or folders (searched recursively, subfolders mirrored under
            ``out_dir``, as ``demix separate`` does).
        out_dir: the output root, reachable at this path from every node.
        model, head, stems, fmt, bit_depth, filename, bitrate_kbps: as ``demix separate``.
        overwrite: separate again inputs whose stems are there (otherwise they are skipped).
        address: a running cluster (``auto``, ``ray://host:10001``); None starts a local one.
        workers: actors (default: as many as the cluster's CPUs hold, or one per GPU).
        threads_per_worker: torch threads (and Ray CPUs) of each actor.
        device: "cpu", or "cuda" for one GPU per actor (Ray picks which).
        backend: as ``Separator.from_pretrained``.
        separator_options: more ``Separator`` arguments (``batch_size``, ``shifts``, ...).
        progress: called with (audio seconds done, audio seconds in all, files done, files).
        outputs: the output names of ``head`` and ``stems``, where the caller has loaded the
            model and checked them already (the CLI has); otherwise the driver loads it once
            to check them.
        heads: the model's heads (its ``Separator.heads``), given with ``outputs``: the
            stems of an earlier run among the inputs are left out by every name they can
            have (``separation_inputs``).

    Raises:
        SeparationError: Ray is not installed, the cluster cannot be reached or has no room
            for one actor, the actors cannot load the model; bad settings (checked on the
            driver, on its CPU, before any work).
    """
    try:
        import ray
    except ImportError as exc:
        raise SeparationError("--ray needs Ray: pip install 'demix[ray]'") from exc
    out_dir = Path(out_dir)
    if outputs is None or heads is None:  # checked here, before any work: model, head, stems
        checked = Separator.from_pretrained(model, backend=backend)
        outputs, heads = checked.plan(head, stems).outputs, checked.heads
    settings = dict(head=head, stems=list(stems) if stems else None, fmt=fmt,
                    bit_depth=bit_depth, overwrite=overwrite, filename=filename,
                    bitrate_kbps=bitrate_kbps)  # fmt: skip
    audio.subtype_for(fmt, bit_depth or "24")  # a bad format or depth: refused up front
    gpu = device.startswith("cuda")
    names = output_names(heads)
    found = separation_inputs(inputs, out_dir, names, filename)
    jobs, results = _plan(found, out_dir, outputs, fmt, filename, overwrite)
    total_s = sum(j.duration_s for j in jobs)
    done_s, files = 0.0, sum(len(j.files) for j in jobs) + len(results)
    if progress is not None:
        progress(0.0, total_s, len(results), files)
    started_here = False
    if jobs:
        if not ray.is_initialized():
            try:
                if address is None:  # a local cluster for this run, on this machine only
                    cpus = (
                        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
                    )
                    ray.init(num_cpus=cpus, include_dashboard=False,
                             _node_ip_address="127.0.0.1", logging_level="ERROR")  # fmt: skip
                else:
                    ray.init(address=address, logging_level="ERROR")
            except Exception as exc:  # noqa: BLE001 - Ray raises many kinds here
                where = address or "a local cluster"
                raise SeparationError(f"cannot start Ray on {where}: {exc}") from exc
            started_here = True
        try:
            resources = ray.cluster_resources()
            if gpu and resources.get("GPU", 0) < 1:
                raise SeparationError("--device cuda: the Ray cluster has no GPU")
            if threads_per_worker > resources.get("CPU", 0):
                raise SeparationError(
                    f"--jobs {threads_per_worker}: the Ray cluster has "
                    f"{resources.get('CPU', 0):g} CPUs"
                )
            actor_cls = ray.remote(num_cpus=threads_per_worker, num_gpus=1 if gpu else 0)(_Worker)
            if workers is None:
                workers = int(resources.get("GPU", 0)) if gpu else int(
                    resources.get("CPU", 1) // max(threads_per_worker, 1)
                )  # fmt: skip
            args = ("cuda" if gpu else device, backend, separator_options or {},
                    threads_per_worker, settings)  # fmt: skip
            idle = _start_actors(ray, actor_cls, (model, *args), max(1, min(workers, len(jobs))))
            pending, running = deque(jobs), {}
            while pending or running:
                while idle and pending:
                    actor, job = idle.pop(), pending.popleft()
                    running[actor.run.remote(job)] = (actor, job)
                if not running:  # every actor died: report the rest as failed
                    for job in pending:
                        results += _failed(job, "no worker is left to separate it")
                    break
                ready, _ = ray.wait(list(running), num_returns=1)
                actor, job = running.pop(ready[0])
                try:
                    batch = ray.get(ready[0])
                    idle.append(actor)
                except ray.exceptions.RayActorError as exc:  # the actor died (killed, OOM)
                    batch = _failed(job, f"the worker separating it died ({_first(exc)})")
                    with contextlib.suppress(SeparationError):
                        idle += _start_actors(ray, actor_cls, (model, *args), 1)
                except ray.exceptions.RayError as exc:
                    batch = _failed(job, _first(exc))
                    idle.append(actor)
                results += batch
                done_s += job.duration_s
                if progress is not None:
                    progress(done_s, total_s, len(results), files)
        finally:
            if started_here:
                ray.shutdown()
    order = {str(p): i for i, (p, _) in enumerate(found)}
    results.sort(key=lambda r: order.get(r.file, len(order)))
    # inputs of earlier runs into the same folder keep their rows (batches delivered one by
    # one): matched by resolved path, however each run named them
    this_run = {Path(p).resolve() for p, _ in found}
    earlier = audio.read_report_rows(out_dir / "report.json", CatalogueResult)
    kept = [r for r in earlier if Path(r.file).resolve() not in this_run]
    write_report([*kept, *results], out_dir)
    return results


def _start_actors(ray, actor_cls, args: tuple, count: int) -> list:
    """``count`` actors that have loaded the model (those not placed or loaded within
    ``READY_TIMEOUT_S`` are given up); raises SeparationError when none could start."""
    actors = [actor_cls.remote(*args) for _ in range(count)]
    waiting = {actor.ready.remote(): actor for actor in actors}
    ready, late = ray.wait(list(waiting), num_returns=len(waiting), timeout=READY_TIMEOUT_S)
    started, errors = [], []
    for ref in ready:
        try:
            ray.get(ref)
            started.append(waiting[ref])
        except ray.exceptions.RayError as exc:  # the model did not load there
            errors.append(_first(exc))
    for ref in late:  # never placed (no room for its CPUs or GPU) or still loading
        ray.kill(waiting[ref])
    if not started:
        why = errors[0] if errors else (
            f"none was placed within {READY_TIMEOUT_S:g} s: does the cluster have the CPUs "
            "(--jobs) or GPUs (--device) each worker asks for?"
        )  # fmt: skip
        raise SeparationError(f"no Ray worker could start: {why}")
    return started


def _failed(job: _Job, why: str) -> list[CatalogueResult]:
    return [CatalogueResult(f.file, "failed", error=f"{f.file}: {why}", duration_s=f.duration_s)
            for f in job.files]  # fmt: skip


def _plan(files, out_dir: Path, outputs, fmt: str, filename: str, overwrite: bool):
    """The jobs to run for ``files`` (``separation_inputs``: file, output subfolder), grouped
    by shared output folders, and the rows already known (``plan_inputs``: skipped, or
    failed before any work)."""
    items, results = [], []
    for planned in plan_inputs(files, out_dir, outputs, fmt, filename, overwrite):
        path, targets = planned.path, planned.targets
        if planned.status == "failed":
            results.append(CatalogueResult(str(path), "failed", error=planned.error))
            continue
        try:
            duration = audio.info(path).seconds
        except (audio.AudioError, OSError):
            duration = 0.0  # the worker reports the reason
        if planned.status == "skipped":
            results.append(CatalogueResult(str(path), "skipped", duration_s=duration,
                                           outputs=[str(t) for t in targets.values()]))  # fmt: skip
            continue
        # absolute paths for the workers (other processes, maybe other machines)
        item = _File(str(path), str(Path(path).resolve()), str(planned.folder.resolve()), duration)
        items.append((item, {t.parent for t in targets.values()}))
    # files whose stems share a folder: one job
    groups = group_by_folders(items, lambda pair: pair[1])
    return [_Job(tuple(item for item, _ in group)) for group in groups], results


def write_report(results: Sequence[CatalogueResult], out_dir: str | os.PathLike) -> None:
    """``report.json`` (every field) and ``report.csv`` (one row per input), atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [asdict(r) for r in results]
    audio.write_text_atomic(out_dir / "report.json", json.dumps({"inputs": rows}, indent=2) + "\n")
    text = io.StringIO()
    columns = ["file", "status", "error", "duration_s", "seconds_taken", "worker", "outputs"]
    writer = csv.writer(text)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([";".join(row[c]) if c == "outputs" else row[c] for c in columns])
    audio.write_text_atomic(out_dir / "report.csv", text.getvalue())


def _first(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(exc).__name__
