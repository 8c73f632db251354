"""Where does each instrument of a song go when the film head separates it?

``python -m eval.song_shares [--model demix-small] [--seconds 20] [--head film]``

A film's music is often a song, and the film head must send all of it (the singing too) to
music. For each dev multitrack song (``stems/mdb``, evaluation only: NC licence), an excerpt
from its middle is separated twice: the whole song, and the song without one of its stems.
The difference of the two outputs is what that stem brought to each output stem; its share of
the stem is the projection ``<out(song) - out(song - stem), stem> / |stem|²``. The separator
makes its outputs sum to the input, so the shares of one stem over the outputs sum to 1: the
table reads "vocals: 0.36 dialogue, 0.57 music, 0.07 effects" as 36 % of the singing landing
in dialogue.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping

import numpy as np

from demix import Separator


def stem_shares(
    sep: Separator, stems: Mapping[str, np.ndarray], sample_rate: int, head: str = "film"
) -> dict[str, dict[str, float]]:
    """{input stem: {output stem: share}} for one song given as ``stems`` {name: [c, t]}
    (its mixture is their sum); input stems quieter than -60 dBFS RMS are left out."""
    song = sum(stems.values())
    whole = sep.separate(song, sample_rate, head=head)
    out: dict[str, dict[str, float]] = {}
    for name, x in stems.items():
        energy = float(np.sum(x.astype(np.float64) ** 2))
        if energy / x.size < 1e-6:
            continue
        without = sep.separate(song - x, sample_rate, head=head)
        out[name] = {
            k: float(np.sum((whole[k].numpy() - without[k].numpy()).astype(np.float64) * x))
            / energy
            for k in whole
        }
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the mean share of each song stem per output stem over the dev songs."""
    from eval.dev import music_items

    p = argparse.ArgumentParser(
        prog="python -m eval.song_shares", description=__doc__.splitlines()[0]
    )
    p.add_argument("--model", default="demix-small")
    p.add_argument("--seconds", type=float, default=20.0, help="excerpt from each song's middle")
    p.add_argument("--head", default="film", choices=("film", "music"), help="the separating head")
    args = p.parse_args(argv)
    try:
        items = music_items(args.seconds)
    except FileNotFoundError as exc:
        print(f"no dev songs: {exc}", file=sys.stderr)
        return 1
    sep = Separator.from_pretrained(args.model)
    rows: dict[str, list[dict[str, float]]] = {}
    for item in items:
        for name, shares in stem_shares(sep, item.stems, item.sample_rate, args.head).items():
            rows.setdefault(name, []).append(shares)
    outputs = list(sep.heads[args.head])
    print(
        f"model: {args.model}; {len(items)} mdb songs, {args.seconds:g}-s excerpts; "
        f"head {args.head}"
    )
    print("| song stem | songs | " + " | ".join(outputs) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in outputs) + " |")
    for name, shares in rows.items():
        means = [np.mean([s[o] for s in shares]) for o in outputs]
        print(f"| {name} | {len(shares)} | " + " | ".join(f"{m:.2f}" for m in means) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
