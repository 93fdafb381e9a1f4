"""The heat-text colour scale and page: every character escaped and drawn, no script, a legend."""

from __future__ import annotations

from html.parser import HTMLParser

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from charrnn.display.heattext import HeatRow, colour, html_page, lines
from charrnn.inference.surprise import visible


class Rows(HTMLParser):
    """The characters of every heat row, and every tag seen."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[str] = []
        self.tags: set[str] = set()
        self.depth = 0  # inside a row's character span

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.add(tag)
        cls = dict(attrs).get("class", "") or ""
        if tag == "div" and cls == "row":
            self.rows.append("")
        elif tag == "span" and cls.startswith("q"):
            self.depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "span" and self.depth:
            self.depth -= 1

    def handle_data(self, data: str) -> None:
        if self.depth:
            self.rows[-1] += data


def test_colour_scale_ends_and_middle() -> None:
    assert colour(-1.0) == (33, 102, 172) and colour(1.0) == (178, 24, 43) and colour(0.0) == (247, 247, 247)
    assert colour(-5.0) == colour(-1.0) and colour(5.0) == colour(1.0) and colour(float("nan")) == colour(0.0)
    assert colour(0.75)[0] < colour(0.25)[0] or colour(0.75)[1] < colour(0.25)[1]  # darker towards +1


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=120), st.integers(1, 3))
def test_every_character_is_escaped_and_drawn_in_every_row(text: str, n_rows: int) -> None:
    values = np.linspace(-1.2, 1.2, max(len(text), 1))[: len(text)]
    rows = [HeatRow(f"1:{k} <b>&", values * (-1) ** k) for k in range(n_rows)]
    page = html_page(text, rows, title="<script>alert(1)</script>", meta="a < b")
    parser = Rows()
    parser.feed(page)
    assert "script" not in parser.tags and "default-src 'none'" in page and "<script>" not in page
    expected = ["".join(visible(c) for c in text[start:end]) for start, end in lines(text) for _ in rows]
    assert parser.rows == expected


def test_lines_keep_their_newlines() -> None:
    assert list(lines("ab\n\ncd")) == [(0, 3), (3, 4), (4, 6)]
    assert list(lines("")) == [] and list(lines("x\n")) == [(0, 2)]
