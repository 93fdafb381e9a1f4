"""A model as an ONNX file, for onnxruntime and any other ONNX reader.

The graph (opset OPSET): inputs `ids` (batch, time) int64, `h` (layers, batch, hidden) float32 and,
for an LSTM, `c` of the same shape; outputs `logits` (batch, time, vocabulary) float32, `h_n` and,
for an LSTM, `c_n`. Batch and time are dynamic, so one file serves a whole sequence and one step:
onnxruntime keeps no state between runs, so the state goes in and comes out explicitly, laid out as
CharRNN's own (layer-major, as torch's RNN modules keep it).

The metadata properties hold `vocab` (a JSON list: the character of each id, null for <unk>),
`config` (the model config as JSON) and `charrnn_version`: a reader needs nothing else to encode
and decode text.

Exported with torch's TorchScript exporter (`torch.onnx.export(..., dynamo=False)`): it writes
ONNX's own RNN, GRU and LSTM operators with dynamic batch and time. The dynamo exporter (torch 2.13,
onnxscript 0.7) was measured to specialise the time axis to the example's length and took 5-10
times as long. A scratch cell's Python loop over time would likewise be traced into a fixed number
of steps, so scratch cells are exported as torch's fused module holding the same weights (both use
torch's parameter names, layouts and gate order; charrnn's tests check they compute the same
function), which makes the file the same as that of the fused cell. The file is always float32,
whatever precision the model was trained in.
"""

from __future__ import annotations

import copy
import io
import json
import warnings

import torch
from torch import nn

from charrnn.config import CHARRNN_VERSION
from charrnn.data.vocab import Vocab, one_hot
from charrnn.errors import MissingDependency, UsageError
from charrnn.model.network import CharRNN, layer_weights

OPSET = 17
# One ONNX file is one protobuf message, which cannot exceed 2 GiB; keep a margin for the graph.
MAX_WEIGHT_BYTES = 2**31 - 2**24
FUSED = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


def metadata(model: CharRNN, vocab: Vocab) -> dict[str, str]:
    """The metadata properties of an exported file."""
    # ASCII JSON (\u escapes): a vocabulary may hold a lone surrogate, which UTF-8 (protobuf's strings) cannot.
    return {"vocab": json.dumps(vocab.id_chars()),
            "config": json.dumps(model.config.to_dict()), "charrnn_version": CHARRNN_VERSION}


class _Graph(nn.Module):
    """What is traced: a float32 copy of the model with torch's fused recurrent module, taking the state
    as separate tensors (ONNX has no tuples): forward(ids (B, T), h (L, B, H)[, c]) -> (logits (B, T, V),
    h_n[, c_n])."""

    def __init__(self, model: CharRNN) -> None:
        super().__init__()
        config = model.config
        self.vocab_size = config.vocab_size
        self.embed = copy.deepcopy(model.embed).float() if model.embed is not None else None
        size_in = config.embed_dim if model.embed is not None else config.vocab_size
        with torch.random.fork_rng(devices=[]):  # its initial weights, overwritten below, draw from the global RNG
            self.rnn = FUSED[config.base_cell](size_in, config.hidden, config.layers, batch_first=True)
        with torch.no_grad():
            for k in range(config.layers):
                for mine, theirs in zip(layer_weights(self.rnn, k), layer_weights(model.rnn, k), strict=True):
                    mine.copy_(theirs.float())
        self.head = copy.deepcopy(model.head).float()
        self.to("cpu").eval()

    def forward(self, ids: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        x = self.embed(ids) if self.embed is not None else one_hot(ids, self.vocab_size)  # (B, T, I)
        out, state = self.rnn(x, (h, c) if c is not None else h)  # (B, T, H)
        logits = self.head.logits(out)  # the adaptive head's are log-probabilities (charrnn.model.heads)
        return (logits, *state) if isinstance(state, tuple) else (logits, state)


def weight_bytes(model: CharRNN) -> int:
    """Bytes of the float32 weights in the exported file."""
    return 4 * model.num_parameters()


def to_onnx(model: CharRNN, vocab: Vocab) -> bytes:
    """The model as the bytes of an ONNX file (see the module's docstring); a MissingDependency error
    when the `export` extra is not installed, a UsageError for a model too large for one file."""
    try:
        import onnx
    except ImportError:
        raise MissingDependency("exporting to ONNX needs onnx: pip install 'charrnn[export]' "
                                "(or pip install onnx)") from None
    if weight_bytes(model) > MAX_WEIGHT_BYTES:
        raise UsageError(f"the model's {weight_bytes(model):,} bytes of float32 weights do not fit in one ONNX "
                         "file (at most 2 GiB); export it as .safetensors instead")
    graph = _Graph(model)
    config = model.config
    lstm = config.base_cell == "lstm"
    # An example of batch 1 and time 2: every axis that may vary is declared dynamic below.
    h = torch.zeros(config.layers, 1, config.hidden)
    args = (torch.zeros(1, 2, dtype=torch.int64), h, *((torch.zeros_like(h),) if lstm else ()))
    inputs, outputs = ["ids", "h", *(["c"] if lstm else [])], ["logits", "h_n", *(["c_n"] if lstm else [])]
    axes = {"ids": {0: "batch", 1: "time"}, "logits": {0: "batch", 1: "time"}}
    axes.update({name: {1: "batch"} for name in (*inputs[1:], *outputs[1:])})
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The exporter warns that a fixed initial state ties the batch size: here the state is an input.
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, args, buffer, input_names=inputs, output_names=outputs, dynamic_axes=axes,
                          opset_version=OPSET, dynamo=False, do_constant_folding=True)
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in metadata(model, vocab).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name, proto.producer_version = "charrnn", CHARRNN_VERSION
    return proto.SerializeToString()
