"""``demix separate --ray``: a batch on a local Ray cluster that the run starts on loopback and
stops, with a bad file in it, then a resumed rerun that skips what is done."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_cli import _env

from demix.demo import demo_clip

try:
    import ray  # noqa: F401
except ImportError:
    ray = None
needs_ray = pytest.mark.skipif(
    ray is None, reason="Ray is not installed (pip install 'demix[ray]')"
)
RATE = 44100
STEMS = ("dialogue", "music", "effects")


@needs_ray
def test_ray_batch_with_a_bad_file_then_a_resumed_rerun(tiny_checkpoint, tmp_path):
    inputs = tmp_path / "in"
    (inputs / "act2").mkdir(parents=True)
    mixes = {}
    for name, seconds in (("a", 2.0), ("act2/b", 3.0)):
        mixes[name], _ = demo_clip(seconds, RATE)
        sf.write(inputs / f"{name}.wav", mixes[name].T, RATE, subtype="FLOAT")
    (inputs / "bad.wav").write_text("not audio")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "demix.cli", "separate", str(inputs), "-o", str(out),
           "--model", str(tiny_checkpoint), "--ray", "--workers", "2", "-q"]  # fmt: skip
    env = dict(_env(), DEMIX_CACHE=str(tmp_path / "cache"))
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert run.returncode == 1, run.stderr  # one input failed, the others were separated
    assert "bad.wav" in run.stderr and "2 separated, 0 skipped" in run.stdout, run.stderr
    for name, mix in mixes.items():
        total = sum(sf.read(out / name / f"{s}.wav")[0] for s in STEMS)
        np.testing.assert_allclose(total, mix.T, atol=1e-5)  # stems sum to the input
    rows = {Path(r["file"]).name: r for r in csv.DictReader((out / "report.csv").open())}
    assert rows["a.wav"]["status"] == "done" and rows["b.wav"]["status"] == "done"
    assert rows["bad.wav"]["status"] == "failed" and "bad.wav" in rows["bad.wav"]["error"]
    assert float(rows["b.wav"]["duration_s"]) == pytest.approx(3.0)
    assert float(rows["a.wav"]["seconds_taken"]) > 0 and rows["a.wav"]["worker"]
    report = json.loads((out / "report.json").read_text())
    assert len(report["inputs"]) == 3
    assert not list(out.rglob(".*.tmp"))  # every stem written whole

    first = (out / "a" / "dialogue.wav").stat().st_mtime_ns
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert again.returncode == 1 and "0 separated, 2 skipped" in again.stdout
    assert (out / "a" / "dialogue.wav").stat().st_mtime_ns == first  # not redone
    statuses = {
        Path(r["file"]).name: r["status"] for r in csv.DictReader((out / "report.csv").open())
    }
    assert statuses == {"a.wav": "skipped", "b.wav": "skipped", "bad.wav": "failed"}

    # a later batch into the same folder adds its row and keeps the earlier inputs' rows
    (tmp_path / "reel2").mkdir()
    sf.write(tmp_path / "reel2" / "c.wav", mixes["a"].T, RATE, subtype="FLOAT")
    later = [*cmd[:4], str(tmp_path / "reel2"), *cmd[5:]]
    third = subprocess.run(later, capture_output=True, text=True, env=env, timeout=600,
                           cwd=tmp_path)  # fmt: skip
    assert third.returncode == 0 and "1 separated, 0 skipped" in third.stdout, third.stderr
    statuses = {
        Path(r["file"]).name: r["status"] for r in csv.DictReader((out / "report.csv").open())
    }
    assert statuses == {"a.wav": "skipped", "b.wav": "skipped", "bad.wav": "failed",
                        "c.wav": "done"}  # fmt: skip
    assert len(json.loads((out / "report.json").read_text())["inputs"]) == 4


@pytest.mark.parametrize(
    ("template", "jobs"),
    [("{track}/{stem}.{ext}", [["a"], ["b"], ["c"]]),  # a folder per track: one job each
     ("{stem}/{track}.{ext}", [["a", "b"], ["c"]]),  # shared folders: one actor in turn
     ("{track}_{stem}.{ext}", [["a", "b"], ["c"]])],  # (c is in its own subfolder)
)  # fmt: skip
def test_files_sharing_an_output_folder_go_to_one_actor(tmp_path, template, jobs):
    """``separate_file`` locks the folders it writes: files whose stems share one are one job
    (so two actors never meet at a lock); finished inputs are skipped."""
    from demix.catalogue import _plan
    from demix.separator import separation_inputs

    for name in ("a", "b", "sub/c"):
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(tmp_path / "in" / f"{name}.wav", np.zeros((100, 2)), RATE)
    found = separation_inputs([tmp_path / "in"], tmp_path / "out", STEMS, template)
    planned, known = _plan(found, tmp_path / "out", STEMS, "wav", template, False)
    assert [[Path(f.file).stem for f in job.files] for job in planned] == jobs and not known
    for stem in STEMS:  # a's stems are there already (the default template)
        (tmp_path / "out2" / "a").mkdir(parents=True, exist_ok=True)
        (tmp_path / "out2" / "a" / f"{stem}.wav").write_bytes(b"")
    found = separation_inputs([tmp_path / "in"], tmp_path / "out2", STEMS)
    planned, known = _plan(found, tmp_path / "out2", STEMS, "wav", "{track}/{stem}.{ext}", False)
    assert [r.status for r in known] == ["skipped"] and len(planned) == 2


def test_a_template_that_misfits_one_input_fails_only_that_input(tmp_path):
    """``--filename "{track}_{stem}.{trackext}"`` with WAV stems: an mp3 input's stems would be
    .mp3 files; that input is one failed row and the others are planned (the whole --ray
    batch stopped with a traceback)."""
    from demix.catalogue import _plan
    from demix.separator import separation_inputs

    template = "{track}_{stem}.{trackext}"
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "a.wav", np.zeros((100, 2)), RATE)
    sf.write(tmp_path / "in" / "b.mp3", np.zeros((2000, 2)), RATE)
    found = separation_inputs([tmp_path / "in"], tmp_path / "out", STEMS, template)
    planned, known = _plan(found, tmp_path / "out", STEMS, "wav", template, False)
    assert [Path(f.file).name for job in planned for f in job.files] == ["a.wav"]
    assert [(Path(r.file).name, r.status) for r in known] == [("b.mp3", "failed")]
    assert "b.mp3" in known[0].error and "not a .wav file" in known[0].error
