"""bench/bigvocab.py, the large-vocabulary row: the count tables' held-out figures equal a direct computation,
and the row's targets and markdown read its numbers."""

from __future__ import annotations

import importlib.util
import math
import sys
from collections import Counter
from pathlib import Path

import pytest
from cjk import cjk_text

PATH = Path(__file__).resolve().parents[1] / "bench" / "bigvocab.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_bigvocab", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_bigram_and_unigram_equal_the_obvious_computation(bench) -> None:
    text = cjk_text(3000, 80, seed=3)
    train, held, v = bench.split(text)
    k = 0.1
    pairs, firsts = Counter(zip(train[:-1].tolist(), train[1:].tolist(), strict=True)), Counter(train[:-1].tolist())
    want = sum(-math.log((pairs[(a, b)] + k) / (firsts[a] + k * v))
               for a, b in zip(held[:-1].tolist(), held[1:].tolist(), strict=True)) / (len(held) - 1)
    assert bench.bigram_nats(train, held, v, k) == pytest.approx(want, rel=1e-12)
    once = Counter(train.tolist())
    want = sum(-math.log((once[c] + k) / (len(train) + k * v)) for c in held.tolist()) / len(held)
    assert bench.unigram_nats(train, held, v, k) == pytest.approx(want, rel=1e-12)


def test_count_baselines_pick_k_without_the_held_out_text(bench) -> None:
    out = bench.count_baselines(cjk_text(6000, 120, seed=4))
    assert out["bigram"]["k"] in bench.K_GRID and out["unigram"]["k"] in bench.K_GRID
    assert 0 < out["bigram"]["val_nats_per_char"] < math.log(out["vocab"])


def test_targets_and_markdown(bench) -> None:
    row = {"seconds": 150, "speed_ratio": 0.7,
           "tinyshakespeare": {"steps": 300, "chars_per_s": 10000, "val_nats_per_char": 1.5},
           "tangshi": {"steps": 200, "chars_per_s": 7000, "val_nats_per_char": 4.9},
           "counts": {"held_out_chars": 250000, "vocab": 9590, "unigram": {"k": 0.1, "val_nats_per_char": 6.6},
                      "bigram": {"k": 0.01, "val_nats_per_char": 5.5}},
           "baseline": {"error": "RuntimeError: no"}}
    targets = bench.tangshi_targets(row)
    assert [t[3] for t in targets] == [True, True]
    assert [t[3] for t in bench.tangshi_targets({**row, "seconds": 30})] == [True, None]  # not a 150-s run
    md = "\n".join(bench.tangshi_markdown(row))
    assert "0.70x" in md and "| 4.9 |" in md and "failed: RuntimeError" in md
