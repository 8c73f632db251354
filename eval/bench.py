"""Benchmarks on evaluation sets: ``python -m eval film|music|speech --model M --set D --out D``.

Every item is separated through the public ``Separator`` (no private shortcut) and by each
anchor available, scored, and appended to ``OUT/scores.csv`` (long format: one row per item,
system, stem and metric). Runs are resumable: (item, system) pairs already in the CSV are
skipped. ``OUT/summary.md`` and PNG plots are regenerated from the CSV at the end.

Systems: the model under test (film: its film head; music: its music head; speech: its film
head's dialogue and, as the seed experiment, its music head's vocals), identity (the mix as
every stem: the floor) and the oracle ideal ratio mask from the true stems (a ceiling).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from demix import Separator, audio
from demix.separator import SeparationError, checkpoint_path
from eval import metrics
from eval.sets import SetError, SetItem, load_set

Estimates = dict[str, np.ndarray]
System = Callable[[SetItem], Estimates]


def model_fingerprint(name_or_path: str) -> str:
    """First 12 hex digits of the SHA-256 of the checkpoint file (embedded name or path)."""
    digest = hashlib.sha256(checkpoint_path(name_or_path).read_bytes())
    return digest.hexdigest()[:12]


def identity(item: SetItem) -> Estimates:
    """The mix as every stem."""
    return {stem: item.mix for stem in item.stems}


def oracle_irm(item: SetItem, n_fft: int = 2048, hop: int = 512) -> Estimates:
    """Ideal ratio mask |S_i|² / Σ_j |S_j|² from the true stems, applied to the mix STFT."""
    window = torch.hann_window(n_fft, dtype=torch.float64)

    def stft(x: np.ndarray) -> torch.Tensor:
        return torch.stft(
            torch.from_numpy(x.astype(np.float64)), n_fft, hop, window=window, return_complex=True
        )

    specs = {k: stft(v) for k, v in item.stems.items()}
    power = {k: s.abs() ** 2 for k, s in specs.items()}
    total = sum(power.values()) + 1e-12
    mix = stft(item.mix)
    n = item.mix.shape[-1]
    return {
        k: torch.istft(mix * (p / total), n_fft, hop, window=window, length=n).numpy()
        for k, p in power.items()
    }


def model_system(sep: Separator, head: str, rename: dict[str, str] | None = None) -> System:
    """The model's ``head`` through ``Separator.separate``; ``rename`` maps its stems to the
    set's stem names (e.g. dialogue → speech). Where the set has an ``other`` reference, it is
    everything the other references are not (MUSDB18's four stems: its ``other`` holds the
    guitars and keys), so the model's stems that the set does not reference are summed into
    its ``other`` estimate; elsewhere they are left out."""
    rename = rename or {}

    def run(item: SetItem) -> Estimates:
        out = sep.separate(item.mix, item.sample_rate, head=head)
        est = {rename.get(k, k): v.numpy() for k, v in out.items()}
        kept = {k: v for k, v in est.items() if k in item.stems}
        if "other" in kept:
            kept["other"] = kept["other"] + sum(
                (v for k, v in est.items() if k not in item.stems), np.zeros_like(kept["other"])
            )
        return kept

    return run


def score(
    task: str, item: SetItem, est: Estimates, bss: bool = True
) -> list[tuple[str, str, float]]:
    """(stem, metric, value) rows for one item and system; on music, also museval's
    BSSEval v4 medians unless ``bss`` is False (about 40 s per system and 20-s song here)."""
    rows = []
    stems = [s for s in item.stems if s in est]
    for stem in stems:
        ref = item.stems[stem]
        rows.append((stem, "si_sdr", metrics.si_sdr(ref, est[stem])))
        rows.append((stem, "global_sdr", metrics.global_sdr(ref, est[stem])))
        if task == "speech" and stem == "speech":
            rows.append(
                (stem, "si_sdr_improvement", metrics.si_sdr_improvement(ref, est[stem], item.mix))
            )
            rows.append((stem, "estoi", metrics.estoi(ref, est[stem], item.sample_rate)))
            rows.append((stem, "pesq_wb", metrics.pesq_wb(ref, est[stem], item.sample_rate)))
    if task == "music" and stems and bss:
        medians = metrics.bss_eval_v4(
            [item.stems[s] for s in stems], [est[s] for s in stems], item.sample_rate
        )
        for i, stem in enumerate(stems):
            for name in ("sdr", "sir", "sar", "isr"):
                rows.append((stem, f"bss_{name}", float(medians[name][i])))
    return rows


def systems_for(
    task: str, sep: Separator, model_name: str, anchors: bool = True
) -> dict[str, System]:
    """The systems run on ``task``'s set (speech-enhancement anchors on film and speech)."""
    out: dict[str, System] = {}
    if task == "film":
        out[model_name] = model_system(sep, "film")
    elif task == "music":
        out[model_name] = model_system(sep, "music")
    else:
        if "film" in sep.heads:
            out[f"{model_name}:film-dialogue"] = model_system(sep, "film", {"dialogue": "speech"})
        if "music" in sep.heads:
            out[f"{model_name}:music-vocals"] = model_system(sep, "music", {"vocals": "speech"})
    out["identity"] = identity
    out["oracle-irm"] = oracle_irm
    if task == "music" and anchors:
        from eval.anchors import spleeter_2stems

        try:
            spleeter = spleeter_2stems()
        except FileNotFoundError as exc:
            print(f"anchor spleeter-2stems skipped: {exc}", file=sys.stderr)
        else:
            out["spleeter-2stems"] = lambda item: {
                "vocals": spleeter(item.mix, item.sample_rate)["vocals"]
            }
    if task in ("film", "speech") and anchors:
        from eval.anchors import available_anchors

        ready, missing = available_anchors()
        for name, why in missing.items():
            print(f"anchor {name} skipped: {why}", file=sys.stderr)
        target = "dialogue" if task == "film" else "speech"
        for name, anchor in ready.items():
            out[name] = _speech_anchor(anchor, target)
    return out


def _speech_anchor(anchor, target: str) -> System:
    def run(item: SetItem) -> Estimates:
        return {target: anchor(item.mix, item.sample_rate)}

    return run


SET_KEY = "(set)"  # models.json's entry for the set's fingerprint


def set_fingerprint(set_dir: Path) -> str:
    """A hash of a set folder's file names and sizes and of every ``meta.json`` (which names
    the clips, seeds and levels each item was made from): it changes when the set is rebuilt
    from other material, not when it is rebuilt identically."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(set_dir).rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(set_dir).as_posix()} {path.stat().st_size}\n".encode())
        if path.name == "meta.json":
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def run_benchmark(
    task: str,
    sep: Separator,
    model_name: str,
    set_dir: Path,
    out_dir: Path,
    progress: bool = True,
    anchors: bool = True,
    model_id: str | None = None,
    bss: bool = True,
) -> pd.DataFrame:
    """Separate and score every item of ``set_dir``; append to ``out_dir/scores.csv``.

    ``model_id`` (e.g. a hash of the checkpoint) is stored in ``out_dir/models.json``; when the
    model behind ``model_name`` changed since the CSV was written, its rows are dropped and
    rescored, while the anchors' rows are kept. The set's fingerprint (``set_fingerprint``) is
    stored there too: when the set was rebuilt differently, every row is dropped.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "scores.csv"
    ids_path = out_dir / "models.json"
    set_id = set_fingerprint(set_dir)
    ids = json.loads(ids_path.read_text()) if ids_path.exists() else {}
    if ids.get(SET_KEY) != set_id:
        if csv_path.exists():
            print(f"{set_dir}: not the set these scores came from, rescoring", file=sys.stderr)
            csv_path.unlink()
        ids_path.write_text(json.dumps({SET_KEY: set_id}, indent=1) + "\n")
    done: set[tuple[str, str]] = set()
    if csv_path.exists():
        old = pd.read_csv(csv_path)
        if model_id is not None:
            kept = _drop_stale_model_rows(old, out_dir / "models.json", model_name, model_id)
            if len(kept) < len(old):  # rewrite only when the model's old rows were dropped
                kept.to_csv(csv_path, index=False)
            old = kept
        done = set(zip(old["item"], old["system"]))
    elif model_id is not None:
        _record_model_id(out_dir / "models.json", model_name, model_id)
    systems = systems_for(task, sep, model_name, anchors)
    items = list(load_set(set_dir))
    if not items:
        raise SystemExit(f"{set_dir}: no items in a known layout (DnR, MUSDB, speech)")
    for item in tqdm(items, desc=f"{task} benchmark", disable=not progress):
        rows = []
        for name, system in systems.items():
            if (item.name, name) in done:
                continue
            for stem, metric, value in score(task, item, system(item), bss):
                rows.append(
                    {
                        "item": item.name,
                        "system": name,
                        "stem": stem,
                        "metric": metric,
                        "value": value,
                        **{
                            f"meta_{k}": v
                            for k, v in item.meta.items()
                            if isinstance(v, str | int | float)
                        },
                    }
                )
        if rows:  # one append per item: an interrupted run resumes at the next item
            _append(csv_path, pd.DataFrame(rows))
    scores = pd.read_csv(csv_path)
    write_summary(task, scores, out_dir)
    return scores


def _append(csv_path: Path, frame: pd.DataFrame) -> None:
    """Append rows to the CSV; when they bring new columns (a set rebuilt with more
    provenance), rewrite the file with the union of columns instead of misaligning it."""
    if not csv_path.exists():
        frame.to_csv(csv_path, index=False)
        return
    header = list(pd.read_csv(csv_path, nrows=0).columns)
    if set(frame.columns) <= set(header):
        frame.reindex(columns=header).to_csv(csv_path, mode="a", header=False, index=False)
    else:
        whole = pd.concat([pd.read_csv(csv_path), frame], ignore_index=True)
        tmp = csv_path.with_suffix(".tmp")
        whole.to_csv(tmp, index=False)
        tmp.replace(csv_path)


def _record_model_id(path: Path, model_name: str, model_id: str) -> None:
    ids = json.loads(path.read_text()) if path.exists() else {}
    ids[model_name] = model_id
    path.write_text(json.dumps(ids, indent=1) + "\n")


def _drop_stale_model_rows(
    scores: pd.DataFrame, ids_path: Path, model_name: str, model_id: str
) -> pd.DataFrame:
    ids = json.loads(ids_path.read_text()) if ids_path.exists() else {}
    if ids.get(model_name) != model_id:
        mine = scores["system"].str.split(":").str[0] == model_name
        if mine.any():
            print(f"{model_name}: checkpoint changed, rescoring its rows", file=sys.stderr)
        scores = scores[~mine]
        _record_model_id(ids_path, model_name, model_id)
    return scores


def write_summary(task: str, scores: pd.DataFrame, out_dir: Path) -> None:
    """``summary.md`` (mean and median per system × stem × metric; speech also per SNR and
    noise type) and PNG plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    valid = scores.dropna(subset=["value"])
    lines = [
        f"# {task} benchmark",
        "",
        f"{scores['item'].nunique()} items; NaN scores (silent references, failed metrics) "
        f"excluded: {int(scores['value'].isna().sum())}.",
        "",
    ]
    table = valid.groupby(["metric", "stem", "system"])["value"].agg(["mean", "median", "count"])
    lines.append(table.round(2).reset_index().to_markdown(index=False))
    if task == "speech" and "meta_snr_db" in valid:
        for key in ("meta_snr_db", "meta_noise_type"):
            pivot = valid[valid["metric"].isin(["si_sdr", "estoi", "pesq_wb"])].pivot_table(
                index=["metric", "system"], columns=key, values="value", aggfunc="mean"
            )
            lines += [
                "",
                f"## mean by {key.removeprefix('meta_')}",
                "",
                pivot.round(2).to_markdown(),
            ]
    (out_dir / "summary.md").write_text("\n".join(lines) + "\n")

    main_metric = "global_sdr" if task == "music" else "si_sdr"
    subset = valid[valid["metric"] == main_metric]
    if task == "speech" and "meta_snr_db" in subset:
        fig, ax = plt.subplots(figsize=(6, 4))
        for system, group in subset.groupby("system"):
            curve = group.groupby("meta_snr_db")["value"].mean()
            ax.plot(curve.index, curve.values, marker="o", label=system)
        ax.set_xlabel("input SNR (dB)")
        ax.set_ylabel("speech SI-SDR (dB)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    else:
        stems = sorted(subset["stem"].unique())
        systems = sorted(subset["system"].unique())
        fig, axes = plt.subplots(1, len(stems), figsize=(3 * len(stems), 4), squeeze=False)
        for ax, stem in zip(axes[0], stems):
            data = [
                subset[(subset["stem"] == stem) & (subset["system"] == s)]["value"] for s in systems
            ]
            ax.boxplot(data, tick_labels=systems)
            ax.set_title(stem)
            ax.tick_params(axis="x", rotation=60, labelsize=7)
        axes[0][0].set_ylabel(f"{main_metric} (dB)")
    fig.tight_layout()
    fig.savefig(out_dir / f"{task}_{main_metric}.png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m eval film|music|speech``."""
    p = argparse.ArgumentParser(prog="python -m eval")
    p.add_argument("task", choices=["film", "music", "speech"])
    p.add_argument("--model", default="demix-small", help="embedded name or checkpoint path")
    p.add_argument("--set", required=True, dest="set_dir", help="evaluation set folder")
    p.add_argument("--out", required=True, help="results folder (resumable)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-anchors", action="store_true", help="skip DFN3 / RNNoise / Conv-TasNet")
    args = p.parse_args(argv)
    if not Path(args.set_dir).is_dir():
        p.error(f"--set {args.set_dir}: no such folder (make the sets with python -m eval.sets)")
    try:
        sep = Separator.from_pretrained(args.model, device=args.device)
    except (SeparationError, ValueError) as exc:
        p.error(" ".join(str(exc).split()))
    name = Path(args.model).stem
    try:
        scores = run_benchmark(
            args.task,
            sep,
            name,
            Path(args.set_dir),
            Path(args.out),
            anchors=not args.no_anchors,
            model_id=model_fingerprint(args.model),
        )
    except (SetError, audio.AudioError) as exc:  # an item that cannot be read or scored
        print(f"python -m eval: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print((Path(args.out) / "summary.md").read_text())
    return 0 if len(scores) else 1


if __name__ == "__main__":
    sys.exit(main())
