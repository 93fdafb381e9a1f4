"""Does fine-tuning pay? A tinyshakespeare model fine-tuned on timemachine against timemachine from scratch.

    python bench/finetune.py [--seconds 30] [--base-seconds 150] [--base MODEL.pt] [--device cpu] [--out DIR]
                             [--shared ../shared/corpora]           (also run by bench/run.py)

1. base: `charrnn train tinyshakespeare.txt --time-budget BASE_SECONDS` (the CLI's default model),
   unless --base gives a tinyshakespeare checkpoint already trained;
2. fine-tuned: `charrnn train timemachine.txt --init-from base.pt --time-budget SECONDS`
   (the base's vocabulary grows by the characters timemachine adds);
3. scratch: `charrnn train timemachine.txt --time-budget SECONDS`, same defaults otherwise.

Both timemachine runs hold out the same last 10% of timemachine and report the validation loss of
their last state on it (nats/char: the same characters are scored, since both vocabularies contain
every character of timemachine). The target: fine-tuned < scratch. Each run is its own process;
the seconds are training seconds (the base's budget is not counted against the fine-tuned run).
`--smoke` checks the script in well under a minute on cut corpora with a tiny model (numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def charrnn(*args: str) -> dict:
    """Run `charrnn train ... --json -q` in a fresh process; its JSON summary."""
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "charrnn", *args, "--json", "-q"], capture_output=True, text=True,
                       cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"charrnn {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()[-500:]}")
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    summary["wall_s"] = round(time.perf_counter() - t, 1)
    return summary


def row(s: dict) -> dict:
    return {"steps": s["steps"], "seconds": round(s["seconds"], 1), "wall_s": s["wall_s"],
            "val_nats_per_char": round(s["val_loss"], 4), "val_bits_per_char": round(s["val_bits_per_char"], 4),
            "stop_reason": s["stop_reason"]}


def run_finetune(shared: Path, tmp: Path, seconds: float = 30, base_seconds: float = 150, base: Path | None = None,
                 device: str = "cpu", smoke: bool = False, base_note: str | None = None) -> dict:
    shakespeare, timemachine = shared / "tinyshakespeare.txt", shared / "timemachine.txt"
    for f in (shakespeare, timemachine):
        if not f.exists():
            raise FileNotFoundError(f"{f} is missing")
    extra = ["--device", device]
    if smoke:  # cut corpora and a tiny model: checks every step of the script quickly
        for f in (shakespeare, timemachine):
            (tmp / f.name).write_text(f.read_text(encoding="utf-8")[:30_000], encoding="utf-8")
        shakespeare, timemachine = tmp / shakespeare.name, tmp / timemachine.name
        extra += ["--val-every", "20"]
    base_info: dict = {"checkpoint": base_note or str(base)} if base is not None else {}
    if base is None:
        base = tmp / "base.pt"
        arch = ["--preset", "tiny"] if smoke else []
        s = charrnn("train", str(shakespeare), "-o", str(base), "--time-budget", f"{base_seconds:g}", *arch, *extra)
        base_info = {"budget_s": base_seconds, **row(s)}
    tuned = charrnn("train", str(timemachine), "-o", str(tmp / "tuned.pt"), "--init-from", str(base),
                    "--time-budget", f"{seconds:g}", *extra)
    scratch_arch = ["--preset", "tiny"] if smoke else []
    scratch = charrnn("train", str(timemachine), "-o", str(tmp / "scratch.pt"), "--time-budget", f"{seconds:g}",
                      *scratch_arch, *extra)
    result = {"seconds": seconds, "base": base_info, "fine_tuned": row(tuned), "scratch": row(scratch),
              "met": tuned["val_loss"] < scratch["val_loss"]}
    result["markdown"] = to_markdown(result)
    return result


def to_markdown(r: dict) -> str:
    b, t, s = r["base"], r["fine_tuned"], r["scratch"]
    base = (f"tinyshakespeare model trained {b['budget_s']:g} s (val {b['val_nats_per_char']:.4f} nats/char on "
            "tinyshakespeare)" if "budget_s" in b else f"tinyshakespeare model {b['checkpoint']}")
    return "\n".join([
        f"### Fine-tuning: timemachine, {r['seconds']:g} s of training", "",
        f"Base: {base}. Validation: the last 10% of timemachine.", "",
        "| run | steps | val nats/char | val bits/char |", "| --- | ---: | ---: | ---: |",
        f"| fine-tuned from tinyshakespeare | {t['steps']} | {t['val_nats_per_char']:.4f} | "
        f"{t['val_bits_per_char']:.4f} |",
        f"| from scratch | {s['steps']} | {s['val_nats_per_char']:.4f} | {s['val_bits_per_char']:.4f} |", "",
        f"Target fine-tuned < scratch: {'met' if r['met'] else 'NOT met'}.", ""])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30, help="training seconds of each timemachine run")
    ap.add_argument("--base-seconds", type=float, default=150, help="training seconds of the tinyshakespeare base")
    ap.add_argument("--base", type=Path, help="a tinyshakespeare checkpoint to use instead of training one")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "corpora")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="charrnn-finetune-") as tmp:
        seconds, base_seconds = (3, 4) if args.smoke else (args.seconds, args.base_seconds)
        r = run_finetune(args.shared, Path(tmp), seconds, base_seconds, args.base, args.device, args.smoke)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "finetune.json").write_text(json.dumps(r, indent=2) + "\n")
    print(r["markdown"])


if __name__ == "__main__":
    main()
