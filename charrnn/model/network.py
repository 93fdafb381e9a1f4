"""The character-level recurrent network.

CharRNN = input encoder (one-hot or embedding) -> recurrent layers -> dropout -> linear head.
Two more regularisers act in training only and keep the fused kernels: embedding dropout (whole
characters dropped from a minibatch's input) and weight drop (DropConnect on the recurrent matrices).
The recurrent layers are torch's fused modules (cuDNN on GPU) for `rnn|gru|lstm`, or, for
`scratch-rnn|scratch-gru|scratch-lstm`, a loop over time steps written from the cell equations.
Both use torch's parameter names and layouts (weight_ih_l{k}, weight_hh_l{k}, bias_ih_l{k},
bias_hh_l{k}; gate order r,z,n for GRU and i,f,g,o for LSTM), so their weights are
interchangeable and a scratch cell can be checked against torch's module.

Hidden state is explicit: forward(x, state) -> (logits, state). For rnn/gru the state is one
tensor h of shape (layers, B, H); for lstm it is the pair (h, c) of that shape.

A label-conditioned model (`labels` > 0, trained with `--labels`) has a learned embedding per label.
With label_mode "add" it is added to the input at every step (its width is the input's); with
"state" it is the initial state (h, and c for an LSTM, of every layer). forward and begin_state take
the labels (B,) of the rows; `for_label` gives a view of the model fixed to one label, which every
consumer of a model (generation, scoring) uses as it would an unlabelled model.

The output layer is a full softmax or the adaptive softmax (charrnn.model.heads, `output`). Whatever it
is, probabilities come from two methods only: `log_probs(x, state)` (the next character's log-probabilities
at every position) and `nll(x, y, state)` (the loss of given targets, which the adaptive softmax computes
without the full distribution); `forward` gives values whose softmax is the distribution (see heads).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from charrnn.config import CELLS, INPUTS, MAX_LAYERS, MAX_VOCAB, MAX_WIDTH
from charrnn.data.labels import DEFAULT_LABEL_MODE, LABEL_MODES, MAX_LABELS
from charrnn.data.partition import IGNORE
from charrnn.data.vocab import one_hot
from charrnn.errors import UsageError
from charrnn.model.heads import OUTPUTS, AdaptiveHead, FullHead, check_adaptive, tail_width

# Overrides what a CPU's flags say about native bfloat16 (native_bf16): "1" or "0".
NATIVE_BF16_ENV = "CHARRNN_NATIVE_BF16"

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
# What a labelled model says to a reader that gives it no label (a command without --label).
NEEDS_LABEL = ("this model is conditioned on labels (trained with --labels), and this reads it without one: "
               "use generate or complete with --label, or eval classify")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    cell: str = "lstm"
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.0
    input: str = "embedding"
    embed_dim: int = 64  # width of the embedding table; unused with one-hot input
    weight_drop: float = 0.0  # DropConnect on W_hh, one mask per minibatch (training only)
    embed_dropout: float = 0.0  # whole characters dropped from a minibatch's input (training only)
    labels: int = 0  # labels of a label-conditioned model (0: none)
    label_mode: str = DEFAULT_LABEL_MODE  # how the label enters: added to the input at every step, or the initial state
    output: str = "full"  # the output layer (charrnn.model.heads): full softmax, or adaptive
    cutoffs: tuple[int, ...] = ()  # adaptive: the ranks where the shortlist and each tail cluster end
    order: tuple[int, ...] = ()  # adaptive: the character ids by frequency rank, most frequent first

    def __post_init__(self) -> None:
        # Lists from a checkpoint or JSON become tuples: the config stays hashable and compares equal.
        for name in ("cutoffs", "order"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if not isinstance(self.cell, str) or self.cell not in CELLS:
            raise UsageError(f"unknown cell {self.cell!r}: choose one of {', '.join(CELLS)}")
        if not isinstance(self.input, str) or self.input not in INPUTS:
            raise UsageError(f"unknown input {self.input!r}: choose one of {', '.join(INPUTS)}")
        for name, high in (("vocab_size", MAX_VOCAB), ("hidden", MAX_WIDTH), ("layers", MAX_LAYERS),
                           ("embed_dim", MAX_WIDTH)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high:
                raise UsageError(f"--{name.replace('_', '-')} must be an integer from 1 to {high}, got {value!r}")
        if not isinstance(self.labels, int) or isinstance(self.labels, bool) or not 0 <= self.labels <= MAX_LABELS:
            raise UsageError(f"labels must be an integer from 0 to {MAX_LABELS}, got {self.labels!r}")
        if not isinstance(self.label_mode, str) or self.label_mode not in LABEL_MODES:
            raise UsageError(f"unknown label mode {self.label_mode!r}: choose one of {', '.join(LABEL_MODES)}")
        for name in ("dropout", "weight_drop", "embed_dropout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
                raise UsageError(f"--{name.replace('_', '-')} must be in [0, 1), got {value}")
        if not isinstance(self.output, str) or self.output not in OUTPUTS:
            raise UsageError(f"unknown output layer {self.output!r}: choose one of {', '.join(OUTPUTS)}")
        if not isinstance(self.cutoffs, tuple) or not isinstance(self.order, tuple):
            raise UsageError("the output layer's cutoffs and order must be lists of integers")
        if self.output == "full" and (self.cutoffs or self.order):
            raise UsageError("a full-softmax output layer has no cutoffs or order")
        if self.output == "adaptive":
            if self.vocab_size < 2:
                raise UsageError("the adaptive softmax needs at least 2 characters")
            why = check_adaptive(self.vocab_size, self.cutoffs, self.order)
            if why is not None:
                raise UsageError(f"adaptive output layer: {why}")

    @property
    def base_cell(self) -> str:
        """rnn, gru or lstm, whether fused or scratch."""
        return self.cell.removeprefix("scratch-")

    @property
    def label_width(self) -> int:
        """Width of a label's embedding: the input's ("add"), or every layer's h (and c) ("state")."""
        if self.label_mode == "add":
            return self.embed_dim if self.input == "embedding" else self.vocab_size
        return self.layers * self.hidden * (2 if self.base_cell == "lstm" else 1)

    def to_dict(self) -> dict:
        """Plain data (lists, not tuples: as JSON and checkpoints give them back)."""
        return {**asdict(self), "cutoffs": list(self.cutoffs), "order": list(self.order)}

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return cls(**d)


GATES = {"rnn": 1, "gru": 3, "lstm": 4}


# One time step of each cell. gx = W_ih x_t + b_ih, shape (B, gates*H), computed for all t at once
# by the caller (the same equation, one matmul instead of T); h, c: (B, H).
def rnn_step(gx: torch.Tensor, h: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor) -> torch.Tensor:
    """h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)."""
    return torch.tanh(gx + h @ w_hh.T + b_hh)


def gru_step(gx: torch.Tensor, h: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor) -> torch.Tensor:
    """r = σ(.), z = σ(.), n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)), h' = (1-z) ⊙ n + z ⊙ h."""
    gh = h @ w_hh.T + b_hh
    rx, zx, nx = gx.chunk(3, dim=1)
    rh, zh, nh = gh.chunk(3, dim=1)
    r = torch.sigmoid(rx + rh)
    z = torch.sigmoid(zx + zh)
    n = torch.tanh(nx + r * nh)
    return (1 - z) * n + z * h


def lstm_step(
    gx: torch.Tensor, h: torch.Tensor, c: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """i, f, g, o gates; c' = f ⊙ c + i ⊙ g, h' = o ⊙ tanh(c')."""
    i, f, g, o = (gx + h @ w_hh.T + b_hh).chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class ScratchRNN(nn.Module):
    """Multi-layer RNN/GRU/LSTM from the cell equations, batch-first, with nn.RNN's interface.

    forward(x (B, T, I), state) -> (out (B, T, H), state).
    """

    def __init__(self, base_cell: str, input_size: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.base_cell, self.hidden_size, self.num_layers, self.dropout = base_cell, hidden, layers, dropout
        g = GATES[base_cell] * hidden
        bound = 1.0 / math.sqrt(hidden)  # torch's initialisation, U(-1/sqrt(H), 1/sqrt(H))
        for k in range(layers):
            size_in = input_size if k == 0 else hidden
            for name, shape in ((f"weight_ih_l{k}", (g, size_in)), (f"weight_hh_l{k}", (g, hidden)),
                                (f"bias_ih_l{k}", (g,)), (f"bias_hh_l{k}", (g,))):
                self.register_parameter(name, nn.Parameter(torch.empty(shape).uniform_(-bound, bound)))

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        lstm = self.base_cell == "lstm"
        hs, cs = (list(state[0].unbind(0)), list(state[1].unbind(0))) if lstm else (list(state.unbind(0)), None)
        out = x
        for k in range(self.num_layers):
            w_ih, w_hh, b_ih, b_hh = layer_weights(self, k)
            gx = out @ w_ih.T + b_ih  # (B, T, gates*H)
            h, ys = hs[k], []
            if lstm:
                c = cs[k]
                for t in range(gx.shape[1]):
                    h, c = lstm_step(gx[:, t], h, c, w_hh, b_hh)
                    ys.append(h)
                cs[k] = c
            else:
                step = rnn_step if self.base_cell == "rnn" else gru_step
                for t in range(gx.shape[1]):
                    h = step(gx[:, t], h, w_hh, b_hh)
                    ys.append(h)
            hs[k] = h
            out = torch.stack(ys, dim=1)  # (B, T, H)
            if self.dropout and k < self.num_layers - 1:
                out = F.dropout(out, self.dropout, self.training)
        h_n = torch.stack(hs)
        return out, ((h_n, torch.stack(cs)) if lstm else h_n)


def layer_weights(rnn: nn.Module, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(W_ih, W_hh, b_ih, b_hh) of layer k of a torch RNN module or a ScratchRNN."""
    return (getattr(rnn, f"weight_ih_l{k}"), getattr(rnn, f"weight_hh_l{k}"),
            getattr(rnn, f"bias_ih_l{k}"), getattr(rnn, f"bias_hh_l{k}"))


class CharRNN(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        v, h = config.vocab_size, config.hidden
        self.embed = nn.Embedding(v, config.embed_dim) if config.input == "embedding" else None
        size_in = config.embed_dim if self.embed is not None else v
        if config.cell.startswith("scratch-"):
            self.rnn: nn.Module = ScratchRNN(config.base_cell, size_in, h, config.layers, config.dropout)
        else:
            module = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[config.cell]
            self.rnn = module(size_in, h, config.layers, batch_first=True,
                              dropout=config.dropout if config.layers > 1 else 0.0)
        self.drop = nn.Dropout(config.dropout)
        self.head: FullHead | AdaptiveHead = (
            AdaptiveHead(h, v, config.cutoffs, config.order) if config.output == "adaptive" else FullHead(h, v))
        self.label_embed = nn.Embedding(config.labels, config.label_width) if config.labels else None
        if self.label_embed is not None and config.label_mode == "state":
            nn.init.zeros_(self.label_embed.weight)  # every label starts from the unlabelled zero state

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Ids (B, T) -> inputs (B, T, I). one_hot(x) @ W.T equals the lookup W.T[x]: the
        embedding input is that lookup with its own table of width embed_dim."""
        if self.embed is not None:
            return self.embed(x.long())
        return one_hot(x, self.config.vocab_size, self.head.weight.dtype)  # float64 in a .double() copy

    def begin_state(self, batch: int, device: torch.device | str | None = None,
                    labels: torch.Tensor | None = None) -> State:
        """Initial state for `batch` streams: zeros, or for label_mode "state" the labels' (B,) embeddings."""
        device = device if device is not None else self.first_weight().device
        c = self.config
        if labels is not None and self.label_embed is not None and c.label_mode == "state":
            parts = 2 if c.base_cell == "lstm" else 1
            e = self.label_embed(labels.to(device).long()).view(batch, parts, c.layers, c.hidden)  # (B, parts, L, H)
            e = e.permute(1, 2, 0, 3)  # (parts, L, B, H)
            return (e[0].contiguous(), e[1].contiguous()) if parts == 2 else e[0].contiguous()
        h = torch.zeros(c.layers, batch, c.hidden, device=device)
        return (h, torch.zeros_like(h)) if c.base_cell == "lstm" else h

    def input_offset(self) -> torch.Tensor | None:
        """What is added to every input (I,): nothing for the model itself (see LabelView)."""
        return None

    def for_label(self, label: int) -> LabelView:
        """This model fixed to label id `label`: forward and begin_state as an unlabelled model's."""
        return LabelView(self, label)

    def first_weight(self) -> torch.Tensor:
        """The first layer's W_ih: a parameter every model has (for its device and dtype)."""
        return layer_weights(self.rnn, 0)[0]

    def forward(self, x: torch.Tensor, state: State | None = None, labels: torch.Tensor | None = None,
                y: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        """Ids (B, T), state and the rows' labels (B,) of a labelled model -> logits (B, T, V) (values whose
        softmax is the next character's distribution; the log-probabilities themselves for the adaptive head)
        and the state after the last step. With targets y (B, T): their nats (B, T) instead, as `nll`
        (training goes through forward, which DistributedDataParallel wraps)."""
        if y is not None:
            return self.nll(x, y, state, labels=labels)
        out, state = self.features(x, state, labels)
        return self.head.logits(out), state

    def log_probs(self, x: torch.Tensor, state: State | None = None, dtype: torch.dtype = torch.float32,
                  labels: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        """Ids (B, T) and state -> the next character's log-probabilities (B, T, V) in `dtype` (exact and
        normalised, whatever the output layer) and the state after the last step."""
        out, state = self.features(x, state, labels)
        return self.head.log_probs(out, dtype), state

    def nll(self, x: torch.Tensor, y: torch.Tensor, state: State | None = None, ignore_index: int = IGNORE,
            labels: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        """Ids x (B, T), targets y (B, T) and state -> nats (B, T) float32 (0 where y == ignore_index) and
        the state after the last step. The adaptive head computes a tail cluster only for its targets."""
        out, state = self.features(x, state, labels)
        return self.head.nll(out, y, ignore_index), state

    def features(self, x: torch.Tensor, state: State | None = None,
                 labels: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        """Ids (B, T), state and labels -> the top layer's outputs after dropout (B, T, H), the head's input."""
        if labels is None and self.label_embed is not None:
            raise UsageError(NEEDS_LABEL)
        if state is None:
            state = self.begin_state(x.shape[0], x.device, labels)
        inputs = self.encode(x)  # (B, T, I)
        if labels is not None and self.label_embed is not None and self.config.label_mode == "add":
            inputs = inputs + self.label_embed(labels.long())[:, None, :].to(inputs.dtype)  # (B, 1, I) on every step
        if self.training and self.config.embed_dropout:
            # Embedding dropout (Gal & Ghahramani 2016): a character is dropped from the whole minibatch,
            # wherever it occurs: one keep/drop draw per vocabulary entry, (V,), scaled to keep the mean.
            p = self.config.embed_dropout
            keep = torch.empty(self.config.vocab_size, device=x.device).bernoulli_(1 - p) / (1 - p)
            inputs = inputs * keep[x.long()].unsqueeze(-1).to(inputs.dtype)
        if self.training and self.config.weight_drop:
            # Weight drop (DropConnect on W_hh, as in AWD-LSTM): one mask per minibatch on the recurrent
            # matrices themselves, so that the fused kernel still runs the whole sequence; the gradient
            # reaches the parameters through the mask.
            dropped = {f"weight_hh_l{k}": F.dropout(getattr(self.rnn, f"weight_hh_l{k}"), self.config.weight_drop)
                       for k in range(self.config.layers)}
            out, state = torch.func.functional_call(self.rnn, dropped, (inputs, state))
        else:
            out, state = self.rnn(inputs, state)
        return self.drop(out), state

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One time step: ids (B,) -> logits (B, V), state.

        Each layer is one call of ATen's cell (`torch.lstm_cell`, `gru_cell`, `rnn_tanh_cell`: the
        equations of lstm_step, gru_step and rnn_step in one op) for every cell type, so generating
        a character costs a handful of op calls instead of a fused-module call (oneDNN's LSTM has a
        fixed cost of milliseconds per call on CPU) or a dozen element-wise ops per layer. At one
        stream the op count is the cost, not the arithmetic. Meant for inference: no dropout.
        """
        lstm = self.config.base_cell == "lstm"
        cell = {"lstm": torch.lstm_cell, "gru": torch.gru_cell, "rnn": torch.rnn_tanh_cell}[self.config.base_cell]
        hs, cs = (state[0], state[1]) if lstm else (state, None)
        new_h, new_c = [], []
        inp = self.encode(x[:, None])[:, 0]  # (B, I)
        for k in range(self.config.layers):
            w_ih, w_hh, b_ih, b_hh = layer_weights(self.rnn, k)
            if lstm:
                h, c = cell(inp, (hs[k], cs[k]), w_ih, w_hh, b_ih, b_hh)
                new_c.append(c)
            else:
                h = cell(inp, hs[k], w_ih, w_hh, b_ih, b_hh)
            new_h.append(h)
            inp = h
        h_n = torch.stack(new_h)
        return self.head.logits(inp), ((h_n, torch.stack(new_c)) if lstm else h_n)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class LabelView(nn.Module):
    """A labelled CharRNN fixed to one label: forward(x, state) and begin_state(batch) read as an
    unlabelled model's do, so that generation and scoring take it as they take a model. It holds no
    weights of its own (its parameters are the model's)."""

    def __init__(self, model: CharRNN, label: int) -> None:
        super().__init__()
        if model.label_embed is None or not 0 <= label < model.config.labels:
            raise ValueError(f"label id {label} is not one of the model's {model.config.labels} labels")
        self.model, self.label = model, label
        self.config, self.embed, self.rnn, self.head = model.config, model.embed, model.rnn, model.head
        self.train(model.training)  # a view is in the model's mode (a new Module would be in training mode)

    def _labels(self, batch: int, device: torch.device | str | None) -> torch.Tensor:
        return torch.full((batch,), self.label, dtype=torch.int64, device=device or self.model.first_weight().device)

    def begin_state(self, batch: int, device: torch.device | str | None = None) -> State:
        return self.model.begin_state(batch, device, self._labels(batch, device))

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        return self.model(x, state, self._labels(x.shape[0], x.device))

    def features(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        return self.model.features(x, state, self._labels(x.shape[0], x.device))

    def log_probs(self, x: torch.Tensor, state: State | None = None,
                  dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, State]:
        return self.model.log_probs(x, state, dtype, self._labels(x.shape[0], x.device))

    def nll(self, x: torch.Tensor, y: torch.Tensor, state: State | None = None,
            ignore_index: int = IGNORE) -> tuple[torch.Tensor, State]:
        return self.model.nll(x, y, state, ignore_index, self._labels(x.shape[0], x.device))

    def first_weight(self) -> torch.Tensor:
        return self.model.first_weight()

    def input_offset(self) -> torch.Tensor | None:
        """The label's embedding (I,), added to every input, for label_mode "add"; else None."""
        assert self.model.label_embed is not None
        return self.model.label_embed.weight[self.label] if self.config.label_mode == "add" else None


def parameter_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in CharRNN(config).state_dict(), computed without building the
    model (a checkpoint's weights are checked against this before anything is allocated; building
    on torch's meta device instead would import torch._dynamo, a second of start-up)."""
    v, h, g = config.vocab_size, config.hidden, GATES[config.base_cell] * config.hidden
    shapes: dict[str, tuple[int, ...]] = {}
    if config.input == "embedding":
        shapes["embed.weight"] = (v, config.embed_dim)
    size_in = config.embed_dim if config.input == "embedding" else v
    for k in range(config.layers):
        shapes.update({f"rnn.weight_ih_l{k}": (g, size_in if k == 0 else h), f"rnn.weight_hh_l{k}": (g, h),
                       f"rnn.bias_ih_l{k}": (g,), f"rnn.bias_hh_l{k}": (g,)})
    if config.output == "adaptive":
        shapes.update({"head.head.weight": (config.cutoffs[0] + len(config.cutoffs), h),
                       "head.head.bias": (config.cutoffs[0] + len(config.cutoffs),)})
        for i, (start, end) in enumerate(zip(config.cutoffs, [*config.cutoffs[1:], v], strict=True)):
            shapes.update({f"head.tail.{i}.0.weight": (tail_width(h, i), h),
                           f"head.tail.{i}.1.weight": (end - start, tail_width(h, i))})
    else:
        shapes.update({"head.weight": (v, h), "head.bias": (v,)})
    if config.labels:
        shapes["label_embed.weight"] = (config.labels, config.label_width)
    return shapes


def grown_config(old: ModelConfig, id_map: list[int], vocab_size: int) -> ModelConfig:
    """The config of grow_vocab's model: `vocab_size` tokens, old token i now id_map[i]; an adaptive head's
    order sends the old ranks through id_map and gives the new tokens the last ranks."""
    order = old.order
    if old.output == "adaptive":
        added = sorted(set(range(vocab_size)) - set(id_map))
        order = (*(id_map[i] for i in old.order), *added)
    return replace(old, vocab_size=vocab_size, order=order)


@torch.no_grad()
def grow_vocab(model: CharRNN, id_map: torch.Tensor | list[int], vocab_size: int) -> CharRNN:
    """A copy of `model` for a larger vocabulary of `vocab_size` tokens, where old token i is new
    token id_map[i]. The rows of old tokens in the input table (embedding rows, or the columns of the
    first layer's W_ih for one-hot input) and in the output layer (weight rows and biases) keep their
    exact values; new tokens get the values a fresh model draws (torch's default initialisation, from
    the global RNG: seed it first for a repeatable result). Every other parameter is copied.

    An adaptive head keeps its cutoffs: the new tokens, unseen in the old text, take the last ranks, so
    the last tail cluster grows by their number and its old rows keep their values."""
    old = model.config
    id_map = torch.as_tensor(id_map, dtype=torch.long)
    if id_map.shape != (old.vocab_size,) or vocab_size < old.vocab_size or len(set(id_map.tolist())) != len(id_map) \
            or (len(id_map) and (int(id_map.min()) < 0 or int(id_map.max()) >= vocab_size)):
        raise ValueError(f"id_map must send the {old.vocab_size} old ids to distinct ids below {vocab_size}")
    grown = CharRNN(grown_config(old, id_map.tolist(), vocab_size)).to(model.first_weight().device)
    fresh = grown.state_dict()
    last_tail = f"head.tail.{len(old.cutoffs) - 1}.1.weight"  # adaptive: (size of the last cluster, width)
    for name, value in model.state_dict().items():
        if name == last_tail:  # the old ranks first: the same rows
            fresh[name][: value.shape[0]] = value
        elif name in ("embed.weight", "head.weight", "head.bias"):  # (V, E), (V, H), (V,): one row per token
            fresh[name][id_map] = value
        elif (name == "rnn.weight_ih_l0" or (name == "label_embed.weight" and old.label_mode == "add")) \
                and old.input == "onehot":  # (gates*H, V), (labels, V): one column per token
            fresh[name][:, id_map] = value
        else:
            fresh[name].copy_(value)
    grown.load_state_dict(fresh)
    return grown.train(model.training)


def detach_state(state: State) -> State:
    """Cut the graph behind the state (truncated BPTT); handles LSTM's (h, c)."""
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)  # type: ignore[return-value]
    return state.detach()


def select_streams(state: State, index: torch.Tensor) -> State:
    """The streams `index` of a state (layers, B, H) -> (layers, len(index), H); LSTM's (h, c) alike."""
    if isinstance(state, tuple):
        return tuple(s.index_select(1, index) for s in state)  # type: ignore[return-value]
    return state.index_select(1, index)


def cat_streams(states: list[State]) -> State:
    """States side by side: (layers, Ri, H) each -> (layers, sum Ri, H); LSTM's (h, c) alike."""
    if isinstance(states[0], tuple):
        return tuple(torch.cat(parts, dim=1) for parts in zip(*states, strict=True))  # type: ignore[return-value]
    return torch.cat(states, dim=1)  # type: ignore[arg-type]


def repeat_stream(state: State, rows: int) -> State:
    """A state of one stream (layers, 1, H) repeated for `rows` streams (layers, rows, H)."""
    if isinstance(state, tuple):
        return tuple(s.expand(-1, rows, -1).contiguous() for s in state)  # type: ignore[return-value]
    return state.expand(-1, rows, -1).contiguous()


def native_bf16(device: torch.device, cpuinfo: str = "/proc/cpuinfo", env: Mapping[str, str] | None = None) -> bool:
    """Whether `device` does bfloat16 arithmetic in hardware: a CUDA GPU that supports it (Ampere and
    later), or a CPU with AVX512-BF16 or AMX (read from the kernel's CPU flags). Elsewhere bfloat16
    is emulated and slower than float32 (measured: 2.7x slower matmuls on an Ice Lake Xeon).

    For a CPU, the environment variable CHARRNN_NATIVE_BF16=1 or 0 overrides the flags: for a
    machine whose /proc/cpuinfo lies (some virtual machines hide or invent flags), and to run the
    tests as each kind of CPU would (`--precision auto` follows it, in every process)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    forced = (os.environ if env is None else env).get(NATIVE_BF16_ENV, "").strip()
    if forced:
        if forced not in ("0", "1"):
            raise UsageError(f"environment variable {NATIVE_BF16_ENV}={forced!r}: use 1 (the CPU has native "
                             "bfloat16) or 0 (it has not), or leave it unset to read the CPU flags")
        return forced == "1"
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_precision(spec: str, device: torch.device) -> str:
    """auto|fp32|bf16 -> fp32 or bf16: auto is bf16 where the device has native bfloat16."""
    if spec == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return spec


def resolve_device(spec: str) -> torch.device:
    """auto|cpu|cuda|cuda:N|mps -> a torch.device that exists on this machine."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UsageError(f"unknown device {spec!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {spec!r} asked for, but this machine has no usable CUDA GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"device {spec!r} asked for, but this machine has {torch.cuda.device_count()} GPU(s)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError("device 'mps' asked for, but MPS is not available on this machine")
    elif device.type != "cpu":
        raise UsageError(f"unsupported device {spec!r}: use auto, cpu, cuda, cuda:N or mps")
    return device
