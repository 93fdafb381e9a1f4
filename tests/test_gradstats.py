"""Clipping, seen during training (issue 19, 5): the gradient norm before clipping, per report, in
the history, the live log, info and plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from charrnn.cli import cli
from charrnn.model.history import History, read_log
from charrnn.outputs import log_path
from charrnn.training.gradstats import GradStats, total_norm

TINY = ["--hidden", "16", "-b", "4", "-t", "16", "--val-every", "10", "-q", "--precision", "fp32"]


def run(*args: Any) -> Any:
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_stats_of_a_report() -> None:
    g = GradStats()
    for n in (1.0, 3.0, 2.0, 6.0):
        g.add(torch.tensor(n), clip=2.5)
    assert g.take() == {"grad_norm": 3.0, "grad_norm_max": 6.0, "clipped": 0.5}
    assert all(math.isnan(v) for v in g.take().values())  # nothing since the last report
    g.add(torch.tensor(float("inf")), clip=0.0)
    g.add(torch.tensor(1.0), clip=0.0)
    out = g.take()
    assert math.isnan(out["grad_norm"]) and math.isnan(out["grad_norm_max"]) and out["clipped"] == 0.0


def test_total_norm_is_what_clipping_measures() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    net(torch.randn(4, 5)).pow(2).sum().backward()
    expected = torch.nn.utils.clip_grad_norm_(net.parameters(), float("inf"))
    assert torch.allclose(total_norm(net.parameters()), expected)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("grads")
    (d / "c.txt").write_text("the time traveller smiled and we sat about the fire\n" * 20, encoding="utf-8")
    for name, clip in (("tight", "1e-6"), ("free", "0")):
        r = run("train", d / "c.txt", "-o", d / f"{name}.pt", *TINY, "--max-steps", "15", "--clip", clip)
        assert r.exit_code == 0, r.stderr
    return d


def test_the_log_and_the_history_record_clipping(home: Path) -> None:
    lines = [json.loads(x) for x in log_path(home / "tight.pt").read_text().splitlines()]
    train = [x for x in lines if x["kind"] == "train"]
    assert [x["step"] for x in train] == [10, 15]
    for x in train:
        assert x["clipped"] == 1.0 and 0 < x["grad_norm"] <= x["grad_norm_max"]
    free = [x for x in map(json.loads, log_path(home / "free.pt").read_text().splitlines()) if x["kind"] == "train"]
    assert all(x["clipped"] == 0.0 and x["grad_norm"] > 0 for x in free)
    info = json.loads(run("info", "-m", home / "tight.pt", "--json").stdout)["history"]
    assert info["clipped"] == 1.0 and info["max_grad_norm"] >= info["last_grad_norm"] > 0
    text = run("info", "-m", home / "tight.pt").stdout
    assert "100.0% of steps clipped (--clip 1e-06)" in text
    assert "no clipping" in run("info", "-m", home / "free.pt").stdout


def test_older_checkpoints_and_logs_stay_readable(home: Path, tmp_path: Path) -> None:
    ckpt = torch.load(home / "tight.pt", weights_only=True)
    for key in ("grad_norm", "grad_norm_max", "clipped"):
        del ckpt["history"]["train"][key]
    torch.save(ckpt, tmp_path / "old.pt")
    r = run("info", "-m", tmp_path / "old.pt", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["history"]["clipped"] is None
    history = History.from_checkpoint(ckpt["history"])
    assert len(history.train) == 2 and math.isnan(history.train[0]["grad_norm"])
    old_log = tmp_path / "old.log.jsonl"
    old_log.write_text('{"kind": "train", "step": 1, "epoch": 0, "loss": 3.0, "lr": 0.01, "chars_per_second": 9.0, '
                       '"elapsed": 1.0, "chars": 64}\n')
    assert math.isnan(read_log(old_log).train[0]["clipped"])
    r = run("plot", tmp_path / "old.pt", "--y", "grad-norm")
    assert r.exit_code == 1 and r.stderr.startswith("Error: no gradient norms to draw"), r.stderr
    assert run("plot", tmp_path / "old.pt").exit_code == 0


def test_plot_draws_gradient_norms(home: Path, tmp_path: Path) -> None:
    pytest.importorskip("plotext")
    r = run("plot", home / "tight.pt", home / "free.pt", "--y", "grad-norm", "--width", "60", "--height", "14")
    assert r.exit_code == 0, r.stderr
    assert "gradient norm before clipping" in r.stdout and "tight grad norm" in r.stdout
    pytest.importorskip("matplotlib")
    r = run("plot", home / "tight.pt", "--y", "grad-norm", "-o", tmp_path / "g.png")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
