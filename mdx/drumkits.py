"""Drum grooves played on real sampled drum kits (Hydrogen drumkits), for the drums stem.

The drums stem's real material is otherwise sonic-pi's loops and one-shots (mostly electronic)
and the SoundFonts' GM kits. Debian's ``hydrogen-drumkits`` installs recorded kits, two of
them licence-clean: ``rumpf_kit_z01_h2`` (CC-BY-3.0, Emanuel Rumpf: an acoustic kit recorded
at 48 kHz, kicks, snares, hats, toms, crash, ride, cowbell) and ``Audiophob`` (CC0, one-shots
from freesound). A kit is read from its ``drumkit.xml`` (both the old flat format and the
namespaced one with velocity layers); its licence is read there too, and a kit whose licence
does not allow training a shipped model (GPL, share-alike, non-commercial) is left out.

A part is a groove on a 16th-note grid in one of a few styles (rock, half time, four on the
floor, shuffle, 16th hats, ride), with backbeats, ghost notes, open hats choked by the next
closed one, a crash at phrase starts and tom fills at phrase ends; every hit has its own
velocity (gain, and the kit's velocity layer where it has several) and a few ms of timing
error; each piece is tuned (resampled) per part, panned across the stereo image as a kit is
miked, and the whole kit goes through a small room. Parts are rendered once into a cached
pool (``demix.data.ClipPool``). ``$DEMIX_DRUMKITS`` names other kit folders (or folders of
kits), separated by ``os.pathsep``.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from demix import audio, data

DRUMKITS_VERSION = 1  # bump when the parts change: it keys the cached pool
DRUMKIT_DIRS = ("/usr/share/hydrogen/data/drumkits",)
# The licence-clean kits that ``find_drumkits()`` gives there, in its order (by name): the
# pool's cache key where no kit is installed, so that a machine without them (a lent GPU with
# a training pack) opens the pool rendered here. (Session 13 found the two in the other order,
# which no machine computes: the GPU burst trained without kit grooves.)
DEBIAN_KIT_NAMES = ("Audiophob", "rumpf_kit_z01_gm")

# Instrument names to the roles a groove plays, first match wins (order matters: "open hat"
# before "hat", "ride bell" is a ride, "bass drum" is a kick).
_ROLES = (
    ("kick", r"kick|bass ?drum|\bbd\b"),
    ("snare", r"snare"),
    ("rim", r"stick|rim"),
    ("clap", r"clap"),
    ("hat_pedal", r"pedal"),
    ("hat_open", r"open"),
    ("hat", r"hat|\bhh\b"),
    ("tom_low", r"(low|floor).*tom|tom.*(low|floor|\b0\b)"),
    ("tom_high", r"(hi|high).*tom|tom.*(hi|high)"),
    ("tom_mid", r"tom"),
    ("ride", r"ride"),
    ("crash", r"crash|cymbal|china|splash"),
    ("cowbell", r"cowbell"),
)
# Licence texts as kits write them ("cc-by ==> .../by/3.0/", "Creative Commons 0 License",
# "GPL", "Attribution-Share Alike 3.0"): what may train a shipped model.
_LICENCE_BAD = re.compile(r"gpl|share|\bsa\b|non-?commercial|\bnc\b|\bnd\b|no ?deriv", re.I)
_LICENCE_OK = re.compile(
    r"\bcc0\b|creative commons 0|public domain|\bcc-by\b|licenses/by/|attribution", re.I
)


@dataclass
class Layer:
    """One recording of a piece, played for velocities in [low, high] (0-1)."""

    path: Path
    low: float = 0.0
    high: float = 1.0
    gain: float = 1.0


@dataclass
class Piece:
    """A kit piece: its role in a groove and its velocity layers."""

    name: str
    role: str
    volume: float = 1.0
    layers: list[Layer] = field(default_factory=list)


@dataclass
class DrumKit:
    """A Hydrogen drumkit read from ``folder/drumkit.xml``."""

    folder: Path
    name: str
    licence: str
    pieces: list[Piece]

    def roles(self) -> dict[str, list[Piece]]:
        """{role: pieces playing it}."""
        out: dict[str, list[Piece]] = {}
        for piece in self.pieces:
            out.setdefault(piece.role, []).append(piece)
        return out

    @property
    def trainable(self) -> bool:
        """Its licence allows training a shipped model (no GPL, SA, NC or ND)."""
        return licence_is_trainable(self.licence)

    @property
    def playable(self) -> bool:
        """It has what a groove needs: a kick, a snare and a hi-hat or a ride."""
        roles = self.roles()
        return "kick" in roles and "snare" in roles and ("hat" in roles or "ride" in roles)


def licence_is_trainable(text: str) -> bool:
    """True for a kit's free-form licence text that allows training a shipped model."""
    return bool(_LICENCE_OK.search(text)) and not _LICENCE_BAD.search(text)


def role_of(name: str) -> str | None:
    """The groove role of an instrument name ("c3 - bass drum 1" → "kick"), or None."""
    name = re.sub(r"^[a-g]#?\d\s*-\s*", "", name.strip().lower())  # "c#3 - stick": a key
    for role, pattern in _ROLES:
        if re.search(pattern, name):
            return role
    return None


def _text(node: ET.Element, tag: str, default: str = "") -> str:
    for child in node:
        if child.tag.rsplit("}", 1)[-1] == tag:
            return (child.text or "").strip()
    return default


def _children(node: ET.Element, tag: str) -> list[ET.Element]:
    return [n for n in node.iter() if n.tag.rsplit("}", 1)[-1] == tag]


def read_drumkit(folder: Path) -> DrumKit:
    """A kit from ``folder/drumkit.xml``; pieces whose names map to no role, and layers whose
    files are missing, are left out. Raises ValueError for a missing or unreadable xml."""
    xml = folder / "drumkit.xml"
    try:
        root = ET.parse(xml).getroot()
    except (OSError, ET.ParseError) as exc:
        raise ValueError(f"{xml}: not a readable Hydrogen drumkit ({exc})") from exc
    pieces = []
    for node in _children(root, "instrument"):
        name = _text(node, "name")
        role = role_of(name)
        if role is None:
            continue

        def number(parent: ET.Element, tag: str, default: float) -> float:
            try:
                return float(_text(parent, tag, str(default)))
            except ValueError:
                return default

        layers = [
            Layer(folder / _text(n, "filename"), number(n, "min", 0.0), number(n, "max", 1.0),
                  number(n, "gain", 1.0))
            for n in _children(node, "layer")
        ]  # fmt: skip
        if not layers and _text(node, "filename"):  # the old flat format: one sample
            layers = [Layer(folder / _text(node, "filename"))]
        layers = [la for la in layers if la.path.is_file()]
        if layers:
            pieces.append(Piece(name, role, number(node, "volume", 1.0), layers))
    return DrumKit(folder, _text(root, "name", folder.name), _text(root, "license"), pieces)


def find_drumkits() -> list[DrumKit]:
    """Licence-clean, playable kits in ``$DEMIX_DRUMKITS`` or the Debian folder (each entry a
    kit folder or a folder of kits), sorted by name."""
    env = os.environ.get("DEMIX_DRUMKITS")
    roots = [Path(p) for p in env.split(os.pathsep) if p] if env else map(Path, DRUMKIT_DIRS)
    kits = []
    for root in roots:
        folders = [root] if (root / "drumkit.xml").is_file() else sorted(root.glob("*/"))
        for folder in folders:
            if not (folder / "drumkit.xml").is_file():
                continue
            try:
                kit = read_drumkit(folder)
            except ValueError:
                continue
            if kit.trainable and kit.playable:
                kits.append(kit)
    return sorted(kits, key=lambda k: k.name)


@dataclass
class _Sound:
    """A piece ready to play: its layers' samples [2, t] at the part's rate and tuning."""

    layers: list[tuple[float, float, np.ndarray]]  # (lowest, highest velocity, sample)

    def take(self, velocity: float, rng: np.random.Generator) -> np.ndarray:
        fits = [x for low, high, x in self.layers if low <= velocity <= high]
        pick = fits or [x for _, _, x in self.layers]
        return pick[int(rng.integers(len(pick)))]


class KitSamples:
    """A kit's samples decoded once at one rate (mono or stereo, as recorded)."""

    def __init__(self, kit: DrumKit, sample_rate: int):
        self.kit = kit
        self.samples: dict[Path, np.ndarray] = {}
        for piece in kit.pieces:
            for layer in piece.layers:
                if layer.path not in self.samples:
                    x, _ = audio.read(layer.path, sample_rate)
                    peak = float(np.abs(x).max())
                    if peak > 0:
                        self.samples[layer.path] = (x[:2] / peak).astype(np.float32)
        self.roles = {
            role: [p for p in pieces if all(la.path in self.samples for la in p.layers)]
            for role, pieces in kit.roles().items()
        }


def _tuned(x: np.ndarray, semitones: float) -> np.ndarray:
    """Resampled by ``semitones`` (higher and shorter for positive), as a drum retuned."""
    if abs(semitones) < 1e-3:
        return x
    factor = 2.0 ** (semitones / 12.0)
    n = max(int(x.shape[-1] / factor), 1)
    positions = np.arange(n) * factor
    grid = np.arange(x.shape[-1])
    return np.stack([np.interp(positions, grid, ch) for ch in x]).astype(np.float32)


def _panned(x: np.ndarray, pan: float) -> np.ndarray:
    """[2, t] from a mono or stereo sample, constant-power pan in [-1, 1]."""
    if x.shape[0] == 1:
        return data.pan_mono(x, pan)
    left, right = np.cos((pan + 1) * np.pi / 4), np.sin((pan + 1) * np.pi / 4)
    return (x * np.array([[left], [right]], np.float32) * np.sqrt(2)).astype(np.float32)


_STYLES = ("rock", "halftime", "four_floor", "shuffle", "sixteenths", "ride")


def _bar_pattern(style: str, rng: np.random.Generator) -> dict[str, list[tuple[int, float]]]:
    """One bar of a style on a 16-step grid: {role: [(step, velocity)]}."""
    hits: dict[str, list[tuple[int, float]]] = {}

    def add(role: str, step: int, velocity: float) -> None:
        hits.setdefault(role, []).append((step, float(np.clip(velocity, 0.05, 1.0))))

    cymbal = "ride" if style == "ride" else "hat"
    if style == "shuffle":  # swung eighths: the grid's off-beats are pushed later in _steps
        cymbal_steps = range(0, 16, 2)
    elif style == "sixteenths":
        cymbal_steps = range(16)
    else:
        cymbal_steps = range(0, 16, 2) if rng.random() < 0.8 else range(0, 16, 4)
    for step in cymbal_steps:
        accent = 0.85 if step % 4 == 0 else 0.6
        add(cymbal, step, accent + rng.normal(0, 0.07))
    if style == "four_floor":
        kicks = [0, 4, 8, 12]
        for step in (2, 6, 10, 14):  # open hats on the off-beats
            if rng.random() < 0.7:
                hits[cymbal] = [h for h in hits.get(cymbal, []) if h[0] != step]
                add("hat_open", step, 0.7 + rng.normal(0, 0.05))
    elif style == "halftime":
        kicks = [0] + [s for s in (3, 6, 10, 14) if rng.random() < 0.35]
    else:
        kicks = [0, 8] + [s for s in (3, 6, 7, 10, 11, 14) if rng.random() < 0.25]
    for step in kicks:
        add("kick", step, 0.85 + rng.normal(0, 0.08))
    backbeats = [8] if style == "halftime" else [4, 12]
    snare = "clap" if style == "four_floor" and rng.random() < 0.4 else "snare"
    for step in backbeats:
        add(snare, step, 0.9 + rng.normal(0, 0.06))
    for step in range(1, 16):  # ghost notes
        if step not in backbeats and step % 2 == 1 and rng.random() < 0.08:
            add("snare", step, 0.25 + rng.normal(0, 0.05))
    if style not in ("four_floor", "ride") and rng.random() < 0.25:  # it replaces a closed hat
        hits[cymbal] = [h for h in hits.get(cymbal, []) if h[0] != 14]
        add("hat_open", 14, 0.65)
    if rng.random() < 0.15:
        add("hat_pedal", 4 * int(rng.integers(4)) + 2, 0.5)
    return hits


def _fill(rng: np.random.Generator) -> dict[str, list[tuple[int, float]]]:
    """The last one or two beats of a phrase as a tom/snare fill: {role: [(step, velocity)]}."""
    start = 8 if rng.random() < 0.4 else 12
    roles = ["snare", "tom_high", "tom_mid", "tom_low"]
    hits: dict[str, list[tuple[int, float]]] = {}
    for i, step in enumerate(range(start, 16)):
        if rng.random() < 0.2:
            continue
        role = roles[min(i * len(roles) // (16 - start), len(roles) - 1)]
        hits.setdefault(role, []).append((step, float(np.clip(0.75 + rng.normal(0, 0.1), 0, 1))))
    hits.setdefault("kick", []).append((start, 0.8))
    return hits


def groove(
    kits: list[KitSamples], seconds: float, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """A drum part [2, t] of ``seconds``: a groove in one style at 70-170 BPM on one kit
    (some pieces borrowed from another kit), four-bar phrases with a crash at the start and a
    fill at the end, in a small room."""
    n = int(round(seconds * sample_rate))
    kit = kits[int(rng.integers(len(kits)))]
    style = _STYLES[int(rng.integers(len(_STYLES)))]
    sixteenth = 60.0 / rng.uniform(70, 170) / 4 * sample_rate
    swing = 1 / 3 if style == "shuffle" else float(rng.uniform(0, 0.12))
    side = 1.0 if rng.random() < 0.5 else -1.0  # drummer's or audience's view
    pans = {
        "kick": 0.0, "snare": 0.05 * side, "rim": 0.05 * side, "clap": 0.0,
        "hat": 0.35 * side, "hat_open": 0.35 * side, "hat_pedal": 0.35 * side,
        "tom_high": 0.2 * side, "tom_mid": -0.1 * side, "tom_low": -0.4 * side,
        "ride": -0.45 * side, "crash": 0.4 * side, "cowbell": -0.2 * side,
    }  # fmt: skip
    sounds: dict[str, _Sound] = {}
    for role, pan in pans.items():
        source = kit
        if role not in kit.roles or rng.random() < 0.15:  # borrowed from another kit
            others = [k for k in kits if role in k.roles and k.roles[role]]
            if not others:
                continue
            source = others[int(rng.integers(len(others)))]
        if not source.roles.get(role):
            continue
        piece = source.roles[role][int(rng.integers(len(source.roles[role])))]
        spread = 1.0 if role.startswith(("hat", "ride", "crash")) else 3.0
        semitones = float(rng.uniform(-spread, spread))
        layers = [
            (la.low, la.high, _panned(_tuned(source.samples[la.path], semitones), pan)
             * np.float32(la.gain * piece.volume))
            for la in piece.layers
        ]  # fmt: skip
        sounds[role] = _Sound(layers)
    if "hat" not in sounds:  # a ride kit: the ride keeps time
        style = "ride"
    out = np.zeros((2, n), np.float32)
    bars = int(np.ceil(n / (16 * sixteenth))) + 1
    offset = -int(rng.integers(16)) * sixteenth  # the part starts anywhere in a bar
    events = []
    for bar in range(bars):
        hits = _bar_pattern(style, rng)
        if bar % 4 == 3 and rng.random() < 0.6:
            fill = _fill(rng)
            first = min(s for steps in fill.values() for s, _ in steps)
            hits = {r: [h for h in steps if h[0] < first] for r, steps in hits.items()}
            for role, steps in fill.items():
                hits.setdefault(role, []).extend(steps)
        if bar % 4 == 0 and rng.random() < 0.7:
            hits.setdefault("crash", []).append((0, 0.9))
        for role, steps in hits.items():
            for step, velocity in steps:
                swung = step % 2 == 1 or (style == "shuffle" and step % 4 == 2)
                at = offset + (bar * 16 + step + (2 * swing if swung else 0.0)) * sixteenth
                at += rng.normal(0, 0.004) * sample_rate
                events.append((int(at), role, velocity))
    events.sort()
    closes = [at for at, role, _ in events if role in ("hat", "hat_pedal")]
    fade = int(0.02 * sample_rate)
    for at, role, velocity in events:
        sound = sounds.get(role) or (sounds.get("snare") if role.startswith("tom") else None)
        if sound is None or at >= n:
            continue
        x = sound.take(velocity, rng)
        if role == "hat_open":  # choked by the next closed or pedal hat
            later = [c for c in closes if c > at]
            if later and later[0] - at + fade < x.shape[1]:
                x = x[:, : later[0] - at + fade].copy()
                x[:, -fade:] *= np.linspace(1, 0, fade, dtype=np.float32)
        gain = np.float32(velocity**1.5)
        begin, skip = max(at, 0), max(-at, 0)
        length = min(x.shape[1] - skip, n - begin)
        if length > 0:
            out[:, begin : begin + length] += gain * x[:, skip : skip + length]
    if rng.random() < 0.7:
        rir = data.synthetic_rir(sample_rate, float(rng.uniform(0.2, 0.9)), rng)
        out = data.reverb(out, rir, float(rng.uniform(0.08, 0.3)))
    return out


def drumkit_pool(
    sample_rate: int,
    cache_dir: Path,
    parts: int = 80,
    seconds: float = 8.0,
    seed: int = 0,
    kits: list[DrumKit] | None = None,
) -> data.ClipPool:
    """A cached pool of ``parts`` drum parts (stereo) played on ``kits`` (default
    ``find_drumkits()``). Raises ``data.SourceUnavailable`` where there is no kit and no
    cached render."""
    kits = find_drumkits() if kits is None else kits

    def render() -> Iterator[tuple[str, np.ndarray]]:
        from tqdm import tqdm

        if not kits:
            raise data.SourceUnavailable(
                "no licence-clean drum kits: install hydrogen-drumkits or set $DEMIX_DRUMKITS"
            )
        loaded = [KitSamples(kit, sample_rate) for kit in kits]
        for i in tqdm(range(parts), desc="rendering drum kit grooves", leave=False):
            rng = np.random.default_rng([seed, DRUMKITS_VERSION, i])
            yield f"drums{i:04d}", groove(loaded, seconds, sample_rate, rng)

    names = ",".join(k.name for k in kits) if kits else ",".join(DEBIAN_KIT_NAMES)
    key = f"drumkits v{DRUMKITS_VERSION} {names} {sample_rate} {parts} {seconds} {seed}"
    return data.ClipPool.rendered(key, render, sample_rate, cache_dir, channels=2)
