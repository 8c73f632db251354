"""Gradio demo: upload a clip, separate it, compare tracks by ear, remix, download.

``build_demo(separator) -> gr.Blocks`` is a thin layer over ``Separator``; ``launch`` starts
it (``demix demo``). Every file the app writes lives under one temporary folder of its own
(Gradio's upload cache included); names coming from the user are never used as paths, only
as sanitised labels.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
import threading
import time
import urllib.parse
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

# No usage telemetry from a tool that post houses run on unreleased material (and offline
# machines): Gradio sends it unless told not to; GRADIO_ANALYTICS_ENABLED=True opts in.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402 - after the line above: Gradio reads it at import
import numpy as np

from demix import Separator, audio, wav
from demix.data import loudness_lufs, true_peak_dbtp
from demix.mixing import MUTE_DB, remix
from demix.plots import plot_spectrogram
from demix.separator import SeparationError, available_models

HERE = Path(__file__).parent
HEADS = ("film", "music", "both")
JOB_MAX_AGE_S = 3600.0  # a result stays this long for Compare / Remix (the 4 newest longer)
MAX_JOBS = 24  # and never more than this many results on disk
UPLOAD_TYPES = [
    ".wav",
    ".flac",
    ".mp3",
    ".ogg",
    ".opus",
    ".aiff",
    ".aif",
    ".m4a",
    ".mp4",
    ".mov",
    ".mkv",
    ".webm",
]


@dataclass
class Limits:
    """What the demo accepts, enforced on the server."""

    max_upload_mb: float = 200.0
    max_seconds: float = 600.0
    max_queue: int = 8  # waiting separations beyond this are told the queue is full


@dataclass
class Group:
    """Tracks that play (and remix) together: one head's stems, or the original."""

    key: str
    title: str
    labels: list[str]
    remix: bool  # whether its stems sum to the mix (the original is not remixed)


@dataclass
class Job:
    """One separation: where its files are and what they hold."""

    folder: Path
    track: str
    sample_rate: int
    channels: int
    seconds: float = 0.0
    tracks: dict[str, Path] = field(default_factory=dict)  # label → full-layout wav
    previews: dict[str, Path] = field(default_factory=dict)  # label → stereo wav for players
    groups: list[Group] = field(default_factory=list)
    levels: dict[str, tuple[float, float]] = field(default_factory=dict)  # label → LUFS, dBTP


class Cancelled(SeparationError):
    """The user pressed Cancel while the separation ran."""


def _label(name: str) -> str:
    """A safe track name from a user's file name (letters, digits, '.', '_', '-')."""
    stem = Path(name).stem
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "track"


# Which side each speaker of a layout folds down to for the browser's stereo players
# (centres and the unnamed channels of a multitrack to both at -3 dB; LFE left out).
# ffmpeg's speaker names as well as WAV's (a container's layout past WAV's 18: 22.2, 9.1.6)
_LEFT = {"FL", "BL", "FLC", "SL", "TFL", "TBL", "TSL", "BFL", "WL", "SDL"}
_RIGHT = {"FR", "BR", "FRC", "SR", "TFR", "TBR", "TSR", "BFR", "WR", "SDR"}


def _preview(x: np.ndarray, speakers: list[str] | None = None) -> np.ndarray:
    """Stereo (or mono) version of [c, t] for browser players: more channels are folded
    down by their ``speakers`` (``demix.wav.speakers`` names; by default the WAV order of
    the channel count: L R C, quad, 5.0, 5.1, 6.1, 7.1)."""
    if x.shape[0] <= 2:
        return x
    if speakers is None:
        speakers = wav.speakers(wav.DEFAULT_MASKS.get(x.shape[0], 0), x.shape[0])
    gains = np.array(
        [[1.0, 0.0] if s in _LEFT else [0.0, 1.0] if s in _RIGHT
         else [0.0, 0.0] if s.startswith("LFE") else [0.707, 0.707] for s in speakers],
        dtype=np.float32,
    )  # fmt: skip
    folded = gains.T @ x  # [2, t]
    return folded / gains.sum(0, keepdims=True).T.clip(min=1.0)


def _level_text(value: float, unit: str) -> str:
    return f"{value:.1f} {unit}" if np.isfinite(value) else "silent"


def spectrogram_image(x: np.ndarray, sample_rate: int, title: str) -> np.ndarray:
    """A log-magnitude spectrogram of [c, t] (channels averaged) as an RGB image [h, w, 3]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=90)
    plot_spectrogram(ax, x, sample_rate, title)
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def file_url(path: Path) -> str:
    """The URL (relative to the page, so it works behind a path prefix) under which Gradio
    serves a file of the app folder (``allowed_paths``); nothing else is served."""
    return "gradio_api/file=" + urllib.parse.quote(str(path))


def mixer_value(job: Job | None) -> dict | None:
    """What the mixer (``apps/mixer.js``) shows for a job: groups of tracks with their
    preview URLs and levels."""
    if job is None:
        return None
    groups = []
    for group in job.groups:
        tracks = []
        for label in group.labels:
            lufs, peak = job.levels[label]
            tracks.append(
                {
                    "label": label,
                    "url": file_url(job.previews[label]),
                    "lufs": lufs if np.isfinite(lufs) else None,
                    "peak_dbtp": peak if np.isfinite(peak) else None,
                }
            )
        groups.append(
            {"key": group.key, "title": group.title, "remix": group.remix, "tracks": tracks}
        )
    return {"duration_s": job.seconds, "mute_db": MUTE_DB, "groups": groups}


class DemoApp:
    """State and actions of the demo, independent of Gradio (so they are testable)."""

    def __init__(
        self,
        separator: Separator,
        limits: Limits | None = None,
        root: Path | None = None,
        others: dict[str, Separator] | None = None,
    ):
        self.separator = separator
        self.others = others or {}
        self.limits = limits or Limits()
        self.root = Path(root or tempfile.mkdtemp(prefix="demix-demo-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()  # one separation at a time on the model
        self.lock_cancels = threading.Lock()
        self.cancels: dict[str, threading.Event] = {}  # browser session → its Cancel flag

    # ----------------------------------------------------------------- helpers
    def _check(self, path: Path) -> audio.AudioInfo:
        size_mb = path.stat().st_size / (1024 * 1024)  # the server's limit is in MiB too
        if size_mb > self.limits.max_upload_mb:
            raise SeparationError(
                f"file too large: {size_mb:.0f} MB (limit {self.limits.max_upload_mb:.0f} MB)"
            )
        if path.suffix.lower() not in UPLOAD_TYPES:
            raise SeparationError(
                f"unsupported format {path.suffix or '(none)'} (accepted: "
                f"{', '.join(UPLOAD_TYPES)})"
            )
        try:
            meta = audio.info(path)
        except audio.AudioError as exc:
            raise SeparationError(f"cannot read the file: {str(exc).split(': ', 1)[-1]}") from exc
        if meta.seconds > self.limits.max_seconds:
            raise SeparationError(
                f"too long: {meta.seconds:.0f} s (limit {self.limits.max_seconds:.0f} s)"
            )
        return meta

    def _forget_old_jobs(self, keep: int = 4, max_age_s: float = JOB_MAX_AGE_S) -> None:
        """Delete job folders older than ``max_age_s``, keeping the ``keep`` most recent, and
        all past ``MAX_JOBS`` (temporary files are bounded; another user's fresh result
        stays for Compare and Remix)."""
        jobs = sorted(
            (p for p in (self.root / "jobs").glob("*") if p.is_dir()),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        now = time.time()
        for i, old in enumerate(jobs):
            if i >= MAX_JOBS or (i >= keep and now - old.stat().st_mtime > max_age_s):
                shutil.rmtree(old, ignore_errors=True)

    def demo_clip(self) -> Path:
        """Generate the bundled demo clip inside the app folder."""
        from demix.demo import write_demo_clip

        return write_demo_clip(self.root / "demo" / "demo_film.wav")

    # ----------------------------------------------------------------- actions
    def cancel_event(self, session: str) -> threading.Event:
        """A new flag for the separation that ``session`` starts now: ``cancel(session)``
        sets it. Each run has its own, so a run cancelled just before the next one starts
        still stops (clearing a shared flag could lose that cancel)."""
        with self.lock_cancels:
            self.cancels[session] = event = threading.Event()
            return event

    def cancel(self, session: str) -> None:
        """Ask the separation running for ``session`` to stop (it drops its files)."""
        with self.lock_cancels:
            event = self.cancels.get(session)
        if event is not None:
            event.set()

    def separate(
        self,
        upload: str | os.PathLike,
        head: str,
        stems: list[str] | None,
        compare_model: str | None = None,
        progress=None,
        cancel: threading.Event | None = None,
    ) -> Job:
        """Separate an uploaded file into a new job folder.

        ``progress(fraction)`` is called as the work goes on; setting ``cancel`` stops it
        (``Cancelled`` is raised and the job folder removed).
        """
        source = Path(upload)
        meta = self._check(source)
        self._forget_old_jobs()
        folder = self.root / "jobs" / uuid.uuid4().hex[:12]
        folder.mkdir(parents=True)
        try:
            return self._separate(
                source, meta, folder, head, stems, compare_model, progress, cancel
            )
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def _separate(self, source, meta, folder, head, stems, compare_model, progress, cancel):
        job = Job(folder, _label(source.name), meta.sample_rate, meta.channels, meta.seconds)
        original = folder / "original.wav"
        separated, speakers = original, None  # (the file separated, its speakers' names)
        if source.suffix.lower() in (".wav", ".wave"):  # as it is: speaker mask, float levels
            shutil.copyfile(source, original)
        else:  # decoded at its own depth (float stays float: nothing above 0 dBFS clipped)
            mix, _ = audio.read(source)  # in the layout the container names, with its mask
            layout = wav.surround_mask_of(source, meta.channels, meta.speakers)
            if layout is None and meta.channels > 2:
                layout = 0  # tracks: no speaker positions
            audio.write(original, mix, meta.sample_rate, "wav", meta.bit_depth, layout)
            if layout == 0 and meta.speakers:  # speakers a WAV cannot name (22.2, 9.1.6):
                # the upload itself, whose layout plans the separation as in demix separate
                separated, speakers = source, list(meta.speakers)
        job.tracks["original"] = original
        if speakers is None and meta.channels > 2:
            mask = wav.surround_mask_of(original, meta.channels)
            speakers = wav.speakers(mask, meta.channels) if mask is not None else None
        runs = [("", self.separator)]
        if compare_model and compare_model in self.others:
            runs.append((f"{compare_model}:", self.others[compare_model]))

        def stop_if_cancelled() -> None:
            if cancel is not None and cancel.is_set():
                raise Cancelled("separation cancelled")

        def report(i: int):
            def on_progress(done: float, total: float) -> None:
                stop_if_cancelled()
                if progress is not None:
                    progress((i + done / max(total, 1e-9)) / len(runs))

            return on_progress

        with self.lock:
            for i, (prefix, sep) in enumerate(runs):
                out = folder / (prefix.rstrip(":") or "main")
                written = sep.separate_file(
                    separated, out, head=head, stems=stems or None, fmt="wav", progress=report(i)
                )
                for name, path in written.items():
                    job.tracks[f"{prefix}{name}"] = path
                plan = sep.plan(head, stems or None)
                for h in plan.heads:
                    labels = list(plan.selected[h])
                    labels += [plan.rest_names[h]] if plan.rest_names[h] else []
                    model = f" · {prefix.rstrip(':')}" if prefix else ""
                    title = f"{h.capitalize()} head{model}: {', '.join(labels)}"
                    job.groups.append(
                        Group(f"{prefix}{h}", title, [f"{prefix}{x}" for x in labels], True)
                    )
        job.groups.append(Group("original", "Original", ["original"], False))
        for label, path in job.tracks.items():
            stop_if_cancelled()  # (between the phases after separating, too)
            x, rate = audio.read(path)
            job.levels[label] = (loudness_lufs(x, rate), true_peak_dbtp(x, rate))
            preview = folder / "preview" / f"{label.replace(':', '__')}.wav"
            preview.parent.mkdir(exist_ok=True)
            audio.write(preview, _preview(x, speakers), rate, "wav", "16")
            job.previews[label] = preview
        return job

    def compare(self, job: Job, a: str, b: str) -> tuple[str, str, np.ndarray, np.ndarray, str]:
        """Players, spectrograms and the levels (LUFS, true peak) of two tracks of a job."""
        xa, rate = audio.read(job.tracks[a])
        xb, _ = audio.read(job.tracks[b])
        la, lb = job.levels[a][0], job.levels[b][0]
        diff = f"{la - lb:+.1f} dB" if np.isfinite(la) and np.isfinite(lb) else "n/a"
        text = (
            f"**A** {a}: {_level_text(la, 'LUFS')}, peak {_level_text(job.levels[a][1], 'dBTP')}"
            f" · **B** {b}: {_level_text(lb, 'LUFS')}, peak "
            f"{_level_text(job.levels[b][1], 'dBTP')} · A − B: {diff}"
        )
        return (
            str(job.previews[a]),
            str(job.previews[b]),
            spectrogram_image(xa, rate, a),
            spectrogram_image(xb, rate, b),
            text,
        )

    def remix(
        self,
        job: Job,
        gains_db: dict[str, float],
        mute: set[str],
        solo: set[str],
        group: str | None = None,
    ) -> Path:
        """Sum one group's stems (default: the first head's) with gains in dB; ``MUTE_DB`` or
        below, muted; if any stem is soloed, only soloed stems play. The file keeps the
        input's rate and channel layout (32-bit float, so raised stems never clip)."""
        chosen = next((g for g in job.groups if g.remix and g.key == (group or g.key)), None)
        if chosen is None:
            raise SeparationError(f"no stems to remix in group {group!r}")
        stems = {label: audio.read(job.tracks[label])[0] for label in chosen.labels}
        total = remix(
            stems,
            {k: v for k, v in gains_db.items() if k in stems},
            set(mute) & stems.keys(),
            set(solo) & stems.keys(),
        )
        out = job.folder / "remix" / f"{job.track}-remix-{uuid.uuid4().hex[:6]}.wav"
        out.parent.mkdir(exist_ok=True)
        audio.write(out, total, job.sample_rate, "wav", "32f")
        return out

    def preview(self, path: Path) -> Path:
        """A stereo 16-bit copy of a file of the app folder, for the browser's player."""
        x, rate = audio.read(path)
        out = path.with_name(f"{path.stem}-preview.wav")
        audio.write(out, _preview(x), rate, "wav", "16")
        return out

    def zip(self, job: Job) -> Path:
        """All stems as ``<track>/<stem>.wav`` (input rate and channels) in one zip."""
        out = job.folder / f"{job.track}-stems.zip"
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            for label, path in job.tracks.items():
                if label == "original":
                    continue
                z.write(path, f"{job.track}/{label.replace(':', '_')}.wav")
        return out

    def cleanup(self) -> None:
        """Remove the app folder."""
        shutil.rmtree(self.root, ignore_errors=True)


def build_demo(
    separator: Separator,
    limits: Limits | None = None,
    root: Path | None = None,
    others: dict[str, Separator] | None = None,
):
    """The Gradio page for ``separator`` (optionally other models to compare against)."""
    app = DemoApp(separator, limits, root, others)
    head_stems = {h: list(s) for h, s in separator.heads.items()}
    head_stems["both"] = [s for h in separator.heads for s in separator.heads[h]]

    # delete_cache: Gradio's copies of uploads and served files older than an hour go, hourly.
    with gr.Blocks(title="demix: separate, listen, remix", delete_cache=(3600, 3600)) as demo:
        demo.demix_app = app  # for tests and cleanup
        job_state = gr.State(None)
        gr.Markdown(
            "# demix\nUpload a film clip or a song and separate it into stems. Play them in "
            "sync with solo and mute, compare any two tracks, remix and download."
        )
        with gr.Row():
            with gr.Column(scale=2):
                upload = gr.File(
                    label="Audio or video file", file_types=UPLOAD_TYPES, type="filepath"
                )
                demo_btn = gr.Button("Use the demo clip", size="sm")
            with gr.Column(scale=1):
                head = gr.Radio(list(HEADS), value="film", label="Head")
                # Every head's stems are valid choices (API calls never see the head switch);
                # the page narrows the list to the chosen head.
                stems = gr.CheckboxGroup(
                    head_stems["both"],
                    value=head_stems["film"],
                    label="Stems (the others are summed into 'rest')",
                )
                compare_model = gr.Dropdown(
                    ["none"] + sorted(app.others),
                    value="none",
                    label="Also separate with (to compare)",
                )
        with gr.Row(equal_height=True):
            separate_btn = gr.Button("Separate", variant="primary", scale=1, elem_id="separate")
            cancel_btn = gr.Button("Cancel", variant="stop", scale=0, elem_id="cancel")
            status = gr.Markdown("", elem_id="status", min_height=40)
        mixer = gr.HTML(
            None,
            html_template='<div class="dx-mixer"></div>',
            css_template=(HERE / "mixer.css").read_text(),
            js_on_load=(HERE / "mixer.js").read_text(),
            elem_id="mixer",
            apply_default_css=False,
        )
        with gr.Row():
            remix_audio = gr.Audio(
                label="Remix (stereo preview)",
                type="filepath",
                interactive=False,
                elem_id="remix-audio",
            )
            remix_file = gr.File(
                label="Remix download (the input's rate and channel layout, 32-bit float)",
                interactive=False,
                elem_id="remix-file",
            )
        download = gr.File(label="Download all stems (zip)", interactive=False, elem_id="download")
        with gr.Accordion("Compare two tracks (A/B)", open=False):
            with gr.Row():
                track_a = gr.Dropdown([], label="Track A")
                track_b = gr.Dropdown([], label="Track B")
                compare_btn = gr.Button("Compare")
            level = gr.Markdown("")
            with gr.Row():
                audio_a = gr.Audio(label="A", type="filepath", interactive=False)
                audio_b = gr.Audio(label="B", type="filepath", interactive=False)
            with gr.Row():
                image_a = gr.Image(show_label=False, interactive=False, height=300)
                image_b = gr.Image(show_label=False, interactive=False, height=300)

        def on_head(h):
            return gr.CheckboxGroup(choices=head_stems[h], value=head_stems[h])

        # The light events skip the queue: a queue full of waiting separations must not stop
        # another user from loading the page, comparing or remixing (--max-queue counts the
        # queue's events, not only separations).
        head.change(on_head, head, stems, queue=False)
        demo.load(on_head, head, stems, queue=False)
        demo_btn.click(lambda: str(app.demo_clip()), None, upload, queue=False)

        def run(path, h, chosen, other, request: gr.Request, progress=gr.Progress()):  # noqa: B008
            if not path:
                raise gr.Error("Upload a file (or use the demo clip) first.")
            if not chosen:
                raise gr.Error("Choose at least one stem.")
            cancel = app.cancel_event(request.session_hash)
            try:
                job = app.separate(
                    path, h, list(chosen), None if other == "none" else other, progress, cancel
                )
            except Cancelled:
                raise gr.Error("Cancelled: nothing was kept.") from None
            except (SeparationError, audio.AudioError) as exc:
                raise gr.Error(str(exc)) from None
            labels = list(job.tracks)
            stems_text = "; ".join(g.title for g in job.groups if g.remix)
            text = (
                f"Separated **{job.track}** ({job.sample_rate} Hz, {job.channels} ch, "
                f"{job.seconds:.1f} s): {stems_text}."
            )
            second = labels[1] if len(labels) > 1 else labels[0]
            return [
                job,
                text,
                mixer_value(job),
                gr.Dropdown(choices=labels, value="original"),
                gr.Dropdown(choices=labels, value=second),
                str(app.zip(job)),
            ]

        separate_event = separate_btn.click(
            run,
            [upload, head, stems, compare_model],
            [job_state, status, mixer, track_a, track_b, download],
            concurrency_limit=1,
            show_progress_on=[status],
        )

        def on_cancel(request: gr.Request):
            # The separation's own event ends without output when Gradio cancels it, so the
            # final word is this one; its thread drops the job folder at its next check.
            app.cancel(request.session_hash)
            return "Cancelled: nothing was kept."

        cancel_btn.click(on_cancel, None, status, cancels=[separate_event], queue=False)

        def on_compare(job, a, b):
            if job is None:
                raise gr.Error("Separate something first.")
            _still_there(job)
            return app.compare(job, a, b)

        compare_btn.click(
            on_compare, [job_state, track_a, track_b], [audio_a, audio_b, image_a, image_b, level],
            queue=False,
        )  # fmt: skip

        def on_remix(job, evt: gr.EventData):
            if job is None:
                raise gr.Error("Separate something first.")
            _still_there(job)
            data = evt._data or {}
            try:
                out = app.remix(
                    job,
                    {k: float(v) for k, v in dict(data.get("gains_db", {})).items()},
                    set(data.get("mute", [])),
                    set(data.get("solo", [])),
                    group=data.get("group"),
                )
            except (SeparationError, audio.AudioError, ValueError) as exc:
                raise gr.Error(str(exc)) from None
            return str(app.preview(out)), str(out)

        mixer.click(on_remix, [job_state], [remix_audio, remix_file], queue=False)
    return demo


def _still_there(job: Job) -> None:
    """Refuse, in words, a result whose files the app has since removed (old results go
    after ``JOB_MAX_AGE_S``)."""
    if not job.folder.is_dir():
        raise gr.Error("This result has expired and its files were removed: separate again.")


def serve(
    demo,
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    block: bool = True,
) -> None:
    """Serve a page from ``build_demo`` with its limits enforced by the server: uploads over
    ``max_upload_mb`` refused at upload, at most ``max_queue`` separations waiting, one
    running at a time, only the app folder's files served. Binds ``host`` (127.0.0.1 by
    default: reachable from this machine only)."""
    app = demo.demix_app
    limits = app.limits
    demo.queue(default_concurrency_limit=1, max_size=limits.max_queue).launch(
        server_name=host,
        server_port=port,
        share=share,
        inbrowser=False,
        prevent_thread_lock=not block,
        quiet=not block,
        # In bytes: gradio parses "200.0mb" (a float in a size string) as an invalid unit.
        max_file_size=int(limits.max_upload_mb * 1024 * 1024),
        allowed_paths=[str(app.root)],
    )


def launch(
    model: str = "demix-small",
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    limits: Limits | None = None,
    compare: list[str] | None = None,
) -> None:
    """Start the demo server (no browser window is opened)."""
    separator = Separator.from_pretrained(model)  # (a bad name fails before any folder exists)
    others = {name: Separator.from_pretrained(name) for name in available_models() if name != model}
    for path in compare or []:  # checkpoints to compare against, by file name
        others[Path(path).stem] = Separator.from_pretrained(path)
    root = Path(tempfile.mkdtemp(prefix="demix-demo-"))
    os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio")  # uploads stay in the app folder
    demo = build_demo(separator, limits, root, others)
    atexit.register(demo.demix_app.cleanup)
    serve(demo, host, port, share)
