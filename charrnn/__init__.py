"""charrnn: character-level language modelling with recurrent networks.

    import charrnn
    model = charrnn.load("model.pt")
    print(model.generate("The ", n=200, seed=1)[0])

Importing the package is cheap on purpose (no torch): `charrnn --help` must answer fast. The public
names are loaded on first use (PEP 562): `charrnn.load` imports torch, `import charrnn` does not.
See docs/python-api.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from charrnn.config import CHARRNN_VERSION as __version__

# Each public name -> the module it lives in (imported when the name is first used).
_HOMES = {
    "load": "charrnn.api", "Model": "charrnn.api", "CellReport": "charrnn.api",
    "train": "charrnn.api_train", "CallbackEvent": "charrnn.api_train", "TrainResult": "charrnn.training.runconfig",
    "Callbacks": "charrnn.training.callbacks", "Progress": "charrnn.training.callbacks",
    "EvalResult": "charrnn.inference.evaluate",
    "CharrnnError": "charrnn.errors", "UsageError": "charrnn.errors", "DataError": "charrnn.errors",
    "UnknownCharacterError": "charrnn.errors", "CheckpointError": "charrnn.errors",
    "TrainingError": "charrnn.errors", "Interrupted": "charrnn.errors", "MissingDependency": "charrnn.errors",
}

__all__ = [  # written out (tests/test_api.py holds it equal to _HOMES and pins it)
    "CallbackEvent", "Callbacks", "CellReport", "CharrnnError", "CheckpointError", "DataError", "EvalResult",
    "Interrupted", "MissingDependency", "Model", "Progress", "TrainResult", "TrainingError", "UnknownCharacterError",
    "UsageError", "__version__", "load", "train",
]

if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from charrnn.api import CellReport, Model, load
    from charrnn.api_train import CallbackEvent, train
    from charrnn.errors import (
        CharrnnError,
        CheckpointError,
        DataError,
        Interrupted,
        MissingDependency,
        TrainingError,
        UnknownCharacterError,
        UsageError,
    )
    from charrnn.inference.evaluate import EvalResult
    from charrnn.training.callbacks import Callbacks, Progress
    from charrnn.training.runconfig import TrainResult


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'charrnn' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # once: the next lookup does not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
