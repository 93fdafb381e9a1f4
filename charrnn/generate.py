"""Sampling text from a model.

The prefix warms up the state: all its characters but the last go through the network in one
call and only build state; the last one is the first input of the sampling loop. Each further
character costs one `model.step` (O(1) work, no re-reading of the text so far).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from charrnn.errors import UsageError
from charrnn.model import CharRNN
from charrnn.vocab import Vocab


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    greedy: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.temperature < math.inf:
            raise UsageError(f"--temperature must be a finite number > 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise UsageError(f"--top-k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UsageError(f"--top-p must be in (0, 1], got {self.top_p}")


def next_ids(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> torch.Tensor:
    """Logits (B, V) -> sampled ids (B,)."""
    if sampling.greedy:
        return logits.argmax(dim=-1)
    # Shift the best logit to 0 first, so that a tiny temperature gives -inf for the others (a
    # greedy choice) rather than overflowing to +inf (softmax NaN).
    logits = logits.float()
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < logits.shape[-1]:
        kth = logits.topk(sampling.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if sampling.top_p is not None and sampling.top_p < 1:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # Drop a token when the tokens ranked above it already reach top_p (the first always stays).
        drop = (sorted_p.cumsum(dim=-1) - sorted_p) >= sampling.top_p
        probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.inference_mode()
def generate(
    model: CharRNN,
    vocab: Vocab,
    prefix_ids: np.ndarray,
    length: int,
    sampling: Sampling = Sampling(),
    seed: int = 0,
    num_samples: int = 1,
) -> Iterator[list[str]]:
    """Yield, `length` times, a list of `num_samples` new characters (one per sample)."""
    if length < 0:
        raise UsageError(f"--length must be >= 0, got {length}")
    if num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1, got {num_samples}")
    device = next(model.parameters()).device
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    state = model.begin_state(num_samples, device)
    banned = vocab.unk_id  # never emit <unk>
    remaining = length
    if len(prefix_ids) == 0:
        # No prefix: draw the first character from the training text's character frequencies.
        if remaining == 0:
            return
        counts = torch.tensor(vocab.counts, dtype=torch.float64, device=device)
        last = torch.multinomial(counts.expand(num_samples, -1), 1, generator=generator)[:, 0]
        yield list(vocab.decode(last))
        remaining -= 1
    else:
        prefix = torch.as_tensor(np.asarray(prefix_ids, dtype=np.int64), device=device)
        if len(prefix) > 1:
            _, state = model(prefix[None, :-1].expand(num_samples, -1), state)
        last = prefix[-1:].expand(num_samples)
    for _ in range(remaining):
        logits, state = model.step(last, state)  # (B, V)
        if banned is not None:
            logits[:, banned] = float("-inf")
        last = next_ids(logits, sampling, generator)
        yield list(vocab.decode(last))
