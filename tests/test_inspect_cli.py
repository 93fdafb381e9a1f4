"""`charrnn inspect cells` and `charrnn inspect gates` end to end: stdout, stderr, exit codes, JSON, pictures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from charrnn.analysis.textprops import PROPERTIES
from charrnn.cli import cli

TINY = ["--hidden", "16", "-b", "4", "-t", "16", "--max-steps", "4", "--val-every", "4", "-q"]
CODE = 'def f(x):\n    """Say "hi" <b>&amp;</b>."""\n    return g([x], {1: \'a\'})  # done\n'


def corpus_text() -> str:
    return CODE * 12


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("inspect")
    (d / "code.txt").write_text(corpus_text(), encoding="utf-8")
    (d / "held_out.txt").write_text(CODE * 3, encoding="utf-8")
    for cell, layers in (("lstm", "2"), ("gru", "1"), ("rnn", "1")):
        r = CliRunner().invoke(cli, ["train", str(d / "code.txt"), "-o", str(d / f"{cell}.pt"), "--cell", cell,
                                     "--layers", layers, *TINY])
        assert r.exit_code == 0, r.stderr
    return d


def run(*args: object, input: str | bytes | None = None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input)


def one_line_error(r, code: int, *needles: str) -> None:
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("Error: ") and "Traceback" not in r.stderr, r.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_cells_table(home: Path) -> None:
    r = run("inspect", "cells", "-m", home / "lstm.pt", home / "held_out.txt")
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"Pearson r of each unit with each property over {len(CODE) * 3} characters")
    for p in PROPERTIES:
        assert any(line.startswith(p + " ") for line in lines), p
    assert "control" in lines[2] and "best property of each unit (the 10 best of 64 units)" in r.stdout
    assert r.stderr == ""


def test_cells_json_ranks_every_unit_best_first(home: Path) -> None:
    r = run("inspect", "cells", "-m", home / "lstm.pt", home / "held_out.txt", "--json")
    assert r.exit_code == 0, r.stderr
    records = json_lines(r.stdout)
    assert len(records) == 2 * 2 * 16  # 2 layers, c and h, 16 units
    assert {(o["layer"], o["unit"], o["state"]) for o in records} == \
        {(k, i, s) for k in (1, 2) for i in range(16) for s in ("c", "h")}
    for o in records:
        assert set(o) == {"layer", "unit", "state", "property", "r", "control"}
        assert o["property"] in PROPERTIES and -1 <= o["r"] <= 1 and 0 <= o["control"] <= 1
    rs = [abs(o["r"]) for o in records]
    assert rs == sorted(rs, reverse=True)


def test_cells_property_ranks_by_that_property(home: Path) -> None:
    r = run("inspect", "cells", "-m", home / "gru.pt", home / "held_out.txt", "--property", "bracket", "--json")
    assert r.exit_code == 0, r.stderr
    records = json_lines(r.stdout)
    assert len(records) == 16 and {o["property"] for o in records} == {"bracket"}
    assert {o["state"] for o in records} == {"h"}
    rs = [abs(o["r"]) for o in records]
    assert rs == sorted(rs, reverse=True)
    r = run("inspect", "cells", "-m", home / "gru.pt", home / "held_out.txt", "--property", "bracket", "--top", "3",
            "--color", "never")
    assert r.exit_code == 0, r.stderr
    assert f"1:{records[0]['unit']} " in r.stdout.splitlines()[3]  # rank 1 is the JSON's first unit
    assert "control best |r| for bracket" in r.stdout and "activation (tanh(c) or h)" in r.stdout
    assert "def f(x):↵" in r.stdout  # the heat text of the best unit follows the table


def test_cells_units_as_stacked_rows(home: Path) -> None:
    r = run("inspect", "cells", "-m", home / "lstm.pt", home / "held_out.txt", "--unit", "1:3", "--unit", "2:5:h",
            "--color", "never")
    assert r.exit_code == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.endswith("def f(x):↵")]
    assert len(rows) == 2 * 3 and rows[0].startswith("1:3:c") and rows[1].startswith("2:5:h")
    r = run("inspect", "cells", "-m", home / "lstm.pt", home / "held_out.txt", "--unit", "1:3", "--color", "always")
    assert r.exit_code == 0 and "\x1b[" in r.stdout and "48;2;" in r.stdout  # true-colour backgrounds
    r = run("inspect", "cells", "-m", home / "lstm.pt", home / "held_out.txt", "--unit", "2:5:h", "--unit", "1:3",
            "--json")
    assert [(o["layer"], o["unit"], o["state"]) for o in json_lines(r.stdout)] == [(2, 5, "h"), (1, 3, "c")]


def test_cells_reads_stdin_and_cuts_at_max_chars(home: Path) -> None:
    r = run("inspect", "cells", "-m", home / "rnn.pt", "-", "--max-chars", "40", input=CODE * 3)
    assert r.exit_code == 0, r.stderr
    assert "over 40 characters" in r.stdout and "using the first 40 characters" in r.stderr
    assert "only 40 characters: correlations over so few say little" in r.stderr


def test_cells_html_page_is_escaped_and_script_free(home: Path, tmp_path: Path) -> None:
    page = tmp_path / "page.html"
    r = run("inspect", "cells", "-m", home / "lstm.pt", home / "held_out.txt", "--property", "quote", "--json",
            "-o", page)
    assert r.exit_code == 0, r.stderr
    assert len(json_lines(r.stdout)) == 64 and f"wrote {page}" in r.stderr
    html = page.read_text(encoding="utf-8")
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    assert "<script" not in html.lower() and "<b>" not in html
    assert '>&lt;</span>' in html and '>&amp;</span>' in html and '>&quot;</span>' not in html  # one span a character
    assert html.count('class="row"') == CODE.count("\n") * 3  # one unit: one row per line
    r = run("inspect", "cells", "-m", home / "lstm.pt", home / "held_out.txt", "-o", page)
    assert r.exit_code == 0 and page.read_text(encoding="utf-8").count('class="row"') == 9 * CODE.count("\n") * 3


@pytest.mark.parametrize("suffix", ["png", "svg"])
def test_cells_and_gates_pictures(home: Path, tmp_path: Path, suffix: str) -> None:
    pytest.importorskip("matplotlib")
    for command in ("cells", "gates"):
        out = tmp_path / f"{command}.{suffix}"
        r = run("inspect", command, "-m", home / "lstm.pt", home / "held_out.txt", "-o", out)
        assert r.exit_code == 0, r.stderr
        data = out.read_bytes()
        assert data.startswith(b"\x89PNG") if suffix == "png" else b"<svg" in data[:2000]
        assert r.stdout == ""  # the picture was asked for, not the table as well (issue 27)
        assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.parametrize(("model", "gates"), [("lstm", ("input", "forget", "cell", "output")),
                                              ("gru", ("reset", "update", "new"))])
def test_gates_json_and_table(home: Path, model: str, gates: tuple[str, ...]) -> None:
    layers = 2 if model == "lstm" else 1
    r = run("inspect", "gates", "-m", home / f"{model}.pt", home / "held_out.txt", "--json")
    assert r.exit_code == 0, r.stderr
    records = json_lines(r.stdout)
    assert len(records) == layers * len(gates) * 16
    for o in records:
        assert set(o) == {"layer", "gate", "unit", "left", "right"}
        assert o["gate"] in gates and 1 <= o["layer"] <= layers and 0 <= o["unit"] < 16
        assert 0 <= o["left"] and 0 <= o["right"] and o["left"] + o["right"] <= 1
    r = run("inspect", "gates", "-m", home / f"{model}.pt", home / "held_out.txt")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("gate saturation over") and len(r.stdout.splitlines()) == 3 + layers * len(gates)


def test_gates_refuses_a_plain_rnn(home: Path) -> None:
    one_line_error(run("inspect", "gates", "-m", home / "rnn.pt", home / "held_out.txt"), 2, "has no gates")


@pytest.mark.parametrize("command", ["cells", "gates"])
def test_bad_inputs_are_one_line_errors(home: Path, tmp_path: Path, command: str) -> None:
    model, held = home / "lstm.pt", home / "held_out.txt"
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    unknown = tmp_path / "unknown.txt"
    unknown.write_text("ΩΩЖЖ≈≈" * 3, encoding="utf-8")
    one_line_error(run("inspect", command, "-m", model, empty), 1, "empty")
    one_line_error(run("inspect", command, "-m", model, unknown), 1, "none of the text's 18 characters is known")
    one_line_error(run("inspect", command, "-m", model, held, "--max-chars", "0"), 2, "--max-chars")
    one_line_error(run("inspect", command, "-m", model, held, "-o", tmp_path / "no" / "such" / "x.png"), 2,
                   "does not exist")
    one_line_error(run("inspect", command, "-m", model, held, "-o", tmp_path / "x.txt"), 2, ".png")
    one_line_error(run("inspect", command, "-m", model, held, "-o", tmp_path), 2)
    # -o is checked before any work: before the model is even read
    one_line_error(run("inspect", command, "-m", tmp_path / "missing.pt", held, "-o", tmp_path / "no" / "x.png"), 2,
                   "x.png")
    before = model.read_bytes()
    copy = tmp_path / "model.png"
    copy.write_bytes(before)
    one_line_error(run("inspect", command, "-m", copy, held, "-o", copy), 2, "input")
    assert copy.read_bytes() == before
    text_png = tmp_path / "text.png"
    text_png.write_text(CODE, encoding="utf-8")
    one_line_error(run("inspect", command, "-m", model, text_png, "-o", text_png), 2, "input")
    assert text_png.read_text(encoding="utf-8") == CODE


def test_cells_bad_unit_and_property(home: Path) -> None:
    held = home / "held_out.txt"
    one_line_error(run("inspect", "cells", "-m", home / "lstm.pt", held, "--property", "quotes"), 2,
                   "unknown property 'quotes'", "in_word")
    one_line_error(run("inspect", "cells", "-m", home / "lstm.pt", held, "--unit", "3:0"), 2, "layers 1 to 2")
    one_line_error(run("inspect", "cells", "-m", home / "lstm.pt", held, "--unit", "1:16"), 2, "units 0 to 15")
    one_line_error(run("inspect", "cells", "-m", home / "gru.pt", held, "--unit", "1:0:c"), 2, "cell state")
    one_line_error(run("inspect", "cells", "-m", home / "gru.pt", held, "--unit", "x"), 2, "LAYER:INDEX")
    one_line_error(run("inspect", "gates", "-m", home / "gru.pt", held, "-o", home / "g.html"), 2, ".png or .svg")


def test_real_processes(home: Path, tmp_path: Path) -> None:
    base = [sys.executable, "-m", "charrnn", "inspect"]
    r = subprocess.run([*base, "cells", "-m", str(home / "gru.pt"), "-", "--json", "--property", "indent"],
                       input=CODE * 3, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "" and {json.loads(line)["property"] for line in r.stdout.splitlines()} == {"indent"}
    r = subprocess.run([*base, "gates", "-m", str(home / "rnn.pt"), str(home / "held_out.txt")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1 and r.stderr.startswith("Error: ")
