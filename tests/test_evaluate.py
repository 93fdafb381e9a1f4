"""Perplexity: identities, the worked example, invariance to streams/num_steps, <unk> targets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from charrnn.errors import DataError
from charrnn.inference.evaluate import EvalResult, evaluate, evaluate_sums
from charrnn.model.network import CharRNN, ModelConfig


class TableModel(nn.Module):
    """A stateless model: the next-character distribution is a fixed table row of the input id."""

    def __init__(self, probs: torch.Tensor) -> None:
        super().__init__()
        self.log_table = nn.Parameter(torch.log(probs.to(torch.float32)))
        self.config = ModelConfig(vocab_size=probs.shape[0])

    def begin_state(self, batch: int, device=None) -> torch.Tensor:
        return torch.zeros(0)

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.log_table[x.long()], state

    def nll(self, x: torch.Tensor, y: torch.Tensor, state: torch.Tensor,
            ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
        """What evaluate reads (CharRNN.nll): nats (B, T), 0 where ignored."""
        logits, state = self(x, state)
        return torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, ignore_index=ignore_index,
                                                 reduction="none"), state


def random_table(v: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(v, v, generator=g) + 0.05
    return p / p.sum(dim=1, keepdim=True)


def table_nats(probs: torch.Tensor, ids: np.ndarray) -> float:
    """Mean -log p(next | current) computed the slow, obvious way."""
    return float(np.mean([-math.log(probs[a, b].item()) for a, b in zip(ids[:-1], ids[1:], strict=True)]))


def test_worked_example() -> None:
    # vocabulary (a, b, c); p(b | a) = 0.5, p(c | b) = 0.25
    probs = torch.tensor([[0.25, 0.5, 0.25], [0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]])
    result = evaluate(TableModel(probs), np.array([0, 1, 2], dtype=np.uint8))
    assert result.chars == 2 and result.unknown == 0
    assert result.nats_per_char == pytest.approx((math.log(2) + math.log(4)) / 2, abs=1e-6)
    assert round(result.nats_per_char, 4) == 1.0397
    assert round(result.perplexity, 2) == 2.83
    assert result.perplexity == pytest.approx(2 * math.sqrt(2), rel=1e-6)
    assert result.bits_per_char == pytest.approx(1.5, abs=1e-6)  # (1 + 2) / 2 bits


@pytest.mark.parametrize("v", [2, 7, 30])
def test_uniform_model_has_perplexity_vocab_size(v: int) -> None:
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=v, cell="gru", hidden=8, layers=1))
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    ids = np.random.default_rng(0).integers(0, v, 300)
    result = evaluate(model, ids, streams=4, num_steps=16)
    assert result.perplexity == pytest.approx(v, rel=1e-5)
    assert result.nats_per_char == pytest.approx(math.log(v), rel=1e-6)
    assert result.chars == 299


def test_perfect_predictor_has_perplexity_one() -> None:
    v = 5
    probs = torch.full((v, v), 1e-7)
    for i in range(v):
        probs[i, (i + 1) % v] = 1.0
    probs = probs / probs.sum(1, keepdim=True)
    ids = np.arange(200) % v
    result = evaluate(TableModel(probs), ids)
    assert result.perplexity == pytest.approx(1.0, abs=1e-5)
    assert result.nats_per_char >= 0


def test_bits_and_to_dict() -> None:
    result = EvalResult(nats_per_char=1.3, chars=10, unknown=2)
    assert result.bits_per_char == pytest.approx(1.3 / math.log(2))
    assert result.perplexity == pytest.approx(math.exp(1.3))
    d = result.to_dict()
    assert d == {"perplexity": result.perplexity, "nats_per_char": 1.3, "bits_per_char": result.bits_per_char,
                 "chars": 10, "unknown": 2}


@pytest.mark.parametrize("n", [2, 3, 64, 1000, 1001])
def test_stateless_result_independent_of_streams_and_steps(n: int) -> None:
    v = 9
    probs = random_table(v)
    ids = np.random.default_rng(n).integers(0, v, n).astype(np.uint8)
    expected = table_nats(probs, ids)
    model = TableModel(probs)
    for streams in (1, 3, 64):
        for num_steps in (1, 5, 256):
            result = evaluate(model, ids, streams=streams, num_steps=num_steps)
            assert result.chars == n - 1, (streams, num_steps)
            assert result.nats_per_char == pytest.approx(expected, abs=1e-5), (streams, num_steps)


@pytest.mark.parametrize("cell", ["lstm", "scratch-gru"])
def test_single_stream_is_exact_single_pass(cell: str) -> None:
    torch.manual_seed(0)
    v = 6
    model = CharRNN(ModelConfig(vocab_size=v, cell=cell, hidden=12, layers=2, input="onehot")).eval()
    ids = np.random.default_rng(1).integers(0, v, 120)
    x = torch.from_numpy(ids).long()
    with torch.no_grad():
        logits, _ = model(x[None, :-1])
        expected = F.cross_entropy(logits[0], x[1:]).item()
    for num_steps in (1, 7, 256):  # the state is carried across the chunks
        result = evaluate(model, ids, streams=1, num_steps=num_steps)
        assert result.nats_per_char == pytest.approx(expected, abs=1e-5)
        assert result.chars == 119


def test_unknown_targets_are_skipped_and_counted() -> None:
    v = 5
    unk = 4
    probs = random_table(v, seed=3)
    ids = np.array([0, 1, 4, 2, 3, 4, 4, 0, 1, 2, 4, 3], dtype=np.uint8)
    pairs = [(a, b) for a, b in zip(ids[:-1], ids[1:], strict=True) if b != unk]
    expected = float(np.mean([-math.log(probs[a, b].item()) for a, b in pairs]))
    for streams in (1, 3, 64):
        result = evaluate(TableModel(probs), ids, unk_id=unk, streams=streams, num_steps=2)
        assert result.unknown == 4  # <unk> targets: every 4 but a first character
        assert result.chars == len(pairs) == 7
        assert result.nats_per_char == pytest.approx(expected, abs=1e-6)
    # without unk_id, every target counts
    plain = evaluate(TableModel(probs), ids)
    assert plain.chars == 11 and plain.unknown == 0


def test_only_unknown_targets_raises() -> None:
    probs = random_table(3)
    with pytest.raises(DataError):
        evaluate(TableModel(probs), np.array([0, 2, 2, 2]), unk_id=2)


@pytest.mark.parametrize("ids", [[], [1]])
def test_too_short_raises(ids: list[int]) -> None:
    with pytest.raises(DataError, match="at least 2"):
        evaluate(TableModel(random_table(3)), np.array(ids, dtype=np.int64))


def test_training_mode_restored() -> None:
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=4, cell="lstm", hidden=8, layers=2, dropout=0.5))
    ids = np.random.default_rng(0).integers(0, 4, 100)
    model.train()
    first = evaluate(model, ids, streams=2, num_steps=8)
    assert model.training
    assert all(m.training for m in model.modules())
    # dropout was off during evaluation: the result is reproducible
    second = evaluate(model, ids, streams=2, num_steps=8)
    assert first.nats_per_char == second.nats_per_char
    model.eval()
    evaluate(model, ids)
    assert not model.training


def test_training_mode_restored_after_error() -> None:
    model = TableModel(random_table(3))
    model.train()
    with pytest.raises(DataError):
        evaluate(model, np.array([0, 2, 2]), unk_id=2)
    assert model.training


def test_progress_reported_to_the_end() -> None:
    seen: list[tuple[int, int]] = []
    evaluate(TableModel(random_table(4)), np.arange(101) % 4, streams=4, num_steps=10,
             on_progress=lambda done, total: seen.append((done, total)))
    assert len(seen) == 3  # 100 pairs / 4 streams = 25 per stream, in chunks of 10
    assert seen[-1][0] == seen[-1][1] == 100
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_large_vocabulary_windows_are_shortened_without_changing_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    import charrnn.inference.evaluate as evaluate_module

    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=300, hidden=16, layers=1, embed_dim=8))
    ids = np.random.default_rng(0).integers(0, 300, 2000)
    full = evaluate(model, ids, streams=4, num_steps=64)
    seen: list[int] = []
    original = model.nll

    def spy(x: torch.Tensor, y: torch.Tensor, state: object, ignore_index: int) -> object:
        seen.append(x.shape[1])
        return original(x, y, state, ignore_index)

    monkeypatch.setattr(model, "nll", spy)
    monkeypatch.setattr(evaluate_module, "MAX_WINDOW_LOGITS", 4 * 10 * 300)  # at most 10 steps per window
    short = evaluate(model, ids, streams=4, num_steps=64)
    assert max(seen) == 10
    assert short.chars == full.chars and short.nats_per_char == pytest.approx(full.nats_per_char, abs=1e-6)


@pytest.mark.parametrize("streams,world", [(7, 3), (64, 2), (2, 4), (1, 1)])
def test_sharded_sums_add_up_to_one_process(streams: int, world: int) -> None:
    """Validation across processes: each scores its block of the streams, the sums of nats and of
    counts are those of one process (a shard with no stream contributes nothing)."""
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=11, cell="lstm", hidden=16, layers=2, embed_dim=8))
    ids = np.random.default_rng(1).integers(0, 11, size=1001)
    whole = evaluate(model, ids, unk_id=10, streams=streams, num_steps=13)
    sums = [evaluate_sums(model, ids, unk_id=10, streams=streams, num_steps=13, shard=(r, world))
            for r in range(world)]
    total, scored, unknown = (sum(col) for col in zip(*sums, strict=True))
    result = EvalResult.from_sums(total, scored, unknown)
    assert (result.chars, result.unknown) == (whole.chars, whole.unknown)
    assert result.nats_per_char == pytest.approx(whole.nats_per_char, rel=1e-6)
    if streams < world:
        assert sums[-1] == (0.0, 0, 0)


def test_from_sums_with_nothing_scored_is_an_error() -> None:
    with pytest.raises(DataError, match="no character could be scored"):
        EvalResult.from_sums(0.0, 0, 5)
