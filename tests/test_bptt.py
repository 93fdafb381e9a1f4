"""charrnn.analysis.bptt: gradient norms through time, against an independent autograd computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from charrnn.analysis.bptt import BpttCurve, gradient_norms, window_gradients, window_starts
from charrnn.errors import DataError, UsageError
from charrnn.model.network import CharRNN, ModelConfig

V = 9


def tiny(cell: str, layers: int = 1, hidden: int = 12, seed: int = 0) -> CharRNN:
    torch.manual_seed(seed)
    return CharRNN(ModelConfig(vocab_size=V, cell=cell, hidden=hidden, layers=layers)).eval()


def reference_norms(model: CharRNN, x: torch.Tensor, y: torch.Tensor, state, k: int) -> torch.Tensor:
    """||d l_T / d h_{T-k}|| per row, independently: the state after the first T-k characters (no
    graph) becomes a leaf, the last k characters run through the fused forward, and autograd differentiates
    the loss of its last logits with respect to that leaf's h (an LSTM's c fed as a constant)."""
    t = x.shape[1]
    with torch.no_grad():
        _, s = model(x[:, : t - k], state)
    h = (s[0] if isinstance(s, tuple) else s).clone().requires_grad_(True)
    fed = (h, s[1].clone()) if isinstance(s, tuple) else h
    if k == 0:
        logits = model.head(h[-1])
    else:
        logits, _ = model(x[:, t - k :], fed)
        logits = logits[:, -1]
    loss = F.cross_entropy(logits, y, reduction="sum")
    (g,) = torch.autograd.grad(loss, h)
    return g.transpose(0, 1).reshape(x.shape[0], -1).norm(dim=1)


@pytest.mark.parametrize("cell,layers", [("lstm", 1), ("lstm", 2), ("gru", 2), ("rnn", 1), ("scratch-gru", 1)])
def test_gradient_norms_match_autograd_of_the_loss_wrt_the_state_fed_at_each_step(cell: str, layers: int) -> None:
    model = tiny(cell, layers)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, V, (3, 9), generator=gen), torch.randint(0, V, (3,), generator=gen)
    state = model.begin_state(3)
    if isinstance(state, tuple):
        state = tuple(torch.randn(s.shape, generator=gen) * 0.5 for s in state)
    else:
        state = torch.randn(state.shape, generator=gen) * 0.5
    got = window_gradients(model, x, y, state)
    assert got.shape == (3, 9)
    for k in range(9):
        torch.testing.assert_close(got[:, k], reference_norms(model, x, y, state, k), rtol=1e-4, atol=1e-7)


def test_k0_is_the_head_gradient() -> None:
    """d l / d h_T for the top layer is W_head^T (softmax - onehot); lower layers get nothing."""
    model = tiny("lstm", 2)
    x, y = torch.randint(0, V, (2, 5)), torch.tensor([1, 4])
    got = window_gradients(model, x, y, model.begin_state(2))[:, 0]
    with torch.no_grad():
        logits, _ = model(x, model.begin_state(2))
        p = logits[:, -1].softmax(-1) - F.one_hot(y, V)
        want = (p @ model.head.weight).norm(dim=1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_an_untrained_plain_rnn_with_small_weights_has_vanishing_gradients() -> None:
    model = tiny("rnn", 1, hidden=16)
    with torch.no_grad():
        model.rnn.weight_hh_l0.mul_(0.5)
    ids = np.random.default_rng(0).integers(0, V, 400)
    curve = gradient_norms(model, ids, steps=30, windows=8)
    g = np.array(curve.grad_norms)
    assert curve.windows == 8 and curve.steps == 30 and len(g) == 30
    assert (np.diff(g[1:]) < 0).all()  # from distance 1 on, every step back shrinks it
    assert g[29] < 1e-4 * g[1]


def test_windows_are_spread_and_their_targets_known() -> None:
    ids = np.arange(1000) % 7
    starts = window_starts(ids, 50, 10, unk_id=3)
    assert len(starts) == 10 and starts.min() >= 50 and (starts + 50 < 1000).all()
    assert (ids[starts + 50] != 3).all() and (np.diff(starts) > 0).all()


def test_records_and_begin_state_and_json() -> None:
    model = tiny("gru", 1)
    ids = np.random.default_rng(2).integers(0, V, 120)
    a = gradient_norms(model, ids, steps=10, windows=4)
    b = gradient_norms(model, ids, steps=10, windows=4, boundary_ids=np.array([1, 2]))
    assert a.grad_norms != b.grad_norms  # the warm-up starts from the record-start state
    assert BpttCurve([0.5, 0.25], 3, 2).records() == [{"distance": 0, "grad_norm": 0.5},
                                                      {"distance": 1, "grad_norm": 0.25}]
    assert not model.training and all(p.grad is None for p in model.parameters())


def test_bad_inputs() -> None:
    model = tiny("lstm")
    ids = np.random.default_rng(0).integers(0, V, 100)
    with pytest.raises(DataError, match="too short for windows of 50"):
        gradient_norms(model, ids, steps=50)
    with pytest.raises(DataError, match="unknown"):
        gradient_norms(model, np.full(100, 2), steps=5, unk_id=2)
    with pytest.raises(UsageError, match="--num-steps"):
        gradient_norms(model, ids, steps=0)
    with pytest.raises(UsageError, match="--windows"):
        gradient_norms(model, ids, steps=5, windows=0)
