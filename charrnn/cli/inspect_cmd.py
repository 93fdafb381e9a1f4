"""`charrnn inspect`: look inside a trained model (what its hidden state holds, its gates, its gradients)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from charrnn.cli import common
from charrnn.cli.common import SEED, device_option, encoding_option, json_line, model_option, positive_int

DEFAULT_MAX_CHARS = 10_000  # enough for stable correlations; memory is a few (T, H) float32 arrays per layer
FEW_CHARS = 200  # below this, cells warns that its correlations are mostly noise
PROPERTY_HELP = "quote, bracket, line_position, indent, comment, in_word, word_position, upper, digit"


@click.group(name="inspect")
def inspect_group() -> None:
    """Look inside a trained model: what its units track, how its gates saturate, how far its
    gradients reach back in time. Each command reads a model and a text, prints a table on
    stdout (or --json, JSON Lines), or with -o draws a picture instead (--json still prints)."""


def inspect_options(picture_help: str) -> Callable[[Callable], Callable]:
    """The options every inspect command shares: model, text, encoding, --max-chars, --json, -o, --device."""
    def decorate(f: Callable) -> Callable:
        for option in reversed([
            model_option,
            click.argument("text", default="-"),
            encoding_option,
            click.option("--max-chars", default=DEFAULT_MAX_CHARS, type=positive_int(), show_default=True,
                         help="Read at most this many characters from the start of the text (said on stderr "
                              "when it cuts)."),
            click.option("--json", "as_json", is_flag=True, help="JSON Lines on stdout instead of the table."),
            click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
                         help=picture_help + " Instead of the table on stdout (--json still prints)."),
            device_option,
        ]):
            f = option(f)
        return f
    return decorate


def encode_text(body: str, vocab: Any, console: Any) -> Any:
    """The ids of `body` as `eval perplexity` reads it (charrnn.analysis.trace.analysis_ids), with a warning on
    stderr when many of its characters are unknown to the model."""
    from charrnn.analysis.trace import analysis_ids
    from charrnn.display import console as con
    from charrnn.inference.evaluate import UNKNOWN_WARN_SHARE

    ids, n_unknown = analysis_ids(body, vocab)
    if n_unknown > UNKNOWN_WARN_SHARE * len(ids):
        con.info(console, f"warning: {n_unknown:,} of {len(ids):,} characters ({n_unknown / len(ids):.1%}) are "
                          "unknown to the model and were read as <unk>")
    return ids


def load_inputs(model_path: str, text: str, encoding: str, max_chars: int, device: str,
                check: Callable[[Any], None] | None = None) -> tuple[Any, Any, str, Any, Any]:
    """(model, vocab, text read, ids, stderr console); `check(model)` runs before the text is read."""
    from charrnn.display import console as con
    from charrnn.model.checkpoint import load_model
    from charrnn.model.network import resolve_device

    model, vocab, _ = load_model(model_path, resolve_device(device))
    model.eval()
    if check is not None:
        check(model)
    console = con.make_console()
    body, _ = common.read_head(text, encoding, max_chars, console)
    return model, vocab, body, encode_text(body, vocab, console), console


@inspect_group.command()
@inspect_options("Write a picture: .png or .svg (each property's best |r|, model against control), or "
                 ".html (the heat text of the units shown).")
@click.option("--property", "prop", default=None, metavar="NAME",
              help=f"Rank the units by this property alone and show its best unit: {PROPERTY_HELP}.")
@click.option("--property-regex", "regexes", multiple=True, metavar="NAME=REGEX",
              help="A property of your own, ranked beside the others: 1 on every character inside a match of "
                   "REGEX (Python syntax), else 0 (repeatable; --property NAME ranks by it alone).")
@click.option("--unit", "unit_specs", multiple=True, metavar="LAYER:INDEX",
              help="Show this unit's activation over the text (repeat for stacked rows); an LSTM's LAYER:INDEX "
                   "is its cell state, LAYER:INDEX:h its h.")
@click.option("--top", default=10, type=positive_int(), show_default=True, help="Units listed in the table.")
@click.option("--seed", default=0, type=SEED, show_default=True, help="Seed of the random-weights control.")
@click.option("--color", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True,
              help="Colours in the heat text: auto uses them when stdout is a terminal.")
def cells(model_path: str, text: str, encoding: str, max_chars: int, as_json: bool, output: str | None,
          device: str, prop: str | None, regexes: tuple[str, ...], unit_specs: tuple[str, ...], top: int, seed: int,
          color: str) -> None:
    """What MODEL's hidden units track in TEXT (a file, `-` for stdin, or a corpus name).

    Every unit (every layer's h, and an LSTM's cell state as tanh(c)) is scored against simple
    properties of the text by Pearson's r, and ranked by |r|: the best units for each property and
    the best property of each unit, beside a control (the same architecture with random weights).
    Layers count from 1, units from 0. --json: one object per unit, best first, with the keys layer,
    unit, state (c or h), property (--property, or the unit's best), r (signed) and control (the
    control's best |r| for that property). A property constant on the text (no bracket in prose) has
    no correlation with anything: it is left out of the ranking, and stderr says so.

    \b
    charrnn inspect cells -m model.pt held_out.txt
    charrnn inspect cells -m model.pt held_out.txt --property quote
    charrnn inspect cells -m model.pt held_out.txt --unit 1:17 --unit 1:40 -o units.html
    """
    from charrnn.analysis import cells as cl
    from charrnn.analysis.textprops import check_property, regex_property, regex_values
    from charrnn.analysis.trace import trace
    from charrnn.display import console as con
    from charrnn.errors import DataError

    own = dict(regex_property(spec) for spec in regexes)
    if prop is not None:
        check_property(prop, tuple(own))
    kind = common.check_picture(output, [model_path], text, html=True)
    specs: list[cl.Unit] = []

    def check(model: Any) -> None:
        c = model.config
        specs.extend(cl.parse_unit(s, c.layers, c.hidden, c.base_cell == "lstm") for s in unit_specs)

    model, _, body, ids, console = load_inputs(model_path, text, encoding, max_chars, device, check)
    if len(body) < FEW_CHARS:
        con.info(console, f"warning: only {len(body):,} characters: correlations over so few say little")
    c = model.config
    cl.check_memory(c.layers, c.hidden, c.base_cell == "lstm", len(body))
    extra = {name: regex_values(body, pattern) for name, pattern in own.items()}
    t = trace(model, ids)
    ranking = cl.rank(t, body, extra)
    if prop in ranking.constant:
        raise DataError(f"the property {prop} is the same on every character of this text: no unit can "
                        "correlate with it")
    if ranking.constant and not specs:
        con.info(console, f"constant on this text, so not ranked: {', '.join(sorted(ranking.constant))}")
    if not ranking.scored:
        raise DataError("every property is the same on every character of this text: nothing to rank")
    need_control = not specs or as_json or kind in ("png", "svg")
    control = cl.rank(trace(cl.control_model(model, seed), ids), body, extra) if need_control else None
    rows = _heat_rows(t, ranking, specs, prop)
    if as_json:
        for record in (_unit_records(ranking, specs, prop, control) if specs else ranking.records(prop, control)):
            click.echo(json_line(record))
    elif kind is not None:
        pass  # -o: the page or picture is what was asked for, not the table as well
    elif specs:
        _heat(body, rows, color, console)
    else:
        _cells_table(ranking, control, prop, top)
        if prop is not None:
            click.echo("")
            _heat(body, rows, color, console)
    if kind == "html":
        _write_page(output, body, rows, ranking, model_path, text, console)
    elif kind is not None:
        _write_figure(output, lambda fig: cl.draw(fig, ranking, control, title=_title(model_path, text, ranking.chars)),
                      console, width=10, height=5)


def _title(model_path: str, text: str, chars: int) -> str:
    from pathlib import Path

    return f"{Path(model_path).name} on {'stdin' if text == '-' else Path(text).name}, {chars:,} characters"


def _heat_rows(t: Any, ranking: Any, specs: list, prop: str | None) -> list:
    """The units a heat view shows: those asked for, else the best for --property, else the best of each property."""
    from charrnn.analysis import cells as cl
    from charrnn.display.heattext import HeatRow

    index = {u: i for i, u in enumerate(ranking.units)}
    if specs:
        chosen: list[tuple[Any, str | None]] = [(u, prop) for u in specs]
    else:
        chosen = [(ranking.units[ranking.by_property(p)[0]], p) for p in ([prop] if prop else ranking.scored)]
    best = ranking.best_properties()
    rows = []
    for unit, p in chosen:
        u = index[unit]
        name = p or ranking.names[int(best[u])]
        rows.append(HeatRow(f"{unit.label(ranking.lstm)}  {name} r={float(ranking.column(name)[u]):+.2f}",
                            cl.activation(t, unit)))
    return rows


def _unit_records(ranking: Any, specs: list, prop: str | None, control: Any) -> list[dict]:
    """The --json objects of the units asked for with --unit, in the order given."""
    by_key = {(r["layer"], r["unit"], r["state"]): r for r in ranking.records(prop, control)}
    return [by_key[(u.layer, u.index, u.state)] for u in specs]


def _heat(body: str, rows: list, color: str, console: Any) -> None:
    import sys

    from charrnn.display import console as con

    con.heat_view(body, rows, sys.stdout, color=common.use_colour(color, console, "-o page.html"))


def _cells_table(ranking: Any, control: Any, prop: str | None, top: int) -> None:
    """The readable tables: the best units of each property (or of --property), and the best
    property of the best units; |r| of the random-weights control beside them."""
    label = lambda u: ranking.units[u].label(ranking.lstm)  # noqa: E731
    click.echo(f"Pearson r of each unit with each property over {ranking.chars:,} characters "
               "(ranked by |r|; control: the best |r| of the same architecture with random weights)")
    if prop is not None:
        column = ranking.column(prop)
        click.echo(f"\n{'rank':>4}  {'unit':<10} {prop + ' r':>14}")
        for rank, u in enumerate(ranking.by_property(prop)[:top], 1):
            click.echo(f"{rank:>4}  {label(u):<10} {column[u]:>+14.3f}")
        click.echo(f"control best |r| for {prop}: {abs(control.best_r(prop)):.3f}")
        return
    click.echo(f"\n{'property':<14} {'best unit':<10} {'r':>7}  {'2nd':<10} {'r':>7}  {'3rd':<10} {'r':>7}  "
               f"{'control':>7}")
    for p in ranking.scored:
        column, cells = ranking.column(p), []
        for u in ranking.by_property(p)[:3]:
            cells.append(f"{label(u):<10} {column[u]:>+7.3f}")
        click.echo(f"{p:<14} {'  '.join(cells)}  {abs(control.best_r(p)):>7.3f}")
    best = ranking.best_properties()
    click.echo(f"\nbest property of each unit (the {min(top, len(ranking.units))} best of {len(ranking.units)} units)")
    click.echo(f"{'unit':<10} {'property':<14} {'r':>7}")
    for u in ranking.by_unit()[:top]:
        click.echo(f"{label(u):<10} {ranking.names[best[u]]:<14} {ranking.r[u, best[u]]:>+7.3f}")


def _write_page(output: str, body: str, rows: list, ranking: Any, model_path: str, text: str, console: Any) -> None:
    from charrnn.display import console as con
    from charrnn.display.heattext import html_page
    from charrnn.outputs import write_atomic

    meta = ("Each character's background is the unit's value after reading it (tanh(c) for an LSTM's cell "
            "state, else h): -1 blue, +1 red. r: Pearson correlation with the property over the text.")
    page = html_page(body, rows, title=f"charrnn inspect cells: {_title(model_path, text, ranking.chars)}", meta=meta)
    write_atomic(output, page.encode("utf-8"))
    con.info(console, f"wrote {output} ({len(body):,} characters, {len(rows)} unit(s))")


def _write_figure(output: str, draw: Callable[[Any], None], console: Any, width: float, height: float) -> None:
    from charrnn.display import console as con
    from charrnn.display.figure import new_figure, save_figure

    fig = new_figure(width, height)
    draw(fig)
    save_figure(fig, output)
    con.info(console, f"wrote {output}")


@inspect_group.command()
@inspect_options("Write the picture (.png or .svg): one panel per gate, a point per unit, coloured by layer.")
def gates(model_path: str, text: str, encoding: str, max_chars: int, as_json: bool, output: str | None,
          device: str) -> None:
    """How the gates of MODEL (an LSTM or a GRU) saturate on TEXT (a file, `-` for stdin, or a corpus name).

    For every gate unit, the fraction of characters at which it is left-saturated (activation
    below 0.1) and right-saturated (above 0.9); the tanh gates (LSTM cell, GRU new) are rescaled
    to (0, 1) first. The table sums each gate of each layer up; --json gives one object per gate
    unit: layer (from 1), gate (input, forget, cell, output; reset, update, new), unit (from 0),
    left, right.

    \b
    charrnn inspect gates -m model.pt held_out.txt
    charrnn inspect gates -m model.pt held_out.txt -o gates.png
    """
    from charrnn.analysis import gates as gt
    from charrnn.analysis.trace import trace

    kind = common.check_picture(output, [model_path], text)
    model, _, _, ids, console = load_inputs(model_path, text, encoding, max_chars, device,
                                            check=lambda m: gt.check_gated(m.config.base_cell))
    sat = gt.saturation(trace(model, ids, gates=True))
    if as_json:
        for record in gt.records(sat):
            click.echo(json_line(record))
    elif kind is None:  # -o: the picture is what was asked for, not the table as well
        click.echo(f"gate saturation over {len(ids):,} characters: fraction of characters with the gate "
                   f"< {gt.LOW:g} (left) and > {gt.HIGH:g} (right), mean over units; units saturated more than "
                   "half the time")
        click.echo(f"\n{'layer':>5}  {'gate':<7} {'units':>5} {'left':>6} {'right':>6} {'mostly left':>12} "
                   f"{'mostly right':>13}")
        for row in gt.summary(sat):
            click.echo(f"{row['layer']:>5}  {row['gate']:<7} {row['units']:>5} {row['left']:>6.3f} "
                       f"{row['right']:>6.3f} {row['mostly_left']:>12} {row['mostly_right']:>13}")
    if kind is not None:
        title = f"gate saturation: {_title(model_path, text, len(ids))}"
        _write_figure(output, lambda fig: gt.draw(fig, sat, title=title), console,
                      width=3.2 * len(gt.GATE_NAMES[model.config.base_cell]) + 1, height=4.2)

