"""Partitioning: shift by one, sequential adjacency, random coverage and warm-up, determinism.

The ids are np.arange(n), so every value is its own position in the text.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charrnn.data.partition import (
    batches_per_epoch,
    check_fits,
    min_chars,
    partition,
    per_process,
    random_batches,
    sequential_batches,
    shard,
    split_train_val,
)
from charrnn.errors import DataError, UsageError

SIZES = [(200, 2, 5), (1000, 4, 16), (777, 3, 7), (64, 1, 1), (513, 8, 8)]  # (n, B, T)
SEEDS = [0, 1, 7]


class FixedOffset:
    """An rng whose epoch offset is fixed; the shuffle still comes from a real generator."""

    def __init__(self, offset: int, seed: int = 0) -> None:
        self.offset = offset
        self.rng = np.random.default_rng(seed)

    def integers(self, low: int, high: int) -> int:
        assert low <= self.offset < high
        return self.offset

    def permutation(self, n: int) -> np.ndarray:
        return self.rng.permutation(n)


def positions(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64)


def check_sequential(n: int, b: int, t: int, rng) -> list:
    ids = positions(n)
    batches = list(sequential_batches(ids, b, t, rng))
    for batch in batches:
        assert batch.x.shape == (b, t) and batch.y.shape == (b, t)
        assert batch.warmup == 0 and batch.carry_state is True
        assert np.array_equal(batch.y, batch.x + 1)  # y[:, t] == ids[pos + 1] where x[:, t] == ids[pos]
        assert np.array_equal(np.diff(batch.x, axis=1), np.ones((b, t - 1)))  # contiguous rows
        assert batch.y.max() < n
    for prev, nxt in pairwise(batches):
        # row r of batch i+1 starts exactly where row r of batch i ended
        assert np.array_equal(nxt.x[:, 0], prev.x[:, -1] + 1)
    if batches:
        # the streams are disjoint and laid out in order
        firsts = batches[0].x[:, 0]
        assert np.all(np.diff(firsts) >= len(batches) * t)
    return batches


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("n", "b", "t"), SIZES)
def test_sequential_shift_and_adjacency(n: int, b: int, t: int, seed: int) -> None:
    batches = check_sequential(n, b, t, np.random.default_rng(seed))
    assert len(batches) >= 1
    # every input position is used at most once
    xs = np.concatenate([batch.x.ravel() for batch in batches])
    assert len(np.unique(xs)) == len(xs)


def test_sequential_covers_nearly_all_text() -> None:
    n, b, t = 1000, 4, 16
    for offset in range(t):
        batches = check_sequential(n, b, t, FixedOffset(offset))
        xs = np.concatenate([batch.x.ravel() for batch in batches])
        assert xs.min() == offset
        # uncovered: the offset, plus less than one step per stream at the end of each stream
        assert n - len(xs) <= offset + b * t


def check_random(n: int, b: int, t: int, k: int, rng) -> list:
    ids = positions(n)
    batches = list(random_batches(ids, b, t, rng, k))
    starts = []
    for batch in batches:
        assert batch.x.shape == (b, k + t) and batch.y.shape == (b, t)
        assert batch.warmup == k and batch.carry_state is False
        s = batch.x[:, k]  # the first position of each subsequence
        starts.extend(s.tolist())
        # x[:, :K] are the K characters before the subsequence; x is contiguous over K + T
        assert np.array_equal(batch.x, s[:, None] + np.arange(-k, t)[None, :])
        assert np.array_equal(batch.y, batch.x[:, k:] + 1)  # shift by one
        assert batch.x.min() >= 0 and batch.y.max() < n
    starts = np.sort(np.array(starts, dtype=np.int64))
    if len(starts):
        assert np.all(np.diff(starts) >= t)  # subsequences do not overlap
        covered = len(starts) * t
        assert n - covered < b * t + t + k + t
    return batches


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("warmup", [0, 1, 3])
@pytest.mark.parametrize(("n", "b", "t"), SIZES)
def test_random_partition_properties(n: int, b: int, t: int, warmup: int, seed: int) -> None:
    batches = check_random(n, b, t, warmup, np.random.default_rng(seed))
    assert len(batches) >= 1


def test_random_coverage_at_every_offset() -> None:
    n, b, t, k = 1000, 4, 16, 5
    for offset in range(t):
        batches = check_random(n, b, t, k, FixedOffset(offset, seed=offset))
        assert min(batch.x[:, k].min() for batch in batches) >= k + offset


@pytest.mark.parametrize("name", ["sequential", "random"])
def test_same_seed_same_batches_other_seed_other_batches(name: str) -> None:
    ids = positions(2000)
    strategy = partition(name)

    def epoch(seed: int) -> list[np.ndarray]:
        return [batch.x for batch in strategy(ids, 4, 10, np.random.default_rng(seed), 0)]

    a, a2, c = epoch(3), epoch(3), epoch(4)
    assert len(a) == len(a2) and all(np.array_equal(x, y) for x, y in zip(a, a2, strict=True))
    differs = len(a) != len(c) or any(not np.array_equal(x, y) for x, y in zip(a, c, strict=False))
    assert differs


def test_random_order_is_shuffled() -> None:
    ids = positions(5000)
    firsts = [batch.x[0, 0] for batch in random_batches(ids, 2, 10, np.random.default_rng(0))]
    assert firsts != sorted(firsts)


def test_generators_slice_memmap(tmp_path) -> None:
    path = tmp_path / "ids.bin"
    positions(300).astype(np.uint16).tofile(path)
    ids = np.memmap(path, dtype=np.uint16, mode="r")
    batch = next(sequential_batches(ids, 2, 5, FixedOffset(0)))
    assert batch.x.tolist() == [[0, 1, 2, 3, 4], [149, 150, 151, 152, 153]]
    batch = next(random_batches(ids, 2, 5, np.random.default_rng(0), 2))
    assert np.array_equal(batch.y.astype(np.int64), batch.x[:, 2:].astype(np.int64) + 1)


@given(
    n=st.integers(2, 400),
    b=st.integers(1, 6),
    t=st.integers(1, 12),
    k=st.integers(0, 5),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=150, deadline=None)
def test_partition_invariants_property(n: int, b: int, t: int, k: int, seed: int) -> None:
    rng_seq = np.random.default_rng(seed)
    seq = check_sequential(n, b, t, rng_seq)
    rnd = check_random(n, b, t, k, np.random.default_rng(seed))
    assert len(seq) >= batches_per_epoch("sequential", n, b, t)
    assert len(rnd) >= batches_per_epoch("random", n, b, t, k)
    if n >= min_chars(b, t, k):
        check_fits(n, b, t, k)
        assert len(seq) >= 1 and len(rnd) >= 1
        assert batches_per_epoch("sequential", n, b, t) >= 1
        assert batches_per_epoch("random", n, b, t, k) >= 1
    else:
        with pytest.raises(DataError):
            check_fits(n, b, t, k)


@pytest.mark.parametrize(("n", "b", "t"), SIZES)
@pytest.mark.parametrize("warmup", [0, 2])
def test_batches_per_epoch_never_exceeds_actual(n: int, b: int, t: int, warmup: int) -> None:
    ids = positions(n)
    seq_counts = [len(list(sequential_batches(ids, b, t, FixedOffset(o)))) for o in range(t)]
    rnd_counts = [len(list(random_batches(ids, b, t, FixedOffset(o), warmup))) for o in range(t)]
    assert batches_per_epoch("sequential", n, b, t) == min(seq_counts)
    assert batches_per_epoch("random", n, b, t, warmup) == min(rnd_counts)
    assert max(seq_counts) - min(seq_counts) <= 1
    assert max(rnd_counts) - min(rnd_counts) <= 1


@pytest.mark.parametrize(("b", "t", "k"), [(4, 16, 0), (3, 7, 5), (1, 1, 0), (8, 32, 10)])
def test_min_chars_is_exactly_enough(b: int, t: int, k: int) -> None:
    need = min_chars(b, t, k)
    check_fits(need, b, t, k)
    for o in range(t):  # one full minibatch at every starting offset
        assert len(list(sequential_batches(positions(need), b, t, FixedOffset(o)))) >= 1
        assert len(list(random_batches(positions(need), b, t, FixedOffset(o), k))) >= 1
    with pytest.raises(DataError):
        check_fits(need - 1, b, t, k)


def test_check_fits_message_says_what_fits() -> None:
    with pytest.raises(DataError) as info:
        check_fits(100, 32, 10, 0)
    message = str(info.value)
    assert "100 characters" in message and "--batch-size 32" in message and "--num-steps 10" in message
    assert f"needs at least {min_chars(32, 10)}" in message
    assert "--batch-size 8 fits" in message
    check_fits(100, 8, 10, 0)  # what it suggested does fit
    with pytest.raises(DataError):
        check_fits(100, 9, 10, 0)


def test_check_fits_message_with_warmup_and_nothing_fits() -> None:
    with pytest.raises(DataError) as info:
        check_fits(30, 4, 20, 3)
    message = str(info.value)
    assert "--warmup 3" in message
    assert "smaller --num-steps" in message


@pytest.mark.parametrize(("b", "t", "k"), [(0, 5, 0), (2, 0, 0), (2, 5, -1)])
def test_check_fits_rejects_bad_sizes(b: int, t: int, k: int) -> None:
    with pytest.raises(UsageError):
        check_fits(10_000, b, t, k)


def test_split_train_val_contiguous_tail() -> None:
    ids = positions(1000)
    train, val = split_train_val(ids, 0.1)
    assert len(train) == 900 and len(val) == 100
    assert np.array_equal(train, np.arange(900)) and np.array_equal(val, np.arange(900, 1000))
    assert np.shares_memory(train, ids) and np.shares_memory(val, ids)  # views, not copies
    train, val = split_train_val(ids, 0.0)
    assert len(train) == 1000 and len(val) == 0
    train, val = split_train_val(positions(10), 0.25)
    assert train.tolist() + val.tolist() == list(range(10)) and len(val) == 2


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_split_train_val_bad_fraction(fraction: float) -> None:
    with pytest.raises(UsageError):
        split_train_val(positions(100), fraction)


def test_split_train_val_too_small_validation() -> None:
    with pytest.raises(DataError, match="fewer than 2"):
        split_train_val(positions(10), 0.05)


def test_partition_by_name() -> None:
    assert partition("sequential") is sequential_batches
    assert partition("random") is random_batches
    with pytest.raises(UsageError, match="nope"):
        partition("nope")


# --- records -------------------------------------------------------------------------------------

from charrnn.data.partition import IGNORE, find_delimiters, find_records, split_records_train_val  # noqa: E402


def record_ids(records: list[str], delim: str = "|", trailing: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Ids = code points of the joined text, and the delimiter's ids."""
    text = delim.join(records) + (delim if trailing else "")
    return np.array([ord(c) for c in text], dtype=np.int64), np.array([ord(c) for c in delim], dtype=np.int64)


def test_find_records() -> None:
    ids, d = record_ids(["ab", "", "cde"])
    starts, lengths = find_records(ids, d)
    assert starts.tolist() == [0, 3, 4] and lengths.tolist() == [2, 0, 3]
    ids, d = record_ids(["ab", "c"], trailing=False)
    assert find_records(ids, d)[1].tolist() == [2, 1]
    ids, d = record_ids(["abc"], trailing=False)
    assert find_records(ids, d)[1].tolist() == [3]  # no delimiter: one record
    ids, d = record_ids(["x", "", "y"], delim="||", trailing=False)  # x||||y: found without overlaps
    assert find_delimiters(ids, d).tolist() == [1, 3]
    assert find_records(ids, d)[1].tolist() == [1, 0, 1]


def test_find_delimiters_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    import charrnn.data.partition as data

    monkeypatch.setattr(data, "FIND_CHUNK", 3)
    ids, d = record_ids(["abcd", "e", "fgh"], delim="||")
    assert find_delimiters(ids, d).tolist() == [4, 7, 12]


def rows_of(batches: list) -> list[list[int]]:
    """Reassemble each group's rows: x and y of consecutive batches until the next reset."""
    groups: list[tuple[list, list]] = []
    for b in batches:
        if b.reset:
            groups.append(([list(r) for r in b.x], [list(r) for r in b.y]))
        else:
            for i in range(len(b.x)):
                groups[-1][0][i] += list(b.x[i])
                groups[-1][1][i] += list(b.y[i])
    return [(x, y) for xs, ys in groups for x, y in zip(xs, ys, strict=True)]


@given(st.lists(st.text(alphabet="abc", max_size=12), min_size=1, max_size=20), st.integers(1, 4),
       st.integers(1, 6), st.sampled_from(["|", "||"]), st.integers(0, 3))
@settings(max_examples=60, deadline=None)
def test_records_batches_cover_every_record_once(records: list[str], b: int, t: int, delim: str, seed: int) -> None:
    ids, d = record_ids(records, delim)
    nonempty = sorted(r for r in records if r)
    if not nonempty:
        return
    strategy = partition("records", d)
    batches = list(strategy(ids, b, t, np.random.default_rng(seed)))
    assert len(batches) == strategy.batches_per_epoch(ids, b, t) or seed != 0
    seen = []
    for b_ in batches:
        assert b_.x.shape == b_.y.shape and b_.x.shape[0] <= b and b_.x.shape[1] <= max(t, len(d))
        assert b_.carry_state
        assert b_.targets > 0  # a window never holds padding only
    for x, y in rows_of(batches):
        k = len(d)
        n = sum(v != IGNORE for v in y)
        text = "".join(chr(v) for v in x[k : k + n - k])
        assert x[:k] == list(d)  # every record starts by reading the delimiter from a fresh state
        assert y[: k - 1] == [IGNORE] * (k - 1)
        assert [chr(v) for v in y[k - 1 : k - 1 + n]] == list(text + delim)  # then the record and the end
        assert all(v == IGNORE for v in y[k - 1 + n :])
        seen.append(text)
    assert sorted(seen) == nonempty


def test_records_epochs_are_shuffled_and_deterministic() -> None:
    ids, d = record_ids([f"r{i}" * (1 + i % 5) for i in range(40)])
    strategy = partition("records", d)
    first = [b.x.tolist() for b in strategy(ids, 4, 8, np.random.default_rng([0, 0]))]
    again = [b.x.tolist() for b in strategy(ids, 4, 8, np.random.default_rng([0, 0]))]
    other = [b.x.tolist() for b in strategy(ids, 4, 8, np.random.default_rng([0, 1]))]
    assert first == again and first != other
    assert strategy.batches_per_epoch(ids, 4, 8) >= 10


def test_records_long_record_carries_state() -> None:
    ids, d = record_ids(["a" * 20])
    batches = list(partition("records", d)(ids, 2, 8, np.random.default_rng(0)))
    assert [b.reset for b in batches] == [True, False, False]  # 1 + 20 + 1 - 1 = 21 columns in 3 pieces


def test_split_records_train_val() -> None:
    ids, d = record_ids([f"rec{i}" for i in range(20)])
    train, val = split_records_train_val(ids, d, 0.1)
    assert len(train) + len(val) == len(ids)
    assert train[-1] == d[-1] and chr(val[0]) == "r"  # the cut is at a record start
    assert 0 < len(val) <= len(ids) * 0.1 + 5
    assert len(split_records_train_val(ids, d, 0.0)[1]) == 0
    one, d = record_ids(["a" * 50], trailing=False)
    with pytest.raises(DataError, match="single record"):
        split_records_train_val(one, d, 0.1)


def test_records_without_records() -> None:
    ids, d = record_ids(["", ""])
    with pytest.raises(DataError, match="no non-empty record"):
        list(partition("records", d)(ids, 2, 4, np.random.default_rng(0)))


@given(n=st.integers(60, 600), per=st.integers(1, 4), world=st.integers(1, 4), t=st.integers(1, 9),
       k=st.integers(0, 3), seed=st.integers(0, 3), name=st.sampled_from(["sequential", "random"]))
@settings(max_examples=80, deadline=None)
def test_shards_are_the_rows_of_the_whole_minibatch(n: int, per: int, world: int, t: int, k: int, seed: int,
                                                    name: str) -> None:
    """Process r of N gets rows [r*B/N, (r+1)*B/N) of every minibatch, in the same number of
    minibatches as every other process: stacked in rank order, the shards are the whole batch."""
    b, ids = per * world, np.arange(n, dtype=np.int64)
    k = k if name == "random" else 0
    if n < min_chars(b, t, k):
        return
    whole = list(partition(name)(ids, b, t, np.random.default_rng(seed), k))
    shards = [list(shard(partition(name), r, world)(ids, b, t, np.random.default_rng(seed), k))
              for r in range(world)]
    assert all(len(s) == len(whole) for s in shards)
    for i, batch in enumerate(whole):
        parts = [s[i] for s in shards]
        assert all(p.x.shape == (per, k + t) and p.y.shape == (per, t) for p in parts)
        np.testing.assert_array_equal(np.concatenate([p.x for p in parts]), batch.x)
        np.testing.assert_array_equal(np.concatenate([p.y for p in parts]), batch.y)
        assert all(p.warmup == batch.warmup and p.carry_state == batch.carry_state for p in parts)


def test_sequential_shard_walks_its_own_contiguous_streams() -> None:
    """Each process's rows continue exactly where its previous minibatch ended (state carries)."""
    ids = np.arange(1000, dtype=np.int64)
    batches = list(shard(sequential_batches, 1, 2)(ids, 4, 8, np.random.default_rng(0)))
    for prev, cur in pairwise(batches):
        np.testing.assert_array_equal(cur.x[:, 0], prev.x[:, -1] + 1)
    whole = list(sequential_batches(ids, 4, 8, np.random.default_rng(0)))
    np.testing.assert_array_equal(batches[0].x, whole[0].x[2:])


def test_shard_of_one_process_is_the_strategy_and_bad_ranks_are_refused() -> None:
    assert shard(random_batches, 0, 1) is random_batches
    with pytest.raises(ValueError):
        shard(random_batches, 2, 2)


def test_per_process_needs_a_divisible_batch() -> None:
    assert per_process(32, 4) == 8
    assert per_process(5, 1) == 5
    with pytest.raises(UsageError, match="--batch-size 6 does not divide among 4 processes.*multiple of 4"):
        per_process(6, 4)
    with pytest.raises(UsageError):
        list(shard(sequential_batches, 0, 4)(np.arange(500), 6, 4, np.random.default_rng(0)))
