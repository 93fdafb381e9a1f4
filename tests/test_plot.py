"""Loss curves: runs from checkpoints and logs, series per x axis, terminal and image output."""

from __future__ import annotations

from pathlib import Path

import pytest

from charrnn.display.plot import Run, image_plot, load_run, run_names, series, terminal_plot
from charrnn.errors import DataError, UsageError
from charrnn.model.history import History, LiveLog

pytest.importorskip("plotext")
pytest.importorskip("matplotlib")


def history(scale: float = 1.0) -> History:
    h = History()
    for step in range(10, 101, 10):
        h.add("train", step=step, epoch=0, loss=scale * (3.0 - step / 50), lr=1e-3, chars_per_second=1000.0,
              elapsed=step / 5, chars=step * 100)
        if step % 20 == 0:
            h.add("val", step=step, loss=scale * (3.1 - step / 50), elapsed=step / 5 + 0.1, chars=step * 100)
    return h


def test_series_per_axis() -> None:
    run = Run("a", history())
    train, val = series(run, "steps")
    assert train.label == "a train" and train.x[:2] == [10.0, 20.0] and len(val.x) == 5
    assert series(run, "seconds")[0].x[0] == 2.0 and series(run, "chars")[1].x[0] == 2000.0
    with pytest.raises(UsageError):
        series(run, "minutes")


def test_run_names_are_short_and_unique() -> None:
    assert run_names(["x/base.pt", "y/tuned.log.jsonl"]) == ["base", "tuned"]
    assert run_names(["x/m.pt", "x/m.pt.log.jsonl"]) == ["m.pt", "m.pt.log.jsonl"]
    assert run_names(["x/old.log.jsonl", "x/new.pt.log.jsonl"]) == ["old", "new"]
    assert run_names(["x/m.pt", "y/m.pt"]) == ["x/m", "y/m"]
    assert run_names(["m.pt", "m.pt"]) == ["m (1)", "m (2)"]


def test_terminal_plot_overlays_runs_with_a_legend() -> None:
    runs = [Run("base", history()), Run("tuned", history(0.8))]
    text = terminal_plot(runs, width=80, height=20, color=True)
    assert "base train" in text and "tuned val" in text and "\x1b[" in text
    plain = terminal_plot(runs, width=80, height=20, color=False)
    assert "\x1b[" not in plain and "base train" in plain and "step" in plain
    assert len(plain.splitlines()) == 20
    assert "seconds" in terminal_plot(runs, x_axis="seconds", width=60, height=15, color=False)


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_image_plot(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"curves{suffix}"
    image_plot([Run("a", history()), Run("b", history(0.9))], out, x_axis="chars")
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in data[:2000]


def test_image_plot_needs_a_known_suffix(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=".png or .svg"):
        image_plot([Run("a", history())], tmp_path / "curves.gif")


def test_load_run_from_log_and_errors(tmp_path: Path) -> None:
    p = tmp_path / "m.log.jsonl"
    log = LiveLog(p, history())
    log.open()
    log.close()
    assert load_run(p) == history()
    empty = tmp_path / "e.log.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="no training history"):
        load_run(empty)
    with pytest.raises(UsageError, match="does not exist"):
        load_run(tmp_path / "absent.pt")
    with pytest.raises(UsageError, match="directory"):
        load_run(tmp_path)
