"""Options that were silently ignored or could not work (issue 18, 5): a NUL record delimiter, CRLF
delimiters, -q hiding warnings, plot sizes cut on a pipe."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from charrnn.cli import cli
from charrnn.data.records import unescape

TINY = ["--hidden", "16", "-b", "4", "-t", "16", "--val-every", "4", "--precision", "fp32"]
NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"] * 6


def run(*args: Any, input: str | None = None) -> Any:
    return CliRunner().invoke(cli, [str(a) for a in args], input=input)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("options")
    (d / "c.txt").write_text("the time traveller smiled and we sat about the fire\n" * 20, encoding="utf-8")
    r = run("train", d / "c.txt", "-o", d / "m.pt", *TINY, "-q", "--max-steps", "8")
    assert r.exit_code == 0, r.stderr
    return d


def test_nul_delimited_records_train(tmp_path: Path) -> None:
    corpus = tmp_path / "names0"
    corpus.write_bytes("\0".join(NAMES).encode() + b"\0")  # as `find -print0` writes
    r = run("train", corpus, "-o", tmp_path / "n.pt", "--partition", "records", "--delimiter", "\\0", *TINY, "-q",
            "--max-steps", "4", "--json")
    assert r.exit_code == 0, r.stderr
    # Without the NUL delimiter the same file is still refused as binary: the cache must not hide that.
    r = run("train", corpus, "-o", tmp_path / "p.pt", *TINY, "-q", "--max-steps", "4")
    assert r.exit_code == 1 and "binary" in r.stderr, r.stderr


def test_crlf_delimiter_means_the_newline_text_is_read_with() -> None:
    assert unescape("\\r\\n") == "\n"
    assert unescape("\\r\\n\\r\\n") == "\n\n"
    assert unescape("\\r") == "\r"  # a lone CR stays: it is kept in the text too


def test_crlf_delimiter_splits_a_crlf_file(home: Path, tmp_path: Path) -> None:
    crlf = tmp_path / "win.txt"
    crlf.write_bytes(b"the time\r\nthe fire\r\nwe sat\r\n")
    r = run("eval", "score", "-m", home / "m.pt", crlf, "--delimiter", "\\r\\n")
    assert r.exit_code == 0, r.stderr
    assert [line.split("\t")[-1] for line in r.stdout.splitlines()] == ["the time", "the fire", "we sat"]
    r = run("train", crlf, "-o", tmp_path / "w.pt", "--partition", "records", "--delimiter", "\\r\\n", *TINY, "-q",
            "--max-steps", "2")
    assert r.exit_code == 0, r.stderr


def test_quiet_keeps_warnings_and_notices(home: Path, tmp_path: Path) -> None:
    new = tmp_path / "new.txt"
    new.write_text("THE TIME MACHINE, BY H. G. WELLS\n" * 10)
    r = run("train", new, "-o", tmp_path / "t.pt", "--init-from", home / "m.pt", "--keep-vocab", "-q",
            "--max-steps", "2", "-b", "4", "-t", "16", "--precision", "fp32")
    assert r.exit_code == 0, r.stderr
    assert "warning:" in r.stderr and "--keep-vocab" in r.stderr
    assert "step " not in r.stderr  # progress is what -q silences
    r = run("train", new, "-o", tmp_path / "t.pt", "--resume", tmp_path / "t.pt", "-q", "--max-steps", "2")
    assert r.exit_code == 0, r.stderr
    assert "nothing to do" in r.stderr


def test_plot_size_holds_on_a_pipe(home: Path) -> None:
    pytest.importorskip("plotext")
    p = subprocess.run(f"'{sys.executable}' -m charrnn plot '{home / 'm.pt'}' --width 150 --height 40 | cat",
                       shell=True, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 40
    assert max(len(line) for line in lines) == 150
