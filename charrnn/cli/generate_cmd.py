"""`charrnn generate`: sample text from a model, streamed to stdout."""

from __future__ import annotations

import secrets
import sys

import click

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
@device_option
@json_option
def generate(model_path: str, prefix: str | None, prefix_file: str | None, encoding: str, length: int,
             temperature: float, top_k: int | None, top_p: float | None, greedy: bool, seed: int | None,
             num_samples: int, no_echo: bool, unk: str, device: str, as_json: bool) -> None:
    """Generate text from MODEL, streamed to stdout as it is sampled.

    With --num-samples N > 1 the samples are generated together and printed one after another,
    separated by a blank line (or as a list with --json).
    """
    from charrnn import console as con
    from charrnn.checkpoint import load_model
    from charrnn.corpora import read_text
    from charrnn.generate import Sampling
    from charrnn.generate import generate as sample
    from charrnn.model import resolve_device

    if prefix is not None and prefix_file is not None:
        raise UsageError("give --prefix or --prefix-file, not both")
    if length < 0:
        raise UsageError(f"--length must be >= 0, got {length}")
    if num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1, got {num_samples}")
    sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy)
    text = prefix or ""
    if prefix_file is not None:
        text = read_text(prefix_file, encoding, common.stdin())
    model, vocab, _ = load_model(model_path, resolve_device(device))
    prefix_ids = vocab.encode(text, unk=unk, where="the prefix")  # type: ignore[arg-type]
    if seed is None:
        seed = secrets.randbelow(2**31)
        con.info(con.make_console(), f"seed {seed}")
    stream = sample(model, vocab, prefix_ids, length, sampling, seed=seed, num_samples=num_samples)
    echo = "" if no_echo else text
    if as_json or num_samples > 1:
        texts = ["".join(chars) for chars in zip(*stream, strict=True)] if length else [""] * num_samples
        texts = [echo + t for t in texts]
        if as_json:
            json_out({"samples": texts, "seed": seed} if num_samples > 1 else {"text": texts[0], "seed": seed})
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
