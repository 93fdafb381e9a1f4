"""Gate saturation: fractions on constructed activations, the tanh gates' rescaling, the picture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from charrnn.analysis.gates import check_gated, draw, records, saturation, summary
from charrnn.analysis.trace import LayerTrace, Trace, trace
from charrnn.errors import UsageError
from charrnn.model.network import CharRNN, ModelConfig


def gru_trace(reset: np.ndarray, update: np.ndarray, new: np.ndarray) -> Trace:
    h = np.zeros_like(reset)
    return Trace("gru", (LayerTrace(h, None, {"reset": reset, "update": update, "new": new}),), torch.zeros(1, 1, 2))


def test_fractions_left_and_right() -> None:
    reset = np.array([[0.05, 0.5], [0.95, 0.5], [0.01, 0.92], [0.5, 0.99]])
    new = np.array([[-0.9, 0.0], [-0.85, 0.95], [0.7, 0.5], [0.0, 0.79]])  # tanh: left below -0.8, right above 0.8
    sat = saturation(gru_trace(reset, reset, new))
    assert [(s.layer, s.gate) for s in sat] == [(1, "reset"), (1, "update"), (1, "new")]
    np.testing.assert_allclose(sat[0].left, [0.5, 0.0])
    np.testing.assert_allclose(sat[0].right, [0.25, 0.5])
    np.testing.assert_allclose(sat[2].left, [0.5, 0.0])
    np.testing.assert_allclose(sat[2].right, [0.0, 0.25])
    rows = records(sat)
    assert len(rows) == 6 and rows[0] == {"layer": 1, "gate": "reset", "unit": 0, "left": 0.5, "right": 0.25}
    assert summary(sat)[0] == {"layer": 1, "gate": "reset", "units": 2, "left": 0.25, "right": 0.375,
                               "mostly_left": 0, "mostly_right": 0}


@settings(max_examples=50, deadline=None)
@given(arrays(np.float32, (7, 3), elements=st.floats(0, 1, width=32)))
def test_fractions_are_fractions(a: np.ndarray) -> None:
    for s in saturation(gru_trace(a, 1 - a, 2 * a - 1)):
        assert ((0 <= s.left) & (s.left <= 1) & (0 <= s.right) & (s.right <= 1)).all()
        assert (s.left + s.right <= 1).all()


def test_a_plain_rnn_has_no_gates() -> None:
    with pytest.raises(UsageError, match="plain RNN has no gates"):
        check_gated("rnn")
    model = CharRNN(ModelConfig(5, cell="scratch-rnn", hidden=4, layers=1))
    with pytest.raises(UsageError):
        saturation(trace(model, np.arange(5), gates=True))
    check_gated("lstm")


def test_needs_a_trace_with_gates() -> None:
    model = CharRNN(ModelConfig(5, cell="lstm", hidden=4, layers=2)).eval()
    with pytest.raises(ValueError, match="without gates"):
        saturation(trace(model, np.arange(5)))
    sat = saturation(trace(model, np.arange(5), gates=True))
    assert [(s.layer, s.gate) for s in sat][:5] == [(1, "input"), (1, "forget"), (1, "cell"), (1, "output"),
                                                     (2, "input")]


def test_picture_has_a_panel_per_gate() -> None:
    pytest.importorskip("matplotlib")
    from charrnn.display.figure import new_figure

    model = CharRNN(ModelConfig(5, cell="lstm", hidden=4, layers=2)).eval()
    fig = new_figure()
    draw(fig, saturation(trace(model, np.arange(5) % 5, gates=True)), title="t")
    assert [ax.get_title() for ax in fig.axes] == ["input gate", "forget gate", "cell gate", "output gate"]
    assert len(fig.axes[0].collections) == 2  # a point cloud per layer
