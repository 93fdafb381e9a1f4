"""Domain exceptions. The CLI turns each into one line on stderr and its exit code."""

from __future__ import annotations


class CharrnnError(Exception):
    """Base class: something went wrong at run time (exit code 1)."""

    exit_code = 1


class UsageError(CharrnnError):
    """The user asked for something that cannot be done as asked (exit code 2)."""

    exit_code = 2


class DataError(CharrnnError):
    """Input text that cannot be used: unreadable, not text, empty, too small."""


class UnknownCharacterError(DataError):
    """Text contains characters the vocabulary does not know, under `--unk error`."""

    def __init__(self, chars: list[str], where: str, can_map: bool = True) -> None:
        shown = ", ".join(repr(c) for c in chars[:10])
        more = f" and {len(chars) - 10} more" if len(chars) > 10 else ""
        # --unk map helps only a vocabulary that has <unk> to map them to.
        hint = "use --unk map to map them to <unk>" if can_map else "the model has no <unk> to read them as"
        super().__init__(
            f"{where} contains {len(chars)} character(s) not in the model's vocabulary: {shown}{more} ({hint})"
        )
        self.chars = chars


class CheckpointError(CharrnnError):
    """A file that is not a usable charrnn checkpoint, or one that cannot be written."""


class TrainingError(CharrnnError):
    """Training cannot go on (for example a non-finite loss)."""


class Interrupted(CharrnnError):
    """Training stopped by a signal after saving a resumable checkpoint."""

    def __init__(self, message: str, exit_code: int = 130, result: object = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.result = result  # the run's TrainResult as of the stop, for the summary


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised by the CLI's signal handler so that training saves and stops like on Ctrl-C."""


class MissingDependency(CharrnnError):
    """An optional library that this command needs is not installed (the message says which extra)."""


class PeerLost(TrainingError):
    """Another process of a distributed run stopped (it died, or its connection broke)."""


class RequestError(CharrnnError):
    """A request to a served model (`charrnn serve`) that cannot be answered as asked. `status` is the
    HTTP status that says why: 400 malformed (not JSON, not an object, no op), 404 an unknown model,
    413 too large (the body, the prefix, the records), 422 a field of the wrong type or value. `param`
    names the field at fault where one is (OpenAI's error shape carries it)."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(" ".join(message.split()))  # one line, whatever the message quotes
        self.status = status
        self.param = param
