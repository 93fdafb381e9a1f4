"""`charrnn inspect`: look inside a trained model (what its hidden state holds, its gates, its gradients)."""

from __future__ import annotations

import click


@click.group(name="inspect")
def inspect_group() -> None:
    """Look inside a trained model: what its units track, how its gates saturate, how far its
    gradients reach back in time. Each command reads a model and a text, prints a table on
    stdout (or --json, JSON Lines) and draws a picture with -o."""
