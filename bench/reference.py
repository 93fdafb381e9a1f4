"""A reference training loop for a character-level RNN, written the way a textbook writes it.

Independent of charrnn's model and training code (torch, numpy and the bench's own flops.sync): embedding or one-hot
input, nn.RNN / nn.GRU / nn.LSTM, a Linear head, Adam, global-norm clipping with
torch.nn.utils.clip_grad_norm_, sequential minibatches with the state carried and detached, and
loss.item() every step. The benchmark times it at the same model size and minibatch shape as
charrnn's training, to see whether charrnn's loop costs anything beyond the model itself.

    chars_per_s = reference_throughput(ids, vocab_size, "lstm", 512, "embedding", seconds=10)
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from flops import sync  # the benchmark's GPU synchronisation, shared with the charrnn timings
from torch import nn


class TextbookCharModel(nn.Module):
    def __init__(self, cell: str, vocab_size: int, hidden: int, layers: int, input_: str, embed_dim: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, embed_dim) if input_ == "embedding" else None
        rnn_class = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[cell]
        self.rnn = rnn_class(embed_dim if self.embedding is not None else vocab_size, hidden, layers,
                             batch_first=True)
        self.fc = nn.Linear(hidden, vocab_size)

    def forward(self, x: torch.Tensor, state: object = None) -> tuple[torch.Tensor, object]:
        if self.embedding is not None:
            inputs = self.embedding(x)
        else:
            inputs = F.one_hot(x, self.vocab_size).float()
        out, state = self.rnn(inputs, state)
        return self.fc(out), state


def detach(state: object) -> object:
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()  # type: ignore[attr-defined]


def sequential_batches(ids: np.ndarray, batch_size: int, num_steps: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """B contiguous streams, walked T characters at a time; repeats the text forever."""
    stream_len = (len(ids) - 1) // batch_size
    xs = ids[: batch_size * stream_len].reshape(batch_size, stream_len)
    ys = ids[1 : 1 + batch_size * stream_len].reshape(batch_size, stream_len)
    while True:
        for i in range(0, stream_len - num_steps + 1, num_steps):
            yield xs[:, i : i + num_steps], ys[:, i : i + num_steps]


def train_steps(ids: np.ndarray, vocab_size: int, cell: str, hidden: int, input_: str, *, layers: int = 2,
                embed_dim: int = 64, batch_size: int = 32, num_steps: int = 64, lr: float = 2e-3, clip: float = 1.0,
                seconds: float | None = None, max_steps: int | None = None,
                device: torch.device | str = "cpu", seed: int = 0) -> dict:
    """Train a fresh model until `seconds` or `max_steps`; wall-clock throughput of the whole loop."""
    device = torch.device(device)
    torch.manual_seed(seed)
    model = TextbookCharModel(cell, vocab_size, hidden, layers, input_, embed_dim).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    state = None
    steps, losses = 0, []
    sync(device)
    start = time.perf_counter()
    for x_np, y_np in sequential_batches(ids, batch_size, num_steps):
        x = torch.from_numpy(x_np.astype(np.int64)).to(device)
        y = torch.from_numpy(y_np.astype(np.int64)).to(device)
        if state is not None:
            state = detach(state)
        logits, state = model(x, state)
        loss = F.cross_entropy(logits.reshape(-1, vocab_size), y.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        losses.append(loss.item())
        steps += 1
        if (max_steps is not None and steps >= max_steps) or (
                seconds is not None and time.perf_counter() - start >= seconds):
            break
    sync(device)
    elapsed = time.perf_counter() - start
    chars = steps * batch_size * num_steps
    return {"steps": steps, "seconds": elapsed, "chars_per_s": chars / elapsed, "last_loss": losses[-1]}


def reference_throughput(ids: np.ndarray, vocab_size: int, cell: str, hidden: int, input_: str, *, seconds: float,
                         layers: int = 2, embed_dim: int = 64, batch_size: int = 32, num_steps: int = 64,
                         warmup_steps: int = 2, device: torch.device | str = "cpu") -> dict:
    """A short discarded warm-up run, then a timed run of a fresh model and optimizer."""
    shape = {"layers": layers, "embed_dim": embed_dim, "batch_size": batch_size, "num_steps": num_steps,
             "device": device}
    train_steps(ids, vocab_size, cell, hidden, input_, max_steps=warmup_steps, **shape)
    return train_steps(ids, vocab_size, cell, hidden, input_, seconds=seconds, **shape)
