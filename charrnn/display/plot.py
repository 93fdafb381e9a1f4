"""Loss curves of one or more runs: in the terminal (plotext) or as an image file (matplotlib).

A RUN is a checkpoint (its history) or a `.log.jsonl` training log. Each run draws its training
loss as a line and its validation loss as marked points, in a colour of its own, against steps,
seconds or characters trained on. Both libraries are optional extras (`pip install 'charrnn[plot]'`):
the rest of charrnn never needs them, and a missing one is a one-line error saying what to install.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from charrnn.display.figure import image_format, new_figure, save_figure
from charrnn.errors import DataError, MissingDependency, UsageError
from charrnn.model.history import History, read_log

# What the vertical axis shows: (the line's field, the points' field, their labels, the axis title, log scale).
Y_AXES = {
    "loss": ("loss", "loss", ("train", "val"), "loss (nats/char)", False),
    "grad-norm": ("grad_norm", "grad_norm_max", ("grad norm", "max"), "gradient norm before clipping", True),
}
X_AXES = {"steps": ("step", "step"), "seconds": ("elapsed", "seconds"), "chars": ("chars", "characters trained on")}
# One colour per run (train line and validation points share it); plotext and matplotlib names.
TERMINAL_COLORS = ("blue", "red", "green", "orange", "magenta", "cyan", "gray", "yellow")
FILE_COLORS = ("tab:blue", "tab:red", "tab:green", "tab:orange", "tab:purple", "tab:cyan", "tab:gray", "tab:olive")
# Without colour, runs differ by marker: (training line, validation points).
PLAIN_MARKERS = (("·", "O"), ("+", "#"), ("x", "X"), ("-", "@"), ("*", "%"), ("~", "&"), (":", "$"), ("=", "W"))


@dataclass(frozen=True)
class Run:
    name: str  # legend label
    history: History


@dataclass(frozen=True)
class Series:
    label: str
    x: list[float]
    y: list[float]


def load_run(path: str | os.PathLike) -> History:
    """The history of a checkpoint or of a `.log.jsonl` file; a run without any is a DataError, a
    path that is missing or a folder a UsageError (exit 2, like a missing checkpoint)."""
    from charrnn.model import checkpoint

    p = Path(path)
    if not p.exists():
        raise UsageError(f"{str(p)!r} does not exist")
    if p.is_dir():
        raise UsageError(f"{str(p)!r} is a directory; give a checkpoint or a .log.jsonl file")
    from charrnn.model.safetensors_read import looks_like

    with open(p, "rb") as f:
        head = f.read(9)
    if looks_like(p, head):
        raise DataError(f"{str(p)!r} is an exported model (safetensors), which keeps no training history; "
                        "plot its checkpoint")
    if head[:4] == b"PK\x03\x04":
        ckpt = checkpoint.load(p)
        history = History.from_checkpoint(ckpt.get("history"), where=repr(str(p)))
    else:
        history = read_log(p)
    if not history:
        raise DataError(f"{str(p)!r} has no training history (a checkpoint from before charrnn kept histories, "
                        "or a log of a run that has not reported yet)")
    return history


def run_names(paths: list[str]) -> list[str]:
    """Short legend labels: the file names without .log.jsonl and .pt (model.pt.log.jsonl -> model),
    made unique by their folders."""
    def short(p: str) -> str:
        name = Path(p).name
        for suffixes in ((".log.jsonl", ".jsonl"), (".pt",)):
            for suffix in suffixes:
                if name.endswith(suffix) and len(name) > len(suffix):
                    name = name[: -len(suffix)]
                    break
        return name

    names = [short(p) for p in paths]
    if len(set(names)) < len(names):
        names = [Path(p).name for p in paths]  # model.pt and model.pt.log.jsonl
    if len(set(names)) < len(names):
        names = [str(Path(p).parent / short(p)) for p in paths]
    if len(set(names)) < len(names):
        names = [f"{n} ({i + 1})" for i, n in enumerate(names)]
    return names


def series(run: Run, x_axis: str, y_axis: str = "loss") -> tuple[Series, Series]:
    """(line, points) of `run` against `x_axis`: for `loss` the training loss and the validation loss;
    for `grad-norm` the mean gradient norm before clipping of each report and its largest. Values
    that are not finite (a diverged step, a run older than the field), or not positive on a log
    scale, are left out."""
    if x_axis not in X_AXES:
        raise UsageError(f"unknown x axis {x_axis!r}: choose one of {', '.join(X_AXES)}")
    if y_axis not in Y_AXES:
        raise UsageError(f"unknown y axis {y_axis!r}: choose one of {', '.join(Y_AXES)}")
    key = X_AXES[x_axis][0]
    line_field, point_field, (line_label, point_label), _, log = Y_AXES[y_axis]

    def pick(records: list[dict], field: str, what: str) -> Series:
        kept = [r for r in records if math.isfinite(r[field]) and (r[field] > 0 or not log)]
        return Series(f"{run.name} {what}", [float(r[key]) for r in kept], [float(r[field]) for r in kept])

    points = run.history.val if y_axis == "loss" else run.history.train
    return pick(run.history.train, line_field, line_label), pick(points, point_field, point_label)


def all_series(runs: list[Run], x_axis: str, y_axis: str) -> list[tuple[Series, Series]]:
    """`series` of every run; a DataError when none has anything to draw (gradient norms of runs
    trained before charrnn recorded them)."""
    drawn = [series(run, x_axis, y_axis) for run in runs]
    if not any(line.x or points.x for line, points in drawn):
        what = "gradient norms" if y_axis == "grad-norm" else "finite losses"
        raise DataError(f"no {what} to draw in {', '.join(run.name for run in runs)} (runs trained before charrnn "
                        "recorded gradient norms have none)" if y_axis == "grad-norm" else f"no {what} to draw")
    return drawn


def terminal_plot(runs: list[Run], x_axis: str = "steps", width: int = 100, height: int = 30,
                  color: bool = True, y_axis: str = "loss") -> str:
    """The curves drawn with text characters (ANSI colours when `color`), as one string."""
    try:
        import plotext as plt
    except ImportError:
        raise MissingDependency("plotting in the terminal needs plotext: pip install 'charrnn[plot]' "
                                "(or pip install 'plotext<6'); -o curves.png needs matplotlib") from None
    plt.clear_figure()  # plotext draws on one figure per process: start from a blank one
    # plotext clips the plot to the terminal it guesses (80 x 24 when stdout is a pipe): the size
    # asked for is the size drawn (`plot --width 150 | less -S`).
    plt.limitsize(False, False)
    plt.plotsize(width, height)
    plt.theme("clear")  # no background: the terminal's own shows through
    for i, (train, val) in enumerate(all_series(runs, x_axis, y_axis)):
        colour = TERMINAL_COLORS[i % len(TERMINAL_COLORS)]
        line_marker, point_marker = ("braille", "o") if color else PLAIN_MARKERS[i % len(PLAIN_MARKERS)]
        if train.x:
            plt.plot(train.x, train.y, label=train.label, marker=line_marker, color=colour if color else None)
        if val.x:
            plt.scatter(val.x, val.y, label=val.label, marker=point_marker, color=colour if color else None)
    plt.title(Y_AXES[y_axis][3])
    if Y_AXES[y_axis][4]:
        plt.yscale("log")
    plt.xlabel(X_AXES[x_axis][1])
    text = plt.build()
    plt.clear_figure()
    return (text if color else plt.uncolorize(text)).rstrip("\n")


def image_plot(runs: list[Run], path: str | os.PathLike, x_axis: str = "steps", y_axis: str = "loss") -> None:
    """Write the curves to `path`, a .png or .svg file (matplotlib, no display needed)."""
    image_format(path)
    fig = new_figure()
    ax = fig.subplots()
    for i, (train, val) in enumerate(all_series(runs, x_axis, y_axis)):
        colour = FILE_COLORS[i % len(FILE_COLORS)]
        if train.x:
            ax.plot(train.x, train.y, color=colour, linewidth=1.2, alpha=0.8, label=train.label)
        if val.x:
            ax.plot(val.x, val.y, color=colour, marker="o", markersize=4, linestyle="--", linewidth=1,
                    label=val.label)
    ax.set_xlabel(X_AXES[x_axis][1])
    ax.set_ylabel(Y_AXES[y_axis][3])
    if Y_AXES[y_axis][4]:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    save_figure(fig, path)
