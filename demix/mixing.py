"""Remixing separated stems: gains in dB, mute and solo (shared by the demo and notebooks)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np

MUTE_DB = -60.0  # a gain at or below this mutes the stem (a fader's −∞)


def remix(
    stems: Mapping[str, np.ndarray],
    gains_db: Mapping[str, float] | None = None,
    mute: Collection[str] = (),
    solo: Collection[str] = (),
    groups: Sequence[Collection[str]] | None = None,
) -> np.ndarray:
    """Sum ``stems`` ({name: [c, t]}) with per-stem gains in dB (default 0).

    A stem is left out when muted, when its gain is at or below :data:`MUTE_DB`, or when
    any stem is soloed and it is not. With nothing left, returns silence shaped like a stem.

    ``groups`` names the stems that add up to the mix together, one group per head: with
    head "both" the film stems and the music stems are each a whole mix, so summing all nine
    would double it (+6 dB). Each group is remixed on its own and the groups are averaged,
    so unity gains give back the mix whatever the number of heads. Default: one group.

    Raises:
        ValueError: a gain, mute or solo names a stem that is not there; no stems.
    """
    if not stems:
        raise ValueError("no stems to remix")
    gains_db = dict(gains_db or {})
    unknown = (set(gains_db) | set(mute) | set(solo)) - set(stems)
    if unknown:
        raise ValueError(f"unknown stems {sorted(unknown)} (have {list(stems)})")
    groups = [list(g) for g in groups if g] if groups else [list(stems)]
    ungrouped = set(stems) - {name for g in groups for name in g}
    if ungrouped or any(name not in stems for g in groups for name in g):
        raise ValueError(f"groups {groups} do not partition the stems {list(stems)}")
    first = next(iter(stems.values()))
    total = np.zeros(np.shape(first), dtype=np.float32)
    for group in groups:
        for name in group:
            gain_db = gains_db.get(name, 0.0)
            if name in mute or (solo and name not in solo) or gain_db <= MUTE_DB:
                continue
            weight = 10.0 ** (gain_db / 20.0) / len(groups)
            total += np.asarray(stems[name], dtype=np.float32) * np.float32(weight)
    return total
