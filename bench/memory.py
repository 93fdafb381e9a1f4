"""Benchmark rows of issue 18, section 3: memory is bounded by the model, not by the input.

    python bench/memory.py [--quick] [--shared ../shared/corpora] [--out bench/results]

Each row runs one command as a child process and compares its peak RSS (os.wait4 through
bench/measure.py's small wrapper) with that of `charrnn eval perplexity` of the same text and the
same model. Target: each command within 1.5x of eval perplexity's peak.

1. `generate --prefix-file` with a 4 MB prefix (-n 100), small model.
2. `generate --prefix-file` with a 20 KB prefix (-n 10) on a model with a 70,372-character
   vocabulary (the issue's case: the prefix's logits were 20 K x 70 K floats at once).
3. `eval score` of one 20 MB record (the text with its newlines made spaces), small model.
4. `eval show --html` at its bound (--max-chars 100,000: surprise.HTML_MAX_CHARS), small model.

The small model is lstm 1x32 (embedding 16) trained for 20 steps on tinyshakespeare (memory does not
depend on the weights); the text is tinyshakespeare repeated to the length each row needs. The
large-vocabulary model (1x16, embedding 8) is trained for 1 step on a text of 70,372 distinct
characters; its text is a 20 KB slice of that text.

Rows are printed to stderr as each ends (JSON), the fast ones first. --scale F makes the 4 MB
prefix and the 20 MB record F times as long (the last column, bytes per character above eval
perplexity's peak, carries a smaller run over to the full sizes); --quick is --scale 0.05.
Writes memory.json and memory.md into --out and prints the markdown table. Scoring one 20 MB
record is one sequence, one character after the other: it dominates (265 s for 20 MB on a 2-core
AMD EPYC shared with other jobs, 2026-12-01, 10 to 30 minutes for the whole run; hence --only and
--scale).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
if str(BENCH) not in sys.path:
    sys.path.insert(1, str(BENCH))

from measure import cpu_name, run_measured  # noqa: E402

TARGET = 1.5
BIG_VOCAB = 70_372
HTML_CHARS = 100_000  # charrnn.inference.surprise.HTML_MAX_CHARS
BIG_ROW = f"generate, 20 KB prefix, {BIG_VOCAB:,}-character vocabulary (-n 10)"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "charrnn", *args]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def repeat_to(text: str, n: int) -> str:
    return (text * (n // len(text) + 1))[:n]


def big_alphabet(n: int) -> str:
    """n distinct characters from U+4E00 on, skipping surrogates and the private-use area."""
    chars, c = [], 0x4E00
    while len(chars) < n:
        if not (0xD800 <= c <= 0xF8FF):
            chars.append(chr(c))
        c += 1
    return "".join(chars)


def mb(path: Path) -> str:
    n = path.stat().st_size
    return f"{n / 1e6:g} MB" if n >= 1e6 else f"{n / 1e3:g} KB"


def prepare(tmp: Path, shakespeare: str, scale: float, big: bool = True) -> dict[str, Path]:
    """The models and texts of the rows."""
    files = {}
    (tmp / "train.txt").write_text(shakespeare, encoding="utf-8")
    files["small"] = tmp / "small.pt"
    log("training the small model (20 steps)")
    run_measured(cli("train", str(tmp / "train.txt"), "-o", str(files["small"]), "--hidden", "32", "--layers", "1",
                     "--embed-dim", "16", "-b", "16", "-t", "64", "--max-steps", "20", "--val-fraction", "0", "-q"),
                 tmp)
    alphabet = big_alphabet(BIG_VOCAB)
    (tmp / "big.txt").write_text(alphabet * 2, encoding="utf-8")
    files["big"] = tmp / "big.pt"
    if big:
        log(f"training the {BIG_VOCAB:,}-character model (1 step)")
        run_measured(cli("train", str(tmp / "big.txt"), "-o", str(files["big"]), "--hidden", "16", "--layers", "1",
                         "--embed-dim", "8", "-b", "1", "-t", "16", "--max-steps", "1", "--val-fraction", "0", "-q"),
                     tmp)
    sizes = {"prefix4m": int(4_000_000 * scale), "record20m": int(20_000_000 * scale), "html": HTML_CHARS}
    for name, n in sizes.items():
        text = repeat_to(shakespeare, n)
        if name == "record20m":
            text = text.replace("\n", " ")  # one record
        (tmp / f"{name}.txt").write_text(text, encoding="utf-8")
        files[name] = tmp / f"{name}.txt"
    (tmp / "prefix20k.txt").write_text(repeat_to(alphabet, 20_000), encoding="utf-8")
    files["prefix20k"] = tmp / "prefix20k.txt"
    return files


def rows(tmp: Path, files: dict[str, Path], only: str | None = None) -> list[dict]:
    cases = [
        (f"eval show --html --max-chars {HTML_CHARS:,} (the bound)", "small", "html",
         cli("eval", "show", "-m", str(files["small"]), str(files["html"]), "--max-chars", str(HTML_CHARS),
             "--html", str(tmp / "page.html"))),
        (BIG_ROW, "big", "prefix20k",
         cli("generate", "-m", str(files["big"]), "--prefix-file", str(files["prefix20k"]), "-n", "10",
             "--seed", "1")),
        (f"generate, {mb(files['prefix4m'])} prefix (-n 100)", "small", "prefix4m",
         cli("generate", "-m", str(files["small"]), "--prefix-file", str(files["prefix4m"]), "-n", "100",
             "--seed", "1")),
        (f"eval score, one {mb(files['record20m'])} record", "small", "record20m",
         cli("eval", "score", "-m", str(files["small"]), str(files["record20m"]))),
    ]
    out = []
    for label, model, text, cmd in cases:
        if only is not None and only not in label:
            continue
        log(f"{label}: eval perplexity of the same text")
        base = run_measured(cli("eval", "perplexity", "-m", str(files[model]), str(files[text])), tmp)
        log(f"{label}: the command")
        got = run_measured(cmd, tmp)
        chars = len(files[text].read_text(encoding="utf-8"))
        ratio = got["max_rss_mb"] / base["max_rss_mb"]
        extra = (got["max_rss_mb"] - base["max_rss_mb"]) * 2**20 / chars  # bytes per character above perplexity
        row = {"row": label, "chars": chars, "perplexity_mb": base["max_rss_mb"], "command_mb": got["max_rss_mb"],
               "ratio": round(ratio, 2), "extra_bytes_per_char": round(extra, 1), "command_s": round(got["wall_s"], 1),
               "met": ratio <= TARGET}
        if "--html" in cmd:
            row["page_mb"] = round((tmp / "page.html").stat().st_size / 2**20, 1)
        log(json.dumps(row))
        out.append(row)
    return out


def markdown(results: list[dict], machine: str) -> str:
    lines = [f"Machine: {machine}.", "",
             "| peak RSS, MB | characters | eval perplexity | command | ratio | target <= 1.5x | bytes/char above "
             "perplexity | command s |",
             "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for r in results:
        extra = f" (page {r['page_mb']} MB)" if "page_mb" in r else ""
        lines.append(f"| {r['row']}{extra} | {r['chars']:,} | {r['perplexity_mb']:,.0f} | {r['command_mb']:,.0f} | "
                     f"{r['ratio']:.2f}x | {'met' if r['met'] else '**not met**'} | {r['extra_bytes_per_char']:g} | "
                     f"{r['command_s']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="--scale 0.05: a smoke test")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="size of the 4 MB prefix and of the 20 MB record, as a fraction (scoring one record is "
                         "one sequence: about 20 us per character on an idle core)")
    ap.add_argument("--only", help="run only the rows whose label holds this text (e.g. 'eval score')")
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "corpora"))
    ap.add_argument("--out", default=str(BENCH / "results"))
    args = ap.parse_args()
    corpus = Path(args.shared) / "tinyshakespeare.txt"
    if not corpus.exists():
        sys.exit(f"{corpus} not found: give --shared")
    shakespeare = corpus.read_text(encoding="utf-8")
    import torch

    machine = (f"{cpu_name()}, {len(__import__('os').sched_getaffinity(0))} cores, torch {torch.__version__}, "
               f"Python {platform.python_version()}, {date.today().isoformat()}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        big = args.only is None or args.only in BIG_ROW
        results = rows(tmp, prepare(tmp, shakespeare, 0.05 if args.quick else args.scale, big), args.only)
    table = markdown(results, machine)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.json").write_text(json.dumps({"machine": machine, "rows": results}, indent=1) + "\n")
    (out / "memory.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
