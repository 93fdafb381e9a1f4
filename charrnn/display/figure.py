"""Pictures written to files: one place that imports matplotlib and saves a figure atomically.

matplotlib is an optional extra (`pip install 'charrnn[plot]'`); a missing one is a one-line error
saying what to install. A bare Figure renders through its own canvas: no pyplot, no global state,
no display. Every command that writes a .png or .svg (plot, the inspect analyses, eval context)
goes through here.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from charrnn.errors import MissingDependency, UsageError
from charrnn.outputs import write_atomic

IMAGE_SUFFIXES = (".png", ".svg")


def image_format(path: str | os.PathLike) -> str:
    """'png' or 'svg' from the name's ending; a UsageError otherwise (check before any work)."""
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise UsageError(f"cannot tell the image format of {str(path)!r}: use a name ending in .png or .svg")
    return suffix.lstrip(".")


def new_figure(width: float = 9.0, height: float = 5.5) -> Any:
    """A matplotlib Figure (inches) with constrained layout."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependency("writing an image needs matplotlib: pip install 'charrnn[plot]' "
                                "(or pip install matplotlib)") from None
    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig: Any, path: str | os.PathLike) -> None:
    """Render `fig` whole, then write it atomically: a failure leaves no half image."""
    image = io.BytesIO()
    fig.savefig(image, format=image_format(path))
    write_atomic(path, image.getvalue())
