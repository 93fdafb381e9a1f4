"""Where a training run stands (RunState), and how it maps to and from a checkpoint: what a resumed
run restores, and what a save writes, gathered across processes when there are several."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from charrnn.config import CHARRNN_VERSION, TrainConfig
from charrnn.data.vocab import Vocab
from charrnn.model import checkpoint
from charrnn.model.history import History
from charrnn.model.network import CharRNN, ModelConfig, State
from charrnn.training import distributed as dd
from charrnn.training.averaging import WeightAverage


@dataclass
class RunState:
    """Where a run stands: everything beyond the weights and the optimizer that a resumed run needs."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # minibatches of `epoch` already done
    chars_seen: int = 0
    elapsed_before: float = 0.0  # seconds spent in earlier (resumed) parts of the run
    best_val: float = math.inf
    val_loss: float | None = None
    hidden: State | None = None  # carried state (sequential partitioning), detached
    # The torch RNG (dropout masks) as of the last finished step: an interruption in the middle of
    # a step must not save the draws of that unfinished step.
    rng: dict[str, torch.Tensor] | None = None
    stale: int = 0  # validations since the best one (for --patience)
    # Which weights the checkpoints hold: "raw", or the average's kind when it validated better last time.
    weights_from: str = "raw"
    history: History = field(default_factory=History)


class Run(Protocol):
    """What `restore` and `payload` read and set of a training run (charrnn.training.train.Trainer is one)."""

    model: CharRNN
    model_config: ModelConfig
    optimizer: torch.optim.Optimizer
    config: TrainConfig
    state: RunState
    group: dd.Group
    device: torch.device
    vocab: Vocab
    rows: int  # minibatch rows of this process
    notes: list[str]
    fingerprint: dict[str, Any]
    init_from_path: str | None
    record_hashes: dict[str, Any] | None
    labels: Any  # charrnn.data.labels.RecordLabels of a label-conditioned run, else None
    average: WeightAverage | None

    def elapsed(self) -> float: ...


def restore(self: Run, resume: dict[str, Any]) -> None:
    """Set a new Trainer's model, optimizer and RunState from checkpoint `resume` (validated by
    checkpoint.load and check_resume_fields)."""
    config, st = self.config, self.state
    # The weights that were training: a checkpoint that holds the averaged ones keeps them beside.
    training = resume.get("training_weights")
    self.model.load_state_dict(resume["weights"] if training is None else training)
    saved_average = resume.get("average")
    if self.average is not None and saved_average is not None and saved_average["kind"] == self.average.kind:
        self.average.load(saved_average, self.device)
        st.weights_from = resume.get("weights_from", "raw")
    if resume["train_config"]["optimizer"] == config.optimizer:
        self.optimizer.load_state_dict(resume["optimizer"])
    st.step, st.epoch, st.batch_in_epoch = resume["step"], resume["epoch"], resume["batch_in_epoch"]
    st.chars_seen, st.elapsed_before = resume["chars_seen"], resume["elapsed"]
    st.best_val = resume["best_val_loss"] if resume["best_val_loss"] is not None else math.inf
    st.val_loss = resume["val_loss"]
    # Both validated by checkpoint.load; a checkpoint older than them starts an empty history.
    st.history = History.from_checkpoint(resume.get("history")).until(st.step)
    st.stale = resume.get("stale_validations", 0)
    processes, rngs = checkpoint.saved_processes(resume)
    same_processes = processes == self.group.world_size
    rng = rngs[self.group.rank] if same_processes else rngs[0]
    torch.set_rng_state(rng["torch"])
    if self.device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], self.device)
    if not same_processes and self.group.rank:
        torch.manual_seed(resume["seed"] + 1_000_003 * self.group.rank + st.step)
    saved = resume["train_config"]
    defaults = {"delimiter": TrainConfig.delimiter}  # checkpoints older than an option have its default
    if any(saved.get(k, defaults.get(k)) != getattr(config, k)
           for k in ("partition", "batch_size", "num_steps", "warmup", "delimiter")):
        # Another minibatch shape: the saved position and carried state mean nothing under it,
        # so go on from the start of the next epoch with a fresh state.
        st.epoch, st.batch_in_epoch = st.epoch + 1, 0
    elif not same_processes:
        # The data order is the same, but each process's dropout generator is not: as for a
        # change of minibatch shape, continue at the next epoch with a fresh state.
        st.epoch, st.batch_in_epoch = st.epoch + 1, 0
        self.notes.append(f"the checkpoint was written by {processes} process(es) and this run has "
                          f"{self.group.world_size}: continuing at the start of epoch {st.epoch} with a "
                          "fresh state (resume with the same number of processes to continue exactly)")
    elif resume["hidden"] is not None:
        # The checkpoint holds the whole minibatch's state, (layers, B, H); this process carries
        # its rows.
        rows = slice(self.group.rank * self.rows, (self.group.rank + 1) * self.rows)
        h = resume["hidden"]
        st.hidden = (tuple(t[:, rows].to(self.device) for t in h) if isinstance(h, (list, tuple))
                     else h[:, rows].to(self.device))


def payload(self: Run) -> dict[str, Any] | None:
    """The checkpoint's content on rank 0 (None on the others). With several processes, every
    process must call it: the carried states and dropout generators are gathered."""
    st, hidden = self.state, self.state.hidden
    if hidden is not None:
        hidden = tuple(t.cpu() for t in hidden) if isinstance(hidden, tuple) else hidden.cpu()
    extra: dict[str, Any] = {"processes": self.group.world_size}
    if self.group.active:
        parts = dd.gather_to_main(self.group, (hidden, st.rng and {k: v.cpu() for k, v in st.rng.items()}))
        if parts is None:
            return None
        hiddens, extra["rng_ranks"] = [p[0] for p in parts], [p[1] for p in parts]
        if hidden is not None:  # rows of every process, in rank order: the state of the whole minibatch
            hidden = (tuple(torch.cat([h[j] for h in hiddens], dim=1) for j in range(len(hidden)))
                      if isinstance(hidden, tuple) else torch.cat(hiddens, dim=1))
    weights = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
    average = self.average
    averaged: dict[str, Any] = {"weights_from": "raw", "average": None if average is None else average.state()}
    if average is not None and average.ready and st.weights_from != "raw":
        # The averaged weights validated better last time: they are the model; the raw ones go on training.
        averaged.update(weights_from=st.weights_from, training_weights=weights)
        weights = average.weights_for(weights)
    return {
        "format": checkpoint.FORMAT, "version": checkpoint.VERSION, "charrnn_version": CHARRNN_VERSION,
        "model_config": self.model_config.to_dict(), "train_config": self.config.to_dict(),
        "vocab": self.vocab.to_dict(), "weights": weights,
        "optimizer": self.optimizer.state_dict(), "step": st.step, "epoch": st.epoch,
        "batch_in_epoch": st.batch_in_epoch, "best_val_loss": None if math.isinf(st.best_val) else st.best_val,
        "val_loss": st.val_loss, "seed": self.config.seed, "elapsed": self.elapsed(),
        "chars_seen": st.chars_seen, "rng": st.rng, "hidden": hidden, "data": self.fingerprint,
        "history": st.history.to_checkpoint(), "stale_validations": st.stale, "init_from": self.init_from_path,
        **(self.record_hashes or {}),
        **({"labels": self.labels.names.to_dict()} if self.labels is not None else {}),
        **averaged,
        **extra,
    }


def rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    """The generators that dropout draws from: torch's CPU one, and the GPU's when training there."""
    states = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states
