"""The trace's recomputed recurrence against the fused forward, and its gates against their definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from charrnn.analysis.trace import GATE_NAMES, trace
from charrnn.config import CELLS, INPUTS
from charrnn.model.network import CharRNN, ModelConfig


def model_with_biases(cell: str, input: str, layers: int, seed: int = 0) -> CharRNN:
    torch.manual_seed(seed)
    model = CharRNN(ModelConfig(11, cell=cell, hidden=8, layers=layers, input=input, embed_dim=5)).eval()
    with torch.no_grad():  # non-zero biases everywhere, so that a bias folded into the wrong gate shows
        for name, p in model.named_parameters():
            if "bias" in name:
                p.uniform_(-1, 1)
    return model


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("input", INPUTS)
@pytest.mark.parametrize("cell", CELLS)
def test_trace_matches_the_fused_forward_at_every_step_and_layer(cell: str, input: str, layers: int) -> None:
    model = model_with_biases(cell, input, layers)
    ids = torch.randint(0, 11, (13,), generator=torch.Generator().manual_seed(1))
    t = trace(model, ids.numpy(), gates=True)
    lstm = model.config.base_cell == "lstm"
    state = model.begin_state(1)
    with torch.no_grad():
        full, _ = model(ids[None], model.begin_state(1))
        for step in range(len(ids)):
            # The fused module, one character at a time, gives every layer's state after each character.
            _, state = model(ids[None, step : step + 1], state)
            h = state[0] if lstm else state
            for k in range(layers):
                np.testing.assert_allclose(t.layers[k].h[step], h[k, 0].numpy(), atol=1e-5, rtol=1e-5)
                if lstm:
                    np.testing.assert_allclose(t.layers[k].c[step], state[1][k, 0].numpy(), atol=1e-5, rtol=1e-5)
                else:
                    assert t.layers[k].c is None
    # The last layer's h over the whole sequence is what the head reads: the same logits.
    logits = model.head(torch.from_numpy(t.layers[-1].h))
    torch.testing.assert_close(logits, full[0], atol=1e-5, rtol=1e-5)
    final = state if isinstance(state, tuple) else (state,)
    for a, b in zip(t.state if isinstance(t.state, tuple) else (t.state,), final, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert set(t.layers[0].gates) == set(GATE_NAMES[model.config.base_cell])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gates_follow_their_equations(cell: str) -> None:
    """h and c rebuilt from the recorded gates alone equal the recorded h and c."""
    model = model_with_biases(cell, "embedding", 2)
    ids = np.random.default_rng(2).integers(0, 11, 40)
    t = trace(model, ids, gates=True)
    for layer in t.layers:
        g = layer.gates
        for name, a in g.items():
            low = -1.0 if name in ("cell", "new") else 0.0
            assert a.shape == layer.h.shape and a.min() >= low and a.max() <= 1.0
        h_prev = np.vstack([np.zeros((1, 8), np.float32), layer.h[:-1]])
        if cell == "lstm":
            c_prev = np.vstack([np.zeros((1, 8), np.float32), layer.c[:-1]])
            c = g["forget"] * c_prev + g["input"] * g["cell"]
            np.testing.assert_allclose(c, layer.c, atol=1e-5)
            np.testing.assert_allclose(g["output"] * np.tanh(c), layer.h, atol=1e-5)
        else:
            np.testing.assert_allclose((1 - g["update"]) * g["new"] + g["update"] * h_prev, layer.h, atol=1e-5)


def test_rnn_has_no_gates_and_trace_starts_from_a_given_state() -> None:
    model = model_with_biases("rnn", "onehot", 1)
    ids = np.arange(11) % 11
    t = trace(model, ids, gates=True)
    assert t.layers[0].gates == {} and t.length == 11
    # Carried state: tracing the second half from the first half's state gives the whole trace's rows.
    first = trace(model, ids[:5])
    second = trace(model, ids[5:], state=first.state)
    np.testing.assert_allclose(second.layers[0].h, t.layers[0].h[5:], atol=1e-6)


def test_empty_ids_are_refused() -> None:
    with pytest.raises(ValueError):
        trace(model_with_biases("lstm", "onehot", 1), np.array([], dtype=np.int64))
