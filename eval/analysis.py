"""Failure analysis for notebooks and reports: per-second metrics, leakage between stems,
the worst segments, and scores grouped by what went into each mixture.

Everything here is a pure function of arrays, set items and score tables (pandas), so that
the notebooks only call and display. Shapes: audio is float32 [c, t]; stems are dicts
{name: [c, t]} with the same names on the reference and the estimate side.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from demix import data
from eval import metrics
from eval.sets import SetItem

Stems = Mapping[str, np.ndarray]


# ------------------------------------------------------------------ per-second metrics
def frame_metrics(
    refs: Stems, ests: Stems, sample_rate: int, window_seconds: float = 1.0
) -> pd.DataFrame:
    """museval BSSEval v4 per ``window_seconds`` frame, for every stem of ``refs``.

    Returns:
        One row per (stem, frame): ``stem``, ``frame``, ``start_s``, ``sdr``, ``sir``,
        ``sar``, ``isr`` (NaN where the reference is silent in that frame) and ``ref_db``,
        the reference's level in that frame (dB RMS re full scale).
    """
    stems = [s for s in refs if s in ests]
    frames = metrics.bss_eval_frames(
        [refs[s] for s in stems], [ests[s] for s in stems], sample_rate, window_seconds
    )
    window = int(window_seconds * sample_rate)
    rows = []
    for i, stem in enumerate(stems):
        ref = np.asarray(refs[stem])
        for k in range(frames["sdr"].shape[1]):
            power = float(np.mean(ref[..., k * window : (k + 1) * window] ** 2))
            rows.append(
                {
                    "stem": stem,
                    "frame": k,
                    "start_s": k * window_seconds,
                    **{name: float(v[i, k]) for name, v in frames.items()},
                    "ref_db": 10 * np.log10(power) if power > 0 else -np.inf,
                }
            )
    return pd.DataFrame(rows)


def worst_segments(
    frames: pd.DataFrame,
    k: int = 10,
    metric: str = "sdr",
    stem: str | None = None,
    quiet_db: float = 20.0,
) -> pd.DataFrame:
    """The ``k`` frames with the lowest ``metric``, worst first.

    ``frames`` is :func:`frame_metrics` output, possibly concatenated over items with an
    ``item`` column; ``stem`` restricts the ranking to one stem. Frames where the reference
    is silent (NaN) or more than ``quiet_db`` below that stem's loudest frame in the same
    item (a breath, a fade-out: any leak makes their SDR hugely negative, yet nobody hears
    it) are not ranked.
    """
    table = frames.dropna(subset=[metric])
    if stem is not None:
        table = table[table["stem"] == stem]
    keys = ["item", "stem"] if "item" in table.columns else ["stem"]
    loudest = table.groupby(keys)["ref_db"].transform("max")
    table = table[table["ref_db"] >= loudest - quiet_db]
    return table.sort_values(metric).head(k).reset_index(drop=True)


def excerpt(x: np.ndarray, sample_rate: int, start_s: float, seconds: float) -> np.ndarray:
    """``seconds`` of [c, t] from ``start_s`` (shorter at the end of the signal)."""
    a = int(round(start_s * sample_rate))
    return x[..., a : a + int(round(seconds * sample_rate))]


# ------------------------------------------------------------------ leakage
def leakage_matrix(
    refs: Stems, ests: Stems, sample_rate: int, window_seconds: float = 1.0
) -> pd.DataFrame:
    """How much of each true stem ends up in each estimated stem, in dB.

    Each estimate is projected, frame by frame (``window_seconds``), onto the true stems
    (least squares, one gain per stem and frame: the time-varying gains of the BSSEval
    decomposition without its filters). Entry [i, j] is the energy of true stem i's
    component in estimate j relative to true stem i's energy: 0 dB means all of it, −20 dB
    a hundredth. A perfect separation has 0 dB on the diagonal and −∞ elsewhere. Rows of
    silent true stems are NaN.

    Returns:
        DataFrame indexed by true stem (rows) with estimated stems as columns.
    """
    names = list(refs)
    est_names = [s for s in ests]
    window = int(window_seconds * sample_rate)
    length = min(
        min(np.shape(r)[-1] for r in refs.values()), min(np.shape(e)[-1] for e in ests.values())
    )
    found = np.zeros((len(names), len(est_names)))
    energy = np.zeros(len(names))
    for a in range(0, length, window):
        b = min(a + window, length)
        basis = np.stack([np.asarray(refs[s])[..., a:b].reshape(-1) for s in names], axis=1)
        seg_energy = np.sum(basis**2, axis=0)
        energy += seg_energy
        active = seg_energy > 1e-10
        if not active.any():
            continue
        for j, e in enumerate(est_names):
            target = np.asarray(ests[e])[..., a:b].reshape(-1)
            gains, *_ = np.linalg.lstsq(basis[:, active], target, rcond=None)
            found[active, j] += gains**2 * seg_energy[active]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(energy[:, None] > 1e-10, found / energy[:, None], np.nan)
        db = 10 * np.log10(ratio)
    return pd.DataFrame(db, index=pd.Index(names, name="true"), columns=est_names)


def mean_leakage(matrices: list[pd.DataFrame]) -> pd.DataFrame:
    """Average leakage matrices in the power domain (NaN entries ignored), in dB."""
    if not matrices:
        raise ValueError("no leakage matrices to average")
    stacked = np.stack([10 ** (m.to_numpy() / 10) for m in matrices])
    with warnings.catch_warnings(), np.errstate(divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN entries stay NaN
        db = 10 * np.log10(np.nanmean(stacked, axis=0))
    return pd.DataFrame(db, index=matrices[0].index, columns=matrices[0].columns)


# ------------------------------------------------------------------ categories
def manifest_groups(root: Path | None = None) -> dict[str, tuple[str, str]]:
    """File name → (kind-folder, group) from ``MANIFEST.csv`` (e.g. an ESC-10 file's class,
    a music file's collection)."""
    root = root or data.default_data_root()
    out = {}
    for row in data.read_manifest(root):
        folder = row.path.relative_to(root).parts[:2]
        out[row.path.name] = ("/".join(folder), row.group)
    return out


def film_categories(item: SetItem, groups: Mapping[str, tuple[str, str]]) -> dict:
    """What went into a film mixture, from its ``meta.json``: effect classes, music type,
    speech source, sung vocals, dialogue reverb and the dialogue's level above the louder
    of music and effects (dB, from the loudness targets)."""
    clips = item.meta.get("clips", {})
    targets = item.meta.get("loudness_targets_lufs", {})

    def kind(name: str) -> str:
        return groups.get(name, ("unknown", ""))[0]

    effect_classes = sorted(
        {groups[n][1].split(" - ")[-1] for n in clips.get("effects", []) if n in groups}
    )
    music = clips.get("music", [])
    sung = bool(item.meta.get("sung_vocals"))
    music_type = {
        "music/macleod": "orchestral / ambient score",
        "music/lol373": "game loop",
        "music/sms-tools": "solo instrument",
    }.get(kind(music[0]) if music else "", "song with vocals" if sung else "other")
    speech = clips.get("dialogue", [])
    others = [targets[k] for k in ("music", "effects") if k in targets]
    level = targets["dialogue"] - max(others) if "dialogue" in targets and others else np.nan
    return {
        "item": item.name,
        "effect_classes": effect_classes,
        "music_type": music_type,
        "speech_source": kind(speech[0]).split("/")[-1] if speech else "none",
        "sung_vocals": sung,
        "dialogue_reverb": bool(item.meta.get("dialogue_reverb_wet", 0.0) > 0),
        "dialogue_over_rest_db": level,
    }


def by_category(
    scores: pd.DataFrame,
    categories: pd.DataFrame,
    column: str,
    system: str,
    stem: str,
    metric: str = "si_sdr",
) -> pd.DataFrame:
    """Mean, median and count of ``metric`` for ``system``'s ``stem`` per value of
    ``categories[column]`` (list-valued columns, like effect classes, count an item once
    per value). ``scores`` is a benchmark's long CSV."""
    sub = scores[
        (scores["system"] == system) & (scores["stem"] == stem) & (scores["metric"] == metric)
    ][["item", "value"]]
    table = sub.merge(categories[["item", column]], on="item").explode(column)
    return (
        table.groupby(column)["value"].agg(["mean", "median", "count"]).sort_values("mean").round(2)
    )


def level_bucket(level_db: float, edges: tuple[float, ...] = (-6.0, 0.0, 6.0)) -> str:
    """A readable bucket of a level difference in dB: "< -6 dB", "-6…0 dB", ..., "≥ 6 dB"."""
    if not np.isfinite(level_db):
        return "n/a"
    if level_db < edges[0]:
        return f"< {edges[0]:g} dB"
    for lo, hi in zip(edges, edges[1:]):
        if lo <= level_db < hi:
            return f"{lo:g}…{hi:g} dB"
    return f"≥ {edges[-1]:g} dB"


# ------------------------------------------------------------------ plots
def plot_leakage(ax, matrix: pd.DataFrame, title: str = "", floor_db: float = -40.0) -> None:
    """Heat map of a leakage matrix (dB), annotated."""
    values = matrix.to_numpy()
    shown = np.clip(np.nan_to_num(values, nan=floor_db, neginf=floor_db), floor_db, 0)
    ax.imshow(shown, vmin=floor_db, vmax=0, cmap="viridis")
    ax.set_xticks(range(len(matrix.columns)), matrix.columns, rotation=30, fontsize=8)
    ax.set_yticks(range(len(matrix.index)), matrix.index, fontsize=8)
    ax.set_xlabel("estimated stem")
    ax.set_ylabel("true stem")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            text = "—" if not np.isfinite(v) else f"{v:.1f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if shown[i, j] < floor_db / 2 else "black")  # fmt: skip
    ax.set_title(title or "leakage (dB of the true stem's energy)", fontsize=9)


def plot_frames(ax, frames: pd.DataFrame, metric: str = "sdr", title: str = "") -> None:
    """Per-second ``metric`` over time, one line per stem."""
    for stem, table in frames.groupby("stem", sort=False):
        ax.plot(table["start_s"], table[metric], marker=".", label=stem)
    ax.set_xlabel("time (s)")
    ax.set_ylabel(f"{metric} (dB)")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)


def plot_metric_vs_snr(
    ax, scores: pd.DataFrame, metric: str = "si_sdr", noise_type: str | None = None
) -> None:
    """Mean ``metric`` against input SNR, one line per system (speech-in-noise CSV)."""
    sub = scores[(scores["metric"] == metric) & (scores["stem"] == "speech")]
    if noise_type is not None:
        sub = sub[sub["meta_noise_type"] == noise_type]
    table = sub.pivot_table(index="meta_snr_db", columns="system", values="value", aggfunc="mean")
    for system in table.columns:
        ax.plot(table.index, table[system], marker="o", label=system)
    ax.set_xlabel("input SNR (dB)")
    ax.set_ylabel(metric)
    ax.set_title(noise_type or "all noise types", fontsize=9)
    ax.legend(fontsize=7)
