"""Per-character surprise: the numbers, the colour scale, the HTML page (escaping), JSON Lines, the terminal view."""

from __future__ import annotations

import io
import json
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from charrnn.data.vocab import Vocab
from charrnn.display.console import surprise_view
from charrnn.errors import DataError
from charrnn.inference.surprise import MAX_BITS, colour, html_page, score, visible
from charrnn.model.network import CharRNN, ModelConfig


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
    lines = plain.getvalue().splitlines()
    assert lines[1:3] == ["abc↵", "ab"] and lines[3].startswith("mean ") and len(lines) == 4


# --- memory bounded by the model: blocks; characters that act instead of being seen ------------------

from charrnn.inference.surprise import score_blocks  # noqa: E402


def test_blocks_are_the_whole_score_in_pieces(model_vocab) -> None:
    model, vocab = model_vocab
    text = "abc cab\nZab\u00e9c ba\n" * 3
    whole = score(model, vocab, text, num_steps=4)
    blocks = list(score_blocks(model, vocab, text, num_steps=4, block=5))
    assert [len(b.text) for b in blocks] == [5] * 10 + [len(text) - 50]
    assert "".join(b.text for b in blocks) == text
    bits = np.concatenate([b.bits for b in blocks])
    np.testing.assert_allclose(bits, whole.bits, rtol=1e-5, equal_nan=True)  # windows cut elsewhere: float32
    np.testing.assert_array_equal(np.concatenate([b.top_ids for b in blocks]), whole.top_ids)
    assert blocks[1].char_bits(0) is not None  # a later block's first character is scored
    assert [r["char"] for b in blocks for r in b.records()] == list(text)
    assert model.training == model_vocab[0].training


def test_terminal_view_draws_each_block_before_the_next_is_scored(model_vocab) -> None:
    model, vocab = model_vocab
    text = "abc\n" * 30
    out = io.StringIO()
    drawn = []

    def watched():
        for block in score_blocks(model, vocab, text, block=8):
            drawn.append(out.getvalue().count("↵"))
            yield block

    surprise_view(watched(), out, color=False, width=80)
    assert drawn == [2 * i for i in range(15)]  # block i is made when blocks 0..i-1 are on the page
    lines = out.getvalue().splitlines()
    assert lines[1:-1] == ["abc↵"] * 30 and lines[-1].startswith("mean ")
    assert lines[-1].endswith(f"over {len(text) - 1} scored characters")


ACTING_CHARS = ["\x85", "\x9b", "\u2028", "\u2029", "\u202e", "\u202a", "\u2066", "\u200f", "\u061c"]


@pytest.mark.parametrize("c", ACTING_CHARS)
def test_characters_that_act_are_shown_as_marks(c: str) -> None:
    mark = visible(c)
    assert mark == f"\u27e6U+{ord(c):04X}\u27e7" and c not in mark
    assert visible("\u00e9") == "\u00e9" and visible("\u200d") == "\u200d"  # letters and joiners stay


def test_views_never_write_acting_characters_raw(model_vocab) -> None:
    model, vocab = model_vocab
    text = "ab\u202ecba\x85a\x9b31m\u2028b\u2029c\n"
    s = score(model, vocab, text)
    page = html_page(s, title="t\u202eitle")
    out = io.StringIO()
    surprise_view(s, out, color=True, width=80)
    for view in (page, out.getvalue()):
        assert not any(c in view for c in ACTING_CHARS)
        assert "\u27e6U+202E\u27e7" in view and "\u27e6U+009B\u27e7" in view
    assert "t\u27e6U+202E\u27e7itle" in page


def test_blocks_refuse_unknown_characters_before_the_first_block() -> None:
    from charrnn.errors import UnknownCharacterError

    vocab = Vocab.build("abc", unk=False)  # a vocabulary without <unk> cannot feed what it does not know
    model = CharRNN(ModelConfig(vocab_size=vocab.size, hidden=8, layers=1))
    with pytest.raises(UnknownCharacterError, match="'z'"):
        score_blocks(model, vocab, "abc" * 10 + "z", block=4)  # raised by the call, not by a later block
