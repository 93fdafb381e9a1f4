"""Data-parallel training throughput: characters/s of the default model (lstm 2x256, batch 32 x 64)
trained by 1 process and by N gloo processes on this machine (`charrnn train --nproc N`).

    python bench/ddp.py [--nproc 2] [--steps 150] [--rounds 2] [--quick] [--out bench/results]

Each configuration runs as a real `charrnn train ... --json` command, interleaved (1, N, N, 1 with
two rounds), and the best round of each is reported. chars/s is the command's own figure: characters
of the whole (global) minibatch over the time spent in training steps, as rank 0 sees it (a step
includes waiting for the gradient all-reduce), so start-up, corpus preparation and validation are
left out. Threads: one process uses torch's default (all cores); N processes get OMP_NUM_THREADS =
cores // N each (what --nproc sets). About 2 minutes on a 2-core CPU with the defaults; --quick
(a few steps of a tiny model) only checks that the script works.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def corpus(shared: Path) -> str:
    path = shared / "tinyshakespeare.txt"
    return str(path) if path.exists() else "pydoc"


def train_once(text: str, nproc: int, steps: int, tmp: Path, quick: bool) -> dict:
    """One `charrnn train` run; its --json summary plus the wall time of the whole command."""
    out = tmp / f"m{nproc}.pt"
    cmd = [sys.executable, "-m", "charrnn", "train", text, "-o", str(out), "--max-steps", str(steps),
           "--val-every", str(10 * steps), "--json", "-q"]  # validation only once, at the end
    if quick:
        cmd += ["--preset", "tiny", "--hidden", "16", "--batch-size", "8", "--num-steps", "16"]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return {**json.loads(done.stdout), "wall_seconds": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nproc", type=int, default=2, help="processes of the parallel run")
    ap.add_argument("--steps", type=int, default=150, help="training steps per run")
    ap.add_argument("--rounds", type=int, default=2, help="1: (1, N); 2: (1, N, N, 1)")
    ap.add_argument("--quick", action="store_true", help="a few steps of a tiny model: checks the script")
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "corpora"))
    ap.add_argument("--out", default=None, help="also write ddp.json into this folder")
    args = ap.parse_args()
    steps = 4 if args.quick else args.steps
    text = corpus(Path(args.shared))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    order = [1, args.nproc] + ([args.nproc, 1] if args.rounds > 1 else [])
    runs: dict[int, list[dict]] = {1: [], args.nproc: []}
    with tempfile.TemporaryDirectory() as tmp:
        for n in order:
            r = train_once(text, n, steps, Path(tmp), args.quick)
            runs[n].append(r)
            print(f"{n} process(es): {r['chars_per_second']:,.0f} chars/s, {r['steps']} steps, "
                  f"{r['wall_seconds']:.1f} s wall", file=sys.stderr)
    best = {n: max(rs, key=lambda r: r["chars_per_second"]) for n, rs in runs.items()}
    threads = {1: "torch default", args.nproc: f"OMP_NUM_THREADS={max(1, cores // args.nproc)} each"}
    print(f"Corpus {text}, {cores} cores, {steps} steps per run, best of {len(runs[1])}.\n")
    print("| processes (gloo) | threads | chars/s | vs 1 process | wall s (whole command) |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for n in sorted(best):
        r = best[n]
        print(f"| {n} | {threads[n]} | {r['chars_per_second']:,.0f} | "
              f"{r['chars_per_second'] / best[1]['chars_per_second']:.2f}x | {r['wall_seconds']:.1f} |")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "ddp.json").write_text(json.dumps(
            {"corpus": text, "cores": cores, "steps": steps, "threads": threads, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
