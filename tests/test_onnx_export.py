"""charrnn.export.onnx_export: the ONNX graph computes what torch computes (every cell, one and two layers, one-hot
and embedding input, a sequence fed whole and one character at a time, the state carried), its metadata,
names and dynamic axes, float32 whatever the model holds, and its refusals. The command that writes the
file is tested in tests/test_export.py."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import numpy as np
import pytest
import torch

from charrnn import __version__
from charrnn.config import CELLS
from charrnn.data.vocab import Vocab
from charrnn.errors import MissingDependency, UsageError
from charrnn.model.network import CharRNN, ModelConfig

ort = pytest.importorskip("onnxruntime", reason="the export extra (onnxruntime) is not installed")
onnx = pytest.importorskip("onnx", reason="the export extra (onnx) is not installed")
from charrnn.export import onnx_export  # noqa: E402

TOL = 1e-5


def session(data: bytes | str) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


VOCAB = Vocab.build("abcdefghijklmnopqrstuvwxyz .\n", unk=True)


def tiny_model(cell: str, input: str, layers: int, seed: int = 0) -> CharRNN:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=VOCAB.size, cell=cell, hidden=16, layers=layers, input=input, embed_dim=8,
                         dropout=0.25 if layers > 1 else 0.0)
    return CharRNN(config).eval()


def as_list(state: Any) -> list[np.ndarray]:
    return [s.numpy() for s in (state if isinstance(state, tuple) else (state,))]


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("input", ["onehot", "embedding"])
@pytest.mark.parametrize("cell", CELLS)
def test_onnx_matches_torch_whole_and_stepwise(cell: str, input: str, layers: int) -> None:
    model = tiny_model(cell, input, layers)
    s = session(onnx_export.to_onnx(model, VOCAB))
    lstm = model.config.base_cell == "lstm"
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB.size, (2, 100), generator=g)  # batch 2, time 100: both axes differ from the example
    start = tuple(0.5 * torch.randn(layers, 2, 16, generator=g) for _ in range(2 if lstm else 1))
    with torch.no_grad():
        logits, state = model(ids, start if lstm else start[0])
    want = [logits.numpy(), *as_list(state)]
    names = ["h", "c"][: len(start)]
    whole = s.run(None, {"ids": ids.numpy(), **{n: t.numpy() for n, t in zip(names, start, strict=True)}})
    assert [o.dtype for o in whole] == [np.float32] * len(want)
    for got, ref in zip(whole, want, strict=True):
        assert got.shape == ref.shape and np.abs(got - ref).max() <= TOL
    carried, steps = [t.numpy() for t in start], []
    for t in range(ids.shape[1]):  # one character at a time, the state carried from run to run
        out, *carried = s.run(None, {"ids": ids[:, t : t + 1].numpy(), **dict(zip(names, carried, strict=True))})
        steps.append(out)
    for got, ref in zip([np.concatenate(steps, axis=1), *carried], want, strict=True):
        assert got.shape == ref.shape and np.abs(got - ref).max() <= TOL


def test_onnx_metadata_names_and_dynamic_axes() -> None:
    # quotes, escapes, a newline, beyond the BMP, a lone surrogate (text read with surrogateescape)
    vocab = Vocab.build('ab "\\\n\u00e9\U0001f600\udc80', unk=True)
    model = CharRNN(ModelConfig(vocab_size=vocab.size, cell="lstm", hidden=8, layers=3, embed_dim=4)).eval()
    data = onnx_export.to_onnx(model, vocab)
    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    s = session(data)
    meta = s.get_modelmeta().custom_metadata_map
    assert json.loads(meta["vocab"]) == [*vocab.chars, None]
    assert json.loads(meta["config"]) == model.config.to_dict() and meta["charrnn_version"] == __version__
    inputs = {i.name: (i.shape, i.type) for i in s.get_inputs()}
    outputs = {o.name: (o.shape, o.type) for o in s.get_outputs()}
    assert inputs == {"ids": (["batch", "time"], "tensor(int64)"), "h": ([3, "batch", 8], "tensor(float)"),
                      "c": ([3, "batch", 8], "tensor(float)")}
    assert outputs == {"logits": (["batch", "time", vocab.size], "tensor(float)"),
                       "h_n": ([3, "batch", 8], "tensor(float)"), "c_n": ([3, "batch", 8], "tensor(float)")}
    gru = CharRNN(ModelConfig(vocab_size=vocab.size, cell="scratch-gru", hidden=8, layers=1)).eval()
    names = session(onnx_export.to_onnx(gru, vocab))
    assert [i.name for i in names.get_inputs()] == ["ids", "h"] and [o.name for o in names.get_outputs()] == \
        ["logits", "h_n"]
    no_unk = Vocab.build("xyz", unk=False)
    small = CharRNN(ModelConfig(vocab_size=3, cell="rnn", hidden=4, layers=1)).eval()
    assert json.loads(session(onnx_export.to_onnx(small, no_unk)).get_modelmeta().custom_metadata_map["vocab"]) \
        == ["x", "y", "z"]


def test_onnx_is_float32_whatever_the_model_holds() -> None:
    model = tiny_model("gru", "embedding", 1)
    half = tiny_model("gru", "embedding", 1).to(torch.bfloat16)
    s = session(onnx_export.to_onnx(half, VOCAB))
    ids = np.arange(VOCAB.size, dtype=np.int64)[None]
    logits, h = s.run(None, {"ids": ids, "h": np.zeros((1, 1, 16), np.float32)})
    with torch.no_grad():
        want = half.float()(torch.from_numpy(ids))[0].numpy()
    assert logits.dtype == np.float32 and np.abs(logits - want).max() <= TOL
    assert np.abs(want - model(torch.from_numpy(ids))[0].detach().numpy()).max() < 0.1  # bf16 rounding only


def test_onnx_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model("lstm", "onehot", 1)
    monkeypatch.setattr(onnx_export, "MAX_WEIGHT_BYTES", 1000)
    with pytest.raises(UsageError, match="do not fit in one ONNX file"):
        onnx_export.to_onnx(model, VOCAB)
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(MissingDependency, match=re.escape("charrnn[export]")):
        onnx_export.to_onnx(model, VOCAB)
