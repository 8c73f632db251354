"""Command line: ``demix separate``, ``demix train``, ``demix info`` (thin layer over the library).

Exit status: 0 when every input succeeded, 1 when any failed, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tqdm import tqdm

from demix import audio
from demix.separator import BACKENDS, SeparationError

DEMO_SECONDS = 12.0
SEPARATE_EXAMPLES = """examples:
  demix separate film.wav -o stems/                        dialogue, music, effects
  demix separate film.mov -o stems/ --stems dialogue       dialogue + rest (the M&E)
  demix separate songs/ -o stems/ --head music --stems vocals,drums
  demix separate song.flac -o stems/ --head both --format flac --bit-depth 24
  demix separate song.mp3 -o stems/ --head music --mp3 --mp3-bitrate 256 --shifts 2
  demix separate reels/ -o stems/ --filename "{track}_{stem}.{ext}"
"""
_BAR = "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s audio [{elapsed}<{remaining}]"


def _parse_stems(text: str | None) -> list[str] | None:
    """``--stems`` as names (any case: ``Separator.plan`` matches them to the model's); None
    where not given. Raises SeparationError where it names none (``--stems ,``)."""
    if text is None:
        return None
    stems = [s.strip() for s in text.replace("+", ",").split(",") if s.strip()]
    if not stems:
        raise SeparationError(f"--stems {text!r} names no stem (e.g. --stems vocals,drums)")
    return stems


def _terminate(signum: int, _frame) -> None:
    """SIGTERM (kill, a job scheduler, a closed terminal) takes the Ctrl-C path: the stems
    being written are dropped, no temporary file is left."""
    raise KeyboardInterrupt(f"signal {signum}")


class _ProgressBar:
    """``progress(done_seconds, total_seconds)`` for ``separate_file``: the bar appears on the
    first call (0 / the file's duration, reported before any work), so a file that fails
    before its separation starts shows no bar, and the file is probed once, not twice."""

    def __init__(self, label: str, disabled: bool):
        self.label, self.disabled = label, disabled
        self.bar: tqdm | None = None

    def __call__(self, done_seconds: float, total_seconds: float) -> None:
        if self.bar is None:
            self.bar = tqdm(
                total=round(total_seconds, 1),
                desc=self.label,
                unit="s",
                dynamic_ncols=True,
                bar_format=_BAR,
                disable=self.disabled,
                leave=True,
                file=sys.stderr,
            )
        self.bar.total = round(total_seconds, 1)
        self.bar.n = round(done_seconds, 1)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _BatchProgress:
    """``progress(file, done_seconds, total_seconds)`` for ``Separator.separate_files``: a bar
    per file when files go one at a time; one bar for the whole batch (audio seconds of all
    files) when several are separated together."""

    def __init__(self, labels: dict[Path, str], together: bool, disabled: bool):
        self.labels, self.disabled = labels, disabled
        self.bars: dict[Path, _ProgressBar] = {}
        self.done: dict[Path, float] = {}
        self.totals: dict[Path, float] = {}
        self.batch = _ProgressBar(f"{len(labels)} files", disabled) if together else None
        self.expected: dict[Path, float] = {}  # durations from the headers, for the batch bar
        if together:
            for path in labels:
                with contextlib.suppress(audio.AudioError, OSError):
                    self.expected[path] = audio.info(path).seconds

    def __call__(self, path: Path, done_seconds: float, total_seconds: float) -> None:
        self.done[path], self.totals[path] = done_seconds, total_seconds
        if self.batch is not None:  # files not yet started: their headers' durations
            total = sum(self.totals.get(p, s) for p, s in self.expected.items())
            self.batch(sum(self.done.values()), max(total, sum(self.totals.values())))
        else:
            self.bars.setdefault(path, _ProgressBar(self.labels[path], self.disabled))(
                done_seconds, total_seconds
            )

    def finish(self, path: Path) -> None:
        """``path`` is done (or failed): its bar closes, its line stays."""
        bar = self.bars.pop(path, None)
        if bar is not None:
            bar.close()
        if path in self.totals:
            self.done[path] = self.totals[path]

    def running(self) -> list[Path]:
        return [p for p in self.totals if self.done[p] < self.totals[p]]

    def write(self, line: str) -> None:
        """A line on stdout that does not break the batch bar."""
        if self.batch is not None and self.batch.bar is not None:
            self.batch.bar.clear()
            print(line, flush=True)
            self.batch.bar.refresh()
        else:
            print(line, flush=True)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        if self.batch is not None:
            self.batch.close()


def cmd_separate(args: argparse.Namespace) -> int:
    """Separate every input; one line per failure, a summary at the end."""
    from demix.separator import (
        SeparationError,
        Separator,
        output_names,
        plan_inputs,
        separation_inputs,
        stem_paths,
    )

    signal.signal(signal.SIGTERM, _terminate)

    inputs = list(args.inputs)
    out_dir = Path(args.output)
    if not inputs and not args.demo:
        print("demix separate: no inputs (give files or folders, or --demo)", file=sys.stderr)
        return 2
    if args.jobs is not None and args.jobs < 1:
        print(f"demix: --jobs {args.jobs}: give 1 or more threads", file=sys.stderr)
        return 2
    if args.workers is not None and args.ray is None:
        print("demix: --workers sets the Ray actors: give it with --ray", file=sys.stderr)
        return 2
    if args.files_together != 1 and args.ray is not None:
        print("demix: --files-together is for one machine; with --ray, give --workers",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.two_stems:
        if args.stems:
            print("demix separate: give --stems or --two-stems, not both", file=sys.stderr)
            return 2
        args.stems = args.two_stems
    if args.jobs:
        import torch

        torch.set_num_threads(args.jobs)
    if args.mp3:
        args.format = "mp3"
    if args.format == "mp3" and args.bit_depth:
        print("demix separate: mp3 has no bit depth (drop --bit-depth)", file=sys.stderr)
        return 2
    if args.bit_depth is not None:  # flac at 32f: refused once here, not once per file
        try:
            audio.subtype_for(args.format, args.bit_depth)
        except audio.AudioError as exc:
            print(f"demix: {exc}", file=sys.stderr)
            return 2
    options = {"shifts": args.shifts, "batch_size": args.batch_size}
    if not 1 <= args.batch_size <= 256:
        print(f"demix: --batch-size {args.batch_size}: choose 1 to 256", file=sys.stderr)
        return 2
    if not 1 <= args.files_together <= 64:
        print(f"demix: --files-together {args.files_together}: choose 1 to 64", file=sys.stderr)
        return 2
    if args.segment is not None:
        options["segment_seconds"] = args.segment
    try:
        sep = Separator.from_pretrained(  # with --ray only checked here (the GPUs are Ray's)
            args.model, device="cpu" if args.ray is not None else args.device,
            backend=args.backend, **options,
        )  # fmt: skip
        if args.overlap is not None:
            if not 0 <= args.overlap < 1:
                raise SeparationError(f"--overlap {args.overlap:g}: a fraction in [0, 1)")
            sep = Separator(
                sep.model,
                sep.metadata,
                sep.device,
                overlap_seconds=args.overlap * sep.chunk_samples / sep.sample_rate,
                backend=sep.backend,
                **options,
            )
        if args.head is None:  # --two-stems vocals: the head that has the stems asked for
            args.head = sep.head_for(_parse_stems(args.stems))
        outputs = sep.plan(args.head, _parse_stems(args.stems)).outputs  # validate up front
        stem_paths(Path("x.wav"), out_dir, outputs, args.format, args.filename)
    except (SeparationError, ValueError) as exc:
        print(f"demix: {exc}", file=sys.stderr)
        return 2
    # The output folder once the command is known to be usable (a usage error makes none).
    try:
        audio.output_folder(out_dir)
        if args.demo:
            from demix.demo import write_demo_clip

            demo = write_demo_clip(out_dir / "demo-input" / "demo_film.wav", DEMO_SECONDS)
            print(f"demo clip (generated): {demo}")
            inputs.append(str(demo))
    except (audio.AudioError, OSError) as exc:
        print(f"demix: {audio.one_line_error(exc, out_dir)}", file=sys.stderr)
        return 2
    if args.ray is not None:
        if args.overlap is not None:
            options["overlap_seconds"] = args.overlap * sep.chunk_samples / sep.sample_rate
        heads = sep.heads
        del sep  # each Ray actor loads its own
        return _separate_on_ray(args, inputs, out_dir, options, outputs, heads)
    files = separation_inputs(inputs, out_dir, output_names(sep.heads), args.filename)
    ok, failed, skipped = [], [], []
    jobs, labels = [], {}
    planned = plan_inputs(files, out_dir, outputs, args.format, args.filename, args.overwrite)
    for i, item in enumerate(planned, 1):
        if item.status == "failed":
            failed.append(item.path)
            audio.print_line(f"demix: error: {item.error}")
        elif item.status == "skipped":  # a finished input of an interrupted or repeated batch
            skipped.append(item.path)
            print(f"{item.path}: stems already there, skipped (--overwrite separates it again)")
        else:
            jobs.append((item.path, item.folder))
            labels[item.path] = f"[{i}/{len(files)}] {item.path.name}"
    together = min(args.files_together, len(jobs)) if jobs else 1
    bars = _BatchProgress(labels, together > 1, disabled=args.quiet)
    started = time.time()
    outcomes = sep.separate_files(
        jobs,
        head=args.head,
        stems=_parse_stems(args.stems),
        files_together=together,
        progress=bars,
        fmt=args.format,
        bit_depth=args.bit_depth,
        overwrite=args.overwrite,
        filename=args.filename,
        bitrate_kbps=args.mp3_bitrate,
        warn=lambda text: audio.print_line(f"demix: warning: {text}"),
    )
    try:
        for outcome in outcomes:
            path = outcome.path
            bars.finish(path)
            if outcome.error is not None:
                failed.append(path)
                exc = outcome.error
                if isinstance(exc, (audio.AudioError, SeparationError, OSError)):
                    audio.print_line(f"demix: error: {exc}")
                else:
                    audio.print_line(
                        f"demix: error: {path}: unexpected failure ({type(exc).__name__}: {exc})"
                    )
                continue
            ok.append(path)
            written = outcome.written
            folders = sorted({str(p.parent) for p in written.values()})
            where = f"{folders[0]}/" if len(folders) == 1 else f"{out_dir}/"
            bars.write(f"{path} -> {where} ({', '.join(written)}) in {outcome.seconds:.1f} s")
    except KeyboardInterrupt:
        outcomes.close()  # the files in flight are dropped before the message
        running = bars.running()
        bars.close()
        what = ", ".join(str(p) for p in running) or "the batch"
        print(
            f"demix: interrupted while separating {what}; no partial stems were kept",
            file=sys.stderr,
        )
        return 130
    bars.close()
    was_skipped = f", {len(skipped)} skipped" if skipped else ""
    print(
        f"done: {len(ok)} separated{was_skipped}, {len(failed)} failed, "
        f"{time.time() - started:.1f} s; stems in {out_dir}/"
    )
    return 0 if not failed and files else 1


def _separate_on_ray(
    args: argparse.Namespace,
    inputs: list[str],
    out_dir: Path,
    options: dict,
    outputs: Sequence[str],
    heads: Mapping[str, Sequence[str]],
) -> int:
    """``demix separate --ray``: the batch on a Ray cluster (``demix.catalogue``)."""
    from demix.catalogue import separate_catalogue
    from demix.separator import SeparationError

    bar = tqdm(
        total=0.0, unit="s", dynamic_ncols=True, disable=args.quiet, file=sys.stderr,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s audio "
        "[{elapsed}<{remaining}]",
    )  # fmt: skip

    def progress(done_s: float, total_s: float, files_done: int, files: int) -> None:
        bar.total, bar.n = round(total_s, 1), round(done_s, 1)
        bar.set_description_str(f"{files_done}/{files} files", refresh=False)
        bar.refresh()

    try:
        results = separate_catalogue(
            inputs, out_dir, model=args.model, head=args.head, stems=_parse_stems(args.stems),
            fmt=args.format, bit_depth=args.bit_depth, filename=args.filename,
            bitrate_kbps=args.mp3_bitrate, overwrite=args.overwrite,
            address=None if args.ray == "local" else args.ray, workers=args.workers,
            threads_per_worker=args.jobs or 1, device=args.device, backend=args.backend,
            separator_options=options, progress=progress, outputs=outputs, heads=heads,
        )  # fmt: skip
    except SeparationError as exc:  # names what it is about (the Ray address, a file)
        bar.close()
        print(f"demix: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except (audio.AudioError, ValueError, OSError) as exc:
        bar.close()
        print(f"demix: {audio.one_line_error(exc, out_dir)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        bar.close()
        print("demix: interrupted; finished inputs are kept, a rerun skips them", file=sys.stderr)
        return 130
    bar.close()
    for r in results:
        if r.status == "failed":
            print(f"demix: error: {r.error}", file=sys.stderr)
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    print(
        f"done: {counts['done']} separated, {counts['skipped']} skipped (stems already there), "
        f"{counts['failed']} failed; report in {out_dir / 'report.csv'}"
    )
    return 1 if counts["failed"] or not results else 0


def cmd_post(args: argparse.Namespace) -> int:
    """Dialogue cleanup deliverables (DX, MX, FX, ME) for post-production; see ``cdx.post``."""
    from cdx.post import MAX_DIALOGUE_GAIN_DB, describe_metadata, parse_deliver, post_batch
    from demix.separator import SeparationError, Separator

    signal.signal(signal.SIGTERM, _terminate)
    if args.check:
        failed = 0
        found = audio.find_inputs(args.inputs)
        for path, _ in found:
            try:
                print(describe_metadata(path))
            except (audio.AudioError, OSError, ValueError) as exc:
                failed += 1
                print(f"demix: error: {audio.one_line_error(exc, path)}", file=sys.stderr)
        return 1 if failed or not found else 0
    if not args.output:
        print("demix post: give -o OUT (or --check to show metadata)", file=sys.stderr)
        return 2
    try:
        deliver = parse_deliver(args.deliver)
        if args.normalise and args.dialogue_gain is None:
            raise ValueError("--normalise applies to the --dialogue-gain remix: give both")
        if args.dialogue_gain is not None and not abs(args.dialogue_gain) <= MAX_DIALOGUE_GAIN_DB:
            raise ValueError(
                f"--dialogue-gain {args.dialogue_gain:g}: choose a gain within "
                f"±{MAX_DIALOGUE_GAIN_DB:g} dB (an accessible mix raises dialogue by 3 to 12)"
            )
        if args.dialogue_gain is not None and not {"dx", "me"} <= set(deliver):
            raise ValueError("--dialogue-gain remixes DX and ME: --deliver must hold dx and me")
        # One signal per model call: two-hour 5.1 reels in flat, bounded memory (the film
        # head's batch of 4 took about 450 MB more for little speed on the CPU).
        sep = Separator.from_pretrained(
            args.model, device=args.device, backend=args.backend, batch_size=1
        )
        audio.check_output_folder(args.inputs, args.output)
        audio.output_folder(args.output)  # (last: a usage error makes no folder)
    except (SeparationError, audio.AudioError, ValueError) as exc:
        print(f"demix: {exc}", file=sys.stderr)
        return 2
    bar = tqdm(
        total=0.0, unit="s", dynamic_ncols=True, disable=args.quiet, file=sys.stderr,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s audio "
        "[{elapsed}<{remaining}]",
    )  # fmt: skip

    def progress(done: float, total: float, name: str) -> None:
        bar.total, bar.n = round(total, 1), round(done, 1)
        bar.set_description_str(Path(name).name or "done", refresh=False)
        bar.refresh()

    try:
        results = post_batch(
            sep, args.inputs, args.output, deliver, args.overwrite, progress,
            args.dialogue_gain, args.normalise,
        )  # fmt: skip
    except (OSError, audio.AudioError) as exc:  # the report (the output folder went away or
        # became read-only), or an output folder that is an input folder
        bar.close()
        print(f"demix: {audio.one_line_error(exc, args.output)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        bar.close()
        print(
            "demix: interrupted; finished inputs are kept, and a rerun continues the one in "
            "progress from its last checkpoint",
            file=sys.stderr,
        )
        return 130
    bar.close()
    for r in results:
        for note in r.notes:
            print(f"demix: warning: {note}", file=sys.stderr)
        if r.status == "failed":
            print(f"demix: error: {r.error}", file=sys.stderr)
        elif r.status == "skipped":
            print(f"{r.file}: deliverables complete, skipped (--overwrite to redo)")
        else:
            note = (
                f", {r.clipped_samples} samples of DX/MX eased at full scale so that ME/FX fit"
                if r.clipped_samples
                else ""
            )
            if r.resumed_from_s:
                note += f", continued from {r.resumed_from_s:.1f} s"
            if r.remix:
                note += (
                    f"; remix {_level(r.remix['lufs'], 'LUFS')}, {_level(r.remix['dbtp'], 'dBTP')}"
                    f", limited by up to {r.remix['max_reduction_db']} dB"
                )
                if args.normalise and r.remix["lufs"] is None:
                    note += " (silent: not normalised)"
            dx = f"DX {_level(r.levels['DX'].get('lufs'), 'LUFS')}; " if "DX" in r.levels else ""
            print(
                f"{r.file} -> {', '.join(Path(o).name for o in r.outputs)} "
                f"({r.layout}; {dx}{r.seconds_taken:.1f} s{note})"
            )
    failed = sum(r.status == "failed" for r in results)
    print(
        f"done: {sum(r.status == 'done' for r in results)} delivered, "
        f"{sum(r.status == 'skipped' for r in results)} skipped, {failed} failed; "
        f"report in {Path(args.output) / 'report.csv'}"
    )
    return 1 if failed or not results else 0


def _level(value: float | None, unit: str) -> str:
    """A loudness or peak for the console: "-23.0 LUFS", or "silent" where the meter has
    none (below the BS.1770 gate, or no samples)."""
    return "silent" if value is None else f"{value} {unit}"


EXPORT_TOLERANCE = 1e-4  # largest |torch − onnxruntime| stem sample accepted by demix export
# An int8 export (--int8) differs from torch by its rounding: accepted while every stem's
# error stays this far below the input (RMS, dB). demix-small v4 on the 5 s of noise: about
# -50 dB (largest stem error 2e-3 against a 0.1 RMS input).
EXPORT_INT8_TOLERANCE_DB = -30.0


def cmd_export(args: argparse.Namespace) -> int:
    """``demix export MODEL OUT.onnx [--int8]``: the model's core as ONNX (``--int8``: its
    dynamically quantised variant), checked against torch."""
    import numpy as np

    from demix.checkpoint import load_checkpoint
    from demix.onnxrt import ONNX_OPSET, export_onnx, quantize_onnx
    from demix.separator import SeparationError, Separator, checkpoint_path

    out = Path(args.output)
    try:
        path = checkpoint_path(args.model)
        if path.suffix == ".onnx":
            raise SeparationError(f"{path}: already an ONNX export")
        if out.suffix.lower() != ".onnx":
            raise SeparationError(f"{out}: the output's name must end in .onnx")
        if out.exists() and not args.overwrite:
            raise SeparationError(f"{out}: exists (use --overwrite to replace it)")
        model, meta = load_checkpoint(path)
        out.parent.mkdir(parents=True, exist_ok=True)
    except (SeparationError, ValueError, OSError) as exc:
        print(f"demix: {exc}", file=sys.stderr)
        return 2
    # Exported and checked in a temporary folder beside OUT: OUT appears only if it passes.
    try:
        workspace = tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent)
    except OSError as exc:
        print(f"demix: {audio.one_line_error(exc, out.parent)}", file=sys.stderr)
        return 2
    with workspace as tmp:
        candidate = Path(tmp) / out.name
        try:
            if args.int8:
                quantize_onnx(export_onnx(model, meta, Path(tmp) / "float32.onnx"), candidate)
            else:
                export_onnx(model, meta, candidate)
            noise = np.random.default_rng(0).normal(0, 0.1, (2, 5 * model.sample_rate))
            reference = Separator(model, meta).separate(noise, model.sample_rate, head="both")
            exported = Separator.from_pretrained(str(candidate)).separate(
                noise, model.sample_rate, head="both"
            )
            diff = max(float((reference[k] - exported[k]).abs().max()) for k in reference)
            error_db = max(
                20 * math.log10(max(float((reference[k] - exported[k]).pow(2).mean()) ** 0.5,
                                    1e-12) / float(np.sqrt(np.mean(noise**2))))
                for k in reference
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds
            print(f"demix: {path}: cannot export to ONNX ({type(exc).__name__}: "
                  f"{' '.join(str(exc).split())[:300]})", file=sys.stderr)  # fmt: skip
            return 2
        if args.int8 and not error_db <= EXPORT_INT8_TOLERANCE_DB:  # NaN fails too
            print(
                f"demix: {path}: the int8 export's stems differ from torch's by {error_db:.1f} dB "
                f"of the input (more than {EXPORT_INT8_TOLERANCE_DB:g}); nothing written",
                file=sys.stderr,
            )
            return 1
        if not args.int8 and not diff <= EXPORT_TOLERANCE:
            print(
                f"demix: {path}: the export differs from torch by {diff:.1e} (more than "
                f"{EXPORT_TOLERANCE:g}); nothing written",
                file=sys.stderr,
            )
            return 1
        os.replace(candidate, out)
    heads = ", ".join(f"{h} ({len(s)} stems)" for h, s in model.heads.items())
    check = (
        f"largest stem error against torch on 5 s of noise: {error_db:.1f} dB of the input"
        if args.int8
        else f"largest |torch - onnxruntime| stem sample on 5 s of noise: {diff:.1e}"
    )
    kind = "int8, " if args.int8 else ""
    print(
        f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {kind}opset {ONNX_OPSET}, "
        f"heads {heads}); {check}"
    )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Print a model's metadata: heads, stems, sample rate, training provenance."""
    import json

    from demix.separator import SeparationError, Separator, available_models

    try:
        sep = Separator.from_pretrained(args.model)
    except (SeparationError, ValueError) as exc:
        print(f"demix: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"embedded": available_models(), **sep.metadata}, indent=2))
    else:
        print(model_summary(args.model, sep.metadata, sep.heads))
    return 0


def model_summary(name: str, metadata: dict, heads: dict[str, tuple[str, ...]]) -> str:
    """A short, human description of a checkpoint's metadata (``demix info``)."""
    info = metadata.get("info", {})
    config = metadata.get("config", {})
    label = " ".join(str(x) for x in (info.get("name", name), info.get("version", "")) if x)
    lines = [f"model      {label} ({metadata.get('model', '?')} architecture)"]
    for head, stems in heads.items():
        lines.append(f"head       {head}: {', '.join(stems)}")
    lines.append(
        f"audio      {metadata.get('sample_rate', '?')} Hz internally; any rate and channel "
        "layout in, the same out"
    )
    if "segment_seconds" in config:
        lines.append(f"chunks     {config['segment_seconds']:g} s")
    steps = info.get("total_steps", info.get("steps"))
    minutes = info.get("training_minutes_total", info.get("training_minutes"))
    after = ""  # a fine-tuning run's steps came after its init_from's
    if "total_steps" not in info and info.get("init_from"):
        after = f" from {info['init_from']}"
    trained = [
        f"{steps} step{'' if steps == 1 else 's'}{after}" if steps is not None else "",
        f"{minutes} min" if minutes is not None else "",
        str(info.get("hardware", "")),
    ]
    if any(trained):
        lines.append(f"training   {', '.join(t for t in trained if t)}")
    if info.get("licences"):
        lines.append(f"licences   {info['licences']}")
    scores = info.get("dev_si_sdr_db", {})
    if scores:
        text = ", ".join(f"{stem} {v['model']:+.1f}" for stem, v in scores.items())
        lines.append(f"dev SI-SDR {text} dB (identity: the mix as every stem; see eval/RESULTS.md)")
    lines.append("more       demix info --json (all metadata); docs/MODEL_CARD.md")
    return "\n".join(lines)


def _demo_settings_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with ``demix demo``'s settings, in one line; None when they are usable.
    The address is tried here (Gradio's own words for a taken port point to its
    environment variables, and for a bad host speak of an empty port range)."""
    import errno
    import ipaddress
    import socket

    limits = {"--max-upload-mb": args.max_upload_mb, "--max-seconds": args.max_seconds,
              "--max-queue": args.max_queue}  # fmt: skip
    for flag, value in limits.items():
        if not value > 0 or math.isinf(value):
            return f"{flag} {value:g}: give a positive limit"
    if not 1 <= args.port <= 65535:
        return f"--port {args.port}: choose 1 to 65535"
    host = args.host.strip("[]")  # [::1], as Gradio takes it
    dotted = host.replace(".", "").isdigit()
    try:
        if dotted:  # 256.1.1.1: not an address, and not a name to look up either
            ipaddress.IPv4Address(host)
        family, kind, proto, _, address = socket.getaddrinfo(
            host, args.port, type=socket.SOCK_STREAM
        )[0]
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        return f"--host {args.host}: not an address or host name ({exc})"
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"--port {args.port}: in use on {args.host} (choose another --port)"
            if exc.errno == errno.EACCES:
                return f"--port {args.port}: not allowed here (ports below 1024 need root)"
            return f"--host {args.host}: cannot listen there ({exc.strerror or exc})"
    return None


def cmd_demo(args: argparse.Namespace) -> int:
    """Start the Gradio demo (the app lives in ``apps``; imported only for this command)."""
    problem = _demo_settings_problem(args)  # before Gradio loads: a quick one-line refusal
    if problem:
        print(f"demix demo: {problem}", file=sys.stderr)
        return 2
    try:
        from apps.demo import Limits, launch
    except ImportError as exc:
        print(
            f"demix demo: {exc}; gradio is a dependency of demix: reinstall it "
            "(pip install -e . in a checkout)",
            file=sys.stderr,
        )
        return 2
    from demix.separator import SeparationError

    # SIGTERM (kill, docker stop) takes the Ctrl-C path: the server closes and the app's
    # temporary folder is removed at exit.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        launch(
            args.model,
            args.host,
            args.port,
            args.share,
            Limits(args.max_upload_mb, args.max_seconds, args.max_queue),
            args.compare,
        )
    except (SeparationError, ValueError, OSError) as exc:  # a bad --model/--compare, a busy port
        print(f"demix: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM outside Gradio's own wait: a normal stop
        pass
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``demix`` argument parser."""
    parser = argparse.ArgumentParser(prog="demix", description="Cinematic demixer.")
    from demix import __version__

    parser.add_argument("--version", action="version", version=f"demix {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "separate",
        help="separate audio/video files into stems",
        description="Separate audio or video files into stems that sum back to the input.",
        epilog=SEPARATE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="*", help="audio/video files or folders")
    p.add_argument("-o", "--output", required=True, help="output folder: OUT/<track>/<stem>.ext")
    p.add_argument(
        "--head",
        choices=["film", "music", "both"],
        help="film: dialogue, music, effects; music: drums, bass, vocals, guitar, piano, "
        "other; both: every stem of both (default: the head that has the --stems asked "
        "for, both where they span the heads, else film)",
    )
    p.add_argument(
        "--stems",
        help="comma-separated stems to keep, e.g. dialogue or vocals,drums; the others are "
        "summed into 'rest'",
    )
    p.add_argument(
        "--format",
        default="wav",
        choices=list(audio.OUTPUT_FORMATS),
        help="file format of the stems (default wav); mp3 is lossy, so its stems no longer "
        "sum exactly to the input",
    )
    p.add_argument("--mp3", action="store_true", help="same as --format mp3 (as demucs)")
    p.add_argument(
        "--mp3-bitrate",
        type=int,
        default=320,
        choices=list(audio.MP3_BITRATES_KBPS),
        metavar="KBPS",
        help="constant bitrate of mp3 stems (default 320; one of "
        f"{', '.join(map(str, audio.MP3_BITRATES_KBPS))})",
    )
    p.add_argument(
        "--bit-depth",
        choices=["16", "24", "32f"],
        help="wav/flac sample format (default: the input's)",
    )
    p.add_argument(
        "--filename",
        default="{track}/{stem}.{ext}",
        metavar="TEMPLATE",
        help="where each stem goes under -o, with {track}, {trackext}, {stem}, {ext} "
        "(default {track}/{stem}.{ext})",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "-n",
        "--name",
        "--model",
        dest="model",
        default="demix-small",
        help="embedded model name or checkpoint path (default demix-small)",
    )
    p.add_argument(
        "--two-stems",
        metavar="STEM",
        help="STEM and the rest (as demucs' --two-stems), e.g. --two-stems vocals",
    )
    p.add_argument(
        "--segment", type=float, metavar="SECONDS", help="chunk length (default: the model's)"
    )
    p.add_argument(
        "--overlap",
        type=float,
        metavar="FRACTION",
        help="overlap of consecutive chunks as a fraction of the chunk (default 1 s)",
    )
    p.add_argument(
        "--shifts",
        type=int,
        default=1,
        metavar="N",
        help="average N passes on randomly shifted input (as demucs; N times slower, "
        "slightly better; default 1)",
    )
    p.add_argument(
        "--backend",
        choices=list(BACKENDS),
        help="what runs the network (default: onnxruntime-int8 on the CPU, onnxruntime on a "
        "GPU, torch where neither can run)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=4,
        metavar="N",
        help="stereo signals per model call: chunks of a file go through together (a GPU "
        "wants more; memory grows with it; default 4)",
    )
    p.add_argument(
        "--files-together",
        type=int,
        default=1,
        metavar="N",
        help="separate N files at once, their chunks sharing the model calls (--batch-size "
        "signals each): short files then fill a GPU's batches; default 1 (one file after "
        "another, which is faster on a CPU)",
    )
    p.add_argument("-j", "--jobs", type=int, metavar="N", help="CPU threads (default: all)")
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="separate on a Ray cluster: no ADDRESS starts a local one, else auto or "
        "ray://HOST:10001; finished inputs are skipped, OUT/report.csv lists every input",
    )
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="with --ray: actors, each with the model loaded once (default: as many as the "
        "cluster's CPUs hold at --jobs threads each, or one per GPU)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing stems")
    p.add_argument(
        "--demo",
        action="store_true",
        help="also separate a generated film clip (speech, music, effects)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_separate)
    t = sub.add_parser("train", help="train a model from a YAML config", add_help=False)
    t.set_defaults(func=None)
    d = sub.add_parser("demo", help="start the Gradio demo in a local web server")
    d.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 for the network)",
    )
    d.add_argument("--port", type=int, default=7860)
    d.add_argument("--share", action="store_true", help="also create a public Gradio link")
    d.add_argument("--model", default="demix-small")
    d.add_argument("--max-upload-mb", type=float, default=200.0, help="largest accepted upload")
    d.add_argument("--max-seconds", type=float, default=600.0, help="longest accepted input")
    d.add_argument(
        "--max-queue",
        type=int,
        default=8,
        help="separations that may wait; later visitors are told the queue is full",
    )
    d.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="CHECKPOINT",
        help="another model to offer for A/B comparison (repeatable)",
    )
    d.set_defaults(func=cmd_demo)
    q = sub.add_parser(
        "post",
        help="dialogue cleanup: DX / M&E deliverables for post-production",
        description="Write DX (dialogue), MX, FX and ME (music + effects) deliverables that\n"
        "add back to the input sample for sample, keeping rate, depth, channel layout and\n"
        "BWF metadata; a report (CSV and JSON) with loudness, true peak and loudness range.",
        epilog="examples:\n  demix post reel1.wav -o deliverables/\n"
        "  demix post reels/ -o deliverables/ --deliver dx,mx,fx,me\n"
        "  demix post deliverables/reel1_DX.wav --check",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("inputs", nargs="+", help="audio/video files or folders")
    q.add_argument("-o", "--output", help="output folder: OUT/<name>_DX.wav, ...")
    q.add_argument(
        "--deliver", default="dx,me", help="deliverables among dx, mx, fx, me (default dx,me)"
    )
    q.add_argument(
        "--dialogue-gain",
        type=float,
        metavar="DB",
        help="also write <name>_REMIX.wav: ME + DX raised by DB (e.g. 6), limited to -1 dBTP",
    )
    q.add_argument(
        "--normalise",
        choices=["atsc", "ebu"],
        help="bring that remix (never the stems), as limited, to -24 LKFS (ATSC A/85) or "
        "-23 LUFS (EBU R128)",
    )
    q.add_argument("--model", default="demix-small", help="embedded name or checkpoint path")
    q.add_argument("--device", default="cpu", help="cpu or cuda")
    q.add_argument(
        "--backend",
        choices=list(BACKENDS),
        help="what runs the network (default: onnxruntime-int8 on the CPU, onnxruntime on a "
        "GPU, torch where neither can run)",
    )
    q.add_argument("--overwrite", action="store_true", help="redo inputs already delivered")
    q.add_argument("--check", action="store_true", help="show the layout and BWF metadata")
    q.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_post)
    e = sub.add_parser(
        "export",
        help="write a model as ONNX (for ONNX Runtime, here or elsewhere)",
        description="Export the network between the STFT and the iSTFT (both heads, dynamic\n"
        "batch and time axes, the checkpoint's metadata inside) as ONNX, then check it\n"
        "against torch on 5 s of noise. Run it with demix separate --model OUT.onnx.\n"
        "--int8 writes its dynamically quantised variant (int8 LSTM and linear weights:\n"
        "about 1.3-1.5x faster on a CPU, within 0.05 dB on the dev sets; CPU only).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("model", help="embedded model name (demix-small) or checkpoint path")
    e.add_argument("output", help="the .onnx file to write")
    e.add_argument("--overwrite", action="store_true", help="replace an existing file")
    e.add_argument("--int8", action="store_true", help="write the int8 (quantised) variant")
    e.set_defaults(func=cmd_export)
    i = sub.add_parser("info", help="describe a model: heads, stems, training, scores")
    i.add_argument("--model", default="demix-small", help="embedded name or checkpoint path")
    i.add_argument("--json", action="store_true", help="print every metadata field as JSON")
    i.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``demix`` command."""
    argv = sys.argv[1:] if argv is None else argv
    # A file name that is not UTF-8 (surrogate-escaped by Python) is printed, not a crash.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):  # a replaced stream
            stream.reconfigure(errors="backslashreplace")
    if argv and argv[0] == "train":
        from demix.train import main as train_main

        return train_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:  # Ctrl-C before a command's own handling (a lazy import)
        print("demix: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `demix info | head`: the reader left; no traceback
        with contextlib.suppress(OSError):  # (and none when Python flushes stdout at exit)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a shell reports a command ended by SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
