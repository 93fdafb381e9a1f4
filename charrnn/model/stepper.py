"""One character at a time, fast: the sampler's and beam search's view of a trained model.

Generating a character for one stream is a handful of tiny matrix-vector products, so what it
costs is the number of op calls and the memory layout of the weights, not arithmetic. A Stepper
takes a snapshot of the model's weights once per generation call, laid out for that:

- the first layer's input contribution W_ih x + b_ih (+ b_hh where the cell allows) is a table of
  one row per character, (V, gates*H), read with one lookup: for a one-hot input it is W_ih's
  columns, for an embedding the embedding table times W_ih;
- the other weights are stored transposed and contiguous, (in, gates*H), which makes a one-row
  product 3x faster on CPU than the same product through the (out, in) view;
- tokens that must never be sampled (<unk>) get a head bias of -inf;
- a label view (model.LabelView) of label_mode "add" has its label's embedding folded into the table.

The equations are those of model.rnn_step, gru_step and lstm_step; a test checks the result
against CharRNN.forward for every cell and input. The LSTM and GRU updates are module functions
(lstm_update, gru_update) that also return the gate activations: charrnn.analysis.trace records them.
The snapshot does not follow later changes to the model's weights: make a new Stepper after
training.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from charrnn.model.network import CharRNN, LabelView, State, layer_weights


class Stepper:
    """step(ids (B,), state) -> (logits (B, V), state) with a frozen copy of `model`'s weights."""

    @torch.no_grad()
    def __init__(self, model: CharRNN | LabelView, banned: Iterable[int | None] = ()) -> None:
        config = model.config
        self.cell, self.hidden, self.layers = config.base_cell, config.hidden, config.layers
        self.lstm = self.cell == "lstm"
        h = self.hidden
        self.weights: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (W_ih^T, W_hh^T, b_x) per layer
        self.gru_bias: list[torch.Tensor] = []  # GRU, per layer: b_hn in the n block, zeros for r and z
        for k in range(config.layers):
            w_ih, w_hh, b_ih, b_hh = (w.detach() for w in layer_weights(model.rnn, k))
            if self.cell == "gru":
                # r and z take b_ih + b_hh; n takes b_in outside and b_hn inside r ⊙ (W_hn h + b_hn).
                b_x = b_ih + torch.cat([b_hh[: 2 * h], torch.zeros_like(b_hh[2 * h:])])
                self.gru_bias.append(torch.cat([torch.zeros_like(b_hh[: 2 * h]), b_hh[2 * h:]]))
            else:
                b_x = b_ih + b_hh
            self.weights.append((w_ih.T.contiguous(), w_hh.T.contiguous(), b_x))
            if k == 0:
                inputs = model.embed.weight.detach() if model.embed is not None else None  # (V, E) or one-hot
                self.table = (torch.addmm(b_x, inputs, w_ih.T) if inputs is not None else w_ih.T + b_x).contiguous()
                offset = model.input_offset()  # a label's embedding (I,), added to every input, or None
                if offset is not None:
                    self.table = (self.table + offset.detach() @ w_ih.T).contiguous()
        self.head_t = model.head.weight.detach().T.contiguous()  # (H, V)
        self.head_b = model.head.bias.detach().clone()
        for token in banned:
            if token is not None:
                self.head_b[token] = float("-inf")

    def __call__(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        hs, cs = (state[0], state[1]) if self.lstm else (state, None)
        new_h, new_c = [], []
        inp = x
        for k, (w_ih_t, w_hh_t, b_x) in enumerate(self.weights):
            gx = self.table[x] if k == 0 else torch.addmm(b_x, inp, w_ih_t)  # (B, gates*H)
            h = hs[k]
            if self.lstm:
                h, c, _, _ = lstm_update(torch.addmm(gx, h, w_hh_t), cs[k], self.hidden)
                new_c.append(c)
            elif self.cell == "gru":
                h, _, _ = gru_update(gx, torch.addmm(self.gru_bias[k], h, w_hh_t), h, self.hidden)
            else:
                h = torch.addmm(gx, h, w_hh_t).tanh()
            new_h.append(h)
            inp = h
        logits = torch.addmm(self.head_b, inp, self.head_t)
        h_n = new_h[0][None] if self.layers == 1 else torch.stack(new_h)
        if not self.lstm:
            return logits, h_n
        return logits, (h_n, new_c[0][None] if self.layers == 1 else torch.stack(new_c))


# The cell updates, shared by generation (Stepper) and charrnn.analysis.trace, which records the gates they return.
def lstm_update(gates: torch.Tensor, c: torch.Tensor,
                size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """gates (B, 4H) = W_ih x + W_hh h + b, c (B, H) -> h, c, σ(gates) (B, 4H: i, f, o are used; g's
    sigmoid is wasted but saves a split) and g = tanh of the cell block (B, H)."""
    s = gates.sigmoid()
    g = gates[:, 2 * size:3 * size].tanh()
    c = torch.addcmul(s[:, size:2 * size] * c, s[:, :size], g)
    return s[:, 3 * size:] * c.tanh(), c, s, g


def gru_update(gx: torch.Tensor, gh: torch.Tensor, h: torch.Tensor,
               size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """gx = W_ih x + b_ih (+ b_hh for r, z), gh = W_hh h (+ b_hn for n), both (B, 3H), h (B, H) ->
    h' = (1 - z) ⊙ n + z ⊙ h, the sigmoids [r, z] (B, 2H) and n (B, H)."""
    rz = (gx[:, :2 * size] + gh[:, :2 * size]).sigmoid()
    n = torch.addcmul(gx[:, 2 * size:], rz[:, :size], gh[:, 2 * size:]).tanh()
    return torch.addcmul(n, rz[:, size:], h - n), rz, n
