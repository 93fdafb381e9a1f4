"""The web page of a model (charrnn.export.webpage): its size for each preset with float32 and float16 weights,
load and per-character times in headless Chromium, and what float16 weights do to the probabilities.

    python bench/webpage.py [--model CHECKPOINT ...] [--chromium PATH]

Presets are measured untrained (the size depends on the shape only), with the vocabulary of
tinyshakespeare (66 tokens) when the corpora are beside the checkout, else 66 made-up characters.
`--model` adds trained checkpoints: their float16 page's largest probability difference from torch
over a few prefixes of their own training text.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.measure import cpu_name  # noqa: E402
from charrnn.config import PRESETS  # noqa: E402
from charrnn.data.vocab import Vocab  # noqa: E402
from charrnn.export.webpage import page_html  # noqa: E402
from charrnn.model.checkpoint import load_model  # noqa: E402
from charrnn.model.network import CharRNN, ModelConfig  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt"
TIMED = ("tiny", "small", "medium")  # the large page (over 100 MB) is measured for size only


def vocabulary() -> Vocab:
    if CORPUS.is_file():
        return Vocab.build(CORPUS.read_text(encoding="utf-8"))
    return Vocab.build("".join(chr(0x21 + i) for i in range(65)))


def browse(chromium: str, page: Path, fragment: str, profile: Path) -> dict:
    out = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                          "--dump-dom", f"{page.as_uri()}#{fragment}"], capture_output=True, text=True, timeout=600)
    found = re.search(r'<pre id="probe"[^>]*>(.*?)</pre>', out.stdout, re.S)
    if not found:
        raise SystemExit(f"no probe from {page}: {out.stderr[-500:]}")
    return json.loads(html.unescape(found.group(1)))


def presets(chromium: str | None, tmp: Path) -> None:
    vocab = vocabulary()
    print("| preset | parameters | float32 page | float16 page | load (float32) | ms per character |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, preset in PRESETS.items():
        fields = {k: v for k, v in preset.items() if k in ModelConfig.__dataclass_fields__}
        torch.manual_seed(0)
        model = CharRNN(ModelConfig(vocab_size=vocab.size, **fields)).eval()
        sizes = {}
        for weights in ("float32", "float16"):
            page = tmp / f"{name}-{weights}.html"
            page.write_text(page_html(model, vocab, {}, weights=weights), encoding="utf-8")
            sizes[weights] = page.stat().st_size
        load = per_char = "-"
        if chromium and name in TIMED:
            # Best of 3: the machine is shared, and the first steps include the JIT's warm-up.
            runs = [browse(chromium, tmp / f"{name}-float32.html", "bench=1000", tmp / "profile") for _ in range(3)]
            load = f"{min(r['load_ms'] for r in runs):.0f} ms"
            per_char = f"{min(r['ms_per_step'] for r in runs):.2f}"
        print(f"| {name} | {model.num_parameters():,} | {sizes['float32'] / 1e6:.2f} MB | "
              f"{sizes['float16'] / 1e6:.2f} MB | {load} | {per_char} |")


def float16_effect(chromium: str, checkpoint: str, tmp: Path) -> None:
    model, vocab, ckpt = load_model(checkpoint)
    text = CORPUS.read_text(encoding="utf-8") if CORPUS.is_file() else "".join(vocab.chars) * 20
    prefixes = [text[i:i + 200] for i in range(0, 50_000, 5_000)]
    page = tmp / "trained-float16.html"
    page.write_text(page_html(model, vocab, ckpt, weights="float16"), encoding="utf-8")
    report = browse(chromium, page, "&".join("probe=" + quote(p, safe="") for p in prefixes), tmp / "profile")
    worst = 0.0
    with torch.no_grad():
        for prefix, got in zip(prefixes, report["probes"], strict=True):
            logits, _ = model(torch.tensor(vocab.encode(prefix, unk="map"), dtype=torch.long)[None])
            want = torch.softmax(logits[0, -1].double(), dim=0)
            worst = max(worst, float((torch.tensor(got["probs"]) - want).abs().max()))
    c = model.config
    print(f"{checkpoint}: {c.cell} {c.layers}x{c.hidden}, float16 page vs torch over {len(prefixes)} prefixes of "
          f"200 characters: max |Δp| = {worst:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], help="a trained checkpoint (repeatable)")
    parser.add_argument("--chromium", default=shutil.which("chromium"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"Measured on {cpu_name()}, Chromium {args.chromium or 'absent'}\n")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        presets(args.chromium, tmp)
        for checkpoint in args.model:
            if args.chromium:
                float16_effect(args.chromium, checkpoint, tmp)


if __name__ == "__main__":
    main()
