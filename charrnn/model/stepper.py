"""One character at a time, fast: the sampler's and beam search's view of a trained model.

Generating a character for one stream is a handful of tiny matrix-vector products, so what it
costs is the number of op calls and the memory layout of the weights, not arithmetic. A Stepper
takes a snapshot of the model's weights once per generation call, laid out for that:

- the first layer's input contribution W_ih x + b_ih (+ b_hh where the cell allows) is a table of
  one row per character, (V, gates*H), read with one lookup: for a one-hot input it is W_ih's
  columns, for an embedding the embedding table times W_ih;
- the other weights are stored transposed and contiguous, (in, gates*H), which makes a one-row
  product 3x faster on CPU than the same product through the (out, in) view;
- tokens that must never be sampled (<unk>) get a head bias of -inf (for the adaptive head,
  charrnn.model.heads, -inf is written into its output: AdaptiveStep, which lays that head out the same way);
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

from charrnn.model.heads import AdaptiveHead
from charrnn.model.network import CharRNN, LabelView, State, layer_weights


class Stepper:
    """step(ids (B,), state) -> (logits (B, V), state) with a frozen copy of `model`'s weights; `log_probs`
    gives the log-probabilities instead (what every consumer of probabilities reads)."""

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
        self.banned = torch.tensor([t for t in banned if t is not None], dtype=torch.int64,
                                   device=self.table.device)
        self.adaptive = AdaptiveStep(model.head) if isinstance(model.head, AdaptiveHead) else None
        if self.adaptive is None:
            self.head_t = model.head.weight.detach().T.contiguous()  # (H, V)
            self.head_b = model.head.bias.detach().clone()
            self.head_b[self.banned] = float("-inf")

    def log_probs(self, x: torch.Tensor, state: State,
                  dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, State]:
        """ids (B,), state -> the next character's log-probabilities (B, V) in `dtype` (banned tokens at -inf)."""
        logits, state = self._logits(x, state)
        return torch.log_softmax(logits.to(dtype), dim=-1), state

    def __call__(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        return self._logits(x, state)

    def _logits(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        h, state = self._hidden(x, state)
        if self.adaptive is not None:
            return self.adaptive.logits(h).index_fill_(1, self.banned, float("-inf")), state
        return torch.addmm(self.head_b, h, self.head_t), state

    def _hidden(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """ids (B,), state -> the top layer's output (B, H), the state after the step."""
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
        h_n = new_h[0][None] if self.layers == 1 else torch.stack(new_h)
        if not self.lstm:
            return inp, h_n
        return inp, (h_n, new_c[0][None] if self.layers == 1 else torch.stack(new_c))


class AdaptiveStep:
    """The adaptive head (charrnn.model.heads.AdaptiveHead) laid out for one step: weights transposed and contiguous,
    the head's matrix and every cluster's projection in one product. `logits(h (B, H))` -> (B, V): the head's
    logits for the shortlist and, for each tail cluster, its head logit + log p(char | cluster); their softmax
    is the distribution (the head's normaliser covers both), so no softmax over the whole vocabulary is needed
    to sample."""

    @torch.no_grad()
    def __init__(self, head: AdaptiveHead) -> None:
        self.shortlist = head.shortlist
        self.entries = head.head.weight.shape[0]  # shortlist + clusters
        projections = [tail[0].weight.detach() for tail in head.tail]  # (H / 4^(i+1), H) each
        self.widths = [p.shape[0] for p in projections]
        self.first_t = torch.cat([head.head.weight.detach(), *projections]).T.contiguous()  # (H, S + C + sum widths)
        self.first_b = torch.cat([head.head.bias.detach(), torch.zeros(sum(self.widths), dtype=head.head.bias.dtype,
                                                                       device=head.head.bias.device)])
        self.outs_t = [tail[1].weight.detach().T.contiguous() for tail in head.tail]  # (width, cluster size)
        self.rank = head.rank

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        first = torch.addmm(self.first_b, h, self.first_t)  # (B, S + C + sum widths)
        parts, at = [first[:, : self.shortlist]], self.entries
        for i, (width, out_t) in enumerate(zip(self.widths, self.outs_t, strict=True)):
            inner = first[:, at : at + width] @ out_t  # (B, cluster size)
            at += width
            shift = first[:, self.shortlist + i : self.shortlist + i + 1] - inner.logsumexp(dim=1, keepdim=True)
            parts.append(inner + shift)
        return torch.cat(parts, dim=1).index_select(1, self.rank)  # rank order -> id order


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
