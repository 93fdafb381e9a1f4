"""Dynamic evaluation's gain (issue 22, 4): static against dynamic nats/char on a corpus's held-out text.

Takes a model (--model) or trains one (`charrnn train CORPUS` for --train-seconds, --hidden wide), then
optionally grids lr x decay x segment on a validation text (--grid) and scores the test text statically
(one pass, as `eval perplexity --dynamic` does) and dynamically with the chosen or given settings, with the
gradient statistics gathered causally (the default) and, with --stats-chars, from the training text.

Held-out texts: for ptb-char its official valid and test parts; for a plain file the last 10% (what
`charrnn train` validates on), its first half as validation and its second half as test.

    python bench/dynamic.py --grid
    python bench/dynamic.py --corpus ptb-char --model ptb.best.pt --test-chars 0
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from measure import cpu_name

from charrnn.data.cache import encode_corpus
from charrnn.data.corpora import catalog_entry, part_of, source_parts
from charrnn.inference.dynamic import (
    DEFAULT_DECAY,
    DEFAULT_LR,
    DEFAULT_SEGMENT,
    DynamicConfig,
    collect_stats,
    dynamic_evaluate,
)
from charrnn.inference.evaluate import evaluate
from charrnn.model.checkpoint import load_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"  # the catalog corpora, when present


def texts(corpus: str, vocab) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, validation, test) ids of `corpus` under `vocab` (see the module docstring)."""
    def ids(parts):
        return encode_corpus(parts, vocab=vocab, unk="map", cache=False).ids

    entry = catalog_entry(corpus)
    if entry is not None and entry.has_splits:
        return tuple(ids([part_of(corpus, p)]) for p in ("train", "valid", "test"))  # type: ignore[return-value]
    whole = ids(source_parts(corpus))
    cut = int(len(whole) * 0.9)
    half = cut + (len(whole) - cut) // 2
    return whole[:cut], whole[cut:half], whole[half:]


def train(corpus: str, seconds: float, hidden: int, out: Path) -> Path:
    cmd = [sys.executable, "-m", "charrnn", "train", corpus, "-o", str(out), "--hidden", str(hidden), "--layers", "1",
           "--time-budget", str(seconds), "--precision", "fp32", "-q"]
    subprocess.run(cmd, check=True)
    return out.with_name(out.stem + ".best.pt")


def grid(model, valid: np.ndarray, unk_id, lrs, decays, segments) -> tuple[DynamicConfig, list[dict]]:
    rows = []
    for segment, lr, decay in itertools.product(segments, lrs, decays):
        config = DynamicConfig(lr=lr, decay=decay, segment=segment)
        t = time.perf_counter()
        nats = dynamic_evaluate(model, valid, config=config, unk_id=unk_id).nats_per_char
        rows.append({**config.to_dict(), "nats_per_char": nats, "seconds": time.perf_counter() - t})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    best = min(rows, key=lambda r: r["nats_per_char"])
    return DynamicConfig(lr=best["lr"], decay=best["decay"], segment=best["segment"]), rows


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(SHARED / "tinyshakespeare.txt"))
    parser.add_argument("--model", help="a checkpoint trained on --corpus (else one is trained)")
    parser.add_argument("--train-seconds", type=float, default=300.0)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--grid", action="store_true", help="choose lr, decay, segment on the validation text")
    parser.add_argument("--lrs", type=floats, default=[3e-4, 1e-3, 3e-3])
    parser.add_argument("--decays", type=floats, default=[3e-3, 1e-2, 3e-2])
    parser.add_argument("--segments", type=lambda s: [int(x) for x in s.split(",")], default=[10, 20, 50])
    parser.add_argument("--lr", type=float, default=DEFAULT_LR)
    parser.add_argument("--decay", type=float, default=DEFAULT_DECAY)
    parser.add_argument("--segment", type=int, default=DEFAULT_SEGMENT)
    parser.add_argument("--valid-chars", type=int, default=20_000, help="of the validation text, for the grid")
    parser.add_argument("--test-chars", type=int, default=0, help="of the test text (0: all of it)")
    parser.add_argument("--stats-chars", type=int, default=0,
                        help="also score with statistics from this many training characters (0: not)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if SHARED.is_dir():  # ptb-char and the other catalog corpora from there, not downloaded
        os.environ.setdefault("CHARRNN_CORPORA", str(SHARED))
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.model) if args.model else train(args.corpus, args.train_seconds, args.hidden,
                                                         Path(tmp) / "m.pt")
        model, vocab, _ = load_model(path)
    train_ids, valid, test = texts(args.corpus, vocab)
    test = test[: args.test_chars] if args.test_chars else test
    config = DynamicConfig(lr=args.lr, decay=args.decay, segment=args.segment)
    rows = []
    if args.grid:
        config, rows = grid(model, valid[: args.valid_chars], vocab.unk_id, args.lrs, args.decays, args.segments)
    static = evaluate(model, test, unk_id=vocab.unk_id, streams=1)
    t = time.perf_counter()
    dynamic = dynamic_evaluate(model, test, config=config, unk_id=vocab.unk_id)
    seconds = time.perf_counter() - t
    report = {"machine": f"{cpu_name()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}",
              "date": datetime.date.today().isoformat(), "corpus": args.corpus, "model": str(model.config),
              "test_chars": static.chars, "static": static.nats_per_char, "dynamic": dynamic.nats_per_char,
              "gain": static.nats_per_char - dynamic.nats_per_char, "config": config.to_dict(),
              "dynamic_chars_per_s": (len(test) - 1) / seconds, "grid": rows}
    if args.stats_chars:
        stats = collect_stats(model, train_ids, segment=config.segment, unk_id=vocab.unk_id,
                              max_chars=args.stats_chars)
        report["dynamic_stats_from_train"] = dynamic_evaluate(model, test, config=config, unk_id=vocab.unk_id,
                                                              stats=stats).nats_per_char
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
