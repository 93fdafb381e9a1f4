"""Labelled records from tangshi.txt: `python bench/tangshi_labels.py TANGSHI OUT_TRAIN OUT_TEST`.

Each poem (one a line) whose clauses (cut at ，。！？；) all have five characters becomes
`五言<TAB>poem`, all seven `七言<TAB>poem`; other poems (mixed or other lengths) are left out. The
last --test-fraction of the kept poems, in file order, go to OUT_TEST (held out), the rest to
OUT_TRAIN. Counts go to stderr. docs/poems.md trains `charrnn train --labels` on OUT_TRAIN and
classifies OUT_TEST with `charrnn eval classify`.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

CLAUSE_ENDS = re.compile("[，。！？；]")
LABELS = {5: "五言", 7: "七言"}


def label_of(poem: str) -> str | None:
    """五言 or 七言 when every clause of `poem` has five or seven characters, else None."""
    clauses = [c for c in CLAUSE_ENDS.split(poem) if c]
    lengths = {len(c) for c in clauses}
    return LABELS.get(lengths.pop()) if len(lengths) == 1 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tangshi", type=Path)
    parser.add_argument("train", type=Path)
    parser.add_argument("test", type=Path)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    args = parser.parse_args()
    kept = []
    for line in args.tangshi.read_text(encoding="utf-8").splitlines():
        label = label_of(line.strip())
        if label is not None:
            kept.append(f"{label}\t{line.strip()}")
    cut = len(kept) - int(len(kept) * args.test_fraction)
    args.train.write_text("\n".join(kept[:cut]) + "\n", encoding="utf-8")
    args.test.write_text("\n".join(kept[cut:]) + "\n", encoding="utf-8")
    for name, part in (("train", kept[:cut]), ("test", kept[cut:])):
        counts = Counter(r.split("\t", 1)[0] for r in part)
        print(f"{name}: {len(part):,} poems ({', '.join(f'{k} {v:,}' for k, v in sorted(counts.items()))})",
              file=sys.stderr)


if __name__ == "__main__":
    main()
