"""`charrnn eval perplexity|score --split train|valid` (issue 30, section 4): exactly the part that the
model's training used or held out, from what its checkpoint records, for files and catalog corpora; any
other text, or a split that cannot be known, is a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from charrnn.cli import cli
from charrnn.data import catalog

TINY = ["--hidden", "16", "--layers", "1", "-b", "4", "-t", "16", "-q", "--precision", "fp32", "--max-steps", "4"]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpora"


def run(*args: str) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args])


def lines(n: int, offset: int = 0) -> str:
    words = "the time traveller smiled and we sat about the fire in the room while he spoke".split()
    return "".join(" ".join(words[(i * 5 + j + offset) % len(words)] for j in range(1 + i % 7)) + "\n"
                   for i in range(n))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("splits")
    (d / "c.txt").write_text(lines(120), encoding="utf-8")
    for name, extra in (("m", []), ("rec", ["--partition", "records"]), ("all", ["--val-fraction", "0"])):
        r = run("train", d / "c.txt", "-o", d / f"{name}.pt", *TINY, "--val-every", "2", *extra)
        assert r.exit_code == 0, r.stderr
    return d


def perplexity(model: Path, text: Path | str, *args: str) -> dict:
    r = run("eval", "perplexity", "-m", model, text, "--json", *args)  # 64 streams, as validation reads
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def test_the_valid_split_is_what_training_validated_on(home: Path) -> None:
    text = (home / "c.txt").read_text()
    ckpt = torch.load(home / "m.pt", weights_only=True)
    valid = perplexity(home / "m.pt", home / "c.txt", "--split", "valid")
    train = perplexity(home / "m.pt", home / "c.txt", "--split", "train")
    assert valid["nats_per_char"] == pytest.approx(ckpt["val_loss"], rel=1e-6)  # validation scored this very part
    assert train["chars"] + 1 == ckpt["data"]["chars"] and train["chars"] + valid["chars"] + 2 == len(text)
    (home / "tail.txt").write_text(text[ckpt["data"]["chars"]:], encoding="utf-8")
    assert perplexity(home / "m.pt", home / "tail.txt") == valid  # the part, cut by hand, gives the same


def test_a_records_model_holds_out_whole_records_and_score_reads_them(home: Path) -> None:
    text = (home / "c.txt").read_text()
    cut = torch.load(home / "rec.pt", weights_only=True)["data"]["chars"]
    assert text[cut - 1] == "\n"  # the held-out part starts at a record
    r = run("eval", "score", "-m", home / "rec.pt", home / "c.txt", "--split", "valid", "--json")
    assert r.exit_code == 0, r.stderr
    assert [json.loads(line)["text"] for line in r.stdout.splitlines()] == text[cut:].splitlines()
    r = run("eval", "score", "-m", home / "rec.pt", home / "c.txt", "--split", "train")
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == len(text[:cut].splitlines())


@pytest.mark.parametrize(("model", "text", "split", "code", "needle"), [
    ("m.pt", "other.txt", "valid", 1, "is not the text the model was trained on"),
    ("m.pt", "short.txt", "train", 1, "fewer than"),
    ("all.pt", "c.txt", "valid", 2, "held nothing out"),
    ("m.pt", "c.txt", "test", 2, "no official test part"),
    ("folder", "c.txt", "valid", 2, "does not record how its training split"),
])
def test_a_split_that_cannot_be_known_is_one_line(home: Path, model: str, text: str, split: str, code: int,
                                                  needle: str) -> None:
    (home / "other.txt").write_text(lines(130, offset=3), encoding="utf-8")
    (home / "short.txt").write_text("the time\n", encoding="utf-8")
    if model == "folder" and not (home / "folder").exists():
        pytest.importorskip("safetensors")
        assert run("export", "-m", home / "m.pt", "-o", home / "folder", "--format", "folder").exit_code == 0
    for command in ("perplexity", "score"):
        r = run("eval", command, "-m", home / model, home / text, "--split", split)
        errors = r.stderr.strip().splitlines()
        assert r.exit_code == code and r.stdout == "" and len(errors) == 1 and errors[0].startswith("Error: "), \
            (command, r.stderr)
        assert needle in errors[0]


def test_a_catalog_corpus_splits_as_training_split_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not (SHARED / "SHA256SUMS").exists():
        pytest.skip(f"{SHARED} is absent")
    monkeypatch.setenv(catalog.MIRRORS_ENV, str(SHARED))
    out = tmp_path / "tm.pt"
    r = run("train", "timemachine", "-o", out, *TINY, "--val-every", "4", "--val-max-chars", "20000")
    assert r.exit_code == 0, r.stderr
    ckpt = torch.load(out, weights_only=True)
    valid = perplexity(out, "timemachine", "--split", "valid")
    assert valid["nats_per_char"] == pytest.approx(ckpt["val_loss"], rel=1e-6)
    train = perplexity(out, "timemachine", "--split", "train")
    assert train["chars"] + train["unknown"] + 1 == ckpt["data"]["chars"]
