"""The self-contained web page (issue 21, section 3): its structure in Python, and in headless Chromium
that it loads under its own Content-Security-Policy, gives torch's next-character probabilities for
every cell, and generates text as `charrnn generate` would (checked against a Python port of the
page's sampler fed with torch's probabilities)."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from charrnn.data.vocab import Vocab
from charrnn.errors import UsageError
from charrnn.export import webpage
from charrnn.export.webpage import FLOAT16_MAX, asset, json_block, model_card, pack_weights, page_html
from charrnn.model.network import CharRNN, ModelConfig

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium): "
                                                            "the page is not run in a browser")
# Characters a page could trip on: HTML's < & ' ", a two-byte é, and 🙂 outside the BMP (two UTF-16 units in
# JavaScript, one character to charrnn).
TEXT = "the time traveller smiled, and we sat about the fire.\nHe spoke: \"Zebra <b> & 'quotes'\" é 🙂\n"
VOCAB = Vocab.build(TEXT)
CKPT = {"step": 120, "data": {"chars": 5000}, "val_loss": 1.5, "elapsed": 12.0, "charrnn_version": "0.1.0"}
# float16 weights against torch's float32 model (docs/webpage.md), measured 2026-12-01: at most 3.7e-4
# on these test models (weights scaled by 3), 1.8e-4 on a trained 1x256 LSTM; float32: at most 2.3e-7.
FLOAT16_BOUND = 2e-3
FLOAT32_BOUND = 1e-4


def tiny(cell: str = "lstm", layers: int = 1, input: str = "embedding", hidden: int = 16, seed: int = 0) -> CharRNN:
    torch.manual_seed(seed)
    m = CharRNN(ModelConfig(vocab_size=VOCAB.size, cell=cell, layers=layers, hidden=hidden, input=input, embed_dim=6))
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(3.0)  # sharper than the initialisation: distributions far from uniform
    return m.eval()


def write_page(path: Path, m: CharRNN, ckpt: dict[str, Any] | None = None, weights: str = "float32") -> Path:
    path.write_text(page_html(m, VOCAB, ckpt if ckpt is not None else CKPT, weights=weights), encoding="utf-8")
    return path


@torch.no_grad()
def torch_probs(m: CharRNN, prefix: str) -> np.ndarray:
    """softmax of the model's logits after `prefix`, from the zero state: (V,) float64."""
    logits, _ = m(torch.tensor(VOCAB.encode(prefix, unk="map"), dtype=torch.long)[None])
    return torch.softmax(logits[0, -1].double(), dim=0).numpy()


# --- in Python: what the file holds ---------------------------------------------------------------

def inline_blocks(page: str, tag: str) -> list[str]:
    """Contents of the <script> (without a type: the ones that run) or <style> elements."""
    if tag == "script":
        return re.findall(r"<script>(.*?)</script>", page, re.S)
    return re.findall(r"<style>(.*?)</style>", page, re.S)


def test_csp_allows_exactly_the_inline_blocks_and_nothing_else() -> None:
    page = page_html(tiny(), VOCAB, CKPT)
    meta = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', page)
    assert meta is not None
    policy = dict(d.strip().split(" ", 1) for d in html.unescape(meta.group(1)).split(";"))
    assert policy["default-src"] == "'none'" and policy["base-uri"] == "'none'"
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        blocks = inline_blocks(page, tag)
        assert blocks
        hashes = {"'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() + "'" for b in blocks}
        assert set(policy[directive].split()) == hashes
    assert page.index("Content-Security-Policy") < page.index("<style>")  # in force before any block


def test_no_network_and_nothing_outside_the_file() -> None:
    page = page_html(tiny(input="onehot"), VOCAB, CKPT)
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"\s(src|href|srcset|action|formaction)\s*=", page, re.I)
    assert not re.search(r"@import|url\(", page)
    scripts = asset("model.js") + asset("page.js")
    assert not re.search(r"\b(fetch|XMLHttpRequest|WebSocket|import\(|eval|Function\()", scripts)
    # Data blocks cannot end early: the vocabulary's '<' is escaped, and the assets hold no closing tag.
    assert page.count("</script>") == 4 and page.count("</style>") == 1


def test_title_is_escaped_and_never_substituted() -> None:
    page = page_html(tiny(), VOCAB, CKPT, title="<b>{css}</b> & co")
    assert "&lt;b&gt;{css}&lt;/b&gt; &amp; co" in page and "<b>{css}" not in page


@given(st.lists(st.one_of(st.none(), st.text())), st.text())
def test_data_blocks_hold_any_text_and_cannot_close_early(chars: list[str | None], delimiter: str) -> None:
    value = {"vocab": chars, "delimiter": delimiter}
    block = json_block(value)
    assert "<" not in block and block.isascii()  # no "</script", no "<!--", no U+2028
    assert json.loads(block) == value


def test_size_scales_with_parameters_and_float16_halves_the_weights() -> None:
    sizes = {}
    for hidden in (16, 64):
        m = tiny(hidden=hidden)
        for weights in ("float32", "float16"):
            page = page_html(m, VOCAB, CKPT, weights=weights)
            sizes[hidden, weights] = (len(page.encode()), m.num_parameters())
    (s16, p16), (s64, p64) = sizes[16, "float32"], sizes[64, "float32"]
    assert (s64 - s16) == pytest.approx((p64 - p16) * 4 * 4 / 3, rel=0.01)  # base64 of 4 bytes per parameter
    assert (sizes[64, "float32"][0] - sizes[64, "float16"][0]) == pytest.approx(p64 * 2 * 4 / 3, rel=0.01)


def test_auto_weights_are_float32_until_the_page_passes_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    m = tiny(hidden=32)
    float32, float16 = (page_html(m, VOCAB, CKPT, weights=w) for w in ("float32", "float16"))
    assert page_html(m, VOCAB, CKPT) == float32  # auto is the default
    monkeypatch.setattr(webpage, "AUTO_LIMIT", len(float32.encode()))
    assert page_html(m, VOCAB, CKPT, weights="auto") == float32
    monkeypatch.setattr(webpage, "AUTO_LIMIT", len(float32.encode()) - 1)
    assert page_html(m, VOCAB, CKPT, weights="auto") == float16 and "(float16 in this page)" in float16


@pytest.mark.parametrize("weights", ["float32", "float16"])
def test_packed_weights_read_back(weights: str) -> None:
    m = tiny(cell="gru", layers=2)
    table, data = pack_weights(m.state_dict(), weights)
    flat = np.frombuffer(base64.b64decode(data), dtype="<f4" if weights == "float32" else "<f2")
    for name, t in m.state_dict().items():
        offset, shape = table[name]
        got = flat[offset:offset + t.numel()].reshape(shape)
        want = t.numpy() if weights == "float32" else t.half().numpy()
        assert np.array_equal(got, want), name


def test_float16_refuses_weights_beyond_its_range() -> None:
    m = tiny()
    with torch.no_grad():
        m.head.bias[0] = FLOAT16_MAX * 2
    with pytest.raises(UsageError, match="float16"):
        page_html(m, VOCAB, CKPT, weights="float16")
    with pytest.raises(UsageError, match="unknown weight type"):
        page_html(m, VOCAB, CKPT, weights="int8")


def test_model_card_says_what_the_checkpoint_holds() -> None:
    m = tiny(cell="scratch-gru", layers=2, input="onehot")
    card = dict(model_card(m, VOCAB, {**CKPT, "train_config": {"partition": "records", "delimiter": "\n"}}, "float16"))
    assert card["model"] == "scratch-gru, 2 layers of 16" and card["input"] == "one-hot"
    assert card["vocabulary"] == f"{VOCAB.size} ({VOCAB.size - 1} characters and <unk>)"
    assert card["parameters"] == f"{m.num_parameters():,} (float16 in this page)"
    assert card["training"] == "120 steps on a text of 5,000 characters, 12 s"
    assert card["validation loss"].startswith("1.5000 nats/char") and card["records"] == 'each ends with "\\n"'
    bare = dict(model_card(m, VOCAB, {}, "float32"))
    assert "training" not in bare and "validation loss" not in bare and "records" not in bare


def test_the_web_assets_are_package_data() -> None:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "charrnn.export.web" in config["tool"]["setuptools"]["packages"]
    patterns = config["tool"]["setuptools"]["package-data"]["charrnn.export.web"]
    for name in ("page.html", "page.css", "model.js", "page.js"):
        assert (ROOT / "charrnn" / "export" / "web" / name).is_file()
        assert any(Path(name).match(p) for p in patterns), name


# --- in Chromium ----------------------------------------------------------------------------------

def browse(page: Path, fragment: str, profile: Path, budget_ms: int | None = None,
           error: bool = False) -> dict[str, Any]:
    """Load `page#fragment` in headless Chromium and return the JSON the page wrote into <pre id="probe">
    (which must hold an error message if `error`, else none)."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}"]
    if budget_ms is not None:  # lets the page's timers (a generation in chunks) run before the DOM is read
        cmd.append(f"--virtual-time-budget={budget_ms}")
    done = subprocess.run([*cmd, "--dump-dom", f"{page.as_uri()}#{fragment}"], capture_output=True, text=True,
                          timeout=120)
    found = re.search(r'<pre id="probe"[^>]*>(.*?)</pre>', done.stdout, re.S)
    assert found and found.group(1), f"the page wrote no probe (exit {done.returncode}): {done.stderr[-2000:]}"
    report = json.loads(html.unescape(found.group(1)))
    assert ("error" in report) == error, report.get("error")
    assert report["styled"] and report["violations"] == []  # style and scripts let in by the CSP, nothing refused
    return report


def probe(page: Path, prefixes: list[str], profile: Path) -> list[np.ndarray]:
    report = browse(page, "&".join("probe=" + quote(p, safe="") for p in prefixes), profile)
    assert [r["prefix"] for r in report["probes"]] == prefixes
    return [np.array(r["probs"]) for r in report["probes"]]


# The last holds characters the model does not know ("Q", "€"): read as <unk>, as charrnn complete does.
PREFIXES = ["t", "the time traveller smi", 'He spoke: "Zebra <b> & \'quotes\'" é 🙂\nthe fire', "Q€ the🙂"]
CASES = [("rnn", 1, "onehot"), ("gru", 2, "embedding"), ("lstm", 2, "onehot"), ("lstm", 1, "embedding"),
         ("scratch-rnn", 2, "embedding"), ("scratch-gru", 1, "onehot"), ("scratch-lstm", 2, "embedding")]


@needs_chromium
@pytest.mark.parametrize(("cell", "layers", "input"), CASES)
def test_probabilities_equal_torch(tmp_path: Path, cell: str, layers: int, input: str) -> None:
    m = tiny(cell, layers, input)
    got = probe(write_page(tmp_path / "m.html", m), PREFIXES, tmp_path / "profile")
    for prefix, probs in zip(PREFIXES, got, strict=True):
        want = torch_probs(m, prefix)
        assert probs.shape == want.shape and abs(probs.sum() - 1) < 1e-9
        assert np.abs(probs - want).max() < FLOAT32_BOUND, prefix


@needs_chromium
@pytest.mark.parametrize(("cell", "layers", "input"), [("rnn", 1, "onehot"), ("lstm", 2, "embedding")])
def test_float16_probabilities_within_the_documented_bound(tmp_path: Path, cell: str, layers: int, input: str) -> None:
    m = tiny(cell, layers, input)
    got = probe(write_page(tmp_path / "m.html", m, weights="float16"), PREFIXES, tmp_path / "profile")
    diffs = [np.abs(p - torch_probs(m, prefix)).max() for prefix, p in zip(PREFIXES, got, strict=True)]
    assert max(diffs) < FLOAT16_BOUND
    assert max(diffs) > 0  # float16 did round the weights: the page is not secretly float32


@needs_chromium
def test_unknown_characters_without_unk_are_an_error_on_the_page(tmp_path: Path) -> None:
    vocab = Vocab.build(TEXT, unk=False)
    torch.manual_seed(0)
    m = CharRNN(ModelConfig(vocab_size=vocab.size, cell="gru", layers=1, hidden=8)).eval()
    page = tmp_path / "m.html"
    page.write_text(page_html(m, vocab, CKPT), encoding="utf-8")
    report = browse(page, "probe=" + quote("Quite"), tmp_path / "profile", error=True)
    assert report["error"] == 'the model does not know "Q"'


def mulberry32(seed: int):
    """The page's random generator (charrnn/export/web/model.js prng), in Python."""
    a, m = seed & 0xFFFFFFFF, 0xFFFFFFFF
    while True:
        a = (a + 0x6D2B79F5) & m
        t = ((a ^ (a >> 15)) * (a | 1)) & m
        t ^= (t + (((t ^ (t >> 7)) * (t | 61)) & m)) & m
        yield ((t ^ (t >> 14)) & m) / 4294967296


def draw(weights: np.ndarray, u: float) -> int:
    """charrnn/export/web/model.js draw: the first id of positive weight whose cumulative weight exceeds u * total."""
    target, cum = u * float(weights.sum()), 0.0
    for i, w in enumerate(weights):
        cum += float(w)
        if cum > target and w > 0:
            return i
    return int(np.flatnonzero(weights > 0)[-1])


@torch.no_grad()
def reference_sample(m: CharRNN, prefix: str, length: int, seed: int, temperature: float) -> str:
    """What the page should generate, with torch computing the probabilities."""
    random, banned = mulberry32(seed), VOCAB.unk_id
    state, out = None, ""
    if prefix:
        last = int(VOCAB.encode(prefix)[-1])
        if len(prefix) > 1:
            _, state = m(torch.tensor(VOCAB.encode(prefix[:-1]), dtype=torch.long)[None])
    else:
        last = draw(np.array(VOCAB.counts, dtype=np.float64), next(random))
        out, length = VOCAB.chars[last], length - 1
    for _ in range(length):
        logits, state = m(torch.tensor([[last]]), state)
        z = logits[0, -1].double().numpy()
        z[banned] = -np.inf
        p = np.exp((z - z.max()) / temperature)
        last = draw(p / p.sum(), next(random))
        out += VOCAB.chars[last]
    return out


@needs_chromium
@pytest.mark.parametrize(("prefix", "temperature"), [("the time ", 0.8), ("", 1.3)])
def test_generates_500_characters_as_the_reference_sampler(tmp_path: Path, prefix: str, temperature: float) -> None:
    m = tiny("lstm", 2, "embedding")
    page = write_page(tmp_path / "m.html", m)
    fragment = f"generate=500&seed=7&prefix={quote(prefix, safe='')}&temperature={temperature}"
    report = browse(page, fragment, tmp_path / "profile", budget_ms=60000)
    text = report["text"]
    assert text.startswith(prefix) and len(text) == len(prefix) + 500
    assert set(text[len(prefix):]) <= set(VOCAB.chars)  # never <unk>
    assert text[len(prefix):] == reference_sample(m, prefix, 500, 7, temperature)


@needs_chromium
def test_records_model_generates_records(tmp_path: Path) -> None:
    m = tiny("gru", 1, "embedding", seed=3)
    ckpt = {**CKPT, "train_config": {"partition": "records", "delimiter": "\n"}}
    page = write_page(tmp_path / "m.html", m, ckpt)
    report = browse(page, "generate=300&seed=1&prefix=He&temperature=1", tmp_path / "profile", budget_ms=60000)
    lines = report["text"].split("\n")
    finished, last = lines[:-1], lines[-1]
    assert finished and all(line.startswith("He") and len(line) > 2 for line in finished)  # none empty
    assert last == "" or last.startswith("He")  # cut at 300 characters, or right after a record
    assert sum(len(line) - 1 for line in finished) + max(0, len(last) - 2) == 300  # the "\n" counts, "He" not


@needs_chromium
@pytest.mark.parametrize(("fragment", "needle"), [
    ("generate=50&temperature=abc", 'the temperature must be a finite number > 0, got "abc"'),
    ("generate=50&temperature=0", "the temperature must be"), ("generate=50&temperature=-1", "the temperature must be"),
    ("generate=50&temperature=Infinity", "the temperature must be"),
    ("generate=50&seed=4294967296", 'the seed must be a whole number from 0 to 4294967295'),
    ("generate=50&seed=1.5", "the seed must be"), ("generate=abc", "the length must be")])
def test_the_generate_hook_refuses_what_it_cannot_honour(tmp_path: Path, fragment: str, needle: str) -> None:
    """Regression (issue 27): a bad temperature wrote "undefined" characters; a seed past 2^32 wrapped silently."""
    report = browse(write_page(tmp_path / "m.html", tiny()), fragment, tmp_path / "profile", budget_ms=20000,
                    error=True)
    assert needle in report["error"] and "undefined" not in report["error"]


@needs_chromium
def test_extreme_temperatures_on_the_page_are_exact(tmp_path: Path) -> None:
    m = tiny("lstm", 2, "embedding")
    page = write_page(tmp_path / "m.html", m)
    report = browse(page, "generate=60&seed=3&prefix=the&temperature=1e-300", tmp_path / "profile", budget_ms=20000)
    greedy = reference_sample(m, "the", 60, 3, 1e-300)  # (z - max) / 1e-300: 0 for the best, -inf for the rest
    assert report["text"] == "the" + greedy and "undefined" not in report["text"]


@needs_chromium
def test_a_records_models_multi_character_delimiter_is_not_shown(tmp_path: Path) -> None:
    """Regression (issue 27): the page showed a delimiter of several characters ("ab") in its output."""
    m = tiny("gru", 1, "embedding", seed=3)
    ckpt = {**CKPT, "train_config": {"partition": "records", "delimiter": "e "}}
    page = write_page(tmp_path / "m.html", m, ckpt)
    report = browse(page, "generate=20000&seed=1&prefix=t&temperature=1", tmp_path / "profile", budget_ms=60000)
    text = report["text"]  # records may hold newlines of their own: each ends with one more
    assert "e " not in text and text.count("\nt") >= 2, text[:300]  # every record shown, none with its delimiter
