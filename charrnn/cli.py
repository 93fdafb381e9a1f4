"""The command-line shell around the core. The only module that imports click.

Contract: stdout carries data (generated text, results, --json); progress, logs and warnings go
to stderr. A domain error becomes one line on stderr and exit code 1 (run time) or 2 (usage).
torch is imported inside the commands, never at module level, so `charrnn --help` is instant.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import secrets
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from charrnn import __version__
from charrnn.errors import CharrnnError, UsageError

CELLS = ["rnn", "gru", "lstm", "scratch-rnn", "scratch-gru", "scratch-lstm"]
ARCH_DEFAULTS = {"cell": "lstm", "layers": 2, "hidden": 256, "dropout": 0.0, "input": "embedding", "embed_dim": 64}
DEFAULT_TIME_BUDGET = 300.0
DEFAULT_VAL_MAX_CHARS = 250_000
ONEHOT_WARN_VOCAB = 1024
PRESET_NAMES = ["tiny", "small", "medium", "large"]  # charrnn.train.PRESETS (kept here: no torch at import)


class CharrnnGroup(click.Group):
    """Turns domain errors, Ctrl-C and a closed stdout pipe into clean exits."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CharrnnError as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("Aborted.", err=True)
            ctx.exit(130)
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly, and keep Python from complaining
            # about the unflushed stdout at exit.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(0)


def _stdin() -> Any:
    return getattr(sys.stdin, "buffer", sys.stdin)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
    except OSError:
        return False


def _json_out(obj: dict) -> None:
    click.echo(json.dumps(obj, ensure_ascii=False, allow_nan=False, default=str))


def _num(x: float | None, fmt: str = ".4f") -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x, fmt)


device_option = click.option("--device", default="auto", show_default=True,
                             help="auto, cpu, cuda, cuda:N or mps (auto picks a GPU when there is one).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout instead of text.")
encoding_option = click.option("--encoding", default="utf-8", show_default=True, help="Text encoding of the input.")
model_option = click.option("-m", "--model", "model_path", required=True, type=click.Path(dir_okay=False),
                            help="Checkpoint written by `charrnn train`.")


@click.group(cls=CharrnnGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="charrnn")
def cli() -> None:
    """Character-level language models with recurrent networks.

    \b
    charrnn train corpus.txt -o model.pt        train (or: cat *.txt | charrnn train - -o model.pt)
    charrnn eval perplexity -m model.pt FILE    perplexity and bits per character of held-out text
    charrnn generate -m model.pt --prefix TEXT  sample text, streamed to stdout
    charrnn info -m model.pt                    what a checkpoint holds
    charrnn corpus list                         corpora known by name (fetched and verified on first use)

    stdout carries only data; progress and messages go to stderr. `-` means stdin.
    """


@cli.command()
@click.argument("corpus", nargs=-1)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Checkpoint to write (the last state); the best by validation goes to NAME.best.pt.")
@click.option("--resume", type=click.Path(dir_okay=False), help="Continue training from this checkpoint.")
@encoding_option
@click.option("--val-fraction", default=0.1, show_default=True, help="Tail of the text held out for validation.")
@click.option("--val-max-chars", default=DEFAULT_VAL_MAX_CHARS, show_default=True,
              help="At most this many characters held out (keeps validation quick on huge corpora).")
@click.option("--no-cache", is_flag=True, help="Neither read nor write the encoded-corpus cache.")
@click.option("--min-freq", default=1, show_default=True, help="Characters seen fewer times map to <unk>.")
@click.option("--preset", type=click.Choice(PRESET_NAMES), default=None,
              help="A model size with the batch and learning rate that suit it: tiny (1x128), small (2x256, "
                   "the default), medium (2x512), large (3x1024, for GPUs); other options override it.")
@click.option("--cell", type=click.Choice(CELLS), default=ARCH_DEFAULTS["cell"], show_default=True,
              help="Recurrent cell; scratch-* are written from the equations (slow, for study).")
@click.option("--layers", default=ARCH_DEFAULTS["layers"], show_default=True)
@click.option("--hidden", default=ARCH_DEFAULTS["hidden"], show_default=True, help="Hidden units per layer.")
@click.option("--dropout", default=ARCH_DEFAULTS["dropout"], show_default=True)
@click.option("--input", "input_", type=click.Choice(["onehot", "embedding"]), default=ARCH_DEFAULTS["input"],
              show_default=True, help="One-hot vectors, or the equivalent lookup in a learned table.")
@click.option("--embed-dim", default=ARCH_DEFAULTS["embed_dim"], show_default=True, help="Width of the embedding.")
@click.option("--partition", type=click.Choice(["sequential", "random"]), default="sequential", show_default=True,
              help="sequential: carry the state across minibatches; random: fresh state per minibatch.")
@click.option("-b", "--batch-size", default=32, show_default=True)
@click.option("-t", "--num-steps", default=64, show_default=True, help="Characters per sequence (BPTT length).")
@click.option("--warmup", default=0, show_default=True,
              help="With --partition random: characters before each sequence that only build the state.")
@click.option("--optimizer", type=click.Choice(["adam", "adamw", "sgd"]), default="adam", show_default=True)
@click.option("--lr", default=3e-3, show_default=True, help="Learning rate.")
@click.option("--weight-decay", default=0.0, show_default=True)
@click.option("--schedule", type=click.Choice(["cosine", "constant"]), default="cosine", show_default=True,
              help="cosine decays the learning rate to 10% over the run.")
@click.option("--clip", default=1.0, show_default=True, help="Clip gradients to this global L2 norm (0: off).")
@click.option("--epochs", type=int, help="Stop after this many passes over the text.")
@click.option("--max-steps", type=int, help="Stop after this many minibatches.")
@click.option("--time-budget", type=float,
              help=f"Stop after this many seconds (default {DEFAULT_TIME_BUDGET:g} when no stopping rule is given).")
@click.option("--val-every", default=200, show_default=True, help="Validate every N steps.")
@click.option("--save-every", type=int, help="Save the checkpoint every N steps (default: at each validation).")
@click.option("--seed", default=0, show_default=True)
@device_option
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="bf16: run the forward pass in bfloat16 autocast (faster on recent GPUs; weights stay fp32).")
@json_option
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
@click.pass_context
def train(ctx: click.Context, corpus: tuple[str, ...], output: str, resume: str | None, encoding: str,
          val_fraction: float, val_max_chars: int | None, no_cache: bool, min_freq: int, input_: str,
          preset: str | None, as_json: bool, quiet: bool, device: str,
          **opts: Any) -> None:
    """Train a model on CORPUS: a text file, `-` for stdin, `pydoc` (built in, the default) or a
    catalog corpus name (`charrnn corpus list`; fetched and verified on first use). Several
    CORPUS arguments, and folders (every file below, sorted by path), are joined in that order.

    A corpus with official splits (ptb-char) trains on its train part and validates on its valid
    part; anything else holds out the last --val-fraction for validation.

    Progress goes to stderr; a summary line (or --json) to stdout. Ctrl-C saves a resumable
    checkpoint. Stopping: whichever of --epochs, --max-steps, --time-budget comes first.
    """
    from charrnn import checkpoint
    from charrnn import console as con
    from charrnn.cache import encode_corpus
    from charrnn.corpora import catalog_entry, expand_sources, training_parts
    from charrnn.data import split_train_val
    from charrnn.model import ModelConfig, resolve_device
    from charrnn.train import PRESETS, TrainConfig
    from charrnn.train import train as run_training
    from charrnn.vocab import Vocab

    def given(name: str) -> bool:
        """Set on the command line (`input` is the parameter `input_`)."""
        param = "input_" if name == "input" else name
        return ctx.get_parameter_source(param) not in (ParameterSource.DEFAULT, None)

    opts["input"] = input_
    preset_values = PRESETS[preset] if preset is not None else {}

    def chosen(name: str) -> bool:
        """Set on the command line, directly or through --preset."""
        return given(name) or name in preset_values

    for name, value in preset_values.items():
        if not given(name):
            opts[name] = value
    out = Path(output)
    sources = list(corpus) or ["pydoc"]
    for source in expand_sources(sources):
        if source != "-" and (_same_file(source, output) or Path(source).resolve() == out.resolve()):
            raise UsageError(f"output {output!r} is an input corpus; choose another output path")
    checkpoint.check_writable(out)
    if val_max_chars < 2:
        raise UsageError(f"--val-max-chars must be >= 2, got {val_max_chars}")
    console = con.make_console(quiet)
    dev = resolve_device(device)
    entry = catalog_entry(sources[0]) if len(sources) == 1 else None
    official = entry is not None and entry.has_splits
    if official and given("val_fraction"):
        raise UsageError(f"{sources[0]} has an official validation split, so --val-fraction does not apply")
    train_parts, valid_parts = training_parts(sources, _stdin(), callbacks=con.DownloadConsole(console))

    arch_names = list(ARCH_DEFAULTS)
    internal = ("val_fraction", "val_max_chars", "eval_streams", "log_every")
    train_names = [f for f in TrainConfig.__dataclass_fields__ if f not in internal]
    ckpt = None
    if resume:
        ckpt = checkpoint.load(resume)
        saved_arch = ckpt["model_config"]
        for name in arch_names:
            if chosen(name) and opts[name] != saved_arch[name]:
                raise UsageError(f"--{name.replace('_', '-')} {opts[name]} differs from the checkpoint's "
                                 f"{saved_arch[name]}: the architecture cannot change on resume")
        # Options added after a checkpoint was written take their defaults (val_max_chars: None, no cap).
        saved_train = {**{f.name: f.default for f in dataclasses.fields(TrainConfig)}, **ckpt["train_config"]}
        changes = []
        for name in train_names:
            if name in opts and chosen(name):
                if opts[name] != saved_train.get(name):
                    changes.append(f"--{name.replace('_', '-')} {saved_train.get(name)} -> {opts[name]}")
            elif name in opts:
                opts[name] = saved_train.get(name)
        if not official and given("val_fraction") and val_fraction != saved_train["val_fraction"]:
            raise UsageError("--val-fraction cannot change on resume (it changes the training text)")
        val_fraction = saved_train["val_fraction"]
        if not official and given("val_max_chars") and val_max_chars != saved_train.get("val_max_chars"):
            raise UsageError("--val-max-chars cannot change on resume (it changes the training text)")
        val_max_chars = saved_train.get("val_max_chars")  # None in checkpoints older than the option
        vocab = Vocab.from_dict(ckpt["vocab"])
        encoded = encode_corpus(train_parts, encoding, vocab=vocab, unk="map" if vocab.unk else "error",
                                cache=not no_cache)
        con.info(console, f"resuming from {resume} at step {ckpt['step']}"
                 + (f"; changed: {', '.join(changes)}" if changes else ""))
        model_config = ModelConfig.from_dict(saved_arch)
    else:
        if min_freq < 1:
            raise UsageError(f"--min-freq must be >= 1, got {min_freq}")
        encoded = encode_corpus(train_parts, encoding, min_freq=min_freq, cache=not no_cache)
        vocab = encoded.vocab
        model_config = ModelConfig(vocab_size=vocab.size, **{n: opts[n] for n in arch_names})
    ids = encoded.ids
    if model_config.input == "onehot" and vocab.size > ONEHOT_WARN_VOCAB:
        con.info(console, f"warning: --input onehot with {vocab.size:,} characters builds inputs of shape "
                          f"(batch, time, {vocab.size:,}) and multiplies them out: slow; --input embedding is a lookup")
    if encoded.ids_cached:
        con.info(console, f"read the encoded corpus ({len(ids):,} characters) from the cache: {encoded.path}")
    elif encoded.path is not None:
        con.info(console, f"encoded the corpus ({len(ids):,} characters) into the cache: {encoded.path}")
    if all(opts[n] is None for n in ("epochs", "max_steps", "time_budget")):
        opts["time_budget"] = DEFAULT_TIME_BUDGET
        con.info(console, f"no stopping rule given: training for {DEFAULT_TIME_BUDGET:g} seconds (--time-budget)")
    if official:
        # The official valid part is encoded with the training vocabulary; characters it lacks
        # become <unk> (not scored), as in `eval perplexity`.
        train_ids, val_fraction = ids, 0.0
        val_ids = ids[:0] if valid_parts is None else encode_corpus(
            valid_parts, encoding, vocab=vocab, unk="map" if vocab.unk else "error",
            where=f"the {sources[0]} validation text", cache=not no_cache).ids
    else:
        train_ids, val_ids = split_train_val(ids, val_fraction, max_chars=val_max_chars)
    # Standard input's bytes live in its part: let them go before training (the ids are all it needs).
    train_parts = valid_parts = None
    config = TrainConfig(val_fraction=val_fraction, val_max_chars=val_max_chars,
                         **{n: opts[n] for n in train_names})
    callbacks = con.TrainConsole(console)
    try:
        with _stop_on_signals(callbacks):
            result = run_training(train_ids, val_ids, vocab, model_config, config, out, device=dev,
                                  callbacks=callbacks, resume=ckpt)
    finally:
        callbacks.close()
    if as_json:
        _json_out(result.to_dict())
    else:
        click.echo(f"trained {result.steps} steps in {result.seconds:.1f} s ({result.chars_per_second:,.0f} chars/s): "
                   f"train loss {_num(result.train_loss)}, validation loss {_num(result.val_loss)} nats/char, "
                   f"perplexity {_num(result.val_perplexity, '.3f')}, {_num(result.val_bits_per_char)} bits/char; "
                   f"saved {result.checkpoint}" + (f" and {result.best_checkpoint}" if result.best_checkpoint else ""))


@contextlib.contextmanager
def _stop_on_signals(callbacks: Any) -> Iterator[None]:
    """SIGINT/SIGTERM ask training to save and stop after the current step (callbacks.stop_code);
    a second signal exits at once. Saves are atomic, so that never damages the last checkpoint."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        code = 143 if signum == signal.SIGTERM else 130
        if callbacks.stop_code is not None:
            os.write(2, b"\nstopped at once; the last saved checkpoint is intact\n")
            os._exit(code)
        callbacks.stop_code = code
        os.write(2, b"\nstopping after this step and saving (press Ctrl-C again to quit at once)\n")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@cli.group(name="eval")
def eval_group() -> None:
    """Measure a model on text."""


@eval_group.command()
@model_option
@click.argument("text", default="-")
@encoding_option
@click.option("--unk", type=click.Choice(["map", "error"]), default="map", show_default=True,
              help="Characters the model does not know: skip them as targets (map) or fail (error).")
@click.option("--streams", default=64, show_default=True,
              help="Score the text as this many contiguous pieces side by side, each carrying its own state "
                   "(faster); 1 scores it as one sequence.")
@click.option("-t", "--num-steps", default=256, show_default=True, help="Characters per forward call.")
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
    from charrnn.evaluate import evaluate
    from charrnn.model import resolve_device

    if streams < 1 or num_steps < 1:
        raise UsageError("--streams and --num-steps must be >= 1")
    entry = catalog_entry(text)
    if split is None and entry is not None and entry.has_splits:
        raise UsageError(f"{text} has official splits: choose the part to score with --split test, valid or train")
    model, vocab, _ = load_model(model_path, resolve_device(device))
    fetching = con.DownloadConsole(con.make_console())
    parts = [part_of(text, split, callbacks=fetching)] if split is not None else source_parts(text, _stdin(),
                                                                                              callbacks=fetching)
    # Streamed and encoded chunk by chunk: memory is the ids (1 to 4 bytes per character), not the text.
    ids = encode_corpus(parts, encoding, vocab=vocab, unk=unk, where="the text", cache=False).ids  # type: ignore[arg-type]
    result = evaluate(model, ids, unk_id=vocab.unk_id, streams=streams, num_steps=num_steps)
    if as_json:
        _json_out(result.to_dict())
    else:
        click.echo(f"perplexity {result.perplexity:.4f}\nnats/char {result.nats_per_char:.4f}\n"
                   f"bits/char {result.bits_per_char:.4f}\nchars {result.chars}\nunknown {result.unknown}")


@cli.command()
@model_option
@click.option("-p", "--prefix", default=None, help="Text to start from (warms up the state).")
@click.option("--prefix-file", type=str, default=None, help="Read the prefix from a file, or `-` for stdin.")
@encoding_option
@click.option("-n", "--length", default=500, show_default=True, help="Characters to generate (after the prefix).")
@click.option("--temperature", default=1.0, show_default=True, help="Below 1: safer; above 1: wilder.")
@click.option("--top-k", type=int, default=None, help="Sample only from the k likeliest characters.")
@click.option("--top-p", type=float, default=None, help="Sample from the smallest set with this much probability.")
@click.option("--greedy", is_flag=True, help="Always take the likeliest character.")
@click.option("--seed", type=int, default=None, help="Same seed, same text (default: random, shown on stderr).")
@click.option("--num-samples", default=1, show_default=True, help="Independent samples, generated side by side.")
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
        text = read_text(prefix_file, encoding, _stdin())
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
            _json_out({"samples": texts, "seed": seed} if num_samples > 1 else {"text": texts[0], "seed": seed})
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


@cli.command(name="info")
@model_option
@json_option
def info_cmd(model_path: str, as_json: bool) -> None:
    """What a checkpoint holds: architecture, vocabulary, training progress."""
    from charrnn.checkpoint import load

    ckpt = load(model_path)
    vocab = ckpt["vocab"]
    summary = {
        "format_version": ckpt["version"], "charrnn_version": ckpt.get("charrnn_version"),
        "model": ckpt["model_config"], "parameters": sum(t.numel() for t in ckpt["weights"].values()),
        "vocab_size": len(vocab["chars"]) + int(vocab["unk"]), "step": ckpt.get("step"),
        "epoch": ckpt.get("epoch"), "val_loss": ckpt.get("val_loss"), "best_val_loss": ckpt.get("best_val_loss"),
        "train": ckpt.get("train_config"), "training_chars": (ckpt.get("data") or {}).get("chars"),
    }
    if as_json:
        _json_out(summary)
        return
    m = summary["model"]
    click.echo(f"{m['cell']} {m['layers']}x{m['hidden']}, {m['input']} input, {summary['parameters']:,} parameters, "
               f"vocabulary {summary['vocab_size']}")
    click.echo(f"step {summary['step']}, validation loss {_num(summary['val_loss'])} nats/char "
               f"(best {_num(summary['best_val_loss'])}), trained on {summary['training_chars']} characters")


@cli.group(name="corpus")
def corpus_group() -> None:
    """Corpora known by name: list them, show their facts, fetch verified copies.

    \b
    Local copies are looked for in the folders of CHARRNN_CORPORA, then in the cache
    ($CHARRNN_HOME/corpora, else $XDG_CACHE_HOME/charrnn/corpora, else ~/.cache/charrnn/corpora);
    otherwise they are downloaded (from $CHARRNN_CORPUS_URL_BASE/<path> when that is set)
    and checked against the catalog's size and SHA-256 before use.
    """


def _size(entry: Any) -> str:
    if entry.builtin:
        return "built in"
    n = entry.size
    human = f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"
    return human + (" zip" if any(f.format == "zip" for f in entry.files) else "")


@corpus_group.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print the catalog entries as one JSON list.")
def corpus_list(as_json: bool) -> None:
    """The corpora known by name: name, size, description."""
    from charrnn.catalog import load_catalog

    entries = list(load_catalog().values())
    if as_json:
        click.echo(json.dumps([e.to_dict() for e in entries], ensure_ascii=False))
        return
    width = max([len("name"), *(len(e.name) for e in entries)])
    click.echo(f"{'name':<{width}}  {'size':>11}  description")
    for e in entries:
        click.echo(f"{e.name:<{width}}  {_size(e):>11}  {e.description}")


@corpus_group.command(name="info")
@click.argument("name")
@json_option
def corpus_info(name: str, as_json: bool) -> None:
    """Facts of corpus NAME: description, files (URL, bytes, SHA-256), licence, split."""
    from charrnn.catalog import get_entry

    entry = get_entry(name)
    if as_json:
        _json_out(entry.to_dict())
        return
    click.echo(f"{entry.name}: {entry.description}")
    click.echo(f"size: {_size(entry)}" + ("" if entry.builtin else f" ({entry.size:,} bytes)"))
    click.echo(f"licence: {entry.licence}")
    click.echo(f"split: {entry.split}")
    if entry.source:
        click.echo(f"source: {entry.source}")
    for f in entry.files:
        click.echo(f"file {f.role}: {f.path}, {f.bytes:,} bytes, sha256 {f.sha256 or 'unknown (cannot be verified)'}"
                   + (f", {f.format} archive of {f.member}" if f.format != "text" else ""))
        click.echo(f"  url: {f.url}")


def _fetch_paths(name: str) -> list[Path]:
    from charrnn import console as con
    from charrnn.catalog import fetch

    return list(fetch(name, callbacks=con.DownloadConsole(con.make_console())).values())


@corpus_group.command(name="fetch")
@click.argument("name")
def corpus_fetch(name: str) -> None:
    """Download corpus NAME into the cache (unless a verified copy exists) and print its path(s).

    Every file is checked against the catalog's size and SHA-256; a failed or corrupt download
    leaves nothing behind. Progress goes to stderr, the path(s) to stdout, one per line.
    """
    for path in _fetch_paths(name):
        click.echo(str(path))


@corpus_group.command(name="path")
@click.argument("name")
def corpus_path(name: str) -> None:
    """Print the local path(s) of corpus NAME, one per line (train, valid, test order), fetching
    it first if needed: `wc -c $(charrnn corpus path tinyshakespeare)`."""
    for path in _fetch_paths(name):
        click.echo(str(path))


def main() -> None:
    cli(prog_name="charrnn")
