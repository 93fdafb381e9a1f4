"""`charrnn eval context`: how much context a model uses (attached to the eval group in cli/__init__.py).

Also the text reading that `inspect bptt` shares: at most --max-chars characters of TEXT, encoded
for each model as `eval perplexity` encodes it (unknown characters become <unk>).
"""

from __future__ import annotations

from typing import Any

import click

from charrnn.cli import common
from charrnn.cli.common import IntRange, device_option, encoding_option, json_line, positive_int
from charrnn.errors import UsageError

DEFAULT_MAX_CHARS = 100_000
DEFAULT_LENGTHS = "1,2,5,10,20,50,100,200,500,1000"  # charrnn.analysis.context.DEFAULT_LENGTHS (no torch at import)

models_option = click.option("-m", "--model", "model_paths", required=True, multiple=True, type=click.Path(),
                             help="Checkpoint written by `charrnn train`; repeat to compare models on one picture.")
max_chars_option = click.option("--max-chars", default=DEFAULT_MAX_CHARS, show_default=True, type=int,
                                help="Read at most this many characters from the start of the text.")
picture_option = click.option("-o", "--output", "picture", type=click.Path(dir_okay=False),
                              help="Draw the result to this .png or .svg file instead of printing the table "
                                   "(--json still prints).")


def new_picture(picture: str | None, model_paths: tuple[str, ...], text: str) -> Any:
    """Before any work: the picture's path (common.check_picture) and matplotlib; a Figure to draw on, or None."""
    if common.check_picture(picture, model_paths, text) is None:
        return None
    from charrnn.display.figure import new_figure

    return new_figure()


def load_models(model_paths: tuple[str, ...], body: str, name: str, encoding: str, device: str) -> list[tuple]:
    """(path, legend name, model, ids of the text under its vocabulary, <unk> id, record delimiter ids or None)
    for every model."""
    import numpy as np

    from charrnn.data.cache import encode_corpus
    from charrnn.data.corpora import Part
    from charrnn.display.plot import run_names
    from charrnn.model.checkpoint import load_model, record_delimiter
    from charrnn.model.network import resolve_device

    dev = resolve_device(device)
    out = []
    for path, legend in zip(model_paths, run_names(list(model_paths)), strict=True):
        model, vocab, ckpt = load_model(path, dev)
        ids = encode_corpus([Part(name, text=body)], encoding, vocab=vocab, unk="map", where="the text",
                            cache=False).ids
        delimiter = record_delimiter(ckpt)
        boundary = None if delimiter is None else vocab.encode(delimiter, unk="map").astype(np.int64)
        out.append((path, legend, model, np.asarray(ids), vocab.unk_id, boundary))
    return out


@click.command(name="context")
@models_option
@click.argument("text", default="-")
@encoding_option
@click.option("--lengths", default=DEFAULT_LENGTHS, show_default=True,
              help="Context lengths n to try, in characters (commas or spaces between them).")
@click.option("--targets", default=2000, show_default=True, type=positive_int(),
              help="How many characters to score, spread evenly over the text after the first max(n).")
@click.option("--perturb", type=click.Choice(["shuffle", "reverse"]), default=None,
              help="Shuffle or reverse the part of each context farther than --beyond characters from the target.")
@click.option("--beyond", type=IntRange(min=0), default=None, help="With --perturb: characters kept intact.")
@click.option("--seed", type=common.SEED, default=0, show_default=True, help="Seed of --perturb shuffle.")
@max_chars_option
@picture_option
@click.option("--json", "as_json", is_flag=True,
              help="JSON Lines: one object per length, keys length, nats_per_char, increase, targets, "
                   "full_nats_per_char (the full-context loss; with several models also model, the path, and "
                   "name, the legend's).")
@device_option
def eval_context(model_paths: tuple[str, ...], text: str, encoding: str, lengths: str, targets: int,
                perturb: str | None, beyond: int | None, seed: int, max_chars: int, picture: str | None,
                as_json: bool, device: str) -> None:
    """How much context MODEL uses on TEXT (a file, `-` for stdin, or a corpus name): the loss of the
    same characters given only their last n characters, against the full context (Khandelwal et
    al. 2018, in characters).

    Every length scores the same targets (characters after the first max(n)), each truncated
    context read from the model's begin state (a records model: its record-start state) as one
    row of a minibatch. `increase` is the loss over full context, in nats per character (and in
    percent in the table). Where the increase falls to about 0, the model uses no more context.

    \b
    charrnn eval context -m model.pt held_out.txt
    charrnn eval context -m rnn.pt -m lstm.pt held_out.txt -o context.png
    charrnn eval context -m model.pt held_out.txt --perturb shuffle --beyond 50 --json
    """
    import time

    from charrnn.analysis.context import context_curve, draw_context, parse_lengths
    from charrnn.display import console as con

    asked = parse_lengths(lengths)
    if (perturb is None) != (beyond is None):
        raise UsageError("--perturb and --beyond go together: --perturb shuffle|reverse --beyond D")
    if beyond is not None and beyond >= max(asked) - 1:
        raise UsageError(f"--beyond {beyond} leaves nothing to {perturb}: it must be below {max(asked) - 1} "
                         "(the longest length minus one)")
    fig = new_picture(picture, model_paths, text)
    console = con.make_console()
    body, name = common.read_head(text, encoding, max_chars, console)
    loaded = load_models(model_paths, body, name, encoding, device)
    if perturb is not None:
        con.info(console, f"the context farther than {beyond} characters from each target is {perturb}d")
    curves = []
    for path, legend, model, ids, unk_id, boundary in loaded:
        began = time.perf_counter()

        def full_done(loss: float, count: int, seconds: float, legend: str = legend) -> None:
            con.info(console, f"{legend}: full context {loss:.4f} nats/char over {count:,} targets in {seconds:.1f} s")

        def said(point: Any, seconds: float, legend: str = legend) -> None:
            con.info(console, f"{legend}: length {point.length:,}: {point.nats_per_char:.4f} nats/char "
                              f"({point.increase:+.4f}) in {seconds:.1f} s")

        curve = context_curve(model, ids, lengths=asked, targets=targets, unk_id=unk_id, boundary_ids=boundary,
                              perturb=perturb, beyond=beyond or 0, seed=seed, on_full=full_done, on_point=said)
        con.info(console, f"{legend}: {time.perf_counter() - began:.1f} s in all")
        if curve.targets < targets:
            con.info(console, f"{legend}: only {curve.targets:,} characters of the text could be scored "
                              f"({targets:,} asked)")
        curves.append((path, legend, curve))
    if fig is None or as_json:  # with -o the picture is what was asked for, not the table as well
        _print_table(curves, as_json)
    if fig is not None:
        from charrnn.display.figure import save_figure

        how = f", context beyond {beyond} characters {perturb}d" if perturb else ""
        draw_context(fig, [(legend, curve) for _, legend, curve in curves],
                     title=f"loss of the same {curves[0][2].targets:,} characters given their last n{how}")
        save_figure(fig, picture)
        con.info(console, f"wrote {picture}")


def _print_table(curves: list[tuple], as_json: bool) -> None:
    several = len(curves) > 1
    if as_json:
        for path, legend, curve in curves:
            for point in curve.points:
                # With several models, the path and the legend's name (unique even for one file given twice).
                click.echo(json_line({**point.to_dict(), "full_nats_per_char": curve.full,
                                      **({"model": path, "name": legend} if several else {})}))
        return
    width = max(5, *(len(legend) for _, legend, _ in curves))
    click.echo(f"{'model':<{width}}  {'length':>6}  {'nats/char':>9}  {'increase':>9}  {'increase%':>9}")
    for _, legend, curve in curves:
        for p in curve.points:
            click.echo(f"{legend:<{width}}  {p.length:>6}  {p.nats_per_char:>9.4f}  {p.increase:>+9.4f}  "
                       f"{p.percent:>+8.1f}%")
        click.echo(f"{legend:<{width}}  {'full':>6}  {curve.full:>9.4f}  {'':>9}  {'':>9}".rstrip())
