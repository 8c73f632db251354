"""Bad input and hard use beyond the basic cases of test_cli.py and test_audio.py (the faults of
docs/RELIABILITY.md): odd signals, extreme rates and channel counts, hostile names and folders,
bad checkpoints, and property tests of the separator on random inputs."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from test_cli import (
    RATE,
    _env,
    assert_sums_to,
    listing,
    mounted_tmpfs,
    run_cli,
    stem_paths,
    write_input,
)

from cdx import CDX_STEMS
from demix import Separator
from demix.checkpoint import CheckpointError, load_checkpoint


def _separated_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "signal_kind", ["one_sample", "square_full_scale", "dc_offset", "all_zero", "clipped_float"]
)
def test_odd_signals_separate_and_sum_to_the_input(tiny_checkpoint, tmp_path, signal_kind):
    n = {"one_sample": 1}.get(signal_kind, RATE // 2)
    t = np.arange(n) / RATE
    x = {
        "one_sample": np.full((1, 2), 0.5),
        "square_full_scale": np.repeat(np.sign(np.sin(2 * np.pi * 100 * t))[:, None], 2, 1),
        "dc_offset": np.full((n, 2), 0.4) + 0.05 * np.sin(2 * np.pi * 440 * t)[:, None],
        "all_zero": np.zeros((n, 2)),
        "clipped_float": 1.8 * np.sin(2 * np.pi * 220 * t)[:, None].repeat(2, 1),
    }[signal_kind]
    subtype = "FLOAT" if signal_kind == "clipped_float" else "PCM_24"
    source = tmp_path / f"{signal_kind}.wav"
    sf.write(source, np.clip(x, -1, 1 - 2**-23) if subtype != "FLOAT" else x, RATE, subtype=subtype)
    # 32-bit float stems: a stem may exceed full scale (a full-scale square wave's stems do)
    result = run_cli(tiny_checkpoint, source, "-o", tmp_path / "out", "--bit-depth", "32f")
    _separated_ok(result)
    stems = stem_paths(tmp_path / "out" / source.stem, CDX_STEMS)
    for stem in stems:
        assert sf.info(str(stem)).frames == n
        assert np.isfinite(sf.read(stem)[0]).all()
    assert_sums_to(stems, source)


def test_clipping_in_integer_stems_is_reported(tiny_checkpoint, tmp_path):
    t = np.arange(RATE // 2) / RATE
    square = np.repeat(np.sign(np.sin(2 * np.pi * 100 * t))[:, None], 2, 1) * (1 - 2**-15)
    source = tmp_path / "square.wav"
    sf.write(source, square, RATE, subtype="PCM_16")
    result = run_cli(tiny_checkpoint, source, "-o", tmp_path / "out")
    _separated_ok(result)
    warned = [ln for ln in result.stderr.splitlines() if "warning" in ln]
    if warned:  # the tiny model's stems of a full-scale square overshoot: say so, one line
        assert len(warned) == 1 and "clipped" in warned[0] and "32f" in warned[0]
    else:
        assert_sums_to(stem_paths(tmp_path / "out" / "square", CDX_STEMS), source)


@pytest.mark.parametrize("rate", [8000, 192000, 384000])
def test_extreme_sample_rates_are_kept(tiny_checkpoint, tmp_path, rate):
    source = write_input(tmp_path / f"r{rate}.wav", seconds=0.5, sample_rate=rate)
    _separated_ok(run_cli(tiny_checkpoint, source, "-o", tmp_path / "out"))
    stems = stem_paths(tmp_path / "out" / source.stem, CDX_STEMS)
    for stem in stems:
        info = sf.info(str(stem))
        assert (info.samplerate, info.frames) == (rate, sf.info(str(source)).frames)
    assert_sums_to(stems, source)


@pytest.mark.parametrize("channels", [3, 4, 5, 7, 12, 16])
def test_channel_counts_up_to_sixteen(tiny_checkpoint, tmp_path, channels):
    sep = Separator.from_pretrained(str(tiny_checkpoint))
    mix = np.random.default_rng(channels).normal(0, 0.1, (channels, RATE // 4)).astype(np.float32)
    stems = sep.separate(mix, RATE, head="film")
    assert all(s.shape == mix.shape for s in stems.values())
    np.testing.assert_allclose(sum(s.numpy() for s in stems.values()), mix, atol=1e-5)


@pytest.mark.parametrize(
    "name", ["été à l'écoute.wav", 'quote"d and spaced.wav', "-leading-dash.wav", "日本語.flac"]
)
def test_hostile_but_legal_file_names(tiny_checkpoint, tmp_path, name):
    source = write_input(tmp_path / "in" / name, seconds=0.5)
    # A leading dash is an option to argparse unless given as a path: ./-name or after --.
    arg = str(source) if not name.startswith("-") else str(Path("in") / name)
    result = subprocess.run(
        [sys.executable, "-m", "demix.cli", "separate", "--model", str(tiny_checkpoint), "-q",
         "-o", str(tmp_path / "out"), "--", arg],
        capture_output=True, text=True, env=_env(), timeout=300, cwd=tmp_path,
    )  # fmt: skip
    _separated_ok(result)
    assert_sums_to(stem_paths(tmp_path / "out" / source.stem, CDX_STEMS), source)


def test_folder_named_like_audio_and_symlink_loops(tiny_checkpoint, tmp_path):
    folder = tmp_path / "in"
    good = write_input(folder / "take.wav", seconds=0.5)
    (folder / "looks_like.wav").mkdir()  # a folder named x.wav is searched, not read
    (folder / "loop").symlink_to(folder, target_is_directory=True)  # a symlink loop
    result = run_cli(tiny_checkpoint, folder, "-o", tmp_path / "out")
    _separated_ok(result)
    assert listing(tmp_path / "out") == {"take"}
    assert_sums_to(stem_paths(tmp_path / "out" / "take", CDX_STEMS), good)


def test_output_folder_equal_to_the_input_folder(tiny_checkpoint, tmp_path):
    folder = tmp_path / "reel"
    source = write_input(folder / "mix.wav", seconds=0.5)
    before = source.read_bytes()
    _separated_ok(run_cli(tiny_checkpoint, folder, "-o", folder))
    assert source.read_bytes() == before  # the input is untouched
    assert_sums_to(stem_paths(folder / "mix", CDX_STEMS), source)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(tiny_checkpoint, tmp_path):
    source = write_input(tmp_path / "a.wav", seconds=0.5)
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        result = run_cli(tiny_checkpoint, source, "-o", out)
    finally:
        out.chmod(0o755)
    assert result.returncode == 1 and str(out) in result.stderr


def test_read_only_output_file_system(tiny_checkpoint, tmp_path):
    """As root a chmod does not stop writes: a read-only tmpfs does (skipped without mount)."""
    with mounted_tmpfs(tmp_path / "ro", "size=1m,ro") as mount:
        source = write_input(tmp_path / "a.wav", seconds=0.5)
        result = run_cli(tiny_checkpoint, source, "-o", mount)
        assert result.returncode == 1, result.stderr
        line = [ln for ln in result.stderr.splitlines() if "error" in ln]
        assert len(line) == 1 and str(mount) in line[0]


def _bad_model(tmp_path: Path, tiny_checkpoint: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.safetensors"
    data = tiny_checkpoint.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "foreign":
        path.write_bytes(b"PK\x03\x04 a zip file, not a checkpoint" * 10)
    elif kind == "newer":
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        meta = json.loads(header["__metadata__"]["demix"])
        meta["format_version"] = 99
        header["__metadata__"]["demix"] = json.dumps(meta)
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + header_len :])
    elif kind == "pickle":
        path = tmp_path / "model.pt"
        marker = tmp_path / "unpickled"
        payload = (os.system, (f"touch {marker}",))  # what a malicious .pt would run

        class Evil:
            def __reduce__(self):
                return payload

        path.write_bytes(pickle.dumps(Evil()))
    return path


@pytest.mark.parametrize("kind", ["truncated", "foreign", "newer", "pickle"])
def test_bad_model_files_are_refused_in_one_line(tiny_checkpoint, tmp_path, kind):
    model = _bad_model(tmp_path, tiny_checkpoint, kind)
    with pytest.raises((CheckpointError, ValueError)):
        load_checkpoint(model)
    source = write_input(tmp_path / "a.wav", seconds=0.5)
    result = subprocess.run(
        [sys.executable, "-m", "demix.cli", "separate", str(source), "-o", str(tmp_path / "out"),
         "--model", str(model), "-q"],
        capture_output=True, text=True, env=_env(), timeout=300,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and model.name in result.stderr
    assert not (tmp_path / "unpickled").exists()  # never unpickled
    if kind == "newer":
        assert "version" in result.stderr


def test_video_with_several_audio_tracks_takes_the_first(tiny_checkpoint, tmp_path):
    from test_audio import run_ffmpeg

    a = write_input(tmp_path / "a.wav", seconds=1.0, seed=1)
    b = write_input(tmp_path / "b.wav", seconds=1.0, seed=2)
    video = tmp_path / "two tracks.mkv"
    run_ffmpeg("-i", str(a), "-i", str(b), "-map", "0:a", "-map", "1:a", "-c:a", "flac",
               str(video))  # fmt: skip
    result = run_cli(tiny_checkpoint, video, "-o", tmp_path / "out")
    _separated_ok(result)
    stems = stem_paths(tmp_path / "out" / "two tracks", CDX_STEMS)
    total = sum(sf.read(p, always_2d=True)[0] for p in stems)
    first = sf.read(a, always_2d=True)[0]
    n = min(len(total), len(first))
    assert np.abs(total[:n] - first[:n]).max() < 1e-3  # the first track, not the second


# ------------------------------------------------------------------ property tests

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@pytest.fixture(scope="module")
def tiny_separator(tiny_checkpoint):
    return Separator.from_pretrained(str(tiny_checkpoint))


@pytest.fixture(scope="module")
def modules_hypothesis_can_scan():
    """Hypothesis reads ``__file__`` of every loaded module; speechbrain's lazy placeholders
    (loaded when another test imported speechbrain) raise there instead of returning. Hide
    them from ``sys.modules`` for this test and put them back afterwards."""
    hidden = {}
    for name, module in list(sys.modules.items()):
        try:
            getattr(module, "__file__", None)
        except Exception:  # noqa: BLE001 - whatever a lazy module raises
            hidden[name] = sys.modules.pop(name)
    yield
    sys.modules.update(hidden)


@settings(max_examples=25, deadline=None)
@given(
    frames=st.integers(1, 30000),
    rate=st.sampled_from([8000, 16000, 22050, 44100, 48000, 96000]),
    channels=st.integers(1, 8),
    dtype=st.sampled_from(["float32", "float64", "int16"]),
    head=st.sampled_from(["film", "music", "both"]),
    seed=st.integers(0, 2**16),
)
def test_stems_sum_to_the_mix_keep_length_and_stay_finite(
    modules_hypothesis_can_scan, tiny_separator, frames, rate, channels, dtype, head, seed
):
    rng = np.random.default_rng(seed)
    mix = rng.normal(0, 0.2, (channels, frames))
    mix = (mix * 32767).astype(np.int16) if dtype == "int16" else mix.astype(dtype)
    original = mix.copy()
    stems = tiny_separator.separate(torch.from_numpy(mix), rate, head=head)
    reference = mix.astype(np.float64) / (32768 if dtype == "int16" else 1)
    for stem in stems.values():
        assert tuple(stem.shape) == (channels, frames)
        assert torch.isfinite(stem).all()
    names = CDX_STEMS if head in ("film", "both") else list(stems)  # one head's stems
    total = sum(stems[s].double().numpy() for s in names)
    np.testing.assert_allclose(total, reference, atol=1e-4)
    np.testing.assert_array_equal(mix, original)  # the caller's array is not modified
