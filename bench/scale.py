"""How the cost of preparing and training grows with corpus size and vocabulary size.

    python bench/scale.py [--quick] [--out DIR]      (also run by bench/run.py)

For 1, 10 and 100 MB of text (the built-in `stdlib` corpus, repeated as needed) and for a corpus
with more than 3,000 distinct characters (a synthetic Zipf-distributed CJK text), each step runs
in a fresh `charrnn` process, and its wall time and peak resident memory (max RSS, from wait4) are
recorded (through bench/measure.py's wrapper, so the benchmark's own size does not count):

- prepare, cold: decode, count and encode into an empty cache (a small driver calls the function
  `charrnn train` uses, charrnn.data.cache.encode_corpus);
- prepare, warm: the same with the cache filled (counts and memmapped ids are read back);
- train slice: `charrnn train FILE --max-steps N` with the default model, cache warm, including the
  final validation on the held-out tail (at most --val-max-chars characters).

The baseline is the max RSS of a process that only imports torch and charrnn.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from measure import run_measured  # noqa: E402

MB = 1_000_000

PREPARE = """
import json, resource, sys, time
from charrnn.data.cache import encode_corpus
from charrnn.data.corpora import training_parts
t = time.perf_counter()
enc = encode_corpus(training_parts([sys.argv[1]])[0])
print(json.dumps({"seconds": time.perf_counter() - t, "chars": len(enc.ids), "vocab": enc.vocab.size,
                  "dtype": str(enc.ids.dtype), "counts_cached": enc.counts_cached, "ids_cached": enc.ids_cached}))
"""


def stdlib_text_of_size(n_bytes: int) -> str:
    sys.path.insert(0, str(ROOT))
    from charrnn.data.corpora import builtin_text

    base = builtin_text("stdlib")
    text = base * (n_bytes // len(base.encode("utf-8")) + 1)
    data = text.encode("utf-8")[:n_bytes]
    return data.decode("utf-8", "ignore")


def cjk_text(n_chars: int, distinct: int = 5000, seed: int = 0) -> str:
    """Zipf-distributed CJK ideographs in short lines: a large-vocabulary stand-in for Chinese text."""
    rng = np.random.default_rng(seed)
    ranks = np.minimum(rng.zipf(1.1, n_chars), distinct) - 1
    cps = (0x4E00 + ranks).astype(np.uint32)
    cps[rng.random(n_chars) < 0.08] = ord("，")
    cps[rng.random(n_chars) < 0.03] = ord("。")
    cps[np.arange(n_chars) % 40 == 39] = ord("\n")
    return cps.astype("<u4").tobytes().decode("utf-32-le")


def measure(name: str, text_path: Path, size_mb: float, steps: int, tmp: Path) -> dict[str, Any]:
    env = {**os.environ, "CHARRNN_HOME": str(tmp / f"home-{name}"), "PYTHONPATH": str(ROOT)}
    py = sys.executable
    row: dict[str, Any] = {"corpus": name, "size_mb": round(size_mb, 1)}
    for phase in ("cold", "warm"):
        m = run_measured([py, "-c", PREPARE, str(text_path)], tmp, env)
        wall, rss, info = m["wall_s"], m["max_rss_mb"], json.loads(m["stdout"])
        assert info["ids_cached"] == (phase == "warm")
        row.update({"chars": info["chars"], "vocab": info["vocab"], "dtype": info["dtype"],
                    f"prepare_{phase}_s": round(info["seconds"], 2), f"prepare_{phase}_wall_s": round(wall, 2),
                    f"prepare_{phase}_peak_mb": round(rss)})
    m = run_measured(
        [py, "-m", "charrnn", "train", str(text_path), "-o", str(tmp / f"{name}.pt"), "--max-steps", str(steps),
         "--val-every", str(10**6), "--json", "-q"], tmp, env)
    wall, rss, r = m["wall_s"], m["max_rss_mb"], json.loads(m["stdout"])
    row.update({"train_steps": r["steps"], "train_wall_s": round(wall, 1), "train_peak_mb": round(rss),
                "train_chars_per_s": round(r["chars_per_second"])})
    for f in (tmp / f"{name}.pt", tmp / f"{name}.best.pt"):
        f.unlink(missing_ok=True)
    return row


def baseline_mb(tmp: Path) -> float:
    m = run_measured([sys.executable, "-c",
                         "import torch, charrnn.cli, charrnn.data.cache, charrnn.training.train"], tmp,
                     {**os.environ, "PYTHONPATH": str(ROOT)})
    return round(m["max_rss_mb"])


def run_scale(quick: bool, tmp: Path) -> dict[str, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    sizes = [1, 10] if quick else [1, 10, 100]
    steps = 20 if quick else 100
    rows = []
    base = baseline_mb(tmp)
    for mb in sizes:
        path = tmp / f"stdlib-{mb}mb.txt"
        path.write_text(stdlib_text_of_size(mb * MB), encoding="utf-8")
        rows.append(measure(f"stdlib {mb} MB", path, path.stat().st_size / MB, steps, tmp))
        path.unlink()
    path = tmp / "cjk.txt"
    path.write_text(cjk_text(700_000 if quick else 3_400_000), encoding="utf-8")
    rows.append(measure("CJK, 5,000-char vocab", path, path.stat().st_size / MB, steps, tmp))
    path.unlink()
    return {"baseline_mb": base, "steps": steps, "rows": rows, "markdown": to_markdown(rows, base, steps)}


def to_markdown(rows: list[dict[str, Any]], base: float, steps: int) -> str:
    lines = [f"Scale (fresh process per step; peak = max RSS, baseline {base:.0f} MB = torch + charrnn imported; "
             f"train = {steps} steps of the default model plus the final validation):", "",
             "| corpus | MB | chars | vocab | ids | prepare cold s (peak MB) | prepare cached s (peak MB) "
             "| train wall s (peak MB) | train chars/s |",
             "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['corpus']} | {r['size_mb']} | {r['chars']:,} | {r['vocab']:,} | {r['dtype']} "
                     f"| {r['prepare_cold_s']} ({r['prepare_cold_peak_mb']:,}) "
                     f"| {r['prepare_warm_s']} ({r['prepare_warm_peak_mb']:,}) "
                     f"| {r['train_wall_s']} ({r['train_peak_mb']:,}) | {r['train_chars_per_s']:,} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 and 10 MB only, fewer steps")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="charrnn-scale-") as tmp:
        result = run_scale(args.quick, Path(tmp))
    (out / "scale.json").write_text(json.dumps(result, indent=2) + "\n")
    print(result["markdown"])


if __name__ == "__main__":
    main()
