"""Smoke tests of the speed and memory benchmark, ``python -m eval.speed``, on tiny settings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch

from demix.checkpoint import save_checkpoint
from demix.models import BandSplitConfig, BandSplitModel
from eval import speed

ROOT = Path(__file__).resolve().parents[1]
HEADS = {
    "film": ("dialogue", "music", "effects"),
    "music": ("drums", "bass", "vocals", "guitar", "piano", "other"),
}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random band-split model small enough to run the whole benchmark in seconds."""
    torch.manual_seed(0)
    config = BandSplitConfig(dim=16, layers=2, mask_hidden=16, heads=HEADS)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(path, BandSplitModel(config), "bandsplit", {})
    return path


def table_rows(text: str) -> dict[str, tuple[str, str, str]]:
    """{measure: (value, target, result)} from the report's markdown table."""
    rows = {}
    for line in text.splitlines():
        if not line.startswith("| ") or line.startswith(("| Measure ", "|---")):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        assert len(cells) == 4, line
        rows[cells[0]] = (cells[1], cells[2], cells[3])
    return rows


def number(value: str) -> float:
    """The leading number of a table value such as "0.123", "812 MB" or "14.2×"."""
    match = re.match(r"[0-9]+(\.[0-9]+)?", value)
    assert match, f"not a number: {value!r}"
    return float(match.group())


def test_benchmark_end_to_end(tiny_checkpoint: Path, tmp_path: Path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "report" / "speed.md"
    cmd = [
        sys.executable,
        "-m",
        "eval.speed",
        "--model",
        str(tiny_checkpoint),
        "--seconds",
        "3",
        "--long-minutes",
        "0.05",
        "0.1",
        "--skip-htdemucs",
        "--repeats",
        "1",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    # TMPDIR: to check that the long files are deleted; the onnxruntime export's cache here
    env = dict(os.environ, TMPDIR=str(scratch), DEMIX_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == proc.stdout
    rows = table_rows(proc.stdout)

    for head in ("film", "music", "both"):
        rtfs = []
        for backend in ("torch", "onnxruntime"):
            value, target, result = rows[f"RTF `separate`, {backend}, batch 4, head {head} (3 s)"]
            rtfs.append(number(value))
            assert 0 < rtfs[-1] < 100
            assert target == "≤ 0.1"
            assert result == ("PASS" if rtfs[-1] <= 0.1 else "FAIL")
        ratio = number(rows[f"time torch batch 4 / onnxruntime batch 4, head {head}"][0])
        assert ratio == pytest.approx(rtfs[0] / rtfs[1], rel=0.05, abs=0.01)
        assert rows[f"HTDemucs time / demix time, head {head}"][2] == "SKIPPED"
    assert "HTDemucs reference skipped: --skip-htdemucs" in proc.stdout

    peaks = []
    for minutes in ("0.05", "0.1"):
        what = f"{minutes} min file, head film, `separate_file` (torch)"
        value, target, result = rows[f"peak RSS, {what}"]
        assert value.endswith(" MB") and target == "≤ 1500 MB"
        peak = number(value)
        assert 50 < peak < 20000  # a Python process with torch loaded, in MB
        assert result == ("PASS" if peak <= 1500 else "FAIL")
        peaks.append(peak)
        assert 0 < number(rows[f"RTF, {what}"][0]) < 100
    value, target, result = rows["peak RSS 0.1 min / 0.05 min"]
    assert number(value) == pytest.approx(peaks[1] / peaks[0], abs=0.01)
    assert result == ("PASS" if number(value) <= 1.2 else "FAIL")
    loaded = number(rows["RSS with the model loaded, before separating (0.05 min)"][0])
    assert 0 < loaded <= max(peaks)
    # (onnxruntime keeps a 51-byte session id, .ses, in the temporary folder: not ours)
    left = [p for p in scratch.iterdir() if p.name != ".ses"]
    assert not left, "temporary audio was left behind"


def test_missing_demucs_is_reported_and_skipped(monkeypatch, tiny_checkpoint: Path, capsys):
    def unavailable():
        raise ImportError("No module named 'demucs'")

    monkeypatch.setattr(speed, "build_htdemucs", unavailable)
    # Only the reporting is under test here: skip the demix timings (covered above).
    monkeypatch.setattr(
        speed,
        "time_heads",
        lambda seps, mix, heads, repeats: {key: dict.fromkeys(heads, 1.0) for key in seps},
    )
    args = ["--model", str(tiny_checkpoint), "--seconds", "1", "--long-minutes"]
    assert speed.main([*args, "--repeats", "1", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "HTDemucs reference skipped: demucs is not usable here" in text
    assert "No module named 'demucs'" in text
    rows = table_rows(text)
    assert rows["HTDemucs time / demix time, head both"][2] == "SKIPPED"
    assert not any(measure.startswith("peak RSS") for measure in rows)


def test_long_wav_is_exact_16_bit_stereo(tmp_path: Path):
    path = tmp_path / "long.wav"
    seconds = speed.write_long_wav(path, 0.25)  # 15 s: more than one demo clip
    meta = sf.info(str(path))
    assert (meta.samplerate, meta.channels, meta.subtype) == (44100, 2, "PCM_16")
    assert meta.frames == 15 * 44100 and seconds == pytest.approx(15.0)


def test_verdict():
    assert speed.verdict(0.1, 0.1) == "PASS"
    assert speed.verdict(0.11, 0.1) == "FAIL"
    assert speed.verdict(10.0, 10.0, at_most=False) == "PASS"
    assert speed.verdict(9.9, 10.0, at_most=False) == "FAIL"
