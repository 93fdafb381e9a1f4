"""What every command shares: the group that maps domain errors to exits, stdin, JSON output and
the options several commands take. The CLI package is the only part of charrnn that imports click.

Contract: stdout carries data (generated text, results, --json); progress, logs and warnings go
to stderr. A domain error becomes one line on stderr and exit code 1 (run time) or 2 (usage).
torch is imported inside the commands, never at module level, so `charrnn --help` is instant.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

import click

from charrnn.errors import CharrnnError

CELLS = ["rnn", "gru", "lstm", "scratch-rnn", "scratch-gru", "scratch-lstm"]
ARCH_DEFAULTS = {"cell": "lstm", "layers": 2, "hidden": 256, "dropout": 0.0, "input": "embedding", "embed_dim": 64}
DEFAULT_TIME_BUDGET = 300.0
DEFAULT_VAL_MAX_CHARS = 250_000
ONEHOT_WARN_VOCAB = 1024
PRESET_NAMES = ["tiny", "small", "medium", "large"]  # charrnn.train.PRESETS (kept here: no torch at import)


class CharrnnGroup(click.Group):
    """Turns domain errors, Ctrl-C and a closed stdout pipe into clean exits."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CharrnnError as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("Aborted.", err=True)
            ctx.exit(130)
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly, and keep Python from complaining
            # about the unflushed stdout at exit.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(0)


def stdin() -> Any:
    """Standard input as bytes (commands look it up here at call time, so tests can replace it)."""
    return getattr(sys.stdin, "buffer", sys.stdin)


def same_file(a: str, b: str) -> bool:
    try:
        return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
    except OSError:
        return False


def json_out(obj: dict) -> None:
    click.echo(json.dumps(obj, ensure_ascii=False, allow_nan=False, default=str))


def num(x: float | None, fmt: str = ".4f") -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x, fmt)


device_option = click.option("--device", default="auto", show_default=True,
                             help="auto, cpu, cuda, cuda:N or mps (auto picks a GPU when there is one).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout instead of text.")
encoding_option = click.option("--encoding", default="utf-8", show_default=True, help="Text encoding of the input.")
model_option = click.option("-m", "--model", "model_path", required=True, type=click.Path(dir_okay=False),
                            help="Checkpoint written by `charrnn train`.")
