"""`charrnn complete`: the likeliest next characters, or words, after a prefix."""

from __future__ import annotations

import sys

import click

from charrnn.cli import common
from charrnn.cli.common import (
    IntRange,
    device_option,
    encoding_option,
    json_out,
    label_option,
    model_option,
    threads_option,
)
from charrnn.errors import UsageError

MAX_K = 1000


@click.command(name="complete")
@model_option
@click.option("-p", "--prefix", default=None, help="The text typed so far.")
@click.option("--prefix-file", type=str, default=None, help="Read the prefix from a file, or `-` for stdin.")
@encoding_option
@click.option("-k", "k", default=10, show_default=True, type=IntRange(1, MAX_K),
              help="How many next characters to list.")
@click.option("--words", type=IntRange(1, MAX_K), default=None,
              help="List this many continuations up to the next space or punctuation instead (a beam search).")
@click.option("--unk", type=click.Choice(["error", "map"]), default="map", show_default=True,
              help="Characters of the prefix the model does not know: read them as <unk> (map) or fail (error).")
@label_option
@device_option
@threads_option
@click.option("--json", "as_json", is_flag=True,
              help='One JSON object: {"prefix", "next": [{"char", "prob"}]}; with --words, "words": '
                   '[{"word", "prob"}].')
def complete(model_path: str, prefix: str | None, prefix_file: str | None, encoding: str, k: int, words: int | None,
             unk: str, label: str | None, device: str, threads: int | None, as_json: bool) -> None:
    """The k likeliest next characters after the prefix, best first, one `prob<TAB>char` line each
    (the character escaped as `eval score` escapes records: \\n, \\t, \\r, \\0, \\\\).

    --words K lists the K likeliest continuations up to the next word boundary (a space,
    punctuation, a newline: anything but a letter, a digit or _), each with the probability that
    the next word is exactly it; an empty one means the word ends here. For a model trained with
    --partition records the prefix starts a record, so an empty prefix asks how records begin.
    Probabilities are the model's own; <unk> is never offered.

    \b
    charrnn complete -m model.pt --prefix "The Time Trav"
    charrnn complete -m model.pt --prefix "The Time " --words 5 --json
    """
    from charrnn.data.records import escape
    from charrnn.inference.complete import next_chars, next_words
    from charrnn.inference.genplan import for_label
    from charrnn.model.checkpoint import label_set, load_model, record_delimiter
    from charrnn.model.network import resolve_device
    from charrnn.threads import make_chooser

    if prefix is not None and prefix_file is not None:
        raise UsageError("give --prefix or --prefix-file, not both")
    text = common.read_prefix(prefix, prefix_file, encoding)
    dev = resolve_device(device)
    make_chooser(threads, dev)  # --threads sets the count; a few steps are too few to time
    model, vocab, ckpt = load_model(model_path, dev)
    model = for_label(model, label_set(ckpt), label)
    prefix_ids = vocab.encode(text, unk=unk, where="the prefix")  # type: ignore[arg-type]
    delimiter = record_delimiter(ckpt)
    start = vocab.encode(delimiter, unk="map") if delimiter is not None else None
    if words is not None:
        guesses, key, field = next_words(model, vocab, prefix_ids, words, start), "words", "word"
    else:
        guesses, key, field = next_chars(model, vocab, prefix_ids, k, start), "next", "char"
    if as_json:
        json_out({"prefix": text, key: [g.to_dict(field) for g in guesses]})
        return
    # Written to sys.stdout as `generate` and `eval score` write (click.echo would swap an ASCII stdout for
    # UTF-8): characters the encoding lacks become backslash escapes. A space, invisible at a line's end,
    # is drawn as ␣ (the character ␣ itself as \u2423), or as \x20 where stdout cannot show ␣.
    space = "\u2423" if common.stdout_is_unicode() else "\\x20"
    for g in guesses:
        shown = escape(g.text).replace("\u2423", "\\u2423").replace(" ", space)
        sys.stdout.write(f"{g.prob:.6f}\t{shown}\n")
