"""The quality sweep behind the defaults (issue 22, 2): configurations of `charrnn train`, each given the
number of steps it makes in a budget of seconds on a quiet machine, so that results do not depend on what
else the machine is doing.

    python bench/sweep.py measure                 # quiet machine: each configuration's two-thread speed
    python bench/sweep.py run --seeds 0 1 2 --only 1x384 1x512

`measure` trains each configuration for --measure-steps steps with two threads and keeps its chars/s
(bench/results/sweep-speed.json). `run` trains each for budget x speed x (1 - --validation-share) characters'
worth of steps, two runs at a time with one thread each, and appends one JSON line per run to
bench/results/sweep.jsonl. Precision is what auto picks unless a configuration says otherwise.

On a shared machine (issue 29, the large-vocabulary defaults on tangshi.txt), two modes that need no quiet one:

    nice python bench/sweep.py steps --corpus ../shared/corpora/tangshi.txt --steps 150 --only ts-full ts-adaptive
    nice python bench/sweep.py ratio --corpus ../shared/corpora/tangshi.txt --only ts-adaptive ts-full --rounds 3

`steps` trains each configuration for --steps steps with one thread, validating every --steps / 3 on the last
--val-chars characters, and appends its validation curve to bench/results/sweep-steps.jsonl: loss by steps,
whatever else runs. `ratio` times the configurations' training in alternation (--ratio-steps steps each, one
thread, --rounds rounds) and gives each one's chars/s as a ratio to the first's (the median of the rounds):
what survives a busy machine is the ratio of interleaved runs, not a speed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from measure import cpu_name

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SHARED = ROOT.parent / "shared" / "corpora"
ENV = {**os.environ, "CHARRNN_CORPORA": str(SHARED)}  # catalog corpora (ptb-char) from the shared folder

# name -> options after `charrnn train CORPUS`; anything not given is the CLI's default.
CONFIGS: dict[str, list[str]] = {
    "1x384": [],
    "1x384-b16": ["-b", "16"],
    "1x384-ema": ["--average", "ema"],
    "1x384-ema999": ["--average", "ema", "--ema-decay", "0.999"],
    "1x384-tail": ["--average", "tail"],
    "1x448": ["--hidden", "448"],
    "1x512": ["--hidden", "512"],
    "1x512-lr4": ["--hidden", "512", "--lr", "4e-3"],
    "1x512-ema": ["--hidden", "512", "--average", "ema"],
    "1x512-tail": ["--hidden", "512", "--average", "tail"],
    "1x512-d1": ["--hidden", "512", "--dropout", "0.1"],
    "1x512-wd": ["--hidden", "512", "--optimizer", "adamw", "--weight-decay", "0.1"],
    "1x640": ["--hidden", "640", "--lr", "4e-3"],
    "1x640-d2": ["--hidden", "640", "--lr", "4e-3", "--dropout", "0.2"],
    "1x768-d2": ["--hidden", "768", "--lr", "3e-3", "--dropout", "0.2"],
    "2x384-d1": ["--layers", "2", "--dropout", "0.1"],
    "1x512-wdrop": ["--hidden", "512", "--weight-drop", "0.2"],
    "1x512-edrop": ["--hidden", "512", "--embed-dropout", "0.1"],
    "1x640-wdrop-ema": ["--hidden", "640", "--lr", "4e-3", "--weight-drop", "0.25", "--average", "ema"],
    # --average ema validates the raw weights too, and does not change them: each of these is two rows.
    "1x384-fp32-ema": ["--precision", "fp32", "--average", "ema"],
    "1x512-wd-ema": ["--hidden", "512", "--optimizer", "adamw", "--weight-decay", "0.1", "--average", "ema"],
    "1x512-wd-d1-ema": ["--hidden", "512", "--optimizer", "adamw", "--weight-decay", "0.1", "--dropout", "0.1",
                        "--average", "ema"],
    "1x512-wdrop-ema": ["--hidden", "512", "--weight-drop", "0.2", "--average", "ema"],
    "1x640-wd-ema": ["--hidden", "640", "--lr", "4e-3", "--optimizer", "adamw", "--weight-decay", "0.1",
                     "--average", "ema"],
    # tangshi.txt (9,589 characters): the output layer, then the defaults around the adaptive softmax.
    "ts-full": ["--softmax", "full"],
    "ts-adaptive": ["--softmax", "adaptive"],
    "ts-e128": ["--softmax", "adaptive", "--embed-dim", "128"],
    "ts-e256": ["--softmax", "adaptive", "--embed-dim", "256"],
    "ts-lr1e-2": ["--softmax", "adaptive", "--lr", "1e-2"],
    "ts-lr2e-3": ["--softmax", "adaptive", "--lr", "2e-3"],
    "ts-b64": ["--softmax", "adaptive", "-b", "64"],
    "ts-b16": ["--softmax", "adaptive", "-b", "16"],
    "ts-h512": ["--softmax", "adaptive", "--hidden", "512"],
    "ts-h256": ["--softmax", "adaptive", "--hidden", "256"],
    "ts-e128-lr1e-2": ["--softmax", "adaptive", "--embed-dim", "128", "--lr", "1e-2"],
}


def option(opts: list[str], name: str, default: int) -> int:
    return int(opts[opts.index(name) + 1]) if name in opts else default


def train(corpus: str, opts: list[str], out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "charrnn", "train", corpus, "-o", str(out), "--json", "-q", *opts, *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=ENV)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()[-500:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def evaluate_test(corpus: str, model: Path, dynamic: bool) -> dict:
    """The model on its corpus's official test part: static bits/char, and dynamic with --dynamic."""
    cmd = [sys.executable, "-m", "charrnn", "eval", "perplexity", "-m", str(model), corpus, "--split", "test",
           "--json", "--threads", "1", *(["--dynamic"] if dynamic else [])]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=ENV)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()[-500:]}")
    e = json.loads(r.stdout)
    out = {"test_bits_per_char": round(e["bits_per_char"], 4)}
    if dynamic:
        out["dynamic_test_bits_per_char"] = round(e["dynamic"]["bits_per_char"], 4)
    return out


def measure(names: list[str], corpus: str, steps: int) -> None:
    path = RESULTS / "sweep-speed.json"
    speeds = json.loads(path.read_text()) if path.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            s = train(corpus, CONFIGS[name], Path(tmp) / "m.pt",
                      ["--max-steps", str(steps), "--threads", "2", "--val-every", str(10 * steps)])
            speeds[name] = s["chars_per_second"]
            print(f"{name}: {s['chars_per_second']:.0f} chars/s", file=sys.stderr)
    path.write_text(json.dumps(speeds, indent=1) + "\n")


def run(names: list[str], seeds: list[int], corpus: str, budget: float, jobs: int, args: argparse.Namespace) -> None:
    speeds = json.loads((RESULTS / "sweep-speed.json").read_text())
    plan = [(n, s) for n in names for s in seeds]

    def one(item: tuple[str, int]) -> None:
        name, seed = item
        opts = CONFIGS[name]
        chars_per_step = option(opts, "-b", 32) * option(opts, "-t", 64)
        share = args.validation_share
        speed = speeds.get(name) or speeds[name.split("-")[0]]  # averaging costs no speed: the width's own
        steps = round(budget * speed * (1 - share) / chars_per_step)
        with tempfile.TemporaryDirectory() as tmp:
            folder = args.keep or Path(tmp)
            folder.mkdir(parents=True, exist_ok=True)
            out = folder / f"{name}-{seed}.pt"
            s = train(corpus, opts, out, ["--max-steps", str(steps), "--seed", str(seed), "--threads", "1"])
            best = out.with_name(out.stem + ".best.pt")
            test = evaluate_test(corpus, best if best.exists() else out, args.dynamic) if args.test else {}
        row = {"name": name, "corpus": corpus, "options": opts, "seed": seed, "steps": steps, "budget_s": budget,
               "validation_share": share, "speed_chars_per_s": speed, "train_loss": round(s["train_loss"], 4),
               "val_nats_per_char": round(s["val_loss"], 4), "val_bits_per_char": round(s["val_bits_per_char"], 4),
               "precision": s.get("precision"), "weights_from": s.get("weights_from"),
               "raw_val_nats_per_char": s.get("raw_val_loss"), "average_val_nats_per_char": s.get("average_val_loss"),
               **test, "machine": cpu_name(), "date": datetime.date.today().isoformat()}
        with (RESULTS / "sweep.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), file=sys.stderr)

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, plan))


def steps(names: list[str], corpus: str, n: int, val_chars: int) -> None:
    """Loss by steps: each configuration for `n` steps with one thread, its validation curve appended."""
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "m.pt"
            s = train(corpus, CONFIGS[name], out, ["--max-steps", str(n), "--threads", "1", "--val-every",
                                                   str(max(1, n // 3)), "--val-share", "1", "--val-max-chars",
                                                   str(val_chars)])
            log = [json.loads(line) for line in out.with_name(out.name + ".log.jsonl").read_text().splitlines()]
        vals = [(r["step"], round(r["loss"], 4)) for r in log if r.get("kind") == "val"]
        row = {"name": name, "corpus": Path(corpus).name, "options": CONFIGS[name], "steps": n,
               "val_chars": val_chars, "val_curve": vals, "val_nats_per_char": round(s["val_loss"], 4),
               "train_loss": round(s["train_loss"], 4), "chars_per_s_busy": round(s["chars_per_second"]),
               "machine": cpu_name(), "date": datetime.date.today().isoformat()}
        with (RESULTS / "sweep-steps.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps({k: row[k] for k in ("name", "val_curve", "train_loss", "chars_per_s_busy")}),
              file=sys.stderr)


def ratio(names: list[str], corpus: str, n: int, rounds: int) -> None:
    """chars/s of each configuration over the first's, from runs taken in turn (median over `rounds`)."""
    speeds: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            for name in names:
                s = train(corpus, CONFIGS[name], Path(tmp) / "m.pt",
                          ["--max-steps", str(n), "--threads", "1", "--val-every", str(10 * n), "--val-max-chars", "2"])
                speeds[name].append(s["chars_per_second"])
    first = statistics.median(speeds[names[0]])
    row = {"corpus": Path(corpus).name, "steps": n, "rounds": rounds, "reference": names[0],
           "ratios": {name: round(statistics.median(v) / first, 3) for name, v in speeds.items()},
           "chars_per_s_busy": {name: [round(x) for x in v] for name, v in speeds.items()},
           "machine": cpu_name(), "date": datetime.date.today().isoformat()}
    with (RESULTS / "sweep-ratio.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), file=sys.stderr)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["measure", "run", "steps", "ratio"])
    p.add_argument("--only", nargs="+", choices=sorted(CONFIGS), help="these configurations (default: all)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--corpus", default=str(SHARED / "tinyshakespeare.txt"), help="a file, or a catalog corpus name")
    p.add_argument("--budget", type=float, default=150.0, help="seconds of quiet-machine training to match")
    p.add_argument("--measure-steps", type=int, default=120)
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    p.add_argument("--validation-share", type=float, default=0.10,
                   help="of a clocked run's time that goes to validation (train's --val-share caps it at 10%%)")
    p.add_argument("--keep", type=Path, help="keep the models in this folder")
    p.add_argument("--test", action="store_true", help="score the best checkpoint on the corpus's test part")
    p.add_argument("--dynamic", action="store_true", help="with --test: dynamic evaluation too")
    p.add_argument("--steps", type=int, default=150, help="steps: the steps of each configuration")
    p.add_argument("--val-chars", type=int, default=50_000, help="steps: the held-out characters validated on")
    p.add_argument("--ratio-steps", type=int, default=20, help="ratio: the steps of each timed run")
    p.add_argument("--rounds", type=int, default=3, help="ratio: runs of each configuration, in turn")
    args = p.parse_args()
    if not (Path(args.corpus).is_file() or (SHARED / args.corpus).is_dir()):
        sys.exit(f"Error: {args.corpus} not found (the shared corpora are needed)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    names = args.only or list(CONFIGS)
    if args.what == "measure":
        measure(names, args.corpus, args.measure_steps)
    elif args.what == "steps":
        steps(names, args.corpus, args.steps, args.val_chars)
    elif args.what == "ratio":
        ratio(names, args.corpus, args.ratio_steps, args.rounds)
    else:
        run(names, args.seeds, args.corpus, args.budget, args.jobs, args)


if __name__ == "__main__":
    main()
