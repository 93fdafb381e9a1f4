"""Per-character surprise: how unexpected each character of a text was to the model, in bits.

The surprise of character t is -log2 p(c_t | c_<t), the model's probability of the character
that came, given everything before it (one sequence, the state carried through the whole text).
The first character has nothing to be predicted from, and a character the model does not know is
fed as <unk> but not scored, as in `eval perplexity`: both have no surprise (None).

The colour scale and the self-contained HTML page live here too (pure functions of the result);
the terminal view is drawn by charrnn.display.console, the only module that imports rich.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from charrnn.data.records import ACTING
from charrnn.data.vocab import UNK_TOKEN, Vocab
from charrnn.errors import DataError, UnknownCharacterError
from charrnn.model.network import CharRNN, State

TOP = 5
# Colour stops (bits, background): pale yellow where the model is sure, dark red where it is lost;
# 8 bits is a 1-in-256 guess, and everything above it shares the darkest colour.
STOPS = ((0.0, (255, 255, 229)), (1.0, (255, 237, 160)), (2.0, (254, 217, 118)), (3.0, (254, 178, 76)),
         (4.0, (253, 141, 60)), (5.0, (252, 78, 42)), (6.0, (227, 26, 28)), (7.0, (189, 0, 38)),
         (8.0, (128, 0, 38)))
MAX_BITS = STOPS[-1][0]
HTML_MAX_CHARS = 100_000  # characters of one `--html` page: about 20 MB of HTML
BLOCK = 1 << 14  # characters scored and written at a time by the streamed views (JSON Lines, terminal)
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
    def total_bits(self) -> float:
        """Sum of the surprise over the scored characters."""
        return float(np.nansum(self.bits))

    @property
    def mean_bits(self) -> float | None:
        return float(np.nanmean(self.bits)) if self.scored else None

    def records(self) -> Iterator[dict]:
        """One dict per character: char, bits (None when not scored), top [[char, probability], ...]."""
        for i, c in enumerate(self.text):
            yield {"char": c, "bits": self.char_bits(i), "top": [[ch, p] for ch, p in self.top(i)]}


def score(model: CharRNN, vocab: Vocab, text: str, top: int = TOP, num_steps: int = 256) -> Surprise:
    """Surprise of every character of `text` under `model`, one pass with the state carried (all of
    it in memory: about 90 bytes per character; the streamed views use `score_blocks`)."""
    blocks = score_blocks(model, vocab, text, top, num_steps, block=max(len(text), 1))
    try:
        return next(blocks)
    finally:
        blocks.close()


def score_blocks(model: CharRNN, vocab: Vocab, text: str, top: int = TOP, num_steps: int = 256,
                 block: int | None = None) -> Iterator[Surprise]:
    """The surprise of `text` a block of `block` characters at a time: the state and the last
    character are carried from block to block, so the blocks are `score(text)` cut in pieces (the
    first character of a later block is scored), and memory is one block, however long the text.
    An empty text is a DataError here, before anything is scored or written."""
    if not text:
        raise DataError("the text is empty: nothing to show")
    if vocab.unk_id is None and (unknown := vocab.unknown_chars(text)):
        raise UnknownCharacterError(unknown, "the text", can_map=False)  # up front, not after some blocks are out
    return _blocks(model, vocab, text, min(top, vocab.size), num_steps, block or BLOCK)


def _blocks(model: CharRNN, vocab: Vocab, text: str, k: int, num_steps: int, block: int) -> Iterator[Surprise]:
    """The generator of `score_blocks`: model in eval mode while it runs, its mode restored after."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            state = model.begin_state(1, device)
        prev = torch.zeros(0, dtype=torch.int64, device=device)  # the last character of the block before
        for b0 in range(0, len(text), block):
            piece = text[b0 : b0 + block]
            ids = vocab.encode(piece, unk="map", where="the text")  # (m,)
            with torch.inference_mode():
                seq = torch.cat([prev, torch.from_numpy(ids.astype(np.int64)).to(device)])  # (len(prev) + m,)
                out, state = _block(model, seq, state, k, num_steps)
            bits, top_ids, top_probs = (np.concatenate([np.full((1 - len(prev), *a.shape[1:]), fill), a])
                                        for a, fill in zip(out, (np.nan, -1, 0.0), strict=True))
            if vocab.unk_id is not None:
                bits[ids == vocab.unk_id] = np.nan  # unknown characters are fed, not scored
            prev = seq[-1:]
            yield Surprise(piece, bits, top_ids, top_probs, vocab)
    finally:
        model.train(was_training)


def _block(model: CharRNN, seq: torch.Tensor, state: State, k: int,
           num_steps: int) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], State]:
    """Bits (n - 1,), top ids and probabilities (n - 1, k) of seq[1:] predicted from what precedes
    each, `num_steps` inputs per forward call, and the state after seq[:-1]."""
    n = len(seq) - 1
    bits = np.full(max(n, 0), np.nan)
    top_ids = np.full((max(n, 0), k), -1, dtype=np.int64)
    top_probs = np.zeros((max(n, 0), k))
    for start in range(0, max(n, 0), num_steps):
        x = seq[start : min(start + num_steps, n)][None]  # (1, T): inputs seq[start..start+T-1]
        logp, state = model.log_probs(x, state, torch.float64)
        logp = logp[0]  # (T, V), predicts seq[start+1..start+T]
        targets = seq[start + 1 : start + 1 + x.shape[1]]
        rows = slice(start, start + x.shape[1])
        bits[rows] = (-logp.gather(1, targets[:, None])[:, 0] / math.log(2)).cpu().numpy()
        p, t = logp.exp().topk(k, dim=-1)
        top_ids[rows], top_probs[rows] = t.cpu().numpy(), p.cpu().numpy()
    return (bits, top_ids, top_probs), state


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
    NEWLINE_SYMBOL, the line break itself is added by the caller); a tab stays a tab. Characters
    that would act on the page or the terminal instead of being seen (C1 controls such as U+0085
    NEL and U+009B CSI, the line and paragraph separators U+2028 and U+2029, the bidi controls that
    reorder what follows) are drawn as a mark naming them: ⟦U+202E⟧."""
    if c == "\n":
        return NEWLINE_SYMBOL
    if c == "\t":
        return c
    o = ord(c)
    if o < 0x20:
        return chr(0x2400 + o)  # the Unicode control pictures: ␀ ␁ ...
    if o == 0x7F:
        return "\u2421"
    if 0x80 <= o <= 0x9F or o in ACTING:
        return f"\u27e6U+{o:04X}\u27e7"
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
    """One self-contained HTML page (see `html_pieces`), as one string."""
    return "".join(html_pieces(s, title))


def html_pieces(s: Surprise, title: str) -> Iterator[str]:
    """One self-contained HTML page, in pieces to be written as they come: no script and no network
    (its Content-Security-Policy forbids both), every character a span coloured by its surprise
    whose hover tip (pure CSS) lists the model's top predictions. All text from the input is
    escaped. About 200 bytes per character of text: `eval show --html` holds at most
    HTML_MAX_CHARS characters."""
    # Quarter-bit buckets share a CSS class, so each of thousands of spans carries a short name;
    # every bucket is defined, so that the head is written before the first span.
    classes = "\n".join(f".b{q} {{ background: {hex_colour(rgb)};{' color: #fff;' if dark(rgb) else ''} }}"
                         for q in range(round(MAX_BITS * 4) + 1) if (rgb := colour(q / 4)) is not None)
    legend = "".join(
        f'<span style="background: {hex_colour(rgb)};{" color: #fff;" if dark(rgb) else ""}">'
        f'{b:g}{"+" if b == MAX_BITS else ""}</span>' for b, rgb in STOPS)
    title = "".join(visible(c) for c in title)  # a file name may hold a bidi override too
    mean = s.mean_bits
    meta = (f"{len(s.text):,} characters, {s.scored:,} scored, mean surprise "
            + (f"{mean:.3f} bits/char" if mean is not None else "n/a")
            + ". Hover a character to see what the model expected there.")
    yield (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{PAGE_STYLE}{classes}\n</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n<p class=\"meta\">{html.escape(meta)}</p>\n"
        f"<div class=\"legend\"><span class=\"caption\">surprise (bits): </span>{legend}</div>\n"
        "<div class=\"text\">"
    )
    for i, c in enumerate(s.text):
        bits = s.char_bits(i)
        tip = html.escape(_tip(s, i), quote=True).replace("\n", "&#10;")
        shown = html.escape(visible(c), quote=False)
        name = "n" if bits is None else f"b{round(min(bits, MAX_BITS) * 4)}"
        yield f'<span class="{name}" data-tip="{tip}">{shown}</span>' + ("\n" if c == "\n" else "")
    yield "</div>\n</body>\n</html>\n"
