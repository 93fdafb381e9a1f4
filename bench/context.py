"""Benchmark row of issue 19 (eval context): how long 2,000 targets x 10 context lengths take.

    python bench/context.py [--targets 2000] [--hidden 384] [--layers 1] [--cell lstm] [--device cpu]

The default model of `charrnn train` (1x384 LSTM, embedding 64) with the vocabulary of The Time
Machine (random weights: the speed does not depend on them), on the first 100,000 characters of
../shared/corpora/timemachine.txt beside the checkout (random ids when absent), with the
default lengths 1 2 5 10 20 50 100 200 500 1000. Prints the seconds of the full-context pass and
of each length, the total (wall and CPU time: on a shared machine the wall time is an upper bound)
and the arithmetic done (targets x sum(lengths) recurrent steps, each about 2 x gates x hidden x
(hidden + input) flops) per second, then a markdown row.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from measure import cpu_name  # noqa: E402

from charrnn.analysis.context import DEFAULT_LENGTHS, context_curve  # noqa: E402
from charrnn.data.vocab import Vocab  # noqa: E402
from charrnn.model.network import CharRNN, ModelConfig, resolve_device  # noqa: E402

CORPORA = [ROOT.parent / "shared" / "corpora"]


def text_ids(chars: int) -> tuple[np.ndarray, int]:
    for folder in CORPORA:
        path = folder / "timemachine.txt"
        if path.exists():
            text = path.read_text(encoding="utf-8")[:chars]
            vocab = Vocab.build(text)
            return vocab.encode(text, unk="map").astype(np.int64), vocab.size
    return np.random.default_rng(0).integers(0, 100, chars), 100


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", type=int, default=2000)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--cell", default="lstm")
    ap.add_argument("--chars", type=int, default=100_000)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = resolve_device(args.device)
    ids, vocab_size = text_ids(args.chars)
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=vocab_size, cell=args.cell, hidden=args.hidden,
                                layers=args.layers)).to(device).eval()
    times: list[tuple[int, float]] = []
    began, cpu_began = time.perf_counter(), time.process_time()
    curve = context_curve(model, ids, lengths=DEFAULT_LENGTHS, targets=args.targets,
                          on_point=lambda p, s: (times.append((p.length, s)),
                                                 print(f"length {p.length:>5}: {s:7.1f} s", flush=True)))
    total, cpu = time.perf_counter() - began, time.process_time() - cpu_began
    full = total - sum(s for _, s in times)
    gates = {"rnn": 1, "gru": 3, "lstm": 4}[model.config.base_cell]
    steps = curve.targets * sum(DEFAULT_LENGTHS)
    flops = steps * 2 * gates * args.hidden * (args.hidden + model.config.embed_dim) * args.layers
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{cpu_name()}, {torch.get_num_threads()} threads"
    print(f"full context: {full:.1f} s; total {total:.1f} s wall, {cpu:.1f} s of CPU time (all threads); "
          f"{steps / 1e6:.2f} M recurrent steps, "
          f"{flops / 1e12:.2f} TFLOP, {flops / total / 1e9:.1f} GFLOP/s")
    print(f"| eval context, {curve.targets:,} targets x {len(DEFAULT_LENGTHS)} lengths, "
          f"{args.layers}x{args.hidden} {args.cell} | {where} | {total:.1f} s ({cpu:.1f} s CPU) |")


if __name__ == "__main__":
    main()
