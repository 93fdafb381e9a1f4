"""charrnn complete: the likeliest next characters and words after a prefix (issue 20, section 1)."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from charrnn.cli import cli
from charrnn.data.vocab import Vocab
from charrnn.inference.complete import is_boundary, next_chars, next_words
from charrnn.model.network import CharRNN, ModelConfig

VOCAB = Vocab.build("ab c.")  # ' ', '.', 'a', 'b', 'c' and <unk>


def model(cell: str = "lstm", seed: int = 0) -> CharRNN:
    torch.manual_seed(seed)
    m = CharRNN(ModelConfig(vocab_size=VOCAB.size, cell=cell, layers=2, hidden=12, input="embedding", embed_dim=5))
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(3.0)  # sharper distributions than the initialisation's: the ranking means something
    return m.eval()


def reference_logp(m: CharRNN, ids: list[int]) -> torch.Tensor:
    """log P(next | ids) by the model's own forward pass, <unk> excluded (not renormalised)."""
    logits, _ = m(torch.tensor([ids]))
    logp = torch.log_softmax(logits[0, -1].double(), dim=0)
    logp[VOCAB.unk_id] = -math.inf
    return logp


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_next_chars_are_the_forward_pass_probabilities(cell: str) -> None:
    m = model(cell)
    ids = VOCAB.encode("ab ca")
    got = next_chars(m, VOCAB, ids, k=10)
    logp = reference_logp(m, list(ids))
    assert len(got) == len(VOCAB.chars)  # every character, never <unk>
    assert [g.prob for g in got] == sorted((g.prob for g in got), reverse=True)
    for g in got:
        assert g.prob == pytest.approx(math.exp(logp[VOCAB.chars.index(g.text)].item()), rel=1e-5)
    assert next_chars(m, VOCAB, ids, k=2) == got[:2]


def word_probability(m: CharRNN, prefix: list[int], word: str) -> float:
    """P(the next word is `word`) = P(word's characters) x P(any boundary after them), by brute force."""
    total, ids = 0.0, list(prefix)
    for c in word:
        total += reference_logp(m, ids)[VOCAB.chars.index(c)].item()
        ids.append(VOCAB.chars.index(c))
    end = reference_logp(m, ids)
    bounds = [i for i, c in enumerate(VOCAB.chars) if is_boundary(c)]
    return math.exp(total + torch.logsumexp(end[bounds], dim=0).item())


def test_next_words_match_brute_force() -> None:
    m = model("lstm", seed=3)
    prefix = list(VOCAB.encode("ab c"))
    letters = [c for c in VOCAB.chars if not is_boundary(c)]
    exact = {"".join(w): word_probability(m, prefix, "".join(w))
             for n in range(4) for w in itertools.product(letters, repeat=n)}
    got = next_words(m, VOCAB, np.array(prefix), k=5, max_length=3, width=200)  # a beam wide enough to be exact
    best = sorted(exact.items(), key=lambda kv: -kv[1])[:5]
    assert [g.text for g in got] == [w for w, _ in best]
    for g, (_, p) in zip(got, best, strict=True):
        assert g.prob == pytest.approx(p, rel=1e-6)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_next_words_in_chunks_are_the_same_words(cell: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large vocabulary goes through the model a few partial words at a time (k = 1000 on 20,000
    characters peaked at 3.1 GB in one piece, 0.63 GB in chunks, the same 1,000 words and numbers): chunks
    of one, two and three partial words here give what one pass gives."""
    from charrnn.inference import complete

    m, prefix = model(cell, seed=5), VOCAB.encode("ab c")
    whole = next_words(m, VOCAB, prefix, k=8, max_length=4)
    for rows in (1, 2, 3):
        monkeypatch.setattr(complete, "CHUNK_ELEMENTS", rows * VOCAB.size)
        got = next_words(m, VOCAB, prefix, k=8, max_length=4)
        assert [g.text for g in got] == [g.text for g in whole]
        # fewer rows per matrix product round differently in float32's last bits (3e-7 seen), nothing more
        assert [g.prob for g in got] == pytest.approx([g.prob for g in whole], rel=1e-5)


def test_an_empty_prefix_starts_from_the_character_frequencies() -> None:
    got = next_chars(model(), VOCAB, np.array([], dtype=np.int64), k=10)
    total = sum(VOCAB.counts)
    expected = {c: pytest.approx(n / total) for c, n in zip(VOCAB.chars, VOCAB.counts, strict=True)}
    assert {g.text: g.prob for g in got} == expected


@settings(max_examples=30, deadline=None)
@given(st.text(alphabet="ab c.xy", max_size=12), st.integers(1, 8))
def test_any_prefix_gives_at_most_k_guesses_summing_to_at_most_one(prefix: str, k: int) -> None:
    m = model("gru", seed=1)
    ids = VOCAB.encode(prefix, unk="map")
    chars = next_chars(m, VOCAB, ids, k=k)
    words = next_words(m, VOCAB, ids, k=k, max_length=6)
    for guesses in (chars, words):
        assert 1 <= len(guesses) <= k
        assert sum(g.prob for g in guesses) <= 1 + 1e-9
        assert all(0 < g.prob <= 1 for g in guesses)
    assert all(len(g.text) == 1 and g.text in VOCAB.chars for g in chars)
    assert all(not any(is_boundary(c) for c in g.text) for g in words)
    assert len({g.text for g in words}) == len(words)


# The command, through CliRunner and real processes ------------------------------------------------------------

def run(*args: Any, input: str | None = None) -> Any:
    return CliRunner().invoke(cli, [str(a) for a in args], input=input)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("complete")
    (d / "c.txt").write_text("the time traveller smiled and we sat about the fire\n" * 30, encoding="utf-8")
    (d / "names.txt").write_text("\n".join(["alice", "bob", "carol", "dave"] * 20) + "\n", encoding="utf-8")
    common = ["--hidden", "24", "-b", "4", "-t", "16", "--val-every", "20", "-q", "--precision", "fp32"]
    assert run("train", d / "c.txt", "-o", d / "m.pt", *common, "--max-steps", "60").exit_code == 0
    r = run("train", d / "names.txt", "-o", d / "r.pt", "--partition", "records", *common, "--max-steps", "30")
    assert r.exit_code == 0, r.stderr
    return d


def test_text_and_json(home: Path) -> None:
    r = run("complete", "-m", home / "m.pt", "--prefix", "the ti", "-k", "3")
    assert r.exit_code == 0, r.stderr
    lines = [line.split("\t") for line in r.stdout.splitlines()]
    assert len(lines) == 3 and all(len(p) == 2 and 0 < float(p[0]) <= 1 for p in lines)
    r = run("complete", "-m", home / "m.pt", "--prefix", "the ti", "-k", "3", "--json")
    obj = json.loads(r.stdout)
    assert obj["prefix"] == "the ti" and [x["char"] for x in obj["next"]] == [p[1] for p in lines]
    r = run("complete", "-m", home / "m.pt", "--prefix", "the ", "--words", "4", "--json")
    assert r.exit_code == 0, r.stderr
    words = json.loads(r.stdout)["words"]
    assert len(words) == 4 and all(set(w) == {"word", "prob"} for w in words)


def test_records_model_empty_prefix_is_the_start_of_a_record(home: Path) -> None:
    r = run("complete", "-m", home / "r.pt", "-k", "4", "--json")
    assert r.exit_code == 0, r.stderr
    firsts = {x["char"] for x in json.loads(r.stdout)["next"]}
    assert firsts & {"a", "b", "c", "d"}  # the names start with these


def test_escaped_characters_and_prefix_from_stdin(home: Path) -> None:
    r = run("complete", "-m", home / "m.pt", "--prefix-file", "-", "-k", "40", input="the fire")
    assert r.exit_code == 0, r.stderr
    chars = [line.split("\t")[1] for line in r.stdout.splitlines()]
    assert "\\n" in chars and "\n" not in "".join(chars)


@pytest.mark.parametrize(("args", "code", "needle"), [
    (["--prefix", "a", "--prefix-file", "x"], 2, "not both"),
    (["-k", "0"], 2, "-k"),
    (["--words", "0"], 2, "--words"),
    (["--prefix", "ZQ", "--unk", "error"], 1, "not in the model's vocabulary"),
])
def test_bad_input_is_one_line(home: Path, args: list[str], code: int, needle: str) -> None:
    r = run("complete", "-m", home / "m.pt", *args)
    assert r.exit_code == code, r.stderr
    lines = r.stderr.strip().splitlines()
    assert r.stdout == "" and len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0]


def test_a_real_process_in_a_pipe(home: Path) -> None:
    cmd = f"printf 'the tim' | '{sys.executable}' -m charrnn complete -m '{home / 'm.pt'}' --prefix-file - | head -1"
    p = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert len(p.stdout.splitlines()) == 1
    p = subprocess.run(f"'{sys.executable}' -m charrnn complete -m '{home / 'm.pt'}' --prefix-file - <&-",
                       shell=True, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith("Error: standard input is closed"), p.stderr
