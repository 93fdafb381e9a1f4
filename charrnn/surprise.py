"""Per-character surprise: how unexpected each character of a text was to the model, in bits.

The surprise of character t is -log2 p(c_t | c_<t), the model's probability of the character
that came, given everything before it (one sequence, the state carried through the whole text).
The first character has nothing to be predicted from, and a character the model does not know is
fed as <unk> but not scored, as in `eval perplexity`: both have no surprise (None).

The colour scale and the self-contained HTML page live here too (pure functions of the result);
the terminal view is drawn by charrnn.console, the only module that imports rich.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from charrnn.errors import DataError
from charrnn.model import CharRNN
from charrnn.vocab import UNK_TOKEN, Vocab

TOP = 5
# Colour stops (bits, background): pale yellow where the model is sure, dark red where it is lost;
# 8 bits is a 1-in-256 guess, and everything above it shares the darkest colour.
STOPS = ((0.0, (255, 255, 229)), (1.0, (255, 237, 160)), (2.0, (254, 217, 118)), (3.0, (254, 178, 76)),
         (4.0, (253, 141, 60)), (5.0, (252, 78, 42)), (6.0, (227, 26, 28)), (7.0, (189, 0, 38)),
         (8.0, (128, 0, 38)))
MAX_BITS = STOPS[-1][0]
LEGEND_BITS = tuple(int(b) for b, _ in STOPS)
# Control characters shown as visible symbols; a newline keeps its line break after its symbol.
NEWLINE_SYMBOL = "↵"


@dataclass(frozen=True)
class Surprise:
    """The scored text. bits: (n,) float64, NaN where not scored; top_ids/top_probs: (n, k), the
    model's k likeliest next characters before each character (row 0 is empty: -1 and 0)."""

    text: str
    bits: np.ndarray
    top_ids: np.ndarray
    top_probs: np.ndarray
    vocab: Vocab

    def label(self, token_id: int) -> str:
        return UNK_TOKEN if token_id == self.vocab.unk_id else self.vocab.chars[token_id]

    def top(self, i: int) -> list[tuple[str, float]]:
        """The k likeliest characters the model expected at position i, with their probabilities."""
        return [(self.label(int(t)), float(p)) for t, p in zip(self.top_ids[i], self.top_probs[i], strict=True)
                if t >= 0]

    def char_bits(self, i: int) -> float | None:
        b = float(self.bits[i])
        return None if math.isnan(b) else b

    @property
    def scored(self) -> int:
        return int((~np.isnan(self.bits)).sum())

    @property
    def mean_bits(self) -> float | None:
        return float(np.nanmean(self.bits)) if self.scored else None

    def records(self) -> Iterator[dict]:
        """One dict per character: char, bits (None when not scored), top [[char, probability], ...]."""
        for i, c in enumerate(self.text):
            yield {"char": c, "bits": self.char_bits(i), "top": [[ch, p] for ch, p in self.top(i)]}


@torch.inference_mode()
def score(model: CharRNN, vocab: Vocab, text: str, top: int = TOP, num_steps: int = 256) -> Surprise:
    """Surprise of every character of `text` under `model`, one pass with the state carried."""
    if not text:
        raise DataError("the text is empty: nothing to show")
    ids = vocab.encode(text, unk="map", where="the text")
    k = min(top, vocab.size)
    n = len(ids)
    bits = np.full(n, np.nan)
    top_ids = np.full((n, k), -1, dtype=np.int64)
    top_probs = np.zeros((n, k))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        state = model.begin_state(1, device)
        x_all = torch.from_numpy(np.asarray(ids, dtype=np.int64)).to(device)
        for start in range(0, n - 1, num_steps):
            x = x_all[start : min(start + num_steps, n - 1)][None]  # (1, T): inputs c_start..c_{start+T-1}
            logits, state = model(x, state)
            logp = torch.log_softmax(logits[0].double(), dim=-1)  # (T, V), predicts c_{start+1}..c_{start+T}
            targets = x_all[start + 1 : start + 1 + x.shape[1]]
            chosen = -logp.gather(1, targets[:, None])[:, 0] / math.log(2)
            p, t = logp.exp().topk(k, dim=-1)
            rows = slice(start + 1, start + 1 + x.shape[1])
            bits[rows] = chosen.cpu().numpy()
            top_ids[rows], top_probs[rows] = t.cpu().numpy(), p.cpu().numpy()
    finally:
        model.train(was_training)
    if vocab.unk_id is not None:
        bits[np.asarray(ids) == vocab.unk_id] = np.nan  # unknown characters are fed, not scored
    return Surprise(text, bits, top_ids, top_probs, vocab)


def colour(bits: float | None) -> tuple[int, int, int] | None:
    """Background colour (r, g, b) for a surprise in bits, interpolated between STOPS; None: no colour."""
    if bits is None or math.isnan(bits):
        return None
    b = min(max(bits, 0.0), MAX_BITS)
    for (b0, c0), (b1, c1) in zip(STOPS, STOPS[1:], strict=False):
        if b <= b1:
            f = (b - b0) / (b1 - b0)
            return tuple(round(x0 + f * (x1 - x0)) for x0, x1 in zip(c0, c1, strict=True))  # type: ignore[return-value]
    return STOPS[-1][1]


def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def dark(rgb: tuple[int, int, int]) -> bool:
    """Whether text on this background should be white (relative luminance below one half)."""
    r, g, b = rgb
    return 0.2126 * r + 0.7152 * g + 0.0722 * b < 128


def visible(c: str) -> str:
    """How a character is drawn: control characters become visible symbols (a newline is
    NEWLINE_SYMBOL, the line break itself is added by the caller); a tab stays a tab."""
    if c == "\n":
        return NEWLINE_SYMBOL
    if c == "\t":
        return c
    o = ord(c)
    if o < 0x20:
        return chr(0x2400 + o)  # the Unicode control pictures: ␀ ␁ ...
    if o == 0x7F:
        return "\u2421"
    return c


def _tip(s: Surprise, i: int) -> str:
    c = s.text[i]
    bits = s.char_bits(i)
    head = f"{c!r}: " + ("not scored" if bits is None else f"{bits:.2f} bits")
    lines = [head] + [f"{rank}. {ch!r}  {p:.3f}" for rank, (ch, p) in enumerate(s.top(i), 1)]
    return "\n".join(lines)


PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; background: #fff; }
h1 { font-size: 1.2em; margin: 0 0 .3em; }
.meta { color: #555; margin: 0 0 1em; }
.legend { display: flex; align-items: center; gap: 0; margin: 0 0 1.2em; font-size: .85em; }
.legend span { display: inline-block; padding: .2em .6em; font-family: ui-monospace, monospace; }
.legend .caption { padding-left: 0; font-family: system-ui, sans-serif; }
.text { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 15px;
        line-height: 1.6; white-space: pre-wrap; word-wrap: break-word; }
.text span { position: relative; }
.text span.n { border-bottom: 1px dotted #999; }
.text span:hover { outline: 1px solid #000; }
.text span:hover::after { content: attr(data-tip); position: absolute; left: 0; top: 1.5em; z-index: 10;
        white-space: pre; background: #222; color: #fff; padding: .4em .6em; border-radius: 4px;
        font-size: 13px; line-height: 1.4; pointer-events: none; box-shadow: 0 2px 6px rgba(0,0,0,.3); }
"""


def html_page(s: Surprise, title: str) -> str:
    """One self-contained HTML page: no script and no network (its Content-Security-Policy forbids
    both), every character a span coloured by its surprise whose hover tip (pure CSS) lists the
    model's top predictions. All text from the input is escaped."""
    # Quarter-bit buckets share a CSS class, so each of thousands of spans carries a short name.
    buckets: dict[int, tuple[int, int, int]] = {}
    spans = []
    for i, c in enumerate(s.text):
        bits = s.char_bits(i)
        tip = html.escape(_tip(s, i), quote=True).replace("\n", "&#10;")
        shown = html.escape(visible(c), quote=False)
        if bits is None:
            spans.append(f'<span class="n" data-tip="{tip}">{shown}</span>')
        else:
            q = round(min(bits, MAX_BITS) * 4)
            buckets.setdefault(q, colour(q / 4))  # type: ignore[arg-type]
            spans.append(f'<span class="b{q}" data-tip="{tip}">{shown}</span>')
        if c == "\n":
            spans.append("\n")
    classes = "\n".join(f".b{q} {{ background: {hex_colour(rgb)};{' color: #fff;' if dark(rgb) else ''} }}"
                        for q, rgb in sorted(buckets.items()))
    legend = "".join(
        f'<span style="background: {hex_colour(rgb)};{" color: #fff;" if dark(rgb) else ""}">'
        f'{b:g}{"+" if b == MAX_BITS else ""}</span>' for b, rgb in STOPS)
    mean = s.mean_bits
    meta = (f"{len(s.text):,} characters, {s.scored:,} scored, mean surprise "
            + (f"{mean:.3f} bits/char" if mean is not None else "n/a")
            + ". Hover a character to see what the model expected there.")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{PAGE_STYLE}{classes}\n</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n<p class=\"meta\">{html.escape(meta)}</p>\n"
        f"<div class=\"legend\"><span class=\"caption\">surprise (bits): </span>{legend}</div>\n"
        f"<div class=\"text\">{''.join(spans)}</div>\n</body>\n</html>\n"
    )
