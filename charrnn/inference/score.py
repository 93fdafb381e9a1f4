"""Per-record scoring: the core of `charrnn eval score` and of validation under `--partition records`.

Each record is scored from the state a record boundary leaves: starting from the zero state the
model reads the boundary string (the delimiter; for a model trained with `--partition records`,
the delimiter it was trained with, whose reading is its learned record-start state), then the
record. Every character of the record is a target, the first one predicted right after the
boundary, and so is the boundary after the record unless `end=False` ("abc" and "abcdef" then
differ: after "abc" the model must also predict the end). Targets that are <unk> are fed but not
scored, only counted.

Speed: records are sorted by length and scored as batches of rows of similar length, padded
with an ignored target; a batch's logits are computed a window of `num_steps` columns at a time,
carrying the state, so memory is O(rows * num_steps * vocab) whatever the record lengths, plus
the records' ids in the vocabulary's dtype (1 to 4 bytes per character: inputs and targets are
cut a window at a time). The state after reading the boundary (all but its last character) is
computed once and shared.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from charrnn.data.partition import IGNORE
from charrnn.data.vocab import Vocab
from charrnn.errors import DataError
from charrnn.inference.evaluate import EvalResult
from charrnn.inference.exactsum import ExactSum
from charrnn.model.network import CharRNN, State, repeat_stream
from charrnn.threads import ThreadChooser, fixed

# What a character a model cannot read costs when several models are compared (see RecordScore.cost):
# a uniform guess among all Unicode code points, ln(0x110000) = 13.92 nats (20.09 bits). That is
# more than any model trained on text pays for a character it knows, and the same for every model.
UNKNOWN_NATS = math.log(0x110000)
MAX_ROWS = 512  # records per batch
MAX_BATCH_LOGITS = 1 << 24  # rows x window x vocab floats in one forward call (64 MB of float32)


@dataclass(frozen=True)
class RecordScore:
    nats: float  # total over the scored characters
    chars: int  # characters scored (the record's, plus the boundary after it unless end=False)
    unknown: int  # <unk> targets skipped

    @property
    def nats_per_char(self) -> float | None:
        return self.nats / self.chars if self.chars else None

    @property
    def bits_per_char(self) -> float | None:
        n = self.nats_per_char
        return None if n is None else n / math.log(2)

    @property
    def unknown_share(self) -> float:
        """Share of the record's targets that the model cannot read."""
        return self.unknown / max(1, self.chars + self.unknown)

    @property
    def cost(self) -> float | None:
        """Nats per character over every target of the record, a character the model cannot read
        charged UNKNOWN_NATS: the same characters for every model, so models compare on it (None
        when the record has no target at all)."""
        n = self.chars + self.unknown
        return (self.nats + self.unknown * UNKNOWN_NATS) / n if n else None

    def to_dict(self) -> dict:
        return {"chars": self.chars, "unknown": self.unknown, "nats": self.nats if self.chars else 0.0,
                "nats_per_char": self.nats_per_char, "bits_per_char": self.bits_per_char}


def compare(scores: list[RecordScore]) -> tuple[list[float | None], int | None]:
    """Several models' scores of one record -> (each model's cost, the index of the lowest cost, or
    None when the record has no target). Costs are over the same characters for every model (see
    RecordScore.cost): raw nats per scored character would let the model that reads least win."""
    costs = [s.cost for s in scores]
    ranked = [(c, i) for i, c in enumerate(costs) if c is not None]
    return costs, (min(ranked)[1] if ranked else None)


@dataclass(frozen=True)
class Scorer:
    """A model with its vocabulary and the boundary string it reads before every record."""

    model: CharRNN
    vocab: Vocab
    boundary: str

    def boundary_ids(self) -> np.ndarray:
        return self.vocab.encode(self.boundary, unk="map").astype(np.int64)


@torch.inference_mode()
def start_state(model: CharRNN, boundary_ids: np.ndarray) -> State:
    """State (for one stream) after reading all but the last boundary character from zero."""
    device = next(model.parameters()).device
    state = model.begin_state(1, device)
    if len(boundary_ids) > 1:
        x = torch.as_tensor(boundary_ids[None, :-1], dtype=torch.int64, device=device)
        _, state = model.features(x, state)
    return state


def _span(parts: tuple[np.ndarray, ...], lo: int, hi: int) -> np.ndarray:
    """Elements lo..hi-1 of the concatenation of `parts`, as int64, without building the whole."""
    out, offset = [], 0
    for p in parts:
        a, b = max(lo - offset, 0), min(hi - offset, len(p))
        if a < b:
            out.append(p[a:b])
        offset += len(p)
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, dtype=np.int64)


@torch.inference_mode()
def score_rows(model: CharRNN, rows: list[np.ndarray], boundary_ids: np.ndarray, *, end: bool = True,
               unk_id: int | None = None, num_steps: int = 256, state0: State | None = None,
               threads: ThreadChooser | None = None) -> list[RecordScore]:
    """Scores of the id arrays `rows` (one record each), scored side by side as one padded batch.

    Row r reads full_r = boundary[-1] + record (+ boundary): inputs full_r[:-1], targets full_r[1:].
    The (B, w) inputs and targets of a window are cut from the rows when the window comes, so
    memory is the rows in their own dtype plus one window, however long a record is. `threads` times
    each window to choose the CPU threads (charrnn.threads).
    """
    if not rows:
        return []
    threads = threads if threads is not None else fixed()  # times nothing it acts on
    device = next(model.parameters()).device
    if state0 is None:
        state0 = start_state(model, boundary_ids)
    last, tail = boundary_ids[-1:], boundary_ids if end else boundary_ids[:0]
    targets = [len(r) + len(tail) for r in rows]  # per row
    width = max(targets)
    b = len(rows)
    if width == 0:
        return [RecordScore(0.0, 0, 0) for _ in rows]
    state = repeat_stream(state0, b)
    step = max(1, min(num_steps, MAX_BATCH_LOGITS // (b * model.config.vocab_size)))
    nats = ExactSum(b, device)  # each row's losses, summed exactly: the same whatever the windows and threads
    row_of = torch.arange(b, device=device)[:, None]  # (B, 1): the group of each row's losses
    chars = np.zeros(b, dtype=np.int64)
    unknown = np.zeros(b, dtype=np.int64)
    start = 0
    while start < width:
        # Shorter windows while the threads are tried (the state is carried: the same scores).
        w = min(threads.unit_size(step), width - start)
        x = np.full((b, w), int(last[0]), dtype=np.int64)  # (B, w); padding reads the boundary, ignored
        y = np.full((b, w), IGNORE, dtype=np.int64)
        for i, r in enumerate(rows):
            if targets[i] > start:
                piece = _span((last, r, tail), start, min(start + w, targets[i]) + 1)
                x[i, : len(piece) - 1], y[i, : len(piece) - 1] = piece[:-1], piece[1:]
        if unk_id is not None:
            is_unk = y == unk_id
            unknown += is_unk.sum(axis=1)
            y[is_unk] = IGNORE
        chars += (y != IGNORE).sum(axis=1)
        threads.before()
        loss, state = model.nll(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device), state,
                                ignore_index=IGNORE)  # (B, w), 0 where ignored
        nats.add(loss.reshape(-1), row_of.expand(b, w))
        threads.after(b * w)  # the work is the padded window, scored or not
        start += w
    totals = nats.totals()
    return [RecordScore(totals[i], int(chars[i]), int(unknown[i])) for i in range(b)]


def _batches(lengths: np.ndarray, max_rows: int, max_chars: int) -> Iterator[np.ndarray]:
    """Indices of records grouped by similar length: sorted, then cut into groups of at most
    `max_rows` rows whose padded size (rows x longest) stays under `max_chars`."""
    order = np.argsort(lengths, kind="stable")
    i = 0
    while i < len(order):
        j = i + 1
        while j < len(order) and j - i < max_rows and (j - i + 1) * (lengths[order[j]] + 1) <= max_chars:
            j += 1
        yield order[i:j]
        i = j


def score_texts(scorer: Scorer, texts: list[str], *, end: bool = True, num_steps: int = 256,
                max_rows: int = MAX_ROWS, threads: ThreadChooser | None = None) -> list[RecordScore]:
    """Scores of `texts` (records), in the order given, computed in length-bucketed batches."""
    if not texts:
        return []
    vocab = scorer.vocab
    boundary = scorer.boundary_ids()
    # One encoding pass over all the records, then a split (encoding builds a lookup table per call);
    # the ids keep the vocabulary's dtype (1 to 4 bytes per character): a record may be megabytes.
    ids = vocab.encode("".join(texts), unk="map")
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    rows = np.split(ids, np.cumsum(lengths)[:-1])
    state0 = start_state(scorer.model, boundary)
    out: list[RecordScore | None] = [None] * len(texts)
    for group in _batches(lengths, max_rows, max_rows * 256):
        scores = score_rows(scorer.model, [rows[i] for i in group], boundary, end=end, unk_id=vocab.unk_id,
                            num_steps=num_steps, state0=state0, threads=threads)
        for i, s in zip(group.tolist(), scores, strict=True):
            out[i] = s
    return out  # type: ignore[return-value]


def score_stream(scorers: list[Scorer], record_lists: Iterable[list[str]], *, end: bool = True,
                 window: int = 4096, num_steps: int = 256,
                 threads: ThreadChooser | None = None) -> Iterator[list[tuple[str, list[RecordScore]]]]:
    """Lists of (record, one score per scorer) for every record of the stream, in input order, a
    list per window (a point to flush the output).

    `record_lists` is what `records.split_records` yields: each list is scored as soon as it
    arrives (at most `window` records at a time), so a slow stream gets answers line by line and
    memory stays bounded by the window and the longest record.
    """
    for records in record_lists:
        for i in range(0, len(records), window):
            part = records[i : i + window]
            per_model = [score_texts(s, part, end=end, num_steps=num_steps, threads=threads) for s in scorers]
            yield list(zip(part, map(list, zip(*per_model, strict=True)), strict=True))


@torch.inference_mode()
def evaluate_records(model: CharRNN, ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                     boundary_ids: np.ndarray, *, unk_id: int | None = None, max_rows: int = MAX_ROWS) -> EvalResult:
    """Token-weighted mean cross-entropy over whole records of `ids` (record k is
    ids[starts[k] : starts[k] + lengths[k]]), each scored with its end boundary: the validation
    loss of `--partition records`."""
    was_training = model.training
    model.eval()
    try:
        state0 = start_state(model, boundary_ids)
        total, scored, unknown = 0.0, 0, 0
        for group in _batches(lengths, max_rows, max_rows * 256):
            rows = [np.asarray(ids[starts[i] : starts[i] + lengths[i]], dtype=np.int64) for i in group.tolist()]
            for s in score_rows(model, rows, boundary_ids, unk_id=unk_id, state0=state0):
                total, scored, unknown = total + s.nats, scored + s.chars, unknown + s.unknown
    finally:
        model.train(was_training)
    if scored == 0:
        raise DataError("no character of the validation records could be scored")
    return EvalResult(nats_per_char=total / scored, chars=scored, unknown=unknown)
