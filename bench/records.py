"""Benchmark rows of issue 10 (records): scoring speed and language identification.

    python bench/records.py [--quick] [--device cpu] [--shared ../shared/corpora] [--out bench/results]

1. Scoring speed: `charrnn eval score` against `charrnn eval perplexity` on the same text (the
   first --speed-chars characters of tinyshakespeare, the perplexity run reading it whole and
   the score run reading it as its lines), default model (lstm 2x256, embedding; weights from a
   2-step training: speed does not depend on them). Both in process (`evaluate` vs
   `score_texts`, best of 3) and as whole commands (wall time of the subprocess, start-up
   included). Target: scoring >= 0.5x perplexity's characters per second.
2. Language identification: two tiny-preset models (1x128 LSTM; their best checkpoints by
   validation on the last tenth of their training parts) trained for --train-seconds (60) each with
   `charrnn train` on the training parts (first 90%) of timemachine and of tinyshakespeare; every
   held-out line (the last 10%, the part `charrnn train` validates on) of 40 or more characters
   of both texts is labelled by `charrnn eval score -m time.pt -m shakespeare.pt --json` (the
   best model). Target: >= 95% correct.

--quick (a smoke test, numbers mean nothing): 20,000 characters and 3-second trainings.
Writes records.json and records.md into --out and prints the markdown. About 3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
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

from measure import run_measured  # noqa: E402

from charrnn.inference.evaluate import evaluate  # noqa: E402
from charrnn.inference.score import Scorer, score_texts  # noqa: E402
from charrnn.model.checkpoint import load_model  # noqa: E402


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "charrnn", *args]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def best_of(n: int, fn) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def speed(text: str, device: str, tmp: Path) -> dict:
    """chars/s of perplexity and of per-line scoring, in process and as whole commands."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    text_file, lines_file = tmp / "speed.txt", tmp / "speed_lines.txt"
    text_file.write_text(text, encoding="utf-8")
    lines_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    ckpt = tmp / "speed.pt"
    run_measured(cli("train", str(text_file), "-o", str(ckpt), "--max-steps", "2", "--val-fraction", "0", "-q",
                     "--device", device), tmp)
    model, vocab, _ = load_model(ckpt, device)
    ids = vocab.encode(text, unk="map")
    scorer = Scorer(model, vocab, "\n")
    scored_chars = sum(len(line) + 1 for line in lines)  # each line and its end
    t_ppl = best_of(3, lambda: evaluate(model, ids, unk_id=vocab.unk_id))
    t_score = best_of(3, lambda: score_texts(scorer, lines))
    ppl_cmd = run_measured(cli("eval", "perplexity", "-m", str(ckpt), str(text_file), "--device", device), tmp)
    score_cmd = run_measured(cli("eval", "score", "-m", str(ckpt), str(lines_file), "--device", device), tmp)
    assert len(score_cmd["stdout"].splitlines()) == len(lines)
    return {
        "chars": len(text), "lines": len(lines),
        "perplexity_chars_per_s": (len(text) - 1) / t_ppl, "score_chars_per_s": scored_chars / t_score,
        "perplexity_cmd_s": ppl_cmd["wall_s"], "score_cmd_s": score_cmd["wall_s"],
        "perplexity_cmd_chars_per_s": (len(text) - 1) / ppl_cmd["wall_s"],
        "score_cmd_chars_per_s": scored_chars / score_cmd["wall_s"],
        "score_cmd_max_rss_mb": score_cmd["max_rss_mb"], "perplexity_cmd_max_rss_mb": ppl_cmd["max_rss_mb"],
    }


def held_out(text: str, fraction: float = 0.1) -> tuple[str, str]:
    """(training part, held-out tail): the split `charrnn train --val-fraction 0.1` makes."""
    n_val = int(round(len(text) * fraction))
    return text[: len(text) - n_val], text[len(text) - n_val :]


def language_id(texts: dict[str, str], seconds: float, device: str, tmp: Path, min_chars: int = 40) -> dict:
    """Accuracy of labelling held-out lines by the model that compresses them best."""
    models, labelled = {}, []
    for name, text in texts.items():
        train_part, tail = held_out(text)
        f = tmp / f"{name}.train.txt"
        f.write_text(train_part, encoding="utf-8")
        models[name] = tmp / f"{name}.pt"
        log(f"training {name} for {seconds:g} s")
        # The tiny preset (1x128) takes 6x the steps of the default in a CPU minute and ends better
        # trained; the held-out tenth of the training part picks the best checkpoint (NAME.best.pt).
        run_measured(cli("train", str(f), "-o", str(models[name]), "--time-budget", str(seconds), "--preset",
                         "tiny", "--val-every", "50", "-q", "--device", device), tmp)
        models[name] = models[name].with_name(f"{name}.best.pt")
        labelled += [(line, name) for line in tail.split("\n")[1:] if len(line) >= min_chars]  # [0] may be cut
    lines_file = tmp / "lid.txt"
    lines_file.write_text("\n".join(line for line, _ in labelled) + "\n", encoding="utf-8")
    paths = {str(p): name for name, p in models.items()}
    args = [a for p in paths for a in ("-m", p)]
    r = run_measured(cli("eval", "score", *args, str(lines_file), "--json", "--device", device), tmp)
    objs = [json.loads(line) for line in r["stdout"].splitlines()]
    assert len(objs) == len(labelled)
    correct = {name: [0, 0] for name in texts}
    for obj, (line, name) in zip(objs, labelled, strict=True):
        assert obj["text"] == line
        correct[name][1] += 1
        correct[name][0] += paths.get(obj["best"]) == name
    right = sum(c for c, _ in correct.values())
    total = sum(n for _, n in correct.values())
    return {"lines": total, "accuracy": right / total, "per_text": {k: {"correct": c, "lines": n, "accuracy": c / n}
                                                                    for k, (c, n) in correct.items()},
            "train_seconds": seconds, "score_s": r["wall_s"]}


def markdown(res: dict) -> str:
    s, lid = res["speed"], res["language_id"]
    ratio_in, ratio_cmd = (s["score_chars_per_s"] / s["perplexity_chars_per_s"],
                           s["score_cmd_chars_per_s"] / s["perplexity_cmd_chars_per_s"])
    per = ", ".join(f"{k} {v['accuracy']:.1%} of {v['lines']}" for k, v in lid["per_text"].items())
    return "\n".join([
        f"Records benchmark ({res['mode']}, device {res['device']}, torch {torch.__version__}).",
        "",
        "| row | measured | target | |",
        "| --- | ---: | ---: | --- |",
        f"| scoring speed, in process: `score_texts` on {s['lines']:,} lines vs `evaluate` on the same "
        f"{s['chars']:,} characters, chars/s | {s['score_chars_per_s']:,.0f} vs {s['perplexity_chars_per_s']:,.0f} "
        f"= {ratio_in:.2f}x | >= 0.5x | {'met' if ratio_in >= 0.5 else '**not met**'} |",
        f"| scoring speed, whole commands: `eval score` vs `eval perplexity`, s (chars/s) | {s['score_cmd_s']:.2f} "
        f"({s['score_cmd_chars_per_s']:,.0f}) vs {s['perplexity_cmd_s']:.2f} ({s['perplexity_cmd_chars_per_s']:,.0f}) "
        f"= {ratio_cmd:.2f}x | >= 0.5x | {'met' if ratio_cmd >= 0.5 else '**not met**'} |",
        f"| language identification, held-out lines >= 40 chars, two models x {lid['train_seconds']:g} s | "
        f"{lid['accuracy']:.1%} of {lid['lines']} ({per}) | >= 95% | "
        f"{'met' if lid['accuracy'] >= 0.95 else '**not met**'} |",
        "",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny sizes, numbers mean nothing")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "corpora")
    ap.add_argument("--out", type=Path, default=BENCH / "results")
    ap.add_argument("--speed-chars", type=int, default=300_000)
    ap.add_argument("--train-seconds", type=float, default=60.0)
    args = ap.parse_args()
    texts = {}
    for name in ("timemachine", "tinyshakespeare"):
        path = args.shared / f"{name}.txt"
        if not path.exists():
            sys.exit(f"{path} is missing: the records benchmark needs timemachine and tinyshakespeare")
        texts[name] = path.read_text(encoding="utf-8").replace("\r\n", "\n")
    chars, seconds = (20_000, 3.0) if args.quick else (args.speed_chars, args.train_seconds)
    if args.quick:
        texts = {k: v[:40_000] for k, v in texts.items()}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        log("scoring speed")
        res = {"mode": "quick" if args.quick else "default", "device": args.device,
               "speed": speed(texts["tinyshakespeare"][:chars], args.device, tmp),
               "language_id": language_id(texts, seconds, args.device, tmp)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "records.json").write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    md = markdown(res)
    (args.out / "records.md").write_text(md, encoding="utf-8")
    print(md)


if __name__ == "__main__":
    main()
