"""Views that tell the truth (issue 27, section 5): inspect bptt and eval context with -o and --json,
--lengths, complete's escaping, the README's "most surprising lines" recipe, inspect cells' properties,
export -o to a folder; each as a user meets it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from charrnn.cli import cli

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
TINY = ["--hidden", "16", "-b", "4", "-t", "16", "--val-every", "20", "-q", "--precision", "fp32"]
TEXT = "the time traveller smiled and we sat about the fire\n\nThe Time Traveller. We sat (about).\n" * 12


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("views")
    (d / "c.txt").write_text(TEXT, encoding="utf-8")
    runner = CliRunner()
    for name in ("m.pt", "n.pt"):
        r = runner.invoke(cli, ["train", str(d / "c.txt"), "-o", str(d / name), *TINY, "--max-steps", "10"])
        assert r.exit_code == 0, r.stderr
    return d


def run(*args: object, input: str | None = None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input)


def charrnn(home: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "charrnn", *args], capture_output=True, cwd=home,
                          env={**ENV, **(env or {})}, timeout=120)


# inspect bptt and eval context: -o, the summary, --json, --lengths ------------------------------------------------

def test_bptt_with_a_picture_prints_no_table_and_names_each_distance_once(home: Path) -> None:
    pytest.importorskip("matplotlib")
    out = home / "bptt.png"
    r = run("inspect", "bptt", "-m", home / "m.pt", home / "c.txt", "-t", "8", "--windows", "2", "-o", out)
    assert r.exit_code == 0 and out.exists(), r.stderr
    assert r.stdout == ""  # regression: 200 rows of table beside the picture
    summary = next(line for line in r.stderr.splitlines() if "grad norm" in line)
    assert summary.count(" at 7") == 1 and " at distance 0" in summary, summary  # was "... at 7, ... at 7"
    r = run("inspect", "bptt", "-m", home / "m.pt", home / "c.txt", "-t", "8", "--windows", "2", "-o", out, "--json")
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 8, r.stderr  # --json asked for: printed


def test_context_json_tells_two_models_apart_and_gives_the_full_context_loss(home: Path) -> None:
    """Regression: the same file given twice gave rows with the same "model"; the full-context loss (the
    table's `full` row) was missing from --json."""
    m = str(home / "m.pt")
    r = run("eval", "context", "-m", m, "-m", m, home / "c.txt", "--lengths", "1,4", "--targets", "30", "--json")
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(o["model"], o["length"]) for o in rows] == [(m, 1), (m, 4), (m, 1), (m, 4)]
    assert len({o["name"] for o in rows}) == 2
    for o in rows:
        assert o["full_nats_per_char"] == pytest.approx(o["nats_per_char"] - o["increase"])
    r = run("eval", "context", "-m", m, home / "c.txt", "--lengths", "1,,2")
    assert r.exit_code == 2 and "empty length" in r.stderr and r.stdout == "", r.stderr


# export -o to a folder -------------------------------------------------------------------------------------------

def test_export_to_a_name_ending_in_a_slash_or_a_folder_is_one_line(home: Path, tmp_path: Path) -> None:
    """Regression: `export -o out.onnx/` wrote a file named out.onnx (Path() drops the slash)."""
    for name in ("out.safetensors/", "out.html/", "out.onnx/"):
        r = run("export", "-m", home / "m.pt", "-o", f"{tmp_path}/{name}")
        assert r.exit_code == 2 and "ends in a slash" in r.stderr and r.stdout == "", r.stderr
    (tmp_path / "d.html").mkdir()
    r = run("export", "-m", home / "m.pt", "-o", tmp_path / "d.html")
    assert r.exit_code == 2 and "is a directory" in r.stderr, r.stderr
    r = run("train", home / "c.txt", "-o", f"{tmp_path}/x.pt/", *TINY, "--max-steps", "1")
    assert r.exit_code == 2 and "ends in a slash" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.html"]


# complete: escaping as eval score escapes, an ASCII stdout, a visible space -----------------------------------

def test_complete_escapes_controls_honours_an_ascii_stdout_and_shows_a_space(home: Path, tmp_path: Path) -> None:
    """Regression: complete wrote ESC and BEL raw, é as UTF-8 to an ASCII stdout (click.echo swaps the
    stream), and a space as an invisible character at the line's end."""
    from charrnn.data.records import unescape

    text = "caf\u00e9 \x1b[1m\x07 the fire\n" * 40
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    r = run("train", tmp_path / "t.txt", "-o", tmp_path / "t.pt", *TINY, "--max-steps", "2")
    assert r.exit_code == 0, r.stderr
    base = ["complete", "-m", "t.pt", "--prefix", "caf", "-k", "40"]
    for env, space in [({"PYTHONIOENCODING": "utf-8"}, "\u2423"), ({"PYTHONIOENCODING": "ascii"}, "\\x20")]:
        p = charrnn(tmp_path, *base, env=env)
        assert p.returncode == 0, p.stderr.decode()
        out = p.stdout.decode("ascii" if env["PYTHONIOENCODING"] == "ascii" else "utf-8")
        shown = [line.split("\t", 1)[1] for line in out.splitlines()]
        assert "\x1b" not in out and "\x07" not in out and space in shown and "\\x1b" in shown and "\\x07" in shown
        assert sorted(unescape(s.replace("\u2423", " ")) for s in shown) == sorted(set(text))  # exact, read back
    p = charrnn(tmp_path, *base, "--json")
    assert {g["char"] for g in json.loads(p.stdout)["next"]} == set(text)  # JSON keeps every character exact


# The README's "most surprising lines" -----------------------------------------------------------------------------

def test_the_most_surprising_lines_recipe_ranks_lines_not_blank_ones(home: Path) -> None:
    """Regression: every blank line scores its newline alone, all alike, and a blank line after text is
    surprising: the README's recipe listed blank lines first. The recipe now leaves them out."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    recipe = next(line for line in readme.splitlines() if "the most surprising lines" in line)
    assert "--skip-empty" in recipe
    line = recipe.split("#")[0].replace("model.pt", "m.pt").replace("held_out.txt", "c.txt")
    r = subprocess.run(["bash", "-o", "pipefail", "-c", f"{sys.executable} -m {line}"], capture_output=True,
                       cwd=home, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    top = [row.split("\t") for row in r.stdout.decode().splitlines()]
    assert len(top) == 3 and all(row[5] for row in top), top  # lines of text, none blank
    r = run("eval", "score", "-m", home / "m.pt", home / "c.txt")
    assert len(r.stdout.splitlines()) == TEXT.count("\n")  # without it: one line per record, blank ones too


# inspect cells: constant properties, the user's own, memory -------------------------------------------------------

def test_cells_leaves_out_properties_constant_on_the_text_and_says_so(home: Path, tmp_path: Path) -> None:
    """Regression: on prose, bracket/indent/comment (constant) were ranked with units "found" for them."""
    prose = "the time traveller smiled. We sat about the fire, and He spoke.\n" * 30  # no bracket, quote, digit...
    (tmp_path / "prose.txt").write_text(prose, encoding="utf-8")
    r = run("inspect", "cells", "-m", home / "m.pt", tmp_path / "prose.txt")
    assert r.exit_code == 0, r.stderr
    assert "constant on this text, so not ranked: bracket, comment, digit, indent, quote" in r.stderr
    table = [line.split()[0] for line in r.stdout.splitlines() if line[:1].isalpha()]
    assert "bracket" not in table and "indent" not in table and "in_word" in table
    r = run("inspect", "cells", "-m", home / "m.pt", tmp_path / "prose.txt", "--json")
    assert {json.loads(line)["property"] for line in r.stdout.splitlines()} <= {"line_position", "in_word",
                                                                                "word_position", "upper"}
    r = run("inspect", "cells", "-m", home / "m.pt", tmp_path / "prose.txt", "--property", "bracket")
    assert r.exit_code == 1 and "the same on every character" in r.stderr and r.stdout == "", r.stderr


def test_cells_ranks_a_property_of_the_users_own(home: Path) -> None:
    r = run("inspect", "cells", "-m", home / "m.pt", home / "c.txt", "--property-regex", "vowel=[aeiou]",
            "--property", "vowel", "--json")
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert rows and all(o["property"] == "vowel" for o in rows) and abs(rows[0]["r"]) >= abs(rows[-1]["r"])
    r = run("inspect", "cells", "-m", home / "m.pt", home / "c.txt", "--property-regex", "the=\\bthe\\b")
    assert r.exit_code == 0 and any(line.startswith("the ") for line in r.stdout.splitlines()), r.stdout
    for bad, needle in [("vowel", "NAME=REGEX"), ("quote=x", "built-in"), ("v=[", "bad --property-regex")]:
        r = run("inspect", "cells", "-m", home / "m.pt", home / "c.txt", "--property-regex", bad)
        assert r.exit_code == 2 and needle in r.stderr, r.stderr


def test_cells_refuses_a_text_whose_states_would_not_fit_before_tracing(home: Path, tmp_path: Path) -> None:
    """Regression: --max-chars 1000000 held 1.72 GB for a 1x32 model, silently."""
    from charrnn.analysis import cells
    from charrnn.errors import DataError

    (tmp_path / "long.txt").write_text(TEXT * 1600, encoding="utf-8")  # 1.5 million characters
    # the 1x16 LSTM holds 2*4*32 + 3*8*16 + 2*8*9 = 784 bytes a character: 1.1 GiB, refused before the trace
    r = run("inspect", "cells", "-m", home / "m.pt", tmp_path / "long.txt", "--max-chars", "1500000")
    assert r.exit_code == 1 and "lower --max-chars" in r.stderr and "1,369," in r.stderr, r.stderr
    with pytest.raises(DataError, match="lower --max-chars"):
        cells.check_memory(1, 32, True, 1_000_000)  # the 1x32 LSTM: 1.33 GiB
    cells.check_memory(1, 32, True, 700_000)
