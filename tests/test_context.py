"""charrnn.analysis.context: truncated contexts as minibatch rows, the full-context pass, perturbations, the curve."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charrnn.analysis.context import (
    ContextPoint,
    context_curve,
    full_context_losses,
    parse_lengths,
    perturb_rows,
    pick_targets,
    start_state,
    truncated_losses,
)
from charrnn.errors import DataError, UsageError
from charrnn.model.network import CharRNN, ModelConfig

V = 11


def tiny(cell: str = "lstm", layers: int = 1, hidden: int = 16, seed: int = 0) -> CharRNN:
    torch.manual_seed(seed)
    return CharRNN(ModelConfig(vocab_size=V, cell=cell, hidden=hidden, layers=layers)).eval()


def text_ids(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, V, n).astype(np.int32)


def alone(model: CharRNN, ids: np.ndarray, t: int, n: int, boundary: np.ndarray | None = None) -> float:
    """The loss of ids[t] after reading ids[t-n:t] alone, one row, from the begin (or record-start) state."""
    with torch.no_grad():
        state = model.begin_state(1)
        if boundary is not None:
            _, state = model(torch.as_tensor(boundary[None], dtype=torch.int64), state)
        logits, _ = model(torch.as_tensor(ids[t - n : t][None], dtype=torch.int64), state)
        return F.cross_entropy(logits[0, -1:], torch.tensor([int(ids[t])])).item()


@pytest.mark.parametrize("cell,layers", [("lstm", 1), ("lstm", 2), ("gru", 2), ("rnn", 1), ("scratch-lstm", 2)])
@pytest.mark.parametrize("n", [1, 3, 17])
def test_a_context_row_scores_as_its_characters_read_alone(cell: str, layers: int, n: int) -> None:
    model, ids = tiny(cell, layers), text_ids(120)
    targets = np.array([20, 21, 57, 100, 119])
    got = truncated_losses(model, ids, targets, n)
    want = [alone(model, ids, int(t), n) for t in targets]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_records_model_reads_each_context_from_its_record_start_state() -> None:
    model, ids, boundary = tiny("gru", 2), text_ids(80), np.array([3, 4], dtype=np.int64)
    targets = np.array([30, 31, 79])
    got = truncated_losses(model, ids, targets, 6, boundary_ids=boundary)
    np.testing.assert_allclose(got, [alone(model, ids, int(t), 6, boundary) for t in targets], rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, truncated_losses(model, ids, targets, 6))  # the start state matters
    h = start_state(model, boundary, rows=3)
    assert h.shape == (2, 3, 16) and torch.equal(h[:, 0], h[:, 2])


def test_several_windows_per_row_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    model, ids, targets = tiny("lstm", 2), text_ids(200), np.array([60, 150, 199])
    whole = truncated_losses(model, ids, targets, 50)
    monkeypatch.setattr("charrnn.analysis.context.MAX_WINDOW_FLOATS", 3 * 64 * 7)  # 7 columns per call
    np.testing.assert_allclose(truncated_losses(model, ids, targets, 50), whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("streams", [1, 3, 64])
def test_full_context_is_the_carried_state_from_the_start(streams: int) -> None:
    model, ids = tiny("lstm", 2), text_ids(300)
    targets = np.array([5, 6, 99, 100, 101, 250, 299])
    got = full_context_losses(model, ids, targets, warm=len(ids), streams=streams)  # every stream reads from 0
    np.testing.assert_allclose(got, [alone(model, ids, int(t), int(t)) for t in targets], rtol=1e-5, atol=1e-5)


def test_full_context_streams_start_warm_characters_early() -> None:
    model, ids = tiny("rnn", 1), text_ids(400)
    targets = np.array([150, 260, 399])
    got = full_context_losses(model, ids, targets, warm=40, streams=4)  # pieces of 100 inputs, read from 60, 160...
    begins = [max(0, ((int(t) - 1) // 100) * 100 - 40) for t in targets]
    np.testing.assert_allclose(got, [alone(model, ids, int(t), int(t) - b) for t, b in zip(targets, begins,
                                                                                           strict=True)], rtol=1e-5)


def test_perturbations_keep_the_near_characters_and_permute_the_far() -> None:
    rows = np.arange(24).reshape(2, 12)
    rev = perturb_rows(rows, 4, "reverse")
    assert rev[0].tolist() == [7, 6, 5, 4, 3, 2, 1, 0, 8, 9, 10, 11]
    shuf = perturb_rows(rows, 4, "shuffle", np.random.default_rng(3))
    assert (shuf[:, 8:] == rows[:, 8:]).all()
    assert all(sorted(s[:8]) == sorted(r[:8]) for s, r in zip(shuf, rows, strict=True))
    assert not (shuf[:, :8] == rows[:, :8]).all()
    assert (perturb_rows(rows, 4, "shuffle", np.random.default_rng(3)) == shuf).all()  # seeded
    assert (perturb_rows(rows, 11, "reverse") == rows).all()  # one far character: nothing to move
    with pytest.raises(UsageError):
        perturb_rows(rows, 2, "sort")


def test_targets_are_spread_evenly_over_known_characters() -> None:
    ids = np.zeros(1000, dtype=np.int32)
    ids[::7] = 5  # the <unk> id here
    picked = pick_targets(ids, 100, 50, unk_id=5)
    assert len(picked) == 50 and picked.min() >= 100 and (ids[picked] != 5).all()
    assert (np.diff(picked) > 0).all() and picked.max() > 950
    assert np.array_equal(picked, pick_targets(ids, 100, 50, unk_id=5))
    assert len(pick_targets(ids, 990, 50, unk_id=5)) == 9  # fewer candidates than asked: all of them


def test_a_model_without_memory_gains_nothing_from_context() -> None:
    """With W_hh = 0 a one-layer RNN's prediction depends on the last character only: every length
    scores like the full context."""
    model = tiny("rnn", 1)
    with torch.no_grad():
        model.rnn.weight_hh_l0.zero_()
    curve = context_curve(model, text_ids(600), lengths=(1, 4, 30), targets=100)
    assert curve.targets == 100
    for p in curve.points:
        assert abs(p.increase) < 1e-5 and abs(p.nats_per_char - curve.full) < 1e-5


def test_the_curve_reports_each_length_on_the_same_targets() -> None:
    model, ids = tiny("lstm", 1), text_ids(500)
    seen, full_seen = [], []
    curve = context_curve(model, ids, lengths=(1, 10, 100), targets=40, on_point=lambda p, s: seen.append(p),
                          on_full=lambda loss, n, s: full_seen.append((loss, n)))
    assert seen == curve.points and [p.length for p in curve.points] == [1, 10, 100]
    assert full_seen == [(curve.full, 40)]
    picked = pick_targets(ids, 100, 40)
    full = full_context_losses(model, ids, picked, 200)
    for p in curve.points:
        assert p.targets == 40
        np.testing.assert_allclose(p.nats_per_char, truncated_losses(model, ids, picked, p.length).mean(), rtol=1e-6)
        np.testing.assert_allclose(p.increase, p.nats_per_char - full.mean(), rtol=1e-5, atol=1e-7)
    assert p.to_dict() == {"length": 100, "nats_per_char": p.nats_per_char, "increase": p.increase, "targets": 40}


def test_perturbing_changes_only_lengths_beyond_d() -> None:
    model, ids = tiny("lstm", 1), text_ids(400)
    plain = context_curve(model, ids, lengths=(2, 5, 50), targets=30)
    rev = context_curve(model, ids, lengths=(2, 5, 50), targets=30, perturb="reverse", beyond=5)
    assert rev.points[:2] == plain.points[:2] and rev.full == plain.full
    assert rev.points[2].nats_per_char != plain.points[2].nats_per_char


def test_percent_is_the_increase_over_the_full_loss() -> None:
    assert ContextPoint(10, 2.2, 0.2, 5).percent == pytest.approx(10.0)


@pytest.mark.parametrize("spec,want", [("1,2,5", (1, 2, 5)), ("10 1  1,3", (1, 3, 10)), ("100000", (100000,))])
def test_parse_lengths(spec: str, want: tuple[int, ...]) -> None:
    assert parse_lengths(spec) == want


@pytest.mark.parametrize("spec", ["", " , ", "1,x", "0", "-3", "2.5", "100001", "1,,2", "1,2,", ",1"])
def test_bad_lengths_are_usage_errors(spec: str) -> None:
    with pytest.raises(UsageError, match="--lengths"):
        parse_lengths(spec)


def test_texts_that_cannot_be_scored_are_data_errors() -> None:
    model = tiny()
    with pytest.raises(DataError, match="too short for context length 100"):
        context_curve(model, text_ids(100), lengths=(1, 100))
    with pytest.raises(DataError, match="unknown"):
        context_curve(model, np.full(300, 4, dtype=np.int32), lengths=(1, 10), unk_id=4)
    ids = text_ids(300)
    ids[10:] = 4
    with pytest.raises(DataError, match="no character after the first 10"):
        context_curve(model, ids, lengths=(1, 10), unk_id=4)
    with pytest.raises(UsageError, match="--beyond"):
        context_curve(model, text_ids(300), lengths=(1, 10), perturb="shuffle", beyond=9)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lengths=st.lists(st.integers(1, 40), min_size=1, max_size=3, unique=True),
       count=st.integers(1, 6), extra=st.integers(1, 80), cell=st.sampled_from(["lstm", "gru", "rnn"]),
       perturb=st.sampled_from([None, "shuffle", "reverse"]), seed=st.integers(0, 3))
def test_property_every_point_is_the_mean_of_its_rows_read_alone(lengths: list[int], count: int, extra: int,
                                                                 cell: str, perturb: str | None, seed: int) -> None:
    model, longest = tiny(cell, 1, hidden=8, seed=seed), max(lengths)
    ids = text_ids(longest + extra, seed)
    beyond = 0 if perturb is None else min(lengths) // 2
    if perturb is not None and beyond >= longest - 1:
        perturb = None
    curve = context_curve(model, ids, lengths=tuple(sorted(lengths)), targets=count, perturb=perturb, beyond=beyond,
                          seed=seed)
    picked = pick_targets(ids, longest, count)
    assert curve.targets == len(picked) == min(count, extra)
    assert [p.length for p in curve.points] == sorted(lengths)
    assert curve.full == pytest.approx(full_context_losses(model, ids, picked, 2 * longest).mean(), rel=1e-6)
    for p in curve.points:
        assert np.isfinite(p.nats_per_char) and p.targets == len(picked)
        assert p.increase == pytest.approx(p.nats_per_char - curve.full, rel=1e-5, abs=1e-6)
        if perturb is None or p.length <= beyond + 1:
            want = np.mean([alone(model, ids, int(t), p.length) for t in picked])
            assert p.nats_per_char == pytest.approx(want, rel=1e-5, abs=1e-6)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 150), warm=st.integers(1, 60), streams=st.integers(1, 9), count=st.integers(1, 9),
       seed=st.integers(0, 3))
def test_property_full_context_reads_from_the_start_of_its_piece_minus_warm(n: int, warm: int, streams: int,
                                                                          count: int, seed: int) -> None:
    """The documented layout: inputs ids[:last target] cut into S = min(streams, ceil(end / warm)) pieces;
    a target is read from warm characters before the start of its piece, so it sees >= min(t, warm)."""
    model, ids = tiny("lstm", 1, hidden=8, seed=seed), text_ids(n, seed)
    picked = pick_targets(ids, 1, count)
    got = full_context_losses(model, ids, picked, warm, streams=streams)
    end = int(picked[-1])
    piece = -(-end // max(1, min(streams, -(-end // warm))))
    for t, loss in zip(picked.tolist(), got, strict=True):
        begin = max(0, (t - 1) // piece * piece - warm)
        assert t - begin >= min(t, warm)
        assert loss == pytest.approx(alone(model, ids, t, t - begin), rel=1e-5, abs=1e-6)
