"""How a training run validates: the held-out text scored with the raw weights and, with --average, with the
averaged ones; the better is what the checkpoints hold from then on and what counts for the best
(charrnn.training.averaging).

When (`due`): at every --val-every-th step, and (unless --val-every is given) at each tenth of the run too,
so that even a short run draws a curve; but never sooner after the last validation than `gap` steps, which
keep validation under --val-share of the run. The schedule is decided from sizes and step counts, never
from the clock: which steps validate decides what --patience stops on and what the best checkpoint holds,
so a clock there would make the same command with the same seed give another model. Validation costs a
pass over the held-out text, two with an average; its cost in training steps is estimated from the
characters scored against the characters a step trains on (VAL_CHAR_COST).
"""

from __future__ import annotations

import math
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

# Scoring one held-out character costs this many times training on one character (forward, backward and
# the optimizer step). Validation runs the forward pass alone, in float32 whatever the training precision:
# about a third of a float32 step's arithmetic, and measured at 0.25-0.33 (1x384 LSTM, tinyshakespeare;
# AMD EPYC and Xeon, 2 cores); a bf16 step runs about 1.7x faster, and scoring PTB-char's 393,042 held-out
# characters took as long as 100 bf16 steps of 2,048 characters (0.52, docs/train.md). Estimates on the high
# side: validation then stays under its share.
VAL_CHAR_COST = {"fp32": 1 / 3, "bf16": 0.55}
VAL_POINTS = 10  # without --val-every, a run validates at each tenth of it too (a curve, even for a short run)


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
    val_seconds: float  # how long the last validation took (for the time budget only)
    last_val_step: int | None  # the step of the last validation (None before any)
    val_gap: int  # gap(run), computed once

    def clock(self) -> float: ...

    def score_held_out(self) -> EvalResult: ...
    def elapsed(self) -> float: ...
    def record(self, kind: str, **values: float) -> None: ...
    def save(self, path: Any, reason: str) -> None: ...
    def non_finite(self, step: int, value: float) -> None: ...


def cost_in_steps(run: Validating) -> float:
    """What one validation costs, in training steps of this run: estimated from sizes (the characters scored
    against those a step trains on, VAL_CHAR_COST), the same in every process and every time."""
    config, group = run.config, run.group
    passes = 2 if run.average is not None else 1  # the raw weights, and the average
    # Each process scores its share of the streams, but whole records are scored by every process.
    scored = len(run.val_ids) / (1 if run.val_records is not None else group.world_size)
    trained = config.batch_size * config.num_steps / group.world_size  # this process's rows of a step
    return passes * scored * VAL_CHAR_COST[config.precision] / trained


def gap(run: Validating) -> int:
    """Steps that must pass between two validations for them to take at most --val-share of the run (0 with
    a share of 1: every validation that is due runs)."""
    share = run.config.val_share
    return 0 if share >= 1.0 else math.ceil(cost_in_steps(run) * (1 - share) / share)


def due(run: Validating, before: float, after: float) -> bool:
    """Whether to validate after the step just done, which took the run's fraction done from `before` to
    `after` (rank 0's, the same in every process): at every --val-every-th step, and where --val-every is not
    given at each tenth of the run, unless the last validation was fewer than `gap` steps ago (the first one
    waits for nothing)."""
    config, step = run.config, run.state.step
    if not run.can_validate or run.last_val_step is not None and step - run.last_val_step < run.val_gap:
        return False  # the first validation has nothing to wait for
    tenth = config.val_every is None and math.floor(after * VAL_POINTS) > math.floor(before * VAL_POINTS)
    return step % config.validate_every == 0 or tenth


def validate(run: Validating) -> None:
    """Score the held-out text with the raw weights, and with the average when there is one; the better
    is what the checkpoints hold from now on (RunState.weights_from) and what counts for the best.
    How long it took (`val_seconds`) is kept only to end a time budget in time (charrnn.train)."""
    started = run.clock()
    try:
        _validate(run)
    finally:
        run.val_seconds, run.last_val_step = run.clock() - started, run.state.step


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
