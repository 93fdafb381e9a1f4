"""A busy machine: training, eval perplexity and eval score beside one CPU-bound process, with 1 thread,
with torch's default count and with the adaptive choice (charrnn.threads), and the same on a quiet machine.

Each measurement is a fresh process (torch starts with its default thread count, as a user's command
does), with OMP_NUM_THREADS removed from its environment. The neighbour is a Python busy loop (one core)
or, with --neighbour matmul, a one-thread torch matmul loop; it runs through the whole measurement.

    python bench/busy.py                  # the row: busy and quiet, 3 repeats (median), 9 minutes
    python bench/busy.py --quick          # checks the script: 1 repeat, shorter work, 3 minutes
    python bench/busy.py --busy-only      # skip the quiet half (when the machine cannot be made quiet)

Speeds are characters per second of the work itself: training's own figure (time inside the steps), and
for eval and score the time of the scoring call in the child (the model already loaded). The targets
(issues 22 and 27): adaptive >= 0.9x the better fixed count beside the neighbour, and >= 0.95x the better
fixed count when quiet, each a median of three interleaved runs; every row says whether it meets its
target, and `--check` exits 1 when one does not. The times above are those of a 2-vCPU AMD EPYC whose
load average was near 0 before the run (2026-12-01): the whole run, 9 minutes, gave adaptive/best fixed
0.95 (train), 1.01 (eval), 0.97 (score) beside a busy loop, and adaptive/default 1.01, 0.95, 0.95 when
quiet (the quiet ratios are within the run-to-run noise of 5%); that was before the chooser's longer
trials on close calls, its tie rule and its checks of a count below the most (issue 27), not measured
since. The machine must be otherwise idle: every other process is a neighbour too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NEIGHBOURS = {
    "python": "while True: pass",
    "matmul": "import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\nwhile True: a @ a",
}


def env() -> dict[str, str]:
    """The children's environment: this checkout on the path, no thread count imposed."""
    out = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out["PYTHONPATH"] = str(ROOT) + (os.pathsep + out["PYTHONPATH"] if out.get("PYTHONPATH") else "")
    return out


def threads_args(mode: str) -> list[str]:
    return [] if mode == "adaptive" else ["--threads", mode]


def run_train(mode: str, steps: int, tmp: Path) -> dict:
    """`charrnn train pydoc --max-steps STEPS`: its chars/s and the choices it said on stderr."""
    cmd = [sys.executable, "-m", "charrnn", "train", "pydoc", "--max-steps", str(steps), "--val-every", "100000",
           "-o", str(tmp / f"train-{mode}.pt"), "--json", *threads_args(mode)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env(), check=True)
    out = json.loads(r.stdout)
    said = [line for line in r.stderr.splitlines() if line.startswith("threads:")]
    return {"chars_per_second": out["chars_per_second"], "threads": out["threads"], "said": said}


def run_child(kind: str, mode: str, model: Path, chars: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--mode", mode, "--model", str(model),
           "--chars", str(chars)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env(), check=True)
    return json.loads(r.stdout.splitlines()[-1])


def child(kind: str, mode: str, model_path: str, chars: int) -> None:
    """In a fresh process: score the first `chars` characters of pydoc (eval) or its lines (score)."""
    from charrnn.data.corpora import builtin_text
    from charrnn.inference.evaluate import evaluate
    from charrnn.inference.score import Scorer, score_stream
    from charrnn.model.checkpoint import load_model
    from charrnn.threads import make_chooser

    model, vocab, _ = load_model(model_path, "cpu")
    text = builtin_text("pydoc")[:chars]
    chooser = make_chooser(None if mode == "adaptive" else int(mode), "cpu")
    start = time.perf_counter()
    if kind == "eval":
        ids = vocab.encode(text, unk="map")
        evaluate(model, ids, unk_id=vocab.unk_id, threads=chooser)
        done = len(ids) - 1
    else:
        records = text.split("\n")
        for _ in score_stream([Scorer(model, vocab, "\n")], [records], threads=chooser):
            pass
        done = len(text)
    seconds = time.perf_counter() - start
    print(json.dumps({"chars_per_second": done / seconds, "threads": chooser.threads,
                      "said": [c.describe() for c in chooser.choices]}))


def measure(work: str, mode: str, args: argparse.Namespace, model: Path, tmp: Path) -> dict:
    if work == "train":
        return run_train(mode, args.steps, tmp)
    return run_child(work, mode, model, args.eval_chars if work == "eval" else args.score_chars)


def row(work: str, busy: bool, modes: list[str], args: argparse.Namespace, model: Path, tmp: Path) -> dict:
    """The median speed of each mode over the repeats (modes interleaved, so that a change in the
    machine's load falls on all of them), each beside a fresh neighbour when `busy`."""
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for _ in range(args.repeat):
        for mode in modes:
            neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOURS[args.neighbour]]) if busy else None
            try:
                time.sleep(0.5 if busy else 0.0)  # the neighbour is running before the work starts
                runs[mode].append(measure(work, mode, args, model, tmp))
            finally:
                if neighbour is not None:
                    neighbour.kill()
                    neighbour.wait()
    speeds = {m: statistics.median(r["chars_per_second"] for r in rs) for m, rs in runs.items()}
    said = sorted({line for r in runs["adaptive"] for line in r["said"]})
    return {"work": work, "busy": busy, "speeds": speeds, "adaptive_said": said,
            "adaptive_threads": [r["threads"] for r in runs["adaptive"]]}


TARGETS = {True: 0.9, False: 0.95}  # adaptive / the better fixed count, busy and quiet


def meets(r: dict) -> bool:
    s = r["speeds"]
    return s["adaptive"] >= TARGETS[r["busy"]] * max(v for m, v in s.items() if m != "adaptive")


def show(r: dict, default: str) -> str:
    s = r["speeds"]
    fixed = {m: v for m, v in s.items() if m != "adaptive"}
    ratio = s["adaptive"] / max(fixed.values())
    cells = "  ".join(f"{m} threads {v:8,.0f}" for m, v in fixed.items())
    return (f"{r['work']:<6} {'busy ' if r['busy'] else 'quiet'}  {cells}  adaptive {s['adaptive']:8,.0f}  "
            f"adaptive/best fixed {ratio:.2f} (target {TARGETS[r['busy']]:.2f}: "
            f"{'meets' if meets(r) else 'MISSES'})  chose {r['adaptive_threads']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 repeat, less work: checks the script")
    ap.add_argument("--busy-only", action="store_true", help="skip the quiet-machine half")
    ap.add_argument("--repeat", type=int, default=None, help="repeats per measurement (median; default 3)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default 40)")
    ap.add_argument("--neighbour", choices=sorted(NEIGHBOURS), default="python")
    ap.add_argument("--json", dest="json_out", type=Path, help="also write the results here")
    ap.add_argument("--check", action="store_true", help="exit 1 when a row misses its target")
    ap.add_argument("--child", choices=["eval", "score"], help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--chars", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.mode, args.model, args.chars)
        return
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.steps = args.steps or 40
    args.eval_chars = 120_000 if args.quick else 465_048
    args.score_chars = 60_000 if args.quick else 200_000
    import torch

    default = str(torch.get_num_threads())
    modes = list(dict.fromkeys(["1", default, "adaptive"]))
    if len(modes) < 3:
        sys.exit("this machine's default is 1 thread: there is nothing to choose")
    print(f"# {os.cpu_count()} CPUs, torch default {default} threads, neighbour: {args.neighbour} busy loop, "
          f"{args.repeat} repeat(s), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="charrnn-busy-") as d:
        tmp = Path(d)
        model = tmp / "model.pt"
        subprocess.run([sys.executable, "-m", "charrnn", "train", "pydoc", "--max-steps", "40", "-o", str(model),
                        "-q", "--threads", "1"], check=True, env=env(), stdout=subprocess.DEVNULL)
        for busy in [True] + ([] if args.busy_only else [False]):
            for work in ("train", "eval", "score"):
                r = row(work, busy, modes, args, model, tmp)
                results.append(r)
                print(show(r, default), flush=True)
                for line in r["adaptive_said"]:
                    print(f"    adaptive said: {line}", flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=1) + "\n")
    if args.check and not all(meets(r) for r in results):
        sys.exit("a row misses its target")


if __name__ == "__main__":
    main()
