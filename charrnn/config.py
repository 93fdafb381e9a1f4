"""Every setting's choices, defaults and limits, written once: what the library uses and what the
command line offers (charrnn.cli imports this module; it imports neither torch nor numpy, so that
`charrnn --help` stays instant).

TrainConfig: what a training run is asked to do, checked on construction, and the presets it starts from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from charrnn.errors import UsageError

CHARRNN_VERSION = "0.1.0"  # charrnn.__version__, written into checkpoints and exported files
CELLS = ("rnn", "gru", "lstm", "scratch-rnn", "scratch-gru", "scratch-lstm")
INPUTS = ("onehot", "embedding")
PARTITIONS = ("sequential", "random", "records")
# Bounds on a model's shape: far past any useful char model, and they keep a lying checkpoint or a
# mistyped option from asking for terabytes. MAX_VOCAB: every Unicode code point, plus <unk>.
MAX_LAYERS = 64
MAX_WIDTH = 65536
MAX_VOCAB = 0x110000 + 1
MAX_THREADS = 1024  # --threads above this is a mistake, not a machine
# One-hot inputs past this many characters are slow (the inputs are (batch, time, vocabulary)): said.
ONEHOT_WARN_VOCAB = 1024
DEFAULT_TIME_BUDGET = 300.0  # seconds a run trains when it is given no stopping rule
DEFAULT_VAL_MAX_CHARS = 250_000  # at most this many characters held out for validation

AVERAGES = ("none", "ema", "tail")
DEFAULT_EMA_DECAY = 0.998
DEFAULT_TAIL = 0.25


def check_settings(kind: str, decay: float, tail: float) -> None:
    """UsageError unless `kind` is one of AVERAGES, 0 < decay < 1 and 0 < tail <= 1."""
    check_choice("weight average", kind, AVERAGES)
    if not _number(decay) or not 0.0 < decay < 1.0:
        raise UsageError(f"--ema-decay must be between 0 and 1 (exclusive), got {decay}")
    if not _number(tail) or not 0.0 < tail <= 1.0:
        raise UsageError(f"--average-tail must be in (0, 1], got {tail}")


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_choice(what: str, value: Any, choices: Sequence[str]) -> None:
    """UsageError unless `value` is one of `choices`."""
    if value not in choices:
        raise UsageError(f"unknown {what} {value!r}: choose one of {', '.join(choices)}")


OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant")
# Why a run ended: its time budget, --max-steps, --epochs, --patience, or a signal.
STOP_REASONS = ("budget", "steps", "epochs", "patience", "interrupted")
PRECISIONS = ("fp32", "bf16")
DEFAULT_VAL_EVERY = 200  # steps between validations, unless --val-every says otherwise

# Named starting points: model (ModelConfig fields) and minibatch/learning-rate (TrainConfig fields)
# settings that go together. Explicit options override them. "small" is the default: on a CPU, one
# wide layer learns more per second than two narrow ones (the README's sweep: 1x384 at lr 5e-3 reached
# 1.47 nats/char on tinyshakespeare in 150 s where 2x256 at 3e-3 reached 1.53).
# The output layers of --softmax (charrnn.model.heads builds them): "auto" takes the adaptive softmax from
# ADAPTIVE_FROM vocabulary entries on (measured: docs/models.md, "The output layer").
SOFTMAXES = ("auto", "full", "adaptive")
ADAPTIVE_FROM = 2000

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

# The default model where the vocabulary takes the adaptive softmax (--softmax auto or adaptive: thousands of
# characters, as Chinese has): the sweep on tangshi.txt by steps (docs/benchmarks.md, 2026-12-06) found that
# the learning rate and embedding width tuned on a 65-character alphabet are too low and too narrow for
# thousands of characters whose rows each train rarely. Options given (and --preset other than small) win.
LARGE_VOCAB: dict[str, Any] = {"embed_dim": 128, "lr": 1e-2}


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
    # Validate every this many steps; None: every DEFAULT_VAL_EVERY and at each tenth of the run too
    # (charrnn.training.validation.due).
    val_every: int | None = None
    # At most this share of the run goes to validation, by an estimate from sizes (charrnn.training.validation.gap):
    # a validation that is due waits while the last was too few steps ago (1: every one that is due).
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
    average: str = "none"  # weights averaged during training (charrnn.training.averaging): none, ema or tail
    ema_decay: float = DEFAULT_EMA_DECAY
    average_tail: float = DEFAULT_TAIL

    def __post_init__(self) -> None:
        check_choice("partition", self.partition, PARTITIONS)
        check_settings(self.average, self.ema_decay, self.average_tail)
        if isinstance(self.val_share, bool) or not isinstance(self.val_share, (int, float)) \
                or not 0.0 < self.val_share <= 1.0:
            raise UsageError(f"--val-share must be in (0, 1], got {self.val_share}")
        if not self.delimiter:
            raise UsageError("--delimiter must not be empty")
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        if self.warmup and self.partition != "random":
            raise UsageError("--warmup only applies to --partition random (sequential carries the state)")
        for name in ("batch_size", "num_steps", "val_every", "log_every", "eval_streams"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
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

    @property
    def validate_every(self) -> int:
        """The steps between two validations due by count (val_every, or its default)."""
        return self.val_every if self.val_every is not None else DEFAULT_VAL_EVERY

    def to_dict(self) -> dict:
        return asdict(self)
