"""charrnn benchmarks: throughput of training, evaluation and generation, and quality per CPU-minute.

    python bench/run.py [--quick] [--device cpu] [--out bench/results]

Writes results.json and results.md into --out and prints the markdown table. Corpora come from
../shared/corpora (tinyshakespeare); the quality run is skipped when it is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from charrnn.data import split_train_val  # noqa: E402
from charrnn.evaluate import evaluate  # noqa: E402
from charrnn.generate import Sampling, generate  # noqa: E402
from charrnn.model import CharRNN, ModelConfig  # noqa: E402
from charrnn.train import TrainConfig, train  # noqa: E402
from charrnn.vocab import Vocab  # noqa: E402


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version()}


def corpus(shared: Path) -> tuple[str, str]:
    p = shared / "tinyshakespeare.txt"
    if p.exists():
        return p.read_text(encoding="utf-8"), "tinyshakespeare"
    from charrnn.corpora import builtin_text

    return builtin_text("pydoc"), "pydoc"


def bench_train(ids, vocab, cell, hidden, input_, seconds, device, tmp) -> dict:
    cfg = ModelConfig(vocab.size, cell=cell, hidden=hidden, layers=2, input=input_)
    steps = {"scratch-rnn": 8, "scratch-gru": 6, "scratch-lstm": 6}.get(cell, 60)
    tc = TrainConfig(max_steps=steps, time_budget=seconds, val_every=10**9, log_every=10**9, save_every=10**9,
                     val_fraction=0.0)
    # a short discarded run first: allocator, thread pool and oneDNN primitives warm up
    train(ids, ids[:0], vocab, cfg, TrainConfig(max_steps=2, val_every=10**9, val_fraction=0.0), tmp / "b.pt",
          device=device)
    r = train(ids, ids[:0], vocab, cfg, tc, tmp / "b.pt", device=device)
    return {"cell": cell, "hidden": hidden, "input": input_, "steps": r.steps, "chars_per_s": round(r.chars_per_second)}


def bench_eval(model, ids) -> dict:
    t = time.perf_counter()
    r = evaluate(model, ids)
    dt = time.perf_counter() - t
    return {"chars": r.chars, "seconds": round(dt, 2), "chars_per_s": round(r.chars / dt)}


def bench_generate(model, vocab, n, samples) -> dict:
    prefix = vocab.encode("The ")
    t = time.perf_counter()
    for _ in generate(model, vocab, prefix, n, Sampling(), seed=0, num_samples=samples):
        pass
    dt = time.perf_counter() - t
    return {"streams": samples, "chars": n * samples, "chars_per_s": round(n * samples / dt)}


def bench_cli_help() -> float:
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "charrnn", "--help"], check=True, capture_output=True)
        best = min(best, time.perf_counter() - t)
    return round(best, 3)


def bench_quality(text, budget, device, tmp) -> dict:
    vocab = Vocab.build(text)
    ids = vocab.encode(text)
    tr, va = split_train_val(ids, 0.1)
    cfg = ModelConfig(vocab.size)
    r = train(tr, va, vocab, cfg, TrainConfig(time_budget=budget, val_every=10**9), tmp / "q.pt", device=device)
    return {"seconds": budget, "steps": r.steps, "val_nats_per_char": round(r.val_loss, 4),
            "val_bits_per_char": round(r.val_bits_per_char, 4), "chars_per_s": round(r.chars_per_second)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="about 2 minutes")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "corpora"))
    args = ap.parse_args()
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "tmp"
    tmp.mkdir(exist_ok=True)
    text, name = corpus(Path(args.shared))
    vocab = Vocab.build(text)
    ids = vocab.encode(text)
    results: dict = {"machine": machine(), "device": str(device), "corpus": name}
    per_run = 6 if args.quick else 15
    cells = ["lstm", "gru", "rnn"] if args.quick else ["lstm", "gru", "rnn", "scratch-rnn", "scratch-lstm"]
    hiddens = [256] if args.quick else [256, 512]
    results["train"] = [bench_train(ids, vocab, c, h, i, per_run, device, tmp)
                        for h in hiddens for c in cells for i in ("embedding", "onehot")
                        if not (c.startswith("scratch") and (h != 256 or i != "embedding"))]
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab.size)).to(device).eval()
    results["eval"] = bench_eval(model, ids[: 200_000 if args.quick else 1_000_000])
    results["generate"] = [bench_generate(model, vocab, 500 if args.quick else 2000, 1),
                           bench_generate(model, vocab, 200 if args.quick else 500, 64)]
    results["help_seconds"] = bench_cli_help()
    if name == "tinyshakespeare":
        results["quality"] = bench_quality(text, 30 if args.quick else 150, device, tmp)
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    md = to_markdown(results)
    (out / "results.md").write_text(md)
    print(md)


def to_markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['threads']} threads), "
             f"Python {m['python']}, device {r['device']}, corpus {r['corpus']}.", "",
             "| training (2 layers, batch 32 x 64) | hidden | input | chars/s |", "| --- | ---: | --- | ---: |"]
    lines += [f"| {t['cell']} | {t['hidden']} | {t['input']} | {t['chars_per_s']:,} |" for t in r["train"]]
    e = r["eval"]
    lines += ["", "| other (default 2x256 LSTM) | value |", "| --- | ---: |",
              f"| eval perplexity, chars/s ({e['chars']:,} chars) | {e['chars_per_s']:,} |"]
    lines += [f"| generate, chars/s, {g['streams']} stream(s) | {g['chars_per_s']:,} |" for g in r["generate"]]
    lines += [f"| `charrnn --help`, seconds | {r['help_seconds']} |"]
    if "quality" in r:
        q = r["quality"]
        lines += [f"| validation after {q['seconds']} s of default training (tinyshakespeare, last 10% held out), "
                  f"nats/char (bits/char) | {q['val_nats_per_char']} ({q['val_bits_per_char']}) |"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
