"""Learning curves from a run's EMA snapshots (eval.curve)."""

import shutil

import pandas as pd
import pytest

from demix.data import default_data_root


@pytest.mark.skipif(
    not (default_data_root() / "MANIFEST.csv").exists(), reason="development data not found"
)
def test_curve_scores_each_snapshot_once(tiny_checkpoint, tmp_path):
    from eval.curve import main, score_snapshots

    run = tmp_path / "run"
    (run / "snapshots").mkdir(parents=True)
    for step in (100, 200):
        shutil.copy(tiny_checkpoint, run / "snapshots" / f"ema-{step:07d}.safetensors")
    (run / "log.csv").write_text(
        "step,seconds,examples_per_second,lr\n100,360.0,2,1e-3\n200,720.0,2,1e-3\n"
    )
    table = score_snapshots(run, film_count=1, music_seconds=2.0)
    assert sorted(table["step"].unique()) == [100, 200]
    assert set(table["stem"]) >= {"dialogue", "music", "effects", "vocals"}
    assert table.loc[table["step"] == 200, "hours"].iloc[0] == pytest.approx(0.2)
    before = (run / "curve.csv").stat().st_mtime_ns
    assert main([str(run), "--film-items", "1", "--music-seconds", "2"]) == 0  # nothing new
    assert (run / "curve.csv").stat().st_mtime_ns == before
    assert (run / "curve.png").exists()
    assert len(pd.read_csv(run / "curve.csv")) == len(table)
    other = tmp_path / "other"
    shutil.copytree(run, other)
    args = ["--film-items", "1", "--music-seconds", "2", "--compare", str(other)]
    assert main([str(run), *args, "--out", str(tmp_path / "both.png"), "--step-seconds",
                 "run=2.5", "--step-seconds", f"{other}=1.5"]) == 0  # fmt: skip
    assert (tmp_path / "both.png").stat().st_size > 1000
    foley = tmp_path / "foley"
    shutil.copytree(run, foley)
    (foley / "curve.csv").unlink()
    table = score_snapshots(foley, film_count=1, music_seconds=2.0, every=200, foley_count=1)
    assert {"foley dialogue", "foley effects", "dialogue"} <= set(table["stem"])
