"""Training history: records, checkpoint columns (validated on load), the live JSON Lines log."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from charrnn.errors import CheckpointError, DataError
from charrnn.model.history import MAX_LOSS, History, LiveLog, read_log
from charrnn.outputs import log_path


def sample() -> History:
    h = History()
    for step in (10, 20, 30):
        h.add("train", step=step, epoch=0, loss=3.0 - step / 20, lr=1e-3, chars_per_second=5000.0,
              elapsed=step / 10, chars=step * 64, grad_norm=0.5, grad_norm_max=1.5, clipped=0.25,
              threads=2)
    h.add("val", step=20, loss=2.5, elapsed=2.1, chars=1280)
    h.add("val", step=30, loss=2.6, elapsed=3.1, chars=1920)
    return h


def test_add_checks_fields() -> None:
    with pytest.raises(ValueError, match="fields"):
        History().add("val", step=1, loss=2.0)


def test_checkpoint_round_trip_is_exact() -> None:
    h = sample()
    data = h.to_checkpoint()
    assert data["train"]["step"].dtype == torch.float64
    back = History.from_checkpoint(data)
    assert back == h
    assert isinstance(back.train[0]["step"], int) and isinstance(back.train[0]["loss"], float)


def test_missing_history_is_empty() -> None:
    assert not History.from_checkpoint(None)


@pytest.mark.parametrize("damage", [
    lambda d: d.pop("val"),
    lambda d: d["train"].pop("lr"),
    lambda d: d["train"].__setitem__("lr", [1.0, 2.0, 3.0]),
    lambda d: d["train"].__setitem__("lr", torch.zeros(2, dtype=torch.float64)),
    lambda d: d["train"].__setitem__("step", torch.tensor([1.0, math.inf, 3.0], dtype=torch.float64)),
    lambda d: d["val"].__setitem__("loss", torch.zeros(2, dtype=torch.float32)),
    lambda d: d["val"].__setitem__("extra", torch.zeros(2, dtype=torch.float64)),
])
def test_damaged_history_is_a_checkpoint_error(damage) -> None:
    data = sample().to_checkpoint()
    damage(data)
    with pytest.raises(CheckpointError, match="damaged"):
        History.from_checkpoint(data)


def test_not_a_table() -> None:
    with pytest.raises(CheckpointError):
        History.from_checkpoint([1, 2])


def test_summary() -> None:
    s = sample().summary()
    assert s["best_val_loss"] == 2.5 and s["best_val_step"] == 20
    assert s["last_val_loss"] == 2.6 and s["last_val_step"] == 30
    assert s["steps"] == 30 and s["seconds"] == 3.1 and s["chars"] == 1920
    assert History().summary()["best_val_loss"] is None


def test_until_drops_later_records() -> None:
    h = sample().until(20)
    assert [r["step"] for r in h.train] == [10, 20] and [r["step"] for r in h.val] == [20]


def test_log_path() -> None:
    assert log_path("runs/model.pt") == Path("runs/model.pt.log.jsonl")


def test_live_log_rewrites_then_appends(tmp_path: Path) -> None:
    p = tmp_path / "m.log.jsonl"
    p.write_text("stale line from a crashed run\n")
    h = sample()
    log = LiveLog(p, h)
    record = h.add("train", step=40, epoch=1, loss=math.nan, lr=1e-3, chars_per_second=1.0, elapsed=4.0, chars=2560)
    log.write("train", record)
    log.close()
    lines = [json.loads(line) for line in p.read_text().splitlines()]
    assert [(x["kind"], x["step"]) for x in lines] == [("train", 10), ("train", 20), ("val", 20), ("train", 30),
                                                       ("val", 30), ("train", 40)]
    assert lines[-1]["loss"] is None  # NaN is not JSON
    back = read_log(p)
    assert back.val == h.val and back.train[:3] == h.train[:3] and math.isnan(back.train[3]["loss"])


def test_read_log_errors(tmp_path: Path) -> None:
    p = tmp_path / "x.log.jsonl"
    p.write_text('{"kind": "val", "step": 1}\n')
    with pytest.raises(DataError, match="line 1: a val record without loss, elapsed, chars"):
        read_log(p)
    p.write_text('[1, 2]\n')
    with pytest.raises(DataError, match="neither a charrnn checkpoint nor a training log"):
        read_log(p)
    p.write_bytes(b"\xff\xfe")
    with pytest.raises(DataError, match="not a training log"):
        read_log(p)
    with pytest.raises(DataError, match="cannot read"):
        read_log(tmp_path / "absent.jsonl")


def test_read_log_skips_other_kinds_and_a_torn_last_line(tmp_path: Path) -> None:
    p = tmp_path / "x.log.jsonl"
    p.write_text('{"kind": "note", "text": "hi"}\n{"kind": "val", "step": 5, "loss": 2.0, "elapsed": 1, '
                 '"chars": 10}\n{"kind": "val", "st')
    assert read_log(p).val == [{"step": 5, "loss": 2.0, "elapsed": 1.0, "chars": 10, "raw_loss": math.nan,
                                "average_loss": math.nan}]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**9), st.one_of(st.just(math.nan), st.floats(0, MAX_LOSS))),
                max_size=20))
def test_round_trips_any_values(rows) -> None:
    h = History()
    for step, loss in rows:
        h.add("val", step=step, loss=loss, elapsed=1.5, chars=step)
    back = History.from_checkpoint(h.to_checkpoint())
    assert [r["step"] for r in back.val] == [s for s, _ in rows]
    assert all((math.isnan(a["loss"]) and math.isnan(loss)) or a["loss"] == loss
               for a, (_, loss) in zip(back.val, rows, strict=True))


# A log is untrusted input (issue 18, 6): every field validated, extremes drawn or refused in one line.

TRAIN_KEYS = ("step", "epoch", "loss", "lr", "chars_per_second", "elapsed", "chars")


def _train_line(**values: object) -> str:
    record = {"kind": "train", "step": 1, "epoch": 0, "loss": 3.0, "lr": 0.01, "chars_per_second": 10.0,
              "elapsed": 1.0, "chars": 10, **values}
    return json.dumps(record, allow_nan=True) + "\n"


@pytest.mark.parametrize(("field", "raw", "needle"), [
    ("step", "1e999", "step inf is out of range"),
    ("loss", "1e308", "loss 1e+308 is out of range"),
    ("step", "1.5", "not a whole number"),
    ("step", "-3", "out of range"),
    ("lr", "true", "lr is not a number"),
    ("elapsed", '"soon"', "elapsed is not a number"),
    ("chars", "Infinity", "out of range"),
])
def test_read_log_refuses_values_no_run_records(tmp_path: Path, field: str, raw: str, needle: str) -> None:
    p = tmp_path / "x.log.jsonl"
    line = _train_line().replace(f'"{field}": ', f'"{field}": {raw}, "_was": ', 1)
    p.write_text(_train_line() + line)
    with pytest.raises(DataError, match=f"line 2: .*{re.escape(needle)}"):
        read_log(p)


def test_read_log_names_a_missing_field(tmp_path: Path) -> None:
    p = tmp_path / "x.log.jsonl"
    p.write_text('{"kind": "val", "step": 1, "loss": 2.0, "chars": 3}\n')
    with pytest.raises(DataError, match="line 1: a val record without elapsed"):
        read_log(p)


def test_null_loss_is_a_diverged_step(tmp_path: Path) -> None:
    p = tmp_path / "x.log.jsonl"
    p.write_text(_train_line(loss=None))
    assert math.isnan(read_log(p).train[0]["loss"])


finite = st.floats(min_value=0, max_value=2.0**53, allow_nan=False)
anything = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3), finite)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(TRAIN_KEYS), anything, min_size=1))
def test_any_log_values_read_or_refuse_in_one_line(tmp_path_factory: pytest.TempPathFactory,
                                                    values: dict) -> None:
    p = tmp_path_factory.mktemp("log") / "x.log.jsonl"
    p.write_text(_train_line() + _train_line(**values))
    try:
        history = read_log(p)
    except DataError as e:
        assert "\n" not in str(e)
        return
    plotext = pytest.importorskip("plotext")
    assert plotext
    from charrnn.display.plot import Run, terminal_plot

    assert terminal_plot([Run("x", history)], width=60, height=12, color=False)
