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
    # A rerun finds the stems among the inputs and leaves them alone (it separated
    # reel/mix/dialogue.wav into reel/mix/dialogue/...), with --overwrite too, and with the
    # stems beside the input by a template.
    stems_before = sorted(p.name for p in (folder / "mix").iterdir())
    again = run_cli(tiny_checkpoint, folder, "-o", folder)
    _separated_ok(again)  # mix.wav's stems are there: skipped, no other input
    assert "left out 3 file(s) that are stems of other inputs" in again.stderr
    assert "done: 0 separated, 1 skipped, 0 failed" in again.stdout
    _separated_ok(run_cli(tiny_checkpoint, folder, "-o", folder, "--overwrite"))
    assert sorted(p.name for p in (folder / "mix").iterdir()) == stems_before
    template = ["--filename", "{track}_{stem}.{ext}", "--stems", "dialogue", "--overwrite"]
    for _ in range(2):
        _separated_ok(run_cli(tiny_checkpoint, folder, "-o", folder, *template))
    assert sorted(p.name for p in folder.iterdir()) == ["mix", "mix.wav", "mix_dialogue.wav",
                                                        "mix_rest.wav"]  # fmt: skip


def test_an_earlier_run_under_another_output_folder_is_no_input(tiny_checkpoint, tmp_path):
    """``demix separate reels -o reels/film``, then ``-o reels/music``: the second run
    separated the film stems of the first as tracks of their own (4 inputs, not 1). Hidden
    files (macOS's ``._R1.wav`` beside ``R1.wav``) are no inputs either; a file named on the
    command line is always one."""
    reels = tmp_path / "reels"
    write_input(reels / "r1.wav", seconds=0.5)
    (reels / "._r1.wav").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")
    first = run_cli(tiny_checkpoint, reels, "-o", reels / "film")
    _separated_ok(first)
    assert "done: 1 separated, 0 failed" in first.stdout
    second = run_cli(tiny_checkpoint, reels, "-o", reels / "more")
    _separated_ok(second)
    assert "left out 3 file(s) that are stems of other inputs" in second.stderr
    assert "done: 1 separated, 0 failed" in second.stdout
    assert sorted(p.name for p in (reels / "more").iterdir()) == ["r1"]
    named = run_cli(tiny_checkpoint, reels / "film" / "r1" / "music.wav", "-o", tmp_path / "x")
    _separated_ok(named)  # asked for by name: separated
    assert (tmp_path / "x" / "music" / "dialogue.wav").exists()


def test_a_rerun_skips_the_finished_inputs(tiny_checkpoint, tmp_path):
    """An interrupted or repeated batch resumes: the inputs whose stems are all there are
    skipped, not failed (it exited 1 with one "exists" error per finished input); stems
    partly there are still an error, and --overwrite separates again."""
    write_input(tmp_path / "in" / "a.wav", seconds=0.5)
    write_input(tmp_path / "in" / "b.wav", seconds=0.5)
    out = tmp_path / "out"
    _separated_ok(run_cli(tiny_checkpoint, tmp_path / "in", "-o", out))
    (out / "b" / "music.wav").unlink()
    again = run_cli(tiny_checkpoint, tmp_path / "in", "-o", out)
    assert again.returncode == 1
    assert f"{tmp_path / 'in' / 'a.wav'}: stems already there, skipped" in again.stdout
    assert [ln for ln in again.stderr.splitlines() if "error" in ln] == [
        f"demix: error: {out / 'b' / 'dialogue.wav'}: exists (use --overwrite to replace it)"
    ]
    assert "done: 0 separated, 1 skipped, 1 failed" in again.stdout
    _separated_ok(run_cli(tiny_checkpoint, tmp_path / "in", "-o", out, "--overwrite"))


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
        assert result.returncode == 2, result.stderr  # refused up front, before any work
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and str(mount) in lines[0] and "not writable" in lines[0]


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


def test_lying_headers_truncated_lossy_files_and_images(tiny_checkpoint, tmp_path):
    """In one batch: a PNG renamed .wav and an mp3 cut in half (its Xing header still gives the
    full length) fail in one line each and keep nothing; a WAV whose header declares half of
    its audio is separated as declared with a warning; an Ogg cut in half (Ogg states no
    length) is separated up to where its data stops; the good file is separated."""
    t = np.arange(4 * RATE) / RATE
    tone = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 660 * t)], 1)
    image = tmp_path / "poster.wav"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40)
    for fmt, name in (("MP3", "cut_mp3.mp3"), ("OGG", "cut_ogg.ogg")):
        whole = tmp_path / f"whole.{name.split('.')[1]}"
        sf.write(whole, tone, RATE, format=fmt)
        data = whole.read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
        whole.unlink()
    short = tmp_path / "short_header.wav"
    sf.write(short, tone, RATE, subtype="PCM_16")
    data = bytearray(short.read_bytes())
    at = data.find(b"data")
    declared = int.from_bytes(data[at + 4 : at + 8], "little") // 2
    data[at + 4 : at + 8] = declared.to_bytes(4, "little")
    short.write_bytes(bytes(data))
    good = write_input(tmp_path / "good.wav")
    inputs = [image, tmp_path / "cut_mp3.mp3", tmp_path / "cut_ogg.ogg", short, good]
    result = run_cli(tiny_checkpoint, *inputs, "-o", tmp_path / "out")
    assert result.returncode == 1, result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("demix: error")]
    assert len(errors) == 2, result.stderr
    assert "poster.wav: not a readable audio file" in errors[0]
    assert "cut_mp3.mp3: truncated file" in errors[1]
    assert "Xing" not in result.stderr  # the mp3 decoder's own chatter is silenced
    warned = [ln for ln in result.stderr.splitlines() if ln.startswith("demix: warning")]
    assert len(warned) == 1 and "short_header.wav" in warned[0] and "declare" in warned[0]
    assert sorted(listing(tmp_path / "out")) == ["cut_ogg", "good", "short_header"]
    for name, frames in (
        ("short_header", declared // 4),
        ("cut_ogg", sf.info(str(inputs[2])).frames),
    ):
        stems = stem_paths(tmp_path / "out" / name, CDX_STEMS)
        assert all(sf.info(str(p)).frames == frames for p in stems), name
    assert frames < len(tone)


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


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


@pytest.mark.slow
def test_ten_hours_streamed_in_flat_memory(tiny_separator):
    """Ten hours of stereo 48 kHz audio, generated block by block, through the streaming
    pipeline (resampling included): every block's stems sum to it, the output has exactly the
    input's length, and memory after ten hours is what it was after one."""
    rate, block_s, hours = 48000, 60, 10
    blocks = hours * 3600 // block_s
    rng = np.random.default_rng(0)
    sent: list[np.ndarray] = []

    def generate():
        for _ in range(blocks):
            block = (0.1 * rng.standard_normal((2, block_s * rate))).astype(np.float32)
            sent.append(block)
            yield block

    produced, rss_after_hour = 0, None
    for out in tiny_separator.stream(generate(), rate, 2, "film"):
        n = next(iter(out.values())).shape[1]
        mix = np.concatenate(sent, axis=1)[:, :n] if len(sent) > 1 else sent[0][:, :n]
        assert np.abs(sum(out.values()) - mix).max() < 1e-4
        rest = np.concatenate(sent, axis=1)[:, n:]
        sent.clear()
        if rest.shape[1]:
            sent.append(rest)
        produced += n
        if rss_after_hour is None and produced >= 3600 * rate:
            rss_after_hour = _rss_mb()
    assert produced == hours * 3600 * rate
    assert _rss_mb() - rss_after_hour < 100, f"RSS grew {_rss_mb() - rss_after_hour:.0f} MB"


def test_earlier_stems_are_told_from_inputs_by_their_whole_place(tmp_path, capsys):
    """An earlier run's stem sits where the template puts a stem of another input, under
    that input's mirrored subfolder: an input named like a stem (songs/music.wav) has its
    own stems left out (they were kept, and a third run nested music/music/...), a user's
    multitrack in another album is kept, and a flat template's stems are found whatever
    the track's name holds (x_music.wav → x_music_rest.wav)."""
    from demix.separator import output_names, without_earlier_stems

    names = output_names({"film": list(CDX_STEMS), "music": ["drums", "bass", "vocals"]})
    songs, lib = tmp_path / "songs", tmp_path / "lib"
    files = [
        (songs / "music.wav", Path()),
        (songs / "music" / "dialogue.wav", Path("music")),
        (songs / "music" / "music.wav", Path("music")),
        (lib / "Album1" / "Intro.wav", Path("Album1")),
        (lib / "Album2" / "Intro" / "vocals.wav", Path("Album2/Intro")),
        (songs / "x_music.wav", Path()),
        (songs / "x_music_rest.wav", Path()),
    ]
    kept = without_earlier_stems(files, names, "{track}_{stem}.{ext}")
    assert [p for p, _ in kept] == [songs / "music.wav", lib / "Album1" / "Intro.wav",
                                    lib / "Album2" / "Intro" / "vocals.wav",
                                    songs / "x_music.wav"]  # fmt: skip
    assert "left out 3 file(s)" in capsys.readouterr().err
    given = without_earlier_stems(files, names, given=[songs / "music" / "music.wav"])
    assert (songs / "music" / "music.wav", Path("music")) in given
