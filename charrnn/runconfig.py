"""What a training run is asked to do and what it reports: settings (TrainConfig) and the presets
they start from, the learning-rate schedule and optimizer they name, and the result record (the
progress record and the callbacks are in charrnn.callbacks)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from charrnn.averaging import DEFAULT_EMA_DECAY, DEFAULT_TAIL, check_settings
from charrnn.cache import ids_digest
from charrnn.data import partition
from charrnn.errors import UsageError
from charrnn.evaluate import perplexity_of

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant")
# Why a run ended: its time budget, --max-steps, --epochs, --patience, or a signal.
STOP_REASONS = ("budget", "steps", "epochs", "patience", "interrupted")
PRECISIONS = ("fp32", "bf16")

# Named starting points: model (ModelConfig fields) and minibatch/learning-rate (TrainConfig fields)
# settings that go together. Explicit options override them. "small" is the default: on a CPU, one
# wide layer learns more per second than two narrow ones (the README's sweep: 1x384 at lr 5e-3 reached
# 1.47 nats/char on tinyshakespeare in 150 s where 2x256 at 3e-3 reached 1.53).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"cell": "lstm", "layers": 1, "hidden": 128, "embed_dim": 32, "dropout": 0.0,
             "batch_size": 32, "num_steps": 64, "lr": 4e-3},
    "small": {"cell": "lstm", "layers": 1, "hidden": 384, "embed_dim": 64, "dropout": 0.0,
              "batch_size": 32, "num_steps": 64, "lr": 5e-3},
    "medium": {"cell": "lstm", "layers": 2, "hidden": 512, "embed_dim": 64, "dropout": 0.1,
               "batch_size": 64, "num_steps": 128, "lr": 2e-3},
    "large": {"cell": "lstm", "layers": 3, "hidden": 1024, "embed_dim": 128, "dropout": 0.2,
              "batch_size": 128, "num_steps": 128, "lr": 1.5e-3},
}

# The small model (the default) where --precision resolves to bf16 (a CPU with native bfloat16, or a GPU):
# native bf16 trains about 1.7x faster, and the sweep on such a CPU (docs/benchmarks.md, 2026-12-01) put
# the extra arithmetic into a wider layer held back from overfitting: 1x512 with AdamW's weight decay,
# dropout before the head, and the EMA of the weights. Options given on the command line win.
SMALL_BF16: dict[str, Any] = {"hidden": 512, "dropout": 0.1, "optimizer": "adamw", "weight_decay": 0.1,
                              "average": "ema"}


@dataclass(frozen=True)
class TrainConfig:
    partition: str = "sequential"
    batch_size: int = 32
    num_steps: int = 64
    warmup: int = 0
    optimizer: str = "adam"
    lr: float = 3e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"
    clip: float = 1.0
    epochs: int | None = None
    max_steps: int | None = None
    time_budget: float | None = None
    val_every: int = 200
    # At most this share of the time goes to validation: a validation due by val_every waits for the next
    # multiple once the last one took more than val_share of the time since (1: every val_every steps).
    val_share: float = 1.0
    save_every: int | None = None  # None: save the last checkpoint at every validation
    patience: int | None = None  # stop after this many validations without a new best
    val_fraction: float = 0.1  # recorded; the split itself is made by the caller
    val_max_chars: int | None = None  # recorded likewise
    eval_streams: int = 64
    seed: int = 0
    log_every: int = 10
    precision: str = "fp32"  # bf16: autocast the forward pass to bfloat16 (weights stay fp32); the CLI resolves auto
    delimiter: str = "\n"  # what ends a record (used by --partition records)
    average: str = "none"  # weights averaged during training (charrnn.averaging): none, ema or tail
    ema_decay: float = DEFAULT_EMA_DECAY
    average_tail: float = DEFAULT_TAIL

    def __post_init__(self) -> None:
        partition(self.partition)
        check_settings(self.average, self.ema_decay, self.average_tail)
        if isinstance(self.val_share, bool) or not isinstance(self.val_share, (int, float)) \
                or not 0.0 < self.val_share <= 1.0:
            raise UsageError(f"--val-share must be in (0, 1], got {self.val_share}")
        if not self.delimiter:
            raise UsageError("--delimiter must not be empty")
        if self.precision not in PRECISIONS:
            raise UsageError(f"unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"unknown optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"unknown schedule {self.schedule!r}: choose one of {', '.join(SCHEDULES)}")
        if self.warmup and self.partition != "random":
            raise UsageError("--warmup only applies to --partition random (sequential carries the state)")
        for name in ("batch_size", "num_steps", "val_every", "log_every", "eval_streams"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("epochs", "max_steps", "time_budget", "save_every"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise UsageError(f"--{name.replace('_', '-')} must be > 0, got {value}")
        if self.patience is not None and self.patience < 1:
            raise UsageError(f"--patience must be >= 1 (validations without improvement), got {self.patience}")
        if self.warmup < 0:
            raise UsageError(f"--warmup must be >= 0, got {self.warmup}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise UsageError(f"--lr must be > 0, got {self.lr}")
        if self.clip < 0 or self.weight_decay < 0:
            raise UsageError("--clip and --weight-decay must be >= 0")
        if self.epochs is None and self.max_steps is None and self.time_budget is None:
            raise UsageError("give a stopping rule: --epochs, --max-steps or --time-budget")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TrainResult:
    steps: int
    epochs: float
    seconds: float
    chars_per_second: float | None  # None when this run made no step
    train_loss: float | None
    val_loss: float | None
    checkpoint: str | None  # None when this run saved nothing (its stopping rule was already reached)
    best_checkpoint: str | None  # only when this run saved a new best
    steps_this_run: int = 0
    precision: str = "fp32"  # of the forward pass: fp32 or bf16 (what --precision auto chose)
    stop_reason: str = "steps"  # STOP_REASONS
    threads: int | None = None  # CPU threads in use at the end (charrnn.threads)
    # Which weights the checkpoints hold (the better at the last validation): "raw", or the average's
    # kind; and the two validation losses behind that choice (None without averaging).
    weights_from: str = "raw"
    raw_val_loss: float | None = None
    average_val_loss: float | None = None

    @property
    def val_perplexity(self) -> float | None:
        return None if self.val_loss is None else perplexity_of(self.val_loss)

    @property
    def val_bits_per_char(self) -> float | None:
        return None if self.val_loss is None else self.val_loss / math.log(2)

    def to_dict(self) -> dict:
        return {**asdict(self), "val_perplexity": self.val_perplexity, "val_bits_per_char": self.val_bits_per_char}


def lr_factor(schedule: str, fraction: float) -> float:
    """Multiplier of the base learning rate after `fraction` (0..1) of the run."""
    if schedule == "cosine":  # from 1 down to 0.1
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(max(fraction, 0.0), 1.0)))
    return 1.0


def make_optimizer(name: str, params: Any, lr: float, weight_decay: float,
                   device: torch.device | None = None) -> torch.optim.Optimizer:
    """The optimizer `name`; Adam and AdamW use torch's fused kernel where it exists (CPU since torch
    2.4, CUDA): one pass over all parameters instead of a loop of small ops, 6x faster than the
    default on CPU (1.5 ms -> 0.3 ms per step for the 2x256 LSTM, 7 -> 1 ms for 2x512)."""
    params = list(params)
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        if device is not None and device.type in ("cpu", "cuda"):
            try:
                return cls(params, lr=lr, weight_decay=weight_decay, fused=True)
            except (RuntimeError, TypeError, ValueError):  # an older torch without the fused kernel here
                pass
        return cls(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)


def data_fingerprint(ids: np.ndarray, chunk: int = 1 << 24) -> dict[str, Any]:
    """Length and SHA-256 of the training ids (what a resume checks the text against)."""
    return {"chars": int(len(ids)), "sha256": ids_digest(ids, chunk)}


# A loss past this many nats per character is divergence, treated like a non-finite one: a model that
# predicts uniformly over all of Unicode scores ln(1.1M) = 14, and exp() of the loss overflows at 709.
DIVERGED_NATS = 1000.0


def finite_loss(value: float) -> bool:
    """Whether a training loss is usable: finite and not diverged (see DIVERGED_NATS)."""
    return math.isfinite(value) and value < DIVERGED_NATS
