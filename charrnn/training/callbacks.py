"""How a training run reports to the shell while it runs: the progress record and the callbacks.

Kept apart from the training modules so that the console can implement them without importing
the trainer (and its data, cache and distributed machinery) into commands that never train:
`charrnn generate`'s time to first character counts every import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from charrnn.inference.evaluate import EvalResult
    from charrnn.threads import Choice


@dataclass(frozen=True)
class Progress:
    step: int
    epoch: int
    train_loss: float  # mean over the steps since the last report
    lr: float
    elapsed: float  # seconds of the whole run, resumed parts included
    chars_per_second: float
    fraction: float  # of the run done, by the stopping rule closest to firing


class Callbacks:
    """Progress hooks; the defaults do nothing. The CLI's console implements them."""

    def on_message(self, message: str, notice: bool) -> None:
        """Something the preparation of a run says (charrnn.trainprep): routine information, or with
        `notice` what changes what the run means (a stopping rule chosen, unknown characters, a resume)."""

    def on_start(self, info: dict[str, Any]) -> None: ...

    def on_step(self, progress: Progress) -> None: ...

    def on_validate(self, step: int, result: EvalResult, improved: bool) -> None:
        """A validation of the weights the checkpoints hold from now on (with --average, the better of two)."""

    def on_average(self, step: int, raw: EvalResult, average: EvalResult, kind: str, kept: bool) -> None:
        """With --average, just before on_validate: the raw and the averaged (`kind`) weights' results, and
        whether the checkpoints now hold the averaged ones (`kept`)."""

    def on_save(self, path: str, reason: str) -> None: ...

    def on_threads(self, choice: Choice) -> None:
        """The CPU thread count was chosen by timing the steps (charrnn.threads)."""

    def stop_requested(self) -> int | None:
        """Checked before every step: an exit code (130 for SIGINT, 143 for SIGTERM) asks the run to
        save and stop there. Signal handlers set it instead of raising, so that a signal never lands
        in the middle of a step or a save."""
        return None
