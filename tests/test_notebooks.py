"""The four notebooks run top to bottom from a fresh kernel in their small configuration
(``DEMIX_NOTEBOOK_SMALL=1``), and are committed without outputs.

Time budget in CI: about 4 minutes for all four on 2 CPU cores (most of it 02 and 03, which
build and score small evaluation sets, and 04, which trains for 12 steps).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
DATA_NEEDED = {"02_failure_cases", "03_speech_in_noise", "04_train_a_small_model"}


def test_there_are_four_notebooks_without_outputs():
    assert [p.stem for p in NOTEBOOKS] == [
        "01_separate_a_clip",
        "02_failure_cases",
        "03_speech_in_noise",
        "04_train_a_small_model",
    ]
    for path in NOTEBOOKS:
        book = nbformat.read(path, as_version=4)
        for cell in book.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, (
                    f"{path.name}: outputs are committed (strip them)"
                )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    from demix.data import default_data_root

    if path.stem in DATA_NEEDED and not (default_data_root() / "MANIFEST.csv").exists():
        pytest.skip(f"development data not found at {default_data_root()}")
    monkeypatch.setenv("DEMIX_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("DEMIX_NOTEBOOK_WORK", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("DEMIX_CLIP", raising=False)
    book = nbformat.read(path, as_version=4)
    # The kernel starts in notebooks/, as Jupyter starts it; the notebook works from the
    # project root, so the decoded-pool cache (runs/cache) is the project's (shared with the
    # other tests) and runs/results is where python -m eval.results leaves it (it read and
    # wrote notebooks/runs/ instead). Everything else it writes goes to DEMIX_NOTEBOOK_WORK.
    stray = ROOT / "notebooks" / "runs"
    was_there = stray.exists()
    client = nbclient.NotebookClient(
        book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    assert was_there or not stray.exists(), f"{path.name} wrote {stray}"
    errors = [
        out
        for cell in book.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "error"
    ]
    assert not errors
    assert os.listdir(tmp_path)
