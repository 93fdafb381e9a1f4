"""How should a label enter the recurrence? Measured on a tiny task: `python bench/label_modes.py`.

Four labels, each a Markov chain of its own over one 30-character alphabet (records of 40 to 80
characters, one a line as LABEL<TAB>TEXT). A model that knows the label from the first character
predicts better than one that must infer it from the text. Each label mode (added to the input at
every step, or as the initial state) trains with the same settings and seeds for a fixed number
of steps; the script prints the validation nats/char and the classification accuracy (eval
classify) on held-out records of each, and their means. Written to settle the default of
`--label-mode` (charrnn.data.labels.DEFAULT_LABEL_MODE); the figures are in docs/poems.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,;"
LABELS = ("north", "south", "east", "west")


def records(n: int, rng: np.random.Generator, chains: np.ndarray) -> list[str]:
    """n records LABEL<TAB>TEXT drawn from the labels' chains (4, A, A)."""
    out = []
    for _ in range(n):
        k = int(rng.integers(len(LABELS)))
        c = int(rng.integers(len(ALPHABET)))
        text = []
        for _ in range(int(rng.integers(40, 81))):
            c = int(rng.choice(len(ALPHABET), p=chains[k, c]))
            text.append(ALPHABET[c])
        out.append(f"{LABELS[k]}\t{''.join(text)}")
    return out


def charrnn(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "charrnn", *args], capture_output=True, text=True, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=64)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    # Peaked rows: each label's chain prefers a few successors per character (Dirichlet 0.1).
    chains = rng.dirichlet(np.full(len(ALPHABET), 0.1), size=(len(LABELS), len(ALPHABET)))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "train.txt").write_text("\n".join(records(3000, rng, chains)) + "\n", encoding="utf-8")
        (d / "test.txt").write_text("\n".join(records(300, rng, chains)) + "\n", encoding="utf-8")
        results: dict[str, list[tuple[float, float]]] = {}
        for mode in ("add", "state"):
            for seed in range(args.seeds):
                model = d / f"{mode}{seed}.pt"
                out = json.loads(charrnn("train", str(d / "train.txt"), "-o", str(model), "--partition", "records",
                                         "--labels", "--label-mode", mode, "--max-steps", str(args.steps),
                                         "--hidden", str(args.hidden), "--seed", str(seed), "--threads", "1",
                                         "--precision", "fp32", "--val-every", str(args.steps), "--json", "-q").stdout)
                lines = charrnn("eval", "classify", "-m", str(model), str(d / "test.txt"), "--json",
                                "--threads", "1").stdout.splitlines()
                accuracy = float(np.mean([json.loads(line)["correct"] for line in lines]))
                results.setdefault(mode, []).append((out["val_loss"], accuracy))
                print(f"{mode:5s} seed {seed}: validation {out['val_loss']:.4f} nats/char, "
                      f"accuracy {accuracy:.3f}", flush=True)
        for mode, rows in results.items():
            val, acc = np.mean(rows, axis=0)
            print(f"{mode:5s} mean over {len(rows)} seeds: validation {val:.4f} nats/char, accuracy {acc:.3f}")
    print(f"({args.steps} steps, 1x{args.hidden} LSTM, 1 thread; {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
