"""Perplexity: the one evaluation used by training validation and by `charrnn eval perplexity`.

Every character but the first is a target, predicted from all the characters before it.
To use the hardware well, the text is cut into `streams` contiguous pieces that run side by side
as one batch; each piece starts from a fresh state and carries it through its whole length, so
only the first few characters of each piece see less context than a single pass would give them
(`streams=1` is the exact single pass). Targets that are <unk> are not scored, only counted.

Result: mean cross-entropy in nats per scored character (token-weighted over the whole text),
perplexity = exp(nats), bits per character = nats / ln 2. The per-character losses are summed exactly
(charrnn.inference.exactsum): the figure is the same whatever the thread count, the windows the text is cut into
(the thread chooser cuts them finer while it tries its candidates) or the order of the additions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from charrnn.data.partition import IGNORE
from charrnn.errors import DataError
from charrnn.inference.exactsum import ExactSum
from charrnn.model.network import CharRNN
from charrnn.threads import ThreadChooser, fixed

MAX_WINDOW_LOGITS = 1 << 24  # elements of one window's logits: 64 MB of float32


UNKNOWN_WARN_SHARE = 0.05  # `eval` warns on stderr when more targets than this are unknown to the model


def perplexity_of(nats: float) -> float:
    """exp(nats), or infinity where that overflows (a terrible model: above 709 nats per character)."""
    return math.exp(nats) if nats < 709.0 else math.inf


@dataclass(frozen=True)
class EvalResult:
    nats_per_char: float
    chars: int  # characters scored
    unknown: int  # <unk> targets skipped

    @property
    def perplexity(self) -> float:
        return perplexity_of(self.nats_per_char)

    @property
    def unknown_share(self) -> float:
        """Share of the targets skipped as unknown to the model."""
        return self.unknown / max(1, self.chars + self.unknown)

    @property
    def bits_per_char(self) -> float:
        return self.nats_per_char / math.log(2)

    @classmethod
    def from_sums(cls, total: float, scored: int, unknown: int) -> EvalResult:
        """The result from summed nats and counts (of one process, or reduced over several)."""
        if scored == 0:
            raise DataError("no character could be scored: every target is unknown to the model (<unk>)")
        return cls(nats_per_char=total / scored, chars=scored, unknown=unknown)

    def to_dict(self) -> dict:
        return {"perplexity": self.perplexity, "nats_per_char": self.nats_per_char,
                "bits_per_char": self.bits_per_char, **asdict(self)}


def evaluate(
    model: CharRNN,
    ids: np.ndarray,
    *,
    unk_id: int | None = None,
    streams: int = 64,
    num_steps: int = 256,
    on_progress: Callable[[int, int], None] | None = None,
    threads: ThreadChooser | None = None,
) -> EvalResult:
    """Token-weighted mean cross-entropy of `model` on the id sequence `ids` (shape (n,)).

    Memory is O(streams * num_steps * vocab), at most about MAX_WINDOW_LOGITS floats, whatever the
    length of the text. `threads` times each window to choose the CPU threads (charrnn.threads).
    """
    return EvalResult.from_sums(*evaluate_sums(model, ids, unk_id=unk_id, streams=streams, num_steps=num_steps,
                                               on_progress=on_progress, threads=threads))


@torch.inference_mode()
def evaluate_sums(
    model: CharRNN,
    ids: np.ndarray,
    *,
    unk_id: int | None = None,
    streams: int = 64,
    num_steps: int = 256,
    on_progress: Callable[[int, int], None] | None = None,
    shard: tuple[int, int] = (0, 1),
    threads: ThreadChooser | None = None,
) -> tuple[float, int, int]:
    """(summed nats, characters scored, <unk> targets skipped) of `evaluate`, over the streams of
    `shard` = (rank, world_size) only: the streams are dealt out in contiguous blocks, each cut
    where one process would cut it, so the sums of all shards are the sums of one process."""
    n_pairs = len(ids) - 1
    if n_pairs < 1:
        raise DataError("need at least 2 characters to measure perplexity")
    device = next(model.parameters()).device
    s = max(1, min(streams, n_pairs))
    # Logits of one window are (S, T, V) floats, and the loss makes another such tensor: with a large
    # vocabulary, shorten the window (the state is carried across windows, so the result is the same).
    num_steps = max(1, min(num_steps, MAX_WINDOW_LOGITS // (s * model.config.vocab_size)))
    length = -(-n_pairs // s)  # ceil: stream r covers pairs [r*length, (r+1)*length)
    rank, world_size = shard
    mine = np.array_split(np.arange(s, dtype=np.int64), world_size)[rank]  # this shard's streams
    if len(mine) == 0:
        return 0.0, 0, 0
    rows = mine[:, None] * length  # (S', 1)
    threads = threads if threads is not None else fixed()  # times nothing it acts on
    total = ExactSum(device=device)
    scored = unknown = 0
    was_training = model.training
    model.eval()
    state = model.begin_state(len(mine), device)
    try:
        start = 0
        while start < length:
            # Shorter windows while the threads are tried (the state is carried: the same result).
            end = min(start + (threads.unit_size(num_steps)), length)
            pos = rows + np.arange(start, end)[None, :]  # (S', T) pair index
            valid = pos < n_pairs  # the last stream may be shorter: its tail is padding
            safe = np.minimum(pos, n_pairs - 1)
            x = np.asarray(ids[safe], dtype=np.int64)
            y = np.asarray(ids[safe + 1], dtype=np.int64)
            if unk_id is not None:
                is_unk = valid & (y == unk_id)
                unknown += int(is_unk.sum())
                valid &= ~is_unk
            y[~valid] = IGNORE
            scored += int(valid.sum())
            threads.before()
            nats, state = model.nll(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device), state,
                                    ignore_index=IGNORE)  # (S', T), 0 where ignored
            total.add(nats.reshape(-1))  # (S' * T,)
            threads.after(x.size)
            if on_progress is not None:
                on_progress(end * len(mine), length * len(mine))
            start = end
    finally:
        model.train(was_training)
    return total.total(), scored, unknown
