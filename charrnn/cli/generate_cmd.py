"""`charrnn generate`: sample text from a model, streamed to stdout."""

from __future__ import annotations

import secrets
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
    model_option,
    positive_int,
    threads_option,
)
from charrnn.errors import UsageError


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
@device_option
@threads_option
@json_option
@click.pass_context
def generate(ctx: click.Context, model_path: str, prefix: str | None, prefix_file: str | None, encoding: str,
             length: int, temperature: float, top_k: int | None, top_p: float | None, greedy: bool, seed: int | None,
             num_samples: int, no_echo: bool, unk: str, stop: tuple[str, ...], min_length: int, novel: bool,
             beam: int | None, device: str, threads: int | None, as_json: bool) -> None:
    """Generate text from MODEL, streamed to stdout as it is sampled.

    With --num-samples N > 1 the samples are generated together and printed one after another,
    separated by a blank line (or as a list with --json). With --stop, or by default for a model
    trained with --partition records, samples are records: each ends at a stop string (the
    model's delimiter), and they are printed one per line as each ends.
    """
    from charrnn import console as con
    from charrnn.checkpoint import load_model, record_delimiter
    from charrnn.generate import Sampling
    from charrnn.generate import generate as sample
    from charrnn.model import resolve_device
    from charrnn.records import unescape
    from charrnn.threads import make_chooser

    if prefix is not None and prefix_file is not None:
        raise UsageError("give --prefix or --prefix-file, not both")
    if length < 0:
        raise UsageError(f"--length must be >= 0, got {length}")
    if num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1, got {num_samples}")
    sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy)
    stops = tuple(unescape(s, "--stop") for s in stop)
    if beam is not None and beam < 1:
        raise UsageError(f"--beam must be >= 1, got {beam}")
    text = common.read_prefix(prefix, prefix_file, encoding)
    dev = resolve_device(device)
    chooser = make_chooser(threads, dev)
    model, vocab, ckpt = load_model(model_path, dev)
    prefix_ids = vocab.encode(text, unk=unk, where="the prefix")  # type: ignore[arg-type]
    delimiter = record_delimiter(ckpt)
    if not stops and delimiter is not None:
        stops = (delimiter,)  # a records model generates records
        if not min_length and length >= 1 and ctx.get_parameter_source("min_length") == ParameterSource.DEFAULT:
            min_length = 1  # it never saw an empty record: do not end one before its first character
    if min_length and not stops:
        raise UsageError("--min-length needs --stop (or a model trained with --partition records)")
    if novel and not stops:
        raise UsageError("--novel needs --stop (or a model trained with --partition records)")
    if stops or beam is not None:
        if length < 1 and beam is None and not stop:  # the stop string is the model's delimiter, not an option
            raise UsageError(f"--length must be >= 1 for a model trained with --partition records (it generates "
                             f"records, each at most -n characters), got {length}")
        _generate_records(model, vocab, ckpt, text, prefix_ids, stops, length=length, min_length=min_length,
                          sampling=sampling, seed=seed, num_samples=num_samples, echo=not no_echo, novel=novel,
                          beam=beam, as_json=as_json, threads=chooser)
        return
    if seed is None:
        seed = secrets.randbelow(2**31)
        con.info(con.make_console(), f"seed {seed}")
    stream = sample(model, vocab, prefix_ids, length, sampling, seed=seed, num_samples=num_samples, threads=chooser)
    echo = "" if no_echo else text
    if as_json or num_samples > 1:
        texts = ["".join(chars) for chars in zip(*stream, strict=True)] if length else [""] * num_samples
        texts = [echo + t for t in texts]
        if as_json:
            json_out({**({"samples": texts} if num_samples > 1 else {"text": texts[0]}), "seed": seed,
                      "threads": chooser.threads})
        else:
            click.echo("\n\n".join(texts))
        return
    out = sys.stdout
    interactive = out.isatty()
    out.write(echo)
    for chars in stream:
        out.write(chars[0])
        if interactive or chars[0] == "\n":
            out.flush()
    out.write("\n")
    out.flush()


def _generate_records(model: Any, vocab: Any, ckpt: dict, text: str, prefix_ids: Any, stops: tuple[str, ...], *,
                      length: int, min_length: int, sampling: Any, seed: int | None, num_samples: int, echo: bool,
                      novel: bool, beam: int | None, as_json: bool, threads: Any = None) -> None:
    """Records: samples that end at a stop string, one per line as each ends; or beam search.

    A sample begins from the record-start state: after the model's delimiter for a records model,
    else, without a prefix, after the first stop string when the model knows it.
    """
    import numpy as np

    from charrnn import console as con
    from charrnn.checkpoint import record_delimiter
    from charrnn.generate import Stops, beam_search, generate_samples
    from charrnn.records import contains

    console = con.make_console()
    start = record_delimiter(ckpt)
    if start is None and not text and stops and all(c in vocab.chars for c in stops[0]):
        start = stops[0]
    # Both in the vocabulary's dtype (1 to 4 bytes per character): the prefix may be megabytes long.
    context = np.concatenate([vocab.encode(start), prefix_ids]) if start else prefix_ids
    shown = text if echo else ""
    stop_rule = Stops(stops, max_length=length, min_length=min_length) if stops else None
    accept = None
    dropped: list[str] = []
    if novel:
        hashes = ckpt.get("record_hashes")
        if hashes is None and ckpt.get("exported_as"):
            raise UsageError(f"--novel needs the hashes of the training records, which an exported model "
                             f"({ckpt['exported_as']}) does not keep: use its checkpoint")
        if hashes is None:
            raise UsageError("--novel needs a model trained with --partition records (this checkpoint keeps no "
                             "hashes of its training records)")
        known = hashes.numpy()
        if not ckpt.get("record_hashes_complete", True):
            con.info(console, f"note: the checkpoint keeps the hashes of {len(known):,} training records, not all: "
                              "a copy of another one is not recognised")

        def accept(sample: str) -> bool:
            return not contains(known, text + sample)

    if beam is not None:
        # Beam search does not sample: refuse only what would change sampling (--temperature 1 and
        # --top-p 1 are the model's own distribution, as the defaults are).
        if not sampling.plain:
            raise UsageError("--beam is deterministic: --temperature (other than 1), --top-k, --top-p (below 1) "
                             "and --greedy do not apply")
        results = beam_search(model, vocab, context, beam, length, stop_rule, num_results=num_samples,
                              accept=accept, on_rejected=dropped.append)
        if as_json:
            json_out({"beam": beam, "results": [{**r.to_dict(), "text": shown + r.text} for r in results],
                      **({"dropped": len(dropped)} if novel else {})})
        else:
            for r in results:
                click.echo(shown + r.text)
        if novel:
            con.info(console, f"dropped {len(dropped)} continuation(s) that copied a training record")
        return
    assert stop_rule is not None
    if seed is None:
        seed = secrets.randbelow(2**31)
        con.info(console, f"seed {seed}")
    samples = generate_samples(model, vocab, context, stop_rule, sampling, seed=seed, num_samples=num_samples,
                               accept=accept, on_rejected=dropped.append, threads=threads)
    if as_json:
        texts = [shown + s for s in samples]
        json_out({"samples": texts, "seed": seed, **({"dropped": len(dropped)} if novel else {})})
    else:
        out = sys.stdout
        for sample in samples:
            out.write(shown + sample + "\n")
            out.flush()
    if novel:
        con.info(console, f"dropped {len(dropped)} sample(s) that copied a training record")
