"""`charrnn export` and the .safetensors models it writes: the round trip (exact: the same weights, logits
and generated text), the checks of a hostile file, the command's formats, outputs and bad inputs, and the
onnxruntime example of docs/export.md. The ONNX graph itself is tested in tests/test_onnx_export.py."""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charrnn.cli import cli
from charrnn.data.vocab import Vocab
from charrnn.errors import CheckpointError
from charrnn.model import checkpoint
from charrnn.model.network import CharRNN, ModelConfig

ort = pytest.importorskip("onnxruntime", reason="the export extra (onnxruntime) is not installed")
onnx = pytest.importorskip("onnx", reason="the export extra (onnx) is not installed")
pytest.importorskip("safetensors", reason="the export extra (safetensors) is not installed")
import safetensors.torch  # noqa: E402

from charrnn.export import onnx_export  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--hidden", "16", "--embed-dim", "8", "--layers", "1", "-b", "4", "-t", "16", "--max-steps", "6",
        "--val-every", "3", "--precision", "fp32", "-q"]
TOL = 1e-5


def corpus() -> str:
    words = "The time traveller smiled and we sat about the fire in the room while he spoke".split()
    return "\n".join(" ".join(words[(i * 7 + j) % len(words)] for j in range(9)) for i in range(30)) + "\n"


def session(data: bytes | str) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def run(*args: Any, input: str | None = None) -> Any:
    return CliRunner().invoke(cli, [str(a) for a in args], input=input)


def one_line_error(r: Any, code: int, *needles: str) -> None:
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    assert r.stdout == "" and "Traceback" not in r.stderr, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# safetensors: the round trip is exact, a hostile file is refused -------------------------------------------

@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("export")
    (d / "c.txt").write_text(corpus(), encoding="utf-8")
    for name, extra in (("m", []), ("rec", ["--partition", "records", "--cell", "gru"])):
        r = run("train", d / "c.txt", "-o", d / f"{name}.pt", *TINY, *extra)
        assert r.exit_code == 0, r.stderr
        r = run("export", "-m", d / f"{name}.pt", "-o", d / f"{name}.safetensors")
        assert r.exit_code == 0, r.stderr
    return d


def test_safetensors_round_trip_is_exact(home: Path) -> None:
    model, vocab, ckpt = checkpoint.load_model(home / "m.pt")
    back, back_vocab, back_ckpt = checkpoint.load_model(home / "m.safetensors")
    assert back.config == model.config and back_vocab == vocab
    mine, theirs = model.state_dict(), back.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    ids = torch.from_numpy(vocab.encode(corpus()[:200]).astype(np.int64))[None]
    with torch.no_grad():
        assert torch.equal(model(ids)[0], back(ids)[0])
    for key in ("step", "epoch", "val_loss", "best_val_loss", "train_config", "init_from"):
        assert back_ckpt[key] == ckpt[key], key
    with safetensors.safe_open(str(home / "m.safetensors"), "pt") as f:
        assert set(f.keys()) == set(mine) and f.metadata()["format"] == "charrnn"
        assert json.loads(f.metadata()["vocab"]) == [*vocab.chars, None]
        assert json.loads(f.metadata()["config"]) == model.config.to_dict()


def test_safetensors_odd_vocabulary_and_half_precision_weights(tmp_path: Path) -> None:
    from charrnn.export.safetensors_write import to_safetensors

    vocab = Vocab.build('ab "\\\n\u00e9\U0001f600\udc80', unk=False)
    model = CharRNN(ModelConfig(vocab_size=vocab.size, cell="scratch-gru", hidden=8, layers=2, input="onehot"))
    weights = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    ckpt = {"model_config": model.config.to_dict(), "vocab": vocab.to_dict(), "weights": weights}
    data = to_safetensors(ckpt)
    assert data == to_safetensors(ckpt)  # the same model, the same bytes
    (tmp_path / "m.safetensors").write_bytes(data)
    back, back_vocab, raw = checkpoint.load_model(tmp_path / "m.safetensors")
    assert back_vocab == vocab and back.config == model.config and raw["step"] is None
    assert all(torch.equal(back.state_dict()[k], w.float()) for k, w in weights.items())
    with safetensors.safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}


@pytest.mark.parametrize("name", ["m", "rec"])
def test_safetensors_generates_the_same_text(home: Path, name: str) -> None:
    outs = [run("generate", "-m", home / f"{name}.{ext}", "--prefix", "the ", "-n", "80", "--seed", "3",
                "--num-samples", "2", "--json") for ext in ("pt", "safetensors")]
    assert all(r.exit_code == 0 for r in outs), [r.stderr for r in outs]
    assert outs[0].stdout == outs[1].stdout and json.loads(outs[0].stdout)["samples"]
    if name == "rec":
        one_line_error(run("generate", "-m", home / "rec.safetensors", "--novel", "-n", "9"), 2, "use its checkpoint")
    scores = [run("eval", "perplexity", "-m", home / f"{name}.{ext}", home / "c.txt", "--json")
              for ext in ("pt", "safetensors")]
    assert scores[0].exit_code == 0 and scores[0].stdout == scores[1].stdout


def test_info_reads_safetensors(home: Path) -> None:
    pt, st = (json.loads(run("info", "-m", home / f"rec.{ext}", "--json").stdout) for ext in ("pt", "safetensors"))
    for key in ("model", "parameters", "vocab_size", "step", "epoch", "val_loss", "best_val_loss", "train",
                "training_chars", "charrnn_version"):
        assert st[key] == pt[key], key
    assert st["exported_as"] == "safetensors" and pt["exported_as"] is None and st["history"] is None
    one_line_error(run("plot", home / "rec.safetensors"), 1, "keeps no training history")
    text = run("info", "-m", home / "rec.safetensors").stdout
    assert text.startswith("gru 1x16") and "records model: delimiter '\\n'" in text and "not kept" in text


def rewrite(src: Path, dst: Path, meta: dict[str, str] | None = None, tensors: dict | None = None) -> Path:
    """A copy of a .safetensors model with metadata entries replaced (None: removed) or tensors replaced."""
    with safetensors.safe_open(str(src), "pt") as f:
        header, weights = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    for key, value in (meta or {}).items():
        if value is None:
            header.pop(key, None)
        else:
            header[key] = value
    weights.update(tensors or {})
    weights = {k: v for k, v in weights.items() if v is not None}
    dst.write_bytes(safetensors.torch.save(weights, header))
    return dst


def _vocab_meta(src: Path) -> list:
    with safetensors.safe_open(str(src), "pt") as f:
        return json.loads(f.metadata()["vocab"])


HOSTILE = {
    "no-charrnn-format": ({"format": None}, None, "not a charrnn model"),
    "newer-version": ({"version": "7"}, None, "version 7, newer"),
    "bad-version": ({"version": "one"}, None, "format version"),
    "config-not-json": ({"config": "{"}, None, "'config' is not valid JSON"),
    "config-extra-field": ({"config": json.dumps({"vocab_size": 3, "evil": 1})}, None, "model config"),
    "config-huge": ({"config": json.dumps({"vocab_size": 30, "hidden": 10**9})}, None, "--hidden"),
    "vocab-missing": ({"vocab": None}, None, "lacks 'vocab'"),
    "vocab-null-inside": ("null-inside", None, "null (<unk>)"),
    "vocab-unsorted": ("unsorted", None, "code-point order"),
    "vocab-two-chars": ("two-chars", None, "not one character"),
    "counts-short": ({"vocab_counts": "[1]"}, None, "counts"),
    "training-nan": ({"training": '{"val_loss": NaN}'}, None, "not valid JSON"),
    "training-step-text": ({"training": '{"step": "8"}'}, None, "step is not a count"),
    "training-extra": ({"training": '{"evil": 1}'}, None, "training metadata"),
    "training-settings-nested": ({"training": '{"train_config": {"a": [1]}}'}, None, "training settings"),
    "records-without-delimiter": ({"training": '{"train_config": {"partition": "records"}}'}, None, "delimiter"),
    "extra-tensor": (None, {"evil": torch.zeros(2)}, "parameter names"),
    "missing-tensor": (None, {"head.bias": None}, "parameter names"),
    "wrong-shape": (None, {"head.bias": torch.zeros(3)}, "head.bias has shape (3,)"),
    "integer-weights": (None, {"head.bias": "int"}, "floating point"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_safetensors_are_refused(home: Path, tmp_path: Path, case: str) -> None:
    meta, tensors, needle = HOSTILE[case]
    src = home / "m.safetensors"
    if isinstance(meta, str):
        entries = _vocab_meta(src)
        chars = entries[:-1]
        entries = {"null-inside": [chars[0], None, *chars[2:], None],
                   "unsorted": [chars[1], chars[0], *chars[2:], None], "two-chars": ["ab", *chars[1:], None]}[meta]
        meta = {"vocab": json.dumps(entries)}
    if tensors is not None and tensors.get("head.bias") == "int":
        with safetensors.safe_open(str(src), "pt") as f:
            tensors = {"head.bias": f.get_tensor("head.bias").to(torch.int32)}
    bad = rewrite(src, tmp_path / "bad.safetensors", meta, tensors)
    with pytest.raises(CheckpointError, match=re.escape(needle)):
        checkpoint.load(bad)
    for args in (["info", "-m", bad], ["generate", "-m", bad, "-n", "5", "--seed", "1"]):
        one_line_error(run(*args), 1, needle)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                    | st.text(max_size=4), lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=8)
FIELDS = ["format", "version", "config", "vocab", "vocab_counts", "training"]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(FIELDS), st.none() | st.text(max_size=12) | JSON.map(json.dumps),
                               min_size=1, max_size=3))
def test_any_metadata_loads_or_is_one_checkpoint_error(home: Path, tmp_path: Path, changes: dict) -> None:
    """Whatever a file's metadata holds, the model loads and works, or loading is a CheckpointError."""
    bad = rewrite(home / "m.safetensors", tmp_path / "fuzz.safetensors", changes)
    try:
        model, vocab, ckpt = checkpoint.load_model(bad)
    except CheckpointError:
        return
    model(torch.zeros(1, 3, dtype=torch.long))
    r = run("info", "-m", bad)
    assert r.exit_code == 0, r.stderr


def test_damaged_safetensors_files(home: Path, tmp_path: Path) -> None:
    whole = (home / "m.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole[: len(whole) - 100])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    for bad in (cut, garbage, empty):
        one_line_error(run("info", "-m", bad), 1, "truncated or damaged")
    nameless = tmp_path / "model.bin"  # recognised by its first bytes, whatever its name
    nameless.write_bytes(whole)
    assert run("info", "-m", nameless).exit_code == 0
    nan = rewrite(home / "m.safetensors", tmp_path / "nan.safetensors",
                  tensors={"head.bias": torch.full((len(_vocab_meta(home / "m.safetensors")),), float("nan"))})
    one_line_error(run("generate", "-m", nan, "-n", "5", "--seed", "1"), 1, "non-finite weights")
    one_line_error(run("train", home / "c.txt", "-o", tmp_path / "r.pt", "--resume", home / "m.safetensors"), 1,
                   "cannot be resumed", "--init-from")


def test_missing_safetensors_library_names_the_extra(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "safetensors", None)
    one_line_error(run("info", "-m", home / "m.safetensors"), 1, "charrnn[export]")
    # Writing needs no library (charrnn writes the format itself): the same bytes as with it.
    assert run("export", "-m", home / "m.pt", "-o", tmp_path / "x.safetensors").exit_code == 0
    assert (tmp_path / "x.safetensors").read_bytes() == (home / "m.safetensors").read_bytes()


# The command ------------------------------------------------------------------------------------------

def test_export_every_format(home: Path, tmp_path: Path) -> None:
    for name, fmt in (("a.onnx", "onnx"), ("a.safetensors", "safetensors"), ("a.html", "html")):
        r = run("export", "-m", home / "m.pt", "-o", tmp_path / name)
        assert r.exit_code == 0 and r.stdout == "", r.stderr
        assert f"wrote {tmp_path / name}" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        r = run("export", "-m", home / "m.pt", "-o", tmp_path / f"{name}.bin", "--format", fmt, "--json")
        assert r.exit_code == 0, r.stderr
        out = json.loads(r.stdout)
        assert out == {"path": str(tmp_path / f"{name}.bin"), "format": fmt,
                       "bytes": (tmp_path / f"{name}.bin").stat().st_size}
        assert (tmp_path / name).read_bytes() == (tmp_path / f"{name}.bin").read_bytes()
    page = (tmp_path / "a.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "Content-Security-Policy" in page
    r = run("export", "-m", home / "m.pt", "-o", tmp_path / "t.html", "--weights", "float16", "--title", "A <b>")
    assert r.exit_code == 0, r.stderr
    page16 = (tmp_path / "t.html").read_text(encoding="utf-8")
    assert "A &lt;b&gt;" in page16 and "A <b>" not in page16 and len(page16) < len(page)
    s = session(str(tmp_path / "a.onnx"))
    assert json.loads(s.get_modelmeta().custom_metadata_map["config"]) == checkpoint.load(home / "m.pt")["model_config"]
    model, vocab, _ = checkpoint.load_model(home / "m.pt")  # trained weights agree as the random ones do
    ids = vocab.encode(corpus()[:100]).astype(np.int64)[None]
    zeros = np.zeros((1, 1, 16), np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(ids))[0].numpy()
    assert np.abs(s.run(["logits"], {"ids": ids, "h": zeros, "c": zeros})[0] - want).max() <= TOL
    r = run("export", "-m", tmp_path / "a.safetensors", "-o", tmp_path / "b.onnx")  # from an exported model too
    assert r.exit_code == 0, r.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_export_bad_inputs(home: Path, tmp_path: Path) -> None:
    model = home / "m.pt"
    before = model.read_bytes()
    one_line_error(run("export", "-m", model, "-o", tmp_path / "m.txt"), 2, ".onnx, .safetensors or .html", "--format")
    one_line_error(run("export", "-m", model, "-o", tmp_path / "m"), 2, ".onnx, .safetensors or .html")
    one_line_error(run("export", "-m", model, "-o", tmp_path / "m.onnx", "--format", "safetensors"), 2, "ends in .onnx")
    one_line_error(run("export", "-m", model, "-o", tmp_path / "m.onnx", "--format", "html"), 2, "ends in .onnx")
    one_line_error(run("export", "-m", model, "-o", tmp_path / "m.onnx", "--weights", "float16"), 2,
                   "--weights applies to --format html")
    one_line_error(run("export", "-m", model, "-o", tmp_path / "m.safetensors", "--title", "x"), 2,
                   "--title applies to --format html")
    one_line_error(run("export", "-m", model, "-o", tmp_path / "m.html", "--weights", "float64"), 2, "--weights")
    one_line_error(run("export", "-m", model, "-o", model, "--format", "onnx"), 2, "is the model (-m)")
    (tmp_path / "link.onnx").symlink_to(model)
    one_line_error(run("export", "-m", model, "-o", tmp_path / "link.onnx"), 2, "is the model (-m)")
    one_line_error(run("export", "-m", model, "-o", tmp_path / "no" / "m.onnx"), 2, "does not exist")
    one_line_error(run("export", "-m", model, "-o", tmp_path), 2)
    one_line_error(run("export", "-m", model, "-o", "-", "--format", "onnx"), 2, "not a stream")
    one_line_error(run("export", "-m", tmp_path / "none.pt", "-o", tmp_path / "m.onnx"), 2, "does not exist")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            one_line_error(run("export", "-m", model, "-o", locked / "m.onnx"), 2, "permission denied")
        finally:
            locked.chmod(0o700)
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(before[: len(before) // 2])
    one_line_error(run("export", "-m", damaged, "-o", tmp_path / "d.onnx"), 1, "truncated or damaged")
    ckpt = torch.load(model, weights_only=True)
    ckpt["weights"]["head.weight"][0, 0] = float("inf")
    torch.save(ckpt, tmp_path / "inf.pt")
    for out in ("i.onnx", "i.safetensors", "i.html"):
        one_line_error(run("export", "-m", tmp_path / "inf.pt", "-o", tmp_path / out), 1, "non-finite weights")
    assert model.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.pt", "inf.pt", "link.onnx"]


def test_export_to_an_unwritable_folder(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused before any work when the folder says so (exit 2, as every command's outputs); a folder that
    refuses the write itself (made read-only meanwhile, or a root-squashed share) is one line, exit 1. Both
    simulated, so that the test runs as root too."""
    from charrnn import outputs

    folder = tmp_path / "locked"
    folder.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != folder and real_access(path, mode, **kw))
    one_line_error(run("export", "-m", home / "m.pt", "-o", folder / "m.onnx"), 2, "permission denied")
    monkeypatch.setattr(os, "access", real_access)

    def refuse(path: Any, suffix: str = ".tmp") -> tuple[int, str]:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(outputs, "temp_beside", refuse)
    one_line_error(run("export", "-m", home / "m.pt", "-o", folder / "m.safetensors"), 1, "cannot write",
                   "Permission denied")
    assert list(folder.iterdir()) == []


def test_export_write_failure_is_one_line_and_keeps_the_old_file(home: Path, tmp_path: Path) -> None:
    """A write that fails half-way (here a file-size limit, as a full disk would) is exit 1, one line; the
    file that was there stays whole and no temporary file is left."""
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    r = subprocess.run([sys.executable, "-m", "charrnn", "export", "-m", str(home / "m.pt"), "-o", str(out)],
                       capture_output=True, text=True, preexec_fn=limit, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 1 and r.stdout == "", (r.returncode, r.stderr)
    assert r.stderr.strip().startswith("Error: cannot write") and len(r.stderr.strip().splitlines()) == 1
    assert out.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_missing_onnx_names_the_extra(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    one_line_error(run("export", "-m", home / "m.pt", "-o", tmp_path / "m.onnx"), 1, "charrnn[export]")
    assert list(tmp_path.iterdir()) == []


def test_export_is_documented_with_every_option() -> None:
    page = (ROOT / "docs" / "export.md").read_text(encoding="utf-8")
    for option in ("-m", "--model", "-o", "--output", "--format", "--weights", "--title", "--json",
                   f"opset {onnx_export.OPSET}"):
        assert option in page, option


# The documentation's example: onnxruntime and numpy, no torch --------------------------------------------

def docs_example() -> str:
    page = (ROOT / "docs" / "export.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", page, flags=re.S | re.M)
    assert blocks, "docs/export.md has no python example"
    return blocks[0]


def test_docs_onnxruntime_example_runs_without_torch(home: Path, tmp_path: Path) -> None:
    code = docs_example()
    assert len(code.strip().splitlines()) <= 20 and "torch" not in code
    assert run("export", "-m", home / "m.pt", "-o", tmp_path / "model.onnx").exit_code == 0
    # torch made unimportable: the example must run on onnxruntime and numpy alone.
    prelude = "import sys\nsys.modules['torch'] = None\n"
    r = subprocess.run([sys.executable, "-c", prelude + code], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    vocab = checkpoint.load(home / "m.pt")["vocab"]["chars"]
    text = r.stdout[:-1]  # print's newline
    assert text.startswith("The ") and len(text) == 4 + 200 and set(text) <= set(vocab) | {"\ufffd"}


def test_readme_shows_the_tested_example() -> None:
    """The README's onnxruntime example is the one the test above runs, not a copy drifting apart."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"```python\n{docs_example()}```" in readme
