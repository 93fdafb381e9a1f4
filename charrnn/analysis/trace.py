"""What a model computes inside, character by character: every layer's state and gate activations.

torch's fused RNN modules return only the last layer's output and the final state, and never the
gates. A trace recomputes the recurrence from the model's own weights, taken from the generation
Stepper's snapshot (W_ih^T, W_hh^T and the folded biases per layer, the first layer's input as a
per-character table) and its cell updates (stepper.lstm_update, gru_update), so the equations are
the ones generation runs, and a test checks them against CharRNN.forward step by step (h and c of
every layer, to 1e-5).

It goes layer by layer: the input contribution of a whole layer is one product, (T, in) x
(in, gates*H), and only the recurrent product W_hh h_{t-1} is done one step at a time.

Gates, in torch's order: LSTM input i, forget f, cell g (tanh), output o; GRU reset r, update z,
new n (tanh). A plain RNN has none.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from charrnn.data.vocab import Vocab
from charrnn.errors import DataError, UsageError
from charrnn.model.network import NEEDS_LABEL, CharRNN, LabelView, State
from charrnn.model.stepper import Stepper, gru_update, lstm_update

GATE_NAMES = {"lstm": ("input", "forget", "cell", "output"), "gru": ("reset", "update", "new"), "rnn": ()}
TANH_GATES = frozenset({"cell", "new"})  # the others are sigmoids, in (0, 1)


@dataclass(frozen=True)
class LayerTrace:
    """One layer over T characters: h (T, H); c (T, H) for an LSTM, else None; gates: name -> (T, H)
    (empty unless asked for). Row t is the value after reading character t."""

    h: np.ndarray
    c: np.ndarray | None = None
    gates: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Trace:
    cell: str  # rnn, gru or lstm (a scratch cell traces as its base cell)
    layers: tuple[LayerTrace, ...]
    state: State  # after the last character, as CharRNN.forward returns it: (layers, 1, H)

    @property
    def length(self) -> int:
        return self.layers[0].h.shape[0]


@torch.inference_mode()
def trace(model: CharRNN, ids: np.ndarray | torch.Tensor, gates: bool = False, state: State | None = None) -> Trace:
    """Run `model` over `ids` (T,) as one stream from `state` (default: its begin state), recording
    every layer's h (and c) after each character, and with `gates` the gate activations."""
    if model.config.labels and not isinstance(model, LabelView):
        raise UsageError(NEEDS_LABEL)  # the analyses read a model without a label
    snap = Stepper(model)
    device = snap.table.device
    x = torch.as_tensor(np.asarray(ids, dtype=np.int64) if not torch.is_tensor(ids) else ids, device=device).long()
    if x.ndim != 1 or x.numel() == 0:
        raise ValueError(f"trace needs a non-empty 1-d sequence of ids, got shape {tuple(x.shape)}")
    if state is None:
        state = model.begin_state(1, device)
    lstm = snap.lstm
    hs0, cs0 = (state[0], state[1]) if lstm else (state, None)
    layers, last_h, last_c = [], [], []
    inp = None
    for k, (w_ih_t, w_hh_t, b_x) in enumerate(snap.weights):
        gx = snap.table[x] if k == 0 else torch.addmm(b_x, inp, w_ih_t)  # (T, gates*H)
        h_seq, c_seq, act = _run_layer(snap, k, gx, w_hh_t, hs0[k], cs0[k] if lstm else None, gates)
        layers.append(LayerTrace(h_seq.cpu().numpy(), c_seq.cpu().numpy() if c_seq is not None else None,
                                 _split(snap.cell, act)))
        last_h.append(h_seq[-1:])
        if c_seq is not None:
            last_c.append(c_seq[-1:])
        inp = h_seq
    h_n = torch.stack(last_h)  # (layers, 1, H)
    return Trace(snap.cell, tuple(layers), (h_n, torch.stack(last_c)) if lstm else h_n)


def _run_layer(snap: Stepper, k: int, gx: torch.Tensor, w_hh_t: torch.Tensor, h: torch.Tensor,
               c: torch.Tensor | None, record: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The recurrence of layer k over gx (T, gates*H) from h, c (1, H), through generation's own cell
    updates: h (T, H), c (T, H) or None, and with `record` the gate activations (T, gates*H) in
    torch's gate order (LSTM: σ(i), σ(f), tanh(g), σ(o); GRU: σ(r), σ(z), tanh(n))."""
    n, size = gx.shape[0], snap.hidden
    h_seq = gx.new_empty(n, size)
    c_seq = gx.new_empty(n, size) if c is not None else None
    act = gx.new_empty(gx.shape) if record and snap.cell != "rnn" else None
    for t in range(n):
        row = gx[t : t + 1]
        if snap.lstm:
            h, c, s, g = lstm_update(torch.addmm(row, h, w_hh_t), c, size)
            c_seq[t] = c[0]
            if act is not None:
                act[t], act[t, 2 * size : 3 * size] = s[0], g[0]
        elif snap.cell == "gru":
            h, rz, n_act = gru_update(row, torch.addmm(snap.gru_bias[k], h, w_hh_t), h, size)
            if act is not None:
                act[t, : 2 * size], act[t, 2 * size :] = rz[0], n_act[0]
        else:
            h = torch.addmm(row, h, w_hh_t).tanh()
        h_seq[t] = h[0]
    return h_seq, c_seq, act


def _split(cell: str, act: torch.Tensor | None) -> dict[str, np.ndarray]:
    """Gate name -> activation (T, H) from the recorded activations (T, gates*H)."""
    if act is None:
        return {}
    names = GATE_NAMES[cell]
    return {name: a.cpu().numpy() for name, a in zip(names, act.chunk(len(names), dim=1), strict=True)}


def analysis_ids(body: str, vocab: Vocab) -> tuple[np.ndarray, int]:
    """(the ids of `body` as `eval perplexity` reads it, <unk> for unknown characters, (T,) int64; how many
    are unknown) for the analyses; a DataError for an empty text or one the model knows no character of."""
    if not body:
        raise DataError("the text is empty: nothing to inspect")
    unknown = vocab.unknown_chars(body)
    if unknown and vocab.unk_id is None:
        shown = ", ".join(repr(c) for c in unknown[:10])
        raise DataError(f"the text has {len(unknown)} character(s) the model does not know and the model has no "
                        f"<unk> to read them as: {shown}")
    ids = vocab.encode(body, unk="map", where="the text")
    n_unknown = int((ids == vocab.unk_id).sum()) if unknown else 0
    if n_unknown == len(ids):
        raise DataError(f"none of the text's {len(ids):,} characters is known to the model: nothing to inspect "
                        "(is it the text the model was trained on, and the right --encoding?)")
    return np.asarray(ids, dtype=np.int64), n_unknown
