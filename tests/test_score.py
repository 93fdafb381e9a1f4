"""Per-record scoring: equal to a one-record-at-a-time reference, order kept, masks, <unk>, end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from charrnn.data.partition import find_records
from charrnn.data.vocab import Vocab
from charrnn.inference.score import Scorer, evaluate_records, score_stream, score_texts
from charrnn.model.network import CharRNN, ModelConfig

TEXT = "the cat sat\non the mat\nand the dog\nsaw it all\n"


@pytest.fixture(params=["lstm", "gru"])
def scorer(request: pytest.FixtureRequest) -> Scorer:
    vocab = Vocab.build(TEXT)
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=vocab.size, cell=request.param, hidden=16, layers=2, embed_dim=8)).eval()
    return Scorer(model, vocab, "\n")


def reference(scorer: Scorer, record: str, end: bool = True) -> tuple[float, int, int]:
    """One record alone, through the plain forward pass from the zero state."""
    v = scorer.vocab
    full = scorer.boundary + record + (scorer.boundary if end else "")
    ids = torch.as_tensor(v.encode(full, unk="map").astype(np.int64))[None]
    if ids.shape[1] == len(scorer.boundary):
        return 0.0, 0, 0  # an empty record without its end: nothing to predict
    with torch.no_grad():
        logits, _ = scorer.model(ids[:, :-1])
    nll = F.cross_entropy(logits[0], ids[0, 1:], reduction="none")[len(scorer.boundary) - 1 :]
    targets = ids[0, 1:][len(scorer.boundary) - 1 :]
    known = targets != v.unk_id
    return float(nll[known].sum()), int(known.sum()), int((~known).sum())


RECORDS = ["the cat", "", "a", "on the mat and the dog saw it all", "zz\u00e9", "sat", "the cat"]


@pytest.mark.parametrize("end", [True, False])
def test_matches_reference_in_order(scorer: Scorer, end: bool) -> None:
    scores = score_texts(scorer, RECORDS, end=end, max_rows=3, num_steps=5)  # several buckets and windows
    for record, s in zip(RECORDS, scores, strict=True):
        nats, chars, unknown = reference(scorer, record, end)
        assert s.chars == chars and s.unknown == unknown
        assert s.nats == pytest.approx(nats, rel=1e-5, abs=1e-6)
    assert scores[0].nats == pytest.approx(scores[-1].nats)  # the same record, the same score


def test_end_and_empty(scorer: Scorer) -> None:
    with_end, without = score_texts(scorer, ["the", ""], end=True), score_texts(scorer, ["the", ""], end=False)
    assert with_end[0].chars == 4 and without[0].chars == 3  # the end boundary is a target
    assert with_end[1].chars == 1 and with_end[1].nats_per_char is not None
    assert without[1].chars == 0 and without[1].nats_per_char is None and without[1].bits_per_char is None
    assert without[1].to_dict()["nats"] == 0.0


def test_unknown_only(scorer: Scorer) -> None:
    s = score_texts(scorer, ["\u00e9\u00e9"], end=False)[0]
    assert s.chars == 0 and s.unknown == 2 and s.nats_per_char is None
    s = score_texts(scorer, ["\u00e9\u00e9"], end=True)[0]
    assert s.chars == 1 and s.unknown == 2
    assert s.bits_per_char == pytest.approx(s.nats_per_char / math.log(2))


def test_multi_char_boundary(scorer: Scorer) -> None:
    para = Scorer(scorer.model, scorer.vocab, "\n\n")
    s = score_texts(para, ["the cat"])[0]
    nats, chars, _ = reference(para, "the cat")
    assert s.chars == chars == 9 and s.nats == pytest.approx(nats, rel=1e-5)


def test_stream_keeps_order_and_models(scorer: Scorer) -> None:
    other = Scorer(CharRNN(ModelConfig(vocab_size=scorer.vocab.size, hidden=8, layers=1)).eval(), scorer.vocab, "\n")
    windows = list(score_stream([scorer, other], [["a", "the cat"], [], ["sat"]], window=1))
    assert [len(w) for w in windows] == [1, 1, 1]
    out = [pair for w in windows for pair in w]
    assert [r for r, _ in out] == ["a", "the cat", "sat"]
    assert all(len(scores) == 2 for _, scores in out)
    assert out[1][1][0].nats == pytest.approx(score_texts(scorer, ["the cat"])[0].nats)


def test_evaluate_records_is_token_weighted(scorer: Scorer) -> None:
    ids = scorer.vocab.encode(TEXT)
    d = scorer.vocab.encode("\n").astype(np.int64)
    starts, lengths = find_records(ids, d)
    result = evaluate_records(scorer.model, ids, starts, lengths, d, unk_id=scorer.vocab.unk_id)
    texts = TEXT.split("\n")[:-1]
    singles = score_texts(scorer, texts)
    assert result.chars == sum(s.chars for s in singles) == len(TEXT)
    assert result.nats_per_char == pytest.approx(sum(s.nats for s in singles) / result.chars, rel=1e-6)


@given(st.lists(st.text(alphabet="the cazé\t", max_size=9), min_size=1, max_size=7), st.booleans(),
       st.integers(1, 4), st.integers(1, 6))
@settings(max_examples=25, deadline=None)
def test_any_records_match_the_reference(records: list[str], end: bool, max_rows: int, num_steps: int) -> None:
    vocab = Vocab.build(TEXT)
    torch.manual_seed(1)
    model = CharRNN(ModelConfig(vocab_size=vocab.size, cell="gru", hidden=8, layers=1, embed_dim=4)).eval()
    scorer = Scorer(model, vocab, "\n")
    for record, s in zip(records, score_texts(scorer, records, end=end, max_rows=max_rows, num_steps=num_steps),
                         strict=True):
        nats, chars, unknown = reference(scorer, record, end)
        assert (s.chars, s.unknown) == (chars, unknown)
        assert s.nats == pytest.approx(nats, rel=1e-5, abs=1e-5)


def test_compare_charges_what_a_model_cannot_read() -> None:
    """The issue's case: a model that reads 1 of 17 characters scores it well, and must not win."""
    from charrnn.inference.score import UNKNOWN_NATS, RecordScore, compare

    reads_all = RecordScore(nats=17 * 2.0, chars=17, unknown=0)
    reads_one = RecordScore(nats=0.5, chars=1, unknown=16)
    assert reads_one.nats_per_char < reads_all.nats_per_char  # what ranked it first before
    costs, best = compare([reads_one, reads_all])
    assert best == 1
    assert costs == [pytest.approx((0.5 + 16 * UNKNOWN_NATS) / 17), pytest.approx(2.0)]
    assert UNKNOWN_NATS == pytest.approx(13.9236, abs=1e-4)
    assert compare([RecordScore(0.0, 0, 0), RecordScore(0.0, 0, 0)]) == ([None, None], None)
    only_unknown = RecordScore(0.0, 0, 3)
    assert compare([only_unknown, reads_all])[1] == 1 and only_unknown.cost == pytest.approx(UNKNOWN_NATS)


def test_one_long_record_costs_a_window_not_int64_copies() -> None:
    """Scoring one long record holds one window of inputs and targets, not int64 copies of the whole
    record (inputs, targets, the record with its boundaries: 8 bytes per character each). numpy's
    allocations are traced by tracemalloc; the ids themselves (1 byte per character here) exist before."""
    import tracemalloc

    from charrnn.inference.score import score_rows

    vocab = Vocab.build(TEXT)
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=vocab.size, cell="gru", hidden=8, layers=1, embed_dim=4)).eval()
    scorer = Scorer(model, vocab, "\n")
    record = (TEXT.replace("\n", " ") * 500)[:20_000]
    ids = vocab.encode(record)
    assert ids.dtype == np.uint8
    tracemalloc.start()
    try:
        (s,) = score_rows(model, [ids], scorer.boundary_ids(), unk_id=vocab.unk_id)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert s.chars == len(record) + 1
    assert peak < 256 * 1024, peak  # before: 0.65 MB (33 bytes per character)
    short = score_texts(scorer, [record[:3000]], num_steps=64)[0]
    assert short.nats == pytest.approx(reference(scorer, record[:3000])[0], rel=1e-5)
