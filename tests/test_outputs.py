"""One rule for every command that writes: every path written is compared, by file identity, with
every path read, and the message names what the input is (issue 18, 1); one run, one log (18, 2)."""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from charrnn.cli import cli
from charrnn.errors import UsageError
from charrnn.outputs import check_output, lock_path, log_path, run_files, run_lock

TINY = ["--hidden", "16", "-b", "4", "-t", "16", "--val-every", "4", "-q", "--precision", "fp32"]


def run(*args: Any, input: str | None = None) -> Any:
    return CliRunner().invoke(cli, [str(a) for a in args], input=input)


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def refused(r: Any, *needles: str) -> str:
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("outputs")
    (d / "c.txt").write_text("the time traveller smiled and we sat about the fire\n" * 20, encoding="utf-8")
    r = run("train", d / "c.txt", "-o", d / "m.pt", *TINY, "--max-steps", "4")
    assert r.exit_code == 0, r.stderr
    return d


def test_eval_show_html_refuses_to_replace_the_model(home: Path) -> None:
    before = digest(home / "m.pt")
    line = refused(run("eval", "show", "-m", home / "m.pt", home / "c.txt", "--html", home / "m.pt"), "the model (-m)")
    assert "HTML page" in line
    assert digest(home / "m.pt") == before


def test_eval_show_html_refuses_the_text(home: Path) -> None:
    refused(run("eval", "show", "-m", home / "m.pt", home / "c.txt", "--html", home / "c.txt"), "the text to show")


def test_fine_tuning_refuses_a_base_that_is_the_best_checkpoint(home: Path, tmp_path: Path) -> None:
    base = tmp_path / "tune.best.pt"
    base.write_bytes((home / "m.pt").read_bytes())
    before = digest(base)
    line = refused(run("train", home / "c.txt", "-o", tmp_path / "tune.pt", "--init-from", base, *TINY,
                       "--max-steps", "2"), "the base model (--init-from)")
    assert line.startswith("Error: best checkpoint")
    assert digest(base) == before and not (tmp_path / "tune.pt").exists()


def test_fine_tuning_refuses_a_base_that_is_the_output(home: Path, tmp_path: Path) -> None:
    base = tmp_path / "b.pt"
    base.write_bytes((home / "m.pt").read_bytes())
    refused(run("train", home / "c.txt", "-o", base, "--init-from", base, *TINY, "--max-steps", "2"),
            "output", "the base model (--init-from)")


def test_plot_onto_its_own_log_names_a_run_not_a_corpus(home: Path) -> None:
    log = log_path(home / "m.pt")
    assert log.exists()
    before = digest(log)
    line = refused(run("plot", log, "-o", log), "a run to plot")
    assert "corpus" not in line
    assert digest(log) == before


def test_train_refuses_a_corpus_that_is_its_log_or_lock(home: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "x.pt.log.jsonl"
    corpus.write_text((home / "c.txt").read_text())
    refused(run("train", corpus, "-o", tmp_path / "x.pt", *TINY, "--max-steps", "2"), "training log", "input corpus")
    lock = tmp_path / ".y.pt.lock"
    lock.write_text((home / "c.txt").read_text())
    refused(run("train", lock, "-o", tmp_path / "y.pt", *TINY, "--max-steps", "2"), "lock file", "input corpus")
    assert lock.read_text() == (home / "c.txt").read_text()


def test_resume_may_replace_its_own_checkpoint(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.pt"
    assert run("train", home / "c.txt", "-o", out, *TINY, "--max-steps", "2").exit_code == 0
    r = run("train", home / "c.txt", "-o", out, "--resume", out, *TINY, "--max-steps", "4")
    assert r.exit_code == 0, r.stderr


def test_check_output_names_the_role() -> None:
    with pytest.raises(UsageError, match="is the model \\(-m\\)"):
        check_output("a.pt", [("a.pt", "the model (-m)")], what="image")
    with pytest.raises(UsageError, match="not a stream"):
        check_output("-", what="image")


# 2. One run, one log -------------------------------------------------------------------------------------------

def test_distinct_checkpoints_never_share_a_log() -> None:
    names = ["exp.v1", "exp.v2", "exp", "exp.pt", "exp.pt.pt", "a.b.ckpt", "model.best.pt"]
    logs = {log_path(n) for n in names}
    assert len(logs) == len(names)
    assert log_path("runs/model.pt") == Path("runs/model.pt.log.jsonl")


def test_two_versions_keep_two_histories(home: Path, tmp_path: Path) -> None:
    for version in ("exp.v1", "exp.v2"):
        assert run("train", home / "c.txt", "-o", tmp_path / version, *TINY, "--max-steps", "4").exit_code == 0
    assert (tmp_path / "exp.v1.log.jsonl").read_text().count('"kind"') > 0
    assert (tmp_path / "exp.v2.log.jsonl").read_text().count('"kind"') > 0
    assert not (tmp_path / "exp.log.jsonl").exists()


def test_the_lock_covers_every_file_the_run_writes(home: Path, tmp_path: Path) -> None:
    # A run on b.pt would write b.best.pt; another run holding b.best.pt (as its checkpoint) must block it.
    with run_lock(tmp_path / "b.best.pt"):
        r = run("train", home / "c.txt", "-o", tmp_path / "b.pt", *TINY, "--max-steps", "2")
    refused(r, "another charrnn run is writing", "b.best.pt")
    assert not (tmp_path / "b.pt").exists()
    for path, _ in run_files(tmp_path / "b.pt"):
        if path.name.endswith(".lock"):
            continue
        assert not lock_path(path).exists()


def test_run_lock_holds_every_file_and_releases_them(tmp_path: Path) -> None:
    files = [tmp_path / "a.pt", tmp_path / "a.best.pt", log_path(tmp_path / "a.pt")]
    with run_lock(*files):
        for f in files:
            fd = os.open(lock_path(f), os.O_RDWR)
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.close(fd)
    assert not any(lock_path(f).exists() for f in files)
