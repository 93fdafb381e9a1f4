"""Text properties (unit and property tests), Pearson ranking, and the random-weights control."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from charrnn.analysis.cells import Unit, activation, control_model, correlate, parse_unit, rank, units_of
from charrnn.analysis.textprops import PROPERTIES, check_property, is_word_char, properties
from charrnn.analysis.trace import LayerTrace, Trace, trace
from charrnn.data.vocab import Vocab
from charrnn.errors import UsageError
from charrnn.model.network import CharRNN, ModelConfig

CODE = 'def f(x, y):\n    """Say "hi" (or don\'t)."""\n    return g([x], {y: \'a#b\'})  # done (\n'
SYNTAX = st.text(alphabet=st.sampled_from(list("ab _'\"#()[]{}\\\n\tX7")), max_size=200)


def test_properties_of_a_line_of_code() -> None:
    p = properties(CODE)
    assert list(p) == list(PROPERTIES) and all(v.shape == (len(CODE),) for v in p.values())
    at = lambda name, sub, k=0: p[name][CODE.index(sub) + k]  # noqa: E731
    # the docstring is one string: the quotes and apostrophe inside it neither open nor close anything
    assert at("quote", '"""') == 1 and at("quote", "Say") == 1 and at("quote", "t).") == 1
    assert at("quote", "return") == 0 and at("quote", "'a#b'") == 1 and at("quote", "a#b") == 1
    assert at("comment", "a#b", 1) == 0 and at("comment", "# done") == 1 and at("comment", "done") == 1
    assert at("bracket", "(x") == 1 and at("bracket", "):") == 0 and at("bracket", "(or") == 0  # in a string
    assert at("bracket", "[x]") == 2 and at("bracket", "x]", 1) == 1 and at("bracket", "(\n") == 0  # in a comment
    assert at("indent", "return") == 4 and at("indent", "def") == 0 and at("indent", "\n    return") == 4
    assert at("line_position", "def") == 1 and at("line_position", "\n") == 0 and at("line_position", "    r") == 1
    assert at("word_position", "return") == 1 and at("word_position", "eturn") == 2 and at("in_word", " ") == 0
    assert at("upper", "Say") == 1 and at("upper", "ay") == 0 and p["digit"].sum() == 0


def test_single_quoted_string_ends_at_the_line_and_escapes() -> None:
    text = "it's here\nnext 'a\\'b' c\n"
    p = properties(text)
    assert p["quote"][text.index("here")] == 1 and p["quote"][text.index("next")] == 0
    assert p["quote"][text.index("b'")] == 1 and p["quote"][text.index(" c")] == 0


@settings(max_examples=150, deadline=None)
@given(SYNTAX)
def test_property_invariants(text: str) -> None:
    p = properties(text)
    assert (p["bracket"] >= 0).all()
    for name in ("quote", "comment", "in_word", "upper", "digit"):
        assert set(np.unique(p[name]).tolist()) <= {0.0, 1.0}
    for i, c in enumerate(text):
        assert p["in_word"][i] == is_word_char(c)
        assert p["upper"][i] == c.isupper() and p["digit"][i] == c.isdigit()
        # line_position resets after a newline and counts up by one otherwise
        expected = 0 if c == "\n" else (1 if i == 0 or text[i - 1] == "\n" else p["line_position"][i - 1] + 1)
        assert p["line_position"][i] == expected
        # word_position counts within a word, 0 outside it
        expected = 0 if not is_word_char(c) else (p["word_position"][i - 1] + 1 if i else 1)
        assert p["word_position"][i] == expected
        if c == "\n":
            assert p["comment"][i] == 0
    # the indent is the same along a line and never more than the line's length
    for start in [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]:
        end = text.find("\n", start)
        end = len(text) if end < 0 else end + 1
        if start < end:
            assert len(set(p["indent"][start:end].tolist())) == 1 and p["indent"][start] <= end - start


@settings(max_examples=100, deadline=None)
@given(SYNTAX, SYNTAX)
def test_properties_look_only_backwards(a: str, b: str) -> None:
    """What follows a prefix never changes the prefix's values (except indent, a line's whole property,
    on the prefix's last line)."""
    whole, alone = properties(a + b), properties(a)
    for name in PROPERTIES:
        if name != "indent":
            np.testing.assert_array_equal(whole[name][: len(a)], alone[name])


def test_unknown_property_is_a_usage_error() -> None:
    assert check_property("quote") == "quote"
    with pytest.raises(UsageError, match="unknown property 'quotes'"):
        check_property("quotes")


def test_correlate_exact_and_constant_columns() -> None:
    rng = np.random.default_rng(0)
    props = rng.normal(size=(50, 3))
    props[:, 2] = 4.0  # a constant property
    values = np.stack([props[:, 0] * 3 + 1, -props[:, 1], np.full(50, 0.7), rng.normal(size=50)], axis=1)
    r = correlate(values, props)
    assert r.shape == (4, 3) and not np.isnan(r).any()
    assert r[0, 0] == pytest.approx(1.0) and r[1, 1] == pytest.approx(-1.0)
    assert (r[:, 2] == 0).all() and (r[2] == 0).all()
    np.testing.assert_allclose(r[3, 0], np.corrcoef(values[:, 3], props[:, 0])[0, 1])


def fake_trace(columns: list[np.ndarray], lstm: bool = False) -> Trace:
    h = np.stack(columns, axis=1).astype(np.float32)
    return Trace("lstm" if lstm else "rnn", (LayerTrace(h, np.arctanh(np.clip(h, -0.999, 0.999)) if lstm else None),),
                 torch.zeros(1, 1, h.shape[1]))


def test_a_unit_built_to_track_a_property_ranks_first_with_r_one() -> None:
    text = 'x = "abc" + "de"\n(a, (b))\n' * 5
    p = properties(text)
    noise = np.random.default_rng(1).uniform(-0.5, 0.5, len(text))
    t = fake_trace([noise, 0.8 * p["quote"] - 0.4, -p["bracket"] / 3, noise * 0.1])
    ranking = rank(t, text)
    assert ranking.units[ranking.by_property("quote")[0]] == Unit(1, "h", 1)
    assert ranking.best_r("quote") == pytest.approx(1.0)
    assert ranking.units[ranking.by_property("bracket")[0]] == Unit(1, "h", 2)
    assert ranking.best_r("bracket") == pytest.approx(-1.0)
    records = ranking.records()
    assert [r["unit"] for r in records[:2]] in ([1, 2], [2, 1]) and records[0]["property"] in ("quote", "bracket")
    assert set(records[0]) == {"layer", "unit", "state", "property", "r"}
    assert [r["unit"] for r in ranking.records("quote")][0] == 1
    with pytest.raises(ValueError):
        rank(t, text[:-1])


def test_a_model_built_to_track_digits_has_r_one() -> None:
    """A plain RNN whose unit 0 is driven only by the input, +10 on a digit and -10 otherwise: h = ±1."""
    text = "a1b22 c333\nx9y\n" * 4
    vocab = Vocab.build(text)
    model = CharRNN(ModelConfig(vocab.size, cell="rnn", hidden=4, layers=1, input="onehot")).eval()
    with torch.no_grad():
        model.rnn.weight_hh_l0.zero_()
        model.rnn.bias_ih_l0.zero_()
        model.rnn.bias_hh_l0.zero_()
        for i, c in enumerate(vocab.chars):
            model.rnn.weight_ih_l0[0, i] = 10.0 if c.isdigit() else -10.0
    ranking = rank(trace(model, vocab.encode(text)), text)
    assert ranking.units[ranking.by_property("digit")[0]] == Unit(1, "h", 0)
    assert ranking.best_r("digit") == pytest.approx(1.0, abs=1e-6)


def test_lstm_units_are_tanh_c_and_h() -> None:
    t = fake_trace([np.linspace(-0.9, 0.9, 20), np.zeros(20)], lstm=True)
    assert units_of(t) == [Unit(1, "c", 0), Unit(1, "c", 1), Unit(1, "h", 0), Unit(1, "h", 1)]
    np.testing.assert_allclose(activation(t, Unit(1, "c", 0)), np.tanh(t.layers[0].c[:, 0]), rtol=1e-6)
    assert Unit(1, "c", 3).label(True) == "1:3:c" and Unit(2, "h", 3).label(False) == "2:3"


@pytest.mark.parametrize(("spec", "lstm", "unit"), [("1:3", True, Unit(1, "c", 3)), ("2:0:h", True, Unit(2, "h", 0)),
                                                  ("1:7", False, Unit(1, "h", 7)), ("2:1:h", False, Unit(2, "h", 1))])
def test_parse_unit(spec: str, lstm: bool, unit: Unit) -> None:
    assert parse_unit(spec, 2, 8, lstm) == unit


@pytest.mark.parametrize(("spec", "lstm", "needle"), [("3:0", True, "layers 1 to 2"), ("1:8", True, "units 0 to 7"),
                                                      ("0:0", False, "layers 1 to 2"), ("a:b", True, "LAYER:INDEX"),
                                                      ("1", True, "LAYER:INDEX"), ("1:2:c", False, "cell state"),
                                                      ("1:2:x", True, "LAYER:INDEX")])
def test_bad_units(spec: str, lstm: bool, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        parse_unit(spec, 2, 8, lstm)


def test_control_is_seeded_and_leaves_the_global_random_state() -> None:
    model = CharRNN(ModelConfig(7, hidden=8, layers=2))
    torch.manual_seed(5)
    before = torch.rand(1)
    torch.manual_seed(5)
    a, b = control_model(model, seed=3), control_model(model, seed=3)
    assert torch.rand(1) == before
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(next(control_model(model, seed=4).parameters()), next(a.parameters()))
    assert a.config == model.config and not a.training


def counting_text(lines: int = 500, width: int = 12) -> str:
    """Lines of exactly `width` random letters: predicting the newline needs a counter."""
    rng = np.random.default_rng(0)
    return "".join("".join(rng.choice(list("abcd"), width)) + "\n" for _ in range(lines))


def test_a_trained_model_finds_more_than_its_random_control() -> None:
    """Honest by construction: on a text whose newlines can only be predicted by counting, a trained
    LSTM grows a line-position unit far beyond what the same architecture with random weights shows."""
    text = counting_text()
    vocab = Vocab.build(text, unk=False)
    ids = torch.from_numpy(vocab.encode(text).astype(np.int64))
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab.size, cell="lstm", hidden=16, layers=1, input="onehot"))
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(120):
        starts = torch.randint(0, len(ids) - 41, (16,), generator=gen)
        batch = torch.stack([ids[s : s + 41] for s in starts.tolist()])
        logits, _ = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab.size), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    held_out = counting_text(200)[7:]  # starts mid-line, like any held-out slice
    x = vocab.encode(held_out)
    trained = abs(rank(trace(model, x), held_out).best_r("line_position"))
    control = abs(rank(trace(control_model(model, seed=0), x), held_out).best_r("line_position"))
    assert trained > 0.9 and control < 0.75 and trained - control > 0.25, (trained, control)
