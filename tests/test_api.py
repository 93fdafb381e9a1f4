"""The public Python API (charrnn.load, Model): its answers are the commands' answers, through the CLI
itself (CliRunner), and `import charrnn` stays cheap."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import charrnn
from charrnn.cli import cli

TINY = ["--hidden", "16", "--layers", "1", "--embed-dim", "8", "-b", "8", "-t", "16", "--max-steps", "6",
        "--val-every", "3", "--precision", "fp32", "-q"]
NAMES = ["anna", "bob", "carol", "dave", "eve", "frank", "grace", "heidi", "ivan", "judy", "mallory", "oscar"] * 3
LINES = ["the time traveller smiled", "and we sat about the fire", "in the room while he spoke"] * 10
PUBLIC = ["CallbackEvent", "Callbacks", "CellReport", "CharrnnError", "CheckpointError", "DataError", "EvalResult",
          "Interrupted", "MissingDependency", "Model", "Progress", "TrainResult", "TrainingError",
          "UnknownCharacterError", "UsageError", "__version__", "load", "train"]


def run(*args: str, input: str | None = None):
    r = CliRunner().invoke(cli, list(args), input=input)
    assert r.exit_code == 0, (r.exit_code, r.stderr)
    return r


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("api")
    (d / "names.txt").write_text("\n".join(NAMES) + "\n", encoding="utf-8")
    (d / "lines.txt").write_text("\n".join(LINES) + "\n", encoding="utf-8")
    run("train", str(d / "names.txt"), "-o", str(d / "names.pt"), "--partition", "records", *TINY)
    run("train", str(d / "lines.txt"), "-o", str(d / "lines.pt"), *TINY)
    return {"names": d / "names.pt", "lines": d / "lines.pt", "dir": d}


def test_import_is_cheap_and_the_public_names_are_pinned() -> None:
    code = "import sys, charrnn; print(sorted(charrnn.__all__)); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == repr(sorted(PUBLIC)) and out[1] == "False"
    assert set(PUBLIC) <= set(dir(charrnn)) and set(charrnn._HOMES) == set(PUBLIC) - {"__version__"}
    for name in PUBLIC:
        assert getattr(charrnn, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        charrnn.nothing  # noqa: B018


@pytest.mark.parametrize(("model", "cli_args", "api_args"), [
    ("lines", ["--prefix", "the ", "-n", "40"], dict(prefix="the ", n=40)),
    ("lines", ["-n", "30", "--num-samples", "3", "--temperature", "0.7", "--top-k", "5"],
     dict(n=30, num_samples=3, temperature=0.7, top_k=5)),
    ("lines", ["--prefix", "and", "-n", "30", "--stop", " ", "--stop", "\\n", "--num-samples", "4",
               "--min-length", "2"],
     dict(prefix="and", n=30, stop=[" ", "\n"], num_samples=4, min_length=2)),
    ("names", ["-n", "12", "--num-samples", "5", "--top-p", "0.9"], dict(n=12, num_samples=5, top_p=0.9)),
    ("names", ["-n", "12", "--beam", "4", "--num-samples", "3"], dict(n=12, beam=4, num_samples=3)),
    ("names", ["-n", "12", "--num-samples", "3", "--novel"], dict(n=12, num_samples=3, novel=True)),
    ("lines", ["-n", "60", "--acrostic", "tea", "--num-samples", "2"], dict(n=60, acrostic="tea", num_samples=2)),
    ("lines", ["--template", "the ___ time"], dict(template="the ___ time")),
])
def test_generate_is_what_the_command_prints(models: dict[str, Path], model: str, cli_args: list[str],
                                             api_args: dict) -> None:
    m = charrnn.load(models[model])
    samples = m.generate(seed=5, **api_args)
    printed = run("generate", "-m", str(models[model]), "--no-echo", "--seed", "5", *cli_args).stdout
    several = len(samples) > 1 and model == "lines" and "stop" not in api_args  # separated by a blank line
    assert printed == ("\n\n".join(samples) + "\n" if several else "".join(s + "\n" for s in samples))
    assert len(samples) == api_args.get("num_samples", 1)
    if api_args.get("num_samples", 1) == 1 and "template" not in api_args:  # a form is not streamed
        assert "".join(m.stream(seed=5, **api_args)) == samples[0]


def test_perplexity_score_and_complete_are_the_commands(models: dict[str, Path]) -> None:
    m = charrnn.load(models["lines"])
    text = "the time machine sat by the fire\nwhile we spoke of it\n"
    (models["dir"] / "held.txt").write_text(text, encoding="utf-8")
    cli_ppl = json.loads(run("eval", "perplexity", "-m", str(models["lines"]), str(models["dir"] / "held.txt"),
                             "--json").stdout)
    api_ppl = m.perplexity(text)
    assert {k: v for k, v in cli_ppl.items() if k != "threads"} == api_ppl.to_dict()
    assert (api_ppl.nats_per_char, api_ppl.bits_per_char, api_ppl.perplexity, api_ppl.chars, api_ppl.unknown) == (
        cli_ppl["nats_per_char"], cli_ppl["bits_per_char"], cli_ppl["perplexity"], cli_ppl["chars"], cli_ppl["unknown"])

    names = charrnn.load(models["names"])
    records = ["anna", "bob", "zed", ""]
    lines = run("eval", "score", "-m", str(models["names"]), "--json", input="\n".join(records) + "\n").stdout
    assert [json.loads(line) for line in lines.splitlines()] == names.score(records)

    answer = json.loads(run("complete", "-m", str(models["lines"]), "--prefix", "the ti", "-k", "4", "--json").stdout)
    assert [(g["char"], g["prob"]) for g in answer["next"]] == m.complete("the ti", k=4)
    words = json.loads(run("complete", "-m", str(models["lines"]), "--prefix", "the ", "--words", "3",
                           "--json").stdout)
    assert [(g["word"], g["prob"]) for g in words["words"]] == m.complete("the ", words=3)


def test_export_and_load_back(models: dict[str, Path], tmp_path: Path) -> None:
    m = charrnn.load(models["lines"])
    written = m.export(tmp_path / "lines.safetensors")
    assert written["format"] == "safetensors" and written["bytes"] == (tmp_path / "lines.safetensors").stat().st_size
    back = charrnn.load(tmp_path / "lines.safetensors")
    assert back.generate("the ", n=30, seed=2) == m.generate("the ", n=30, seed=2)
    with pytest.raises(charrnn.UsageError, match="cannot tell which format"):
        m.export(tmp_path / "lines.bin")


def test_analyses_are_the_commands(models: dict[str, Path]) -> None:
    m = charrnn.load(models["lines"])
    text = "\n".join(LINES[:6]) + "\n"
    path = models["dir"] / "analyse.txt"
    path.write_text(text, encoding="utf-8")
    report = m.cells(text)
    lines = run("inspect", "cells", "-m", str(models["lines"]), str(path), "--json").stdout.splitlines()
    assert [json.loads(line) for line in lines] == report.records()
    assert report.activation("1:3").shape == (len(text),)
    lines = run("inspect", "gates", "-m", str(models["lines"]), str(path), "--json").stdout.splitlines()
    assert [json.loads(line) for line in lines] == m.gates(text)
    curve = m.bptt(text, steps=20, windows=4)
    lines = run("inspect", "bptt", "-m", str(models["lines"]), str(path), "-t", "20", "--windows", "4",
                "--json").stdout.splitlines()
    assert [json.loads(line) for line in lines] == curve.records()
    context = m.context(text, lengths=(1, 5, 20), targets=50)
    lines = run("eval", "context", "-m", str(models["lines"]), str(path), "--lengths", "1,5,20", "--targets", "50",
                "--json").stdout.splitlines()
    assert [json.loads(line) for line in lines] == [{**p.to_dict(), "full_nats_per_char": context.full}
                                                    for p in context.points]


def test_errors_are_domain_exceptions(models: dict[str, Path], tmp_path: Path) -> None:
    m = charrnn.load(models["lines"])
    with pytest.raises(charrnn.UsageError, match="--min-length needs --stop"):
        m.generate(n=5, min_length=2)
    with pytest.raises(charrnn.UnknownCharacterError):
        m.generate("\u2603", n=5)
    with pytest.raises(charrnn.UsageError, match="--beam is deterministic"):
        m.generate(n=5, beam=2, temperature=0.5)
    with pytest.raises(charrnn.CheckpointError):
        (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
        charrnn.load(tmp_path / "bad.pt")
    assert issubclass(charrnn.UsageError, charrnn.CharrnnError)
