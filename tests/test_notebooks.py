"""The example notebooks (examples/*.ipynb) run, top to bottom, in a fresh folder: no display, no network."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "examples").glob("*.ipynb"))


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat", reason="the dev extra runs the notebooks")
    nbclient = pytest.importorskip("nbclient", reason="the dev extra runs the notebooks")
    pytest.importorskip("ipykernel", reason="the dev extra runs the notebooks")
    pytest.importorskip("matplotlib", reason="the notebooks plot")
    # The kernel is a process of its own: it imports this tree's charrnn, draws without a display, and
    # reads no corpus from the network (CHARRNN_HOME is the test's, from conftest).
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("CHARRNN_CORPUS_URL_BASE", "http://127.0.0.1:9/no-network-in-tests")
    nb = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), "commit it without outputs"
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # a cell that raises fails the test (CellExecutionError, with its traceback)
    assert (tmp_path / "tiny.pt").exists()
    texts = "".join(out.get("text", "") for cell in nb.cells for out in cell.get("outputs", []))
    assert "bits/char" in texts
