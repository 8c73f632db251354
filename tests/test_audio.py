"""Audio I/O at the edges: every format and layout in, atomic wav/flac out, clear errors.

All files are generated in the test (``tmp_path``); no recordings are read.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from demix import audio

RATE = 44100
CHANNEL_COUNTS = (1, 2, 6, 8)
LSB_16 = 2.0**-15
LSB_24 = 2.0**-23
# Lossy codecs may pad or trim a few codec frames (AAC in Matroska keeps ~1000 padding samples).
LOSSY_SLACK_SECONDS = 0.05
VIDEO = ("-f", "lavfi", "-i", "color=c=black:s=16x16:d=1")

# (extension, soundfile format, subtype, sample rate, expected bit depth, atol or None if lossy)
SOUNDFILE_CASES = [
    ("wav", "WAV", "PCM_16", RATE, "16", LSB_16),
    ("wav", "WAV", "PCM_24", RATE, "24", LSB_24),
    ("wav", "WAV", "FLOAT", RATE, "32f", 0.0),
    ("flac", "FLAC", "PCM_16", RATE, "16", LSB_16),
    ("flac", "FLAC", "PCM_24", RATE, "24", LSB_24),
    ("aiff", "AIFF", "PCM_16", RATE, "16", LSB_16),
    ("aif", "AIFF", "PCM_24", RATE, "24", LSB_24),
    ("ogg", "OGG", "VORBIS", RATE, "24", None),
    ("opus", "OGG", "OPUS", 48000, "24", None),
    ("mp3", "MP3", "MPEG_LAYER_III", RATE, "24", None),
]


def tones(channels: int, sample_rate: int, seconds: float = 1.0) -> np.ndarray:
    """A distinct pair of tones per channel, float32 [c, t].

    The low tone (40 to 96 Hz) dominates so that a channel which a codec treats as LFE
    (low-passed near 120 Hz: AAC's 4th, Vorbis/Opus's last of 5.1/7.1) still matches its
    source. Whole-hertz tones over whole seconds are orthogonal, so a swap of two channels
    shows up as a correlation near 0.
    """
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    rows = [
        0.3 * np.sin(2 * np.pi * (40 + 8 * i) * t) + 0.05 * np.sin(2 * np.pi * (700 + 130 * i) * t)
        for i in range(channels)
    ]
    return np.stack(rows).astype(np.float32)


def noise(channels: int, frames: int, seed: int = 0) -> np.ndarray:
    """Seeded white noise, float32 [c, t], well inside [-1, 1]."""
    rng = np.random.default_rng(seed)
    return np.clip(0.2 * rng.standard_normal((channels, frames)), -0.9, 0.9).astype(np.float32)


def channel_correlation(source: np.ndarray, decoded: np.ndarray) -> np.ndarray:
    """Pearson correlation of each channel of ``decoded`` with the same channel of ``source``,
    after dropping the encoder's priming samples where the decoder kept them (up to 2,112:
    Debian's ffmpeg 5.1 puts AAC in Matroska without its codec delay, so its own decoder
    returns the 1,024 priming samples first; newer builds trim them)."""
    head = min(source.shape[1], decoded.shape[1] - 2112, 20000)
    fit = [np.dot(source.sum(0)[:head], decoded.sum(0)[lag : lag + head]) for lag in range(2113)]
    decoded = decoded[:, int(np.argmax(fit)) :]
    n = min(source.shape[1], decoded.shape[1])
    return np.array([np.corrcoef(s[:n], d[:n])[0, 1] for s, d in zip(source, decoded)])


def run_ffmpeg(*args: str) -> None:
    """Run the ffmpeg that demix itself uses; fail the test with its message on error."""
    cmd = [audio.ffmpeg_executable(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def mux_with_video(wav: Path, path: Path, audio_codec: str) -> None:
    """Write ``path`` with a tiny video stream first and ``wav``'s audio as stream #0:1."""
    run_ffmpeg(
        *VIDEO,
        "-i",
        str(wav),
        "-map",
        "0:v",
        "-map",
        "1:a",
        "-c:v",
        "mpeg4",
        "-c:a",
        audio_codec,
        str(path),
    )


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("channels", CHANNEL_COUNTS)
@pytest.mark.parametrize(
    ("ext", "fmt", "subtype", "sample_rate", "bit_depth", "atol"),
    SOUNDFILE_CASES,
    ids=[f"{c[0]}-{c[2].lower()}" for c in SOUNDFILE_CASES],
)
def test_soundfile_formats_round_trip(
    tmp_path: Path,
    ext: str,
    fmt: str,
    subtype: str,
    sample_rate: int,
    bit_depth: str,
    atol: float | None,
    channels: int,
) -> None:
    if fmt not in sf.available_formats():
        pytest.skip(f"the installed libsndfile {sf.__libsndfile_version__} cannot write {fmt}")
    if fmt == "MP3" and channels > 2:
        pytest.skip("mp3 holds at most 2 channels")
    source = tones(channels, sample_rate)
    path = tmp_path / f"source.{ext}"
    sf.write(path, source.T, sample_rate, format=fmt, subtype=subtype)

    meta = audio.info(path)
    assert meta.path == path
    assert (meta.sample_rate, meta.channels, meta.bit_depth) == (sample_rate, channels, bit_depth)
    assert meta.backend == "soundfile"
    decoded, rate = audio.read(path)
    assert rate == sample_rate
    assert decoded.dtype == np.float32
    assert decoded.shape == (channels, meta.frames)
    if atol is None:  # lossy
        assert abs(meta.frames - source.shape[1]) <= LOSSY_SLACK_SECONDS * sample_rate
        assert channel_correlation(source, decoded).min() > 0.9
    else:
        assert meta.frames == source.shape[1]
        np.testing.assert_allclose(decoded, source, rtol=0, atol=atol)


@pytest.mark.parametrize("channels", CHANNEL_COUNTS)
@pytest.mark.parametrize("ext", ["m4a", "mp4", "mov", "mkv"])
def test_ffmpeg_containers_round_trip(tmp_path: Path, ext: str, channels: int) -> None:
    sample_rate = 48000 if ext == "m4a" else RATE
    source = tones(channels, sample_rate)
    wav = tmp_path / "source.wav"
    sf.write(wav, source.T, sample_rate, subtype="FLOAT")
    path = tmp_path / f"encoded.{ext}"
    if ext == "m4a":
        run_ffmpeg("-i", str(wav), "-c:a", "aac", str(path))
    else:  # a tiny video stream first, so that the audio is not stream #0
        mux_with_video(wav, path, "aac")

    slack = LOSSY_SLACK_SECONDS * sample_rate
    meta = audio.info(path)
    assert (meta.sample_rate, meta.channels, meta.bit_depth) == (sample_rate, channels, "24")
    assert meta.backend == "ffmpeg"
    assert abs(meta.frames - source.shape[1]) <= slack  # may be the header's estimate
    decoded, rate = audio.read(path)
    assert rate == sample_rate
    assert decoded.dtype == np.float32
    assert decoded.shape[0] == channels
    assert abs(decoded.shape[1] - source.shape[1]) <= slack
    assert channel_correlation(source, decoded).min() > 0.9


def test_read_resamples_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "source.wav"
    sf.write(path, tones(2, 48000).T, 48000, subtype="FLOAT")
    decoded, rate = audio.read(path, sample_rate=16000)
    assert rate == 16000
    assert decoded.shape == (2, 16000)
    assert channel_correlation(tones(2, 16000), decoded).min() > 0.99


# ------------------------------------------------------------------ writing


@pytest.mark.parametrize(
    ("fmt", "bit_depth", "subtype", "atol"),
    [
        ("wav", "16", "PCM_16", LSB_16),
        ("wav", "24", "PCM_24", LSB_24),
        ("wav", "32f", "FLOAT", 0.0),
        ("flac", "16", "PCM_16", LSB_16),
        ("flac", "24", "PCM_24", LSB_24),
    ],
)
def test_write_bit_depths(
    tmp_path: Path, fmt: str, bit_depth: str, subtype: str, atol: float
) -> None:
    mix = noise(2, RATE // 2)
    path = tmp_path / f"stem.{fmt}"
    audio.write(path, mix, RATE, bit_depth=bit_depth)  # format from the extension
    meta = sf.info(str(path))
    assert (meta.format, meta.subtype) == (fmt.upper(), subtype)
    assert (meta.samplerate, meta.channels, meta.frames) == (RATE, 2, mix.shape[1])
    assert audio.info(path).bit_depth == bit_depth
    written, _ = sf.read(path, dtype="float32", always_2d=True)
    np.testing.assert_allclose(written.T, mix, rtol=0, atol=atol)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


@pytest.mark.parametrize(("bit_depth", "clipped"), [("16", 2), ("24", 2), ("32f", 0)])
def test_writer_clips_and_counts_only_for_integer_depths(
    tmp_path: Path, bit_depth: str, clipped: int
) -> None:
    loud = np.array([[1.5, -2.0, 0.5, 1.0]], np.float32)
    path = tmp_path / "loud.wav"
    writer = audio.AtomicWriter(path, RATE, 1, "wav", bit_depth)
    writer.write(loud)
    writer.commit()
    assert writer.clipped == clipped
    written, _ = sf.read(path, dtype="float32")
    expected = np.clip(loud[0], -1, 1) if clipped else loud[0]
    np.testing.assert_allclose(written, expected, rtol=0, atol=LSB_16 if clipped else 0)


def test_flac_cannot_hold_32_bit_float(tmp_path: Path) -> None:
    with pytest.raises(audio.AudioError, match="flac"):
        audio.write(tmp_path / "stem.flac", noise(2, 100), RATE, bit_depth="32f")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "fmt", "bit_depth", "message"),
    [
        ("stem.aiff", None, "24", "format 'aiff'"),
        ("stem.wav", "ogg", "24", "format 'ogg'"),
        ("stem.wav", None, "8", "bit depth '8'"),
    ],
)
def test_write_rejects_unknown_format_or_depth(
    tmp_path: Path, name: str, fmt: str | None, bit_depth: str, message: str
) -> None:
    with pytest.raises(audio.AudioError, match=message):
        audio.write(tmp_path / name, noise(2, 100), RATE, fmt=fmt, bit_depth=bit_depth)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("sample_rate", "kbps"), [(44100, 96), (48000, 256), (22050, 64)])
def test_mp3_is_written_at_the_asked_constant_bitrate(
    tmp_path: Path, sample_rate: int, kbps: int
) -> None:
    seconds = 10  # long enough for the header and the encoder's first frames not to count
    path = tmp_path / "x.mp3"
    writer = audio.AtomicWriter(path, sample_rate, 2, "mp3", None, bitrate_kbps=kbps)
    writer.write(noise(2, seconds * sample_rate))
    writer.commit()
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.frames) == (sample_rate, 2, seconds * sample_rate)
    measured = path.stat().st_size * 8 / seconds / 1000
    assert abs(measured - kbps) < 0.08 * kbps, f"{measured:.0f} kb/s, asked for {kbps}"


@pytest.mark.parametrize(
    ("sample_rate", "channels", "message"),
    [(96000, 2, "at most 48000 Hz"), (48000, 6, "mono or stereo only")],
)
def test_mp3_refuses_what_it_cannot_hold(
    tmp_path: Path, sample_rate: int, channels: int, message: str
) -> None:
    with pytest.raises(audio.AudioError, match=message):
        audio.write(tmp_path / "stem.mp3", noise(channels, 1000), sample_rate)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ unreadable inputs


def _missing(folder: Path) -> Path:
    return folder / "missing.wav"


def _empty(folder: Path) -> Path:
    path = folder / "empty.wav"
    path.write_bytes(b"")
    return path


def _text(folder: Path) -> Path:
    path = folder / "notes.wav"
    path.write_text("these are not samples\n" * 20)
    return path


def _text_container(folder: Path) -> Path:
    path = folder / "notes.mp4"
    path.write_text("these are not samples either\n" * 20)
    return path


def _seventeen_channels(folder: Path) -> Path:
    path = folder / "seventeen_channels.wav"
    sf.write(path, noise(17, 1000).T, RATE)
    return path


def _zero_length(folder: Path) -> Path:
    path = folder / "silent.wav"
    sf.write(path, np.zeros((0, 2), np.float32), RATE, subtype="PCM_16")
    assert sf.info(str(path)).frames == 0  # a valid header that announces no audio
    return path


def _video_only(folder: Path) -> Path:
    path = folder / "picture.mp4"
    run_ffmpeg(*VIDEO, "-c:v", "mpeg4", str(path))
    return path


UNREADABLE: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing": (_missing, "no such file"),
    "empty": (_empty, "empty"),
    "text": (_text, "not a readable"),
    "text-container": (_text_container, "not a readable"),
    "seventeen-channels": (_seventeen_channels, "17 channels"),
    "zero-length": (_zero_length, "zero length"),
    "video-only": (_video_only, "no audio stream"),
}


@pytest.mark.parametrize(("make", "reason"), UNREADABLE.values(), ids=UNREADABLE)
def test_unreadable_files_raise_audio_error_naming_the_file(
    tmp_path: Path, make: Callable[[Path], Path], reason: str
) -> None:
    path = make(tmp_path)
    with pytest.raises(audio.AudioError, match=reason) as from_info:
        audio.info(path)
    assert str(path) in str(from_info.value)
    with pytest.raises(audio.AudioError) as from_read:
        audio.read(path)
    assert str(path) in str(from_read.value)


def test_truncated_wav_is_refused(tmp_path: Path) -> None:
    """A wav cut in half is refused (one line naming the file), not separated half-way."""
    full = tmp_path / "full.wav"
    sf.write(full, noise(2, RATE).T, RATE, subtype="PCM_16")
    data = full.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(audio.AudioError, match="truncated") as err:
        audio.info(cut)
    assert str(cut) in str(err.value)
    assert audio.info(full).frames == RATE  # the intact file is fine


def test_truncated_flac_raises_audio_error_while_reading(tmp_path: Path) -> None:
    full = tmp_path / "full.flac"
    sf.write(full, noise(2, RATE).T, RATE, subtype="PCM_16")
    cut = tmp_path / "cut.flac"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(audio.AudioError, match="truncated or corrupt") as err:
        for _ in audio.iter_blocks(cut, block_frames=4096):
            pass
    assert str(cut) in str(err.value)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_raise_audio_error_naming_the_time(tmp_path: Path, value: float) -> None:
    samples = noise(2, RATE)
    samples[1, 30000] = value  # 30000 / 44100 = 0.680 s, in the 8th block of 4096
    path = tmp_path / "broken.wav"
    sf.write(path, samples.T, RATE, subtype="FLOAT")
    assert audio.info(path).bit_depth == "32f"
    with pytest.raises(audio.AudioError, match=r"0\.680 s") as err:
        for _ in audio.iter_blocks(path, block_frames=4096):
            pass
    assert str(path) in str(err.value)
    with pytest.raises(audio.AudioError, match="NaN or infinite"):
        audio.read(path)


# ------------------------------------------------------------------ atomic writes


def test_atomic_writer_abort_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "dialogue.wav"
    writer = audio.AtomicWriter(target, RATE, 2, "wav", "24")
    writer.write(noise(2, 4096))
    assert writer.tmp.parent == tmp_path
    assert writer.tmp.stat().st_size > 4096 * 2 * 3  # the samples went to the temporary file
    assert not target.exists()
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_atomic_writer_commit_moves_the_file_into_place(tmp_path: Path) -> None:
    target = tmp_path / "dialogue.flac"
    writer = audio.AtomicWriter(target, RATE, 1, "flac", "16")
    for seed in range(3):
        writer.write(noise(1, 1000, seed))
    assert not target.exists()
    writer.commit()
    assert list(tmp_path.iterdir()) == [target]
    assert sf.info(str(target)).frames == 3000


def test_atomic_writer_writes_rf64_past_the_riff_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A WAV stem whose expected size passes 4 GiB is RF64 (tested with the limit lowered)."""
    monkeypatch.setattr(audio, "RIFF_LIMIT_BYTES", 10_000)
    block = noise(2, 3000)
    for frames, magic in ((3000, b"RF64"), (1000, b"RIFF")):
        target = tmp_path / f"stem{frames}.wav"
        writer = audio.AtomicWriter(target, RATE, 2, "wav", "24", frames=frames)
        writer.write(block[:, :frames])
        writer.commit()
        assert target.read_bytes()[:4] == magic
        decoded, _ = audio.read(target)
        np.testing.assert_allclose(decoded, block[:, :frames], rtol=0, atol=2.0**-23)


@pytest.mark.parametrize(
    ("line", "channels"),
    [
        ("Stream #0:1: Audio: aac (LC), 48000 Hz, 5.1, fltp, 384 kb/s", 6),
        ("Stream #0:0: Audio: flac, 44100 Hz, 4.1, s16", 5),
        ("Stream #0:0: Audio: pcm_s24le, 48000 Hz, 7.1.4, s32 (24 bit)", 12),
        ("Stream #0:0: Audio: pcm_s24le, 48000 Hz, 9.1.6, s32 (24 bit)", 16),
        ("Stream #0:0: Audio: pcm_s16le, 48000 Hz, 3 channels (FL+FR+LFE), s16", 3),
        ("Stream #0:0(eng): Audio: opus, 48000 Hz, 6 channels, fltp", 6),
    ],
)
def test_ffmpeg_layout_names_give_their_channel_count(line: str, channels: int) -> None:
    count, _ = audio._ffmpeg_layout(line, Path("reel.mkv"), audio.ffmpeg_executable())
    assert count == channels


@pytest.mark.parametrize(
    ("line", "bit_depth"),
    [
        ("Stream #0:1: Audio: aac (LC), 48000 Hz, 5.1, fltp, 384 kb/s", "24"),
        ("Stream #0:0: Audio: flac, 44100 Hz, 4.1, s16", "16"),
        ("Stream #0:0: Audio: flac, 48000 Hz, stereo, s32 (24 bit)", "24"),
        (
            "Stream #0:1[0x2](und): Audio: pcm_s16le (sowt / 0x74776F73), 48000 Hz, 5.1, s16, "
            "4608 kb/s",
            "16",
        ),  # fmt: skip
        ("Stream #0:0: Audio: pcm_s24le (in24 / 0x34326E69), 48000 Hz, 5.1, s32 (24 bit)", "24"),
        ("Stream #0:0: Audio: pcm_f32le, 48000 Hz, stereo, flt, 3072 kb/s", "32f"),
        ("Stream #0:0: Audio: alac (alac / 0x63616C61), 44100 Hz, stereo, s16p", "16"),
    ],
)
def test_ffmpeg_streams_report_their_bit_depth(line: str, bit_depth: str) -> None:
    assert audio._ffmpeg_bit_depth(line) == bit_depth


def test_a_16_bit_movie_gives_16_bit_stems_that_null(tmp_path) -> None:
    """pcm_s16le in a QuickTime file: read as 16-bit (it was reported and written as 24)."""
    rng = np.random.default_rng(5)
    source = tmp_path / "mix.wav"
    sf.write(source, 0.3 * rng.standard_normal((RATE, 2)), RATE, subtype="PCM_16")
    movie = tmp_path / "mix.mov"
    mux_with_video(source, movie, "pcm_s16le")
    assert audio.info(movie).bit_depth == "16"
    decoded, _ = audio.read(movie)
    expected, _ = audio.read(source)
    np.testing.assert_array_equal(decoded, expected)  # float32 holds 16-bit samples exactly


def test_an_unknown_ffmpeg_layout_is_refused_not_downmixed() -> None:
    with pytest.raises(audio.AudioError, match=r"reel\.mkv: unknown channel layout 'ambisonic 3'"):
        audio._ffmpeg_layout(
            "Stream #0:0: Audio: opus, 48000 Hz, ambisonic 3, fltp",
            Path("reel.mkv"),
            audio.ffmpeg_executable(),
        )


@pytest.mark.parametrize(
    ("line", "mask"),
    [
        ("Stream #0:1: Audio: aac (LC), 48000 Hz, 5.1, fltp, 384 kb/s", 0x3F),
        ("Stream #0:1: Audio: pcm_s24le, 48000 Hz, 5.1(side), s32 (24 bit)", 0x60F),
        ("Stream #0:1: Audio: pcm_s24le, 48000 Hz, 6.0, s32 (24 bit)", 0x707),
        ("Stream #0:1: Audio: pcm_s24le, 48000 Hz, 7.1(wide), s32 (24 bit)", 0xFF),
        ("Stream #0:0: Audio: pcm_s16le, 48000 Hz, 3 channels (FL+FR+LFE), s16", 0xB),
        ("Stream #0:0: Audio: pcm_s16le, 48000 Hz, 2 channels (FR+FL), s16", 0),  # not WAV's order
        ("Stream #0:0: Audio: pcm_s24le, 48000 Hz, 22.2, s32 (24 bit)", 0),  # LFE2, TSL...
    ],
)
def test_a_containers_named_layout_gives_its_speakers(line: str, mask: int) -> None:
    """The speakers of a named layout, as the ffmpeg in use defines it (``ffmpeg -layouts``),
    and their WAV mask (0: tracks, where a WAV cannot name them)."""
    from demix import wav

    count, speakers = audio._ffmpeg_layout(line, Path("reel.mkv"), audio.ffmpeg_executable())
    assert speakers is not None and len(speakers) == count
    assert wav.mask_of_speakers(speakers) == mask
    six = "Stream #0:0(eng): Audio: opus, 48000 Hz, 6 channels, fltp"
    assert audio._ffmpeg_layout(six, Path("reel.mkv"), audio.ffmpeg_executable()) == (6, None)


def test_a_film_order_container_is_decoded_in_wav_order(tmp_path, monkeypatch) -> None:
    """A QuickTime reel in film order (L C R Ls Rs LFE: ffmpeg 9 says "6 channels
    (FL+FC+FR+SL+SR+LFE)") became six unlabelled tracks, its LFE separated; it is decoded
    reordered into WAV's order (5.1(side)), sample for sample, and labelled so."""
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    exe = imageio_ffmpeg.get_ffmpeg_exe()  # (Debian 12's ffmpeg 5.1 reorders it itself)
    monkeypatch.setattr(audio, "ffmpeg_executable", lambda: exe)
    rng = np.random.default_rng(7)
    six = tmp_path / "six.wav"
    sf.write(six, (0.1 * rng.standard_normal((4800, 6))).astype(np.float32), 48000,
             subtype="PCM_24")  # fmt: skip
    split = "".join(f"[{c}]" for c in "abcdef")
    graph = (f"[0:a]channelsplit=channel_layout=5.1{split};"
             f"{split}join=inputs=6:channel_layout=FL+FC+FR+SL+SR+LFE[o]")  # fmt: skip
    film = tmp_path / "film.mov"
    run_ffmpeg("-i", str(six), "-filter_complex", graph, "-map", "[o]", "-c:a", "pcm_s24le",
               str(film))  # fmt: skip
    probe = subprocess.run([exe, "-hide_banner", "-i", str(film)], capture_output=True, text=True)
    if "(FL+FC+FR+SL+SR+LFE)" not in probe.stderr:
        pytest.skip("this ffmpeg does not keep a custom channel order in QuickTime")
    plain = subprocess.run([exe, "-v", "error", "-i", str(film), "-f", "f32le", "-"],
                           capture_output=True, check=True).stdout  # fmt: skip
    listed = np.frombuffer(plain, "<f4").reshape(-1, 6).T  # FL FC FR SL SR LFE
    assert audio.info(film).speakers == ("FL", "FR", "FC", "LFE", "SL", "SR")
    decoded, _ = audio.read(film)
    np.testing.assert_array_equal(decoded, listed[[0, 2, 1, 5, 3, 4]])


def test_a_4_1_container_keeps_its_five_channels(tmp_path: Path) -> None:
    """ffmpeg names a 5-channel layout 4.1: it is decoded as five channels, not downmixed."""
    path = tmp_path / "reel.mkv"
    join = "[0:a]asplit=5[a][b][c][d][e];[a][b][c][d][e]join=inputs=5:channel_layout=4.1[o]"
    run_ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=0.5", "-filter_complex", join,
               "-map", "[o]", "-c:a", "pcm_s16le", str(path))  # fmt: skip
    meta = audio.info(path)
    assert meta.channels == 5
    decoded, _ = audio.read(path)
    assert decoded.shape[0] == 5
    assert np.abs(decoded).max(axis=1).min() > 0.1  # every channel carries the tone


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("previous", [None, b"an earlier take"])
def test_exception_mid_write_leaves_the_final_name_untouched(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    error: type[BaseException],
    previous: bytes | None,
) -> None:
    write_block = audio.AtomicWriter.write
    started = []

    def write_half_then_fail(self: audio.AtomicWriter, block: np.ndarray) -> None:
        write_block(self, block[:, : block.shape[1] // 2])
        started.append(self.tmp.stat().st_size)
        raise error("the disk caught fire")

    monkeypatch.setattr(audio.AtomicWriter, "write", write_half_then_fail)
    target = tmp_path / "music.wav"
    if previous is not None:
        target.write_bytes(previous)
    with pytest.raises(error, match="caught fire"):
        audio.write(target, noise(2, RATE), RATE)
    assert started and started[0] > RATE  # half the samples were on disk when it failed
    if previous is None:
        assert list(tmp_path.iterdir()) == []
    else:
        assert list(tmp_path.iterdir()) == [target]
        assert target.read_bytes() == previous


# ------------------------------------------------------------------ known bugs (see the report)


# flac stores at most 655350 Hz: libsndfile refuses to open such a file for writing.
REFUSED_RATE = 700_000


def test_refused_output_parameters_raise_audio_error_naming_the_file(tmp_path: Path) -> None:
    target = tmp_path / "stem.flac"
    with pytest.raises(audio.AudioError) as err:
        audio.write(target, noise(2, 1000), REFUSED_RATE, "flac", "16")
    assert str(target) in str(err.value)


def test_refused_output_parameters_leave_no_temporary_file(tmp_path: Path) -> None:
    with pytest.raises(Exception):  # noqa: B017 - the type is the other test's business
        audio.write(tmp_path / "stem.flac", noise(2, 1000), REFUSED_RATE, "flac", "16")
    assert list(tmp_path.iterdir()) == []


def test_written_files_honour_the_umask(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        audio.write(tmp_path / "stem.wav", noise(2, 100), RATE)
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "stem.wav").stat().st_mode) == 0o644


def test_container_with_an_empty_audio_stream_raises_audio_error(tmp_path: Path) -> None:
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros((0, 2), np.float32), RATE, subtype="PCM_16")
    path = tmp_path / "no_sound.mkv"
    mux_with_video(silent, path, "pcm_s16le")
    with pytest.raises(audio.AudioError) as err:
        audio.read(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("ext", ["wav", "mkv"])
def test_blocks_from_a_start_frame(tmp_path: Path, ext: str) -> None:
    """``iter_blocks(start_frame=)`` (a resumed ``demix post``): the file's samples from that
    frame on, seeked (soundfile) or decoded and dropped (ffmpeg), whatever the block size."""
    source = noise(2, 3 * RATE)
    wav = tmp_path / "source.wav"
    sf.write(wav, source.T, RATE, subtype="FLOAT")
    path = wav
    if ext == "mkv":
        path = tmp_path / "video.mkv"
        mux_with_video(wav, path, "pcm_f32le")  # lossless, so the samples compare exactly
    whole = np.concatenate(list(audio.iter_blocks(path, block_frames=5000)), axis=1)
    for start in (1, 4999, 5000, 12345, whole.shape[1] - 1):
        part = np.concatenate(list(audio.iter_blocks(path, 5000, start_frame=start)), axis=1)
        np.testing.assert_array_equal(part, whole[:, start:])
    with pytest.raises(audio.AudioError, match=f"{path.name}.*no audio from frame"):
        list(audio.iter_blocks(path, start_frame=whole.shape[1]))


def test_a_container_with_several_audio_tracks_says_which_is_used(tmp_path: Path) -> None:
    """A MOV/MXF with one mono track per channel (broadcast practice) gave a mono result
    from its first track without a word; now a note (a warning in separate and post) says
    how many tracks there are and which is used."""
    tracks = []
    for i, freq in enumerate((440, 660, 880)):
        t = np.arange(RATE // 2) / RATE
        tracks.append(tmp_path / f"t{i}.wav")
        sf.write(tracks[-1], 0.1 * np.sin(2 * np.pi * freq * t), RATE, subtype="PCM_24")
    mov = tmp_path / "tracks.mov"
    inputs = [arg for track in tracks for arg in ("-i", str(track))]
    maps = [arg for i in range(3) for arg in ("-map", f"{i}:a")]
    run_ffmpeg(*inputs, *maps, "-c:a", "pcm_s24le", str(mov))
    meta = audio.info(mov)
    assert meta.channels == 1
    assert meta.notes == (
        f"{mov}: 3 audio tracks; only the first (1 channel(s)) is used: extract another with "
        "ffmpeg (-map 0:a:N) to separate it",
    )
    single = tmp_path / "one.mov"
    run_ffmpeg("-i", str(tracks[0]), "-c:a", "pcm_s24le", str(single))
    assert audio.info(single).notes == ()


def test_find_inputs_lists_a_file_once_and_skips_hidden_files(tmp_path: Path) -> None:
    """``separate a.wav a.wav`` failed the second mention ("already written for"); a file
    given by name and again through its folder is also one input. macOS's ``._a.wav``
    (not audio) and hidden folders are not searched."""
    (tmp_path / "in" / ".cache").mkdir(parents=True)
    for name in ("a.wav", "._a.wav", ".cache/b.wav"):
        sf.write(tmp_path / "in" / name, np.zeros((10, 1)), RATE)
    a = tmp_path / "in" / "a.wav"
    found = audio.find_inputs([str(a), str(a), str(tmp_path / "in")], tmp_path / "out")
    assert found == [(a, Path())]


def test_mp3s_opened_in_threads_leave_stderr_and_other_lines_alone(tmp_path, capfd) -> None:
    """Opening an mp3 points fd 2 at /dev/null for a moment (libmpg123's noise). Two threads
    doing it at once could restore each other's /dev/null, and a line another thread printed
    meanwhile was lost: a batch with --files-together dropped some of its error lines."""
    import threading

    song = tmp_path / "song.mp3"
    audio.write(song, (0.1 * np.random.default_rng(0).standard_normal((2, RATE))).astype(
        np.float32), RATE, "mp3")  # fmt: skip
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(song.read_bytes()[: song.stat().st_size // 2])

    def open_many() -> None:
        for _ in range(40):
            for path in (song, cut):
                audio.info(path)

    workers = [threading.Thread(target=open_many) for _ in range(3)]
    for worker in workers:
        worker.start()
    for i in range(200):
        audio.print_line(f"line {i}")
    for worker in workers:
        worker.join()
    os.write(2, b"still here\n")
    err = capfd.readouterr().err
    assert [f"line {i}" for i in range(200)] == [x for x in err.splitlines() if x[:5] == "line "]
    assert "still here" in err
