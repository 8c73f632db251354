"""Regenerate ``eval/RESULTS.md``: the embedded default against the anchors on every set.

``python -m eval.results [--model demix-small] [--work runs/results] [--utterances 8]``

Builds the seeded sets (film, film with sung music, speech in noise, music, synthetic music) from
``../shared/data`` if missing, runs the benchmarks (resumable, in ``--work``), and writes
the headline tables with the commands that produced them, the machine and the date. Every
number in the page comes from the CSVs of this run.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

import pandas as pd

from demix import Separator
from demix.data import default_data_root
from demix.separate import SEPARATION_VERSION
from eval.bench import model_fingerprint, run_benchmark
from eval.sets import (
    build_film_set,
    build_film_sung_set,
    build_music_set,
    build_music_synth_set,
    build_speech_set,
)
from eval.speed import cpu_name

HEADLINE = {
    "film": ("si_sdr", ["dialogue", "music", "effects"]),
    "music": ("global_sdr", ["drums", "bass", "vocals", "guitar", "other"]),
    "speech": ("si_sdr", ["speech"]),
}
SET_HEADLINE = {  # sets whose table differs from their task's
    "music-synth": ("global_sdr", ["drums", "bass", "vocals", "guitar", "piano", "other"]),
}


SET_NOTES = {
    "film": "48 film mixtures of 10 s (the Divide-and-Remaster levels: dialogue −17, music −24, "
    "effects −21 LUFS, each ±3 dB; dev speech, dev music, ESC-10 fold 4), with the mixer's "
    "everyday variations kept: a room on 30 % of the dialogue (the speechbrain impulse "
    "responses or a synthetic room), pauses, random EQ and an overall gain of −6…+3 dB.",
    "film-sung": "16 film mixtures of 10 s whose music is a song with a singer (dev multitrack "
    "songs, where the vocals are active): the singing belongs to music, not dialogue.",
    "speech": "Speech in noise: dev utterances in ESC-10, DEMAND, music and pink noise at "
    "SNR −5…20 dB (the whole utterance's energy against the noise's, pauses included, not "
    "the active speech level of ITU-T P.56). `demix-small:film-dialogue` is the film head's "
    "dialogue; `demix-small:music-vocals` is the music head's vocals (the seed experiment).",
    "music": "The dev multitrack songs (stems/mdb) and the MUSDB18 fixtures that are not "
    "MedleyDB songs already counted, full length; global SDR as in the Sound Demixing "
    "Challenge 2023. On the MUSDB18 song, `other` is everything but drums, bass and vocals, "
    "so the model's guitar and piano are scored as part of its `other`; the last row counts "
    "the songs behind each column.",
    "music-synth": "12 held-back synthetic songs of 20 s (`eval.sets.build_music_synth_set`): "
    "SoundFont renders from seeds training never draws, with dev speech sung over the chords "
    "as vocals; the only piano and other references here. Same SoundFont presets as in "
    "training, so these numbers flatter the model (new compositions, not new instruments). "
    "A stem a song has no part for is not scored, except through `other`: where a song has "
    "an `other` part, the model's estimates of its absent stems count as part of its `other`. "
    "Global SDR only (BSSEval on these songs would cost about half an hour here).",
}


def _common_items(sub: pd.DataFrame) -> pd.DataFrame:
    """The rows of the items that every system scored on a stem (a NaN for one system, such
    as a PESQ error or a silent reference, drops that item for all), so that each stem's
    means compare the systems on the same items."""
    systems = sub.groupby("stem")["system"].nunique()
    finite = sub.dropna(subset=["value"])
    counts = finite.groupby(["stem", "item"])["system"].nunique()
    whole = counts[counts == systems.reindex(counts.index.get_level_values("stem")).values]
    keep = pd.MultiIndex.from_frame(finite[["stem", "item"]]).isin(whole.index)
    return finite[keep]


def _table(scores: pd.DataFrame, metric: str, stems: list[str], counts: bool = False) -> str:
    sub = _common_items(scores[(scores["metric"] == metric) & scores["stem"].isin(stems)])
    pivot = sub.pivot_table(index="system", columns="stem", values="value", aggfunc="mean")
    pivot = pivot[[s for s in stems if s in pivot.columns]]
    # Anchors that estimate one stem only (speech enhancers, Spleeter's vocals) leave blanks.
    shown = pivot.apply(lambda col: col.map(lambda v: f"{v:.2f}" if pd.notna(v) else ""))
    if counts:
        items = sub.groupby("stem")["item"].nunique()
        shown.loc["(items)"] = [str(items.get(stem, 0)) for stem in shown.columns]
    return shown.reset_index().to_markdown(
        index=False, disable_numparse=True, colalign=["left"] + ["right"] * len(shown.columns)
    )


def _speech_tables(scores: pd.DataFrame) -> str:
    parts = []
    for metric in ("si_sdr", "estoi", "pesq_wb"):
        sub = _common_items(scores[(scores["metric"] == metric) & (scores["stem"] == "speech")])
        pivot = sub.pivot_table(
            index="system", columns="meta_snr_db", values="value", aggfunc="mean"
        )
        pivot["mean"] = sub.groupby("system")["value"].mean()
        parts += [
            f"**{metric}** by input SNR (dB), mean over noise types and utterances:",
            "",
            pivot.round(2).reset_index().to_markdown(index=False),
            "",
        ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Build sets, run benchmarks, write RESULTS.md."""
    p = argparse.ArgumentParser(prog="python -m eval.results")
    p.add_argument("--model", default="demix-small")
    p.add_argument("--work", default="runs/results", help="sets and per-item CSVs (resumable)")
    p.add_argument("--utterances", type=int, default=8)
    p.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    p.add_argument(
        "--sets",
        help="comma-separated subset of the sets to run and show (default: all; the page then "
        "says which sets were left out)",
    )
    p.add_argument(
        "--no-bss",
        action="store_true",
        help="skip museval BSSEval (most of the hour this takes from nothing on 2 cores); "
        "the headline tables (SI-SDR, global SDR, ESTOI, PESQ) are unchanged",
    )
    args = p.parse_args(argv)
    if not (default_data_root() / "MANIFEST.csv").exists():
        print(f"no development data at {default_data_root()}", file=sys.stderr)
        return 1
    work = Path(args.work)
    sets = {  # set name: (task, builder, museval BSSEval too)
        "film": ("film", lambda d: build_film_set(d), True),
        "film-sung": ("film", lambda d: build_film_sung_set(d), True),
        "speech": ("speech", lambda d: build_speech_set(d, args.utterances), True),
        "music": ("music", build_music_set, True),
        "music-synth": ("music", build_music_synth_set, False),  # 40 s per system and song
    }
    left_out = []
    if args.sets:
        chosen = [x.strip() for x in args.sets.split(",") if x.strip()]
        unknown = sorted(set(chosen) - set(sets))
        if unknown:
            p.error(f"unknown set(s) {', '.join(unknown)} (choose from {', '.join(sets)})")
        left_out = [x for x in sets if x not in chosen]
        sets = {k: v for k, v in sets.items() if k in chosen}
    sep = Separator.from_pretrained(args.model)
    name = Path(args.model).stem
    checkpoint_id = model_fingerprint(args.model)  # hashes the whole checkpoint: once
    # Cached scores are reused only for the same weights separated the same way.
    model_id = f"{checkpoint_id} separation v{SEPARATION_VERSION}"
    sections = []
    systems_run: set[str] = set()
    for set_name, (task, build, bss) in sets.items():
        set_dir = work / "sets" / set_name
        if not set_dir.exists():
            build(set_dir)
        scores = run_benchmark(
            task,
            sep,
            name,
            set_dir,
            work / set_name,
            model_id=model_id,
            bss=bss and not args.no_bss,
        )
        systems_run.update(scores["system"].unique())
        metric, stems = SET_HEADLINE.get(set_name, HEADLINE[task])
        sections.append(
            f"## {set_name}\n\n{SET_NOTES[set_name]}\n\n{scores['item'].nunique()} items; "
            f"mean {metric} (dB) per stem; full tables in `{work / set_name / 'summary.md'}`.\n\n"
            + _table(scores, metric, stems, counts=task == "music")
            + "\n"
        )
        if task == "speech":
            sections.append(_speech_tables(scores))
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = [
        "# demix results",
        "",
        f"Generated by `python -m eval.results --model {args.model}"
        + (" --no-bss" if args.no_bss else "")
        + (f" --sets {args.sets}" if args.sets else "")
        + f"` on {now}"
        f" (checkpoint sha256 {checkpoint_id}…, separation v{SEPARATION_VERSION}).",
        f"Machine: {cpu_name()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}.",
        "Sets: seeded from the dev split of `../shared/data` (`python -m eval.sets`). "
        "Identity = the mix as every stem; oracle-irm = ideal ratio mask from the true stems; "
        "deepfilternet3 / rnnoise / convtasnet = speech enhancers, scored on dialogue/speech"
        + (
            "; spleeter-2stems = Spleeter's pretrained 2-stem model, scored on vocals."
            if "spleeter-2stems" in systems_run
            else " (Spleeter's 2-stem model, the vocals anchor, was not run: see the music "
            "benchmark's log)."
        ),
        "Each stem's mean is over the items every system in its table scored.",
        "",
    ]
    if left_out:
        header += [
            f"Not run for this checkpoint: {', '.join(left_out)} (see the git history of this "
            "page for the previous model's figures on them).",
            "",
        ]
    Path(args.out).write_text("\n".join(header + sections) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
