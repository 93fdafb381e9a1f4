"""The training loop.

Loss is the mean cross-entropy over batch and time (so the gradient of a minibatch is the mean of
its per-sample gradients). Sequential partitioning carries the hidden state from one minibatch
to the next, detached (truncated BPTT); random partitioning starts every minibatch from a zero
state, after optional warm-up characters that only build it; records partitioning starts every
record from a fresh state, carries it across the pieces of a long record, ignores padding in
the loss and validates on whole held-out records (charrnn.inference.score.evaluate_records).
Gradients are clipped by their global L2 norm. The learning rate follows a schedule over the fraction
of the run done, measured by whichever stopping rule (steps, epochs, seconds) is closest to firing.

Everything a resumed run needs is in the checkpoint: weights, optimizer, step, epoch and batch
within the epoch (each epoch's order comes from a generator seeded with (seed, epoch), so the
position is enough to rebuild it), the torch RNG (dropout) and the carried hidden state.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from charrnn.config import TrainConfig
from charrnn.data.cache import data_fingerprint
from charrnn.data.labels import RecordLabels
from charrnn.data.partition import (
    IGNORE,
    Batch,
    RecordBatches,
    batches_per_epoch,
    check_fits,
    find_delimiters,
    find_records,
    partition,
    per_process,
    shard,
)
from charrnn.data.records import delimiter_ids, training_record_hashes
from charrnn.data.vocab import Vocab
from charrnn.errors import DataError, Interrupted, Terminated, TrainingError, UsageError
from charrnn.inference.evaluate import EvalResult
from charrnn.model import checkpoint
from charrnn.model.history import LiveLog
from charrnn.model.network import CharRNN, ModelConfig, State, detach_state
from charrnn.outputs import best_path, check_output, log_path, run_lock
from charrnn.threads import ThreadChooser, fixed
from charrnn.training import distributed as dd
from charrnn.training import validation
from charrnn.training.averaging import WeightAverage
from charrnn.training.callbacks import Callbacks, Progress
from charrnn.training.finetune import start_model
from charrnn.training.gradstats import GradStats, total_norm
from charrnn.training.runconfig import (
    TrainResult,
    finite_loss,
    lr_factor,
    make_optimizer,
)
from charrnn.training.runstate import RunState, restore, rng_states
from charrnn.training.runstate import payload as runstate_payload


def batch_loss(model: CharRNN | DistributedDataParallel, batch: Batch, state: State | None, device: torch.device,
               precision: str = "fp32") -> tuple[torch.Tensor, State]:
    """Mean cross-entropy of one minibatch and the state after it.

    x: (B, K + T) ids, the first K (warm-up) only build state under no_grad; y: (B, T).
    `model` may be wrapped in DistributedDataParallel (the gradient then comes out averaged
    over the processes during backward).
    With precision "bf16" the forward pass runs under bfloat16 autocast; the loss is computed in
    float32 and the returned state is float32, so that it can be saved and carried either way.
    """
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss, state = _batch_loss(model, batch, state, device)
    if precision == "bf16":
        state = tuple(s.float() for s in state) if isinstance(state, tuple) else state.float()
    return loss, state


def _batch_loss(model: CharRNN | DistributedDataParallel, batch: Batch, state: State | None,
                device: torch.device) -> tuple[torch.Tensor, State]:
    core = model.module if isinstance(model, DistributedDataParallel) else model
    x = torch.from_numpy(np.asarray(batch.x, dtype=np.int64)).to(device)
    y = torch.from_numpy(np.asarray(batch.y, dtype=np.int64)).to(device)
    # A label-conditioned model's rows' labels (B,): its initial state or an input of every step.
    labels = None if batch.labels is None else torch.from_numpy(np.asarray(batch.labels, dtype=np.int64)).to(device)
    if state is None:
        state = core.begin_state(x.shape[0], device, labels)
    if batch.warmup:
        with torch.no_grad():  # no gradient: the unwrapped model, no DDP bookkeeping
            _, state = core.features(x[:, : batch.warmup], state, labels)
        x = x[:, batch.warmup :]
    nats, state = model(x, state, labels, y)  # (B, T), 0 at padding (IGNORE)
    return nats.sum() / (y != IGNORE).sum().clamp(min=1), state


def train(
    train_ids: np.ndarray,
    val_ids: np.ndarray,
    vocab: Vocab,
    model_config: ModelConfig,
    config: TrainConfig,
    out: str | Path,
    *,
    device: torch.device | str = "cpu",
    callbacks: Callbacks | None = None,
    resume: dict[str, Any] | None = None,
    init_from: dict[str, Any] | None = None,
    init_from_path: str | None = None,
    group: dd.Group = dd.SINGLE,
    threads: ThreadChooser | None = None,
    labels: RecordLabels | None = None,
) -> TrainResult:
    """Train a model on `train_ids`, validating on `val_ids`, writing checkpoints to `out`.

    `resume` is a loaded checkpoint to continue from; its architecture is used and `config`
    may change anything else (learning rate, stopping rules...). `init_from` is a loaded
    checkpoint to fine-tune: its architecture and weights (grown to `vocab`), everything else new.
    With a `group` of several processes (torchrun), call this in every process, inside
    `distributed.session`: each trains on its share of every minibatch and only rank 0 writes the
    checkpoints and the log. `threads` chooses the CPU threads by timing the steps (charrnn.threads);
    without it the count is left as it is. `labels`: the records' labels of a label-conditioned model
    (--labels), whose model_config has as many labels as `labels.names`.
    """
    return Trainer(train_ids, val_ids, vocab, model_config, config, out, device=device, callbacks=callbacks,
                   resume=resume, init_from=init_from, init_from_path=init_from_path, group=group,
                   threads=threads, labels=labels).run()


class Trainer:
    """One training run: the model, its optimizer and the RunState, with the steps of the loop."""

    clock = staticmethod(time.perf_counter)  # seconds, for the time budget and the speed (a test may fake it)

    def __init__(self, train_ids: np.ndarray, val_ids: np.ndarray, vocab: Vocab, model_config: ModelConfig,
                 config: TrainConfig, out: str | Path, *, device: torch.device | str = "cpu",
                 callbacks: Callbacks | None = None, resume: dict[str, Any] | None = None,
                 init_from: dict[str, Any] | None = None, init_from_path: str | None = None,
                 group: dd.Group = dd.SINGLE, threads: ThreadChooser | None = None,
                 labels: RecordLabels | None = None) -> None:
        if resume is not None and init_from is not None:
            raise UsageError("--resume continues a run and --init-from starts a new one from a model: give one")
        self.cb = callbacks or Callbacks()
        self.threads = threads if threads is not None else fixed()
        self.device = torch.device(device)
        self.group = group
        # Links are followed: the files these resolve to are what the run replaces (charrnn.outputs).
        self.out = check_output(out)
        self.best_out = check_output(best_path(out), what="best checkpoint")
        self.log_out = check_output(log_path(out), what="training log")
        self.saved: dict[str, Path] = {}  # reason -> path, of the saves this run has made
        self.records = config.partition == "records"
        if not self.records:
            check_fits(len(train_ids), config.batch_size, config.num_steps, config.warmup)
        self.rows = per_process(config.batch_size, group.world_size)  # B / N rows of each minibatch
        self.notes: list[str] = []  # said on stderr at the start (how a resume continues)
        self.train_ids, self.val_ids, self.vocab = train_ids, val_ids, vocab
        self.delimiter_ids = delimiter_ids(vocab, config.delimiter) if self.records else None
        self.strategy = partition(config.partition, self.delimiter_ids)
        self.labels = labels
        if labels is not None:
            if not self.records:
                raise UsageError("--labels needs --partition records")
            self.strategy = RecordBatches(self.delimiter_ids, labels.train)
        if self.delimiter_ids is not None and not len(find_delimiters(train_ids, self.delimiter_ids)):
            raise DataError(f"the delimiter {config.delimiter!r} never occurs in the training text: it would be "
                            "one single record (choose another --delimiter)")
        self.val_records = find_records(val_ids, self.delimiter_ids) if self.records else None
        self.fingerprint = data_fingerprint(train_ids)
        # Something to score: two characters, and a target that is not <unk> (a high --min-freq can
        # leave a held-out text of unknown characters only).
        self.can_validate = len(val_ids) >= 2 and (vocab.unk_id is None or bool(
            (np.asarray(val_ids[1:]) != vocab.unk_id).any()))
        self.resumed = resume is not None
        if resume is not None:
            if resume.get("data") != self.fingerprint:
                raise DataError("the training text differs from the one this checkpoint was trained on; "
                                "resume needs the same text (and the same --val-fraction)")
            model_config = ModelConfig.from_dict(resume["model_config"])
            config = replace(config, seed=resume["seed"])  # the data order belongs to the original run
        else:
            torch.manual_seed(config.seed)
        # Where the weights first came from (a fine-tuned run, and its resumed parts, keep saying so).
        self.init_from_path = init_from_path if init_from is not None else (resume or {}).get("init_from")
        if init_from is not None:
            model = start_model(init_from, vocab).to(self.device)
            model_config = model.config
        else:
            model = CharRNN(model_config).to(self.device)
        self.model_config, self.config, self.model = model_config, config, model
        self.optimizer = make_optimizer(config.optimizer, self.model.parameters(), config.lr, config.weight_decay,
                                        self.device)
        self.state = RunState()
        # The running average of the weights (--average), validated beside them.
        self.average = WeightAverage(config.average, config.ema_decay, config.average_tail) \
            if config.average != "none" else None
        if group.active and resume is None:
            # Same initial weights everywhere (seeded above), but each process its own dropout masks.
            torch.manual_seed(config.seed + 1_000_003 * group.rank)
        if resume is not None:
            restore(self, resume)
        self.model.train()
        self.net: CharRNN | DistributedDataParallel = self.model
        if group.active:
            with dd.collective(group):  # broadcasts rank 0's weights: a collective
                self.net = DistributedDataParallel(
                    self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.state.rng = rng_states(self.device)
        if isinstance(self.strategy, RecordBatches):
            self.n_batches = max(1, self.strategy.batches_per_epoch(train_ids, config.batch_size, config.num_steps))
            hashes, complete = training_record_hashes(train_ids, vocab, config.delimiter)
            self.record_hashes = {"record_hashes": torch.from_numpy(hashes), "record_hashes_complete": complete}
        else:
            self.n_batches = max(1, batches_per_epoch(config.partition, len(train_ids), config.batch_size,
                                                      config.num_steps, config.warmup))
            self.record_hashes = None
        self.start_time = self.clock()
        self.train_time = 0.0  # seconds inside steps in this process (for chars/s)
        # The validation schedule (charrnn.validation.due): counted in steps from the last validation, which
        # a resumed run reads from its history, so that it validates where the run straight would have.
        self.last_val_step: int | None = int(self.state.history.val[-1]["step"]) if self.state.history.val else None
        self.val_gap = validation.gap(self)
        # Seconds the last validation, save and step took: what the end of a time budget must leave room for.
        self.val_seconds: float | None = None
        self.save_seconds, self.step_seconds = 0.0, 0.0
        self.chars_this_run = 0
        self.log: LiveLog | None = None  # the live log, open while run() runs
        self.grads = GradStats(self.device)  # gradient norms since the last report

    def elapsed(self) -> float:
        return self.state.elapsed_before + self.clock() - self.start_time

    def closing_seconds(self) -> float:
        """What the end of the run will take, so that a time budget covers it: the step about to start, the
        final validation (as long as the last one, or by its estimate in steps before any) and the final save."""
        validating = 0.0
        if self.can_validate:
            validating = self.val_seconds if self.val_seconds is not None else \
                validation.cost_in_steps(self) * self.step_seconds
        return self.step_seconds + validating + self.save_seconds

    def shared_fraction(self) -> float:
        """The fraction of the run done now, rank 0's in every process (under a time budget it reads the clock,
        which differs between processes by a little)."""
        fraction = self.fraction(self.state.epoch, self.state.batch_in_epoch)
        if self.group.active and self.config.time_budget:
            fraction = dd.agree(self.group, None, (fraction,), self.device)[1][0]
        return fraction

    def fraction(self, next_epoch: int, next_batch: int) -> float:
        """Fraction of the run done, by the stopping rule closest to firing."""
        config, parts = self.config, [0.0]
        if config.max_steps:
            parts.append(self.state.step / config.max_steps)
        if config.epochs:
            parts.append((next_epoch + next_batch / self.n_batches) / config.epochs)
        if config.time_budget:
            parts.append(self.elapsed() / config.time_budget)
        return min(1.0, max(parts))

    def save(self, path: Path, reason: str) -> None:
        # Never write non-finite weights: a fused optimizer step that overflows does not raise, and
        # the loss only shows it one step later.
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            self.non_finite(self.state.step, math.nan)
        started = self.clock()
        payload = runstate_payload(self)
        if payload is not None:  # rank 0
            checkpoint.save(payload, path)
            self.cb.on_save(str(path), reason)
        self.saved["best" if path == self.best_out else "last"] = path
        dd.barrier(self.group)
        self.save_seconds = self.clock() - started

    def non_finite(self, step: int, value: float) -> None:
        """Stop on a non-finite loss, gradient or weight, naming only checkpoints this run wrote."""
        kept = ""
        if "best" in self.saved:
            kept = f"; the best checkpoint so far is {str(self.saved['best'])!r}"
        elif "last" in self.saved:
            kept = f"; the last good checkpoint is {str(self.saved['last'])!r}"
        raise TrainingError(f"loss or gradient became non-finite or diverged ({value:.4g}) at step {step}: training "
                            "stopped; "
                            f"try a lower learning rate (--lr {self.config.lr / 10:g}){kept}")

    def validate(self) -> None:
        validation.validate(self)

    def score_held_out(self) -> EvalResult:
        """The model as it stands on the held-out text (the same result in every process)."""
        return validation.score(self)

    def record_train(self, loss: float, lr: float) -> None:
        st = self.state
        self.record("train", step=st.step, epoch=st.epoch, loss=loss, lr=lr, chars_per_second=self.chars_per_second(),
                    elapsed=self.elapsed(), chars=st.chars_seen, threads=self.threads.threads, **self.grads.take())

    def record(self, kind: str, **values: float) -> None:
        """Add a history record and append it to the live log."""
        record = self.state.history.add(kind, **values)
        if self.log is not None:
            self.log.write(kind, record)

    def batches(self) -> Iterator[tuple[int, int, Batch]]:
        """(epoch, index in epoch, minibatch) from the run's position on, forever."""
        config = self.config
        strategy = shard(self.strategy, self.group.rank, self.group.world_size)
        e, skip = self.state.epoch, self.state.batch_in_epoch
        while True:
            rng = np.random.default_rng([config.seed, e])  # each epoch's order depends on (seed, epoch) only
            for i, b in enumerate(strategy(self.train_ids, config.batch_size, config.num_steps, rng, config.warmup)):
                if i >= skip:
                    yield e, i, b
            e, skip = e + 1, 0

    def step(self, e: int, i: int, batch: Batch, lr: float) -> torch.Tensor:
        """One optimizer step on `batch` (epoch e, index i); returns its loss (a 0-d tensor)."""
        st, config, device = self.state, self.config, self.device
        if e != st.epoch:
            st.hidden = None  # a new epoch starts at a new offset: the carried state no longer fits
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        carried = st.hidden if batch.carry_state and not batch.reset else None
        loss, new_state = batch_loss(self.net, batch, carried, device, config.precision)
        self.optimizer.zero_grad(set_to_none=True)
        with dd.collective(self.group):  # DDP all-reduces the gradients here
            loss.backward()
        # The norm before clipping, measured whether or not the run clips (reported as grad_norm).
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.clip) if config.clip > 0 else \
            total_norm(self.model.parameters())
        self.grads.add(norm, config.clip)
        # A host sync per step costs nothing on CPU; on a GPU the loss is checked at each report.
        if device.type == "cpu" and not (finite_loss(loss.item()) and math.isfinite(norm.item())):
            self.non_finite(st.step + 1, loss.item())
        try:
            self.optimizer.step()
        except RuntimeError as err:  # the update itself overflows float32 (an absurd --lr)
            if "overflow" not in str(err):
                raise
            self.non_finite(st.step + 1, math.inf)
        # The step is complete: only now does the run's position move (a checkpoint written
        # after an interruption must describe a finished step).
        st.hidden = detach_state(new_state) if batch.carry_state else None
        st.step, st.epoch, st.batch_in_epoch = st.step + 1, e, i + 1
        if self.average is not None:
            self.average.update(self.model, self.fraction(e, i + 1))
        st.rng = rng_states(device)
        # Characters of the whole minibatch: this process's share times the processes (exact for
        # sequential and random, whose shares are equal; an estimate for records, whose padding varies).
        st.chars_seen += batch.targets * self.group.world_size
        self.chars_this_run += batch.targets * self.group.world_size
        return loss.detach()

    def run(self) -> TrainResult:
        """The whole run, holding a lock on each file it writes (a second run writing any of them is
        refused); with several processes, rank 0 holds them: it alone writes."""
        locked = (self.out, self.best_out, self.log_out)
        with run_lock(*locked) if self.group.is_main else contextlib.nullcontext():
            return self._run()

    def _run(self) -> TrainResult:
        """Train until a stopping rule fires; the history is appended live to the log (outputs.log_path)."""
        st, cb = self.state, self.cb
        cb.on_start({"parameters": self.model.num_parameters(), "device": str(self.device),
                     "precision": self.config.precision,
                     "vocab_size": self.vocab.size, "train_chars": len(self.train_ids),
                     "val_chars": len(self.val_ids), "batches_per_epoch": self.n_batches,
                     "resumed_at": st.step if self.resumed else None, "processes": self.group.world_size,
                     "notes": self.notes})
        self.log = LiveLog(self.log_out, st.history) if self.group.is_main else None  # rank 0 writes
        try:
            return self._loop()
        finally:
            if self.log is not None:
                self.log.close()
            self.log = None

    def _loop(self) -> TrainResult:
        st, config, cb = self.state, self.config, self.cb
        save_every = config.save_every or config.validate_every
        loss_sum = torch.zeros((), device=self.device)
        loss_count, train_loss, reason, lr = 0, math.nan, "steps", config.lr
        first_step = st.step
        try:
            for e, i, batch in self.batches():
                # Every process takes the same decision here (rank 0's clock, anyone's signal). The budget
                # ends early enough for the step, the final validation and the save to end within it.
                spent = bool(config.time_budget and self.elapsed() + self.closing_seconds() >= config.time_budget)
                stop_code, (spent_on_main, fraction) = dd.agree(
                    self.group, cb.stop_requested(), (float(spent), self.fraction(e, i)), self.device)
                if stop_code is not None:
                    raise Terminated() if stop_code == 143 else KeyboardInterrupt()
                reason = self.stop_reason(e, i, budget_spent=spent_on_main >= 1.0)
                if reason is not None:
                    break
                t_step = self.clock()
                self.threads.before()
                lr = config.lr * lr_factor(config.schedule, fraction)
                loss_sum += self.step(e, i, batch, lr)
                loss_count += 1
                report = st.step % config.log_every == 0
                if report:
                    # A host sync: on a GPU this waits for the queued steps, so that train_time counts them.
                    train_loss = self.mean_over_processes(loss_sum.item()) / loss_count
                    if not finite_loss(train_loss):
                        self.non_finite(st.step, train_loss)
                    loss_sum.zero_()
                    loss_count = 0
                self.step_seconds = self.clock() - t_step
                self.train_time += self.step_seconds
                choice = self.threads.after(batch.targets)
                if choice is not None:
                    cb.on_threads(choice)
                if report:
                    self.record_train(train_loss, lr)
                    cb.on_step(Progress(st.step, st.epoch, train_loss, lr, self.elapsed(), self.chars_per_second(),
                                        self.fraction(st.epoch, st.batch_in_epoch)))
                validated = validation.due(self, fraction, self.shared_fraction())
                if validated:
                    self.validate()
                if validated and config.save_every is None or st.step % save_every == 0 or self.out_of_patience():
                    self.save(self.out, "periodic")
                if self.out_of_patience():
                    reason = "patience"
                    break
        except KeyboardInterrupt as e:
            self.save(self.out, "interrupted")
            code, what = (143, "terminated") if isinstance(e, Terminated) else (130, "interrupted")
            if loss_count:
                train_loss = self.mean_over_processes(loss_sum.item()) / loss_count
                self.record_train(train_loss, lr)
            raise Interrupted(f"{what} at step {st.step}; resumable checkpoint saved to {str(self.out)!r} "
                              f"(continue with --resume {str(self.out)!r})", exit_code=code,
                              result=self.result(train_loss, "interrupted", first_step)) from None

        if st.step == first_step:
            # The stopping rule was already reached (a resumed run, or a budget spent before the first
            # step): nothing changed, so nothing is validated or written, and no speed is claimed.
            return TrainResult(steps=st.step, epochs=st.epoch + min(st.batch_in_epoch / self.n_batches, 1.0),
                               seconds=self.elapsed(), chars_per_second=None, train_loss=None, val_loss=st.val_loss,
                               checkpoint=None, best_checkpoint=None, steps_this_run=0, precision=config.precision,
                               stop_reason=reason or "steps")
        if loss_count:  # the steps since the last report get a record of their own
            train_loss = self.mean_over_processes(loss_sum.item()) / loss_count
            self.record_train(train_loss, lr)
        if self.can_validate and self.last_val_step != st.step:
            self.validate()
        self.save(self.out, "final")
        return self.result(train_loss, reason or "steps", first_step)

    def stop_reason(self, e: int, i: int, budget_spent: bool) -> str | None:
        """Which stopping rule ends the run before minibatch i of epoch e, if any. Whether the time
        budget is spent is decided by rank 0's clock (`budget_spent`), for every process alike."""
        config = self.config
        if config.epochs and e >= config.epochs:
            return "epochs"
        if config.max_steps and self.state.step >= config.max_steps:
            return "steps"
        if budget_spent:
            return "budget"
        return None

    def out_of_patience(self) -> bool:
        return self.config.patience is not None and self.state.stale >= self.config.patience

    def result(self, train_loss: float, reason: str, first_step: int) -> TrainResult:
        st = self.state
        return TrainResult(
            # n_batches is the count at the worst offset; an epoch may hold one minibatch more
            steps=st.step, epochs=st.epoch + min(st.batch_in_epoch / self.n_batches, 1.0), seconds=self.elapsed(),
            chars_per_second=self.chars_per_second(), train_loss=train_loss, val_loss=st.val_loss,
            checkpoint=str(self.out), best_checkpoint=str(self.saved["best"]) if "best" in self.saved else None,
            steps_this_run=st.step - first_step, precision=self.config.precision, stop_reason=reason,
            threads=self.threads.threads, weights_from=st.weights_from,
            **validation.last_pair(st.history),
        )

    def mean_over_processes(self, value: float) -> float:
        """The mean of a per-process value (the training loss of each process's rows)."""
        return dd.all_sum(self.group, [value], self.device)[0] / self.group.world_size

    def chars_per_second(self) -> float:
        return self.chars_this_run / max(self.train_time, 1e-9)
