"""WAV containers as a mix stage exchanges them: channel masks, BWF ``bext`` and ``iXML``, RF64.

libsndfile (soundfile) reads all of these but writes neither a chosen channel mask nor the
``bext``/``iXML`` chunks, and python-soundfile exposes none of its chunk commands; wavinfo
reads them but writes nothing. So the deliverables of ``demix post`` are written here: a
small streaming RIFF writer (header with placeholder sizes, data appended, sizes patched on
close, promoted to RF64 through a reserved ``JUNK`` chunk when the file passes 4 GiB, as EBU
Tech 3306 describes), and a chunk reader that copies metadata chunks byte for byte.

Samples are [c, t] arrays, channels first, as everywhere in demix.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from demix.audio import SAMPLE_BYTES, WAV_SPEAKERS, AudioError, temporary_path

# WAVE_FORMAT_EXTENSIBLE speaker positions (dwChannelMask bits), in file order
SPEAKERS = WAV_SPEAKERS
# Masks a reader assumes when a file has none (plain PCM): SMPTE / ITU orders.
DEFAULT_MASKS = {1: 0x4, 2: 0x3, 3: 0x7, 4: 0x33, 5: 0x37, 6: 0x3F, 7: 0x13F, 8: 0x63F}
# Channel counts whose files without a mask are taken in the standard order: mono, stereo,
# and 5.1 / 7.1 (as WAV and FLAC readers assume). Other counts without a mask are tracks, not
# speakers (a location recorder's poly WAV, a multitrack): no speaker names, so no LFE.
ASSUMED_LAYOUTS = (1, 2, 6, 8)
METADATA_CHUNKS = (b"bext", b"iXML")  # copied from the input to every deliverable
_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE
_GUID_TAIL = bytes.fromhex("000000001000800000aa00389b71")  # KSDATAFORMAT_SUBTYPE_* tail
_MAX_RIFF = 0xFFFFFFFF


def speakers(mask: int, channels: int) -> list[str]:
    """Speaker names of the channels in file order (``CH<n>`` past the mask's bits)."""
    names = [name for bit, name in enumerate(SPEAKERS) if mask >> bit & 1][:channels]
    return names + [f"CH{i + 1}" for i in range(len(names), channels)]


@dataclass(frozen=True)
class WavLayout:
    """What a WAV file's header and metadata chunks say, besides its samples."""

    channels: int
    channel_mask: int  # from WAVE_FORMAT_EXTENSIBLE, else the default for the count
    mask_given: bool  # False: the file had no mask and the default is assumed
    chunks: dict[bytes, bytes]  # raw payloads of bext, iXML (those present)


def riff_chunks(path: str | os.PathLike) -> list[tuple[bytes, int, int]]:
    """(id, payload offset, payload size) of each top-level chunk of a RIFF/RF64 WAV file.

    RF64 sizes come from the ``ds64`` chunk. Stops at the first chunk that does not parse
    (a size beyond the end of the file, a non-printable id).
    """
    path = Path(path)
    size = path.stat().st_size
    found: list[tuple[bytes, int, int]] = []
    with path.open("rb") as f:
        magic = f.read(12)
        if len(magic) < 12 or magic[:4] not in (b"RIFF", b"RF64", b"BW64") or magic[8:] != b"WAVE":
            raise AudioError(f"{path}: not a WAV file")
        big_data = None
        offset = 12
        while offset + 8 <= size:
            f.seek(offset)
            head = f.read(8)
            chunk, length = head[:4], struct.unpack("<I", head[4:])[0]
            if not all(32 <= c < 127 for c in chunk):
                break
            if chunk == b"ds64":
                big_data = struct.unpack("<Q", f.read(16)[8:16])[0]
            if chunk == b"data" and length == _MAX_RIFF and big_data is not None:
                length = big_data
            if offset + 8 + length > size:
                if chunk == b"data":  # a short final data chunk is still the data chunk
                    found.append((chunk, offset + 8, size - offset - 8))
                break
            found.append((chunk, offset + 8, length))
            offset += 8 + length + (length & 1)
    return found


def assumed_mask(channels: int) -> int:
    """The speaker mask taken for ``channels`` channels that carry none: the standard one
    for the ``ASSUMED_LAYOUTS`` counts, else 0 (tracks without speaker positions)."""
    return DEFAULT_MASKS[channels] if channels in ASSUMED_LAYOUTS else 0


def mask_of_speakers(speakers: Sequence[str]) -> int:
    """The WAV speaker mask of channels named (in file order) as ffmpeg names them; 0 where
    one has no WAV speaker (ffmpeg's wide, top-side or second LFE channels) or they are not
    in WAV's order: tracks, without speaker positions."""
    bits = [SPEAKERS.index(name) if name in SPEAKERS else -1 for name in speakers]
    if min(bits, default=-1) < 0 or bits != sorted(set(bits)):
        return 0
    return sum(1 << bit for bit in bits)


def surround_mask_of(
    path: str | os.PathLike, channels: int, speakers: Sequence[str] | None = None
) -> int | None:
    """The speaker mask of a file's channels where it is known: a WAV file's own mask, the
    layout a container names (``speakers``: ``AudioInfo.speakers``), else 5.1 or 7.1 in their
    standard orders for 6 or 8 channels (what WAV and FLAC readers assume); None for other
    unlabelled counts and for speakers a WAV cannot name (a multitrack, not a speaker
    layout)."""
    if Path(path).suffix.lower() in (".wav", ".wave"):
        with contextlib.suppress(AudioError, OSError, struct.error):
            layout = read_layout(path)
            if layout.mask_given:
                return layout.channel_mask
    mask = mask_of_speakers(speakers) if speakers is not None else assumed_mask(channels)
    return mask if channels > 2 and mask else None


def read_layout(path: str | os.PathLike) -> WavLayout:
    """The channel mask and the metadata chunks (``bext``, ``iXML``) of a WAV file."""
    path = Path(path)
    chunks = riff_chunks(path)
    fmt = next((c for c in chunks if c[0] == b"fmt "), None)
    if fmt is None:
        raise AudioError(f"{path}: WAV file without a fmt chunk")
    with path.open("rb") as f:
        f.seek(fmt[1])
        payload = f.read(fmt[2])
        tag, channels = struct.unpack("<HH", payload[:4])
        mask = None
        if tag == _EXTENSIBLE and len(payload) >= 24:
            mask = struct.unpack("<I", payload[20:24])[0] or None
        if mask is not None and bin(mask).count("1") < channels:
            mask = None  # too few speaker bits: treat as unknown (players do likewise)
        metadata = {}
        for chunk, offset, size in chunks:
            if chunk in METADATA_CHUNKS:
                f.seek(offset)
                metadata[chunk] = f.read(size)
    return WavLayout(channels, mask or assumed_mask(channels), mask is not None, metadata)


def set_channel_mask(path: str | os.PathLike, mask: int) -> None:
    """Write ``mask`` into the ``dwChannelMask`` of a WAVE_FORMAT_EXTENSIBLE file's ``fmt``
    chunk, in place (where ``read_layout`` reads it): libsndfile writes such a header with
    a default mask of its own and python-soundfile cannot choose another."""
    path = Path(path)
    fmt = next((c for c in riff_chunks(path) if c[0] == b"fmt "), None)
    with path.open("r+b") as f:
        if fmt is not None and fmt[2] >= 24:
            f.seek(fmt[1])
            if struct.unpack("<H", f.read(2))[0] == _EXTENSIBLE:
                f.seek(fmt[1] + 20)
                f.write(struct.pack("<I", mask))
                return
    raise AudioError(f"{path}: no WAVE_FORMAT_EXTENSIBLE header to hold the layout")


class WavWriter:
    """Stream a WAV file: header first, samples appended, sizes patched on ``commit``.

    Args:
        path: the final file name (written under a temporary name, renamed on commit).
        sample_rate: samples per second.
        channels: channel count.
        bit_depth: "16", "24" (integer PCM) or "32f" (IEEE float).
        channel_mask: speaker bits; with more than two channels (or a mask that is not the
            count's default) the header is WAVE_FORMAT_EXTENSIBLE carrying it.
        chunks: raw payloads written before the audio (``bext``, ``iXML``), in order.
        partial: write under this name (kept by ``close`` for a later run to continue)
            instead of a new hidden temporary file.
        resume_frames: continue ``partial`` after its first ``resume_frames`` frames (what a
            resume checkpoint recorded; anything written after them is cut off). Its header
            must be the one these arguments give.

    Files that outgrow 4 GiB become RF64 (the reserved ``JUNK`` chunk turns into ``ds64``).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        sample_rate: int,
        channels: int,
        bit_depth: str,
        channel_mask: int | None = None,
        chunks: dict[bytes, bytes] | None = None,
        partial: str | os.PathLike | None = None,
        resume_frames: int = 0,
    ):
        if bit_depth not in ("16", "24", "32f"):
            raise AudioError(f"unknown bit depth {bit_depth!r} (choose 16, 24 or 32f)")
        self.path = Path(path)
        self.channels, self.bit_depth = channels, bit_depth
        self.sample_bytes = SAMPLE_BYTES[bit_depth]
        self.frames = 0
        mask = DEFAULT_MASKS.get(channels, 0) if channel_mask is None else channel_mask
        extensible = channels > 2 or mask != DEFAULT_MASKS.get(channels, 0)
        tag = _FLOAT if bit_depth == "32f" else _PCM
        block = channels * self.sample_bytes
        fmt = struct.pack(
            "<HHIIHH", _EXTENSIBLE if extensible else tag, channels, sample_rate,
            sample_rate * block, block, 8 * self.sample_bytes,
        )  # fmt: skip
        if extensible:
            fmt += struct.pack("<HHI", 22, 8 * self.sample_bytes, mask)
            fmt += struct.pack("<H", tag) + _GUID_TAIL
        header = bytearray(b"RIFF\0\0\0\0WAVE")
        header += b"JUNK" + struct.pack("<I", 28) + bytes(28)  # room for ds64 (RF64)
        header += _chunk(b"fmt ", fmt)
        fmt_end = len(header)
        self._fact_at = None
        if bit_depth == "32f":  # non-PCM formats carry a fact chunk (sample frames)
            self._fact_at = len(header) + 8
            header += _chunk(b"fact", bytes(4))
        for name, payload in (chunks or {}).items():
            header += _chunk(name, payload)
        header += b"data\0\0\0\0"
        self._data_at = len(header)
        self.tmp = Path(partial) if partial is not None else temporary_path(self.path)
        if resume_frames:
            self._file = self.tmp.open("r+b")
            keep = self._data_at + resume_frames * block
            found = self._file.read(self._data_at)
            if (  # same format and the data where these chunks put it (bext may differ
                # in its date: a video's is made when the run starts)
                found[12:fmt_end] != bytes(header[12:fmt_end])
                or found[-8:-4] != b"data"
                or self.tmp.stat().st_size < keep
            ):
                self._file.close()
                raise AudioError(f"{self.tmp}: partial file does not match its resume state")
            self._file.truncate(keep)
            self._file.seek(keep)
            self.frames = resume_frames
        else:
            self._file = self.tmp.open("wb")
            self._file.write(header)

    def write_ints(self, samples: np.ndarray) -> None:
        """Append integer samples [c, t] at the file's depth (int16 range for 16 bit, the
        signed 24-bit range for 24 bit), exactly as given."""
        x = np.ascontiguousarray(np.asarray(samples).T)
        if self.bit_depth == "16":
            data = x.astype("<i2").tobytes()
        elif self.bit_depth == "24":
            wide = x.astype("<i4").reshape(-1, 1).view(np.uint8)
            data = wide[:, :3].tobytes()
        else:
            raise AudioError(f"{self.path}: integer samples for a float file")
        self._append(data, x.shape[0])

    def write_floats(self, samples: np.ndarray) -> None:
        """Append float samples [c, t] to a 32-bit float file."""
        if self.bit_depth != "32f":
            raise AudioError(f"{self.path}: float samples for an integer file")
        x = np.ascontiguousarray(np.asarray(samples, dtype="<f4").T)
        self._append(x.tobytes(), x.shape[0])

    def _append(self, data: bytes, frames: int) -> None:
        if frames and len(data) != frames * self.channels * self.sample_bytes:
            raise AudioError(f"{self.path}: block with the wrong number of channels")
        self._file.write(data)
        self.frames += frames

    def commit(self) -> None:
        """Patch the sizes (RF64 beyond 4 GiB), close, and rename to the final name."""
        data_bytes = self.frames * self.channels * self.sample_bytes
        pad = data_bytes & 1
        if pad:
            self._file.write(b"\0")
        riff_bytes = self._data_at + data_bytes + pad - 8
        f = self._file
        if riff_bytes > _MAX_RIFF or data_bytes > _MAX_RIFF:
            f.seek(0)
            f.write(b"RF64" + struct.pack("<I", _MAX_RIFF))
            f.seek(12)
            ds64 = struct.pack("<QQQI", riff_bytes, data_bytes, self.frames, 0)
            f.write(b"ds64" + struct.pack("<I", 28) + ds64)
            f.seek(self._data_at - 4)
            f.write(struct.pack("<I", _MAX_RIFF))
        else:
            f.seek(4)
            f.write(struct.pack("<I", riff_bytes))
            f.seek(self._data_at - 4)
            f.write(struct.pack("<I", data_bytes))
        if self._fact_at is not None:
            f.seek(self._fact_at)
            f.write(struct.pack("<I", min(self.frames, _MAX_RIFF)))
        f.close()
        os.replace(self.tmp, self.path)

    def sync(self) -> None:
        """Push what was written so far to the disk (before a resume checkpoint names it)."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close without committing: the partial file stays for a later run to continue."""
        self._file.close()

    def abort(self) -> None:
        """Close and delete the temporary file."""
        with contextlib.suppress(Exception):
            self._file.close()
        self.tmp.unlink(missing_ok=True)


def bext_chunk(description: str, originator: str, time_reference: int, when=None) -> bytes:
    """A BWF ``bext`` payload (EBU Tech 3285, version 1): description (256 bytes),
    originator (32), originator reference (32), date and time of origination, the time
    reference in samples since midnight, version 1, no coding history."""
    import datetime

    when = when or datetime.datetime.now()
    return (
        description.encode()[:256].ljust(256, b"\0")
        + originator.encode()[:32].ljust(32, b"\0")
        + bytes(32)
        + when.strftime("%Y-%m-%d%H:%M:%S").encode()
        + struct.pack("<QH", time_reference, 1)
        + bytes(64 + 190)  # UMID and reserved
    )


def _chunk(name: bytes, payload: bytes) -> bytes:
    # An odd payload gets its pad byte inside the declared size: RIFF allows a pad after an
    # odd size, but libsndfile (1.2) then loses the data chunk of an RF64 file. bext and iXML
    # end in NUL-terminated text, so one more NUL reads the same.
    if len(payload) & 1:
        payload += b"\0"
    return name + struct.pack("<I", len(payload)) + payload
