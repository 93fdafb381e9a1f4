"""Per-character surprise: the numbers, the colour scale, the HTML page (escaping), JSON Lines, the terminal view."""

from __future__ import annotations

import io
import json
import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from charrnn.console import surprise_view
from charrnn.errors import DataError
from charrnn.model import CharRNN, ModelConfig
from charrnn.surprise import MAX_BITS, colour, html_page, score, visible
from charrnn.vocab import Vocab


@pytest.fixture(scope="module")
def model_vocab() -> tuple[CharRNN, Vocab]:
    vocab = Vocab.build("abc <>/\n&\"'scriptle")
    torch.manual_seed(0)
    return CharRNN(ModelConfig(vocab_size=vocab.size, hidden=16, layers=1)), vocab


def test_bits_are_minus_log2_of_the_probability_of_the_next_character(model_vocab) -> None:
    model, vocab = model_vocab
    text = "abc cab\nabc"
    s = score(model, vocab, text, num_steps=3)  # windows of 3 carry the state: same as one pass
    ids = torch.from_numpy(vocab.encode(text).astype("int64"))[None]
    with torch.no_grad():
        logits, _ = model.eval()(ids)
    logp = torch.log_softmax(logits[0].double(), -1)
    assert s.char_bits(0) is None and s.top(0) == []
    for t in range(1, len(text)):
        want = -logp[t - 1, ids[0, t]].item() / math.log(2)
        assert s.char_bits(t) == pytest.approx(want, rel=1e-5)
        top = s.top(t)
        assert len(top) == 5 and [p for _, p in top] == sorted((p for _, p in top), reverse=True)
        assert top[0][1] == pytest.approx(logp[t - 1].exp().max().item())
    assert s.mean_bits == pytest.approx(sum(s.char_bits(t) for t in range(1, len(text))) / (len(text) - 1))


def test_unknown_characters_are_fed_not_scored(model_vocab) -> None:
    model, vocab = model_vocab
    s = score(model, vocab, "abZc")
    assert s.char_bits(2) is None and s.char_bits(3) is not None and s.scored == 2
    assert s.text == "abZc"


def test_empty_text_is_an_error(model_vocab) -> None:
    with pytest.raises(DataError, match="empty"):
        score(*model_vocab, "")


def test_one_character_scores_nothing(model_vocab) -> None:
    s = score(*model_vocab, "a")
    assert s.scored == 0 and s.mean_bits is None


def test_json_lines(model_vocab) -> None:
    # the records `eval show --json` writes, one JSON line each (through cli.common.json_line)
    lines = [json.loads(json.dumps(x, allow_nan=False)) for x in score(*model_vocab, "ab\n").records()]
    assert [x["char"] for x in lines] == ["a", "b", "\n"]
    assert lines[0] == {"char": "a", "bits": None, "top": []}
    assert all(len(x["top"]) == 5 and isinstance(x["bits"], float) for x in lines[1:])
    assert all(isinstance(c, str) and 0 <= p <= 1 for x in lines[1:] for c, p in x["top"])


def test_colour_scale() -> None:
    assert colour(None) is None and colour(math.nan) is None
    assert colour(0.0) == colour(-1.0) and colour(MAX_BITS) == colour(50.0)
    # darker (lower luminance) as the surprise grows
    lum = [sum(colour(b / 2)) for b in range(0, 17)]
    assert lum == sorted(lum, reverse=True)


@settings(max_examples=50, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_colour_is_always_a_valid_rgb(bits: float) -> None:
    rgb = colour(bits)
    assert rgb is not None and all(0 <= v <= 255 and isinstance(v, int) for v in rgb)


def test_visible() -> None:
    assert visible("\n") == "↵" and visible("\x00") == "␀" and visible("a") == "a" and visible("\t") == "\t"


def test_html_escapes_the_text_and_runs_nothing(model_vocab) -> None:
    model, vocab = model_vocab
    text = "<script>alert('x')</script> & \"c\"\n"
    page = html_page(score(model, vocab, text), title="<script>t</script>")
    assert page.count("<script") == 0 and "</script" not in page
    assert "&lt;" in page and "&amp;" in page
    assert "default-src 'none'" in page  # the page may load nothing and run no script
    assert not re.search(r"(src|href)\s*=", page)  # nothing to fetch: self-contained
    spans = re.findall(r'<span class="(?:b\d+|n)" data-tip="[^"]*">(.*?)</span>', page, flags=re.S)
    assert len(spans) == len(text)
    import html

    assert "".join(html.unescape(x) for x in spans) == text.replace("\n", "↵")


def test_html_hover_tip_lists_the_top_predictions(model_vocab) -> None:
    s = score(*model_vocab, "abc")
    page = html_page(s, title="t")
    tips = re.findall(r'data-tip="([^"]*)"', page)
    import html

    tip = html.unescape(tips[2])
    assert tip.startswith("'c': ") and "bits" in tip
    assert tip.count("\n") == 5 and f"{s.top(2)[0][1]:.3f}" in tip


def test_terminal_view_colours_backgrounds_and_has_a_legend(model_vocab) -> None:
    s = score(*model_vocab, "abc\nab")
    out = io.StringIO()
    surprise_view(s, out, color=True, width=80)
    text = out.getvalue()
    assert "surprise (bits)" in text and "8+" in text and "mean" in text
    assert "\x1b[" in text and "48;2;" in text  # truecolor backgrounds
    plain = io.StringIO()
    surprise_view(s, plain, color=False, width=80)
    assert "\x1b[" not in plain.getvalue()
    assert plain.getvalue().splitlines()[1:] == ["abc↵", "ab"]
