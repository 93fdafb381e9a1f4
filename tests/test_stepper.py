"""The fast one-step path of generation against the full-sequence forward pass."""

from __future__ import annotations

import pytest
import torch

from charrnn.config import CELLS, INPUTS
from charrnn.model.network import CharRNN, ModelConfig
from charrnn.model.stepper import Stepper


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("input", INPUTS)
@pytest.mark.parametrize("cell", CELLS)
def test_stepper_matches_forward(cell: str, input: str, layers: int) -> None:
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(11, cell=cell, hidden=8, layers=layers, input=input, embed_dim=5)).eval()
    # non-zero biases everywhere, so that a bias folded into the wrong gate shows
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bias" in name:
                p.uniform_(-1, 1)
    x = torch.randint(0, 11, (3, 7))
    state0 = model.begin_state(3)
    with torch.no_grad():
        full, full_state = model(x, state0)
        step = Stepper(model)
        state = state0
        for t in range(x.shape[1]):
            logits, state = step(x[:, t], state)
            torch.testing.assert_close(logits, full[:, t], atol=1e-5, rtol=1e-5)
    for a, b in zip(as_tuple(state), as_tuple(full_state), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        assert a.shape == b.shape


def test_banned_tokens_get_no_probability() -> None:
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(6, hidden=8, layers=1)).eval()
    with torch.no_grad():
        logits, _ = Stepper(model, banned=(5, None))(torch.tensor([1, 2]), model.begin_state(2))
        plain, _ = Stepper(model)(torch.tensor([1, 2]), model.begin_state(2))
    assert torch.isinf(logits[:, 5]).all() and (logits[:, 5] < 0).all()
    torch.testing.assert_close(logits[:, :5], plain[:, :5])


def test_snapshot_does_not_follow_later_weight_changes() -> None:
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(6, hidden=8, layers=1)).eval()
    step = Stepper(model)
    x, state = torch.tensor([1]), model.begin_state(1)
    with torch.no_grad():
        before, _ = step(x, state)
        model.head.bias.add_(1.0)
        after, _ = step(x, state)
    torch.testing.assert_close(before, after)
