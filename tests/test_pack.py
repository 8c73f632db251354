"""Training packs and GPU bursts, on their CPU path: a pack carries a config's pools to a
machine without the corpus, a burst trains on it, and the CPU run goes on from the burst."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from demix import burst, data, pack
from demix.checkpoint import load_checkpoint
from demix.config import load_yaml
from demix.train import TrainConfig, build_sources, train

RATE = 16000


def _corpus(root: Path) -> Path:
    """A small generated corpus: voiced speech, stereo music, effects and a room (wav)."""
    rng = np.random.default_rng(0)
    rows = []

    def add(kind: str, name: str, wav: np.ndarray) -> None:
        path = root / kind / f"{name}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, wav.T, RATE)
        seconds = wav.shape[-1] / RATE
        rows.append([f"{kind}/{name}.wav", kind, "train", name, "t", "CC0-1.0", RATE, 1, seconds])

    t = np.arange(3 * RATE) / RATE
    for i in range(6):  # harmonic "voices" with a syllable rhythm
        f0 = rng.uniform(100, 220)
        voice = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
        add("speech", f"voice{i}", (0.2 * voice * (np.sin(2 * np.pi * 3 * t) > 0))[None])
    for i in range(3):
        chord = sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(200, 800, 3))
        add("music", f"song{i}", 0.1 * np.stack([chord, np.roll(chord, 50)]))
    for i in range(6):
        add("effects", f"fx{i}", 0.1 * rng.normal(size=(1, len(t))) * np.exp(-t * (i + 1)))
    add("rir", "room", (rng.normal(size=RATE // 4) * np.exp(-np.arange(RATE // 4) / 800))[None])
    with open(root / "MANIFEST.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["path", "kind", "split", "group", "source", "license", "sample_rate", "channels",
             "seconds"]
        )  # fmt: skip
        writer.writerows(rows)
    return root


def _config(tmp_path: Path, corpus: Path) -> Path:
    config = {
        "model": "dualpath",
        "model_config": {"layers": 1, "dim": 16, "rnn_hidden": 16, "mask_hidden": 16},
        "sources": [
            {
                "name": "cdx.film_mix",
                "head": "film",
                "batch_size": 1,
                "config": {
                    "data_root": str(corpus),
                    "cache_dir": str(tmp_path / "cache"),
                    "segment_seconds": 1.0,
                    "p_song": 0.0,
                },
            }
        ],
        "run_dir": str(tmp_path / "cpu-run"),
        "steps": 3,
        "warmup_steps": 1,
        "num_workers": 0,
        "loss_on_mix_rms": True,
        "log_every": 1,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_pack_trains_a_burst_without_the_corpus_and_the_cpu_run_goes_on(tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    config = _config(tmp_path, corpus)
    info = pack.pack(
        config, tmp_path / "pack", budget_mb=0.05, max_clip_seconds=2.0, keep_whole_seconds=1.0
    )
    # speech, music and effects pools cut to the budget; the room pool (small) kept whole
    assert len(info["pools"]) == 4
    assert info["mb"] <= 0.05 and 0 < info["fraction_of_clips"] < 1
    assert (tmp_path / "pack" / "data" / "MANIFEST.csv").exists()
    by_seconds = {p["key"][:30]: p for p in info["pools"]}
    assert all(p["clips_kept"] <= p["clips"] for p in by_seconds.values())

    # The other machine has no corpus: only the pack's manifest and pools.
    shutil.move(corpus, tmp_path / "corpus-away")
    out = tmp_path / "burst"
    argv = [str(config), str(tmp_path / "pack"), str(out), "--batch-scale", "2"]
    assert burst.main(argv + ["--device", "cpu", "--workers", "0", "--minutes", "5"]) == 0
    run = out / "run"
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["sources"][0]["batch_size"] == 2 and saved["autocast_bf16"] is True
    assert saved["sources"][0]["config"]["data_root"] == str(tmp_path / "pack" / "data")
    model, meta = load_checkpoint(run / "ema.safetensors")
    assert meta["info"]["burst"].startswith("2x batch")
    assert list(model.heads) == ["film"]
    assert not list(Path("/tmp").glob(f"demix-burst-cache-*/pool-{info['pools'][0]['digest']}*"))

    # Back here, the CPU run continues from the burst's weights on the full corpus.
    shutil.move(tmp_path / "corpus-away", corpus)
    cfg = load_yaml(TrainConfig, config, [f"init_from={run / 'last.safetensors'}", "steps=1"])
    train(cfg)
    assert (tmp_path / "cpu-run" / "ema.safetensors").exists()


def test_pools_the_recipe_does_not_open_are_named(tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    config = _config(tmp_path, corpus)
    info = pack.pack(config, tmp_path / "pack", budget_mb=1.0)
    sources = build_sources(load_yaml(TrainConfig, config, []))
    assert pack.unopened_pools(info, sources) == []
    stray = {"digest": "0" * 16, "key": "drumkits v1 rumpf_kit_z01_gm,Audiophob 44100"}
    assert pack.unopened_pools(dict(info, pools=info["pools"] + [stray]), sources) == [stray["key"]]


def test_unpacked_pools_sit_under_the_keys_the_datasets_compute(tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    config = _config(tmp_path, corpus)
    pack.pack(config, tmp_path / "pack", budget_mb=1.0)
    cache = tmp_path / "elsewhere-cache"
    pack.unpack(tmp_path / "pack", cache, workers=1)
    cfg = load_yaml(TrainConfig, config, [])
    moved = burst.burst_config(cfg, tmp_path / "pack", cache, tmp_path / "r", 1, 1, "cpu")
    (_, film), = build_sources(moved)  # fmt: skip
    original = build_sources(cfg)[0][1]
    for name in ("speech", "music", "effects"):
        here, there = getattr(original, name), getattr(film, name)
        assert here.digest == there.digest  # keyed by paths relative to the data root
        assert len(here) == len(there)  # 1 MiB holds every clip of this corpus
        a, b = here.clip(0), there.clip(0)
        assert a.shape == b.shape
        if name == "effects":  # noise: Opus keeps its spectrum (to 4 kHz here), not its waveform
            assert np.abs(_band_levels_db(a) - _band_levels_db(b)).max() < 3.0
        else:  # tones and voices: aligned to the sample, waveform kept
            snr = 10 * np.log10((a**2).sum() / ((a - b) ** 2).sum())
            assert snr > 10, f"{name}: Opus round trip at {snr:.1f} dB SNR"


def _band_levels_db(x: np.ndarray) -> np.ndarray:
    """Power of channel 0 in 6 log-spaced bands from 100 Hz to 4 kHz (dB). (Above, Opus at
    24 kb/s fills white noise in at up to 4 dB less: measured here.)"""
    edges = np.geomspace(100, 4000, 7)
    f = np.fft.rfftfreq(x.shape[1], 1 / 44100)
    power = np.abs(np.fft.rfft(x[0])) ** 2
    return np.array(
        [10 * np.log10(power[(f >= lo) & (f < hi)].sum()) for lo, hi in zip(edges, edges[1:])]
    )


def test_caches_keyed_by_absolute_paths_are_taken_over(tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    paths = sorted((corpus / "speech").glob("*.wav"))
    old = data.ClipPool(paths, 44100, tmp_path / "cache")  # the former, absolute key
    for p in paths:
        p.unlink()  # a rebuild would now fail
    new = data.ClipPool(paths, 44100, tmp_path / "cache", key_root=corpus)
    assert new.digest != old.digest
    np.testing.assert_array_equal(new.clip(2), old.clip(2))
    assert json.loads(new.key)[0][0] == "speech/voice0.wav"


def test_unpack_refuses_a_folder_that_is_no_pack(tmp_path, capsys):
    assert pack.main([str(tmp_path), "--unpack", str(tmp_path / "cache")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"demix.pack: {tmp_path}: not a training pack (no pack.json)"
    with pytest.raises(FileNotFoundError):
        pack.unpack(tmp_path, tmp_path / "cache")


def test_parts_copy_and_join_back_the_latest_complete_copy(tmp_path):
    src = tmp_path / "w.safetensors"
    out, here = tmp_path / "out", tmp_path / "here"
    out.mkdir()
    first = np.random.default_rng(0).bytes(2500)
    src.write_bytes(first)
    parts = burst.copy_in_parts(src, out, 1000, step=90)
    assert [p.name for p in parts] == [f"w.safetensors.step0000090.part{i}of3" for i in (1, 2, 3)]
    assert [p.stat().st_size for p in parts] == [1000, 1000, 500]
    # a later copy cut short (its second part missing): the complete earlier one is joined
    second = np.random.default_rng(1).bytes(1500)
    src.write_bytes(second)
    burst.copy_in_parts(src, out, 1000, step=180)
    (out / "w.safetensors.step0000090.part1of3").write_bytes(first[:1000])  # as if not yet removed
    (out / "w.safetensors.step0000090.part2of3").write_bytes(first[1000:2000])
    (out / "w.safetensors.step0000090.part3of3").write_bytes(first[2000:])
    (out / "w.safetensors.step0000180.part2of2").unlink()
    assert burst.join_parts(out, here) == [here / "w.safetensors"]
    assert (here / "w.safetensors").read_bytes() == first
    # complete again: the latest copy is joined, and it removed the earlier parts
    burst.copy_in_parts(src, out, 1000, step=180)
    assert sorted(p.name for p in out.iterdir()) == [
        "w.safetensors.step0000180.part1of2",
        "w.safetensors.step0000180.part2of2",
    ]
    assert burst.main(["--join", str(out), "--to", str(here)]) == 0
    assert (here / "w.safetensors").read_bytes() == second
    assert burst.main(["--join", str(tmp_path / "here")]) == 1  # no parts there


def test_a_burst_with_parts_leaves_only_small_files_in_out(tmp_path):
    """The device tool returns files of at most 16 MiB: --part-mb copies the weights into OUT
    in parts after every checkpoint, and --join puts them back together here."""
    corpus = _corpus(tmp_path / "corpus")
    config = _config(tmp_path, corpus)
    pack.pack(config, tmp_path / "pack", budget_mb=1.0)
    out = tmp_path / "out"
    # options may come between the arguments
    argv = [str(config), "--batch-scale", "1", str(tmp_path / "pack"), str(out)]
    assert burst.main(argv + ["--device", "cpu", "--workers", "0", "--part-mb", "0.25"]) == 0
    names = sorted(p.name for p in out.iterdir())
    n = len(names) - 1  # only the EMA's parts and the log
    assert n > 1 and names == sorted(
        [f"ema.safetensors.step0000003.part{i}of{n}" for i in range(1, n + 1)] + ["log.csv"]
    )
    assert all(p.stat().st_size <= 0.25 * 2**20 for p in out.iterdir())
    assert burst.main(["--join", str(out), "--to", str(tmp_path / "joined")]) == 0
    model, meta = load_checkpoint(tmp_path / "joined" / "ema.safetensors")
    assert meta["info"]["burst"].startswith("1x batch") and list(model.heads) == ["film"]
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert int(rows[-1]["step"]) == 3
