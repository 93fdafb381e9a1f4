"""The output layer: the top layer's hidden states -> the next character's distribution.

Two kinds, one interface, so that every consumer of a model goes through `CharRNN.log_probs` and
`CharRNN.nll` (charrnn.model) and never applies a softmax of its own:

- `FullHead`: a linear layer to one logit per character and a softmax over all of them. Its cost is
  hidden x V multiply-adds a character: with a vocabulary of thousands (Chinese) it is most of the model's.
- `AdaptiveHead`: the adaptive softmax of Grave et al. (2017), the factorisation of
  torch.nn.AdaptiveLogSoftmaxWithLoss. The characters are ranked by their frequency in the training
  text; the `cutoffs` cut the ranks into a shortlist and tail clusters. A softmax over the shortlist and
  one entry per cluster gives p(char) for shortlisted characters and p(cluster) for the rest; each cluster
  has its own softmax behind a narrower projection (hidden / 4, hidden / 16, ...), so
  p(char) = p(cluster) p(char | cluster). Exact and normalised: the full distribution is the concatenation.
  Training pays the shortlist for every character and a cluster only for the characters that fall in it.

Both give `logits(h)`: values whose softmax is the distribution (the raw logits; for the adaptive head
the log-probabilities themselves, so that temperature and top-k act on them as on logits).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from charrnn.config import ADAPTIVE_FROM
from charrnn.data.partition import IGNORE
from charrnn.errors import UsageError

OUTPUTS = ("full", "adaptive")
# Each tail cluster's projection is this many times narrower than the one before (torch's default div_value).
ADAPTIVE_DIV = 4
# The share of the training text's characters that the shortlist, then each further cluster boundary, covers
# (chosen by `adaptive_cutoffs`; docs/models.md gives the sweep behind them).
CUTOFF_COVERAGE = (0.9, 0.99)
# The shortlist keeps at least this many characters (a small alphabet needs no cluster at all).
MIN_SHORTLIST = 256


def tail_width(hidden: int, cluster: int) -> int:
    """Width of the projection in front of tail cluster `cluster` (0-based)."""
    return max(1, hidden // ADAPTIVE_DIV ** (cluster + 1))


class FullHead(nn.Linear):
    """A softmax over every character: Linear(hidden, V); its parameters are named weight and bias."""

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """h (..., H) -> logits (..., V)."""
        return self(h)

    def log_probs(self, h: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """h (..., H) -> log-probabilities (..., V) in `dtype`."""
        return torch.log_softmax(self(h).to(dtype), dim=-1)

    def nll(self, h: torch.Tensor, y: torch.Tensor, ignore_index: int = IGNORE) -> torch.Tensor:
        """h (..., H), targets y (...) -> nats (...) float32, 0 where y == ignore_index."""
        logits = self(h)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1),
                               ignore_index=ignore_index, reduction="none").view(y.shape)


class AdaptiveHead(nn.Module):
    """The adaptive softmax over V characters; `order` lists the character ids by rank (most frequent
    first), `cutoffs` the ranks where the shortlist and each tail cluster end (the last cluster ends at V).

    Parameters: head.weight (S + C, H), head.bias (S + C,) for the S shortlisted characters and C clusters;
    tail.{i}.0.weight (H / 4^(i+1), H) and tail.{i}.1.weight (cluster size, H / 4^(i+1)), as torch names them.
    """

    def __init__(self, hidden: int, vocab_size: int, cutoffs: Sequence[int], order: Sequence[int]) -> None:
        super().__init__()
        self.shortlist = cutoffs[0]
        ends = [*cutoffs[1:], vocab_size]
        self.starts = list(cutoffs)  # the first rank of each tail cluster
        self.head = nn.Linear(hidden, self.shortlist + len(cutoffs))
        self.tail = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, tail_width(hidden, i), bias=False),
                          nn.Linear(tail_width(hidden, i), end - start, bias=False))
            for i, (start, end) in enumerate(zip(self.starts, ends, strict=True)))
        # rank[id]: the position of character `id` in frequency order; derived from the config, not saved.
        rank = torch.empty(vocab_size, dtype=torch.int64)
        rank[torch.as_tensor(list(order), dtype=torch.int64)] = torch.arange(vocab_size)
        self.register_buffer("rank", rank, persistent=False)
        self.register_buffer("bounds", torch.as_tensor(list(cutoffs), dtype=torch.int64), persistent=False)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """h (..., H) -> log-probabilities (..., V): already normalised, they serve as logits."""
        return self.log_probs(h)

    def log_probs(self, h: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """h (..., H) -> log-probabilities (..., V) in `dtype`, in vocabulary-id order."""
        head = torch.log_softmax(self.head(h).to(dtype), dim=-1)  # (..., S + C)
        parts = [head[..., : self.shortlist]]
        for i, cluster in enumerate(self.tail):
            inner = torch.log_softmax(cluster(h).to(dtype), dim=-1)  # (..., cluster size)
            parts.append(head[..., self.shortlist + i : self.shortlist + i + 1] + inner)
        by_rank = torch.cat(parts, dim=-1)  # (..., V), rank order
        return by_rank.index_select(-1, self.rank)

    def nll(self, h: torch.Tensor, y: torch.Tensor, ignore_index: int = IGNORE) -> torch.Tensor:
        """h (..., H), targets y (...) -> nats (...) float32, 0 where y == ignore_index. Each tail cluster is
        computed only for the rows whose target falls in it; every cluster takes part in the graph, even with
        no row, so that data-parallel training sees a gradient (zero) for every parameter."""
        shape = y.shape
        h = h.reshape(-1, h.shape[-1])  # (N, H)
        y = y.reshape(-1)
        ignored = y == ignore_index
        r = self.rank[torch.where(ignored, 0, y)]  # (N,) ranks
        cluster = torch.bucketize(r, self.bounds, right=True)  # (N,) 0: shortlist, i + 1: tail cluster i
        head = torch.log_softmax(self.head(h).float(), dim=-1)  # (N, S + C)
        lp = head.gather(1, torch.where(cluster == 0, r, self.shortlist + cluster - 1)[:, None])[:, 0]
        for i, tail in enumerate(self.tail):
            rows = (cluster == i + 1).nonzero()[:, 0]  # (n_i,)
            inner = torch.log_softmax(tail(h.index_select(0, rows)).float(), dim=-1)  # (n_i, cluster size)
            lp = lp.index_add(0, rows, inner.gather(1, (r[rows] - self.starts[i])[:, None])[:, 0])
        return (-lp).masked_fill(ignored, 0.0).view(shape)


def frequency_order(counts: Sequence[int]) -> list[int]:
    """Ids sorted by count, most frequent first (ties by id): the ranks of the adaptive softmax."""
    c = np.asarray(counts, dtype=np.int64)
    return np.lexsort((np.arange(len(c)), -c)).tolist()


def adaptive_cutoffs(counts: Sequence[int]) -> tuple[int, ...]:
    """Cluster boundaries for ids with these counts (in any order): the shortlist holds the most frequent
    characters that cover CUTOFF_COVERAGE[0] of the text (at least MIN_SHORTLIST), the next cluster those up
    to CUTOFF_COVERAGE[1], the last the rest. A vocabulary of at most 2 x MIN_SHORTLIST gets a shortlist of
half of it (the adaptive head forced on a small alphabet); () for fewer than 2 characters."""
    c = np.sort(np.asarray(counts, dtype=np.float64))[::-1]
    v, total = len(c), c.sum()
    if v < 2:
        return ()
    least = min(MIN_SHORTLIST, v // 2)
    covered = np.cumsum(c) / total if total > 0 else np.arange(1, v + 1) / v
    cuts: list[int] = []
    for share in CUTOFF_COVERAGE:
        cut = int(np.searchsorted(covered, share)) + 1  # the ranks that reach `share`
        cut = min(max(cut, least), v - 1)  # a cluster keeps at least one character
        if not cuts or cut > cuts[-1]:
            cuts.append(cut)
    return tuple(cuts)


def check_adaptive(vocab_size: int, cutoffs: Sequence[int], order: Sequence[int]) -> str | None:
    """Why these adaptive-softmax fields cannot describe a head over `vocab_size` characters, or None."""
    if not cutoffs or not all(isinstance(c, int) and not isinstance(c, bool) for c in cutoffs) \
            or any(a >= b for a, b in zip(cutoffs, cutoffs[1:], strict=False)) or not 0 < cutoffs[0] \
            or not cutoffs[-1] < vocab_size:
        return f"its cutoffs must increase strictly within 1..{vocab_size - 1}, got {list(cutoffs)[:8]}"
    if len(order) != vocab_size or not all(isinstance(i, int) and not isinstance(i, bool) for i in order) \
            or sorted(order) != list(range(vocab_size)):
        return f"its order must list each of the {vocab_size} character ids once"
    return None


def choose(spec: str, counts: Sequence[int]) -> dict[str, object]:
    """The model-config fields (output, cutoffs, order) of the output layer `spec` (auto, full or adaptive)
    for ids with these training-text counts: auto is the adaptive softmax from ADAPTIVE_FROM ids on."""
    if spec not in ("auto", *OUTPUTS):
        raise UsageError(f"unknown output layer {spec!r}: choose one of auto, {', '.join(OUTPUTS)}")
    output = spec if spec != "auto" else ("adaptive" if len(counts) >= ADAPTIVE_FROM else "full")
    if output == "full":
        return {"output": "full", "cutoffs": (), "order": ()}
    cutoffs = adaptive_cutoffs(counts)
    if not cutoffs:
        raise UsageError("the adaptive softmax needs at least 2 characters in the vocabulary")
    return {"output": "adaptive", "cutoffs": cutoffs, "order": tuple(frequency_order(counts))}
