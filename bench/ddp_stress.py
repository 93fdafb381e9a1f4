"""Reliability of data-parallel runs on a busy machine: N consecutive tiny `charrnn train --nproc 2`
runs beside a CPU-bound job, counting how each ended.

    python bench/ddp_stress.py [--runs 30] [--nproc 2] [--steps 20] [--busy 1] [--json]

Every run must exit 0 with an empty stderr (-q) and leave a checkpoint that loads; anything else
(an abort at teardown, "process 1 of 2 died", a stray warning) counts as a failure and is shown
with its last lines of stderr (the processes run with PYTHONFAULTHANDLER=1, so that an abort shows
the Python stack it happened in). The busy jobs (--busy, default 1; 0 for none) are
`python -c 'while True: pass'` processes started before the first run and killed after the last:
they take cores from the processes while they start, train and tear down, which is when teardown
races show. The summary goes to stdout (one line,
or --json); the exit status is 0 when every run passed, 1 otherwise. Each run is tiny (--preset
tiny --hidden 16, 20 steps on a 20 KB corpus): about 5-10 s each on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex".split()


def write_corpus(path: Path, chars: int = 20_000) -> None:
    """A deterministic text of about `chars` characters (a linear congruential walk through WORDS)."""
    out, x, size = [], 12345, 0
    while size < chars:
        x = (1103515245 * x + 12345) % 2**31
        out.append(WORDS[x % len(WORDS)])
        size += len(out[-1]) + 1
    path.write_text(" ".join(out) + "\n")


def one_run(corpus: Path, out: Path, nproc: int, steps: int, timeout: float) -> tuple[int, str]:
    """(exit code, stderr) of one run; a run past `timeout` seconds is stopped and counts as 124."""
    cmd = [sys.executable, "-m", "charrnn", "train", str(corpus), "-o", str(out), "--preset", "tiny",
           "--hidden", "16", "-b", "8", "-t", "16", "--max-steps", str(steps), "--val-every", str(steps),
           "--precision", "fp32", "--no-cache", "-q", "--nproc", str(nproc)]
    env = {**os.environ, "PYTHONFAULTHANDLER": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _, err = proc.communicate(timeout=timeout)
        return proc.returncode, err
    except subprocess.TimeoutExpired:
        proc.terminate()  # the launcher takes its workers down
        _, err = proc.communicate(timeout=60)
        return 124, err


def checkpoint_loads(path: Path) -> bool:
    import torch

    try:
        return int(torch.load(path, weights_only=True)["step"]) > 0
    except Exception:  # noqa: BLE001 - any failure to read it is the finding
        return False


def stress(runs: int, nproc: int, steps: int, busy: int, timeout: float, say=print) -> dict:
    """Run the runs; a summary dict: counts of exit codes, failures with their stderr, seconds."""
    codes: collections.Counter[int] = collections.Counter()
    failures = []
    t0 = time.perf_counter()
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        with tempfile.TemporaryDirectory(prefix="ddp-stress-") as tmp:
            corpus = Path(tmp) / "corpus.txt"
            write_corpus(corpus)
            for i in range(runs):
                out = Path(tmp) / f"m{i}.pt"
                code, err = one_run(corpus, out, nproc, steps, timeout)
                codes[code] += 1
                ok = code == 0 and not err.strip() and checkpoint_loads(out)
                if not ok:
                    failures.append({"run": i + 1, "exit_code": code, "stderr": err.strip().splitlines()[-30:]})
                say(f"run {i + 1}/{runs}: exit {code}{'' if ok else ' FAILED'}")
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    return {"runs": runs, "nproc": nproc, "steps": steps, "busy": busy, "passed": runs - len(failures),
            "exit_codes": {str(k): v for k, v in sorted(codes.items())}, "failures": failures,
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20, help="training steps per run")
    ap.add_argument("--busy", type=int, default=1, help="CPU-bound jobs beside the runs (0: none)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds before a run counts as hung (exit 124)")
    ap.add_argument("--json", action="store_true", help="the summary as one JSON object")
    args = ap.parse_args()
    summary = stress(args.runs, args.nproc, args.steps, args.busy, args.timeout,
                     say=lambda line: print(line, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(summary))
    else:
        codes = ", ".join(f"exit {k}: {v}" for k, v in summary["exit_codes"].items())
        print(f"{summary['passed']}/{summary['runs']} runs passed ({codes}) with --nproc {summary['nproc']}"
              f" beside {summary['busy']} CPU-bound job(s) in {summary['seconds']:.0f} s")
        for f in summary["failures"]:
            print(f"run {f['run']}: exit {f['exit_code']}:\n" + "\n".join(f"  {line}" for line in f["stderr"]))
    sys.exit(0 if summary["passed"] == summary["runs"] else 1)


if __name__ == "__main__":
    main()
