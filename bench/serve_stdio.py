"""Benchmark row of issue 20 (a model kept loaded): `next` requests through one `charrnn serve
--stdio` process against as many `charrnn complete` commands.

    python bench/serve_stdio.py [--requests 1000] [--commands 50] [--device cpu] [--out bench/results]

The default model of `charrnn train` (1x384 LSTM, embedding 64; weights from a 2-step training on
the first 50,000 characters of ../shared/corpora/timemachine.txt, or of a generated text when that
is absent: the speed does not depend on them). Each request asks for the 5 likeliest characters
after a prefix, a slice of 20 to 60 characters of the text (seeded).

1. serve: one `charrnn serve --stdio` process; --requests requests written one at a time, each
   answer read before the next request is written (a pipeline asking one question per record).
   Reported: the time to the first answer (start-up: imports and the model load), the time of
   all the requests after it, and the p50/p99 latency of one request.
2. complete: --commands `charrnn complete --json` commands one after another (each a fresh
   process: imports, load, one answer), their mean wall time, and that mean times --requests:
   the cost of the same requests as commands, extrapolated (say so with the figure).
The answers of the two must be identical (checked on the first --commands prefixes).
Writes serve_stdio.json and serve_stdio.md into --out and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
if str(BENCH) not in sys.path:
    sys.path.insert(1, str(BENCH))

from measure import cpu_name, run_measured  # noqa: E402

CORPORA = ROOT.parent / "shared" / "corpora"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "charrnn", *args]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def corpus_text(chars: int) -> str:
    path = CORPORA / "timemachine.txt"
    if path.exists():
        return path.read_text(encoding="utf-8").replace("\r\n", "\n")[:chars]
    rng = random.Random(0)
    words = "the time traveller smiled round at us and we sat about the fire in the old room".split()
    return " ".join(rng.choice(words) for _ in range(chars // 5))[:chars]


def prefixes(text: str, n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(20, 60)
        start = rng.randrange(0, len(text) - length)
        out.append(text[start : start + length])
    return out


def serve(ckpt: Path, asked: list[str], device: str) -> dict:
    """Start one serve --stdio process and ask every prefix, one at a time."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cli("serve", "--stdio", "-m", str(ckpt), "--device", device), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert p.stdin is not None and p.stdout is not None
    answers, latencies = [], []
    start_up = 0.0
    for i, prefix in enumerate(asked):
        t = time.perf_counter()
        p.stdin.write(json.dumps({"op": "next", "prefix": prefix, "k": 5, "id": i}).encode() + b"\n")
        p.stdin.flush()
        answer = json.loads(p.stdout.readline())
        now = time.perf_counter()
        if i == 0:
            start_up = now - t0
        else:
            latencies.append(now - t)
        assert answer.get("id") == i, answer
        answers.append({k: v for k, v in answer.items() if k != "id"})
    t_end = time.perf_counter()
    p.stdin.close()
    assert p.wait(timeout=60) == 0
    latencies.sort()
    return {"first_answer_s": start_up, "rest_s": t_end - t0 - start_up, "total_s": t_end - t0,
            "requests": len(asked), "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], "answers": answers}


def complete(ckpt: Path, asked: list[str], device: str, tmp: Path) -> dict:
    """One `charrnn complete` command per prefix, one after another."""
    walls, answers = [], []
    for prefix in asked:
        r = run_measured(cli("complete", "-m", str(ckpt), "--prefix", prefix, "-k", "5", "--json", "--device",
                             device), tmp)
        walls.append(r["wall_s"])
        answers.append(json.loads(r["stdout"]))
    return {"commands": len(asked), "mean_s": statistics.mean(walls), "median_s": statistics.median(walls),
            "total_s": sum(walls), "max_rss_mb": r["max_rss_mb"], "answers": answers}


def markdown(res: dict) -> str:
    s, c = res["serve"], res["complete"]
    n = s["requests"]
    extrapolated = c["mean_s"] * n
    return "\n".join([
        f"Keep a model loaded ({res['model']}, device {res['device']}, torch {torch.__version__}, "
        f"{res['cpu']}, {res['date']}).",
        "",
        "| row | measured |",
        "| --- | ---: |",
        f"| {n:,} `next` requests (k 5) through one `serve --stdio` process, one at a time | {s['total_s']:.1f} s "
        f"({s['first_answer_s']:.2f} s to the first answer, then {1000 * s['rest_s'] / max(1, n - 1):.2f} ms a "
        f"request: p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms) |",
        f"| {n:,} `charrnn complete` commands, one after another | {extrapolated:,.0f} s, extrapolated from "
        f"{c['commands']} commands ({c['mean_s']:.2f} s each, median {c['median_s']:.2f} s) |",
        f"| ratio | {extrapolated / s['total_s']:,.0f}x |",
        "",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--commands", type=int, default=50)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=BENCH / "results")
    args = ap.parse_args()
    text = corpus_text(50_000)
    asked = prefixes(text, args.requests)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "text.txt").write_text(text, encoding="utf-8")
        ckpt = tmp / "model.pt"
        log("training the model (2 steps)")
        run_measured(cli("train", str(tmp / "text.txt"), "-o", str(ckpt), "--max-steps", "2", "--val-fraction", "0",
                         "-q", "--device", args.device), tmp)
        log(f"{args.requests} requests through serve --stdio")
        s = serve(ckpt, asked, args.device)
        log(f"{args.commands} complete commands")
        c = complete(ckpt, asked[: args.commands], args.device, tmp)
    same = s["answers"][: args.commands] == c["answers"]
    if not same:
        sys.exit("serve --stdio and complete gave different answers")
    del s["answers"], c["answers"]
    res = {"model": "lstm 1x384, embedding 64", "device": args.device, "cpu": cpu_name(),
           "date": time.strftime("%Y-%m-%d"), "serve": s, "complete": c, "same_answers": same}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_stdio.json").write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    md = markdown(res)
    (args.out / "serve_stdio.md").write_text(md, encoding="utf-8")
    print(md)


if __name__ == "__main__":
    main()
