"""Gradients through time, measured: ||d l_T / d h_{T-k}|| for k = 0 .. T-1.

For a window of T characters, l_T is the loss of the character that follows the window (predicted
from h_T, the hidden state after reading the window's last character) and h_{T-k} is the hidden
state k steps earlier. The norm of d l_T / d h_{T-k} says how strongly the loss still reaches back
to a state k characters earlier: backpropagation through time multiplies one Jacobian per step, so
in a plain RNN it typically shrinks geometrically (vanishing gradients, notes 002 and 004) or grows
(exploding); the LSTM's additive cell path is meant to keep it alive.

- h is the whole hidden state, every layer's h: for an LSTM only h, the cell state c being another
  node of the graph (the gradient is taken with c_{T-k} held as it is, as autograd reports it for
  the h fed to step T-k+1); for an RNN or GRU h is the state.
- A window starts from the state after reading the T characters before it from the model's begin
  state (for a records model its record-start state), so that its states are those of running text,
  not of a cold start; the warm-up is outside the graph.
- Windows are placed evenly over the text; the curve is the mean over windows of the per-window norm.
- The gradients are computed on a float64 copy of the model: a plain RNN's fall below float32's
  smallest number (1e-45) within some 150 characters, and would read as exactly 0.

The model runs step by step (`CharRNN.step`, one ATen cell call per layer) so that every h_t is a node
of the graph, and one backward pass gives all T gradients.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from charrnn.analysis.context import pick_targets, start_state
from charrnn.errors import DataError, UsageError
from charrnn.model.network import CharRNN, State

DEFAULT_STEPS = 200
DEFAULT_WINDOWS = 32
MAX_STEPS = 10_000
MAX_WINDOWS = 4096


@dataclass(frozen=True)
class BpttCurve:
    grad_norms: list[float]  # index k: mean over windows of ||d l_T / d h_{T-k}||
    windows: int
    steps: int

    def records(self) -> list[dict]:
        return [{"distance": k, "grad_norm": g} for k, g in enumerate(self.grad_norms)]


def _h(state: State) -> torch.Tensor:
    """The h part of a state, (layers, B, H)."""
    return state[0] if isinstance(state, tuple) else state


def window_starts(ids: np.ndarray, steps: int, windows: int, unk_id: int | None = None) -> np.ndarray:
    """At most `windows` window starts p, spread evenly, with the warm-up ids[p - steps : p] inside the
    text and the window's target ids[p + steps] a known character."""
    targets = pick_targets(ids, 2 * steps, windows, unk_id)
    return targets - steps


def window_gradients(model: CharRNN, x: torch.Tensor, y: torch.Tensor, state: State) -> torch.Tensor:
    """Per-row norms ||d l_T / d h_{T-k}||, shape (B, T), k = 0 first, for the windows `x` (B, T) of
    ids read from `state` and their targets `y` (B,)."""
    with torch.enable_grad():
        if isinstance(state, tuple):
            state = tuple(s.detach().clone().requires_grad_(True) for s in state)  # type: ignore[assignment]
        else:
            state = state.detach().clone().requires_grad_(True)
        hs = []
        for t in range(x.shape[1]):
            _, state = model.step(x[:, t], state)
            hs.append(_h(state))  # (layers, B, H), a node every later step reads
        # The head on h_T's top layer: the logits `step` returns, as a function of the state itself (in
        # eval mode the model's dropout is the identity), so that k = 0 is the gradient w.r.t. h_T.
        loss = model.head.nll(hs[-1][-1], y).sum()  # (B,) summed: rows are independent, each gets its own
        grads = torch.autograd.grad(loss, hs)
    norms = torch.stack([g.transpose(0, 1).reshape(g.shape[1], -1).norm(dim=1) for g in grads], dim=1)  # (B, T)
    return norms.flip(1)


def gradient_norms(model: CharRNN, ids: np.ndarray, *, steps: int = DEFAULT_STEPS, windows: int = DEFAULT_WINDOWS,
                   unk_id: int | None = None, boundary_ids: np.ndarray | None = None) -> BpttCurve:
    """The mean over up to `windows` windows of `steps` characters of `ids` (shape (n,)) of the
    gradient norm at each distance."""
    if not 1 <= steps <= MAX_STEPS:
        raise UsageError(f"--num-steps must be from 1 to {MAX_STEPS:,}, got {steps}")
    if not 1 <= windows <= MAX_WINDOWS:
        raise UsageError(f"--windows must be from 1 to {MAX_WINDOWS:,}, got {windows}")
    if unk_id is not None and len(ids) and bool((np.asarray(ids) == unk_id).all()):
        raise DataError("every character of the text is unknown to the model: nothing to measure")
    if len(ids) <= 2 * steps:
        raise DataError(f"the text is too short for windows of {steps:,} characters: it has {len(ids):,} and needs "
                        f"more than {2 * steps:,} (a warm-up of {steps:,}, the window, its target; lower "
                        "--num-steps or give more text)")
    starts = window_starts(ids, steps, windows, unk_id)
    if len(starts) == 0:
        raise DataError(f"no character after the first {2 * steps:,} of the text is known to the model: nothing "
                        "to measure")
    device = next(model.parameters()).device
    probe = copy.deepcopy(model).eval()  # the caller's model keeps its mode and precision
    if device.type != "mps":  # MPS has no float64
        probe = probe.double()
    span = np.asarray(ids[starts[:, None] - steps + np.arange(2 * steps + 1)[None, :]], dtype=np.int64)  # (B, 2T+1)
    span_t = torch.from_numpy(span).to(device)
    with torch.inference_mode():
        _, state = probe(span_t[:, :steps], start_state(probe, boundary_ids, len(starts)))
    state = tuple(s.clone() for s in state) if isinstance(state, tuple) else state.clone()  # out of inference mode
    norms = window_gradients(probe, span_t[:, steps : 2 * steps], span_t[:, 2 * steps], state)
    return BpttCurve([float(v) for v in norms.double().mean(dim=0).cpu()], len(starts), steps)


def draw_bptt(fig: object, curves: list[tuple[str, BpttCurve]], title: str = "") -> None:
    """The gradient norm against distance (log y), a curve per named model, on matplotlib Figure `fig`."""
    ax = fig.subplots()  # type: ignore[attr-defined]
    colours = ("tab:blue", "tab:red", "tab:green", "tab:orange", "tab:purple", "tab:cyan", "tab:gray", "tab:olive")
    for i, (name, curve) in enumerate(curves):
        ys = [g if g > 0 else float("nan") for g in curve.grad_norms]  # 0 (underflow) has no place on a log axis
        ax.plot(range(len(ys)), ys, color=colours[i % len(colours)], label=name)
    ax.set_yscale("log")
    ax.set_xlabel("distance k (characters back from the prediction)")
    ax.set_ylabel("||d loss_T / d h_(T-k)||")
    ax.set_title(title or "gradient of the last loss with respect to earlier hidden states")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
