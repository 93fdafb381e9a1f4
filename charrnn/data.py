"""Train/validation split and the two partitioning strategies.

Both strategies are generators with one signature, selected by name with `partition(name)`:

    strategy(ids, batch_size, num_steps, rng, warmup) -> Iterator[Batch]

One call is one epoch. Every epoch draws a random starting offset in [0, num_steps) from `rng`,
so different epochs see differently aligned subsequences. The generators only slice `ids`
(views, no copies of the corpus), so `ids` may be a numpy memmap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from charrnn.errors import DataError, UsageError

PARTITIONS = ("sequential", "random")


@dataclass(frozen=True)
class Batch:
    x: np.ndarray  # (B, warmup + T) input ids; the first `warmup` columns only build state
    y: np.ndarray  # (B, T) targets: y[:, t] is the character after x[:, warmup + t]
    warmup: int
    carry_state: bool  # True: continue from the previous batch's (detached) state


Strategy = Callable[[np.ndarray, int, int, np.random.Generator, int], Iterator[Batch]]


def split_train_val(ids: np.ndarray, val_fraction: float,
                    max_chars: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Hold out a contiguous tail of `val_fraction` of the ids, at most `max_chars` of them, for
    validation (views, no copy)."""
    if not 0.0 <= val_fraction < 1.0:
        raise UsageError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    n_val = int(round(len(ids) * val_fraction))
    if max_chars is not None:
        n_val = min(n_val, max_chars)
    if val_fraction > 0 and n_val < 2:
        raise DataError(
            f"the text has {len(ids)} characters: a validation fraction of {val_fraction} leaves "
            "fewer than 2 characters to validate on (use --val-fraction 0 or more text)"
        )
    return ids[: len(ids) - n_val], ids[len(ids) - n_val :]


def min_chars(batch_size: int, num_steps: int, warmup: int = 0) -> int:
    """Fewest characters that give at least one full minibatch at any starting offset."""
    return batch_size * num_steps + num_steps + warmup + 1


def check_fits(n: int, batch_size: int, num_steps: int, warmup: int = 0) -> None:
    """Raise DataError, saying what would fit, when `n` ids cannot fill one minibatch."""
    if batch_size < 1 or num_steps < 1 or warmup < 0:
        raise UsageError("--batch-size and --num-steps must be positive and --warmup non-negative")
    need = min_chars(batch_size, num_steps, warmup)
    if n >= need:
        return
    fit_b = (n - num_steps - warmup - 1) // num_steps
    hint = f"; --batch-size {fit_b} fits" if fit_b >= 1 else "; use a smaller --num-steps or more text"
    raise DataError(
        f"the training text has {n} characters, too few for --batch-size {batch_size} x "
        f"--num-steps {num_steps}" + (f" with --warmup {warmup}" if warmup else "")
        + f" (needs at least {need}){hint}"
    )


def sequential_batches(
    ids: np.ndarray, batch_size: int, num_steps: int, rng: np.random.Generator, warmup: int = 0
) -> Iterator[Batch]:
    """Cut the text into `batch_size` contiguous streams and walk them in steps of `num_steps`.

    Row b of minibatch i+1 starts exactly where row b of minibatch i ended, so the model's state
    is carried from one minibatch to the next (and detached: truncated BPTT). `warmup` is unused:
    the carried state already holds the context.
    """
    offset = int(rng.integers(0, num_steps))
    stream_len = (len(ids) - offset - 1) // batch_size
    xs = ids[offset : offset + batch_size * stream_len].reshape(batch_size, stream_len)
    ys = ids[offset + 1 : offset + 1 + batch_size * stream_len].reshape(batch_size, stream_len)
    for i in range(stream_len // num_steps):
        cols = slice(i * num_steps, (i + 1) * num_steps)
        yield Batch(x=xs[:, cols], y=ys[:, cols], warmup=0, carry_state=True)


def random_batches(
    ids: np.ndarray, batch_size: int, num_steps: int, rng: np.random.Generator, warmup: int = 0
) -> Iterator[Batch]:
    """Non-overlapping subsequences of `num_steps` characters in shuffled order.

    The state starts afresh for every minibatch. With `warmup` K, each row also gets the K
    characters before its subsequence, which only build the state (no loss, no gradient).
    """
    offset = int(rng.integers(0, num_steps))
    # Subsequence s covers inputs ids[s : s+T] and targets ids[s+1 : s+T+1], so s <= n - T - 1.
    starts = np.arange(warmup + offset, len(ids) - num_steps, num_steps)
    starts = starts[rng.permutation(len(starts))]
    cols = np.arange(-warmup, num_steps)  # (K + T,) relative positions of one row
    for i in range(len(starts) // batch_size):
        rows = starts[i * batch_size : (i + 1) * batch_size, None]  # (B, 1)
        x = ids[rows + cols[None, :]]  # (B, K + T)
        y = ids[rows + cols[None, warmup:] + 1]  # (B, T)
        yield Batch(x=x, y=y, warmup=warmup, carry_state=False)


def batches_per_epoch(name: str, n: int, batch_size: int, num_steps: int, warmup: int = 0) -> int:
    """Minibatches in one epoch at the worst starting offset (the count may be one more)."""
    offset = num_steps - 1
    if name == "sequential":
        return ((n - offset - 1) // batch_size) // num_steps
    return len(range(warmup + offset, n - num_steps, num_steps)) // batch_size


def shard(strategy: Strategy, rank: int, world_size: int) -> Strategy:
    """`strategy` as seen by process `rank` of `world_size`: every minibatch's rows (B of them) are
    cut into `world_size` equal blocks and this process gets block `rank`, (B / N, ...).

    Every process runs the whole strategy with the same generator, so all see the same epoch
    (offset, order, number of minibatches) and stop together. Sequential rows are contiguous
    streams, so each process walks its own streams and carries their state; random rows are
    the epoch's shuffled subsequences, dealt out in order. The mean loss over a block, averaged
    over the processes (what DistributedDataParallel does to gradients), is the mean over all B.
    """
    if world_size == 1:
        return strategy
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")

    def sharded(ids: np.ndarray, batch_size: int, num_steps: int, rng: np.random.Generator,
                warmup: int = 0) -> Iterator[Batch]:
        per = per_process(batch_size, world_size)
        rows = slice(rank * per, (rank + 1) * per)
        for b in strategy(ids, batch_size, num_steps, rng, warmup):
            yield Batch(x=b.x[rows], y=b.y[rows], warmup=b.warmup, carry_state=b.carry_state)

    return sharded


def per_process(batch_size: int, world_size: int) -> int:
    """Rows of the global minibatch that each of `world_size` processes trains on."""
    if batch_size % world_size:
        raise UsageError(f"--batch-size {batch_size} does not divide among {world_size} processes: "
                         f"the global minibatch is split evenly (use a multiple of {world_size})")
    return batch_size // world_size


def partition(name: str) -> Strategy:
    """The partitioning strategy called `name`."""
    if name == "sequential":
        return sequential_batches
    if name == "random":
        return random_batches
    raise UsageError(f"unknown partition {name!r}: choose one of {', '.join(PARTITIONS)}")
