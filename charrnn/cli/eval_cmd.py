"""`charrnn eval`: measure a model on text."""

from __future__ import annotations

import click

from charrnn.cli import common
from charrnn.cli.common import device_option, encoding_option, json_option, json_out, model_option, positive_int
from charrnn.errors import UsageError


@click.group(name="eval")
def eval_group() -> None:
    """Measure a model on text."""


@eval_group.command()
@model_option
@click.argument("text", default="-")
@encoding_option
@click.option("--unk", type=click.Choice(["map", "error"]), default="map", show_default=True,
              help="Characters the model does not know: skip them as targets (map) or fail (error).")
@click.option("--streams", default=64, type=positive_int(), show_default=True,
              help="Score the text as this many contiguous pieces side by side, each carrying its own state "
                   "(faster); 1 scores it as one sequence.")
@click.option("-t", "--num-steps", default=256, type=positive_int(), show_default=True,
              help="Characters per forward call.")
@click.option("--split", type=click.Choice(["test", "valid", "train"]), default=None,
              help="Score this official part of a catalog corpus with splits (ptb-char).")
@device_option
@json_option
def perplexity(model_path: str, text: str, encoding: str, unk: str, streams: int, num_steps: int,
               split: str | None, device: str, as_json: bool) -> None:
    """Perplexity and bits per character of MODEL on TEXT (a file, `-` for stdin, `pydoc` or a
    catalog corpus name; for one with official splits, choose the part with --split).

    Every character after the first is predicted from all before it; perplexity is
    exp(mean cross-entropy in nats), bits/char = nats / ln 2.
    """
    from charrnn import console as con
    from charrnn.cache import encode_corpus
    from charrnn.checkpoint import load_model
    from charrnn.corpora import catalog_entry, part_of, source_parts
    from charrnn.evaluate import UNKNOWN_WARN_SHARE, evaluate
    from charrnn.model import resolve_device

    if streams < 1 or num_steps < 1:
        raise UsageError("--streams and --num-steps must be >= 1")
    entry = catalog_entry(text)
    if split is None and entry is not None and entry.has_splits:
        raise UsageError(f"{text} has official splits: choose the part to score with --split test, valid or train")
    model, vocab, _ = load_model(model_path, resolve_device(device))
    fetching = con.DownloadConsole(con.make_console())
    parts = [part_of(text, split, callbacks=fetching)] if split is not None else source_parts(text, common.stdin(),
                                                                                              callbacks=fetching)
    # Streamed and encoded chunk by chunk: memory is the ids (1 to 4 bytes per character), not the text.
    ids = encode_corpus(parts, encoding, vocab=vocab, unk=unk, where="the text", cache=False).ids  # type: ignore[arg-type]
    result = evaluate(model, ids, unk_id=vocab.unk_id, streams=streams, num_steps=num_steps)
    if result.unknown_share > UNKNOWN_WARN_SHARE:
        con.info(con.make_console(), f"warning: {result.unknown:,} of {result.chars + result.unknown:,} characters "
                                     f"({result.unknown_share:.1%}) are unknown to the model and were not scored: "
                                     "the result describes the rest of the text only")
    if as_json:
        json_out(result.to_dict())
    else:
        click.echo(f"perplexity {result.perplexity:.4f}\nnats/char {result.nats_per_char:.4f}\n"
                   f"bits/char {result.bits_per_char:.4f}\nchars {result.chars}\nunknown {result.unknown}")


DEFAULT_SHOW_CHARS = 10_000


@eval_group.command()
@model_option
@click.argument("text", default="-")
@encoding_option
@click.option("--html", "html_path", type=click.Path(dir_okay=False),
              help="Write one self-contained HTML page instead: hover a character to see the top 5 predictions.")
@click.option("--json", "as_json", is_flag=True,
              help="JSON Lines on stdout instead, one object per character: char, bits, top.")
@click.option("--max-chars", default=DEFAULT_SHOW_CHARS, show_default=True,
              help="Show at most this many characters from the start of the text (said on stderr when it cuts).")
@click.option("--color", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True,
              help="Colours in the terminal view: auto uses them when stdout is a terminal (always: for less -R).")
@device_option
def show(model_path: str, text: str, encoding: str, html_path: str | None, as_json: bool, max_chars: int,
         color: str, device: str) -> None:
    """TEXT coloured by how surprised MODEL is by each character (a file, `-` for stdin, `pydoc` or a
    catalog corpus name).

    The surprise of a character is -log2 of the probability the model gave it, from everything
    before it: pale where the model was sure, dark red where it was lost (8 bits and more). The
    first character and characters the model does not know are not scored.

    \b
    charrnn eval show -m model.pt notes.txt
    charrnn eval show -m model.pt notes.txt --html notes.html
    charrnn eval show -m model.pt notes.txt --json | jq -c 'select(.bits > 8)'
    """
    import sys
    from pathlib import Path

    from charrnn import console as con
    from charrnn.checkpoint import load_model
    from charrnn.corpora import source_parts
    from charrnn.model import resolve_device
    from charrnn.outputs import check_output, write_atomic
    from charrnn.surprise import html_page, json_lines, score

    if max_chars < 1:
        raise UsageError(f"--max-chars must be >= 1, got {max_chars}")
    if html_path is not None and as_json:
        raise UsageError("give --html or --json, not both")
    if html_path is not None:
        check_output(html_path, [text], what="HTML page")
    model, vocab, _ = load_model(model_path, resolve_device(device))
    console = con.make_console()
    chunks, size = [], 0
    for part in source_parts(text, common.stdin(), callbacks=con.DownloadConsole(console)):
        for chunk in part.texts(encoding):  # read no further than needed
            chunks.append(chunk)
            size += len(chunk)
            if size > max_chars:
                break
        if size > max_chars:
            break
    body = "".join(chunks)
    if len(body) > max_chars:
        body = body[:max_chars]
        con.info(console, f"showing the first {max_chars:,} characters of the text (--max-chars)")
    surprise = score(model, vocab, body)
    if as_json:
        for line in json_lines(surprise):
            click.echo(line)
    elif html_path is not None:
        page = html_page(surprise, title=f"charrnn surprise: {Path(model_path).name} on {text}")
        write_atomic(html_path, page.encode("utf-8"))
        con.info(console, f"wrote {html_path} ({len(body):,} characters)")
    else:
        use_color = {"always": True, "never": False}.get(color)
        if use_color is None and not sys.stdout.isatty():
            con.info(console, "stdout is not a terminal: no colours (use --color always, --html or --json)")
            use_color = False
        con.surprise_view(surprise, sys.stdout, color=use_color)
