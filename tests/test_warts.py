"""Warts of issue 18 (section 9), each with its decision: a base model with NaN weights, --partition
changed on resume, --val-max-chars smaller than a record, cache files under the umask, info --json
and the record-hash cap."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from charrnn.cli import cli
from charrnn.data.partition import split_records_train_val
from charrnn.errors import UsageError
from charrnn.model import checkpoint

TINY = ["--hidden", "16", "-b", "4", "-t", "16", "--val-every", "4", "-q", "--precision", "fp32"]


def run(*args: Any) -> Any:
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(r: Any, code: int, *needles: str) -> None:
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("Error: ") and "Traceback" not in r.stderr, r.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("warts")
    (d / "c.txt").write_text("\n".join(f"name{i % 7} the fire" for i in range(60)) + "\n", encoding="utf-8")
    r = run("train", d / "c.txt", "-o", d / "m.pt", *TINY, "--max-steps", "4")
    assert r.exit_code == 0, r.stderr
    r = run("train", d / "c.txt", "-o", d / "r.pt", "--partition", "records", *TINY, "--max-steps", "4")
    assert r.exit_code == 0, r.stderr
    return d


def test_init_from_nan_weights_is_refused_up_front(home: Path, tmp_path: Path) -> None:
    ckpt = torch.load(home / "m.pt", weights_only=True)
    name = next(iter(ckpt["weights"]))
    ckpt["weights"][name] = torch.full_like(ckpt["weights"][name], float("nan"))
    torch.save(ckpt, tmp_path / "nan.pt")
    r = run("train", home / "c.txt", "-o", tmp_path / "t.pt", "--init-from", tmp_path / "nan.pt", *TINY,
            "--max-steps", "2")
    one_line_error(r, 1, "non-finite weights", "nan.pt")
    assert "learning rate" not in r.stderr and not (tmp_path / "t.pt").exists()


def test_resume_refuses_another_partition_and_says_why(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.pt"
    out.write_bytes((home / "m.pt").read_bytes())
    r = run("train", home / "c.txt", "-o", out, "--resume", out, "--partition", "records", "--max-steps", "8", "-q")
    one_line_error(r, 2, "--partition cannot change from sequential to records on resume")
    assert "differs" not in r.stderr
    out.write_bytes((home / "r.pt").read_bytes())
    r = run("train", home / "c.txt", "-o", out, "--resume", out, "--partition", "sequential", "--max-steps", "8")
    one_line_error(r, 2, "--partition cannot change from records to sequential")
    r = run("train", home / "c.txt", "-o", out, "--resume", out, "--delimiter", "e", "--max-steps", "8")
    one_line_error(r, 2, "--delimiter cannot change on resume")
    # sequential <-> random splits the text the same way: allowed (and said on stderr)
    out.write_bytes((home / "m.pt").read_bytes())
    r = run("train", home / "c.txt", "-o", out, "--resume", out, "--partition", "random", "--max-steps", "6",
            "--precision", "fp32")
    assert r.exit_code == 0, r.stderr


def test_val_max_chars_is_a_bound_for_records_too() -> None:
    import numpy as np

    ids = np.array([1, 1, 1, 0, 2, 2, 2, 2, 2, 0], dtype=np.int64)  # records "111" and "22222", 0 ends each
    with pytest.raises(UsageError, match="--val-max-chars 2 is shorter than the last record \\(6 characters"):
        split_records_train_val(ids, np.array([0]), 0.5, max_chars=2)
    train, val = split_records_train_val(ids, np.array([0]), 0.9, max_chars=6)
    assert val.tolist() == [2, 2, 2, 2, 2, 0] and len(val) <= 6
    train, val = split_records_train_val(ids, np.array([0]), 0.2)  # a fraction is a share, not a bound
    assert val.tolist() == [2, 2, 2, 2, 2, 0]


def test_val_max_chars_records_cli(home: Path, tmp_path: Path) -> None:
    r = run("train", home / "c.txt", "-o", tmp_path / "v.pt", "--partition", "records", "--val-max-chars", "2",
            *TINY, "--max-steps", "2")
    one_line_error(r, 2, "--val-max-chars 2 is shorter than the last record")


def test_cache_and_checkpoint_files_follow_the_umask(home: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHARRNN_HOME", str(tmp_path / "home"))
    old = os.umask(0o002)
    try:
        r = run("train", home / "c.txt", "-o", tmp_path / "u.pt", *TINY, "--max-steps", "2")
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.stderr
    files = [p for p in (tmp_path / "home").rglob("*") if p.is_file()]
    assert files
    for p in [*files, tmp_path / "u.pt", tmp_path / "u.pt.log.jsonl"]:
        assert p.stat().st_mode & 0o777 == 0o664, (p, oct(p.stat().st_mode))


def test_info_json_says_whether_record_hashes_are_complete(home: Path, tmp_path: Path) -> None:
    r = run("info", "-m", home / "r.pt", "--json")
    assert json.loads(r.stdout)["record_hashes_complete"] is True
    assert json.loads(run("info", "-m", home / "m.pt", "--json").stdout)["record_hashes_complete"] is None
    ckpt = torch.load(home / "r.pt", weights_only=True)
    ckpt["record_hashes_complete"] = False
    torch.save(ckpt, tmp_path / "capped.pt")
    assert checkpoint.load(tmp_path / "capped.pt")
    info = json.loads(run("info", "-m", tmp_path / "capped.pt", "--json").stdout)
    assert info["record_hashes_complete"] is False
    assert "the cap was reached" in run("info", "-m", tmp_path / "capped.pt").stdout
