"""Training packs: a training config's decoded pools, sampled to a size budget and coded as
Ogg Opus, so that a run can move to a machine without the corpus (a lent GPU, say).

A pack holds the corpus manifest (``data/MANIFEST.csv``: the datasets read it to name their
pools) and, per pool, one Ogg Opus file of a random sample of its clips (long clips cut to a
random excerpt) with the pool's cache index. Unpacked into a cache folder, the pools sit
under the same keys that the datasets compute from the manifest (keys name paths relative
to the data root, and SoundFonts by file name), so the datasets open them without any audio
file, FluidSynth or pyworld: the other machine trains on the same recipe over a sample of
the same material (lossy-coded at ``kbps_per_channel``).

    python -m demix.pack CONFIG OUT [--budget-mb 40]      # here, beside the corpus
    python -m demix.pack --unpack OUT CACHE_DIR           # there (demix.burst does this)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from demix import data
from demix.config import load_yaml

OPUS_RATE = 48000  # Ogg Opus carries 8, 12, 16, 24 or 48 kHz; pools are resampled to it
PACK_FORMAT = 1


def dataset_pools(dataset: object) -> dict[str, data.ClipPool]:
    """Every ``ClipPool`` a dataset holds (in attributes, dicts, lists and nested datasets),
    by cache digest."""
    found: dict[str, data.ClipPool] = {}
    seen: set[int] = set()

    def walk(obj: object) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, data.ClipPool):
            found.setdefault(obj.digest, obj)
        elif isinstance(obj, dict):
            for value in obj.values():
                walk(value)
        elif isinstance(obj, (list, tuple)):
            for value in obj:
                walk(value)
        elif isinstance(obj, torch.utils.data.Dataset):
            for value in vars(obj).values():
                walk(value)

    walk(dataset)
    return found


def opus_compression_level(kbps_per_channel: float) -> float:
    """libsndfile's Opus compression level for a bitrate per channel (measured here: the
    encoder targets about 6 + 250 · (1 − level) kb/s per channel)."""
    return float(np.clip(1.0 - (kbps_per_channel - 6.0) / 250.0, 0.0, 1.0))


def _excerpt(pool: data.ClipPool, i: int, max_samples: int, rng: np.random.Generator) -> np.ndarray:
    n = pool.length(i)
    start = int(rng.integers(n - max_samples + 1)) if n > max_samples else 0
    base = int(pool.offsets[i]) + start
    return np.asarray(pool.data[:, base : base + min(n, max_samples)], dtype=np.float32)


def _fraction(seconds: list[np.ndarray], budget_s: float, whole_below_s: float) -> float:
    """The share of every large pool's clips to keep (drawn at random) so that the kept
    channel-seconds fit ``budget_s`` on average; pools under ``whole_below_s`` stay whole."""
    small = sum(s.sum() for s in seconds if s.sum() <= whole_below_s)
    large = sum(s.sum() for s in seconds if s.sum() > whole_below_s)
    if small + large <= budget_s:
        return 1.0
    if small >= budget_s:
        raise ValueError(f"the small pools alone ({small / 60:.0f} channel-min) exceed the budget")
    return float((budget_s - small) / large)


def pack(
    config_path: Path,
    out: Path,
    budget_mb: float = 40.0,
    kbps_per_channel: float = 24.0,
    max_clip_seconds: float = 20.0,
    keep_whole_seconds: float = 60.0,
    seed: int = 0,
) -> dict:
    """Write a pack of ``config_path``'s training pools to ``out`` (at most ``budget_mb``
    MiB of Opus); returns the pack's description (also written as ``out/pack.json``).

    Every clip is cut to a random excerpt of at most ``max_clip_seconds``; pools of at most
    ``keep_whole_seconds`` (channel-seconds) are kept whole, the others keep one random share
    of their clips, the same for all, that fits the budget.
    """
    from demix.train import TrainConfig, build_sources

    cfg = load_yaml(TrainConfig, config_path, [])
    sources = build_sources(cfg)
    pools: dict[str, data.ClipPool] = {}
    for _, ds in sources:
        pools.update(dataset_pools(ds))
    if not pools:
        raise ValueError(f"{config_path}: its sources hold no clip pools to pack")
    roots = {Path(ds.config.data_root) if ds.config.data_root else data.default_data_root()
             for _, ds in sources}  # fmt: skip
    if len(roots) != 1:
        raise ValueError(f"{config_path}: its sources read different data roots {sorted(roots)}")
    root = roots.pop()
    rng = np.random.default_rng(seed)
    rate = {p.sample_rate for p in pools.values()}
    if len(rate) != 1:
        raise ValueError(f"{config_path}: pools at several sample rates {sorted(rate)}")
    sample_rate = rate.pop()
    max_samples = int(max_clip_seconds * sample_rate)
    # channel-seconds of every clip once cut to its excerpt
    seconds = [
        np.minimum(np.diff(p.offsets), max_samples) / sample_rate * p.channels
        for p in pools.values()
    ]
    bytes_per_channel_second = kbps_per_channel * 1000 / 8
    # Ogg framing, headers and the encoder's overshoot of its target bitrate (session 13: a
    # 0.97 margin gave 35.2 MiB for a 35-MiB budget)
    budget_s = budget_mb * 2**20 / bytes_per_channel_second * 0.95
    fraction = _fraction(seconds, budget_s, keep_whole_seconds)

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "pools").mkdir(parents=True)
    (tmp / "data").mkdir()
    shutil.copyfile(root / "MANIFEST.csv", tmp / "data" / "MANIFEST.csv")
    level = opus_compression_level(kbps_per_channel)
    described = []
    for (digest, pool), secs in zip(pools.items(), seconds):
        count = len(pool)
        whole = secs.sum() <= keep_whole_seconds
        keep = count if whole else max(1, int(round(fraction * count)))
        chosen = np.sort(rng.choice(count, keep, replace=False))
        clips = [_excerpt(pool, int(i), max_samples, rng) for i in chosen]
        names = [pool.names[int(i)] for i in chosen]
        offsets = np.cumsum([0] + [c.shape[1] for c in clips]).tolist()
        audio_48k = soxr.resample(np.concatenate(clips, axis=1).T, sample_rate, OPUS_RATE)
        sf.write(
            tmp / "pools" / f"pool-{digest}.ogg",
            audio_48k,
            OPUS_RATE,
            format="OGG",
            subtype="OPUS",
            compression_level=level,
        )
        index = {"names": names, "offsets": offsets}
        (tmp / "pools" / f"pool-{digest}.json").write_text(json.dumps(index))
        described.append(
            {
                "digest": digest,
                "key": pool.key,
                "channels": pool.channels,
                "clips": count,
                "clips_kept": keep,
                "seconds_kept": round(offsets[-1] / sample_rate, 1),
                "bytes": (tmp / "pools" / f"pool-{digest}.ogg").stat().st_size,
            }
        )
    total = sum(p["bytes"] for p in described)
    if total > budget_mb * 2**20:
        shutil.rmtree(tmp)
        raise ValueError(f"the pack came out at {total / 2**20:.1f} MiB, over {budget_mb} MiB")
    info = {
        "format": PACK_FORMAT,
        "config": str(config_path),
        "data_root": str(root),
        "sample_rate": sample_rate,
        "kbps_per_channel": kbps_per_channel,
        "max_clip_seconds": max_clip_seconds,
        "fraction_of_clips": round(fraction, 4),
        "budget_mb": budget_mb,
        "mb": round(total / 2**20, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "pools": described,
    }
    (tmp / "pack.json").write_text(json.dumps(info, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return info


def unopened_pools(info: dict, sources: list) -> list[str]:
    """The keys of a pack's pools (``info``, as ``unpack`` returns it) that none of the
    built training ``sources`` (``demix.train.build_sources``) opened: where a dataset
    computes another cache key on the other machine (session 13: the drum kits' order), the
    burst would train without that material."""
    opened: set[str] = set()
    for _, dataset in sources:
        opened |= set(dataset_pools(dataset))
    return [p["key"] for p in info["pools"] if p["digest"] not in opened]


def _unpack_one(args: tuple[Path, Path, int, int]) -> str:
    ogg, cache_dir, sample_rate, channels = args
    index = json.loads(ogg.with_suffix(".json").read_text())
    audio_48k, _ = sf.read(ogg, dtype="float32", always_2d=True)
    wav = soxr.resample(audio_48k, OPUS_RATE, sample_rate).T
    total = index["offsets"][-1]
    wav = np.pad(wav[:, :total], ((0, 0), (0, max(0, total - wav.shape[1]))))
    wav = np.clip(wav[:channels], -1.0, 1.0).astype(np.float16)
    data.write_pool_cache(
        cache_dir / ogg.with_suffix(".npy").name, wav, index["names"], index["offsets"]
    )
    return ogg.stem


def unpack(pack_dir: Path, cache_dir: Path, workers: int = 0) -> dict:
    """Decode a pack's pools into ``cache_dir`` (in parallel, ``workers`` processes; 0: one
    per CPU); returns the pack's description. Point a training source's ``data_root`` at
    ``pack_dir/data`` and its ``cache_dir`` at ``cache_dir``."""
    info_path = pack_dir / "pack.json"
    if not info_path.exists():
        raise FileNotFoundError(f"{pack_dir}: not a training pack (no pack.json)")
    info = json.loads(info_path.read_text())
    if info.get("format") != PACK_FORMAT:
        raise ValueError(f"{pack_dir}: pack format {info.get('format')}, expected {PACK_FORMAT}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    jobs = [
        (pack_dir / "pools" / f"pool-{p['digest']}.ogg", cache_dir, info["sample_rate"],
         p["channels"])
        for p in sorted(info["pools"], key=lambda p: -p["bytes"])  # biggest first
    ]  # fmt: skip
    with ProcessPoolExecutor(workers or os.cpu_count() or 1) as ex:
        list(ex.map(_unpack_one, jobs))
    return info


def main(argv: list[str] | None = None) -> int:
    """``python -m demix.pack CONFIG OUT`` or ``python -m demix.pack --unpack PACK CACHE``."""
    parser = argparse.ArgumentParser(
        prog="python -m demix.pack", description=__doc__.split("\n")[0]
    )
    parser.add_argument("config", nargs="?", help="training config (YAML) whose pools to pack")
    parser.add_argument("out", help="pack folder to write (or, with --unpack, to read)")
    parser.add_argument("--unpack", metavar="CACHE_DIR", help="decode pack OUT into CACHE_DIR")
    parser.add_argument("--budget-mb", type=float, default=40.0, help="Opus size cap (MiB)")
    parser.add_argument("--kbps", type=float, default=24.0, help="Opus bitrate per channel")
    parser.add_argument("--max-clip-seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    try:
        if args.unpack:
            info = unpack(Path(args.out), Path(args.unpack))
            print(f"unpacked {len(info['pools'])} pools into {args.unpack}", file=sys.stderr)
            return 0
        if not args.config:
            parser.error("CONFIG is needed to make a pack")
        info = pack(
            Path(args.config), Path(args.out), args.budget_mb, args.kbps, args.max_clip_seconds
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"demix.pack: {exc}", file=sys.stderr)
        return 1
    kept = sum(p["seconds_kept"] * p["channels"] for p in info["pools"]) / 60
    print(
        f"{args.out}: {len(info['pools'])} pools, {kept:.0f} channel-minutes, {info['mb']} MiB "
        f"(clips kept: {info['fraction_of_clips']:.0%} of each large pool)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
