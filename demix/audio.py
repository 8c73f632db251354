"""Audio input/output at the edges of demix: any format in, the same rate and layout out.

- wav, flac, ogg/opus, mp3, aiff are read through soundfile (libsndfile);
- m4a/aac and the audio of video containers (mp4, mov, mkv, ...) through ffmpeg: a system
  ``ffmpeg`` if present, else the binary bundled by the ``imageio-ffmpeg`` wheel;
- wav (16/24-bit integer, 32-bit float), flac (16/24-bit) and mp3 (constant bitrate, through
  libsndfile's LAME encoder) are written, atomically.

Arrays are float32 shaped [c, t] (channels first), as everywhere in demix.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

MAX_CHANNELS = 16  # up to 9.1.6 immersive beds
SOUNDFILE_EXTENSIONS = {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff"}
FFMPEG_EXTENSIONS = {
    ".m4a", ".aac", ".mp4", ".mov", ".mkv", ".mka", ".webm", ".avi", ".wma", ".m4v", ".mxf",
    ".wv",
}  # fmt: skip
# libsndfile reads most of these, ffmpeg the rest (ALAC in a CAF): tried in that order
EITHER_EXTENSIONS = {".aifc", ".caf", ".w64"}
AUDIO_EXTENSIONS = SOUNDFILE_EXTENSIONS | FFMPEG_EXTENSIONS | EITHER_EXTENSIONS

# soundfile subtype → our bit-depth name; anything else (mp3, vorbis, opus) → "24" (ffmpeg's
# containers: _ffmpeg_bit_depth). 32-bit integers are written as 24-bit (no 32-bit integer
# output: float32 would not hold them exactly either).
_SUBTYPE_BITS = {
    "PCM_16": "16",
    "PCM_U8": "16",
    "PCM_S8": "16",
    "PCM_24": "24",
    "PCM_32": "24",
    "FLOAT": "32f",
    "DOUBLE": "32f",
}
_BITS_SUBTYPE = {"16": "PCM_16", "24": "PCM_24", "32f": "FLOAT"}
SAMPLE_BYTES = {"16": 2, "24": 3, "32f": 4}  # bytes a sample takes in a PCM file, by depth
OUTPUT_FORMATS = ("wav", "flac", "mp3")
MP3_BITRATES_KBPS = (64, 96, 128, 160, 192, 224, 256, 320)
MP3_MAX_RATE = 48000
# A plain RIFF WAV holds at most 4 GiB (32-bit sizes); larger stems are written as RF64.
RIFF_LIMIT_BYTES = 0xFFFFFFFF - (1 << 20)  # (room for the header)

# ffmpeg's names for channel layouts (``ffmpeg -layouts``) → channel count. A layout it
# prints that is not here is refused rather than guessed: decoding with a wrong count would
# downmix the file.
FFMPEG_LAYOUTS = {
    "mono": 1, "stereo": 2, "downmix": 2, "2.1": 3, "3.0": 3, "3.0(back)": 3, "4.0": 4,
    "quad": 4, "quad(side)": 4, "3.1": 4, "5.0": 5, "5.0(side)": 5, "4.1": 5, "5.1": 6,
    "5.1(side)": 6, "6.0": 6, "6.0(front)": 6, "3.1.2": 6, "hexagonal": 6, "6.1": 7,
    "6.1(back)": 7, "6.1(front)": 7, "7.0": 7, "7.0(front)": 7, "7.1": 8, "7.1(wide)": 8,
    "7.1(wide-side)": 8, "5.1.2": 8, "7.1(top)": 8, "octagonal": 8, "cube": 8, "5.1.4": 10,
    "7.1.2": 10, "7.1.4": 12, "7.2.3": 12, "9.1.4": 14, "9.1.6": 16, "hexadecagonal": 16,
    "binaural": 2, "22.2": 24,
}  # fmt: skip


# WAVE_FORMAT_EXTENSIBLE speaker positions (dwChannelMask bits) in file order; ffmpeg names
# these speakers the same way (``demix.wav.SPEAKERS``).
WAV_SPEAKERS = (
    "FL", "FR", "FC", "LFE", "BL", "BR", "FLC", "FRC", "BC", "SL", "SR", "TC",
    "TFL", "TFC", "TFR", "TBL", "TBC", "TBR",
)  # fmt: skip


class AudioError(Exception):
    """A file that cannot be read or written; the message names the file and the reason."""


@dataclass(frozen=True)
class AudioInfo:
    """What a file holds: ``frames`` samples per channel at ``sample_rate``."""

    path: Path
    sample_rate: int
    channels: int
    frames: int
    bit_depth: str  # "16", "24" or "32f": the depth to write stems at by default
    backend: str  # "soundfile" or "ffmpeg"
    notes: tuple[str, ...] = ()  # what is odd but readable (shown as warnings)
    timecode_seconds: float | None = None  # a video container's start timecode, in seconds
    # The channels' speakers, in the order they are decoded, where a container names its
    # layout (ffmpeg's names: FL, FR, FC, LFE, BL, BR, SL, SR, TFL, ...): in WAV's order
    # where a WAV can name them all (a film-order "L C R Ls Rs LFE" is decoded as 5.1(side)),
    # else in the file's. None where it names none (WAV and FLAC keep theirs in the header).
    speakers: tuple[str, ...] | None = None

    @property
    def seconds(self) -> float:
        """Duration in seconds."""
        return self.frames / self.sample_rate


def ffmpeg_executable() -> str:
    """Path of an ffmpeg binary: the system one, else the imageio-ffmpeg wheel's."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as exc:  # noqa: BLE001 - any failure means "no ffmpeg"
        raise AudioError(f"ffmpeg is not available ({exc}); install imageio-ffmpeg") from exc


def _check(path: Path, sample_rate: int, channels: int, frames: int) -> None:
    if channels < 1 or channels > MAX_CHANNELS:
        raise AudioError(f"{path}: {channels} channels (demix handles 1 to {MAX_CHANNELS})")
    if sample_rate <= 0:
        raise AudioError(f"{path}: invalid sample rate {sample_rate}")
    if frames <= 0:
        raise AudioError(f"{path}: no audio (zero length)")


def _ffmpeg_for(path: Path) -> str:
    """``ffmpeg_executable()``, its error naming the file that needed it."""
    try:
        return ffmpeg_executable()
    except AudioError as exc:
        raise AudioError(f"{path}: {exc}") from exc


def _ffprobe(path: Path) -> AudioInfo:
    """Stream parameters of a container through ``ffmpeg -i`` (imageio-ffmpeg has no ffprobe)."""
    exe = _ffmpeg_for(path)
    # The header's duration gives the length (for progress bars); the exact length is what
    # the streamed decode yields.
    proc = subprocess.run([exe, "-hide_banner", "-i", str(path)], capture_output=True, text=True)
    text = proc.stderr
    audio_lines = [ln for ln in text.splitlines() if "Audio:" in ln and "Stream #" in ln]
    if not audio_lines:
        reason = text.strip().splitlines()[-1] if text.strip() else "not a media file"
        if "Invalid data" in text or "could not find codec" in text.lower():
            reason = "not a readable audio or video file"
        elif "Stream #" in text:
            reason = "no audio stream"
        raise AudioError(f"{path}: {reason}")
    line = audio_lines[0]
    rate = 0
    for part in line.split(","):
        part = part.strip()
        if part.endswith(" Hz"):
            rate = int(part[:-3])
    channels, speakers = _ffmpeg_layout(line, path, exe)
    speakers = _wav_order(speakers) if speakers else None
    frames = _ffmpeg_duration_frames(text, rate)
    if frames <= 0:  # no usable duration in the header: count by decoding (streamed)
        blocks = _ffmpeg_blocks(path, rate, channels, 1 << 16, speakers=speakers)
        frames = sum(b.shape[1] for b in blocks)
    _check(path, rate, channels, frames)
    depth = _ffmpeg_bit_depth(line)
    notes = ()
    if len(audio_lines) > 1:  # a broadcast MXF/MOV: often one mono track per channel
        notes = (
            f"{path}: {len(audio_lines)} audio tracks; only the first ({channels} channel(s)) "
            "is used: extract another with ffmpeg (-map 0:a:N) to separate it",
        )
    return AudioInfo(
        path, rate, channels, frames, depth, "ffmpeg", notes, _ffmpeg_timecode(text), speakers
    )


def _ffmpeg_bit_depth(line: str) -> str:
    """Our bit-depth name for a container's audio stream line (``... Audio: pcm_s16le, 48000
    Hz, stereo, s16 ...``): 32/64-bit float PCM → "32f"; 16-bit or 8-bit samples (PCM, FLAC,
    ALAC, and the codecs that decode to them, e.g. mu-law) → "16"; anything else (24/32-bit
    PCM, codecs that decode to float such as AAC or Opus) → "24", as for soundfile. The
    decode goes through float32, which holds 16- and 24-bit samples exactly, so stems at
    the input's depth sum back to it exactly."""
    fields = [part.strip() for part in line.split("Audio:", 1)[1].split(",")]
    codec = fields[0].split()[0] if fields and fields[0] else ""
    if codec.startswith(("pcm_f32", "pcm_f64")):
        return "32f"
    sample_format = fields[3].split()[0] if len(fields) > 3 and fields[3] else ""
    if codec.startswith(("pcm_s16", "pcm_u16", "pcm_s8", "pcm_u8")) or sample_format in (
        "s16", "s16p", "u8", "u8p",
    ):  # fmt: skip
        return "16"
    return "24"


_NTSC_RATES = {"23.98": 24000 / 1001, "29.97": 30000 / 1001, "47.95": 48000 / 1001,
               "59.94": 60000 / 1001}  # fmt: skip


def _ffmpeg_timecode(text: str) -> float | None:
    """Start of a container's timecode track ("timecode : 01:00:00:00", ";" for drop frame)
    in seconds, at the video's frame rate (NTSC rates exact); None without either."""
    code = fps_text = None
    for line in text.splitlines():
        key, _, value = line.strip().partition(":")
        if key.strip() == "timecode" and code is None:
            code = value.strip()
        if "Video:" in line and fps_text is None:
            fps_text = next(
                (p.split()[0] for p in line.split(",") if p.strip().endswith(" fps")), None
            )
    if code is None or fps_text is None:
        return None
    try:
        h, m, sec, f = (int(x) for x in code.replace(";", ":").split(":"))
        fps = _NTSC_RATES.get(fps_text) or float(fps_text)
    except ValueError:
        return None
    nominal = round(fps)
    count = (h * 3600 + m * 60 + sec) * nominal + f
    if ";" in code:  # drop frame: two (four at 59.94) frame numbers skipped most minutes
        minutes = 60 * h + m
        count -= (2 if nominal <= 30 else 4) * (minutes - minutes // 10)
    return count / fps


def _ffmpeg_duration_frames(text: str, sample_rate: int) -> int:
    """Frames from ffmpeg's "Duration: HH:MM:SS.ss" line (an estimate: used for progress)."""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Duration:"):
            value = line.split(",")[0].split()[1]
            if value == "N/A":
                return 0
            h, m, sec = value.split(":")
            return int(round((int(h) * 3600 + int(m) * 60 + float(sec)) * sample_rate))
    return 0


def _ffmpeg_layout(line: str, path: Path, exe: str) -> tuple[int, tuple[str, ...] | None]:
    """Channel count and speakers (in channel order; None where unnamed) of ffmpeg's stream
    line "Stream #0:1: Audio: aac, 48000 Hz, 5.1, fltp": the field after the rate is a
    layout's name, as this ffmpeg defines it (``ffmpeg -layouts``: the names of 5.1.4 and
    others changed between versions), "3 channels (FL+FR+LFE)" or "6 channels"."""
    parts = [part.strip() for part in line.split(",")]
    for i, part in enumerate(parts[:-1]):
        if not part.endswith(" Hz"):
            continue
        layout = parts[i + 1]
        words = layout.split()
        if len(words) > 1 and words[0].isdigit() and words[1] == "channels":
            listed = len(words) == 3 and words[2].startswith("(")
            return int(words[0]), tuple(words[2].strip("()").split("+")) if listed else None
        speakers = _ffmpeg_layouts(exe).get(layout)
        if speakers:
            return len(speakers), speakers
        if layout in FFMPEG_LAYOUTS:  # an ffmpeg that cannot list its layouts
            return FFMPEG_LAYOUTS[layout], None
        raise AudioError(f"{path}: unknown channel layout {layout!r} (ffmpeg: {line.strip()})")
    raise AudioError(f"{path}: no channel layout in ffmpeg's stream line ({line.strip()})")


def _wav_order(speakers: tuple[str, ...]) -> tuple[str, ...]:
    """``speakers`` sorted into WAV's order where WAV names each once (ffmpeg's ``aformat``
    then only reorders the channels, exactly), else as they are."""
    if len(set(speakers)) == len(speakers) and set(speakers) <= set(WAV_SPEAKERS):
        return tuple(sorted(speakers, key=WAV_SPEAKERS.index))
    return speakers


@functools.lru_cache(maxsize=4)
def _ffmpeg_layouts(exe: str) -> dict[str, tuple[str, ...]]:
    """``exe``'s standard channel layouts: name → speakers in channel order; {} if it cannot
    say (then containers' layouts are unlabelled, as "6 channels" is)."""
    try:
        text = subprocess.run(
            [exe, "-hide_banner", "-layouts"], capture_output=True, text=True, timeout=60
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    layouts, standard = {}, False
    for line in text.splitlines():
        words = line.split()
        if line.startswith("Standard channel layouts"):
            standard = True
        elif standard and len(words) == 2 and words[0] != "NAME":
            layouts[words[0]] = tuple(words[1].split("+"))
    return layouts


def _ffmpeg_blocks(
    path: Path,
    sample_rate: int,
    channels: int,
    block_frames: int,
    stream: int = 0,
    speakers: Sequence[str] | None = None,
) -> Iterator[np.ndarray]:
    """float32 [c, t] blocks of audio stream ``stream`` decoded by ffmpeg at ``sample_rate``:
    in the stream's own layout where ``speakers`` names it (``-ac N`` would remix a 6.0
    stream into 5.1: its back centre spread over the surrounds and a silent LFE), else
    ``channels`` channels (ffmpeg's downmix or default layout for that count)."""
    layout = ["-af", f"aformat=channel_layouts={'+'.join(speakers)}"] if speakers else []
    cmd = [
        _ffmpeg_for(path),
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-i",
        str(path),
        "-map",
        f"0:a:{stream}",
        "-f",
        "f32le",
        "-acodec",
        "pcm_f32le",
        *(layout or ["-ac", str(channels)]),
        "-ar",
        str(sample_rate),
        "-",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        bytes_per_block = block_frames * channels * 4
        while True:
            data = proc.stdout.read(bytes_per_block)
            if not data:
                break
            usable = len(data) - len(data) % (channels * 4)
            block = np.frombuffer(data[:usable], dtype="<f4").reshape(-1, channels).T
            yield np.ascontiguousarray(block)
        proc.wait()
        if proc.returncode != 0:
            err = proc.stderr.read().decode(errors="replace").strip().splitlines()
            raise AudioError(f"{path}: ffmpeg failed ({err[-1] if err else proc.returncode})")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


# Held while ``_quiet_decoder`` points fd 2 at /dev/null: one thread at a time (two at once
# could restore each other's /dev/null and silence stderr for good), and ``print_line`` waits
# for it, so that another thread's line is not thrown away meanwhile.
_STDERR_SILENCED = threading.RLock()


def print_line(text: str) -> None:
    """Print one line on stderr, whole, never while another thread has it silenced to open
    an mp3 (``_quiet_decoder``): each error line of a batch of files comes out."""
    with _STDERR_SILENCED:
        print(text, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _quiet_decoder(path: Path) -> Iterator[None]:
    """Silence what libmpg123 prints on the process's stderr while an mp3 is opened ("Xing
    stream size off by more than 1%" for a cut-off file): demix reports problems in its own
    one-line messages. Other formats are opened as they are."""
    if path.suffix.lower() != ".mp3":
        yield
        return
    with _STDERR_SILENCED:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            with open(os.devnull, "wb") as null:
                os.dup2(null.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def find_inputs(
    inputs: list[str], output: str | os.PathLike | None = None
) -> list[tuple[Path, Path]]:
    """(file, its output subfolder) for each input: files as given go to the output folder
    itself; folders are expanded (recursively, links to folders not followed) to the
    audio/video files inside, whose subfolders are mirrored under the output folder
    (``reel1/mix.wav`` → ``OUT/reel1/...``). An empty folder is reported on stderr.

    Files under ``output`` (the output folder) are left out of a folder that holds it: a
    rerun of ``demix separate reels -o reels/out`` must not separate the stems it wrote.
    Hidden files and folders are left out too: macOS writes a ``._R1.wav`` (resource fork,
    not audio) beside every ``R1.wav`` on exFAT and network drives. A file given twice is
    one input (its first mention).
    """
    out = Path(output).resolve() if output is not None else None
    files: list[tuple[Path, Path]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            root = p.resolve()
            inner = out is not None and out != root and out.is_relative_to(root)
            found = sorted(
                f
                for f in p.rglob("*")
                if f.is_file()
                and f.suffix.lower() in AUDIO_EXTENSIONS
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
                and not (inner and f.resolve().is_relative_to(out))
            )
            if not found:
                print(f"demix: {p}: folder holds no audio files", file=sys.stderr)
            files += [(f, f.parent.relative_to(p)) for f in found]
        else:
            files.append((p, Path()))
    first: dict[Path, tuple[Path, Path]] = {}  # a file given twice: its first mention
    for path, sub in files:
        first.setdefault(path.resolve(), (path, sub))
    return list(first.values())


def check_output_folder(
    inputs: Sequence[str | os.PathLike], output: str | os.PathLike | None
) -> None:
    """Refuse an output folder that is one of the input folders, where outputs sit beside
    the inputs (``demix post``: a rerun would take a reel's ``R1_DX.wav`` for a reel).
    ``demix separate`` allows it: its stems go into a subfolder per track.

    Raises:
        AudioError: naming the folder and what to do instead.
    """
    if output is None:
        return
    out = Path(output).resolve()
    for item in inputs:
        if Path(item).is_dir() and Path(item).resolve() == out:
            raise AudioError(
                f"{output}: the output folder is the input folder {item}: write to another "
                "folder or a subfolder (-o)"
            )


def output_folder(path: str | os.PathLike) -> Path:
    """Create the output folder (with its parents) before a batch starts, so that a folder
    that cannot hold outputs is one error up front, not one per input.

    Raises:
        AudioError: ``path`` is a file, cannot be created, or is not writable.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AudioError(f"{path}: the output folder is a file")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AudioError(
            f"{path}: cannot create the output folder ({exc.strerror or exc})"
        ) from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise AudioError(f"{path}: the output folder is not writable")
    return path


def info(path: str | os.PathLike) -> AudioInfo:
    """Read a file's sample rate, channel count, length and bit depth without decoding it all.

    Raises:
        AudioError: the file is missing, empty, not audio, or has 0 or more than 16 channels.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a folder, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    if path.suffix.lower() in FFMPEG_EXTENSIONS:
        return _ffprobe(path)
    try:
        with _quiet_decoder(path):
            meta = sf.info(os.fsencode(path))
    except Exception as exc:  # noqa: BLE001 - libsndfile raises several types
        if path.suffix.lower() not in SOUNDFILE_EXTENSIONS:
            return _ffprobe(path)
        raise AudioError(f"{path}: not a readable audio file ({_short(exc)})") from exc
    _check(path, meta.samplerate, meta.channels, meta.frames)
    for line in meta.extra_info.splitlines():
        # libsndfile reads a cut-off wav/aiff up to where the data stops, noting the
        # header's size "(should be N)": refuse rather than separate half a file silently.
        if _header_overstates(line):
            raise AudioError(
                f"{path}: truncated file (the header promises more audio than the file holds)"
            )
    notes = ()
    if meta.format in ("WAV", "WAVEX", "RF64"):
        extra = _bytes_after_wav_data(path)
        if extra > max(64 * 1024, 0.01 * path.stat().st_size):
            notes = (
                f"{path}: {extra / 1e6:.1f} MB after the audio that the header declares "
                f"({meta.frames / meta.samplerate:.1f} s) are not WAV chunks; only the declared "
                "audio is separated (a header left short by the program that wrote the file?)",
            )
    return AudioInfo(
        path,
        meta.samplerate,
        meta.channels,
        meta.frames,
        _SUBTYPE_BITS.get(meta.subtype, "24"),
        "soundfile",
        notes,
    )


def _bytes_after_wav_data(path: Path) -> int:
    """Bytes after a WAV file's data chunk that do not parse as RIFF chunks (0 if all do).

    A header that understates the data (a recorder that crashed before fixing its sizes,
    a tool that wrote a 32-bit size for more than 4 GB) leaves audio that libsndfile skips
    in silence; proper trailing chunks (LIST, id3, bext, iXML) have a printable id and fit.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        if f.read(4) not in (b"RIFF", b"RF64", b"BW64"):
            return 0
        f.seek(12)
        offset, after_data = 12, None
        while offset + 8 <= size:
            f.seek(offset)
            head = f.read(8)
            chunk, length = head[:4], int.from_bytes(head[4:], "little")
            readable = all(32 <= c < 127 for c in chunk)
            if after_data is not None and (not readable or offset + 8 + length > size):
                return size - offset
            if not readable:
                return 0  # before the data chunk: libsndfile's problem, not ours
            if chunk == b"data":
                if length in (0, 0xFFFFFFFF):  # streamed placeholders (RF64: size in ds64)
                    return 0
                after_data = True
            offset += 8 + length + (length & 1)
    return 0


def _header_overstates(line: str) -> bool:
    """True for libsndfile's "data : N (should be M)" note with N > M (a cut-off file).

    Streamed writers leave placeholder sizes (0 or 0xFFFFFFFF) that are not truncation.
    """
    if not line.startswith(("data", "SSND")) or "(should be" not in line:
        return False
    try:
        header = int(line.split(":", 1)[1].split("(")[0])
        actual = int(line.split("should be", 1)[1].strip(" )"))
    except ValueError:
        return False
    return actual < header < 0xFFFFFFF0


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return text.replace("Error opening ", "").split(": ", 1)[-1]


def iter_blocks(
    path: str | os.PathLike,
    block_frames: int = 1 << 18,
    meta: AudioInfo | None = None,
    start_frame: int = 0,
) -> Iterator[np.ndarray]:
    """Yield the file's audio as float32 blocks [c, t_block], in order, in constant memory,
    from frame ``start_frame`` on (seeked in files soundfile reads; decoded and dropped for
    ffmpeg's containers, where a seek need not land on the very sample).

    Raises:
        AudioError: unreadable or truncated data, or NaN/Inf samples.
    """
    meta = meta or info(path)
    path = Path(path)
    if meta.backend == "ffmpeg":
        blocks = _ffmpeg_blocks(
            path, meta.sample_rate, meta.channels, block_frames, speakers=meta.speakers
        )
        blocks = _drop_frames(blocks, start_frame)
    else:
        blocks = _soundfile_blocks(path, block_frames, start_frame)
    offset = start_frame
    for block in blocks:
        if not np.isfinite(block).all():
            bad = offset + int(np.argmax(~np.isfinite(block).all(axis=0)))
            raise AudioError(f"{path}: NaN or infinite sample at {bad / meta.sample_rate:.3f} s")
        offset += block.shape[1]
        yield block
    if offset == start_frame:
        where = f"from frame {start_frame} on" if start_frame else "(zero length)"
        raise AudioError(f"{path}: no audio {where}")
    if meta.backend == "soundfile" and offset < meta.frames - max(0.01 * meta.frames, 4096):
        # A cut-off mp3 whose Xing header gives the full length: decoding stops early.
        raise AudioError(
            f"{path}: truncated file (the header promises {meta.seconds:.1f} s, the audio "
            f"stops at {offset / meta.sample_rate:.1f} s)"
        )


def _drop_frames(blocks: Iterator[np.ndarray], frames: int) -> Iterator[np.ndarray]:
    """The blocks [c, t] after their first ``frames`` frames."""
    for block in blocks:
        if frames >= block.shape[1]:
            frames -= block.shape[1]
            continue
        yield block[:, frames:]
        frames = 0


def _soundfile_blocks(path: Path, block_frames: int, start_frame: int = 0) -> Iterator[np.ndarray]:
    try:
        with _quiet_decoder(path), sf.SoundFile(os.fsencode(path)) as f:
            if start_frame:
                f.seek(start_frame)
            while True:
                data = f.read(block_frames, dtype="float32", always_2d=True)
                if data.shape[0] == 0:
                    break
                yield np.ascontiguousarray(data.T)
    except sf.LibsndfileError as exc:
        raise AudioError(f"{path}: truncated or corrupt audio ({_short(exc)})") from exc


def read(path: str | os.PathLike, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Decode a whole file to float32 [c, t]; resample to ``sample_rate`` if given.

    Returns:
        (audio, sample_rate) with audio shaped [c, t].
    """
    meta = info(path)
    audio = np.concatenate(list(iter_blocks(path, meta=meta)), axis=1)
    if sample_rate is not None and sample_rate != meta.sample_rate:
        return resample(audio, meta.sample_rate, sample_rate), sample_rate
    return audio, meta.sample_rate


def read_stream(
    path: str | os.PathLike, stream: int, sample_rate: int, channels: int = 2
) -> np.ndarray:
    """Decode audio stream ``stream`` (0-based) of a multi-stream container, e.g. the stems of
    a ``.stem.mp4`` (NI Stems: 0 mixture, then one stream per stem), through ffmpeg.

    Returns:
        float32 [channels, t] at ``sample_rate``.
    """
    blocks = list(_ffmpeg_blocks(Path(path), sample_rate, channels, 1 << 16, stream))
    if not blocks:
        raise AudioError(f"{path}: audio stream {stream} is empty or missing")
    return np.concatenate(blocks, axis=1)


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample float32 [c, t] between rates (soxr, high quality)."""
    if from_rate == to_rate:
        return audio
    out = soxr.resample(np.ascontiguousarray(audio.T), from_rate, to_rate, quality="HQ")
    return np.ascontiguousarray(out.T, dtype=np.float32)


def subtype_for(fmt: str, bit_depth: str | None) -> str:
    """soundfile subtype for ``fmt`` ("wav"/"flac"/"mp3") at ``bit_depth`` ("16"/"24"/"32f";
    mp3 has no bit depth and ignores it)."""
    if fmt not in OUTPUT_FORMATS:
        raise AudioError(f"unknown output format {fmt!r} (choose {', '.join(OUTPUT_FORMATS)})")
    if fmt == "mp3":
        return "MPEG_LAYER_III"
    if bit_depth not in _BITS_SUBTYPE:
        raise AudioError(f"unknown bit depth {bit_depth!r} (choose 16, 24 or 32f)")
    if fmt == "flac" and bit_depth == "32f":
        raise AudioError("flac stores 16- or 24-bit integers only: use --bit-depth 16/24 or wav")
    return _BITS_SUBTYPE[bit_depth]


def check_mp3(sample_rate: int, channels: int) -> None:
    """Refuse, before any work, what an MP3 file cannot hold (more than 2 channels, rates
    above 48 kHz): the message says what to use instead."""
    if channels > 2:
        raise AudioError(
            f"mp3 holds mono or stereo only, not {channels} channels: use --format wav or flac"
        )
    if sample_rate > MP3_MAX_RATE:
        raise AudioError(
            f"mp3 holds at most {MP3_MAX_RATE} Hz, not {sample_rate} Hz: use --format wav or flac"
        )


def mp3_top_bitrate(sample_rate: int) -> int:
    """The highest constant bitrate (kb/s) an mp3 at ``sample_rate`` holds: MPEG-1 (32-48
    kHz) 320, MPEG-2 (16-24 kHz) 160, MPEG-2.5 (below) 64."""
    return 320 if sample_rate >= 32000 else 160 if sample_rate >= 16000 else 64


def mp3_compression_level(bitrate_kbps: int, sample_rate: int) -> float:
    """libsndfile's compression level (0 = best) for a constant ``bitrate_kbps``.

    libsndfile maps the level linearly onto LAME's bitrate range for the MPEG version that
    the rate implies (MPEG-1 at 32-48 kHz up to 320 kb/s, MPEG-2 at 16-24 kHz up to 160,
    MPEG-2.5 below up to 64) and LAME takes the nearest legal bitrate; bitrates above the
    version's maximum are written at its maximum. Checked by file size in the tests.
    """
    top = mp3_top_bitrate(sample_rate)
    bottom = 32 if top == 320 else 8
    level = (top - min(bitrate_kbps, top)) / (top - bottom)
    return float(min(max(level, 0.0), 0.99))  # 1.0 itself is refused by libsndfile


def quantise(x: np.ndarray, bits: int) -> np.ndarray:
    """Float samples (full scale 1.0) → ``bits``-bit integers (int32), rounding to nearest and
    clipping to the format's range (+1.0 itself maps to the top code)."""
    full_scale = float(1 << (bits - 1))
    ints = np.rint(np.asarray(x, dtype=np.float64) * full_scale)
    return np.clip(ints, -full_scale, full_scale - 1).astype(np.int32)


def temporary_path(path: Path) -> Path:
    """A new hidden temporary file beside ``path`` (same filesystem, so a rename is atomic),
    with the permissions a plain ``open`` would give it (umask honoured, not mkstemp's 0600).
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a text file (a report) under a temporary name, then rename it into place."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        # (surrogateescape: a file name that is not UTF-8 goes back to disk as its bytes)
        tmp.write_text(text, encoding="utf-8", errors="surrogateescape")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_report_rows(path: str | os.PathLike, row_type: type) -> list:
    """The rows (``"inputs"``) of an earlier run's JSON report at ``path`` as ``row_type``
    dataclasses, in the report's order; [] when there is none or it cannot be read (a run's
    report then starts afresh). Fields ``row_type`` does not know (another version's) are
    dropped; a row that does not fit is left out alone, not the whole report."""
    assert is_dataclass(row_type)
    try:
        rows = json.loads(Path(path).read_text(encoding="utf-8", errors="surrogateescape"))
        rows = rows["inputs"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    known = {f.name for f in fields(row_type)}
    found = []
    for row in rows if isinstance(rows, list) else []:
        with contextlib.suppress(TypeError, AttributeError):  # one odd row: only it goes
            if isinstance(row.get("file"), str):
                found.append(row_type(**{k: v for k, v in row.items() if k in known}))
    return found


def one_line_error(exc: BaseException, path: str | os.PathLike) -> str:
    """``exc`` as one line that names ``path`` (prefixed with it unless the text has it)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if str(path) in text else f"{path}: {text}"


class AtomicWriter:
    """Write a sound file block by block under a temporary name; rename it on ``commit``.

    A crash, an exception or Ctrl-C before ``commit`` leaves no file under the final name.
    Integer formats are quantised here, rounding to nearest (libsndfile's own float to
    integer conversion truncates, which biases the stems), or written as given integers
    (``write_ints``: a head's last stem, so that its stems null exactly); samples beyond
    full scale are clipped and counted in ``clipped``.
    MP3 (``bitrate_kbps``, constant bitrate) is lossy: its stems no longer sum exactly to
    the input, and samples beyond full scale are clipped and counted the same way.
    A WAV whose expected ``frames`` pass 4 GiB is written as RF64 (EBU Tech 3306).
    """

    def __init__(
        self,
        path: Path,
        sample_rate: int,
        channels: int,
        fmt: str,
        bit_depth: str | None,
        bitrate_kbps: int = 320,
        frames: int = 0,
        channel_mask: int | None = None,
    ):
        self.path = Path(path)
        subtype = subtype_for(fmt, bit_depth)
        container = "MP3" if fmt == "mp3" else fmt.upper()
        if container == "WAV" and frames * channels * SAMPLE_BYTES[bit_depth] > RIFF_LIMIT_BYTES:
            container = "RF64"  # libsndfile would write past 4 GiB with clamped RIFF sizes
        # A WAV's speakers are kept by WAVE_FORMAT_EXTENSIBLE: libsndfile writes it (WAVEX;
        # RF64 always) with its own default mask, which ``commit`` sets to the input's.
        self.channel_mask = channel_mask if container in ("WAV", "RF64") else None
        if container == "WAV" and self.channel_mask is not None:
            container = "WAVEX"
        self.bits = {"PCM_16": 16, "PCM_24": 24}.get(subtype, 0)
        self.clipped = 0
        self.lossy = fmt == "mp3"
        options = {}
        if self.lossy:
            check_mp3(sample_rate, channels)
            options = {
                "compression_level": mp3_compression_level(bitrate_kbps, sample_rate),
                "bitrate_mode": "CONSTANT",
            }
        self.tmp = temporary_path(self.path)
        try:
            self._file = sf.SoundFile(
                os.fsencode(self.tmp),  # (bytes: a name that is not UTF-8 is kept as it is)
                "w",
                samplerate=sample_rate,
                channels=channels,
                format=container,
                subtype=subtype,
                **options,
            )
        except Exception as exc:  # noqa: BLE001 - libsndfile refuses rate/channels/format
            self.tmp.unlink(missing_ok=True)
            raise AudioError(
                f"{self.path}: cannot write {fmt} at {sample_rate} Hz, "
                f"{channels} channels ({_short(exc)})"
            ) from exc

    def write(self, block: np.ndarray) -> np.ndarray | None:
        """Append float32 [c, t]; returns the integer samples written (int32 [c, t], as
        ``quantise`` gives them) for an integer format, else None."""
        if self.lossy:  # the encoder clips at full scale: count it as for integer formats
            self.clipped += int(np.count_nonzero(np.abs(block) > 1.0))
            block = np.clip(block, -1.0, 1.0)
        if not self.bits:
            self._file.write(np.ascontiguousarray(block.T, dtype=np.float32))
            return None
        self.clipped += int(np.count_nonzero(np.abs(block) > 1.0))
        ints = quantise(block, self.bits)
        if self.bits == 16:
            data = ints.astype(np.int16)
        else:  # soundfile maps int32 to 24-bit by keeping the top 24 bits
            data = ints.astype(np.int32) << 8
        self._file.write(np.ascontiguousarray(data.T))
        return ints

    def write_ints(self, ints: np.ndarray) -> None:
        """Append integer samples [c, t] of an integer format (``bits`` set) as they are;
        those beyond the format's range are clipped and counted in ``clipped``."""
        top = (1 << (self.bits - 1)) - 1
        outside = (ints > top) | (ints < -top - 1)
        if outside.any():
            self.clipped += int(np.count_nonzero(outside))
            ints = np.clip(ints, -top - 1, top)
        data = ints.astype(np.int16) if self.bits == 16 else ints.astype(np.int32) << 8
        self._file.write(np.ascontiguousarray(data.T))

    def commit(self) -> None:
        """Close and move the file to its final name (atomic on one filesystem)."""
        self._file.close()
        if self.channel_mask is not None:
            from demix.wav import set_channel_mask  # (demix.wav builds on this module)

            set_channel_mask(self.tmp, self.channel_mask)
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Close and delete the temporary file."""
        with contextlib.suppress(Exception):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


def write(
    path: str | os.PathLike,
    audio: np.ndarray,
    sample_rate: int,
    fmt: str | None = None,
    bit_depth: str = "24",
    channel_mask: int | None = None,
) -> None:
    """Write float32 [c, t] to ``path`` atomically (format from ``fmt`` or the extension;
    ``channel_mask``: a WAV's speakers, as ``AtomicWriter``)."""
    path = Path(path)
    fmt = fmt or path.suffix.lower().lstrip(".")
    writer = AtomicWriter(path, sample_rate, audio.shape[0], fmt, bit_depth,
                          frames=audio.shape[1], channel_mask=channel_mask)  # fmt: skip
    try:
        writer.write(np.asarray(audio, dtype=np.float32))
        writer.commit()
    except BaseException:
        writer.abort()
        raise
