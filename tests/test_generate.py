"""Sampling: reproducibility, greedy decoding, top-k/top-p limits, <unk> never emitted, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from charrnn.data.vocab import UNK_CHAR, Vocab
from charrnn.errors import UsageError
from charrnn.inference.generate import Sampling, draw, generate, next_ids
from charrnn.model.network import CharRNN, ModelConfig

TEXT = "the quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs.\n"


@pytest.fixture
def vocab() -> Vocab:
    return Vocab.build(TEXT)


def make_model(vocab: Vocab, cell: str = "lstm", seed: int = 0, input: str = "embedding") -> CharRNN:
    torch.manual_seed(seed)
    model = CharRNN(ModelConfig(vocab_size=vocab.size, cell=cell, hidden=16, layers=2, input=input, embed_dim=8))
    with torch.no_grad():  # sharper than the default initialisation, so that samples differ visibly
        model.head.weight.mul_(4)
    return model


def sample(model: CharRNN, vocab: Vocab, prefix: str, length: int, sampling: Sampling | None = None,
           seed: int = 0, num_samples: int = 1) -> list[str]:
    ids = vocab.encode(prefix)
    steps = list(generate(model, vocab, ids, length, sampling or Sampling(), seed=seed, num_samples=num_samples))
    assert all(len(chars) == num_samples for chars in steps)
    return ["".join(chars[i] for chars in steps) for i in range(num_samples)]


def greedy_reference(model: CharRNN, vocab: Vocab, prefix: str, length: int) -> str:
    """Argmax continuation by re-running the full forward pass over the whole text each time."""
    ids = [int(i) for i in vocab.encode(prefix)]
    out = []
    with torch.no_grad():
        for _ in range(length):
            logits, _ = model(torch.tensor([ids]))
            last = logits[0, -1].clone()
            last[vocab.unk_id] = float("-inf")
            nxt = int(last.argmax())
            ids.append(nxt)
            out.append(vocab.chars[nxt])
    return "".join(out)


@pytest.mark.parametrize("prefix", ["the ", ""])
def test_same_seed_same_text_other_seed_other_text(vocab: Vocab, prefix: str) -> None:
    model = make_model(vocab)
    a = sample(model, vocab, prefix, 200, seed=1)[0]
    b = sample(model, vocab, prefix, 200, seed=1)[0]
    c = sample(model, vocab, prefix, 200, seed=2)[0]
    assert len(a) == 200
    assert a == b
    assert a != c
    assert set(a) <= set(vocab.chars)


@pytest.mark.parametrize("cell", ["lstm", "gru", "scratch-rnn"])
def test_greedy_is_argmax_continuation(vocab: Vocab, cell: str) -> None:
    model = make_model(vocab, cell)
    model.eval()
    expected = greedy_reference(model, vocab, "the qu", 40)
    got = sample(model, vocab, "the qu", 40, Sampling(greedy=True), seed=5)[0]
    assert got == expected
    # greedy ignores the seed
    assert sample(model, vocab, "the qu", 40, Sampling(greedy=True), seed=6)[0] == expected


def test_length_counts_only_generated_chars(vocab: Vocab) -> None:
    model = make_model(vocab)
    for prefix in ("", "a", "the lazy dog"):
        for length in (0, 1, 17):
            steps = list(generate(model, vocab, vocab.encode(prefix), length))
            assert len(steps) == length


def test_top_k_one_equals_greedy(vocab: Vocab) -> None:
    model = make_model(vocab, "gru")
    greedy = sample(model, vocab, "jumps ", 60, Sampling(greedy=True))[0]
    for seed in (0, 1, 2):
        assert sample(model, vocab, "jumps ", 60, Sampling(top_k=1, temperature=1.5), seed=seed)[0] == greedy


def test_tiny_top_p_equals_greedy(vocab: Vocab) -> None:
    model = make_model(vocab, "gru")
    greedy = sample(model, vocab, "jumps ", 60, Sampling(greedy=True))[0]
    for seed in (0, 1, 2):
        assert sample(model, vocab, "jumps ", 60, Sampling(top_p=1e-6), seed=seed)[0] == greedy


def test_low_temperature_approaches_greedy(vocab: Vocab) -> None:
    model = make_model(vocab, "gru")
    greedy = sample(model, vocab, "box ", 50, Sampling(greedy=True))[0]
    assert sample(model, vocab, "box ", 50, Sampling(temperature=1e-4), seed=3)[0] == greedy


@pytest.mark.parametrize("temperature", [1e-30, 1e-40, 1e-45])
def test_tiny_temperature_is_greedy_not_nan(vocab: Vocab, temperature: float) -> None:
    """Regression: logits / temperature overflowed to inf for tiny temperatures (accepted by
    Sampling), softmax gave NaN and torch.multinomial raised a RuntimeError."""
    model = make_model(vocab, "gru")
    greedy = sample(model, vocab, "box ", 30, Sampling(greedy=True))[0]
    assert sample(model, vocab, "box ", 30, Sampling(temperature=temperature), seed=3)[0] == greedy
    assert sample(model, vocab, "box ", 30, Sampling(temperature=temperature, top_p=0.9), seed=3)[0] == greedy


def test_huge_temperature_is_nearly_uniform(vocab: Vocab) -> None:
    model = make_model(vocab, "gru")
    text = sample(model, vocab, "box ", 2000, Sampling(temperature=1e30), seed=0)[0]
    assert len(set(text)) == len(vocab.chars)  # every character turns up, <unk> never


def test_next_ids_top_k_and_top_p_restrict_support() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(4000, -1)
    g = torch.Generator().manual_seed(0)
    top2 = next_ids(logits, Sampling(top_k=2), g)
    assert set(top2.tolist()) == {0, 1}
    # top_p 0.7: tokens 0 (0.5) and 1 (0.3 reaches 0.8 >= 0.7) stay, the rest go
    top_p = next_ids(logits, Sampling(top_p=0.7), g)
    assert set(top_p.tolist()) == {0, 1}
    share0 = (top_p == 0).float().mean().item()
    assert 0.55 < share0 < 0.70  # renormalised 0.5 / 0.8 = 0.625
    full = next_ids(logits, Sampling(), g)
    assert set(full.tolist()) == {0, 1, 2, 3}
    assert torch.equal(next_ids(logits[:3], Sampling(greedy=True), g), torch.zeros(3, dtype=torch.long))


def test_never_emits_unk(vocab: Vocab) -> None:
    model = make_model(vocab)
    with torch.no_grad():
        model.head.bias[vocab.unk_id] = 1e4  # the model wants nothing but <unk>
    for sampling in (Sampling(), Sampling(greedy=True), Sampling(top_k=3), Sampling(top_p=0.5),
                     Sampling(temperature=5.0)):
        for prefix in ("", "fox"):
            text = sample(model, vocab, prefix, 100, sampling, num_samples=2)
            for t in text:
                assert len(t) == 100
                assert UNK_CHAR not in t


def test_prefix_with_unk_id_is_accepted(vocab: Vocab) -> None:
    model = make_model(vocab)
    ids = vocab.encode("fox \u00e9", unk="map")
    steps = list(generate(model, vocab, ids, 10, seed=0))
    assert len(steps) == 10 and UNK_CHAR not in "".join(c[0] for c in steps)


@pytest.mark.parametrize(
    "kwargs",
    [{"temperature": 0.0}, {"temperature": -1.0}, {"temperature": float("nan")}, {"temperature": float("inf")},
     {"top_k": 0}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_p": -0.1}, {"top_p": float("nan")}],
)
def test_sampling_validation(kwargs: dict) -> None:
    with pytest.raises(UsageError):
        Sampling(**kwargs)


def test_sampling_accepts_limits() -> None:
    assert Sampling(top_p=1.0).top_p == 1.0
    assert Sampling(top_k=1).top_k == 1


def test_generate_argument_validation(vocab: Vocab) -> None:
    model = make_model(vocab)
    with pytest.raises(UsageError):
        list(generate(model, vocab, vocab.encode("a"), -1))
    with pytest.raises(UsageError):
        list(generate(model, vocab, vocab.encode("a"), 5, num_samples=0))


def test_empty_prefix_draws_from_character_frequencies() -> None:
    vocab = Vocab.build("aaaaaaaaab")
    model = make_model(vocab, "rnn")
    firsts = [next(iter(generate(model, vocab, np.array([], dtype=np.uint8), 1, seed=s)))[0] for s in range(200)]
    assert set(firsts) <= {"a", "b"}
    assert 140 < firsts.count("a") < 200  # 90% 'a'


@pytest.mark.parametrize("num_samples", [1, 3])
def test_num_samples(vocab: Vocab, num_samples: int) -> None:
    model = make_model(vocab)
    steps = list(generate(model, vocab, vocab.encode("the "), 30, seed=4, num_samples=num_samples))
    assert len(steps) == 30
    assert all(isinstance(chars, list) and len(chars) == num_samples for chars in steps)
    assert all(isinstance(c, str) and len(c) == 1 for chars in steps for c in chars)
    if num_samples > 1:
        texts = ["".join(chars[i] for chars in steps) for i in range(num_samples)]
        assert len(set(texts)) > 1  # independent samples


def test_greedy_samples_are_identical(vocab: Vocab) -> None:
    model = make_model(vocab)
    texts = sample(model, vocab, "dog", 25, Sampling(greedy=True), num_samples=3)
    assert texts[0] == texts[1] == texts[2] == greedy_reference(model.eval(), vocab, "dog", 25)


# --- records: stop strings, novelty, beam search ------------------------------------------------

from charrnn.errors import DataError  # noqa: E402
from charrnn.inference.generate import Stops, beam_search, generate_samples, stream_samples  # noqa: E402


def test_stops_validation() -> None:
    with pytest.raises(UsageError, match="--stop must not be empty"):
        Stops(("\n", ""), max_length=5)
    with pytest.raises(UsageError, match="--min-length"):
        Stops(("\n",), max_length=5, min_length=6)
    stops = Stops(("\n", "xy"), max_length=6, min_length=2)
    assert stops.ended("a\n") is None  # too short to end
    assert stops.ended("ab\n") == "ab" and stops.ended("abxy") == "ab"
    assert stops.ended("abcdef") == "abcdef" and stops.ended("abcde") is None


def test_samples_end_at_stop(vocab: Vocab) -> None:
    model = make_model(vocab)
    stops = Stops((" ",), max_length=30)
    samples = list(generate_samples(model, vocab, vocab.encode("the"), stops, seed=3, num_samples=12, parallel=5))
    assert len(samples) == 12
    assert all(" " not in s and len(s) <= 30 for s in samples)  # "" when the stop comes first
    again = list(generate_samples(model, vocab, vocab.encode("the"), stops, seed=3, num_samples=12, parallel=5))
    assert samples == again  # deterministic for a seed


def test_min_length_bans_single_char_stop(vocab: Vocab) -> None:
    model = make_model(vocab)
    stops = Stops((" ",), max_length=40, min_length=4)
    samples = list(generate_samples(model, vocab, vocab.encode("t"), stops, seed=1, num_samples=20))
    assert all(len(s) >= 4 and " " not in s for s in samples)


def test_novel_rejects_and_redraws(vocab: Vocab) -> None:
    model = make_model(vocab)
    stops = Stops((" ",), max_length=3)  # short samples: many repeats
    first = list(generate_samples(model, vocab, vocab.encode("a"), stops, seed=0, num_samples=40, parallel=1))
    banned = set(first[:10])
    dropped: list[str] = []
    novel = list(generate_samples(model, vocab, vocab.encode("a"), stops, seed=0, num_samples=10, parallel=1,
                                  accept=lambda s: s not in banned, on_rejected=dropped.append))
    # One stream draws the same sequence: the banned ones are dropped and the next ones taken.
    assert novel == [s for s in first if s not in banned][:10]
    assert dropped == [s for s in first[: first.index(novel[-1])] if s in banned]
    with pytest.raises(DataError, match="gave up"):
        list(generate_samples(model, vocab, vocab.encode("a"), stops, seed=0, num_samples=2,
                              accept=lambda s: False, max_rejected=5))


def test_stops_pending_is_the_longest_end_that_begins_a_stop() -> None:
    stops = Stops(("\n", "the end", "ab"), max_length=50)
    assert [stops.pending(t) for t in ["", "x", "xa", "the e", "the en", "a th", "xt", "the end"]] == [
        0, 0, 1, 5, 6, 2, 1, 0]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.text("ab ", min_size=1, max_size=3), min_size=1, max_size=2), st.integers(0, 3),
       st.integers(1, 4), st.integers(0, 5), st.booleans())
def test_streamed_samples_are_the_samples_told_as_they_grow(stop: list[str], min_length: int, parallel: int,
                                                            seed: int, prefix: bool) -> None:
    vocab = Vocab.build(TEXT)
    model = make_model(vocab, seed=2)
    stops = Stops(tuple(stop), max_length=12, min_length=min_length)
    ids = vocab.encode("a b" if prefix else "")
    samples = list(generate_samples(model, vocab, ids, stops, seed=seed, num_samples=5, parallel=parallel))
    pieces = list(stream_samples(model, vocab, ids, stops, seed=seed, num_samples=5, parallel=parallel))
    assert sorted(n for n, _, ended in pieces if ended) == list(range(5))  # each sample ends once
    told = {n: "".join(p for m, p, _ in pieces if m == n) for n in range(5)}
    ends = [n for n, _, ended in pieces if ended]
    assert [told[n] for n in ends] == samples  # in the order they end, whole: nothing of a stop string told
    assert all(p for _, p, ended in pieces if not ended)
    with_accept = list(stream_samples(model, vocab, ids, stops, seed=seed, num_samples=5, parallel=parallel,
                                      accept=lambda s: True))
    assert with_accept == [(k, s, True) for k, s in enumerate(samples)]  # told only whole


def brute_force_best(model: CharRNN, vocab: Vocab, prefix: str, length: int) -> tuple[str, float]:
    """Most likely fixed-length continuation by enumerating every string (tiny alphabet only)."""
    import itertools

    best, best_lp = "", -math.inf
    for chars in itertools.product(vocab.chars, repeat=length):
        ids = torch.as_tensor(vocab.encode(prefix + "".join(chars)).astype(np.int64))[None]
        with torch.no_grad():
            logits, _ = model(ids[:, :-1])
        lp = torch.log_softmax(logits.double(), -1)[0, len(prefix) - 1 :].gather(1, ids[0, len(prefix):, None]).sum()
        if lp > best_lp:
            best, best_lp = "".join(chars), float(lp)
    return best, best_lp


def test_beam_search_finds_the_best_and_is_deterministic() -> None:
    small = Vocab.build("abc ")
    model = make_model(small)
    best, lp = brute_force_best(model, small, "ab", 3)
    results = beam_search(model, small, small.encode("ab"), beam=64, max_length=3)  # beam >= all strings
    assert results[0].text == best and results[0].logprob == pytest.approx(lp, rel=1e-5)
    assert results[0].score == pytest.approx(lp / 3)
    assert beam_search(model, small, small.encode("ab"), beam=3, max_length=3) == \
        beam_search(model, small, small.encode("ab"), beam=3, max_length=3)


def test_beam_search_with_stops(vocab: Vocab) -> None:
    model = make_model(vocab)
    results = beam_search(model, vocab, vocab.encode("the"), beam=4, max_length=12,
                          stops=Stops((" ",), max_length=12, min_length=2), num_results=4)
    assert 1 <= len(results) <= 4
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
    for r in results:
        assert " " not in r.text and len(r.text) >= 2
        assert r.stopped or len(r.text) == 12
    with pytest.raises(UsageError, match="--beam"):
        beam_search(model, vocab, vocab.encode("a"), beam=0, max_length=5)
    with pytest.raises(UsageError, match="--num-samples"):
        beam_search(model, vocab, vocab.encode("a"), beam=2, max_length=5, num_results=3)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([0.0, 0.0, 1e-30, 1e-6, 0.3, 1.0, 7.5, 1e30]), min_size=1, max_size=12)
       .filter(lambda w: sum(w) > 0), st.integers(0, 2**31 - 1))
def test_draw_never_picks_a_zero_weight_and_stays_in_range(weights: list[float], seed: int) -> None:
    w = torch.tensor(weights, dtype=torch.float32).expand(256, -1)
    ids = draw(w, torch.Generator().manual_seed(seed))
    assert ids.shape == (256,) and ids.dtype == torch.int64
    assert bool((ids >= 0).all()) and bool((ids < len(weights)).all())
    assert all(weights[i] > 0 for i in ids.tolist())


def test_draw_follows_the_weights() -> None:
    w = torch.tensor([[0.5, 0.0, 2.0, 1.5, 0.0, 4.0]]).expand(80_000, -1)
    counts = torch.bincount(draw(w, torch.Generator().manual_seed(1)), minlength=6).double()
    expected = w[0].double() / w[0].sum() * 80_000
    # chi-square over the ids that can occur (3 degrees of freedom: p < 1e-4 beyond 21.1)
    seen = expected > 0
    assert float(((counts[seen] - expected[seen]) ** 2 / expected[seen]).sum()) < 21.1
    assert counts[~seen].sum() == 0


# --- memory bounded by the model: the prefix is read a window at a time ---------------------------

def record_calls(model: CharRNN) -> list[int]:
    """Lengths T of the (B, T) inputs of every call of `model`'s recurrence (features: what forward,
    log_probs and nll run) from now on."""
    lengths: list[int] = []
    features = model.features

    def recording(x: torch.Tensor, state=None, labels=None):  # noqa: ANN001, ANN202
        lengths.append(int(x.shape[1]))
        return features(x, state, labels)

    model.features = recording  # type: ignore[method-assign]
    return lengths


def test_prefix_warm_up_is_windowed_and_exact(vocab: Vocab, monkeypatch: pytest.MonkeyPatch) -> None:
    import charrnn.inference.generate as gen

    prefix = (TEXT * 8)[:700]
    reference = greedy_reference(make_model(vocab).eval(), vocab, prefix, 12)
    monkeypatch.setattr(gen, "MAX_WARM_UP_LOGITS", 20 * vocab.size)  # windows of 20 characters
    model = make_model(vocab)
    calls = record_calls(model)
    assert sample(model, vocab, prefix, 12, Sampling(greedy=True))[0] == reference
    assert calls and max(calls) == 20  # not one call of 699 characters
    calls.clear()
    list(generate_samples(model, vocab, vocab.encode(prefix), Stops((" ",), max_length=5), seed=0, num_samples=2))
    assert calls and max(calls) == 20
    calls.clear()
    beam_search(model, vocab, vocab.encode(prefix), beam=2, max_length=4)
    assert calls and max(calls) == 20


def test_warm_up_window_shrinks_with_the_vocabulary() -> None:
    from charrnn.inference.generate import WARM_UP_STEPS, warm_up

    big = Vocab(chars=tuple(chr(0x4E00 + i) for i in range(5000)), counts=(1,) * 5000)
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=big.size, hidden=8, layers=1, embed_dim=4)).eval()
    calls = record_calls(model)
    ids = np.arange(1000, dtype=np.uint16) % big.size
    with torch.no_grad():
        state = warm_up(model, ids, model.begin_state(1), max_logits=50 * big.size)
        calls_windowed = list(calls)
        _, one = model(torch.as_tensor(ids.astype(np.int64))[None], model.begin_state(1))
    assert max(calls_windowed) == 50 and len(calls_windowed) == 20
    for a, b in zip(state, one, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        warm_up(model, ids[:300], model.begin_state(1))  # the default: 64 MB of logits, at most WARM_UP_STEPS
    assert max(calls[len(calls_windowed) + 1 :]) == WARM_UP_STEPS


# --- --novel with beam search, and which sampling options beam search refuses ----------------------

def test_beam_search_skips_what_accept_refuses() -> None:
    small = Vocab.build("abc ")
    model = make_model(small)
    stops = Stops((" ",), max_length=3)
    plain = beam_search(model, small, small.encode("ab"), beam=3, max_length=3, stops=stops, num_results=3)
    banned = {plain[0].text, plain[1].text}
    dropped: list[str] = []
    novel = beam_search(model, small, small.encode("ab"), beam=3, max_length=3, stops=stops, num_results=3,
                        accept=lambda s: s not in banned, on_rejected=dropped.append)
    assert len(novel) == 3 and not {r.text for r in novel} & banned
    assert novel[0] == plain[2] or plain[2].text in {r.text for r in novel}  # the next likeliest move up
    assert set(dropped) == banned
    wide = beam_search(model, small, small.encode("ab"), beam=64, max_length=3, stops=stops, num_results=64)
    allowed = [r for r in wide if r.text not in banned]
    wide_novel = beam_search(model, small, small.encode("ab"), beam=64, max_length=3, stops=stops, num_results=60,
                             accept=lambda s: s not in banned)
    assert [r.text for r in wide_novel] == [r.text for r in allowed][:60]


def test_sampling_plain() -> None:
    assert Sampling().plain and Sampling(temperature=1.0, top_p=1.0).plain
    assert not Sampling(temperature=0.9).plain and not Sampling(top_k=5).plain
    assert not Sampling(top_p=0.5).plain and not Sampling(greedy=True).plain
