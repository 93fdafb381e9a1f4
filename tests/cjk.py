"""Tiny Chinese-like corpora made by the tests: random CJK characters (U+4E00..) drawn with a Zipf
distribution, in lines of 5- and 7-character clauses with Chinese punctuation, as Tang poems are."""

from __future__ import annotations

import numpy as np

PUNCTUATION = "，。"


def cjk_text(chars: int = 6000, distinct: int = 300, seed: int = 0, exponent: float = 1.1) -> str:
    """About `chars` characters over `distinct` random CJK characters, frequency of rank r ~ 1 / r^exponent."""
    rng = np.random.default_rng(seed)
    alphabet = [chr(c) for c in rng.choice(np.arange(0x4E00, 0x9FA5), size=distinct, replace=False)]
    p = 1.0 / np.arange(1, distinct + 1) ** exponent
    draws = rng.choice(distinct, size=chars, p=p / p.sum())
    # Every character at least once, so that the vocabulary has `distinct` entries.
    draws[rng.choice(chars, size=distinct, replace=False)] = np.arange(distinct)
    out, i = [], 0
    while i < chars:
        width = 5 if rng.random() < 0.5 else 7
        clauses = [("".join(alphabet[d] for d in draws[i + k * width : i + (k + 1) * width]))
                   for k in range(4)]
        i += 4 * width
        out.append("".join(c + PUNCTUATION[k % 2] for k, c in enumerate(clauses) if c))
    return "\n".join(out) + "\n"
