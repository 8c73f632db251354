"""Remixing separated stems: gains in dB, mute and solo (shared by the demo and notebooks)."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np

MUTE_DB = -60.0  # a gain at or below this mutes the stem (a fader's −∞)


def remix(
    stems: Mapping[str, np.ndarray],
    gains_db: Mapping[str, float] | None = None,
    mute: Collection[str] = (),
    solo: Collection[str] = (),
) -> np.ndarray:
    """Sum ``stems`` ({name: [c, t]}) with per-stem gains in dB (default 0).

    A stem is left out when muted, when its gain is at or below :data:`MUTE_DB`, or when
    any stem is soloed and it is not. With nothing left, returns silence shaped like a stem.

    Raises:
        ValueError: a gain, mute or solo names a stem that is not there; no stems.
    """
    if not stems:
        raise ValueError("no stems to remix")
    gains_db = dict(gains_db or {})
    unknown = (set(gains_db) | set(mute) | set(solo)) - set(stems)
    if unknown:
        raise ValueError(f"unknown stems {sorted(unknown)} (have {list(stems)})")
    first = next(iter(stems.values()))
    total = np.zeros(np.shape(first), dtype=np.float32)
    for name, x in stems.items():
        gain_db = gains_db.get(name, 0.0)
        if name in mute or (solo and name not in solo) or gain_db <= MUTE_DB:
            continue
        total += np.asarray(x, dtype=np.float32) * np.float32(10.0 ** (gain_db / 20.0))
    return total
