"""Training history: the loss curve of a run, kept in its checkpoint and in a live log beside it.

Two kinds of record, each a flat dict of numbers:

    train  step, epoch, loss (mean training loss since the last report, nats/char), lr,
           chars_per_second, elapsed (seconds of the whole run), chars (characters trained on),
           grad_norm, grad_norm_max, clipped (see gradstats), threads (CPU threads in use, charrnn.threads)
    val    step, loss (validation nats/char of the weights the checkpoints hold), elapsed, chars, raw_loss
           and average_loss (of the raw and the averaged weights, with --average: charrnn.training.averaging)

In the checkpoint the history is stored by columns, one float64 tensor per field
(`{"train": {"step": tensor, ...}, "val": {...}}`): compact, and safe under weights_only loading.
The live log (model.pt -> model.pt.log.jsonl, see outputs.log_path) holds the same records, one
JSON object a line with a "kind" key, so that `tail -f` and `jq` work on it while the run goes on.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from charrnn.errors import CheckpointError, DataError
from charrnn.outputs import write_atomic

FIELDS: dict[str, tuple[str, ...]] = {
    "train": ("step", "epoch", "loss", "lr", "chars_per_second", "elapsed", "chars", "grad_norm", "grad_norm_max",
              "clipped", "threads"),
    "val": ("step", "loss", "elapsed", "chars", "raw_loss", "average_loss"),
}
INTEGER_FIELDS = frozenset({"step", "epoch", "chars", "threads"})
# Fields that runs before them did not record: an older checkpoint or log reads them as NaN.
LATER_FIELDS = frozenset({"grad_norm", "grad_norm_max", "clipped", "threads", "raw_loss", "average_loss"})
# Fields that may be NaN (null in the log): a diverged loss, a gradient norm that overflowed,
# or one that was not recorded.
NULLABLE = frozenset({"loss"}) | LATER_FIELDS
# A log or a checkpoint's history is untrusted input (hand-edited, damaged): every value must be a
# number a run can record. Counts and times stay below 2**53 (exact in float64); a loss below
# MAX_LOSS (training stops long before that); the share of steps clipped within 0 and 1; the
# learning rate, speed and gradient norms any finite number >= 0.
MAX_VALUE = 2.0**53
MAX_LOSS = 1e6
LIMITS = {"step": MAX_VALUE, "epoch": MAX_VALUE, "chars": MAX_VALUE, "elapsed": MAX_VALUE, "loss": MAX_LOSS,
          "raw_loss": MAX_LOSS, "average_loss": MAX_LOSS, "clipped": 1.0}


def _number(name: str, value: Any) -> int | float:
    """`value` as field `name` holds it; a ValueError says why it cannot be (a bool, text, inf, 1e999,
    a negative count, a fractional step)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} is not a number")
    x = float(value) if not isinstance(value, int) or abs(value) <= MAX_VALUE else math.inf
    if math.isnan(x) and name in NULLABLE:
        # Always the one NaN object: records then compare equal field by field (lists compare by
        # identity before ==), whether they came from a run, a log or a checkpoint.
        return math.nan
    limit = LIMITS.get(name, sys.float_info.max)
    if not 0 <= x <= limit:  # NaN and infinity fail too
        raise ValueError(f"{name} {value!r} is out of range (0 to {limit:g})")
    if name in INTEGER_FIELDS:
        if x != int(x):
            raise ValueError(f"{name} {value!r} is not a whole number")
        return int(x)
    return x


@dataclass
class History:
    """The records of one run, oldest first."""

    train: list[dict[str, int | float]] = field(default_factory=list)
    val: list[dict[str, int | float]] = field(default_factory=list)

    def add(self, kind: str, **values: float) -> dict[str, Any]:
        """Append one record of `kind` ("train" or "val") with exactly its FIELDS; returns it."""
        names = FIELDS[kind]
        values = {**{n: math.nan for n in LATER_FIELDS if n in names}, **values}
        if set(values) != set(names):
            raise ValueError(f"a {kind} record has the fields {', '.join(names)}, got {', '.join(sorted(values))}")
        record = {name: _number(name, values[name]) for name in names}
        getattr(self, kind).append(record)
        return record

    def __bool__(self) -> bool:
        return bool(self.train or self.val)

    def until(self, step: int) -> History:
        """The records up to and including `step` (a resumed run drops what came after its checkpoint)."""
        return History([r for r in self.train if r["step"] <= step], [r for r in self.val if r["step"] <= step])

    def to_checkpoint(self) -> dict[str, dict[str, torch.Tensor]]:
        """Columns of float64 tensors (exact for integers below 2**53)."""
        return {kind: {name: torch.tensor([r[name] for r in getattr(self, kind)], dtype=torch.float64)
                       for name in names} for kind, names in FIELDS.items()}

    @classmethod
    def from_checkpoint(cls, data: Any, where: str = "checkpoint") -> History:
        """Read and validate the checkpoint's columns; anything malformed is a CheckpointError."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise CheckpointError(f"{where} is damaged: its history is not a table")
        history = cls()
        for kind, names in FIELDS.items():
            columns = data.get(kind)
            if isinstance(columns, dict):  # a checkpoint older than a field: a column of NaN
                sizes = {c.numel() for c in columns.values() if isinstance(c, torch.Tensor)}
                size = sizes.pop() if len(sizes) == 1 else 0
                columns = {**{n: torch.full((size,), math.nan, dtype=torch.float64)
                              for n in LATER_FIELDS if n in names}, **columns}
            if not isinstance(columns, dict) or set(columns) != set(names):
                raise CheckpointError(f"{where} is damaged: its {kind} history lacks or has extra columns")
            lengths = set()
            for name in names:
                col = columns[name]
                if not isinstance(col, torch.Tensor) or col.dim() != 1 or col.dtype != torch.float64:
                    raise CheckpointError(f"{where} is damaged: history column {kind}.{name} is not a float64 vector")
                if name not in NULLABLE and not bool(torch.isfinite(col).all()):
                    raise CheckpointError(f"{where} is damaged: history column {kind}.{name} is not finite")
                lengths.add(col.numel())
            if len(lengths) > 1:
                raise CheckpointError(f"{where} is damaged: the {kind} history columns differ in length")
            rows = zip(*(columns[name].tolist() for name in names), strict=True)
            try:
                getattr(history, kind).extend({n: _number(n, v) for n, v in zip(names, row, strict=True)}
                                              for row in rows)
            except ValueError as e:
                raise CheckpointError(f"{where} is damaged: its {kind} history has {e}") from None
        return history

    def summary(self) -> dict[str, Any]:
        """Best and last validation, steps and time, for `charrnn info`."""
        last_train = self.train[-1] if self.train else None
        finite_val = [r for r in self.val if math.isfinite(r["loss"])]
        best = min(finite_val, key=lambda r: r["loss"]) if finite_val else None
        last_val = self.val[-1] if self.val else None
        ends = [r for r in (last_train, last_val) if r is not None]
        return {
            "train_records": len(self.train), "val_records": len(self.val),
            "steps": max((r["step"] for r in ends), default=0),
            "seconds": max((r["elapsed"] for r in ends), default=0.0),
            "chars": max((r["chars"] for r in ends), default=0),
            "last_train_loss": last_train["loss"] if last_train else None,
            "best_val_loss": best["loss"] if best else None, "best_val_step": best["step"] if best else None,
            "last_val_loss": last_val["loss"] if last_val else None,
            "last_val_step": last_val["step"] if last_val else None,
            **self._clipping(),
        }

    def _clipping(self) -> dict[str, float | None]:
        """The gradient norm before clipping at the last report, its largest of the run, and the share
        of steps clipped (each report weighted by the steps it covers); None where never recorded."""
        known = [r for r in self.train if not math.isnan(r["clipped"])]
        steps = [r["step"] - (self.train[i - 1]["step"] if i else 0) for i, r in enumerate(self.train)]
        covered = [n for n, r in zip(steps, self.train, strict=True) if not math.isnan(r["clipped"])]
        peaks = [r["grad_norm_max"] for r in self.train if math.isfinite(r["grad_norm_max"])]
        last = self.train[-1]["grad_norm"] if self.train else math.nan
        return {
            "last_grad_norm": last if math.isfinite(last) else None,
            "max_grad_norm": max(peaks) if peaks else None,
            "clipped": sum(n * r["clipped"] for n, r in zip(covered, known, strict=True)) / sum(covered)
            if known and sum(covered) > 0 else None,
        }


def _line(kind: str, record: dict[str, Any]) -> str:
    # Non-finite losses (a diverging run) are written as null: JSON has no NaN.
    clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in record.items()}
    return json.dumps({"kind": kind, **clean}, allow_nan=False) + "\n"


class LiveLog:
    """Appends records to the live log (NAME.log.jsonl) as they happen, one line each, flushed at once.

    The first record rewrites the file with the history the run starts from (empty for a new run,
    the checkpoint's for a resumed one), so that the log always agrees with the checkpoint, even
    after a crash that wrote lines the checkpoint never saw; a run that records nothing (its
    stopping rule already reached) leaves the file as it was.
    """

    def __init__(self, path: str | os.PathLike, history: History) -> None:
        self.path = Path(path)
        self.start = [(kind, dict(record)) for kind, record in _ordered(history)]  # before this run adds any
        self.file: TextIO | None = None

    def open(self) -> None:
        """Rewrite the file with the history the run started from, and keep it open to append."""
        write_atomic(self.path, "".join(_line(kind, record) for kind, record in self.start).encode("utf-8"),
                     what="the training log ")
        try:
            self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())
        except OSError as e:
            raise CheckpointError(f"cannot write the training log {str(self.path)!r}: {e.strerror or e}") from None

    def write(self, kind: str, record: dict[str, Any]) -> None:
        """Append one record (the history the run started from is written first, once)."""
        if self.file is None:
            self.open()
        assert self.file is not None
        try:
            self.file.write(_line(kind, record))
            self.file.flush()
        except OSError as e:
            raise CheckpointError(f"cannot write the training log {str(self.path)!r}: {e.strerror or e}") from None

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def _ordered(history: History) -> list[tuple[str, dict[str, Any]]]:
    """Records of both kinds in the order they were made: by step, a report before its validation."""
    merged = [("train", r) for r in history.train] + [("val", r) for r in history.val]
    return sorted(merged, key=lambda kr: (kr[1]["step"], kr[0] == "val"))


def read_log(path: str | os.PathLike) -> History:
    """A History from a `.log.jsonl` file; lines of other kinds are skipped. The log is untrusted input:
    a malformed line or a value no run can record (see _number) is a DataError naming the line."""
    p = Path(path)
    history = History()
    try:
        with open(p, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                problem = _read_record(history, line)
                if problem is None:
                    continue
                if number > 1 and not line.endswith("\n"):
                    break  # the last line of a log still being written
                if number == 1 and problem == NOT_A_RECORD:
                    raise DataError(f"{str(p)!r} is neither a charrnn checkpoint nor a training log "
                                    "(NAME.log.jsonl)")
                raise DataError(f"{str(p)!r} line {number}: {problem}")
    except OSError as e:
        raise DataError(f"cannot read {str(p)!r}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise DataError(f"{str(p)!r} is not a training log (not UTF-8 text)") from None
    return history


NOT_A_RECORD = "not a training-log record"


def _read_record(history: History, line: str) -> str | None:
    """Add the record on `line` to `history` (other kinds are skipped); what is wrong with it, or None."""
    try:
        obj = json.loads(line)
    except ValueError:
        return NOT_A_RECORD
    if not isinstance(obj, dict):
        return NOT_A_RECORD
    kind = obj.get("kind")
    if kind not in FIELDS:
        return None if isinstance(kind, str) else NOT_A_RECORD
    missing = [n for n in FIELDS[kind] if n not in obj and n not in LATER_FIELDS]
    if missing:
        return f"a {kind} record without {', '.join(missing)}"
    try:
        history.add(kind, **{n: math.nan if n in NULLABLE and obj.get(n) is None else obj[n] for n in FIELDS[kind]})
    except ValueError as e:
        return f"a {kind} record whose {e}"
    return None
