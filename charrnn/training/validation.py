"""How a training run validates: the held-out text scored with the raw weights and, with --average, with the
averaged ones; the better is what the checkpoints hold from then on and what counts for the best
(charrnn.training.averaging). Validation costs a pass over the held-out text, two with an average: `due` keeps it
under --val-share of the time, postponing a validation due by --val-every while the last one took longer.
"""

from __future__ import annotations

import math
import time
from typing import Any, Protocol

import numpy as np
import torch

from charrnn.config import TrainConfig
from charrnn.data.labels import RecordLabels
from charrnn.data.vocab import Vocab
from charrnn.inference.evaluate import EvalResult, evaluate, evaluate_sums
from charrnn.model.history import History
from charrnn.model.network import CharRNN
from charrnn.training import distributed as dd
from charrnn.training.averaging import WeightAverage
from charrnn.training.callbacks import Callbacks
from charrnn.training.runconfig import finite_loss
from charrnn.training.runstate import RunState


class Validating(Protocol):
    """What validation reads and sets of a training run (charrnn.training.train.Trainer is one)."""

    model: CharRNN
    config: TrainConfig
    state: RunState
    group: dd.Group
    device: torch.device
    vocab: Vocab
    cb: Callbacks
    average: WeightAverage | None
    val_ids: np.ndarray
    val_records: tuple[np.ndarray, np.ndarray] | None
    labels: RecordLabels | None  # a label-conditioned model's records' labels
    delimiter_ids: Any
    can_validate: bool
    best_out: Any
    val_seconds: float  # how long the last validation took
    train_since_val: float  # seconds of training steps since

    def score_held_out(self) -> EvalResult: ...
    def elapsed(self) -> float: ...
    def record(self, kind: str, **values: float) -> None: ...
    def save(self, path: Any, reason: str) -> None: ...
    def non_finite(self, step: int, value: float) -> None: ...


def due(run: Validating) -> bool:
    """At every val_every-th step, unless the last validation took more than val_share of the time
    since: then at a later multiple (a big held-out text must not eat a short run's budget)."""
    config = run.config
    if not run.can_validate or run.state.step % config.val_every:
        return False
    if config.val_share >= 1.0:
        return True
    # Rank 0's clock decides for every process (a collective: all must validate together).
    val_seconds, train_since = dd.agree(run.group, None, (run.val_seconds, run.train_since_val), run.device)[1]
    return val_seconds * (1 - config.val_share) <= config.val_share * train_since


def validate(run: Validating) -> None:
    """Score the held-out text with the raw weights, and with the average when there is one; the better
    is what the checkpoints hold from now on (RunState.weights_from) and what counts for the best."""
    started = time.perf_counter()
    try:
        _validate(run)
    finally:
        run.val_seconds, run.train_since_val = time.perf_counter() - started, 0.0


def _validate(run: Validating) -> None:
    st, average_of = run.state, run.average
    raw = run.score_held_out()
    average = None
    if average_of is not None and average_of.ready:
        with average_of.applied(run.model):
            average = run.score_held_out()
    use_average = average is not None and average.nats_per_char < raw.nats_per_char
    result = average if use_average and average is not None else raw
    st.weights_from = average_of.kind if use_average and average_of is not None else "raw"
    st.val_loss = result.nats_per_char
    if math.isfinite(st.val_loss) and not finite_loss(st.val_loss):  # diverged, as a training loss would
        run.non_finite(st.step, st.val_loss)
    improved = st.val_loss < st.best_val
    st.stale = 0 if improved else st.stale + 1
    run.record("val", step=st.step, loss=st.val_loss, elapsed=run.elapsed(), chars=st.chars_seen,
               raw_loss=raw.nats_per_char if average_of is not None else math.nan,
               average_loss=average.nats_per_char if average is not None else math.nan)
    if average is not None and average_of is not None:
        run.cb.on_average(st.step, raw, average, average_of.kind, use_average)
    run.cb.on_validate(st.step, result, improved)
    if improved:
        st.best_val = st.val_loss
        run.save(run.best_out, "best")


def score(run: Validating) -> EvalResult:
    """The model as it stands on the held-out text (the same result in every process)."""
    group, config = run.group, run.config
    if run.val_records is not None and run.delimiter_ids is not None:
        # Whole held-out records, scored in full by every process (the same result everywhere).
        from charrnn.inference.score import evaluate_records

        starts, lengths = run.val_records
        if run.labels is None:
            return evaluate_records(run.model, run.val_ids, starts[lengths > 0], lengths[lengths > 0],
                                    run.delimiter_ids, unk_id=run.vocab.unk_id)
        # A label-conditioned model: the records of each label, read by the model fixed to it.
        total, scored, unknown = 0.0, 0, 0
        for label in np.unique(run.labels.val[lengths > 0]).tolist():
            keep = (lengths > 0) & (run.labels.val == label)
            part = evaluate_records(run.model.for_label(label), run.val_ids, starts[keep], lengths[keep],
                                    run.delimiter_ids, unk_id=run.vocab.unk_id)
            total, scored, unknown = total + part.nats_per_char * part.chars, scored + part.chars, \
                unknown + part.unknown
        return EvalResult.from_sums(total, scored, unknown)
    if group.active:  # each process scores its block of the streams; the sums make one result
        sums = evaluate_sums(run.model, run.val_ids, unk_id=run.vocab.unk_id, streams=config.eval_streams,
                             shard=(group.rank, group.world_size))
        total, scored, unknown = dd.all_sum(group, sums, run.device)
        return EvalResult.from_sums(total, int(scored), int(unknown))
    return evaluate(run.model, run.val_ids, unk_id=run.vocab.unk_id, streams=config.eval_streams)


def last_pair(history: History) -> dict[str, float | None]:
    """The last validation's raw and averaged losses (None without averaging, or before the average starts)."""
    last = history.val[-1] if history.val else {}
    pair = {"raw_val_loss": last.get("raw_loss", math.nan), "average_val_loss": last.get("average_loss", math.nan)}
    return {k: v if v is not None and math.isfinite(v) else None for k, v in pair.items()}
