"""Train/validation split and the three partitioning strategies.

The strategies are generators with one signature, selected by name with `partition(name)`:

    strategy(ids, batch_size, num_steps, rng, warmup) -> Iterator[Batch]

One call is one epoch. Every epoch draws a random starting offset in [0, num_steps) from `rng`,
so different epochs see differently aligned subsequences. The generators only slice `ids`
(views, no copies of the corpus), so `ids` may be a numpy memmap. The third strategy, `records`,
needs the delimiter: `partition("records", delimiter_ids)` (see `RecordBatches`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from charrnn.config import PARTITIONS, check_choice
from charrnn.errors import DataError, UsageError

IGNORE = -100  # target id of padding: F.cross_entropy's default ignore_index
FIND_CHUNK = 1 << 24  # ids searched for the delimiter per numpy pass


@dataclass(frozen=True)
class Batch:
    x: np.ndarray  # (B, warmup + T) input ids; the first `warmup` columns only build state
    y: np.ndarray  # (B, T) targets: y[:, t] is the character after x[:, warmup + t]
    warmup: int
    carry_state: bool  # True: continue from the previous batch's (detached) state
    reset: bool = False  # with carry_state: start this batch from a fresh state, then carry its end state
    labels: np.ndarray | None = None  # (B,) label ids of the rows (records of a label-conditioned model)

    @property
    def targets(self) -> int:
        """Characters this minibatch trains on (padding, marked IGNORE in y, left out)."""
        return int(np.count_nonzero(np.asarray(self.y) != IGNORE))


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
            yield Batch(x=b.x[rows], y=b.y[rows], warmup=b.warmup, carry_state=b.carry_state, reset=b.reset,
                        labels=None if b.labels is None else b.labels[rows])

    return sharded


def per_process(batch_size: int, world_size: int) -> int:
    """Rows of the global minibatch that each of `world_size` processes trains on."""
    if batch_size % world_size:
        raise UsageError(f"--batch-size {batch_size} does not divide among {world_size} processes: "
                         f"the global minibatch is split evenly (use a multiple of {world_size})")
    return batch_size // world_size




def partition(name: str, delimiter_ids: np.ndarray | None = None) -> Strategy:
    """The partitioning strategy called `name` (`records` needs the delimiter's ids)."""
    check_choice("partition", name, PARTITIONS)
    if name == "sequential":
        return sequential_batches
    if name == "random":
        return random_batches
    return RecordBatches(delimiter_ids if delimiter_ids is not None else np.zeros(0, dtype=np.int64))


def find_delimiters(ids: np.ndarray, delimiter_ids: np.ndarray) -> np.ndarray:
    """Positions (int64, ascending) where the delimiter occurs in `ids`, found left to right without
    overlaps (so "\\n\\n" in three newlines is found once). Works in chunks on a memmap."""
    d, n = len(delimiter_ids), len(ids)
    if d == 0:
        raise UsageError("the delimiter must not be empty")
    found = []
    for c in range(0, n, FIND_CHUNK):
        seg = np.asarray(ids[c : c + FIND_CHUNK + d - 1])
        cand = np.flatnonzero(seg[: max(0, len(seg) - d + 1)] == delimiter_ids[0])
        for k in range(1, d):
            cand = cand[seg[cand + k] == delimiter_ids[k]]
        found.append(cand[cand < FIND_CHUNK] + c)
    pos = np.concatenate(found) if found else np.zeros(0, dtype=np.int64)
    if d > 1 and len(pos) > 1 and (np.diff(pos) < d).any():
        kept, next_free = [], -1
        for p in pos.tolist():  # only for overlapping multi-character delimiters
            if p >= next_free:
                kept.append(p)
                next_free = p + d
        pos = np.array(kept, dtype=np.int64)
    return pos.astype(np.int64)


def find_records(ids: np.ndarray, delimiter_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of every record of `ids`, empty ones included; a delimiter at the very end
    closes the last record rather than opening an empty one."""
    pos = find_delimiters(ids, delimiter_ids)
    starts = np.concatenate([[0], pos + len(delimiter_ids)]).astype(np.int64)
    ends = np.concatenate([pos, [len(ids)]]).astype(np.int64)
    if len(pos) and starts[-1] == len(ids):
        starts, ends = starts[:-1], ends[:-1]
    return starts, ends - starts


def split_records_train_val(ids: np.ndarray, delimiter_ids: np.ndarray, val_fraction: float,
                            max_chars: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Like `split_train_val`, but the held-out tail begins at a record start, so validation holds
    whole records and training keeps whole records (views, no copy)."""
    train, val = split_train_val(ids, val_fraction, max_chars)
    if len(val) == 0:
        return train, val
    starts, _ = find_records(ids, delimiter_ids)
    if len(starts) < 2:
        raise DataError("the training text is a single record (the delimiter never occurs or occurs only at "
                        "the end): nothing whole to hold out for validation (use --val-fraction 0 or more records)")
    cut = len(train)
    later = starts[starts >= cut]
    if len(later):
        cut = int(later[0])
    elif max_chars is not None and (last := len(ids) - int(starts[-1])) > max_chars:
        # --val-max-chars is a bound, not a hint: holding out the whole last record would break it.
        raise UsageError(f"--val-max-chars {max_chars:,} is shorter than the last record ({last:,} characters "
                         "with its delimiter), and validation holds whole records: raise --val-max-chars")
    else:
        cut = int(starts[-1])
    return ids[:cut], ids[cut:]


class RecordBatches:
    """The `records` strategy: every record is an independent sequence from a fresh state.

    A record r becomes the row x = d + r + d[:-1], y = d[1:] + r + d (d: the delimiter's ids), the
    first len(d) - 1 targets ignored: from the zero state the model reads the delimiter (the
    record-start state, learned through the delimiter's embedding and the cell's biases) and then
    predicts every character of r and the delimiter that ends it. Each epoch the records are
    shuffled, sorted by length within pools of 64 x B, cut into groups of B rows (little padding)
    and the groups shuffled. A group is padded (x with d[0], y with IGNORE) to its longest row and
    cut into minibatches of T columns (the first max(T, len(d)), so that it always holds targets;
    the last may be narrower): the first starts from a fresh state
    (reset), the next ones carry it, so a long record keeps its state across its pieces and a
    short one never passes state to another. Empty records are skipped. With `labels` (one label
    id per record of the ids, empty ones included), each minibatch carries its rows' labels.
    """

    def __init__(self, delimiter_ids: np.ndarray, labels: np.ndarray | None = None) -> None:
        self.delimiter_ids = np.asarray(delimiter_ids, dtype=np.int64)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self._cache: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None] | None = None

    def records(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(starts, lengths) of the non-empty records of `ids` (computed once per ids array)."""
        return self._records(ids)[:2]

    def _records(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        if self._cache is None or self._cache[0] is not ids:
            starts, lengths = find_records(ids, self.delimiter_ids)
            if self.labels is not None and len(self.labels) != len(starts):
                raise ValueError(f"{len(self.labels)} labels for {len(starts)} records")
            keep = lengths > 0
            self._cache = (ids, starts[keep], lengths[keep], None if self.labels is None else self.labels[keep])
        return self._cache[1], self._cache[2], self._cache[3]

    def groups(self, ids: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
        """One epoch's groups of record numbers, in training order."""
        _, lengths = self.records(ids)
        if len(lengths) == 0:
            raise DataError("the training text has no non-empty record")
        order = rng.permutation(len(lengths))
        groups = []
        pool = 64 * batch_size
        for p in range(0, len(order), pool):
            chunk = order[p : p + pool]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            groups += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        return [groups[g] for g in rng.permutation(len(groups))]

    def width(self, lengths: np.ndarray) -> int:
        """Columns of a group whose longest record has max(lengths) characters."""
        return int(lengths.max()) + 2 * len(self.delimiter_ids) - 1

    def __call__(self, ids: np.ndarray, batch_size: int, num_steps: int, rng: np.random.Generator,
                 warmup: int = 0) -> Iterator[Batch]:
        if len(self.delimiter_ids) == 0:
            raise UsageError("--partition records needs a delimiter")
        starts, lengths, labels = self._records(ids)
        d = self.delimiter_ids
        for group in self.groups(ids, batch_size, rng):
            rows_labels = None if labels is None else labels[group]
            width = self.width(lengths[group])
            x = np.full((len(group), width), d[0], dtype=np.int64)
            y = np.full((len(group), width), IGNORE, dtype=np.int64)
            for row, k in enumerate(group.tolist()):
                rec = np.asarray(ids[starts[k] : starts[k] + lengths[k]], dtype=np.int64)
                full = np.concatenate([d, rec, d])  # inputs full[:-1], targets full[1:]
                x[row, : len(full) - 1] = full[:-1]
                y[row, len(d) - 1 : len(full) - 1] = full[len(d) :]
            # The first piece also holds the len(d) - 1 reading-only columns, so it always has targets.
            cuts = [0, *range(max(num_steps, len(d)), width, num_steps), width]
            for c0, c1 in itertools.pairwise(cuts):
                yield Batch(x=x[:, c0:c1], y=y[:, c0:c1], warmup=0, carry_state=True, reset=c0 == 0,
                            labels=rows_labels)

    def batches_per_epoch(self, ids: np.ndarray, batch_size: int, num_steps: int) -> int:
        """Minibatches in one epoch (for the grouping of a fixed seed; other epochs differ slightly)."""
        _, lengths = self.records(ids)
        groups = self.groups(ids, batch_size, np.random.default_rng(0))
        first = max(num_steps, len(self.delimiter_ids))
        return sum(1 + max(0, -(-(self.width(lengths[g]) - first) // num_steps)) for g in groups)
