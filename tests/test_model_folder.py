"""`charrnn export --format folder` (issue 30, section 3): config.json, vocab.json, model.safetensors (the
safetensors library's) and a README.md model card, read back by every -m and by charrnn.load, exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("safetensors")

import charrnn  # noqa: E402
from charrnn.cli import cli  # noqa: E402
from charrnn.model.checkpoint import load_model  # noqa: E402

CHARRNN = [sys.executable, "-m", "charrnn"]
TINY = ["--hidden", "16", "--layers", "1", "-b", "4", "-t", "16", "--val-every", "4", "-q", "--precision", "fp32"]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("folder")
    words = "the time traveller smiled and we sat about the fire in the room".split()
    (d / "c.txt").write_text("\n".join(" ".join(words[(i * 3 + j) % len(words)] for j in range(7))
                                       for i in range(40)) + "\n", encoding="utf-8")
    r = CliRunner().invoke(cli, ["train", str(d / "c.txt"), "-o", str(d / "m.pt"), *TINY, "--max-steps", "8"])
    assert r.exit_code == 0, r.stderr
    r = CliRunner().invoke(cli, ["export", "-m", str(d / "m.pt"), "-o", str(d / "folder"), "--format", "folder",
                                 "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["format"] == "folder"
    return d


def run(*args: str) -> str:
    r = subprocess.run([*CHARRNN, *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_the_folder_holds_config_vocab_weights_and_a_card(home: Path) -> None:
    folder = home / "folder"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors", "vocab.json"]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "charrnn" and config["hidden"] == 16 and config["cell"] == "lstm"
    assert config["charrnn"]["training"]["step"] == 8
    vocab = json.loads((folder / "vocab.json").read_text())
    assert vocab["chars"][-1] is None and len(vocab["chars"]) == config["vocab_size"] == len(vocab["counts"]) + 1
    from safetensors.torch import load_file

    weights = load_file(str(folder / "model.safetensors"))  # any safetensors reader takes it
    assert weights["rnn.weight_hh_l0"].shape == (64, 16) and weights["head.bias"].dtype == torch.float32
    card = (folder / "README.md").read_text()
    for needle in ("## Architecture", "| parameters |", "| steps | 8 |", "training text", "## Validation",
                   "nats/char", "## A sample"):
        assert needle in card


def test_the_round_trip_is_exact(home: Path) -> None:
    model, vocab, _ = load_model(home / "m.pt")
    again, vocab2, ckpt = load_model(home / "folder")
    assert vocab2.chars == vocab.chars and ckpt["step"] == 8
    for (name, a), (name2, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert name == name2 and torch.equal(a, b)
    corpus = str(home / "c.txt")
    assert run("eval", "perplexity", "-m", str(home / "folder"), corpus, "--json") == \
        run("eval", "perplexity", "-m", str(home / "m.pt"), corpus, "--json")
    for args in (["-p", "the ", "-n", "80", "--seed", "4"], ["-n", "50", "--greedy", "--seed", "1"]):
        assert run("generate", "-m", str(home / "folder"), *args) == run("generate", "-m", str(home / "m.pt"), *args)
    assert charrnn.load(home / "folder").generate("the ", 30, seed=2) == charrnn.load(home / "m.pt").generate(
        "the ", 30, seed=2)
    info = json.loads(run("info", "-m", str(home / "folder"), "--json"))
    assert info["model"]["hidden"] == 16 and info["step"] == 8


def test_a_damaged_folder_is_one_line(home: Path, tmp_path: Path) -> None:
    import shutil

    def broken(name: str, change: str) -> Path:
        d = tmp_path / name
        shutil.copytree(home / "folder", d)
        if change == "config-not-json":
            (d / "config.json").write_text("{not json")
        elif change == "no-vocab":
            (d / "vocab.json").unlink()
        elif change == "wrong-hidden":
            config = json.loads((d / "config.json").read_text())
            (d / "config.json").write_text(json.dumps({**config, "hidden": 17}))
        elif change == "short-weights":
            data = (d / "model.safetensors").read_bytes()
            (d / "model.safetensors").write_bytes(data[: len(data) // 2])
        return d

    for change, needle in (("config-not-json", "config.json is not valid JSON"), ("no-vocab", "vocab.json"),
                           ("wrong-hidden", "weight"), ("short-weights", "model.safetensors")):
        r = CliRunner().invoke(cli, ["info", "-m", str(broken(change, change))])
        lines = r.stderr.strip().splitlines()
        assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0], \
            (change, r.stderr)
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(cli, ["info", "-m", str(tmp_path / "empty")])
    assert r.exit_code == 2 and "nor a model folder" in r.stderr


def test_export_replaces_a_model_folder_but_no_other(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "f"
    for _ in range(2):  # the second replaces the first
        r = CliRunner().invoke(cli, ["export", "-m", str(home / "m.pt"), "-o", str(out), "--format", "folder"])
        assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # no temporary folder left
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    r = CliRunner().invoke(cli, ["export", "-m", str(home / "m.pt"), "-o", str(tmp_path / "mine"), "--format",
                                 "folder"])
    assert r.exit_code == 2 and "holds other files" in r.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    r = CliRunner().invoke(cli, ["export", "-m", str(home / "folder"), "-o", str(home / "folder"), "--format",
                                 "folder"])
    assert r.exit_code == 2 and "is the model" in r.stderr
