"""bench/transformer.py, the transformer baseline: the sliding-window scorer scores every character exactly once
(and equals the plain loss when the text fits one block), the model is causal, the optimizer decays only the
blocks' matrices, and the command trains and scores a tiny model end to end."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

PATH = Path(__file__).resolve().parents[1] / "bench" / "transformer.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_transformer", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


tf = _load()


def tiny(block: int = 16, vocab: int = 11, seed: int = 0):
    torch.manual_seed(seed)
    c = tf.GPTConfig("t", n_layer=2, n_head=2, n_embd=16, block=block, batch=4, lr=1e-3, warmup=2)
    model = tf.GPT(c, vocab)
    # GPT-2's initialisation makes every logit nearly equal; random weights make the tests sensitive
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


@settings(max_examples=300, deadline=None)
@given(n_pairs=st.integers(1, 300), block=st.integers(1, 40), stride=st.integers(1, 60))
def test_windows_score_every_pair_exactly_once(n_pairs: int, block: int, stride: int) -> None:
    starts, first = tf.windows(n_pairs, block, stride)
    length = min(block, n_pairs)
    assert starts[0] == 0 and first[0] == 0
    assert (starts >= 0).all() and (starts + length <= n_pairs).all()
    scored = np.concatenate([s + np.arange(f, length) for s, f in zip(starts, first, strict=True)])
    assert sorted(scored.tolist()) == list(range(n_pairs))
    # after the first window, every scored pair has at least length - stride pairs of context before it
    later = [s + f for s, f in zip(starts[1:], first[1:], strict=True)]
    assert all(p - s >= length - min(stride, length) for p, s in zip(later, starts[1:], strict=True))


def test_windows_reject_nonsense() -> None:
    for args in ((0, 4, 1), (5, 0, 1), (5, 4, 0)):
        with pytest.raises(ValueError):
            tf.windows(*args)


def test_score_equals_full_context_loss_when_the_text_fits_one_block() -> None:
    model = tiny(block=16)
    ids = np.random.default_rng(1).integers(0, 11, size=17).astype(np.uint8)  # 16 pairs: one block exactly
    x = torch.from_numpy(ids.astype(np.int64))
    with torch.no_grad():
        plain = F.cross_entropy(model(x[None, :-1])[0], x[1:]).item()
    for stride in (1, 3, 16):
        loss, count = tf.score(model, ids, stride=stride)
        assert count == 16
        assert loss == pytest.approx(plain, rel=1e-5)
    loss, count = tf.score(model, ids[:9], stride=2)  # shorter than a block
    with torch.no_grad():
        assert loss == pytest.approx(F.cross_entropy(model(x[None, :8])[0], x[1:9]).item(), rel=1e-5)
    assert count == 8


@pytest.mark.parametrize("stride", [1, 5, 8])
def test_score_is_each_character_with_its_window_context(stride: int) -> None:
    """Longer than a block: the scorer's mean equals a brute force that predicts each character once from the
    context its window gives it (all before it for the first block, else the window's start on)."""
    block, n = 8, 41
    model = tiny(block=block)
    ids = np.random.default_rng(2).integers(0, 11, size=n)
    starts, first = tf.windows(n - 1, block, stride)
    x = torch.from_numpy(ids)
    nll = []
    with torch.no_grad():
        for s, f in zip(starts, first, strict=True):
            logits = model(x[None, s:s + block])[0]
            nll += [F.cross_entropy(logits[j], x[s + j + 1]).item() for j in range(f, block)]
    loss, count = tf.score(model, ids, stride=stride, batch=3)
    assert count == n - 1 == len(nll)
    assert loss == pytest.approx(sum(nll) / len(nll), rel=1e-5)
    if stride == 1:  # every character from exactly min(block, its position) characters
        with torch.no_grad():
            brute = [F.cross_entropy(model(x[None, max(0, p + 1 - block):p + 1])[0, -1], x[p + 1]).item()
                     for p in range(n - 1)]
        assert loss == pytest.approx(sum(brute) / len(brute), rel=1e-5)


def test_score_skips_unknown_targets() -> None:
    model = tiny(block=8)
    ids = np.array([1, 2, 10, 3, 4, 10, 5, 6, 7, 1, 2, 3])
    _, count = tf.score(model, ids, stride=2, unk_id=10)
    assert count == len(ids) - 1 - 2


def test_model_is_causal() -> None:
    model = tiny(block=16)
    x = torch.from_numpy(np.random.default_rng(3).integers(0, 11, size=(2, 16)))
    with torch.no_grad():
        before = model(x)
        for k in (0, 7, 15):
            changed = x.clone()
            changed[:, k] = (changed[:, k] + 1) % 11
            after = model(changed)
            assert torch.allclose(after[:, :k], before[:, :k], atol=1e-6)
            assert not torch.allclose(after[:, k:], before[:, k:])


def test_model_rejects_more_than_a_block() -> None:
    with pytest.raises(ValueError, match="block size"):
        tiny(block=8)(torch.zeros(1, 9, dtype=torch.long))


def test_weight_decay_only_on_the_blocks_matrices() -> None:
    model = tiny()
    decay, rest = tf.make_optimizer(model).param_groups
    assert decay["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0
    assert model.head.weight is model.tok.weight  # tied
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].startswith("blocks.") and p.dim() == 2 for p in decay["params"])
    others = {names[id(p)] for p in rest["params"]}
    assert {"tok.weight", "pos.weight", "ln_f.weight", "blocks.0.ln1.weight", "blocks.0.attn.qkv.bias"} <= others
    assert len(decay["params"]) + len(rest["params"]) == len(list(model.parameters()))


def test_learning_rate_warms_up_then_decays_to_a_tenth() -> None:
    c = tf.GPTConfig("t", n_layer=1, n_head=1, n_embd=8, block=4, batch=2, lr=1e-3, warmup=10)
    assert [tf.lr_at(c, s, 0.0) for s in (0, 4, 9)] == pytest.approx([1e-4, 5e-4, 1e-3])
    assert tf.lr_at(c, 10, 0.0) == pytest.approx(1e-3)
    assert tf.lr_at(c, 500, 0.5) == pytest.approx(0.55e-3)
    assert tf.lr_at(c, 1000, 1.0) == pytest.approx(1e-4)


def test_training_lowers_the_loss() -> None:
    torch.manual_seed(0)
    model = tf.GPT(tf.GPTConfig("t", n_layer=1, n_head=2, n_embd=16, block=8, batch=8, lr=1e-2, warmup=5), 11)
    ids = np.array([0, 1, 2, 3, 4, 5] * 50)  # a cycle: easy to learn
    before, _ = tf.score(model, ids[:60])
    stats = tf.train_for(model, ids, max_steps=80)
    after, _ = tf.score(model, ids[:60])
    assert stats["steps"] == 80 and math.isfinite(stats["train_loss"])
    assert before > 2.0 and after < 0.5


def test_command_trains_and_scores_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog.\n" * 60, encoding="utf-8")
    tf.main([str(text), "--config", "nanogpt-cpu", "--tiny", "--seconds", "0.3", "--json"])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 and lines[1]["best"] == "nanogpt-cpu"
    row = lines[0]
    val = round(len(text.read_text()) * 0.1)
    assert row["val_chars"] == val - 1  # every held-out character after the first, once
    assert row["steps"] >= 1 and math.isfinite(row["val_nats_per_char"]) and row["parameters"] > 0
    assert row["precision"] in ("fp32", "bf16")


def test_benchmark_row_group(tmp_path: Path) -> None:
    """bench/run.py's row group: the script in its own process, then charrnn's and the baseline's losses and the
    difference."""
    text = tmp_path / "t.txt"
    text.write_text("to be or not to be, that is the question.\n" * 60, encoding="utf-8")
    b = tf.bench_baseline(text, 0.3, every=False, tiny=True)
    assert [r["name"] for r in b["configs"]] == [tf.BEST] and b["best"]["name"] == tf.BEST
    quality = {"steps": 7, "parameters": 720834, "chars_per_s": 1234, "val_nats_per_char": 1.25}
    lines = tf.baseline_markdown(b, quality)
    assert lines[2].startswith("| charrnn") and lines[2].endswith("| 720,834 | 7 | 1,234 | 1.2500 |")
    assert "transformer baseline (best of 1 configuration)" in lines[3]
    diff = b["best"]["val_nats_per_char"] - 1.25
    assert lines[4].endswith(f"| {diff:+.4f} |")
    assert len(lines) == 5
    two = {**b, "configs": [b["best"], {**b["best"], "name": "other", "val_nats_per_char": 9.0}]}
    lines = tf.baseline_markdown(two, None)
    assert "best of 2 configurations" in lines[2] and len(lines) == 5 and "other" in lines[4]
