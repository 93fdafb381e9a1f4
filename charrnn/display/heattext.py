"""A text with every character's background coloured by a unit's activation, -1 blue to +1 red
(Karpathy, Johnson and Fei-Fei 2015): the colour scale and the self-contained HTML page. The
terminal view is drawn by charrnn.display.console, the only module that imports rich.

Several units are stacked rows: each line of the text is drawn once per unit, one under the
other, with the unit's label in front, so that the units can be compared character by character.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from charrnn.inference.surprise import dark, hex_colour, visible

# Diverging stops (ColorBrewer RdBu): blue at -1, near-white at 0, red at +1.
STOPS = ((-1.0, (33, 102, 172)), (-0.5, (103, 169, 207)), (0.0, (247, 247, 247)), (0.5, (239, 138, 98)),
         (1.0, (178, 24, 43)))
LEGEND = (-1.0, -0.5, 0.0, 0.5, 1.0)
STEPS = 10  # the page quantises activations to tenths: 21 colour classes


@dataclass(frozen=True)
class HeatRow:
    label: str  # e.g. "1:17:c  quote r=-0.91"
    values: np.ndarray  # (len(text),), in [-1, 1]


def colour(value: float) -> tuple[int, int, int]:
    """Background (r, g, b) for an activation, interpolated between STOPS (clamped to [-1, 1]; NaN is 0)."""
    v = 0.0 if math.isnan(value) else min(max(value, -1.0), 1.0)
    for (v0, c0), (v1, c1) in zip(STOPS, STOPS[1:], strict=False):
        if v <= v1:
            f = (v - v0) / (v1 - v0)
            return tuple(round(x0 + f * (x1 - x0)) for x0, x1 in zip(c0, c1, strict=True))  # type: ignore[return-value]
    return STOPS[-1][1]


def lines(text: str) -> Iterator[tuple[int, int]]:
    """(start, end) of every line of `text`, its newline included."""
    start = 0
    while start < len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end + 1
        yield start, end
        start = end


PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; background: #fff; }
h1 { font-size: 1.2em; margin: 0 0 .3em; }
.meta { color: #555; margin: 0 0 1em; }
.legend { display: flex; align-items: center; margin: 0 0 1.2em; font-size: .85em; }
.legend span { display: inline-block; padding: .2em .6em; font-family: ui-monospace, monospace; }
.legend .caption { padding-left: 0; font-family: system-ui, sans-serif; }
.rows { margin: 0 0 1em; font-size: .85em; color: #555; }
.text { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 14px; line-height: 1.5; }
.line { margin: 0 0 .5em; }
.row { white-space: pre; }
.label { display: inline-block; width: 32ch; overflow: hidden; text-overflow: ellipsis; vertical-align: top;
         color: #777; user-select: none; }
.row span { position: relative; }
.row span.label { position: static; }
.row span:hover { outline: 1px solid #000; }
.row span.label:hover { outline: none; }
.row span:not(.label):hover::after { content: attr(data-v); position: absolute; left: 0; top: 1.4em; z-index: 10;
        background: #222; color: #fff; padding: .2em .4em; border-radius: 3px; font-size: 12px; }
"""


def html_page(text: str, rows: list[HeatRow], title: str, meta: str = "") -> str:
    """One self-contained page: no script and no network (its Content-Security-Policy forbids both),
    every character of the text escaped. Each line of the text is a block of one row per unit; a
    character's hover tip (pure CSS) gives the activation."""
    used: set[int] = set()
    blocks = []
    for start, end in lines(text):
        block = []
        for row in rows:
            spans = []
            for i in range(start, end):
                q = round(float(np.clip(np.nan_to_num(row.values[i]), -1, 1)) * STEPS)
                used.add(q)
                shown = html.escape(visible(text[i]), quote=False)
                spans.append(f'<span class="q{q + STEPS}" data-v="{row.values[i]:+.2f}">{shown}</span>')
            label = f'<span class="label">{html.escape(row.label)}</span>' if len(rows) > 1 else ""
            block.append(f'<div class="row">{label}{"".join(spans)}</div>')
        blocks.append(f'<div class="line">{"".join(block)}</div>')
    classes = "\n".join(f".q{q + STEPS} {{ background: {hex_colour(rgb)};{' color: #fff;' if dark(rgb) else ''} }}"
                        for q in sorted(used) for rgb in [colour(q / STEPS)])
    legend = "".join(f'<span style="background: {hex_colour(colour(v))};{" color: #fff;" if dark(colour(v)) else ""}">'
                     f"{v:+g}</span>" for v in LEGEND)
    names = "".join(f"<div>{html.escape(row.label)}</div>" for row in rows)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{PAGE_STYLE}{classes}\n</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n<p class=\"meta\">{html.escape(meta)}</p>\n"
        f"<div class=\"legend\"><span class=\"caption\">activation (tanh(c) or h): </span>{legend}</div>\n"
        f"<div class=\"rows\">{names}</div>\n"
        f"<div class=\"text\">{''.join(blocks)}</div>\n</body>\n</html>\n"
    )
