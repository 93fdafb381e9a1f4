"""`charrnn plot`: loss curves of one or more runs, in the terminal or as an image file."""

from __future__ import annotations

import shutil
import sys

import click

from charrnn.errors import UsageError


@click.command(name="plot")
@click.argument("runs", nargs=-1, required=True)
@click.option("--x", "x_axis", type=click.Choice(["steps", "seconds", "chars"]), default="steps", show_default=True,
              help="What the horizontal axis counts: steps, seconds of training, or characters trained on.")
@click.option("--y", "y_axis", type=click.Choice(["loss", "grad-norm"]), default="loss", show_default=True,
              help="What the vertical axis shows: the training and validation loss, or the global gradient norm "
                   "before clipping (mean of each report, and its largest), on a log scale.")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write an image instead (.png or .svg, by the name's ending; needs matplotlib).")
@click.option("--width", type=int, help="Plot width in terminal columns (default: the terminal's).")
@click.option("--height", type=int, help="Plot height in terminal rows (default: 30, or the terminal's if smaller).")
@click.option("--color", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True,
              help="Colours in the terminal plot: auto uses them when stdout is a terminal.")
def plot_cmd(runs: tuple[str, ...], x_axis: str, y_axis: str, output: str | None, width: int | None, height: int | None,
             color: str) -> None:
    """Training and validation loss of each RUN (a checkpoint or its log, model.pt.log.jsonl), overlaid in
    distinct colours with a legend: drawn in the terminal (stdout; needs plotext), or with -o
    written to an image file (needs matplotlib). Both come with `pip install 'charrnn[plot]'`.

    \b
    charrnn plot model.pt
    charrnn plot base.pt tuned.pt --x seconds
    charrnn plot model.pt --y grad-norm             (gradient norms before clipping)
    charrnn plot model.pt.log.jsonl -o curves.png     (while it trains, too)
    """
    from charrnn.display.plot import Run, image_plot, load_run, run_names, terminal_plot
    from charrnn.outputs import check_output

    for name, value in (("--width", width), ("--height", height)):
        if value is not None and value < 10:
            raise UsageError(f"{name} must be >= 10, got {value}")
    if output is not None:
        check_output(output, [(run, "a run to plot") for run in runs], what="image")
    loaded = [Run(name, load_run(path)) for name, path in zip(run_names(list(runs)), runs, strict=True)]
    if output is not None:
        image_plot(loaded, output, x_axis, y_axis)
        click.echo(f"wrote {output}", err=True)
        return
    size = shutil.get_terminal_size((100, 30))
    use_color = color == "always" or (color == "auto" and sys.stdout.isatty())
    height = height or max(10, min(30, size.lines - 1))
    plot = terminal_plot(loaded, x_axis, width=width or size.columns, height=height, color=use_color, y_axis=y_axis)
    click.echo(plot, color=use_color)  # click would strip the colours on a pipe
