"""``demix separate`` end to end: run as a subprocess with a tiny checkpoint on generated files.

Each run pays for importing torch (a few seconds here), so the tests share runs where they
check different properties of the same command.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cdx import CDX_STEMS
from mdx import MDX_STEMS

RATE = 44100
LSB = {"PCM_16": 2.0**-15, "PCM_24": 2.0**-23}
FLOAT_TOLERANCE = 1e-5


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # One torch thread: on a small machine shared with other jobs, two threads fighting for
    # two cores are several times slower than one.
    env["OMP_NUM_THREADS"] = "1"
    return env


def _command(checkpoint: Path, *args: object) -> list[str]:
    cli = [sys.executable, "-m", "demix.cli", "separate"]
    return [*cli, *map(str, args), "--model", str(checkpoint), "-q"]


def run_cli(checkpoint: Path, *args: object) -> subprocess.CompletedProcess:
    """Run ``demix separate ARGS --model CHECKPOINT -q``; no run may end in a traceback."""
    result = subprocess.run(
        _command(checkpoint, *args), capture_output=True, text=True, env=_env(), timeout=300
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def write_input(
    path: Path,
    seconds: float = 1.0,
    sample_rate: int = RATE,
    channels: int = 2,
    subtype: str = "PCM_24",
    seed: int = 0,
) -> Path:
    """Write seeded noise (well inside full scale) as a sound file and return its path."""
    rng = np.random.default_rng(seed)
    mix = np.clip(0.2 * rng.standard_normal((int(seconds * sample_rate), channels)), -0.9, 0.9)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, mix.astype(np.float32), sample_rate, subtype=subtype)
    return path


def load(path: Path) -> np.ndarray:
    """The file's samples as float64 [c, t] (exact for 16/24-bit integers and 32-bit float)."""
    samples, _ = sf.read(path, dtype="float64", always_2d=True)
    return samples.T


def digest(path: Path) -> str:
    """SHA-256 of the file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listing(folder: Path) -> set[str]:
    """Names in ``folder``, hidden temporary files included."""
    return set(os.listdir(folder))


def assert_like_input(stem: Path, source: Path, subtype: str | None = None) -> None:
    """A stem has the input's sample rate, channels and length (and depth unless given)."""
    out, src = sf.info(str(stem)), sf.info(str(source))
    assert (out.samplerate, out.channels, out.frames) == (src.samplerate, src.channels, src.frames)
    assert out.subtype == (subtype or src.subtype)


def assert_sums_to(stems: list[Path], source: Path) -> None:
    """Stems add back to the input: 16/24-bit stems exactly, in their integers, to the input
    rounded to their depth (the null test; rounding each stem alone was up to one step per
    stem off); 32-bit float stems to float rounding."""
    subtype = sf.info(str(stems[0])).subtype
    total = sum(load(p) for p in stems)
    if subtype == "FLOAT":
        error = np.abs(total - load(source)).max()
        assert error <= FLOAT_TOLERANCE, f"stems differ from the input by {error:.3g}"
        return
    scale = 1.0 / LSB[subtype]
    expected = np.clip(np.rint(load(source) * scale), -scale, scale - 1)
    steps = np.abs(np.rint(total * scale) - expected).max()
    assert steps == 0, f"stems differ from the input by {steps:g} steps"


def stem_paths(track: Path, names: tuple[str, ...] | list[str], ext: str = "wav") -> list[Path]:
    """``track/<name>.<ext>`` for each name."""
    return [track / f"{name}.{ext}" for name in names]


# ------------------------------------------------------------------ the default film run


@dataclass(frozen=True)
class FilmRun:
    """One default ``demix separate`` of a 24-bit stereo file, checked by several tests."""

    result: subprocess.CompletedProcess
    source: Path
    track: Path
    digest_before: str


@pytest.fixture(scope="module")
def film_run(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> FilmRun:
    folder = tmp_path_factory.mktemp("film")
    source = write_input(folder / "scene.wav", seconds=1.5, subtype="PCM_24")
    before = digest(source)
    result = run_cli(tiny_checkpoint, source, "-o", folder / "out")
    return FilmRun(result, source, folder / "out" / "scene", before)


def test_film_stems_have_the_input_rate_layout_length_and_depth(film_run: FilmRun) -> None:
    assert film_run.result.returncode == 0, film_run.result.stderr
    assert listing(film_run.track) == {f"{s}.wav" for s in CDX_STEMS}
    for stem in stem_paths(film_run.track, CDX_STEMS):
        assert_like_input(stem, film_run.source, subtype="PCM_24")


def test_film_stems_sum_to_the_input_within_24_bit_quantisation(film_run: FilmRun) -> None:
    assert film_run.result.returncode == 0, film_run.result.stderr
    assert_sums_to(stem_paths(film_run.track, CDX_STEMS), film_run.source)


def test_the_input_is_never_modified(film_run: FilmRun) -> None:
    assert film_run.result.returncode == 0, film_run.result.stderr
    assert digest(film_run.source) == film_run.digest_before


# ------------------------------------------------------------------ stem selection and heads


def test_one_stem_plus_rest_adds_back_to_the_input(tiny_checkpoint: Path, tmp_path: Path) -> None:
    source = write_input(tmp_path / "scene.wav", subtype="PCM_16")
    result = run_cli(
        tiny_checkpoint, source, "-o", tmp_path / "out", "--stems", "dialogue", "--bit-depth", "32f"
    )
    assert result.returncode == 0, result.stderr
    track = tmp_path / "out" / "scene"
    assert listing(track) == {"dialogue.wav", "rest.wav"}
    stems = stem_paths(track, ["dialogue", "rest"])
    for stem in stems:
        assert_like_input(stem, source, subtype="FLOAT")
    assert_sums_to(stems, source)


def test_music_head_with_a_stem_subset(tiny_checkpoint: Path, tmp_path: Path) -> None:
    source = write_input(tmp_path / "song.wav", subtype="PCM_16")
    result = run_cli(
        tiny_checkpoint,
        source,
        "-o",
        tmp_path / "out",
        "--head",
        "music",
        "--stems",
        "vocals,drums",
    )
    assert result.returncode == 0, result.stderr
    track = tmp_path / "out" / "song"
    assert listing(track) == {"vocals.wav", "drums.wav", "rest.wav"}
    stems = stem_paths(track, ["vocals", "drums", "rest"])
    for stem in stems:
        assert_like_input(stem, source)
    assert_sums_to(stems, source)


def test_both_heads_write_all_nine_stems(tiny_checkpoint: Path, tmp_path: Path) -> None:
    source = write_input(tmp_path / "trailer.wav")
    result = run_cli(
        tiny_checkpoint, source, "-o", tmp_path / "out", "--head", "both", "--bit-depth", "32f"
    )
    assert result.returncode == 0, result.stderr
    track = tmp_path / "out" / "trailer"
    assert listing(track) == {f"{s}.wav" for s in (*CDX_STEMS, *MDX_STEMS)}
    for stem in stem_paths(track, (*CDX_STEMS, *MDX_STEMS)):
        assert_like_input(stem, source, subtype="FLOAT")
    assert_sums_to(stem_paths(track, CDX_STEMS), source)  # each head on its own
    assert_sums_to(stem_paths(track, MDX_STEMS), source)


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_any_rate_and_layout_in_same_out(tiny_checkpoint: Path, tmp_path: Path, fmt: str) -> None:
    sources = [
        write_input(
            tmp_path / "in" / "mono48k.wav", sample_rate=48000, channels=1, subtype="PCM_16"
        ),
        write_input(tmp_path / "in" / "surround51.wav", channels=6, subtype="PCM_24"),
    ]
    before = [digest(s) for s in sources]
    result = run_cli(tiny_checkpoint, *sources, "-o", tmp_path / "out", "--format", fmt)
    assert result.returncode == 0, result.stderr
    for source in sources:
        track = tmp_path / "out" / source.stem
        assert listing(track) == {f"{s}.{fmt}" for s in CDX_STEMS}
        stems = stem_paths(track, CDX_STEMS, fmt)
        for stem in stems:
            # (surround WAVs are WAVE_FORMAT_EXTENSIBLE, which soundfile calls WAVEX)
            assert sf.info(str(stem)).format in {fmt.upper(), f"{fmt.upper()}EX"}
            assert_like_input(stem, source)
        assert_sums_to(stems, source)
    assert [digest(s) for s in sources] == before


def test_surround_stems_keep_the_speaker_layout(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """WAV stems of a 5.1(side) or 7.1 WAV carry its channel mask (they were plain PCM WAVs,
    which players read as unlabelled channels); a 6-channel FLAC's WAV stems get 5.1's."""
    from demix import wav

    rng = np.random.default_rng(1)
    sources = {}
    for name, mask, channels in (("side51.wav", 0x60F, 6), ("film71.wav", 0x63F, 8)):
        path = tmp_path / "in" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        noise = (0.1 * rng.standard_normal((RATE // 2, channels))).astype(np.float32)
        sf.write(path, noise, RATE, format="WAVEX", subtype="PCM_24")
        wav.set_channel_mask(path, mask)
        sources[path] = mask
    sources[write_input(tmp_path / "in" / "six.flac", 0.5, channels=6, subtype="PCM_24")] = 0x3F
    result = run_cli(tiny_checkpoint, *sources, "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    for source, mask in sources.items():
        stems = stem_paths(tmp_path / "out" / source.stem, CDX_STEMS)
        for stem in stems:
            layout = wav.read_layout(stem)
            assert layout.mask_given and layout.channel_mask == mask, (stem, layout)
        assert_sums_to(stems, source)


def test_a_containers_named_layout_labels_its_stems(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A QuickTime file in 6.0 (FL FR FC BC SL SR) was separated as 5.1, its fourth channel
    (BC) taken for the LFE and left wholly out of dialogue, its decode remixed into 5.1 (BC
    spread over the surrounds), and its stems were unlabelled; a 5.1 AAC's too. Now the
    stems carry the container's layout and null against the samples it holds."""
    from test_audio import run_ffmpeg

    from demix import audio, wav

    rng = np.random.default_rng(6)
    six = tmp_path / "six.wav"
    sf.write(six, (0.1 * rng.standard_normal((RATE // 2, 6))).astype(np.float32), RATE,
             subtype="PCM_24")  # fmt: skip
    sources = {}
    for name, layout, codec, mask in (("hex.mov", "6.0", "pcm_s24le", 0x707),
                                      ("side.mov", "5.1(side)", "pcm_s24le", 0x60F),
                                      ("film.mp4", "5.1", "aac", 0x3F)):  # fmt: skip
        path = tmp_path / "in" / name
        path.parent.mkdir(exist_ok=True)
        split = "".join(f"[{c}]" for c in "abcdef")  # the six channels, relabelled in order
        graph = (
            f"[0:a]channelsplit=channel_layout=5.1{split};"
            f"{split}join=inputs=6:channel_layout={layout}[o]"
        )
        run_ffmpeg(
            "-i", str(six), "-filter_complex", graph, "-map", "[o]", "-c:a", codec, str(path)
        )
        sources[path] = mask
    result = run_cli(tiny_checkpoint, *sources, "-o", tmp_path / "out", "--stems", "dialogue")
    assert result.returncode == 0, result.stderr
    for source, mask in sources.items():
        stems = stem_paths(tmp_path / "out" / source.stem, ("dialogue", "rest"))
        for stem in stems:
            layout = wav.read_layout(stem)
            assert layout.mask_given and layout.channel_mask == mask, (stem, layout)
        if source.suffix == ".mov":  # 24-bit PCM: the stems null exactly, against the WAV
            total = sum(audio.read(s)[0].astype(np.float64) for s in stems)  # it was made from
            mix, _ = audio.read(six)  # (a 6.0 stream was decoded remixed into 5.1)
            np.testing.assert_array_equal(np.rint(total * 2**23), np.rint(mix * 2**23))
    dialogue, _ = audio.read(tmp_path / "out" / "hex" / "dialogue.wav")
    assert np.abs(dialogue[3]).max() > 1e-4  # BC is separated, not kept out as an LFE


# ------------------------------------------------------------------ failures


def _bad_inputs(folder: Path) -> list[Path]:
    """One file for each way an input can be unusable (names are all distinct)."""
    corrupt = write_input(folder / "full.flac", subtype="PCM_16")
    (folder / "corrupt.flac").write_bytes(corrupt.read_bytes()[: corrupt.stat().st_size // 2])
    corrupt.unlink()
    (folder / "empty.wav").write_bytes(b"")
    (folder / "notes.wav").write_text("these are not samples\n" * 20)
    sf.write(folder / "silent.wav", np.zeros((0, 2), np.float32), RATE, subtype="PCM_16")
    nan = np.full((RATE, 2), 0.1, np.float32)
    nan[RATE // 2, 1] = np.nan
    sf.write(folder / "nan.wav", nan, RATE, subtype="FLOAT")
    sf.write(folder / "many_channels.wav", np.zeros((1000, 17), np.float32), RATE)
    names = [
        "corrupt.flac",
        "empty.wav",
        "notes.wav",
        "missing.wav",
        "silent.wav",
        "nan.wav",
        "many_channels.wav",
    ]
    return [folder / name for name in names]


def test_bad_inputs_fail_one_line_each_and_the_good_file_is_separated(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    good = write_input(folder / "good.wav")
    bad = _bad_inputs(folder)
    out = tmp_path / "out"
    result = run_cli(tiny_checkpoint, *bad[:3], good, *bad[3:], "-o", out)

    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    for path in bad:
        naming = [line for line in lines if str(path) in line]
        assert len(naming) == 1, f"{path.name}: {naming}"
    assert len(lines) == len(bad), result.stderr
    for stem in stem_paths(out / "good", CDX_STEMS):
        assert_like_input(stem, good)
    for path in bad:  # nothing was left behind for a failed input, not even a temporary file
        track = out / path.stem
        assert not track.exists() or listing(track) == set()


@pytest.mark.parametrize(
    ("option", "value", "name"),
    [("--stems", "dialogue,kazoo", "kazoo"), ("--head", "opera", "opera")],
)
def test_unknown_stem_or_head_is_a_usage_error(
    tiny_checkpoint: Path, tmp_path: Path, option: str, value: str, name: str
) -> None:
    source = write_input(tmp_path / "scene.wav")
    result = run_cli(tiny_checkpoint, source, "-o", tmp_path / "out", option, value)
    assert result.returncode == 2
    assert name in result.stderr
    assert not (tmp_path / "out").exists()


def _earlier_take(track: Path) -> Path:
    track.mkdir(parents=True)
    existing = track / "dialogue.wav"
    existing.write_bytes(b"an earlier take")
    os.utime(existing, (1_000_000_000, 1_000_000_000))
    return existing


def test_existing_output_is_refused_without_overwrite(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    source = write_input(tmp_path / "scene.wav")
    existing = _earlier_take(tmp_path / "out" / "scene")
    result = run_cli(tiny_checkpoint, source, "-o", tmp_path / "out")
    assert result.returncode == 1
    assert str(existing) in result.stderr
    assert "--overwrite" in result.stderr
    assert existing.read_bytes() == b"an earlier take"
    assert existing.stat().st_mtime == 1_000_000_000
    assert listing(existing.parent) == {"dialogue.wav"}  # no other stem written either


def test_existing_output_is_replaced_with_overwrite(tiny_checkpoint: Path, tmp_path: Path) -> None:
    source = write_input(tmp_path / "scene.wav")
    existing = _earlier_take(tmp_path / "out" / "scene")
    result = run_cli(tiny_checkpoint, source, "-o", tmp_path / "out", "--overwrite")
    assert result.returncode == 0, result.stderr
    assert listing(existing.parent) == {f"{s}.wav" for s in CDX_STEMS}
    for stem in stem_paths(existing.parent, CDX_STEMS):
        assert_like_input(stem, source)


def test_overwrite_with_other_stems_names_what_is_left(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """``--stems dialogue`` (dialogue + rest), then all stems with ``--overwrite``: the old
    rest.wav stays beside dialogue, music and effects, and summing the folder counts the
    music and effects twice. One line names it; nothing is deleted (a name alone does not
    say that demix wrote a file: it may be an input or the user's), and the other head's
    stems are not named."""
    source = write_input(tmp_path / "scene.wav", subtype="PCM_24")
    out = tmp_path / "out"
    first = run_cli(tiny_checkpoint, source, "-o", out, "--stems", "dialogue")
    assert first.returncode == 0, first.stderr
    (out / "scene" / "drums.wav").write_bytes(b"the music head's, or the user's")
    again = run_cli(tiny_checkpoint, source, "-o", out, "--overwrite")
    assert again.returncode == 0, again.stderr
    assert "rest.wav of an earlier run with other stems is still there" in again.stderr
    assert "drums" not in again.stderr
    assert listing(out / "scene") == {f"{s}.wav" for s in CDX_STEMS} | {"rest.wav", "drums.wav"}
    assert_sums_to(stem_paths(out / "scene", CDX_STEMS), source)


def test_output_folder_that_cannot_be_created(tiny_checkpoint: Path, tmp_path: Path) -> None:
    source = write_input(tmp_path / "scene.wav")
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file where a folder should go")
    for out in (blocker / "out", blocker):  # under a file; the file itself
        for extra in ([], ["--demo"]):
            result = run_cli(tiny_checkpoint, source, "-o", out, *extra)
            assert result.returncode == 2  # refused up front, once for the whole batch
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            assert len(lines) == 1, result.stderr
            assert str(blocker) in lines[0] and "output folder" in lines[0]
    assert blocker.read_text() == "a regular file where a folder should go"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "scene.wav"]


def test_a_rerun_into_a_folder_inside_the_input_folder_skips_its_own_stems(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """``demix separate reel -o reel/out`` twice: the second run does not take the stems the
    first one wrote under reel/out for inputs."""
    folder = tmp_path / "reel"
    source = write_input(folder / "scene.wav")
    for run in range(2):
        result = run_cli(tiny_checkpoint, folder, "-o", folder / "out", "--overwrite")
        assert result.returncode == 0, (run, result.stderr)
        assert "1 separated, 0 failed" in result.stdout
    assert listing(folder / "out") == {"scene"}
    assert listing(folder / "out" / "scene") == {f"{name}.wav" for name in CDX_STEMS}
    assert_sums_to(stem_paths(folder / "out" / "scene", CDX_STEMS), source)


def test_a_file_name_that_is_not_utf8_is_separated(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Linux file names are bytes: one in Latin-1 (b"caf\\xe9.wav") is read, its stems are
    written under the same bytes, and the lines naming it print."""
    folder = tmp_path / "in"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9")  # a lone surrogate in Python, the raw byte on disk
    source = write_input(folder / "plain.wav")
    os.rename(source, folder / f"{name}.wav")
    result = subprocess.run(
        [sys.executable, "-m", "demix.cli", "separate", str(folder), "-o", str(tmp_path / "out"),
         "--model", str(tiny_checkpoint)],
        capture_output=True, env=_env(), timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert b"Traceback" not in result.stderr
    assert os.listdir(os.fsencode(tmp_path / "out")) == [b"caf\xe9"]
    from demix import audio

    mix, _ = audio.read(folder / f"{name}.wav")
    total = sum(audio.read(p)[0] for p in stem_paths(tmp_path / "out" / name, CDX_STEMS))
    assert np.abs(total - mix).max() < 4 * LSB["PCM_24"]


def test_option_combinations_that_cannot_work_are_usage_errors(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    source = write_input(tmp_path / "scene.wav")
    for args, reason in (
        (["--jobs", "0"], "--jobs 0"),
        (["--workers", "2"], "with --ray"),
        (["--format", "flac", "--bit-depth", "32f"], "flac stores 16- or 24-bit integers only"),
    ):
        result = run_cli(tiny_checkpoint, source, "-o", tmp_path / "out", *args)
        assert result.returncode == 2 and reason in result.stderr, result.stderr


def test_folder_input_is_expanded_to_its_audio_files(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "reel"
    first = write_input(folder / "first.wav", seed=1)
    second = write_input(folder / "sub" / "second.flac", channels=1, subtype="PCM_16", seed=2)
    (folder / "notes.txt").write_text("not audio, and not meant to be")
    (folder / "sub" / "cover.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a picture either")
    result = run_cli(tiny_checkpoint, folder, "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert listing(tmp_path / "out") == {"first", "sub"}  # subfolders mirrored
    for source, track in ((first, "first"), (second, "sub/second")):
        stems = stem_paths(tmp_path / "out" / track, CDX_STEMS)
        for stem in stems:
            assert_like_input(stem, source)
        assert_sums_to(stems, source)


def test_same_file_names_in_subfolders(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """reel1/mix.wav and reel2/mix.wav: each gets its own track folder under -o."""
    a = write_input(tmp_path / "film" / "reel1" / "mix.wav", seed=1)
    b = write_input(tmp_path / "film" / "reel2" / "mix.wav", seed=2)
    result = run_cli(tiny_checkpoint, tmp_path / "film", "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    for source, reel in ((a, "reel1"), (b, "reel2")):
        assert_sums_to(stem_paths(tmp_path / "out" / reel / "mix", CDX_STEMS), source)
    # two files given by name that would share a track folder: the second is refused
    again = run_cli(tiny_checkpoint, a, b, "-o", tmp_path / "flat")
    assert again.returncode == 1 and "already written for" in again.stderr


# ------------------------------------------------------------------ interrupted runs


@pytest.fixture(scope="module")
def long_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two minutes of noise: separating it takes long enough to interrupt mid-write."""
    return write_input(tmp_path_factory.mktemp("long") / "feature.wav", 120.0, subtype="PCM_16")


def _default_sigint() -> None:
    # A child inherits an ignored SIGINT (e.g. from a backgrounded shell); Python only turns
    # SIGINT into KeyboardInterrupt when it starts with the default disposition.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_and_wait_for_partial_stems(
    checkpoint: Path, source: Path, out: Path
) -> tuple[subprocess.Popen, Path]:
    """Start the CLI and return once a temporary stem holds some written samples."""
    proc = subprocess.Popen(
        _command(checkpoint, source, "-o", out),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        preexec_fn=_default_sigint,
    )
    track = out / source.stem
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            sizes = [(track / n).stat().st_size for n in os.listdir(track) if n.endswith(".tmp")]
        except OSError:
            sizes = []
        if any(size > 1 << 16 for size in sizes):
            return proc, track
        time.sleep(0.02)
    proc.kill()
    _, stderr = proc.communicate()
    found = sorted(listing(track)) if track.is_dir() else "no track folder"
    pytest.fail(f"no partial temporary stem appeared ({found}; exit {proc.returncode}): {stderr}")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_leaves_no_stem_and_no_temporary_file(
    tiny_checkpoint: Path, long_input: Path, tmp_path: Path, signum: int
) -> None:
    proc, track = _start_and_wait_for_partial_stems(tiny_checkpoint, long_input, tmp_path)
    try:
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    assert "Traceback" not in stderr
    assert not track.exists()  # the track folder it made is gone, with nothing in it


def test_a_rerun_after_kill_completes_and_removes_stale_temporaries(
    tiny_checkpoint: Path, long_input: Path, tmp_path: Path
) -> None:
    proc, track = _start_and_wait_for_partial_stems(tiny_checkpoint, long_input, tmp_path)
    proc.kill()
    proc.communicate(timeout=60)
    assert any(name.endswith(".tmp") for name in listing(track))
    result = run_cli(tiny_checkpoint, long_input, "-o", tmp_path)
    assert result.returncode == 0, result.stderr
    assert listing(track) == {f"{s}.wav" for s in CDX_STEMS}  # no hidden file left


def test_two_processes_on_one_output_folder(
    tiny_checkpoint: Path, long_input: Path, tmp_path: Path
) -> None:
    """The second writer of the same track folder is refused in one line; the first one
    completes."""
    proc, track = _start_and_wait_for_partial_stems(tiny_checkpoint, long_input, tmp_path)
    try:
        second = run_cli(tiny_checkpoint, long_input, "-o", tmp_path)
        assert second.returncode == 1 and "another demix process" in second.stderr
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert listing(track) == {f"{s}.wav" for s in CDX_STEMS}


def test_kill_leaves_no_file_under_a_final_stem_name(
    tiny_checkpoint: Path, long_input: Path, tmp_path: Path
) -> None:
    proc, track = _start_and_wait_for_partial_stems(tiny_checkpoint, long_input, tmp_path)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not any((track / f"{s}.wav").exists() for s in CDX_STEMS)
    assert all(name.startswith(".") and name.endswith(".tmp") for name in listing(track))


# ------------------------------------------------------------------ demo


def test_demo_separates_the_generated_clip(tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = run_cli(tiny_checkpoint, "--demo", "-o", tmp_path)
    assert result.returncode == 0, result.stderr
    clip = tmp_path / "demo-input" / "demo_film.wav"
    meta = sf.info(str(clip))
    assert (meta.samplerate, meta.channels, meta.subtype) == (RATE, 2, "PCM_24")
    assert meta.frames == 12 * RATE
    stems = stem_paths(tmp_path / "demo_film", CDX_STEMS)
    for stem in stems:
        assert_like_input(stem, clip)
    assert_sums_to(stems, clip)


def test_flac_from_a_float_input_defaults_to_24_bit(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """FLAC has no float samples: a 32-bit float input's stems come out as 24-bit FLAC."""
    source = write_input(tmp_path / "float mix.wav", subtype="FLOAT")
    result = run_cli(tiny_checkpoint, source, "-o", tmp_path / "out", "--format", "flac")
    assert result.returncode == 0, result.stderr
    stems = stem_paths(tmp_path / "out" / "float mix", CDX_STEMS, "flac")
    assert all(sf.info(str(p)).subtype == "PCM_24" for p in stems)
    refused = run_cli(
        tiny_checkpoint, source, "-o", tmp_path / "out2", "--format", "flac", "--bit-depth", "32f"
    )
    assert refused.returncode != 0 and "flac" in refused.stderr.lower()


@pytest.mark.parametrize(
    ("device", "message"),
    [("gpu", "unknown device"), ("cuda:x", "unknown device"), ("tpu", "unknown device")]
    + ([] if __import__("torch").cuda.is_available() else [("cuda", "no CUDA GPU")]),
)
def test_unusable_device_is_one_line_not_a_traceback(
    tiny_checkpoint: Path, tmp_path: Path, device: str, message: str
) -> None:
    source = write_input(tmp_path / "a.wav")
    result = run_cli(tiny_checkpoint, source, "-o", tmp_path / "out", "--device", device)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cpu_with_an_index_is_the_cpu(tiny_checkpoint: Path, tmp_path: Path) -> None:
    source = write_input(tmp_path / "a.wav")
    result = run_cli(tiny_checkpoint, source, "-o", tmp_path / "out", "--device", "cpu:0")
    assert result.returncode == 0, result.stderr


@pytest.fixture()
def small_disk(tmp_path: Path):
    """A 2 MB tmpfs (needs root, as in CI; skipped elsewhere)."""
    with mounted_tmpfs(tmp_path / "disk", "size=2m") as mount:
        yield mount


@contextlib.contextmanager
def mounted_tmpfs(mount: Path, options: str):
    """A tmpfs mounted at ``mount`` with ``options`` for the block (needs root, as in CI: the
    test is skipped where mounting is not allowed)."""
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({options}) here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_is_refused_before_separating(
    tiny_checkpoint: Path, tmp_path: Path, small_disk: Path
) -> None:
    source = write_input(tmp_path / "reel.wav", seconds=4.0)  # 3 stems x 1 MB > 2 MB
    result = run_cli(tiny_checkpoint, source, "-o", small_disk / "out")
    assert result.returncode == 1
    line = [ln for ln in result.stderr.splitlines() if "error" in ln]
    assert len(line) == 1 and "no space left on device" in line[0] and "MB free" in line[0]
    assert not (small_disk / "out" / "reel").exists()


def test_disk_filling_up_while_writing_is_one_line_and_keeps_nothing(
    tiny_checkpoint: Path, tmp_path: Path, small_disk: Path
) -> None:
    source = write_input(tmp_path / "reel.wav", seconds=2.0)
    needed = 3 * 2 * 2 * RATE * 3  # three 24-bit stereo stems of 2 s, without headers
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    # Leave a little more than the samples need but less than the files take (their headers
    # and tmpfs pages): the check before separating passes, the last writes fail.
    (small_disk / "filler").write_bytes(b"\0" * (free - needed - 9000))
    result = run_cli(tiny_checkpoint, source, "-o", small_disk / "out")
    assert result.returncode == 1, result.stderr
    assert "no space left on device while writing" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (small_disk / "out" / "reel").exists()


def test_info_is_a_short_summary_and_json_on_request(tiny_checkpoint: Path) -> None:
    cli = [sys.executable, "-m", "demix.cli", "info", "--model", str(tiny_checkpoint)]
    short = subprocess.run(cli, capture_output=True, text=True, env=_env(), timeout=120)
    assert short.returncode == 0, short.stderr
    lines = short.stdout.strip().splitlines()
    assert len(lines) <= 12
    assert any(ln.startswith("head") and "dialogue, music, effects" in ln for ln in lines)
    assert "--json" in short.stdout
    raw = subprocess.run([*cli, "--json"], capture_output=True, text=True, env=_env(), timeout=120)
    meta = __import__("json").loads(raw.stdout)
    assert meta["model"] == "bandsplit" and meta["heads"]["music"] == list(MDX_STEMS)
    read, write = os.pipe()  # `demix info | head -0`: the reader has gone
    os.close(read)
    try:
        gone = subprocess.run(cli, stdout=write, stderr=subprocess.PIPE, text=True, env=_env(),
                              timeout=120)  # fmt: skip
    finally:
        os.close(write)
    assert gone.returncode == 141 and gone.stderr == "", gone.stderr  # no traceback


def test_help_lists_heads_stems_and_examples() -> None:
    cli = [sys.executable, "-m", "demix.cli", "separate", "--help"]
    text = subprocess.run(cli, capture_output=True, text=True, env=_env(), timeout=120).stdout
    text = " ".join(text.split())  # argparse wraps to the terminal's width
    assert "{film,music,both}" in text and "drums, bass, vocals" in text
    assert "examples:" in text and "--format" in text and "file format" in text


def test_demucs_style_options(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """-n/--name, --two-stems, --segment, --overlap and -j as a demucs user types them; the
    head is the one that has the stem (--two-stems vocals said "unknown stem(s) vocals for
    head film" without --head music), and stem names are not case-sensitive."""
    source = write_input(tmp_path / "song.wav", seconds=3.0)
    cli = [sys.executable, "-m", "demix.cli", "separate", str(source), "-q"]
    result = subprocess.run(
        [*cli, "-o", str(tmp_path / "out"), "-n", str(tiny_checkpoint),
         "--two-stems", "Vocals", "--segment", "1.5", "--overlap", "0.25", "-j", "1"],
        capture_output=True, text=True, env=_env(), timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    track = tmp_path / "out" / "song"
    assert listing(track) == {"vocals.wav", "rest.wav"}
    assert_sums_to(stem_paths(track, ["vocals", "rest"]), source)
    for bad, message in (
        (["--two-stems", "vocals", "--stems", "drums"], "not both"),
        (["--stems", "vocals,kazoo"], "unknown stem(s) kazoo for head music"),
        (["--stems", ","], "names no stem"),  # (was all stems, without a word)
        (["--filename", "{track!r}_{stem}.{ext}"], "write {track} plain"),  # quotes in names
        (["--filename", "{track}_{stem:>10}.{ext}"], "write {stem} plain"),
        (["--filename", "{stem}.mp3"], "gives dialogue.mp3, not a .wav file"),  # WAV data
        (["--filename", "{track}/{stem}"], "gives dialogue, not a .wav file"),
        (["--overlap", "1.5"], "--overlap"),
        (["--segment", "0.01"], "segment"),
    ):
        refused = run_cli(tiny_checkpoint, source, "-o", tmp_path / "x", *bad)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr


def test_mp3_stems_at_the_asked_bitrate(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """--mp3 / --mp3-bitrate: constant-bitrate mp3 stems of the input's rate, layout and length,
    close to (not exactly) summing to the input; what mp3 cannot hold is refused in one line."""
    t = np.arange(4 * RATE) / RATE  # tones: mp3 keeps them (noise it thins out on purpose)
    tones = sum(0.1 * np.sin(2 * np.pi * f * t + f) for f in (110, 440, 1234, 3100))
    source = tmp_path / "song.wav"
    sf.write(source, np.stack([tones, np.roll(tones, 99)], 1), RATE, subtype="PCM_24")
    surround = write_input(tmp_path / "surround.wav", seconds=1.0, channels=6)
    result = run_cli(
        tiny_checkpoint, source, surround, "-o", tmp_path / "out", "--mp3", "--mp3-bitrate", 128
    )
    assert result.returncode == 1, result.stderr
    assert "surround.wav: mp3 holds mono or stereo only" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "surround").exists()
    stems = stem_paths(tmp_path / "out" / "song", CDX_STEMS, "mp3")
    for stem in stems:
        info = sf.info(str(stem))
        assert (info.format, info.samplerate, info.channels) == ("MP3", RATE, 2)
        assert info.frames == sf.info(str(source)).frames
        kbps = stem.stat().st_size * 8 / 4.0 / 1000
        assert 115 <= kbps <= 140, f"{stem.name}: {kbps:.0f} kb/s, asked for 128"
    error = sum(load(p) for p in stems) - load(source)
    snr_db = 10 * np.log10(np.sum(load(source) ** 2) / np.sum(error**2))
    assert snr_db > 12, f"mp3 stems sum to the input at only {snr_db:.1f} dB SNR"
    refused = run_cli(tiny_checkpoint, source, "-o", tmp_path / "x", "--mp3", "--bit-depth", "24")
    assert refused.returncode == 2 and "no bit depth" in refused.stderr


def test_filename_template(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """--filename as in demucs: {track}, {trackext}, {stem}, {ext}; templates that lose stems
    or leave -o are usage errors; two inputs mapped to one file are caught in the batch."""
    a = write_input(tmp_path / "take.wav", seed=1)
    b = write_input(tmp_path / "take.flac", seed=2, subtype="PCM_16")
    out = tmp_path / "out"
    result = run_cli(tiny_checkpoint, a, b, "-o", out, "--filename", "{stem}/{trackext}.{ext}")
    assert result.returncode == 0, result.stderr
    assert listing(out) == set(CDX_STEMS)
    assert listing(out / "dialogue") == {"take.wav.wav", "take.flac.wav"}
    assert_sums_to([out / s / "take.flac.wav" for s in CDX_STEMS], b)
    clash = run_cli(
        tiny_checkpoint, a, b, "-o", tmp_path / "flat", "--filename", "{track}_{stem}.{ext}"
    )
    assert clash.returncode == 1 and "already written for" in clash.stderr
    assert listing(tmp_path / "flat") == {f"take_{s}.wav" for s in CDX_STEMS}
    for template, message in (
        ("{track}.{ext}", "needs {stem}"),
        ("{song}/{stem}.{ext}", "unknown field(s) song"),
        ("../{stem}.{ext}", "not a file inside the output folder"),
        ("/tmp/{stem}.{ext}", "not a file inside the output folder"),
    ):
        refused = run_cli(tiny_checkpoint, a, "-o", tmp_path / "bad", "--filename", template)
        assert refused.returncode == 2 and message in refused.stderr, (template, refused.stderr)
        assert not (tmp_path / "bad").exists()


def test_demix_version_answers(capsys) -> None:
    from demix import __version__
    from demix.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"demix {__version__}"
