"""`charrnn serve --stdio`: the line protocol through real processes and pipes (issue 20, section 2)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from charrnn.cli import cli

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--hidden", "16", "-b", "4", "-t", "16", "--val-every", "20", "-q", "--precision", "fp32"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("serve")
    text = "the time traveller smiled and we sat about the fire\nThe Time Traveller. We sat about.\n"
    (d / "c.txt").write_text(text * 12, encoding="utf-8")
    (d / "names.txt").write_text("\n".join(["alice", "bob", "carol", "dave"] * 15) + "\n", encoding="utf-8")
    runner = CliRunner()
    r = runner.invoke(cli, ["train", str(d / "c.txt"), "-o", str(d / "m.pt"), *TINY, "--max-steps", "20"])
    assert r.exit_code == 0, r.stderr
    r = runner.invoke(cli, ["train", str(d / "names.txt"), "-o", str(d / "r.pt"), "--partition", "records", *TINY,
                            "--max-steps", "10"])
    assert r.exit_code == 0, r.stderr
    return d


def serve(home: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "charrnn", "serve", "--stdio", "-m", str(home / "m.pt"), *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=home, env=ENV)


def ask(p: subprocess.Popen, request: Any) -> dict:
    """Write one request line and read its answer line before anything else is written: the answer
    must come without stdin closing (it is flushed at once)."""
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write((request if isinstance(request, str) else json.dumps(request)).encode() + b"\n")
    p.stdin.flush()
    line = p.stdout.readline()
    assert line.endswith(b"\n"), line
    return json.loads(line)


def finish(p: subprocess.Popen) -> tuple[int, str]:
    assert p.stdin is not None
    p.stdin.close()
    code = p.wait(timeout=60)
    return code, p.stderr.read().decode() if p.stderr else ""


def test_requests_and_answers_one_line_at_a_time(home: Path) -> None:
    p = serve(home, "-m", f"names={home / 'r.pt'}")
    try:
        first = ask(p, {"op": "next", "prefix": "the ti", "k": 3, "id": "a"})
        assert first["id"] == "a" and len(first["next"]) == 3
        assert ask(p, {"op": "models"})["default"] == "m"
        sample = ask(p, {"op": "generate", "n": 20, "seed": 1, "num_samples": 2, "id": 2})
        assert sample["id"] == 2 and sample["seed"] == 1 and [len(s) for s in sample["samples"]] == [20, 20]
        names = ask(p, {"op": "generate", "model": "names", "n": 10, "seed": 1, "num_samples": 3})
        assert len(names["samples"]) == 3 and all("\n" not in s for s in names["samples"])
        scores = ask(p, {"op": "score", "records": ["the", "fire"], "id": None})
        assert scores["id"] is None and [s["text"] for s in scores["scores"]] == ["the", "fire"]
        assert ask(p, {"op": "next", "model": "other"}) == {"error": "unknown model 'other': loaded are m, names"}
        assert ask(p, {"op": "next", "prefix": "the ti", "k": 3, "id": "a"}) == first  # the same question, again
    finally:
        code, err = finish(p)
    assert code == 0 and "Traceback" not in err
    assert err.splitlines() == ["serving m, names on stdin/stdout: one JSON request per line"]


def test_bad_lines_get_an_error_and_the_process_goes_on(home: Path) -> None:
    p = serve(home, "--max-body-bytes", "200")
    try:
        assert ask(p, "not json")["error"].startswith("malformed JSON")
        assert ask(p, "[1, 2]") == {"error": "a request must be a JSON object, got an array"}
        assert ask(p, '{"op": "next", "prefix": "\\ud800", "id": 1}') == {  # refused as it is decoded: no id
            "error": '"prefix" holds \\ud800 alone, half of a UTF-16 surrogate pair: not a character (send '
                              'the pair, or the character as UTF-8)'}
        assert ask(p, '{"op": "next", "k": NaN}') == {"error": "malformed JSON: NaN is not a JSON number"}
        assert ask(p, '{"op": "next", "k": 1e999}')["error"].startswith("malformed JSON: the number 1e999")
        assert ask(p, "{" * 100) != {}
        assert ask(p, json.dumps({"op": "next", "prefix": "x" * 300})) == {
            "error": "the request line is longer than 200 bytes (--max-body-bytes)"}
        assert ask(p, {"op": "generate", "stream": True, "id": 5})["id"] == 5
        p.stdin.write(b"\xff\xfe{}\n")  # type: ignore[union-attr]
        assert ask(p, "")["error"] == "the request is not UTF-8 (byte 0)"  # the blank line after it is skipped
        p.stdin.write(b"\n   \n")  # type: ignore[union-attr]
        assert ask(p, '{"op": "next", "k": 2}\r')["prefix"] == ""  # blank lines ignored, CRLF taken
    finally:
        code, err = finish(p)
    assert code == 0 and "Traceback" not in err


def test_a_last_line_without_newline_is_answered(home: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "charrnn", "serve", "--stdio", "-m", str(home / "m.pt")], env=ENV,
                       input=b'{"op": "next", "k": 1}\n{"op": "models", "id": 9}', capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    answers = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(answers) == 2 and answers[1]["id"] == 9


def test_a_bash_coproc(home: Path) -> None:
    script = f"""
set -euo pipefail
charrnn() {{ '{sys.executable}' -m charrnn "$@"; }}
coproc SERVER {{ charrnn serve --stdio -m m.pt 2>/dev/null; }}
for prefix in "the ti" "we sat"; do
  printf '{{"op": "next", "prefix": "%s", "k": 1}}\\n' "$prefix" >&"${{SERVER[1]}}"
  read -r answer <&"${{SERVER[0]}}"
  echo "$answer"
done
exec {{SERVER[1]}}>&-
wait "$SERVER_PID"
"""
    r = subprocess.run(["bash", "-c", script], cwd=home, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    answers = [json.loads(line) for line in r.stdout.splitlines()]
    assert [a["prefix"] for a in answers] == ["the ti", "we sat"] and all(len(a["next"]) == 1 for a in answers)


def test_a_reader_that_goes_away_ends_it_quietly(home: Path) -> None:
    (home / "many.jsonl").write_text('{"op": "next", "k": 1}\n' * 2000, encoding="utf-8")
    cmd = f"set -o pipefail; '{sys.executable}' -m charrnn serve --stdio -m m.pt < many.jsonl | head -1"
    r = subprocess.run(["bash", "-c", cmd], cwd=home, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 1 and "Traceback" not in r.stderr


def test_closed_streams_and_bad_options_are_one_line_errors(home: Path) -> None:
    base = f"'{sys.executable}' -m charrnn serve --stdio -m m.pt"
    for cmd, needle in [(f"{base} <&-", "Error: standard input is closed"),
                        (f"{base} </dev/null >&-", "Error: standard output is closed"),
                        (f"{base} --port 9000 </dev/null", "Error: --port is for HTTP: not with --stdio"),
                        (f"{base} -m m.pt </dev/null", "Error: two models are named 'm'"),
                        (f"{base} -m x=missing.pt </dev/null", "Error: checkpoint 'missing.pt' does not exist"),
                        (f"{base} --max-n 0 </dev/null", "Error: Invalid value for '--max-n'")]:
        r = subprocess.run(["bash", "-c", cmd], cwd=home, env=ENV, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and r.stdout == "", (cmd, r.stderr)
        assert r.stderr.strip().splitlines()[-1].startswith(needle), (cmd, r.stderr)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_a_full_stdout_is_one_line_error(home: Path) -> None:
    with open("/dev/full", "wb") as full:
        r = subprocess.run([sys.executable, "-m", "charrnn", "serve", "--stdio", "-m", str(home / "m.pt")], env=ENV,
                           input=b'{"op": "models"}\n{"op": "models"}\n', stdout=full, stderr=subprocess.PIPE,
                           timeout=120)
    err = r.stderr.decode()
    assert r.returncode == 1 and "Traceback" not in err, err
    assert err.splitlines()[-1] == "Error: cannot write the answers to standard output: No space left on device"


def test_empty_input_ends_at_once(home: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "charrnn", "serve", "--stdio", "-m", str(home / "m.pt")], env=ENV,
                       input=b"", capture_output=True, timeout=120)
    assert r.returncode == 0 and r.stdout == b""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_while_idle_ends_it_with_exit_0(home: Path, sig: int) -> None:
    p = serve(home)
    try:
        assert "next" in ask(p, {"op": "next", "k": 1})  # loaded, answering, now waiting for the next line
        p.send_signal(sig)
        code = p.wait(timeout=60)
    finally:
        p.kill()
    assert code == 0 and p.stdout.read() == b"" and "Traceback" not in p.stderr.read().decode()  # type: ignore[union-attr]


def test_a_signal_during_a_request_lets_it_finish(home: Path) -> None:
    p = serve(home)
    try:
        assert "next" in ask(p, {"op": "next", "k": 1})
        p.stdin.write(b'{"op": "generate", "n": 5000, "num_samples": 8, "id": "long"}\n')  # type: ignore[union-attr]
        p.stdin.flush()  # type: ignore[union-attr]
        p.send_signal(signal.SIGTERM)  # while it generates, or (rarely) before it has read the line
        out, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 0 and "Traceback" not in err.decode()
    if out:  # the request it had begun is answered whole
        answer = json.loads(out)
        assert answer["id"] == "long" and [len(s) for s in answer["samples"]] == [5000] * 8


def doc_blocks(info: str) -> list[str]:
    """The fenced blocks of docs/serve.md's line-protocol part with this info string (the HTTP part's
    examples need a server: tests/test_server.py runs them)."""
    text = (ROOT / "docs" / "serve.md").read_text(encoding="utf-8").split("\n## HTTP\n")[0]
    return re.findall(rf"^```{info}\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def readme_coproc() -> list[str]:
    """README.md's coproc example."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [b for b in re.findall(r"^```bash\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL) if "coproc" in b]


@pytest.mark.parametrize(("info", "runner"), [("bash", "bash"), ("python", sys.executable), ("readme", "bash")])
def test_the_coproc_and_python_examples_of_the_docs_run(home: Path, tmp_path: Path, info: str, runner: str) -> None:
    """docs/serve.md's bash and python blocks and README.md's coproc block (not run by
    tests/test_examples.py: they are not `sh`), as written, with `charrnn` on PATH and model.pt in the folder."""
    blocks = readme_coproc() if info == "readme" else doc_blocks(info)
    assert len(blocks) == 1
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "charrnn").write_text(f"#!/bin/sh\nexec '{sys.executable}' -m charrnn \"$@\"\n", encoding="utf-8")
    (bin_dir / "charrnn").chmod(0o755)
    shutil.copy(home / "m.pt", tmp_path / "model.pt")
    (tmp_path / "example").write_text(blocks[0], encoding="utf-8")
    env = {**ENV, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    r = subprocess.run([runner, "example"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    if info == "readme":
        (answer,) = r.stdout.splitlines()
        assert [len(x) for x in json.loads(answer)["samples"]] == [100]
    elif info == "bash":
        lines = r.stdout.splitlines()
        assert [json.loads(line)["prefix"] for line in lines] == ["The Time Trav", "We sat about the fi"]
    else:  # the next characters, then a sample of 40 characters (newlines among them)
        first, sample = r.stdout.split("\n", 1)
        assert first.startswith("[{'char': ") and len(sample) == 40 + 1


def test_a_second_signal_stops_a_request_in_hand(home: Path) -> None:
    p = serve(home)
    try:
        assert "next" in ask(p, {"op": "next", "k": 1})
        p.stdin.write(b'{"op": "generate", "n": 10000, "num_samples": 16}\n')  # type: ignore[union-attr]
        p.stdin.flush()  # type: ignore[union-attr]
        assert p.stdout.read(100).startswith(b'{"samples": ["')  # type: ignore[union-attr]
        # Its answer (160 kB) fills the pipe, which nobody reads: it is stuck writing, until told twice.
        p.send_signal(signal.SIGTERM)
        p.send_signal(signal.SIGINT)
        code = p.wait(timeout=60)
    finally:
        p.kill()
    err = p.stderr.read().decode().strip().splitlines()  # type: ignore[union-attr]
    assert code == 1 and err[-1] == "Error: stopped by a second signal before the request in hand was answered"
