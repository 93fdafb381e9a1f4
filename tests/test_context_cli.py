"""`charrnn eval context` and `charrnn inspect bptt` end to end: stdout, stderr, exit codes, JSON, pictures, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from charrnn.cli import cli

TINY = ["--hidden", "16", "--layers", "1", "-b", "4", "-t", "16", "--max-steps", "6", "--val-every", "3", "-q"]
FAST_CONTEXT = ["--lengths", "1,4,16", "--targets", "20"]
FAST_BPTT = ["-t", "12", "--windows", "4"]
COMMANDS = {"context": ["eval", "context", *FAST_CONTEXT], "bptt": ["inspect", "bptt", *FAST_BPTT]}


def corpus_text() -> str:
    words = "the time traveller smiled and we sat about the fire in the room while he spoke".split()
    return "\n".join(" ".join(words[(i * 7 + j) % len(words)] for j in range(9)) for i in range(30)) + "\n"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("context-cli")
    (d / "corpus.txt").write_text(corpus_text(), encoding="utf-8")
    for name, extra in (("rnn", ["--cell", "rnn"]), ("lstm", []), ("rec", ["--partition", "records"])):
        r = CliRunner().invoke(cli, ["train", str(d / "corpus.txt"), "-o", str(d / f"{name}.pt"), *TINY, *extra])
        assert r.exit_code == 0, r.stderr
    return d


def run(*args: str, input: str | bytes | None = None):
    return CliRunner().invoke(cli, list(args), input=input)


def one_line_error(r, code: int, *needles: str) -> None:
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    assert r.stdout == "" and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    for needle in needles:
        assert needle in r.stderr, r.stderr


def test_context_table(home: Path) -> None:
    r = run(*COMMANDS["context"], "-m", str(home / "lstm.pt"), str(home / "corpus.txt"))
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["model", "length", "nats/char", "increase", "increase%"]
    assert [line.split()[1] for line in lines[1:]] == ["1", "4", "16", "full"]
    full = float(lines[-1].split()[2])
    for line in lines[1:-1]:
        _, _, nats, inc, pct = line.split()
        assert float(nats) - float(inc) == pytest.approx(full, abs=2e-4) and pct.endswith("%")
    assert "full context" in r.stderr and "over 20 targets" in r.stderr and "s in all" in r.stderr


def test_context_json_keys_and_several_models(home: Path) -> None:
    r = run(*COMMANDS["context"], "-m", str(home / "lstm.pt"), str(home / "corpus.txt"), "--json")
    assert r.exit_code == 0, r.stderr
    objs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o["length"] for o in objs] == [1, 4, 16]
    assert all(set(o) == {"length", "nats_per_char", "increase", "targets", "full_nats_per_char"}
               and o["targets"] == 20 for o in objs)
    models = [str(home / "rnn.pt"), str(home / "lstm.pt")]
    r = run(*COMMANDS["context"], "-m", models[0], "-m", models[1], str(home / "corpus.txt"), "--json")
    assert r.exit_code == 0, r.stderr
    objs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o["model"] for o in objs] == [models[0]] * 3 + [models[1]] * 3
    assert all(set(o) == {"length", "nats_per_char", "increase", "targets", "full_nats_per_char", "model", "name"}
               for o in objs)


def test_context_perturbation_and_stdin_and_records_model(home: Path) -> None:
    args = [*COMMANDS["context"], "-m", str(home / "rec.pt"), "--json"]
    plain = [json.loads(x) for x in run(*args, "-", input=corpus_text()).stdout.splitlines()]
    assert len(plain) == 3
    r = run(*args, str(home / "corpus.txt"), "--perturb", "reverse", "--beyond", "4")
    assert r.exit_code == 0, r.stderr
    rev = [json.loads(x) for x in r.stdout.splitlines()]
    assert rev[:2] == plain[:2] and rev[2] != plain[2]  # only contexts longer than D + 1 change
    assert "reversed" in r.stderr


def test_bptt_table_and_json(home: Path) -> None:
    models = [str(home / "rnn.pt"), str(home / "lstm.pt")]
    r = run(*COMMANDS["bptt"], "-m", models[0], str(home / "corpus.txt"))
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["distance", "rnn"] and [int(x.split()[0]) for x in lines[1:]] == list(range(12))
    assert all(float(x.split()[1]) >= 0 for x in lines[1:])
    r = run(*COMMANDS["bptt"], "-m", models[0], "-m", models[1], str(home / "corpus.txt"), "--json")
    assert r.exit_code == 0, r.stderr
    objs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o["distance"] for o in objs] == list(range(12)) * 2
    assert [o["model"] for o in objs] == [models[0]] * 12 + [models[1]] * 12
    assert all(set(o) == {"distance", "grad_norm", "model", "name"} and o["grad_norm"] >= 0 for o in objs)
    r = run(*COMMANDS["bptt"], "-m", models[0], str(home / "corpus.txt"), "--json")
    assert set(json.loads(r.stdout.splitlines()[0])) == {"distance", "grad_norm"}
    r = run(*COMMANDS["bptt"], "-m", str(home / "rec.pt"), "-", "--json", input=corpus_text())  # a records model
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 12, r.stderr


@pytest.mark.parametrize("command", ["context", "bptt"])
@pytest.mark.parametrize("suffix,magic", [(".png", b"\x89PNG"), (".svg", b"<?xml")])
def test_pictures_are_written(home: Path, tmp_path: Path, command: str, suffix: str, magic: bytes) -> None:
    out = tmp_path / f"picture{suffix}"
    r = run(*COMMANDS[command], "-m", str(home / "rnn.pt"), "-m", str(home / "lstm.pt"), str(home / "corpus.txt"),
            "-o", str(out))
    assert r.exit_code == 0, r.stderr
    assert out.read_bytes().startswith(magic) and f"wrote {out}" in r.stderr
    assert r.stdout == ""  # the picture was asked for, not the table as well (issue 27)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left


@pytest.mark.parametrize("command", ["context", "bptt"])
def test_bad_inputs_are_one_line_errors(home: Path, tmp_path: Path, command: str) -> None:
    model, corpus = str(home / "lstm.pt"), str(home / "corpus.txt")
    base = [*COMMANDS[command], "-m", model]
    before = (home / "lstm.pt").read_bytes()
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "alien.txt").write_text("ΩΨΦ" * 200, encoding="utf-8")
    (tmp_path / "short.txt").write_text("the time ")
    one_line_error(run(*base, str(tmp_path / "empty.txt")), 1, "empty")
    one_line_error(run(*base, str(tmp_path / "alien.txt")), 1, "unknown to the model")
    one_line_error(run(*base, str(tmp_path / "short.txt")), 1, "too short")
    one_line_error(run(*base, corpus, "--max-chars", "0"), 2, "--max-chars")
    one_line_error(run(*base, corpus, "-o", model), 2, "is a model (-m)")
    one_line_error(run(*base, corpus, "-o", corpus), 2, "is the text")
    one_line_error(run(*base, corpus, "-o", str(tmp_path / "missing" / "p.png")), 2, "does not exist")
    one_line_error(run(*base, corpus, "-o", str(tmp_path / "p.gif")), 2, ".png or .svg")
    one_line_error(run(*base, corpus, "-o", str(tmp_path)), 2)
    one_line_error(run(*COMMANDS[command], "-m", str(tmp_path / "none.pt"), corpus), 2, "does not exist")
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            one_line_error(run(*base, corpus, "-o", str(locked / "p.png")), 2, "permission denied")
        finally:
            locked.chmod(0o700)
    assert (home / "lstm.pt").read_bytes() == before


@pytest.mark.parametrize("args,needle", [
    (["--lengths", "1,x"], "--lengths"), (["--lengths", "0"], "--lengths"), (["--lengths", ","], "--lengths"),
    (["--perturb", "shuffle"], "--beyond"), (["--beyond", "3"], "--perturb"),
    (["--perturb", "shuffle", "--beyond", "15"], "--beyond"), (["--targets", "0"], "--targets"),
])
def test_bad_context_options(home: Path, args: list[str], needle: str) -> None:
    r = run("eval", "context", "-m", str(home / "lstm.pt"), str(home / "corpus.txt"), *FAST_CONTEXT[:-2], *args)
    one_line_error(r, 2, needle)


@pytest.mark.parametrize("args,needle", [(["-t", "0"], "--num-steps"), (["--windows", "0"], "--windows"),
                                         (["-t", "100000"], "--num-steps")])
def test_bad_bptt_options(home: Path, args: list[str], needle: str) -> None:
    one_line_error(run("inspect", "bptt", "-m", str(home / "lstm.pt"), str(home / "corpus.txt"), *args), 2, needle)


@pytest.mark.parametrize("command", ["context", "bptt"])
def test_a_real_process(home: Path, command: str) -> None:
    p = subprocess.run([sys.executable, "-m", "charrnn", *COMMANDS[command], "-m", str(home / "rnn.pt"), "-",
                        "--json"], input=corpus_text().encode(), capture_output=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert p.returncode == 0, p.stderr.decode()
    objs = [json.loads(line) for line in p.stdout.decode().splitlines()]
    assert len(objs) == (3 if command == "context" else 12)
    p = subprocess.run([sys.executable, "-m", "charrnn", *COMMANDS[command], "-m", str(home / "rnn.pt"),
                        str(home / "corpus.txt"), "--max-chars", "-1"], capture_output=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert p.returncode == 2 and p.stdout == b"" and p.stderr.decode().count("\n") == 1


def test_the_commands_are_listed_without_importing_torch() -> None:
    code = ("import sys; from charrnn.cli import cli; from click.testing import CliRunner; "
            "r = CliRunner().invoke(cli, ['inspect', '--help']); s = CliRunner().invoke(cli, ['eval', '--help']); "
            "print('bptt' in r.output, 'context' in s.output, 'torch' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert p.stdout.split() == ["True", "True", "False"], p.stderr


@pytest.mark.parametrize("command", ["context", "bptt"])
def test_a_missing_matplotlib_is_said_before_any_work(home: Path, tmp_path: Path, command: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if not installed
    monkeypatch.setattr("charrnn.cli.common.read_head", lambda *a: pytest.fail("read the text first"))
    r = run(*COMMANDS[command], "-m", str(home / "rnn.pt"), str(home / "corpus.txt"), "-o", str(tmp_path / "p.png"))
    one_line_error(r, 1, "charrnn[plot]")
    assert not (tmp_path / "p.png").exists()
