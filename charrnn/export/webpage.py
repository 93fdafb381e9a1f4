"""A model as one self-contained web page that generates text in the browser.

The page is one HTML file: the model runs in plain JavaScript (charrnn/export/web/model.js: the cell
equations of charrnn.model.network, in torch's layouts and gate orders), the weights are base64 inside it
(float32 or float16, little-endian), and a strict Content-Security-Policy in a <meta> tag forbids
everything but the page's own script and style blocks, named by their SHA-256 hashes: no network,
no other script, no eval. The vocabulary, config, model card and (for a records model) delimiter
ride along as JSON in a data block (a <script type="application/json">, which is never run).

Test hooks in the page (charrnn/export/web/page.js): window.charrnnNext(prefix), and the URL fragments
#probe=PREFIX, #bench=N and #generate=N&seed=S&prefix=P&temperature=T, which write JSON into
<pre id="probe"> (docs/webpage.md).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import re
from importlib import resources
from typing import Any

import numpy as np
import torch

from charrnn.config import CHARRNN_VERSION
from charrnn.data.vocab import Vocab
from charrnn.errors import UsageError
from charrnn.model.checkpoint import record_delimiter
from charrnn.model.network import CharRNN

WEIGHTS = ("float32", "float16")
# "auto": float32 weights unless that page would pass this size, then float16 (half the weights).
# The default preset's page is 3.9 MB in float32 with a 66-character vocabulary (docs/webpage.md).
AUTO_LIMIT = 5_000_000
# The largest finite float16; a weight beyond it would become infinite in the page.
FLOAT16_MAX = 65504.0


def asset(name: str) -> str:
    """The text of a file of charrnn/export/web (package data)."""
    return resources.files("charrnn.export").joinpath("web", name).read_text(encoding="utf-8")


def source_hash(text: str) -> str:
    """The CSP source expression that allows an inline block whose content is exactly `text`."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


def content_security_policy(scripts: list[str], styles: list[str]) -> str:
    """Nothing by default; only these inline scripts and styles, by hash. Data blocks (type
    application/json, application/octet-stream) are not scripts and need no permission."""
    return "; ".join([
        "default-src 'none'",
        "script-src " + " ".join(source_hash(s) for s in scripts),
        "style-src " + " ".join(source_hash(s) for s in styles),
        "base-uri 'none'",
        "form-action 'none'",
    ])


def pack_weights(state: dict[str, torch.Tensor], dtype: str) -> tuple[dict[str, list], str]:
    """All tensors, flattened one after another into one little-endian array of `dtype`, as base64,
    and a table name -> [offset in numbers, shape]."""
    if dtype not in WEIGHTS:
        raise UsageError(f"unknown weight type {dtype!r}: choose one of {', '.join(WEIGHTS)} (or auto)")
    table, parts, offset = {}, [], 0
    for name, t in state.items():
        values = t.detach().to("cpu", torch.float32).numpy().ravel()
        if dtype == "float16" and values.size and float(np.abs(values).max()) > FLOAT16_MAX:
            raise UsageError(f"weight {name} holds values beyond float16's range (±{FLOAT16_MAX:g}): "
                             "export float32 weights")
        parts.append(values.astype("<f4" if dtype == "float32" else "<f2"))
        table[name] = [offset, list(t.shape)]
        offset += values.size
    data = np.concatenate(parts).tobytes() if parts else b""
    return table, base64.b64encode(data).decode("ascii")


def _number(value: Any, spec: str) -> str | None:
    return format(value, spec) if isinstance(value, (int, float)) and math.isfinite(value) else None


def model_card(model: CharRNN, vocab: Vocab, ckpt: dict[str, Any], weights: str) -> list[tuple[str, str]]:
    """(label, value) lines for the page: the architecture, vocabulary, size and what training did
    (the fields `charrnn info` shows), leaving out what the checkpoint does not record."""
    c = model.config
    shape = f"{c.cell}, {c.layers} layer{'s' if c.layers > 1 else ''} of {c.hidden}"
    card = [("model", shape),
            ("input", f"embedding of {c.embed_dim}" if c.input == "embedding" else "one-hot"),
            ("vocabulary", f"{vocab.size} ({len(vocab.chars)} characters{' and <unk>' if vocab.unk else ''})"),
            ("parameters", f"{model.num_parameters():,} ({weights} in this page)")]
    steps, chars = ckpt.get("step"), (ckpt.get("data") or {}).get("chars")
    if isinstance(steps, int):
        seen = f"{steps:,} steps" + (f" on a text of {chars:,} characters" if isinstance(chars, int) else "")
        elapsed = _number(ckpt.get("elapsed"), ".0f")
        card.append(("training", seen + (f", {elapsed} s" if elapsed else "")))
    loss = _number(ckpt.get("val_loss"), ".4f")
    if loss:
        card.append(("validation loss", f"{loss} nats/char ({ckpt['val_loss'] / math.log(2):.3f} bits/char)"))
    if ckpt.get("init_from"):
        card.append(("fine-tuned from", str(ckpt["init_from"])))
    delimiter = record_delimiter(ckpt)
    if delimiter is not None:
        card.append(("records", f"each ends with {json.dumps(delimiter)}"))
    card.append(("made by", f"charrnn {ckpt.get('charrnn_version') or CHARRNN_VERSION}"))
    return card


def json_block(value: Any) -> str:
    """JSON safe inside a <script> element: no '<' (so no '</script' or '<!--'), ASCII only."""
    return json.dumps(value, ensure_ascii=True, separators=(",", ":")).replace("<", "\\u003c")


def page_html(model: CharRNN, vocab: Vocab, ckpt: dict[str, Any], *, weights: str = "auto",
              title: str | None = None) -> str:
    """The page of `model` (with its vocabulary and the checkpoint it came from), weights stored as
    `weights`: "float32", "float16", or "auto" (float32 unless that page passes AUTO_LIMIT bytes);
    `title` defaults to the cell and size."""
    if weights == "auto":
        page = page_html(model, vocab, ckpt, weights="float32", title=title)
        if len(page.encode("utf-8")) <= AUTO_LIMIT:
            return page
        weights = "float16"
    c = model.config
    table, data = pack_weights(model.state_dict(), weights)
    title = title if title is not None else f"charrnn: {c.cell} {c.layers}x{c.hidden}"
    meta = {
        "config": c.to_dict(), "dtype": weights, "tensors": table,
        "vocab": vocab.id_chars(), "counts": list(vocab.counts),
        "delimiter": record_delimiter(ckpt), "card": model_card(model, vocab, ckpt, weights),
    }
    css, model_js, page_js = asset("page.css"), asset("model.js"), asset("page.js")
    values = {
        "csp": html.escape(content_security_policy([model_js, page_js], [css])),
        "version": html.escape(CHARRNN_VERSION), "title": html.escape(title), "cell": html.escape(c.base_cell.upper()),
        "css": css, "meta": json_block(meta), "weights": data, "model_js": model_js, "page_js": page_js,
    }
    # One pass: a substituted value is never scanned again (a title may hold "{css}").
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], asset("page.html"))
