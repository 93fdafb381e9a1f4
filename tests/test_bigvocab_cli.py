"""Large vocabularies from the command line (issue 29, 1): `--softmax auto|full|adaptive`, `--max-vocab`,
and every command that reads probabilities working on an adaptive-softmax model trained on a tiny CJK
corpus made here (300 distinct characters, Zipf-distributed)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cjk import cjk_text
from click.testing import CliRunner

from charrnn.cli import cli
from charrnn.config import SOFTMAXES
from charrnn.model import checkpoint
from charrnn.model.heads import OUTPUTS

TINY = ["--hidden", "16", "--embed-dim", "8", "-b", "4", "-t", "16", "--max-steps", "6", "--val-every", "3", "-q",
        "--threads", "1"]
TEXT = cjk_text(6000, 300, seed=2)


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(cli, list(args), input=input)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("cjk") / "poems.txt"
    p.write_text(TEXT, encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def adaptive(corpus: Path) -> Path:
    out = corpus.parent / "adaptive.pt"
    result = run("train", str(corpus), "-o", str(out), "--softmax", "adaptive", *TINY)
    assert result.exit_code == 0, result.stderr
    return out


def test_the_torch_free_names_match() -> None:
    assert SOFTMAXES == ("auto", *OUTPUTS)


def test_adaptive_checkpoint_holds_its_head(adaptive: Path) -> None:
    ckpt = checkpoint.load(adaptive)
    config = ckpt["model_config"]
    assert config["output"] == "adaptive" and len(config["order"]) == 304 and config["cutoffs"][0] > 0
    assert not any(name == "head.weight" for name in ckpt["weights"])
    info = run("info", "-m", str(adaptive))
    assert info.exit_code == 0 and "adaptive softmax" in info.stdout


def test_auto_picks_by_vocabulary_size(corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """304 characters (300, the punctuation, newline and <unk>) are below the threshold: full; with the
    threshold lowered, auto takes adaptive."""
    import charrnn.model.heads as heads

    result = run("train", str(corpus), "-o", str(tmp_path / "a.pt"), *TINY)
    assert result.exit_code == 0 and checkpoint.load(tmp_path / "a.pt")["model_config"]["output"] == "full"
    monkeypatch.setattr(heads, "ADAPTIVE_FROM", 200)
    result = CliRunner().invoke(cli, ["train", str(corpus), "-o", str(tmp_path / "b.pt"), *TINY[:-3]])
    assert result.exit_code == 0, result.stderr
    assert checkpoint.load(tmp_path / "b.pt")["model_config"]["output"] == "adaptive"
    assert "adaptive softmax over 304 characters" in result.stderr and "(--softmax auto)" in result.stderr
    result = run("train", str(corpus), "-o", str(tmp_path / "c.pt"), "--softmax", "full", *TINY)
    assert checkpoint.load(tmp_path / "c.pt")["model_config"]["output"] == "full"


def test_max_vocab_and_min_freq_read_the_rest_as_unknown(corpus: Path, tmp_path: Path) -> None:
    result = run("train", str(corpus), "-o", str(tmp_path / "k.pt"), "--max-vocab", "50", *TINY)
    assert result.exit_code == 0, result.stderr
    vocab = checkpoint.load(tmp_path / "k.pt")["vocab"]
    assert len(vocab["chars"]) == 50 and vocab["unk"]
    counts = {c: TEXT.count(c) for c in set(TEXT)}
    assert min(vocab["counts"]) >= sorted(counts.values(), reverse=True)[49]  # the 50 most frequent
    ev = run("eval", "perplexity", "-m", str(tmp_path / "k.pt"), str(corpus), "--json")
    assert ev.exit_code == 0, ev.stderr
    report = json.loads(ev.stdout)
    assert report["unknown"] == sum(n for c, n in counts.items() if c not in vocab["chars"]) > 0
    result = run("train", str(corpus), "-o", str(tmp_path / "m.pt"), "--min-freq", "5", *TINY)
    assert result.exit_code == 0
    assert all(n >= 5 for n in checkpoint.load(tmp_path / "m.pt")["vocab"]["counts"])


@pytest.mark.parametrize("args", [["--max-vocab", "0"], ["--softmax", "sparse"]])
def test_bad_options_are_usage_errors(corpus: Path, tmp_path: Path, args: list[str]) -> None:
    result = run("train", str(corpus), "-o", str(tmp_path / "x.pt"), *args, *TINY)
    assert result.exit_code == 2 and "Traceback" not in result.stderr


def test_resume_and_init_from_keep_the_head(adaptive: Path, corpus: Path, tmp_path: Path) -> None:
    result = run("train", str(corpus), "-o", str(adaptive), "--resume", str(adaptive), "--softmax", "full", *TINY)
    assert result.exit_code == 2 and "--softmax full differs from the checkpoint's adaptive" in result.stderr
    result = run("train", str(corpus), "-o", str(tmp_path / "f.pt"), "--init-from", str(adaptive),
                 "--max-vocab", "9", *TINY)
    assert result.exit_code == 2 and "--max-vocab applies to a new run" in result.stderr
    more = tmp_path / "more.txt"
    more.write_text(TEXT[:2000] + "龘龘龘\n", encoding="utf-8")  # a character the model lacks: grown
    result = run("train", str(more), "-o", str(tmp_path / "g.pt"), "--init-from", str(adaptive), *TINY)
    assert result.exit_code == 0, result.stderr
    grown = checkpoint.load(tmp_path / "g.pt")
    assert "龘" in grown["vocab"]["chars"] and grown["model_config"]["output"] == "adaptive"
    resumed = run("train", str(more), "-o", str(tmp_path / "g.pt"), "--resume", str(tmp_path / "g.pt"),
                  "--max-steps", "8", "-q", "--threads", "1")
    assert resumed.exit_code == 0, resumed.stderr


def test_every_consumer_of_probabilities(adaptive: Path, corpus: Path, tmp_path: Path) -> None:
    m = str(adaptive)
    held = tmp_path / "held.txt"
    held.write_text(cjk_text(600, 300, seed=2)[-300:], encoding="utf-8")
    plain = json.loads(run("eval", "perplexity", "-m", m, str(held), "--json").stdout)
    assert 0 < plain["nats_per_char"] < math.log(301) + 1
    dyn = run("eval", "perplexity", "-m", m, str(held), "--dynamic", "--json")
    assert dyn.exit_code == 0, dyn.stderr
    scored = run("eval", "score", "-m", m, str(held), "--json")
    assert scored.exit_code == 0 and all(math.isfinite(json.loads(line)["nats"]) for line in scored.stdout.splitlines())
    for extra in ([], ["--top-k", "5"], ["--top-p", "0.9"], ["--temperature", "0.5"], ["--beam", "3"]):
        gen = run("generate", "-m", m, "--prefix", TEXT[:3], "--length", "12", "--seed", "1", *extra)
        assert gen.exit_code == 0 and len(gen.stdout) >= 3, (extra, gen.stderr)
    done = run("complete", "-m", m, "--prefix", TEXT[:4], "--json")
    assert done.exit_code == 0, done.stderr
    assert all(0 < g["prob"] <= 1 for g in json.loads(done.stdout)["next"])
    for args in (["show", "-m", m, str(held)], ["context", "-m", m, str(held), "--lengths", "1,4"]):
        out = run("eval", *args)
        assert out.exit_code == 0, (args, out.stderr)
    web = run("export", "-m", m, "-o", str(tmp_path / "m.html"))
    assert web.exit_code == 0 and "head.tail.0.0.weight" in (tmp_path / "m.html").read_text(encoding="utf-8")
    st = run("export", "-m", m, "-o", str(tmp_path / "m.safetensors"))
    assert st.exit_code == 0
    again = run("eval", "perplexity", "-m", str(tmp_path / "m.safetensors"), str(held), "--json")
    assert json.loads(again.stdout)["nats_per_char"] == pytest.approx(plain["nats_per_char"], abs=1e-6)


def test_serve_answers_with_normalised_probabilities(adaptive: Path) -> None:
    """A real process: `serve --stdio` on the adaptive model, one next-characters request."""
    request = json.dumps({"op": "next", "prefix": TEXT[:5], "k": 400}) + "\n"
    done = subprocess.run([sys.executable, "-m", "charrnn", "serve", "--stdio", "-m", str(adaptive)], input=request,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.splitlines()[0])
    model, vocab, _ = checkpoint.load_model(adaptive)
    with torch.no_grad():
        logp, _ = model.log_probs(torch.as_tensor(vocab.encode(TEXT[:5]), dtype=torch.long)[None])
    want = logp[0, -1].double().exp()
    assert want.sum() == pytest.approx(1.0, abs=1e-5)
    assert len(answer["next"]) == vocab.size - 1  # every character but <unk>, with the model's probability
    for guess in answer["next"]:
        assert guess["prob"] == pytest.approx(float(want[vocab.chars.index(guess["char"])]), abs=1e-6)


def test_onnx_gives_the_models_log_probabilities(adaptive: Path, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    result = run("export", "-m", str(adaptive), "-o", str(tmp_path / "m.onnx"))
    assert result.exit_code == 0, result.stderr
    model, vocab, _ = checkpoint.load_model(adaptive)
    ids = vocab.encode(TEXT[:9])[None].astype(np.int64)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    h = np.zeros((1, 1, 16), dtype=np.float32)
    logits = session.run(None, {"ids": ids, "h": h, "c": h})[0]
    with torch.no_grad():
        want, _ = model.log_probs(torch.from_numpy(ids))
    assert np.abs(logits - want.numpy()).max() < 1e-4
    assert np.allclose(np.exp(logits).sum(-1), 1.0, atol=1e-5)


def test_large_vocabulary_defaults_apply_unless_given(corpus: Path, tmp_path: Path) -> None:
    from charrnn.config import LARGE_VOCAB

    small = ["--hidden", "16", "-b", "4", "-t", "16", "--max-steps", "6", "--val-every", "3"]  # no --embed-dim, -q
    result = run("train", str(corpus), "-o", str(tmp_path / "d.pt"), "--softmax", "adaptive", *small)
    assert result.exit_code == 0, result.stderr
    ckpt = checkpoint.load(tmp_path / "d.pt")
    settings = {**ckpt["train_config"], **ckpt["model_config"]}
    assert all(settings[name] == value for name, value in LARGE_VOCAB.items())
    assert "the model for a large vocabulary" in result.stderr
    result = run("train", str(corpus), "-o", str(tmp_path / "e.pt"), "--softmax", "adaptive", "--lr", "0.003",
                 *TINY)
    assert checkpoint.load(tmp_path / "e.pt")["train_config"]["lr"] == 0.003  # given: kept
    result = run("train", str(corpus), "-o", str(tmp_path / "f.pt"), "--softmax", "full", *TINY)
    assert checkpoint.load(tmp_path / "f.pt")["train_config"]["lr"] == 5e-3  # a full softmax: the usual defaults
