"""The large-vocabulary row of `make bench` (issue 29, 1): the same `charrnn train` command on tinyshakespeare
(65 characters) and on tangshi.txt (57,603 Tang poems, 9,589 characters), one after the other in the same run,
each for the quality run's budget: training chars/s of both and their ratio, and tangshi's validation nats/char;
beside it the count baselines (unigram and bigram tables with add-k smoothing) and the transformer baseline
(bench/transformer.py) on the same split and budget.

The split is the CLI's: the last 10% of the text held out, at most --val-max-chars (250,000) characters of it, so
on tangshi.txt the last 250,000 characters (about the last 6.7% of the poems, the partial first poem included).

    python bench/run.py --only tangshi           # this row alone (about 8 minutes: 150 s x 3 and the scoring)
    python bench/run.py --only tangshi --quick   # a smoke run: 15 s budgets
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from charrnn.config import DEFAULT_VAL_MAX_CHARS
from charrnn.data.partition import split_train_val
from charrnn.data.vocab import Vocab

TANGSHI = "tangshi.txt"
SPEED_GOAL = 0.6  # tangshi's training chars/s against tinyshakespeare's, same command, same run
QUALITY_GOAL = 5.0  # tangshi's validation nats/char after 150 s
VAL_FRACTION = 0.1
# add-k smoothing constants tried for the count tables; the one chosen is the best on the last 10% of the
# training part (never on the held-out text).
K_GRID = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 0.0003)


def split(text: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(training ids, held-out ids, vocabulary size) as `charrnn train` splits the text by default."""
    vocab = Vocab.build(text)
    train, held = split_train_val(vocab.encode(text).astype(np.int64), VAL_FRACTION, max_chars=DEFAULT_VAL_MAX_CHARS)
    return train, held, vocab.size


def unigram_nats(train: np.ndarray, held: np.ndarray, v: int, k: float) -> float:
    """Mean -ln p(c) on `held` with p(c) = (n(c) + k) / (N + k V)."""
    counts = np.bincount(train, minlength=v).astype(np.float64)
    p = (counts + k) / (counts.sum() + k * v)
    return float(-np.log(p[held]).mean())


def bigram_nats(train: np.ndarray, held: np.ndarray, v: int, k: float) -> float:
    """Mean -ln p(b | a) over the pairs of `held` with p(b | a) = (n(a, b) + k) / (n(a) + k V); the counts are
    kept sparse (pair code a V + b), as a dense V x V table of 9,589 characters would take 368 MB."""
    pairs, counts = np.unique(train[:-1] * v + train[1:], return_counts=True)
    firsts = np.bincount(train[:-1], minlength=v).astype(np.float64)
    wanted = held[:-1] * v + held[1:]
    at = np.minimum(np.searchsorted(pairs, wanted), len(pairs) - 1)
    n_ab = np.where(pairs[at] == wanted, counts[at], 0).astype(np.float64)
    return float(-np.log((n_ab + k) / (firsts[held[:-1]] + k * v)).mean())


def count_baselines(text: str) -> dict:
    """The unigram and bigram tables' held-out nats/char, each with the k chosen on a development part."""
    train, held, v = split(text)
    dev_train, dev = split_train_val(train, VAL_FRACTION)
    out = {"held_out_chars": int(len(held)), "vocab": v}
    for name, fn in (("unigram", unigram_nats), ("bigram", bigram_nats)):
        k = min(K_GRID, key=lambda k: fn(dev_train, dev, v, k))
        out[name] = {"k": k, "val_nats_per_char": round(fn(train, held, v, k), 4)}
    return out


def train_row(cli: list[str], corpus: Path, seconds: float, device: str, tmp: Path, run_measured) -> dict:
    """`charrnn train CORPUS -o M --time-budget S` with every other option at its default: its summary."""
    out = tmp / f"{corpus.stem}.pt"
    r = run_measured([*cli, "train", str(corpus), "-o", str(out), "--time-budget", f"{seconds:g}", "--json", "-q",
                      "--device", device], tmp)
    s = json.loads(r["stdout"].strip().splitlines()[-1])
    return {"corpus": corpus.name, "steps": s["steps"], "chars_per_s": round(s["chars_per_second"]),
            "val_nats_per_char": round(s["val_loss"], 4), "precision": s.get("precision")}


def bench_tangshi(shared: Path, seconds: float, device: str, tmp: Path, cli: list[str], run_measured, log,
                  baseline=None) -> dict | None:
    """The row: both trainings (tinyshakespeare first), the count tables, and `baseline(path, seconds)` (the
    transformer) when given. None when either corpus is missing from `shared`."""
    poems, shakespeare = shared / TANGSHI, shared / "tinyshakespeare.txt"
    if not (poems.exists() and shakespeare.exists()):
        log(f"tangshi row skipped: {TANGSHI} or tinyshakespeare.txt missing from {shared}")
        return None
    row: dict = {"seconds": seconds}
    for key, corpus in (("tinyshakespeare", shakespeare), ("tangshi", poems)):
        log(f"tangshi row: `charrnn train {corpus.name} --time-budget {seconds:g}` with its defaults")
        row[key] = train_row(cli, corpus, seconds, device, tmp, run_measured)
    row["speed_ratio"] = round(row["tangshi"]["chars_per_s"] / row["tinyshakespeare"]["chars_per_s"], 3)
    log("tangshi row: unigram and bigram count tables")
    row["counts"] = count_baselines(poems.read_text(encoding="utf-8"))
    if baseline is not None:
        log(f"tangshi row: transformer baseline, {seconds:g} s")
        try:
            row["baseline"] = baseline(poems, seconds)["best"]
        except Exception as e:  # a failure there must not lose the row
            row["baseline"] = {"error": f"{type(e).__name__}: {e}"}
    return row


def tangshi_targets(row: dict) -> list[tuple[str, float, str, bool | None]]:
    """(target, value, shown, met) of the row; the quality goal is judged only after a 150-s budget."""
    ratio, val = row["speed_ratio"], row["tangshi"]["val_nats_per_char"]
    return [(f"training on tangshi.txt >= {SPEED_GOAL}x tinyshakespeare's chars/s (same command, same run)", ratio,
             f"{ratio:.2f}x ({row['tangshi']['chars_per_s']:,} / {row['tinyshakespeare']['chars_per_s']:,})",
             ratio >= SPEED_GOAL),
            (f"tangshi.txt validation <= {QUALITY_GOAL} nats/char after 150 s of default training", val,
             f"{val:.4f} after {row['seconds']:g} s (bigram table {row['counts']['bigram']['val_nats_per_char']:.4f})",
             val <= QUALITY_GOAL if row["seconds"] == 150 else None)]


def tangshi_markdown(row: dict) -> list[str]:
    c, t, s = row["counts"], row["tangshi"], row["tinyshakespeare"]
    lines = [f"| large vocabulary: `charrnn train FILE --time-budget {row['seconds']:g}`, defaults, same run "
             "| steps | chars/s | validation, nats/char |", "| --- | ---: | ---: | ---: |",
             f"| tinyshakespeare.txt (65 characters) | {s['steps']} | {s['chars_per_s']:,} | "
             f"{s['val_nats_per_char']} |",
             f"| tangshi.txt (9,589 characters; last {c['held_out_chars']:,} characters held out) | {t['steps']} | "
             f"{t['chars_per_s']:,} ({row['speed_ratio']:.2f}x) | {t['val_nats_per_char']} |",
             f"| tangshi.txt, unigram count table (add-{c['unigram']['k']:g}) | | | "
             f"{c['unigram']['val_nats_per_char']} |",
             f"| tangshi.txt, bigram count table (add-{c['bigram']['k']:g}) | | | {c['bigram']['val_nats_per_char']} |"]
    b = row.get("baseline")
    if b and "error" not in b:
        lines.append(f"| tangshi.txt, transformer baseline {b['name']} ({b['n_layer']}x{b['n_embd']}, "
                     f"{b['parameters']:,} parameters) | {b['steps']} | {b['chars_per_s']:,} | "
                     f"{b['val_nats_per_char']} |")
    elif b:
        lines.append(f"| tangshi.txt, transformer baseline | | | failed: {b['error']} |")
    return lines
