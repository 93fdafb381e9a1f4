"""Benchmark row of issue 19 (inspect cells): do a model's units learn to track quotes and brackets?

    python bench/inspect_cells.py [--quick] [--seconds 300] [--model M.pt] [--chars 20000] [--device cpu]

Trains the default model (`charrnn train stdlib -o M.pt --time-budget SECONDS`: one 384-unit LSTM
layer, embedding input) on the built-in `stdlib` corpus, then scores every unit against every text
property (`charrnn inspect cells`, in process) on --chars characters of held-out stdlib text: the
start of the tail that `charrnn train` validates on (the last 10%, at most 250,000 characters), so
the model never trained on it. Prints the best unit's |r| for each property beside the random-weights
control, steps done and validation bits/char. Target (issue 19): |r| >= 0.7 for quote and bracket.

--model reuses a trained checkpoint (no training). --quick (a smoke test, numbers mean nothing): a
20-second training and 3,000 characters. The time budget counts training only; validation and
saving come on top, and on a shared machine fewer steps fit in it: report the steps done.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from charrnn.analysis.cells import control_model, rank  # noqa: E402
from charrnn.analysis.textprops import PROPERTIES  # noqa: E402
from charrnn.analysis.trace import trace  # noqa: E402
from charrnn.config import DEFAULT_VAL_MAX_CHARS  # noqa: E402
from charrnn.data.corpora import builtin_text  # noqa: E402
from charrnn.model.checkpoint import load_model  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def held_out_stdlib(chars: int) -> str:
    """The first `chars` characters of the stdlib tail `charrnn train` validates on."""
    text = builtin_text("stdlib")
    n_val = min(int(round(len(text) * 0.1)), DEFAULT_VAL_MAX_CHARS)
    return text[len(text) - n_val :][:chars]


def train(out: Path, seconds: float, device: str) -> float:
    cmd = [sys.executable, "-m", "charrnn", "train", "stdlib", "-o", str(out), "--time-budget", str(seconds),
           "--device", device, "-q"]
    log("$ " + " ".join(cmd[1:]))
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"training failed: {r.stderr.strip()[-2000:]}")
    log(r.stdout.strip())
    return time.perf_counter() - start


def measure(model_path: Path, chars: int, device: str, seed: int = 0) -> dict:
    model, vocab, ckpt = load_model(model_path, device)
    model.eval()
    text = held_out_stdlib(chars)
    ids = np.asarray(vocab.encode(text, unk="map"), dtype=np.int64)
    ranking = rank(trace(model, ids), text)
    control = rank(trace(control_model(model, seed), ids), text)
    rows = {}
    for p in PROPERTIES:
        unit = ranking.units[ranking.by_property(p)[0]]
        rows[p] = {"unit": unit.label(ranking.lstm), "r": ranking.best_r(p), "control": abs(control.best_r(p))}
    val = ckpt.get("val_loss")
    return {"steps": ckpt.get("step"), "train_seconds": ckpt.get("elapsed"), "chars": len(text),
            "val_bits_per_char": val / np.log(2) if val is not None else None, "config": model.config, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a 20-second training and 3,000 characters (smoke test)")
    ap.add_argument("--seconds", type=float, default=300.0, help="training time budget")
    ap.add_argument("--model", type=Path, default=None, help="measure this checkpoint instead of training one")
    ap.add_argument("--chars", type=int, default=20_000, help="held-out characters to measure on")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    seconds, chars = (20.0, 3_000) if args.quick else (args.seconds, args.chars)
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model
        wall = None
        if path is None:
            path = Path(tmp) / "stdlib.pt"
            wall = train(path, seconds, args.device)
        result = measure(path, chars, args.device)
    c = result["config"]
    print(f"model: {c.layers}x{c.hidden} {c.cell}, {c.input} input; {result['steps']} steps in "
          f"{result['train_seconds']:.0f} s of training" + (f" ({wall:.0f} s wall with validation)" if wall else "")
          + f"; validation {result['val_bits_per_char']:.3f} bits/char")
    print(f"held-out stdlib text: {result['chars']:,} characters\n")
    print("| property | best unit | r | control best \\|r\\| |\n|---|---|---:|---:|")
    for p, row in result["rows"].items():
        print(f"| {p} | {row['unit']} | {row['r']:+.3f} | {row['control']:.3f} |")
    for p in ("quote", "bracket"):
        r = abs(result["rows"][p]["r"])
        print(f"\n{p}: best |r| {r:.3f} ({'meets' if r >= 0.7 else 'below'} the 0.7 target)", end="")
    print()


if __name__ == "__main__":
    main()
