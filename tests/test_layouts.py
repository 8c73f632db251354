"""Real dataset layouts (DnR, MUSDB18-HQ, MUSDB18 .stem.mp4, MoisesDB) and training on
them: grouped supervision and the distributed path (2 processes, gloo, on the CPU)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from demix import audio
from demix.data import default_data_root

DATA = default_data_root()
needs_data = pytest.mark.skipif(
    not (DATA / "MANIFEST.csv").exists(), reason=f"development data not found at {DATA}"
)
RATE = 44100


def _write(path: Path, x: np.ndarray, rate: int = RATE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    audio.write(path, x, rate, path.suffix.lstrip("."), "16" if path.suffix == ".flac" else "32f")


def _real(kind_prefix: str, seconds: float, index: int = 0) -> np.ndarray:
    """A real clip from ../shared/data (stereo, 44.1 kHz, ``seconds`` long)."""
    paths = sorted((DATA / kind_prefix).rglob("*.*"))
    paths = [p for p in paths if p.suffix in (".ogg", ".flac", ".wav", ".mp3")]
    x, _ = audio.read(paths[index], RATE)
    x = np.repeat(x, 2, 0) if x.shape[0] == 1 else x[:2]
    n = int(seconds * RATE)
    return np.pad(x, ((0, 0), (0, max(n - x.shape[1], 0))))[:, :n]


# ------------------------------------------------------------------ DnR
@pytest.fixture(scope="module")
def dnr_root(tmp_path_factory) -> Path:
    """DnR layout from real dev clips; item 1 has a silent music file."""
    if not (DATA / "MANIFEST.csv").exists():
        pytest.skip(f"development data not found at {DATA}")
    root = tmp_path_factory.mktemp("dnr")
    for i in range(3):
        stems = {
            "speech": _real("speech/librispeech", 3.0, i),
            "music": _real("music/macleod", 3.0, i) * (0 if i == 1 else 0.5),
            "sfx": _real("effects/esc10", 3.0, 10 * i),
        }
        for name, x in {**stems, "mix": sum(stems.values())}.items():
            _write(root / "tr" / f"{1000 + i}" / f"{name}.wav", x)
    return root


@needs_data
def test_dnr_reader_maps_speech_music_sfx(dnr_root):
    from cdx.datasets import DnRConfig, dnr, dnr_tracks

    tracks = dnr_tracks(dnr_root, "tr")
    assert [t.name for t in tracks] == ["1000", "1001", "1002"]
    assert tracks[0].files["dialogue"][0].name == "speech.wav"
    assert tracks[0].files["effects"][0].name == "sfx.wav"
    ds = dnr(DnRConfig(root=str(dnr_root), segment_seconds=1.0, p_remix=0.0))
    assert ds.stems == ("dialogue", "music", "effects")
    silent_music = 0
    for i in range(12):
        mix, stems = ds[i]
        assert stems.shape == (3, 2, RATE)
        torch.testing.assert_close(stems.sum(0), mix)
        silent_music += int(stems[1].abs().max() == 0)
    assert 0 < silent_music < 12  # item 1001's music is silent; the others are not
    with pytest.raises(FileNotFoundError, match="Divide-and-Remaster"):
        dnr_tracks(dnr_root / "tr" / "1000")


# ------------------------------------------------------------------ MUSDB18-HQ / .stem.mp4
@pytest.fixture(scope="module")
def musdb_root(tmp_path_factory) -> Path:
    """MUSDB18-HQ layout from the two real MUSDB fixture songs."""
    src = DATA / "stems" / "musdb-fixtures"
    if not src.is_dir():
        pytest.skip(f"no MUSDB fixtures at {src}")
    root = tmp_path_factory.mktemp("musdb")
    for song in sorted(p for p in src.iterdir() if p.is_dir()):
        out = root / "test" / song.name
        out.mkdir(parents=True)
        total = 0
        for stem in ("drums", "bass", "other", "vocals"):
            shutil.copy(song / f"{stem}.flac", out / f"{stem}.flac")
            total = total + audio.read(out / f"{stem}.flac")[0]
        _write(out / "mixture.wav", total)
    return root


def test_musdb_other_supervises_guitar_piano_and_other(musdb_root):
    from mdx.datasets import MusdbConfig, musdb, musdb_tracks

    assert len(musdb_tracks(musdb_root, "test")) == 2
    ds = musdb(MusdbConfig(root=str(musdb_root), split="test", segment_seconds=1.0))
    assert ds.stems == ("drums", "bass", "vocals", "other")
    assert ds.head_stems == ("drums", "bass", "vocals", "guitar", "piano", "other")
    m = ds.group_matrix()
    assert m.tolist() == [
        [1, 0, 0, 0, 0, 0],
        [0, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 1],
    ]
    from demix.train import _grouped

    est = torch.randn(2, 6, 2, 100)
    grouped = _grouped(est, ds.group_matrix())
    torch.testing.assert_close(grouped[:, 3], est[:, 3:].sum(1))
    torch.testing.assert_close(grouped[:, :3], est[:, :3])
    mix, stems = ds[0]
    torch.testing.assert_close(stems.sum(0), mix)


def test_musdb_stem_mp4_is_decoded_once(musdb_root, tmp_path):
    from mdx.datasets import musdb_tracks

    song = sorted((musdb_root / "test").iterdir())[0]
    mp4 = tmp_path / "musdb" / "train" / f"{song.name}.stem.mp4"
    mp4.parent.mkdir(parents=True)
    inputs = []
    for name in ("mixture.wav", "drums.flac", "bass.flac", "other.flac", "vocals.flac"):
        inputs += ["-i", str(song / name)]
    maps = [arg for i in range(5) for arg in ("-map", f"{i}:a")]
    subprocess.run(
        [audio.ffmpeg_executable(), "-loglevel", "error", *inputs, *maps, "-c:a", "aac",
         "-b:a", "256k", "-f", "mp4", str(mp4)],
        check=True,
    )  # fmt: skip
    cache = tmp_path / "cache"
    tracks = musdb_tracks(mp4.parent.parent, "train", cache)
    assert len(tracks) == 1
    decoded = tracks[0].files["vocals"][0]
    assert decoded.parent.parent == cache and decoded.suffix == ".flac"
    ref = audio.read(song / "vocals.flac")[0]
    est = audio.read(decoded)[0]
    n = min(ref.shape[1], est.shape[1])
    # AAC delays the start a little: align on the cross-correlation peak first.
    size = 1 << int(np.ceil(np.log2(2 * n)))
    xcorr = np.fft.irfft(np.fft.rfft(est[0, :n], size) * np.conj(np.fft.rfft(ref[0, :n], size)))
    lag = int(np.argmax(xcorr[:4096]))
    m = n - lag
    snr = 10 * np.log10(np.sum(ref[:, :m] ** 2) / np.sum((ref[:, :m] - est[:, lag:n]) ** 2))
    assert snr > 15, f"decoded vocals differ from the source (SNR {snr:.1f} dB)"
    mtime = decoded.stat().st_mtime_ns
    musdb_tracks(mp4.parent.parent, "train", cache)  # second time: from the cache
    assert decoded.stat().st_mtime_ns == mtime


# ------------------------------------------------------------------ MoisesDB
@needs_data
def test_moisesdb_folders_map_to_six_stems(tmp_path):
    from mdx.datasets import MoisesDBConfig, moisesdb, moisesdb_tracks

    song = sorted((DATA / "stems" / "mdb").iterdir())[0]
    root = tmp_path / "moisesdb"
    folders = {"drums": "drums", "bass": "bass", "guitar": "guitar", "vocals": "vocals"}
    for src, folder in folders.items():
        _write(root / "song-a" / folder / f"{src}-track.wav", audio.read(song / f"{src}.flac")[0])
    # Extra MoisesDB stems: percussion joins drums, bowed strings join other.
    n = audio.read(song / "drums.flac")[0].shape[1]  # (MoisesDB's tracks span the song)
    tone = 0.1 * np.sin(2 * np.pi * 220 * np.arange(n) / RATE)[None].repeat(2, 0)
    _write(root / "song-a" / "percussion" / "shaker.wav", tone)
    _write(root / "song-a" / "bowed_strings" / "cello.wav", tone)
    (root / "song-a" / "data.json").write_text("{}")
    (track,) = moisesdb_tracks(root)
    assert sorted(p.parent.name for p in track.files["drums"]) == ["drums", "percussion"]
    assert [p.parent.name for p in track.files["other"]] == ["bowed_strings"]
    assert track.files["piano"] == ()
    ds = moisesdb(MoisesDBConfig(root=str(root), segment_seconds=1.0, p_remix=0.0))
    mix, stems = ds[0]
    assert stems.shape == (6, 2, RATE)
    assert stems[4].abs().max() == 0  # no piano in this song
    assert stems[5].abs().max() > 0  # the cello is "other"


# ------------------------------------------------------------------ distributed training
def _generated_layouts(root: Path) -> tuple[Path, Path]:
    """Tiny DnR and MUSDB18-HQ folders of generated signals (no development data needed)."""
    rng = np.random.default_rng(0)
    t = np.arange(RATE) / RATE
    for i in range(2):
        stems = {
            "speech": 0.2 * np.sin(2 * np.pi * (150 + 50 * i) * t),
            "music": 0.1 * np.sign(np.sin(2 * np.pi * 110 * t)),
            "sfx": 0.05 * rng.normal(size=RATE),
        }
        for name, x in stems.items():
            _write(root / "dnr" / "tr" / f"{i}" / f"{name}.wav", np.stack([x, x]))
        for j, stem in enumerate(("drums", "bass", "other", "vocals")):
            x = 0.1 * np.sin(2 * np.pi * 60 * (j + 1) * t + i)
            _write(root / "musdb" / "train" / f"song{i}" / f"{stem}.wav", np.stack([x, x]))
    return root / "dnr", root / "musdb"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_training_on_two_cpu_processes(tmp_path):
    dnr_root, musdb_root = _generated_layouts(tmp_path)
    config = {
        "model_config": {"dim": 16, "layers": 2, "segment_seconds": 0.5},
        "sources": [
            {"name": "cdx.dnr", "head": "film",
             "config": {"root": str(dnr_root), "segment_seconds": 0.5}},
            {"name": "mdx.musdb", "head": "music",
             "config": {"root": str(musdb_root), "segment_seconds": 0.5}},
        ],
        "run_dir": str(tmp_path / "run"),
        "batch_size": 2,
        "steps": 4,
        "warmup_steps": 1,
        "num_workers": 0,
        "threads": 1,
        "log_every": 1,
        "checkpoint_every": 2,
    }  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
         "-m", "demix.train", str(tmp_path / "config.yaml")],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes" in result.stderr
    assert "2 ranks agree on the weights" in result.stderr
    rows = (tmp_path / "run" / "log.csv").read_text().strip().splitlines()
    assert rows[0].startswith("step,") and len(rows) == 5  # one header, 4 steps, rank 0 only
    from demix.checkpoint import load_checkpoint

    model, meta = load_checkpoint(tmp_path / "run" / "ema.safetensors")
    assert set(model.heads) == {"film", "music"}
    assert len(model.heads["music"]) == 6  # MUSDB trains the six-stem head through groups


# ------------------------------------------------------------------ a researcher's own folders
def _tone(seconds: float = 1.0, rate: int = RATE, hz: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return np.stack([0.1 * np.sin(2 * np.pi * hz * t)] * 2)


def test_items_that_cannot_be_used_are_skipped_with_one_warning(tmp_path):
    """An item without a stem was skipped silently; a corrupt or other-rate stem stopped the
    run with a traceback; a stem as both drums.wav and drums.flac was summed twice; a
    macOS "._x.wav" in a MoisesDB folder stopped the run; a short stem cut the whole item to
    its length. Now: skipped with one warning naming why, and a short stem is silent after
    its end."""
    from cdx.datasets import dnr_tracks
    from mdx.datasets import moisesdb_tracks, musdb_tracks

    dnr = tmp_path / "dnr" / "tr"
    for item in ("good", "no_sfx", "corrupt", "other_rate", "short_music"):
        for name in ("speech", "music", "sfx"):
            _write(dnr / item / f"{name}.wav", _tone(2.0))
    (dnr / "no_sfx" / "sfx.wav").unlink()
    (dnr / "corrupt" / "sfx.wav").write_text("not audio")
    _write(dnr / "other_rate" / "music.wav", _tone(2.0, 22050), 22050)
    _write(dnr / "short_music" / "music.wav", _tone(0.5))
    (dnr / ".ipynb_checkpoints").mkdir()
    with pytest.warns(UserWarning, match=r"3 of 5 items skipped") as caught:
        tracks = dnr_tracks(dnr.parent)
    text = str(caught[0].message)
    assert "no_sfx: no sfx.wav" in text and "corrupt" in text and "different sample rates" in text
    assert [t.name for t in tracks] == ["good", "short_music"]
    assert tracks[1].frames == 2 * RATE  # the longest file: the short one is silent after it

    musdb = tmp_path / "musdb" / "train"
    for song in ("twice", "no_vocals", "good"):
        for stem in ("drums", "bass", "other", "vocals"):
            _write(musdb / song / f"{stem}.wav", _tone())
    _write(musdb / "twice" / "drums.flac", _tone())
    (musdb / "no_vocals" / "vocals.wav").unlink()
    with pytest.warns(UserWarning, match=r"2 of 3 items skipped") as caught:
        assert [t.name for t in musdb_tracks(musdb.parent)] == ["good"]
    text = str(caught[0].message)
    assert "drums is there twice (drums.flac, drums.wav): keep one" in text
    assert "no_vocals: no vocals.wav" in text

    moises = tmp_path / "moisesdb"
    _write(moises / "song" / "vocals" / "lead.wav", _tone())
    (moises / "song" / "vocals" / "._lead.wav").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (track,) = moisesdb_tracks(moises)
    assert [p.name for p in track.files["vocals"]] == ["lead.wav"]
    only_bad = tmp_path / "only_bad" / "tr" / "1"
    _write(only_bad / "speech.wav", _tone())
    with pytest.raises(FileNotFoundError, match=r"sfx \.wav\); 1 skipped \(1: no music"):
        dnr_tracks(only_bad.parent.parent)


def test_a_run_that_cannot_start_as_configured_is_one_line(tmp_path, capsys):
    """Examples at another rate than the model's trained silently; fine-tuning a two-head
    checkpoint on one head's data, a source config typo, a resume with another model size
    were tracebacks (the failed resume also rewrote the run's config.yaml); two runs could
    write one run_dir at once. Fine-tuning on one head now keeps that head and says so."""
    from demix.separator import folder_lock
    from demix.train import SourceConfig, main

    dnr_root, musdb_root = _generated_layouts(tmp_path)
    film = {"name": "cdx.dnr", "head": "film",
            "config": {"root": str(dnr_root), "segment_seconds": 0.5}}  # fmt: skip
    music = {"name": "mdx.musdb", "head": "music",
             "config": {"root": str(musdb_root), "segment_seconds": 0.5}}  # fmt: skip

    def config(name: str, sources: list, **extra) -> str:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({
            "model_config": {"dim": 16, "layers": 2, "segment_seconds": 0.5},
            "sources": sources, "run_dir": str(tmp_path / name), "batch_size": 1,
            "steps": 1, "warmup_steps": 1, "num_workers": 0, "threads": 1, **extra,
        }))  # fmt: skip
        return str(path)

    def one_line(argv: list[str], reason: str) -> None:
        assert main(argv) == 2, argv
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("demix train: "), lines
        assert reason in lines[0], lines

    both = config("both", [film, music])
    assert main([both]) == 0
    capsys.readouterr()
    from demix.train import loss_columns

    header = (tmp_path / "both" / "log.csv").read_text().splitlines()[0]
    assert header.endswith(",loss_film,loss_music")
    sources = [SourceConfig(**film), SourceConfig(**music), SourceConfig(**music)]
    assert loss_columns(sources) == ["loss_film", "loss_music_1", "loss_music_2"]  # (not twice)
    slow = dict(film, config=dict(film["config"], sample_rate=16000))
    one_line([config("rates", [slow])], "makes examples at 16000 Hz but the model runs at 44100")
    typo = dict(film, config=dict(film["config"], rooot="x"))
    one_line([config("typo", [typo])], "sources[0] (cdx.dnr)")
    recorded = (tmp_path / "both" / "config.yaml").read_text()
    one_line([both, "--set", "model_config.dim=24"], "its checkpoints do not fit")
    assert (tmp_path / "both" / "config.yaml").read_text() == recorded
    with folder_lock(tmp_path / "both") as locked:
        assert locked
        one_line([both, "--set", "steps=2"], "another demix train is using it")

    other_rate = config("other_rate", [dict(film, config=dict(film["config"], sample_rate=22050))],
                        init_from=str(tmp_path / "both" / "ema.safetensors"),
                        model_config={"dim": 16, "layers": 2, "segment_seconds": 0.5,
                                      "sample_rate": 22050})  # fmt: skip
    one_line([other_rate], "its weights run at 44100 Hz, this run's model at 22050 Hz")
    tuned = config("tuned", [film], init_from=str(tmp_path / "both" / "ema.safetensors"))
    assert main([tuned]) == 0
    assert "its music head is left out" in capsys.readouterr().err
    from demix.checkpoint import load_checkpoint

    model, meta = load_checkpoint(tmp_path / "tuned" / "ema.safetensors")
    assert set(model.heads) == {"film"}
    assert meta["info"]["init_from"].endswith("ema.safetensors")
    from demix.cli import model_summary

    summary = model_summary("tuned", meta, model.heads)
    assert f"1 step from {tmp_path / 'both' / 'ema.safetensors'}" in summary
