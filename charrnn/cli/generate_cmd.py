"""`charrnn generate`: sample text from a model, streamed to stdout."""

from __future__ import annotations

import sys
from typing import Any

import click
from click.core import ParameterSource

from charrnn.cli import common
from charrnn.cli.common import (
    SEED,
    Finite,
    IntRange,
    device_option,
    encoding_option,
    json_option,
    json_out,
    label_option,
    model_option,
    positive_int,
    threads_option,
)
from charrnn.errors import UsageError
from charrnn.inference.forms import DEFAULT_LINE_ENDS_TYPED, DEFAULT_PLACEHOLDER


@click.command()
@model_option
@click.option("-p", "--prefix", default=None, help="Text to start from (warms up the state).")
@click.option("--prefix-file", type=str, default=None, help="Read the prefix from a file, or `-` for stdin.")
@encoding_option
@click.option("-n", "--length", default=500, type=IntRange(min=0), show_default=True,
              help="Characters to generate (after the prefix).")
@click.option("--temperature", default=1.0, type=Finite(0, low_open=True), show_default=True,
              help="Below 1: safer; above 1: wilder.")
@click.option("--top-k", type=positive_int(), default=None, help="Sample only from the k likeliest characters.")
@click.option("--top-p", type=Finite(0, 1, low_open=True), default=None,
              help="Sample from the smallest set with this much probability.")
@click.option("--greedy", is_flag=True, help="Always take the likeliest character.")
@click.option("--seed", type=SEED, default=None, help="Same seed, same text (default: random, shown on stderr).")
@click.option("--num-samples", default=1, type=positive_int(), show_default=True,
              help="Independent samples, generated side by side.")
@click.option("--no-echo", is_flag=True, help="Do not print the prefix.")
@click.option("--unk", type=click.Choice(["error", "map"]), default="error", show_default=True,
              help="Prefix characters the model does not know: fail (error) or use <unk> (map).")
@click.option("--stop", multiple=True,
              help="End a sample when it produces this string (repeatable; backslash escapes: '\\n', '\\0'). "
                   "Samples are then printed one per line, and -n is the most characters of one sample.")
@click.option("--min-length", default=0, show_default=True,
              help="With --stop: no sample ends before this many characters.")
@click.option("--novel", is_flag=True,
              help="Drop samples that copy a training record, and draw again (models trained with "
                   "--partition records).")
@click.option("--beam", type=int, default=None,
              help="Beam search of this width for the likeliest continuations (deterministic; ranked by "
                   "log-probability per character; --temperature other than 1, --top-k, --top-p below 1 and "
                   "--greedy do not apply; with --novel, training records are skipped).")
@click.option("--acrostic", default=None,
              help="The k-th line begins with the k-th character of this text (藏头诗); generation ends when its "
                   "last line ends (or at -n).")
@click.option("--template", default=None,
              help="Every character forced except the placeholder, which may be any character but a line end; "
                   "generation ends when it is filled (-n does not apply). '_____，_____。_____，_____。' is a "
                   "five-character quatrain.")
@click.option("--placeholder", default=DEFAULT_PLACEHOLDER, show_default=True,
              help="The free character of --template.")
@click.option("--line-ends", default=DEFAULT_LINE_ENDS_TYPED, show_default=True,
              help="Characters that end a line for --acrostic and --template (backslash escapes: '\\n').")
@label_option
@device_option
@threads_option
@json_option
@click.pass_context
def generate(ctx: click.Context, model_path: str, prefix: str | None, prefix_file: str | None, encoding: str,
             length: int, temperature: float, top_k: int | None, top_p: float | None, greedy: bool, seed: int | None,
             num_samples: int, no_echo: bool, unk: str, stop: tuple[str, ...], min_length: int, novel: bool,
             beam: int | None, acrostic: str | None, template: str | None, placeholder: str, line_ends: str,
             label: str | None, device: str, threads: int | None, as_json: bool) -> None:
    """Generate text from MODEL, streamed to stdout as it is sampled.

    With --num-samples N > 1 the samples are generated together and printed one after another,
    separated by a blank line (or as a list with --json). With --stop, or by default for a model
    trained with --partition records, samples are records: each ends at a stop string (the
    model's delimiter), and they are printed one per line as each ends. With --acrostic or
    --template, samples follow the form (the prefix is context, not part of the form); --json gives
    each character's log-probability.
    """
    from charrnn.data.records import unescape
    from charrnn.display import console as con
    from charrnn.inference.genplan import GenerateOptions, RecordsInfo, plan
    from charrnn.model.checkpoint import load_model
    from charrnn.model.network import resolve_device
    from charrnn.threads import make_chooser

    if prefix is not None and prefix_file is not None:
        raise UsageError("give --prefix or --prefix-file, not both")
    stops = tuple(unescape(s, "--stop") for s in stop)
    text = common.read_prefix(prefix, prefix_file, encoding)
    dev = resolve_device(device)
    chooser = make_chooser(threads, dev)
    model, vocab, ckpt = load_model(model_path, dev)
    given_min = ctx.get_parameter_source("min_length") != ParameterSource.DEFAULT
    options = GenerateOptions(prefix=text, n=length, temperature=temperature, top_k=top_k, top_p=top_p,
                              greedy=greedy, seed=seed, num_samples=num_samples, stop=stops,
                              min_length=min_length if given_min else None, novel=novel, beam=beam, unk=unk,
                              acrostic=acrostic, template=template, placeholder=placeholder,
                              line_ends=unescape(line_ends, "--line-ends"), label=label)
    job = plan(model, vocab, RecordsInfo.of(ckpt), options)
    console = con.make_console()
    for note in job.notes:
        con.info(console, note)
    if job.seed_drawn:
        con.info(console, f"seed {job.seed}")
    shown = "" if no_echo else text
    if job.kind == "form":
        _print_form(job, shown, as_json, chooser)
    elif job.kind == "plain":
        _print_plain(job, shown, as_json, chooser)
    else:
        _print_records(job, shown, as_json, chooser)
    if novel:
        what = "continuation(s)" if job.kind == "beam" else "sample(s)"
        con.info(console, f"dropped {len(job.dropped)} {what} that copied a training record")


def _print_plain(job: Any, shown: str, as_json: bool, threads: Any) -> None:
    """Plain samples: one streamed as it is sampled, several printed one after another (or --json)."""
    if as_json or job.options.num_samples > 1:
        texts = [shown + t for t in job.samples(threads)]
        if as_json:
            json_out({**({"samples": texts} if len(texts) > 1 else {"text": texts[0]}), "seed": job.seed,
                      "threads": threads.threads})
        else:
            click.echo("\n\n".join(texts))
        return
    out = sys.stdout
    interactive = out.isatty()
    out.write(shown)
    for _, char, _ in job.pieces(threads):
        out.write(char)
        if interactive or char == "\n":
            out.flush()
    out.write("\n")
    out.flush()


def _print_form(job: Any, shown: str, as_json: bool, threads: Any) -> None:
    """Samples of a form (--acrostic, --template): the texts, several separated by a blank line; with
    --json each with its log-probabilities per character."""
    texts = [shown + t for t in job.samples(threads)]
    if not as_json:
        click.echo("\n\n".join(texts))
        return
    items = [{**r.to_dict(), "text": text} for r, text in zip(job.form_results, texts, strict=True)]
    json_out({**({"samples": items} if len(items) > 1 else items[0]), "seed": job.seed, "threads": threads.threads})


def _print_records(job: Any, shown: str, as_json: bool, threads: Any) -> None:
    """Records (one per line as each ends) or beam search's results, best first (or --json)."""
    novel = job.options.novel
    if as_json:
        samples = job.samples(threads)
        if job.kind == "beam":
            json_out({"beam": job.options.beam,
                      "results": [{**r.to_dict(), "text": shown + r.text} for r in job.beam_results],
                      **({"dropped": len(job.dropped)} if novel else {})})
        else:
            json_out({"samples": [shown + s for s in samples], "seed": job.seed,
                      **({"dropped": len(job.dropped)} if novel else {})})
        return
    out = sys.stdout
    parts: dict[int, list[str]] = {}
    for i, piece, ended in job.pieces(threads):
        parts.setdefault(i, []).append(piece)
        if ended:
            out.write(shown + "".join(parts.pop(i)) + "\n")
            out.flush()
