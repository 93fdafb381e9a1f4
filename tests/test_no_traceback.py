"""No traceback, no silent nonsense (issue 27, section 3): extreme temperatures, encodings without a
byte-order mark, `inspect bptt` on one-hot models, closed pipes, dynamic evaluation at its extremes and
`inspect cells` on a long text, each as a user meets it: real `charrnn` processes on tiny models."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from charrnn.cli import cli

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
TINY = ["--hidden", "16", "-b", "4", "-t", "16", "--val-every", "20", "-q", "--precision", "fp32"]
TEXT = "the time traveller smiled and we sat about the fire\nThe Time Traveller. We sat (about).\n" * 12


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("no-traceback")
    (d / "c.txt").write_text(TEXT, encoding="utf-8")
    (d / "names.txt").write_text("\n".join(["alice", "bob", "carol", "dave"] * 15) + "\n", encoding="utf-8")
    runner = CliRunner()
    for name, extra in [("m.pt", []), ("oh.pt", ["--input", "onehot", "--cell", "gru"])]:
        r = runner.invoke(cli, ["train", str(d / "c.txt"), "-o", str(d / name), *TINY, "--max-steps", "20", *extra])
        assert r.exit_code == 0, r.stderr
    r = runner.invoke(cli, ["train", str(d / "names.txt"), "-o", str(d / "r.pt"), "--partition", "records", *TINY,
                            "--max-steps", "10"])
    assert r.exit_code == 0, r.stderr
    return d


def charrnn(home: Path, *args: str, input: bytes | None = None, shell_tail: str = "") -> subprocess.CompletedProcess:
    """One real `charrnn` process in `home`; with `shell_tail` (e.g. "| head -1") through a shell pipeline
    whose exit status is charrnn's (pipefail)."""
    argv = [sys.executable, "-m", "charrnn", *map(str, args)]
    if shell_tail:
        line = " ".join(f"'{a}'" for a in argv) + " " + shell_tail
        return subprocess.run(["bash", "-o", "pipefail", "-c", line], input=input, capture_output=True, cwd=home,
                              env=ENV, timeout=120)
    return subprocess.run(argv, input=input, capture_output=True, cwd=home, env=ENV, timeout=120)


def one_line_error(r: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    err = r.stderr.decode()
    assert r.returncode == code, (r.returncode, r.stdout[-300:], err[-2000:])
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("Error: "), err
    last = err.strip().splitlines()[-1]
    for needle in needles:
        assert needle in last, last
    return last


# Extreme temperatures --------------------------------------------------------------------------------------------

def test_extreme_temperatures_sample_inside_the_vocabulary_everywhere(home: Path) -> None:
    """Regression: 1e-300 became 0 in float32 and 1e39 infinity, the logits NaN, and the draw an id past
    the vocabulary (IndexError). A tiny temperature is the greedy limit; a huge one nearly uniform."""
    greedy = charrnn(home, "generate", "-m", "m.pt", "--prefix", "The ", "-n", "40", "--greedy")
    assert greedy.returncode == 0, greedy.stderr.decode()
    r = charrnn(home, "generate", "-m", "m.pt", "--prefix", "The ", "-n", "40", "--temperature", "1e-300",
                "--seed", "3")
    assert r.returncode == 0 and r.stdout == greedy.stdout, r.stderr.decode()[-2000:]
    requests = [{"op": "generate", "prefix": "The ", "n": 40, "temperature": t, "seed": 1}
                for t in [5e-324, 1e-300, 1e39, 1.7e308]]
    requests.append({"op": "generate", "model": "r", "num_samples": 3, "temperature": 1e-300})  # records
    r = charrnn(home, "serve", "--stdio", "-m", "m.pt", "-m", "r.pt",
                input="".join(json.dumps(q) + "\n" for q in requests).encode())
    answers = [json.loads(line) for line in r.stdout.decode().splitlines()]
    assert r.returncode == 0 and len(answers) == 5 and all("error" not in a for a in answers), answers
    assert answers[0]["samples"] == answers[1]["samples"] == [greedy.stdout.decode()[len("The "):-1]]
    uniformish = answers[2]["samples"][0] + answers[3]["samples"][0]
    assert len(set(uniformish)) > 15 and set(uniformish) <= set(TEXT)
    assert len(answers[4]["samples"]) == 3


def test_the_engine_samples_extreme_temperatures_per_row() -> None:
    """The HTTP server's per-row sampler: inside the vocabulary, the greedy limit for tiny temperatures,
    and for each row what generate.next_ids draws with the same uniform number."""
    from charrnn.inference.generate import Sampling, next_ids
    from charrnn.serving.engine import sample_rows

    torch.manual_seed(0)
    logits = torch.randn(5, 12) * 4
    logits[:, 3] = -math.inf  # <unk>, banned
    temperatures = [1e-300, 5e-324, 1e39, 1.7e308, 1.0]
    seeds = range(5)
    uniform = torch.cat([torch.rand(1, 1, generator=torch.Generator().manual_seed(s)) for s in seeds])
    got = sample_rows(logits, torch.tensor(temperatures, dtype=torch.float64), torch.zeros(5, dtype=torch.int64),
                      torch.full((5,), math.inf), torch.zeros(5, dtype=torch.bool), uniform).tolist()
    assert got[:2] == logits[:2].argmax(dim=-1).tolist()
    expected = [int(next_ids(logits[row : row + 1], Sampling(t), torch.Generator().manual_seed(s))[0])
                for row, (t, s) in enumerate(zip(temperatures, seeds, strict=True))]
    assert got == expected and 3 not in got


# Encodings -------------------------------------------------------------------------------------------------------

def test_utf16_without_a_byte_order_mark_is_one_line_in_every_command(home: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: `--encoding utf-16` on text without a BOM raised UnicodeError("UTF-16 stream does not
    start with BOM") through every command that reads text."""
    (home / "le.txt").write_bytes(TEXT.encode("utf-16-le"))
    (home / "prefix.txt").write_bytes("The ".encode("utf-16-le"))
    needle = "pass --encoding utf-16-le or utf-16-be"
    commands = [("train", "le.txt", "-o", "x.pt", *TINY, "--max-steps", "1"),
                ("eval", "perplexity", "-m", "m.pt", "le.txt"), ("eval", "score", "-m", "m.pt", "le.txt"),
                ("generate", "-m", "m.pt", "--prefix-file", "prefix.txt", "-n", "3"),
                ("inspect", "cells", "-m", "m.pt", "le.txt")]
    runner = CliRunner()
    monkeypatch.chdir(home)
    for args in commands:
        r = runner.invoke(cli, [*args, "--encoding", "utf-16"])
        assert r.exit_code == 1 and isinstance(r.exception, (SystemExit, type(None))), (args, r.stderr)
        assert r.stderr.strip().splitlines()[-1].startswith("Error: ") and needle in r.stderr, (args, r.stderr)
    one_line_error(charrnn(home, "eval", "perplexity", "-m", "m.pt", "le.txt", "--encoding", "utf-16"), 1, needle)
    r = charrnn(home, "eval", "perplexity", "-m", "m.pt", "le.txt", "--encoding", "utf-16-le", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["chars"] == len(TEXT) - 1, r.stderr.decode()  # predicted


def test_an_explicit_encoding_wins_over_the_byte_order_mark_sniff(home: Path) -> None:
    """Regression: bytes ff fe at the start were refused as UTF-16 whatever --encoding said; in latin-1
    they are the text "ÿþ". UTF-8, which can never decode them, still names the encoding to pass."""
    (home / "latin.txt").write_bytes(b"\xff\xfe" + TEXT.encode("latin-1"))
    runner = CliRunner()
    r = runner.invoke(cli, ["eval", "perplexity", "-m", str(home / "m.pt"), str(home / "latin.txt"),
                            "--encoding", "latin-1", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["unknown"] == 1, r.stderr  # þ (after ÿ), read as asked
    r = runner.invoke(cli, ["eval", "perplexity", "-m", str(home / "m.pt"), str(home / "latin.txt")])
    assert r.exit_code == 1 and "is UTF-16 text" in r.stderr and "pass --encoding utf-16" in r.stderr, r.stderr
    # UTF-16 under latin-1: decoded as asked, refused for its NUL bytes, and the mark found is named
    (home / "bom.txt").write_bytes(TEXT.encode("utf-16"))
    r = runner.invoke(cli, ["eval", "perplexity", "-m", str(home / "m.pt"), str(home / "bom.txt"),
                            "--encoding", "latin-1"])
    assert r.exit_code == 1 and "NUL byte" in r.stderr and "pass --encoding utf-16" in r.stderr, r.stderr


# inspect bptt on a one-hot model ---------------------------------------------------------------------------------

def test_inspect_bptt_measures_a_one_hot_model(home: Path) -> None:
    """Regression: the float64 copy that bptt differentiates read float32 one-hot inputs (dtype ValueError)."""
    r = charrnn(home, "inspect", "bptt", "-m", "oh.pt", "c.txt", "--num-steps", "20", "--windows", "4", "--json")
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    rows = [json.loads(line) for line in r.stdout.decode().splitlines()]
    norms = [row["grad_norm"] for row in rows if "grad_norm" in row]
    assert len(norms) == 20 and all(math.isfinite(g) and g > 0 for g in norms), rows[:3]


# A reader that goes away -----------------------------------------------------------------------------------------

def test_coloured_views_stop_quietly_with_exit_0_when_the_reader_goes_away(home: Path) -> None:
    """Regression: `eval show | head -1` and `inspect cells --unit/--property | head` exited 1 (rich's own
    broken-pipe handling) where every other command exits 0. More than a pipe buffer of output each."""
    (home / "long.txt").write_text(TEXT * 70, encoding="utf-8")  # 74k characters: more than a pipe holds
    for args in [("eval", "show", "-m", "m.pt", "long.txt", "--max-chars", "80000"),
                 ("inspect", "cells", "-m", "m.pt", "long.txt", "--unit", "1:3", "--max-chars", "80000"),
                 ("inspect", "cells", "-m", "m.pt", "long.txt", "--property", "in_word", "--max-chars", "80000")]:
        r = charrnn(home, *args, shell_tail="| head -1")
        assert r.returncode == 0 and len(r.stdout.splitlines()) == 1, (args, r.returncode, r.stderr.decode()[-2000:])
        assert "Error" not in r.stderr.decode() and "Traceback" not in r.stderr.decode(), r.stderr.decode()


# Dynamic evaluation at its extremes ------------------------------------------------------------------------------

@pytest.mark.parametrize(("option", "value"), [("--dynamic-lr", "1e39"), ("--dynamic-decay", "1e-300"),
                                               ("--dynamic-eps", "1e-300"), ("--dynamic-eps", "1e39")])
def test_dynamic_values_float32_cannot_hold_are_usage_errors(home: Path, option: str, value: str) -> None:
    """Regression: 1e39 overflowed float32 in the step (RuntimeError traceback); an eps of 1e-300 became 0
    there and every loss NaN ("dynamic nats/char nan", exit 0)."""
    r = CliRunner().invoke(cli, ["eval", "perplexity", "-m", str(home / "m.pt"), str(home / "c.txt"), "--dynamic",
                                 option, value])
    assert r.exit_code == 2 and option in r.stderr and "float32" in r.stderr and r.stdout == "", r.stderr


def test_a_diverging_dynamic_evaluation_is_one_line_exit_1(home: Path) -> None:
    r = charrnn(home, "eval", "perplexity", "-m", "m.pt", "c.txt", "--dynamic", "--dynamic-lr", "3e38",
                "--dynamic-eps", "1.2e-38")
    one_line_error(r, 1, "dynamic evaluation diverged", "--dynamic-lr")
    assert b"nan" not in r.stdout


def test_a_dynamic_segment_as_long_as_the_text_is_not_reported_as_dynamic(home: Path) -> None:
    """Regression: one segment is scored before the only step: the static figure was printed as dynamic."""
    r = CliRunner().invoke(cli, ["eval", "perplexity", "-m", str(home / "m.pt"), str(home / "c.txt"), "--dynamic",
                                 "--dynamic-segment", str(len(TEXT) - 1)])
    assert r.exit_code == 2 and "would be the static one" in r.stderr and r.stdout == "", r.stderr
    r = CliRunner().invoke(cli, ["eval", "perplexity", "-m", str(home / "m.pt"), str(home / "c.txt"), "--dynamic",
                                 "--dynamic-segment", str(len(TEXT) - 2), "--json"])
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["dynamic"]["nats_per_char"] != out["nats_per_char"]  # one step taken: the last character moved
