"""charrnn.train: `charrnn train` as a function. The run is prepared by charrnn.training.prepare, as the
command's is, so the same options and seed write a checkpoint with the same weights; what the
command prints goes to the callback instead, and nothing is printed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from charrnn.errors import UsageError
from charrnn.training.callbacks import Callbacks, Progress
from charrnn.training.runconfig import TrainResult


@dataclass(frozen=True)
class CallbackEvent:
    """One thing a run reports, for a callback function given to charrnn.train:

    - "message": `text` (what the command says on stderr before training; `notice` when it changes what
      the run means, such as a stopping rule chosen for you);
    - "start": `info` (parameters, device, precision, vocabulary size, characters, minibatches per epoch);
    - "step": `progress` (a charrnn.Progress: step, epoch, train_loss, lr, elapsed, chars_per_second, fraction);
    - "validate": `step`, `result` (a charrnn.EvalResult) and `improved` (a new best);
    - "average": `step`, `result` (the averaged weights'), `raw` (the raw weights'), `kept` (the average won);
    - "save": `path` and `reason`.
    """

    kind: str
    step: int | None = None
    text: str | None = None
    notice: bool = False
    info: dict | None = None
    progress: Progress | None = None
    result: Any = None  # an EvalResult
    raw: Any = None  # an EvalResult
    improved: bool = False
    kept: bool = False
    path: str | None = None
    reason: str | None = None


class _FunctionCallbacks(Callbacks):
    """Callbacks that hand every event to one function."""

    def __init__(self, fn: Callable[[CallbackEvent], Any]) -> None:
        self.fn = fn

    def on_message(self, message: str, notice: bool) -> None:
        self.fn(CallbackEvent("message", text=message, notice=notice))

    def on_start(self, info: dict[str, Any]) -> None:
        self.fn(CallbackEvent("start", info=dict(info)))

    def on_step(self, progress: Progress) -> None:
        self.fn(CallbackEvent("step", step=progress.step, progress=progress))

    def on_validate(self, step: int, result: Any, improved: bool) -> None:
        self.fn(CallbackEvent("validate", step=step, result=result, improved=improved))

    def on_average(self, step: int, raw: Any, average: Any, kind: str, kept: bool) -> None:
        self.fn(CallbackEvent("average", step=step, result=average, raw=raw, text=kind, kept=kept))

    def on_save(self, path: str, reason: str) -> None:
        self.fn(CallbackEvent("save", path=path, reason=reason))


def train(corpus: str | os.PathLike | Sequence[str | os.PathLike], output: str | os.PathLike, *,
          callback: Callbacks | Callable[[CallbackEvent], Any] | None = None, **options: Any) -> TrainResult:
    """Train a model on `corpus` (a file, a folder, a catalog corpus name, "pydoc", or a list of them) and
    write it to `output`, as `charrnn train CORPUS -o OUTPUT` does: the options are the command's, named
    with underscores (time_budget=60, hidden=512, precision="fp32", threads=1, resume="run.pt", ...), with
    the same defaults, presets and rules; the delimiter is given as the string itself (no backslash escapes).
    Returns the result `train --json` prints (to_dict() gives that object). `callback` is a
    charrnn.Callbacks, or a function called with each CallbackEvent.
    """
    from charrnn.training.prepare import prepare

    if "corpus" in options or "output" in options:
        raise UsageError("give the corpus and the output as the first two arguments")
    sources = [os.fspath(corpus)] if isinstance(corpus, (str, os.PathLike)) else [os.fspath(c) for c in corpus]
    if "-" in sources:
        raise UsageError("charrnn.train reads files and corpus names, not standard input ('-')")
    report = callback if isinstance(callback, Callbacks) else \
        _FunctionCallbacks(callback) if callback is not None else Callbacks()
    job = prepare(sources, os.fspath(output), options, set(options), report=report)
    assert job is not None
    return job.run(report)
