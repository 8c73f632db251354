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
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from demix import Separator, audio
from demix.data import loudness_lufs
from demix.mixing import MUTE_DB, remix
from demix.plots import plot_spectrogram
from demix.separator import SeparationError, available_models

N_SLOTS = 12  # stem players: up to 9 stems, 2 "rest" tracks and the original
HEADS = ("film", "music", "both")
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
    """What the demo accepts."""

    max_upload_mb: float = 200.0
    max_seconds: float = 600.0


@dataclass
class Job:
    """One separation: where its files are and what they hold."""

    folder: Path
    track: str
    sample_rate: int
    channels: int
    tracks: dict[str, Path] = field(default_factory=dict)  # label → full-layout wav
    previews: dict[str, Path] = field(default_factory=dict)  # label → stereo wav for players
    groups: list[list[str]] = field(default_factory=list)  # per head: labels that sum to the mix


def _label(name: str) -> str:
    """A safe track name from a user's file name (letters, digits, '.', '_', '-')."""
    stem = Path(name).stem
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "track"


def _preview(x: np.ndarray) -> np.ndarray:
    """Stereo (or mono) version of [c, t] for browser players (5.1 folded down)."""
    if x.shape[0] <= 2:
        return x
    left = x[0] + 0.707 * x[2] + 0.707 * x[4 % x.shape[0]]
    right = x[1] + 0.707 * x[2] + 0.707 * x[min(5, x.shape[0] - 1)]
    return np.stack([left, right]) / 2.0


def spectrogram_image(x: np.ndarray, sample_rate: int, title: str) -> np.ndarray:
    """A log-magnitude spectrogram of [c, t] (channels averaged) as an RGB image [h, w, 3]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.2), dpi=80)
    plot_spectrogram(ax, x, sample_rate, title)
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


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

    # ----------------------------------------------------------------- helpers
    def _check(self, path: Path) -> audio.AudioInfo:
        size_mb = path.stat().st_size / 1e6
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

    def _forget_old_jobs(self, keep: int = 4) -> None:
        """Delete all but the ``keep`` most recent job folders (temporary files are bounded)."""
        jobs = sorted((self.root / "jobs").glob("*"), key=lambda p: p.stat().st_mtime)
        for old in jobs[: max(len(jobs) - keep, 0)]:
            shutil.rmtree(old, ignore_errors=True)

    def demo_clip(self) -> Path:
        """Generate the bundled demo clip inside the app folder."""
        from demix.demo import write_demo_clip

        return write_demo_clip(self.root / "demo" / "demo_film.wav")

    # ----------------------------------------------------------------- actions
    def separate(
        self,
        upload: str | os.PathLike,
        head: str,
        stems: list[str] | None,
        compare_model: str | None = None,
        progress=None,
    ) -> Job:
        """Separate an uploaded file into a new job folder."""
        source = Path(upload)
        meta = self._check(source)
        track = _label(source.name)
        self._forget_old_jobs()
        folder = self.root / "jobs" / uuid.uuid4().hex[:12]
        folder.mkdir(parents=True)
        job = Job(folder, track, meta.sample_rate, meta.channels)
        mix, _ = audio.read(source)
        original = folder / "original.wav"
        audio.write(original, mix, meta.sample_rate, "wav", "24")
        job.tracks["original"] = original
        runs = [("", self.separator)]
        if compare_model and compare_model in self.others:
            runs.append((f"{compare_model}:", self.others[compare_model]))
        with self.lock:
            for prefix, sep in runs:
                out = folder / (prefix.rstrip(":") or "main")
                written = sep.separate_file(
                    original,
                    out,
                    head=head,
                    stems=stems or None,
                    fmt="wav",
                    progress=(lambda d, t: progress(d / max(t, 1e-9))) if progress else None,
                )
                for name, path in written.items():
                    job.tracks[f"{prefix}{name}"] = path
        plan = self.separator.plan(head, stems or None)
        job.groups = [
            list(plan.selected[h]) + ([plan.rest_names[h]] if plan.rest_names[h] else [])
            for h in plan.heads
        ]
        for label, path in job.tracks.items():
            x, rate = audio.read(path)
            preview = folder / "preview" / f"{label.replace(':', '__')}.wav"
            preview.parent.mkdir(exist_ok=True)
            audio.write(preview, _preview(x), rate, "wav", "16")
            job.previews[label] = preview
        return job

    def compare(self, job: Job, a: str, b: str) -> tuple[str, str, np.ndarray, np.ndarray, str]:
        """Players, spectrograms and the level difference of two tracks of a job."""
        xa, rate = audio.read(job.tracks[a])
        xb, _ = audio.read(job.tracks[b])
        la, lb = loudness_lufs(xa, rate), loudness_lufs(xb, rate)

        def fmt(v: float) -> str:
            return f"{v:.1f} LUFS" if np.isfinite(v) else "silent"

        diff = f"{la - lb:+.1f} dB" if np.isfinite(la) and np.isfinite(lb) else "n/a"
        text = f"**A** {a}: {fmt(la)} · **B** {b}: {fmt(lb)} · A − B: {diff}"
        return (
            str(job.previews[a]),
            str(job.previews[b]),
            spectrogram_image(xa, rate, a),
            spectrogram_image(xb, rate, b),
            text,
        )

    def remix(self, job: Job, gains_db: dict[str, float], mute: set[str], solo: set[str]) -> Path:
        """Sum the stems (not "original", not the comparison model's) with gains in dB;
        ``MUTE_DB`` or below, muted; if any stem is soloed, only soloed stems play."""
        stems = {
            label: audio.read(path)[0]
            for label, path in job.tracks.items()
            if label != "original" and ":" not in label
        }
        total = remix(
            stems,
            {k: v for k, v in gains_db.items() if k in stems},
            mute & stems.keys(),
            solo & stems.keys(),
            groups=job.groups or None,
        )
        out = job.folder / f"remix-{uuid.uuid4().hex[:6]}.wav"
        audio.write(out, _preview(total), job.sample_rate, "wav", "32f")
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
    import gradio as gr

    app = DemoApp(separator, limits, root, others)
    head_stems = {h: list(s) for h, s in separator.heads.items()}
    head_stems["both"] = [s for h in separator.heads for s in separator.heads[h]]

    with gr.Blocks(title="demix: separate, compare, remix") as demo:
        demo.demix_app = app  # for tests and cleanup
        job_state = gr.State(None)
        gr.Markdown(
            "# demix\nUpload a film clip or a song, separate it into stems, listen, "
            "compare any two tracks, remix and download."
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
        separate_btn = gr.Button("Separate", variant="primary")
        status = gr.Markdown("")
        players, images = [], []
        with gr.Row():
            for i in range(N_SLOTS):
                with gr.Column(min_width=260, visible=False) as col:
                    players.append(
                        (col, gr.Audio(label=f"track {i}", type="filepath", interactive=False))
                    )
                    images.append(gr.Image(show_label=False, interactive=False, height=150))
        with gr.Accordion("Compare two tracks (A/B)", open=True):
            with gr.Row():
                track_a = gr.Dropdown([], label="Track A")
                track_b = gr.Dropdown([], label="Track B")
                compare_btn = gr.Button("Compare")
            level = gr.Markdown("")
            with gr.Row():
                audio_a = gr.Audio(label="A", type="filepath", interactive=False)
                audio_b = gr.Audio(label="B", type="filepath", interactive=False)
            with gr.Row():
                image_a = gr.Image(show_label=False, interactive=False, height=150)
                image_b = gr.Image(show_label=False, interactive=False, height=150)
        with gr.Accordion("Remix", open=True):
            gain_sliders, mute_boxes, solo_boxes, remix_rows = [], [], [], []
            for i in range(N_SLOTS - 1):
                with gr.Row(visible=False) as row:
                    gain_sliders.append(
                        gr.Slider(
                            MUTE_DB,
                            12.0,
                            value=0.0,
                            step=0.5,
                            label=f"stem {i} gain (dB; left end = −∞)",
                        )
                    )
                    mute_boxes.append(gr.Checkbox(label="mute"))
                    solo_boxes.append(gr.Checkbox(label="solo"))
                remix_rows.append(row)
            remix_btn = gr.Button("Render remix")
            remix_audio = gr.Audio(
                label="Remix", type="filepath", interactive=False, elem_id="remix-audio"
            )
        download = gr.File(label="Download all stems (zip)", interactive=False, elem_id="download")

        def on_head(h):
            return gr.CheckboxGroup(choices=head_stems[h], value=head_stems[h])

        head.change(on_head, head, stems)
        demo.load(on_head, head, stems)
        demo_btn.click(lambda: str(app.demo_clip()), None, upload)

        def run(path, h, chosen, other, progress=gr.Progress()):  # noqa: B008 (Gradio idiom)
            if not path:
                raise gr.Error("Upload a file (or use the demo clip) first.")
            if not chosen:
                raise gr.Error("Choose at least one stem.")
            try:
                job = app.separate(
                    path, h, list(chosen), None if other == "none" else other, progress
                )
            except (SeparationError, audio.AudioError) as exc:
                raise gr.Error(str(exc)) from None
            labels = list(job.tracks)
            updates = []
            for i in range(N_SLOTS):
                if i < len(labels):
                    label = labels[i]
                    x, rate = audio.read(job.previews[label])
                    updates += [
                        gr.Column(visible=True),
                        gr.Audio(value=str(job.previews[label]), label=label),
                        spectrogram_image(x, rate, label),
                    ]
                else:
                    updates += [gr.Column(visible=False), gr.Audio(value=None), None]
            stem_labels = [x for x in labels if x != "original" and ":" not in x]
            rows = []
            for i in range(N_SLOTS - 1):
                visible = i < len(stem_labels)
                name = stem_labels[i] if visible else ""
                rows += [
                    gr.Row(visible=visible),
                    gr.Slider(value=0.0, label=f"{name} gain (dB; left end = −∞)"),
                    gr.Checkbox(value=False),
                    gr.Checkbox(value=False),
                ]
            text = (
                f"Separated **{job.track}** ({job.sample_rate} Hz, {job.channels} ch): "
                f"{', '.join(labels[1:])}."
            )
            second = labels[1] if len(labels) > 1 else labels[0]
            return [
                job,
                text,
                gr.Dropdown(choices=labels, value="original"),
                gr.Dropdown(choices=labels, value=second),
                str(app.zip(job)),
                *updates,
                *rows,
            ]

        slot_outputs = [
            c for pair in zip(players, images) for c in (pair[0][0], pair[0][1], pair[1])
        ]
        row_outputs = [
            c
            for i in range(N_SLOTS - 1)
            for c in (remix_rows[i], gain_sliders[i], mute_boxes[i], solo_boxes[i])
        ]
        separate_btn.click(
            run,
            [upload, head, stems, compare_model],
            [job_state, status, track_a, track_b, download, *slot_outputs, *row_outputs],
            concurrency_limit=1,
        )

        def on_compare(job, a, b):
            if job is None:
                raise gr.Error("Separate something first.")
            pa, pb, ia, ib, text = app.compare(job, a, b)
            return pa, pb, ia, ib, text

        compare_btn.click(
            on_compare, [job_state, track_a, track_b], [audio_a, audio_b, image_a, image_b, level]
        )

        def on_remix(job, *values):
            if job is None:
                raise gr.Error("Separate something first.")
            n = N_SLOTS - 1
            gains, mutes, solos = values[:n], values[n : 2 * n], values[2 * n :]
            labels = [x for x in job.tracks if x != "original" and ":" not in x]
            gains_db = {lab: float(gains[i]) for i, lab in enumerate(labels)}
            mute = {lab for i, lab in enumerate(labels) if mutes[i]}
            solo = {lab for i, lab in enumerate(labels) if solos[i]}
            return str(app.remix(job, gains_db, mute, solo))

        remix_btn.click(on_remix, [job_state, *gain_sliders, *mute_boxes, *solo_boxes], remix_audio)
    return demo


def launch(
    model: str = "demix-small",
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    limits: Limits | None = None,
    compare: list[str] | None = None,
) -> None:
    """Start the demo server (no browser window is opened)."""
    root = Path(tempfile.mkdtemp(prefix="demix-demo-"))
    os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio")  # uploads stay in the app folder
    separator = Separator.from_pretrained(model)
    others = {name: Separator.from_pretrained(name) for name in available_models() if name != model}
    for path in compare or []:  # checkpoints to compare against, by file name
        others[Path(path).stem] = Separator.from_pretrained(path)
    demo = build_demo(separator, limits, root, others)
    atexit.register(demo.demix_app.cleanup)
    demo.queue(default_concurrency_limit=1).launch(
        server_name=host,
        server_port=port,
        share=share,
        inbrowser=False,
        # In bytes: gradio parses "200.0mb" (a float in a size string) as an invalid unit.
        max_file_size=int((limits or Limits()).max_upload_mb * 1024 * 1024),
        allowed_paths=[str(root)],
    )
