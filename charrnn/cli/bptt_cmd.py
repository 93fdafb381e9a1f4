"""`charrnn inspect bptt`: gradients through time (attached to the inspect group in cli/__init__.py)."""

from __future__ import annotations

from typing import Any

import click

from charrnn.cli import common
from charrnn.cli.common import device_option, encoding_option, json_line, positive_int
from charrnn.cli.context_cmd import load_models, max_chars_option, models_option, new_picture, picture_option


@click.command(name="bptt")
@models_option
@click.argument("text", default="-")
@encoding_option
@click.option("-t", "--num-steps", "steps", default=200, show_default=True, type=positive_int(),
              help="T: characters per window; distances 0 to T-1 are measured.")
@click.option("--windows", default=32, show_default=True, type=positive_int(),
              help="Average over this many windows, spread evenly over the text.")
@max_chars_option
@picture_option
@click.option("--json", "as_json", is_flag=True,
              help="JSON Lines: one object per distance, keys distance, grad_norm (with several models also model, the "
                   "path, and name, the legend's), distance 0 first.")
@device_option
def inspect_bptt(model_paths: tuple[str, ...], text: str, encoding: str, steps: int, windows: int, max_chars: int,
             picture: str | None, as_json: bool, device: str) -> None:
    """Gradients through time: for windows of T characters of TEXT (a file, `-` for stdin, or a
    corpus name), the norm of the gradient of the loss at the window's end with respect to each
    earlier hidden state, ||d l_T / d h_(T-k)|| for k = 0 .. T-1, averaged over the windows.

    h is every layer's hidden state (for an LSTM its h, not the cell state c). Each window starts
    from the state left by reading the T characters before it. A plain RNN's curve typically falls
    by orders of magnitude within some tens of characters (vanishing gradients); a gated cell's
    falls more slowly. The picture has a log y axis.

    \b
    charrnn inspect bptt -m model.pt held_out.txt
    charrnn inspect bptt -m rnn.pt -m lstm.pt held_out.txt -o bptt.png
    charrnn inspect bptt -m model.pt held_out.txt -t 100 --json
    """
    from charrnn.analysis.bptt import MAX_STEPS, MAX_WINDOWS, draw_bptt, gradient_norms
    from charrnn.display import console as con
    from charrnn.errors import UsageError

    if steps > MAX_STEPS or windows > MAX_WINDOWS:
        raise UsageError(f"--num-steps is at most {MAX_STEPS:,} and --windows at most {MAX_WINDOWS:,}")
    fig = new_picture(picture, model_paths, text)
    console = con.make_console()
    body, name = common.read_head(text, encoding, max_chars, console)
    curves = []
    for path, legend, model, ids, unk_id, boundary in load_models(model_paths, body, name, encoding, device):
        curve = gradient_norms(model, ids, steps=steps, windows=windows, unk_id=unk_id, boundary_ids=boundary)
        g = curve.grad_norms
        said = ", ".join(f"{g[k]:.3g} at {'distance ' if k == 0 else ''}{k}" for k in sorted({0, min(10, steps - 1),
                                                                                               steps - 1}))
        con.info(console, f"{legend}: {curve.windows} windows of {steps} characters; grad norm {said}")
        curves.append((path, legend, curve))
    if fig is None or as_json:  # with -o the picture is what was asked for, not the table as well
        _print_table(curves, as_json)
    if fig is not None:
        from charrnn.display.figure import save_figure

        draw_bptt(fig, [(legend, curve) for _, legend, curve in curves],
                  title=f"||d loss_T / d h_(T-k)||, mean over {curves[0][2].windows} windows of {steps} characters")
        save_figure(fig, picture)
        con.info(console, f"wrote {picture}")


def _print_table(curves: list[tuple[str, str, Any]], as_json: bool) -> None:
    several = len(curves) > 1
    if as_json:
        for path, legend, curve in curves:
            for record in curve.records():
                click.echo(json_line({**record, **({"model": path, "name": legend} if several else {})}))
        return
    widths = [max(12, len(legend)) for _, legend, _ in curves]
    click.echo("  ".join([f"{'distance':>8}", *(f"{legend:>{w}}" for (_, legend, _), w in zip(curves, widths,
                                                                                              strict=True))]))
    for k in range(len(curves[0][2].grad_norms)):
        click.echo("  ".join([f"{k:>8}", *(f"{c.grad_norms[k]:>{w}.4e}" for (_, _, c), w in zip(curves, widths,
                                                                                                 strict=True))]))
