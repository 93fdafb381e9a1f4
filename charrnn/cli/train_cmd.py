"""`charrnn train`: options, presets, resume rules, and the signals that stop a run cleanly."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from charrnn.cli import common
from charrnn.cli.common import (
    ARCH_DEFAULTS,
    AVERAGES,
    CELLS,
    DEFAULT_EMA_DECAY,
    DEFAULT_TAIL,
    DEFAULT_TIME_BUDGET,
    DEFAULT_VAL_MAX_CHARS,
    MAX_LAYERS,
    MAX_WIDTH,
    ONEHOT_WARN_VOCAB,
    PRESET_NAMES,
    SEED,
    Finite,
    IntRange,
    device_option,
    encoding_option,
    json_option,
    json_out,
    num,
    positive_int,
    threads_option,
)
from charrnn.cli.train_from import check_architecture, fine_tune_vocab, resume_options
from charrnn.data.labels import DEFAULT_LABEL_MODE, LABEL_MODES
from charrnn.errors import CharrnnError, DataError, Interrupted, PeerLost, UsageError

if TYPE_CHECKING:
    from charrnn.training.distributed import Group  # imports torch: only for the type checker


class ArgvCommand(click.Command):
    """Keeps the command's own arguments (ctx.meta["argv"]): `--nproc` passes them on to its processes."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["argv"] = list(args)
        return super().parse_args(ctx, args)


def without_nproc(argv: list[str]) -> list[str]:
    """`argv` less `--nproc N` / `--nproc=N` (the processes it launches run the rest)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


@click.command(cls=ArgvCommand)
@click.argument("corpus", nargs=-1)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Checkpoint to write (the last state); the best by validation goes to NAME.best.pt.")
@click.option("--resume", type=click.Path(dir_okay=False), help="Continue training from this checkpoint.")
@click.option("--init-from", type=click.Path(dir_okay=False),
              help="Fine-tune: start from this checkpoint's weights and architecture, with a fresh optimizer, "
                   "schedule and step count.")
@click.option("--keep-vocab", is_flag=True,
              help="With --init-from: read characters the base model lacks as <unk> instead of adding them.")
@encoding_option
@click.option("--val-fraction", default=0.1, type=Finite(0, 1, high_open=True), show_default=True,
              help="Tail of the text held out for validation.")
@click.option("--val-max-chars", default=DEFAULT_VAL_MAX_CHARS, type=IntRange(min=2), show_default=True,
              help="At most this many characters held out (keeps validation quick on huge corpora).")
@click.option("--no-cache", is_flag=True, help="Neither read nor write the encoded-corpus cache.")
@click.option("--min-freq", default=1, type=positive_int(), show_default=True,
              help="Characters seen fewer times map to <unk>.")
@click.option("--preset", type=click.Choice(PRESET_NAMES), default=None,
              help="A model size with the batch and learning rate that suit it: tiny (1x128), small (the default: "
                   "1x384; in bf16 1x512 with AdamW weight decay 0.1, dropout 0.1 and --average ema), medium "
                   "(2x512), large (3x1024, for GPUs); other options override it.")
@click.option("--cell", type=click.Choice(CELLS), default=ARCH_DEFAULTS["cell"], show_default=True,
              help="Recurrent cell; scratch-* are written from the equations (slow, for study).")
@click.option("--layers", default=ARCH_DEFAULTS["layers"], type=IntRange(1, MAX_LAYERS), show_default=True)
@click.option("--hidden", default=ARCH_DEFAULTS["hidden"], type=IntRange(1, MAX_WIDTH), show_default=True,
              help="Hidden units per layer (512 in bf16: see --preset).")
@click.option("--dropout", default=ARCH_DEFAULTS["dropout"], type=Finite(0, 1, high_open=True), show_default=True,
              help="Dropout between layers and before the output layer.")
@click.option("--weight-drop", default=ARCH_DEFAULTS["weight_drop"], type=Finite(0, 1, high_open=True),
              show_default=True, help="DropConnect on the recurrent weight matrices, one mask per minibatch.")
@click.option("--embed-dropout", default=ARCH_DEFAULTS["embed_dropout"], type=Finite(0, 1, high_open=True),
              show_default=True, help="Drop whole characters from a minibatch's input (per vocabulary entry).")
@click.option("--input", "input_", type=click.Choice(["onehot", "embedding"]), default=ARCH_DEFAULTS["input"],
              show_default=True, help="One-hot vectors, or the equivalent lookup in a learned table.")
@click.option("--embed-dim", default=ARCH_DEFAULTS["embed_dim"], type=IntRange(1, MAX_WIDTH), show_default=True,
              help="Width of the embedding.")
@click.option("--partition", type=click.Choice(["sequential", "random", "records"]), default="sequential",
              show_default=True, help="sequential: carry the state across minibatches; random: fresh state per "
                                      "minibatch; records: every record (line) an independent sequence.")
@click.option("--delimiter", default="\\n", show_default=True,
              help="With --partition records: what ends a record, with backslash escapes ('\\0', '\\n\\n').")
@click.option("--labels", is_flag=True,
              help="With --partition records: each record is LABEL<TAB>TEXT, and the model is conditioned on its "
                   "label (generate --label, eval classify).")
@click.option("--label-mode", type=click.Choice(LABEL_MODES), default=DEFAULT_LABEL_MODE, show_default=True,
              help="How the label enters the model: added to the input at every step, or as the initial state.")
@click.option("-b", "--batch-size", default=32, type=positive_int(), show_default=True)
@click.option("-t", "--num-steps", default=64, type=positive_int(), show_default=True,
              help="Characters per sequence (BPTT length).")
@click.option("--warmup", default=0, type=IntRange(min=0), show_default=True,
              help="With --partition random: characters before each sequence that only build the state.")
@click.option("--optimizer", type=click.Choice(["adam", "adamw", "sgd"]), default="adam", show_default=True)
@click.option("--lr", default=5e-3, type=Finite(0, low_open=True), show_default=True, help="Learning rate.")
@click.option("--weight-decay", default=0.0, type=Finite(0), show_default=True)
@click.option("--schedule", type=click.Choice(["cosine", "constant"]), default="cosine", show_default=True,
              help="cosine decays the learning rate to 10% over the run.")
@click.option("--clip", default=1.0, type=Finite(0), show_default=True,
              help="Clip gradients to this global L2 norm (0: off).")
@click.option("--average", type=click.Choice(AVERAGES), default="none", show_default=True,
              help="Average the weights during training, validate the average beside them and keep the better: "
                   "ema (an exponential moving average) or tail (the mean over the last --average-tail of the run).")
@click.option("--ema-decay", default=DEFAULT_EMA_DECAY, type=Finite(0, 1, low_open=True, high_open=True),
              show_default=True, help="With --average ema: the weight of the average so far at each step.")
@click.option("--average-tail", default=DEFAULT_TAIL, type=Finite(0, 1, low_open=True), show_default=True,
              help="With --average tail: the last share of the run averaged.")
@click.option("--epochs", type=positive_int(), help="Stop after this many passes over the text.")
@click.option("--max-steps", type=positive_int(), help="Stop after this many minibatches.")
@click.option("--time-budget", type=Finite(0, low_open=True),
              help=f"Stop after this many seconds (default {DEFAULT_TIME_BUDGET:g} when no stopping rule is given).")
@click.option("--val-every", default=200, type=positive_int(), show_default=True, help="Validate every N steps.")
@click.option("--val-share", default=0.1, type=Finite(0, 1, low_open=True), show_default=True,
              help="At most this share of the time goes to validation: a validation due by --val-every waits "
                   "for a later one while the last took longer than that (1: every --val-every steps).")
@click.option("--save-every", type=positive_int(),
              help="Save the checkpoint every N steps (default: at each validation).")
@click.option("--patience", type=positive_int(),
              help="Stop after N validations in a row without a new best (the best checkpoint is kept).")
@click.option("--seed", default=0, type=SEED, show_default=True)
@device_option
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="bf16: the forward pass in bfloat16 autocast (weights, optimizer and loss stay fp32); "
                   "auto: bf16 where the device has native bfloat16 (AVX512-BF16/AMX CPUs, recent GPUs), else fp32.")
@threads_option
@json_option
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
@click.option("--nproc", type=int, default=None,
              help="Train data-parallel in N processes on this machine (PyTorch DDP, launched like torchrun); "
                   "--batch-size is the global minibatch and must divide by N.")
@click.pass_context
def train(ctx: click.Context, corpus: tuple[str, ...], output: str, resume: str | None, init_from: str | None,
          keep_vocab: bool, encoding: str,
          val_fraction: float, val_max_chars: int | None, no_cache: bool, min_freq: int, input_: str,
          preset: str | None, as_json: bool, quiet: bool, device: str, nproc: int | None,
          **opts: Any) -> None:
    """Train a model on CORPUS: a text file, `-` for stdin, `pydoc` (built in, the default) or a
    catalog corpus name (`charrnn corpus list`; fetched and verified on first use). Several
    CORPUS arguments, and folders (every file below, sorted by path), are joined in that order.

    A corpus with official splits (ptb-char) trains on its train part and validates on its valid
    part; anything else holds out the last --val-fraction for validation.

    Progress goes to stderr; a summary line (or --json) to stdout. Ctrl-C saves a resumable
    checkpoint. Stopping: whichever of --epochs, --max-steps, --time-budget, --patience comes first.
    The history (losses, learning rate, speed) is appended live to NAME.log.jsonl beside NAME
    (model.pt -> model.pt.log.jsonl).

    --init-from BASE.pt fine-tunes BASE on CORPUS: characters BASE lacks are added to its
    vocabulary (new rows, old rows unchanged) or, with --keep-vocab, read as <unk>.

    Several processes: `--nproc N`, or `torchrun --nproc-per-node N -m charrnn train ...`.
    """
    from charrnn.training import distributed as dd

    group = dd.from_env()
    if nproc is not None:
        if nproc < 1:
            raise UsageError(f"--nproc must be >= 1, got {nproc}")
        if group.active:
            raise UsageError("--nproc launches the processes itself: leave it out under torchrun")
        if nproc > 1:
            # Usage is checked once, here, before any process starts (they would all find the same error).
            _train(ctx, dd.Group(0, nproc, 0, nproc), corpus, output, resume, init_from, keep_vocab, encoding,
                   val_fraction, val_max_chars, no_cache, min_freq, input_, preset, as_json, quiet, device,
                   dict(opts), preflight=True)
            ctx.exit(dd.launch(nproc, without_nproc(ctx.meta["argv"])))
    try:
        _train(ctx, group, corpus, output, resume, init_from, keep_vocab, encoding, val_fraction, val_max_chars,
               no_cache, min_freq, input_, preset, as_json, quiet, device, opts)
    except CharrnnError as e:
        if not group.active:
            raise
        # Started by --nproc: the launcher prints one line for the run (rank 0 says where it saved itself).
        # Under torchrun: every process gets the same inputs and the same averaged gradients, hence the
        # same errors: rank 0 reports them; the others only a lost connection, which may be theirs alone.
        if isinstance(e, Interrupted) or not dd.report_to_launcher(group, e):
            if group.is_main or isinstance(e, PeerLost):
                click.echo(f"Error: {e}", err=True)
        dd.end_process(e.exit_code)
    if group.active:
        dd.end_process(0)


def _train(ctx: click.Context, group: Group, corpus: tuple[str, ...], output: str, resume: str | None,
           init_from: str | None, keep_vocab: bool, encoding: str, val_fraction: float, val_max_chars: int | None,
           no_cache: bool, min_freq: int, input_: str,
           preset: str | None, as_json: bool, quiet: bool, device: str, opts: dict[str, Any],
           preflight: bool = False) -> None:
    """Train, in this process (one of `group`); with `preflight`, only check the usage and the
    corpus arguments (fetching a catalog corpus), for `--nproc` before it starts the processes."""
    from charrnn.config import PRESETS, TrainConfig
    from charrnn.data.cache import encode_corpus
    from charrnn.data.corpora import catalog_entry, expand_sources, training_parts
    from charrnn.data.vocab import Vocab
    from charrnn.display import console as con
    from charrnn.model import checkpoint
    from charrnn.model.network import ModelConfig, resolve_device
    from charrnn.outputs import check_output, run_files
    from charrnn.threads import fixed, make_chooser
    from charrnn.training import distributed as dd
    from charrnn.training.train import train as run_training

    def given(name: str) -> bool:
        """Set on the command line (`input` is the parameter `input_`)."""
        param = "input_" if name == "input" else name
        return ctx.get_parameter_source(param) not in (ParameterSource.DEFAULT, None)

    opts["input"] = input_
    threads = opts.pop("threads")
    with_labels, label_mode = opts.pop("labels"), opts.pop("label_mode")
    preset_values = PRESETS[preset] if preset is not None else {}

    def chosen(name: str) -> bool:
        """Set on the command line, directly or through --preset."""
        return given(name) or name in preset_values

    for name, value in preset_values.items():
        if not given(name):
            opts[name] = value
    out = Path(output)
    if resume and init_from:
        raise UsageError("--resume continues a run and --init-from starts a new one from a model: give one")
    if keep_vocab and not init_from:
        raise UsageError("--keep-vocab only applies with --init-from")
    sources = list(corpus) or ["pydoc"]
    models = [(init_from, "the base model (--init-from)")] if init_from else []
    # A run's checkpoints may be the one it resumes from (it continues them); its log and locks may not.
    resumed = [(resume, "the checkpoint it resumes (--resume)")] if resume else []

    def check_writes(corpus_files: list[str]) -> None:
        reads = [(f, "an input corpus") for f in corpus_files] + models
        for path, what in run_files(output):
            check_output(path, reads + (resumed if what not in ("output", "best checkpoint") else []), what)

    check_writes([s for s in expand_sources(sources) if s != "-"])  # before any read: a bad output costs no stdin
    if val_max_chars < 2:
        raise UsageError(f"--val-max-chars must be >= 2, got {val_max_chars}")
    # -q silences progress and routine information; warnings and notices that change what the run
    # means (a stopping rule chosen for you, unknown characters, nothing to do) are said anyway.
    console = con.make_console(quiet or not group.is_main)  # from rank 0 only
    notices = con.make_console(not group.is_main)
    dev = dd.process_device(group, resolve_device(device))
    if group.active:
        if "-" in sources:
            raise UsageError("several processes cannot share standard input: give the corpus as a file")
        pipes = [s for s in sources if os.path.exists(s) and not os.path.isfile(s) and not os.path.isdir(s)]
        if pipes:  # each process reads the corpus: a pipe would give its text to one of them
            raise UsageError(f"several processes cannot share the pipe {pipes[0]!r}: give the corpus as a file")
        if dev.type == "cpu":
            import torch

            torch.set_num_threads(threads or dd.cpu_threads(group))  # --threads wins over the process's share
    entry = catalog_entry(sources[0]) if len(sources) == 1 else None
    official = entry is not None and entry.has_splits
    if official and given("val_fraction"):
        raise UsageError(f"{sources[0]} has an official validation split, so --val-fraction does not apply")
    if with_labels and (opts["partition"] != "records" or init_from or official):
        raise UsageError("--labels needs --partition records, a corpus without an official validation part, and "
                         "no --init-from" if opts["partition"] == "records" else "--labels needs --partition records")
    if given("label_mode") and not with_labels:
        raise UsageError("--label-mode applies to --labels")
    train_parts, valid_parts = training_parts(sources, common.stdin(), callbacks=con.DownloadConsole(console))
    check_writes([p.path for p in [*train_parts, *(valid_parts or [])] if p.path is not None])  # catalog files now
    if preflight:
        return
    if not resume:  # a resumed run takes the checkpoint's precision unless one is given (resume_options)
        if opts["precision"] == "auto":
            opts["precision"] = _auto_precision(dev, console)
        if preset in (None, "small") and not init_from:
            _small_for_precision(opts, given, console)

    arch_names = list(ARCH_DEFAULTS)
    internal = ("val_fraction", "val_max_chars", "eval_streams", "log_every")
    train_names = [f for f in TrainConfig.__dataclass_fields__ if f not in internal]
    from charrnn.data.records import unescape

    opts["delimiter"] = unescape(opts["delimiter"])
    if given("delimiter") and opts["partition"] != "records" and not resume:
        raise UsageError("--delimiter applies to --partition records")

    def readable(parts: Any) -> Any:
        """Records delimited by NUL (`find -print0`): NUL is then text, not the sign of a binary file."""
        if opts["partition"] == "records" and "\0" in opts["delimiter"]:
            return [dataclasses.replace(p, nul=True) for p in parts]
        return parts
    ckpt = base = None
    if init_from:
        base = checkpoint.load(init_from)
        checkpoint.check_finite(base, init_from)  # refused now, not blamed on the learning rate later
        if base.get("labels") is not None:
            raise UsageError("--init-from a model trained with --labels is not supported yet: train it with --labels "
                             "from scratch, or --resume it")
        check_architecture(opts, chosen, arch_names, base["model_config"],
                           "with --init-from the architecture is the base model's")
    if resume:
        ckpt = checkpoint.load(resume)
        checkpoint.check_resume_fields(ckpt, resume)
        checkpoint.check_finite(ckpt, resume)
        check_architecture(opts, chosen, arch_names, ckpt["model_config"], "the architecture cannot change on resume")
        changes, val_fraction, val_max_chars = resume_options(ckpt, opts, given, chosen, train_names, official,
                                                               val_fraction, val_max_chars)
        vocab = Vocab.from_dict(ckpt["vocab"])
        if with_labels != bool(ckpt.get("labels")):
            raise UsageError("--labels must be given on resume exactly when the run was trained with it")
        encoded = labelled = None
        if with_labels:
            labelled = _read_labelled(readable(train_parts), encoding, opts, vocab, min_freq)
            if labelled.names.names != tuple(ckpt["labels"]["names"]):
                raise DataError("the training text's labels differ from the ones this checkpoint was trained on")
        else:
            encoded = encode_corpus(readable(train_parts), encoding, vocab=vocab,
                                    unk="map" if vocab.unk else "error", cache=not no_cache)
        con.info(notices, f"resuming from {resume} at step {ckpt['step']}"
                 + (f"; changed: {', '.join(changes)}" if changes else ""))
        model_config = ModelConfig.from_dict(ckpt["model_config"])
    elif with_labels:
        encoded, labelled = None, _read_labelled(readable(train_parts), encoding, opts, None, min_freq)
        vocab = labelled.vocab
        model_config = ModelConfig(vocab_size=vocab.size, labels=len(labelled.names.names), label_mode=label_mode,
                                   **{n: opts[n] for n in arch_names})
    else:
        encoded, labelled = encode_corpus(readable(train_parts), encoding, min_freq=min_freq, cache=not no_cache), None
        vocab = encoded.vocab
        if not vocab.chars:
            raise UsageError(f"--min-freq {min_freq} leaves no character in the vocabulary (every character occurs "
                             f"fewer than {min_freq} times), so there is nothing to train on; lower --min-freq")
        if base is not None:
            def encode(v: Vocab) -> Any:
                return encode_corpus(readable(train_parts), encoding, vocab=v, unk="map", cache=not no_cache)

            vocab, encoded, model_config = fine_tune_vocab(base, init_from, encoded, keep_vocab, notices, encode)
        else:
            model_config = ModelConfig(vocab_size=vocab.size, **{n: opts[n] for n in arch_names})
    ids = encoded.ids if encoded is not None else labelled.ids  # (n,) the training text's ids
    if model_config.input == "onehot" and vocab.size > ONEHOT_WARN_VOCAB:
        con.info(notices, f"warning: --input onehot with {vocab.size:,} characters builds inputs of shape "
                          f"(batch, time, {vocab.size:,}) and multiplies them out: slow; --input embedding is a lookup")
    if encoded is None:
        con.info(console, f"{len(labelled.record_labels):,} labelled records, {len(labelled.names.names):,} labels")
    elif encoded.ids_cached:
        con.info(console, f"read the encoded corpus ({len(ids):,} characters) from the cache: {encoded.path}")
    elif encoded.path is not None:
        con.info(console, f"encoded the corpus ({len(ids):,} characters) into the cache: {encoded.path}")
    if all(opts[n] is None for n in ("epochs", "max_steps", "time_budget")):
        opts["time_budget"] = DEFAULT_TIME_BUDGET
        con.info(notices, f"no stopping rule given: training for {DEFAULT_TIME_BUDGET:g} seconds (--time-budget)")
    train_ids, val_ids, val_fraction = _split(ids, vocab, opts, val_fraction, val_max_chars, official,
                                              valid_parts, lambda parts: encode_corpus(
                                                  readable(parts), encoding, vocab=vocab,
                                                  unk="map" if vocab.unk else "error",
                                                  where=f"the {sources[0]} validation text", cache=not no_cache).ids)
    # Standard input's bytes live in its part: let them go before training (the ids are all it needs).
    train_parts = valid_parts = None
    record_labels = None
    if labelled is not None:
        from charrnn.data.labels import split_labels
        from charrnn.data.records import delimiter_ids

        record_labels = split_labels(labelled.record_labels, train_ids, delimiter_ids(vocab, opts["delimiter"]),
                                     labelled.names)
    if opts["precision"] == "auto":
        opts["precision"] = _auto_precision(dev, console)
    config = TrainConfig(val_fraction=val_fraction, val_max_chars=val_max_chars,
                         **{n: opts[n] for n in train_names})
    # Several processes have their share of the cores (distributed.cpu_threads): not chosen again here.
    chooser = fixed() if group.active else make_chooser(threads, dev)
    _run(group, dev, console, notices, as_json, lambda callbacks: run_training(
        train_ids, val_ids, vocab, model_config, config, out, device=dev, callbacks=callbacks, resume=ckpt,
        init_from=base, init_from_path=init_from, group=group, threads=chooser, labels=record_labels))


def _run(group: Group, dev: Any, console: Any, notices: Any, as_json: bool, training: Any) -> None:
    """Run `training(callbacks)` with progress on `console`, stopping cleanly on SIGINT/SIGTERM, and
    print the summary (rank 0): the summary of what was done before an interruption's error line."""
    from charrnn.display import console as con
    from charrnn.training import distributed as dd

    callbacks = con.TrainConsole(console, notices)
    try:
        # Signals are caught once the processes have met: before that, torchrun's SIGTERM (a process
        # failed to start) must end this one at once rather than wait on the missing process.
        with dd.session(group, dev), stop_on_signals(callbacks, repeat_exits=not group.active, say=group.is_main):
            result = training(callbacks)
    except Interrupted as e:
        callbacks.close()
        if e.result is not None and group.is_main:  # the summary of what was done, then the error line and exit code
            _summary(e.result, as_json)
        raise
    finally:
        callbacks.close()
    if not group.is_main:
        return
    if result.checkpoint is None:
        con.info(notices, f"nothing to do: the stopping rule is already reached at step {result.steps} "
                          f"({result.seconds:.1f} s trained); raise --max-steps, --epochs or --time-budget to go on")
    _summary(result, as_json)


def _small_for_precision(opts: dict[str, Any], given: Any, console: Any) -> None:
    """The small model (the default) as tuned for the precision the run uses: where it is bf16, the options
    of runconfig.SMALL_BF16 that were not given on the command line, said on stderr."""
    from charrnn.config import SMALL_BF16
    from charrnn.display import console as con

    if opts["precision"] != "bf16":
        return
    changed = {name: value for name, value in SMALL_BF16.items() if not given(name)}
    opts.update(changed)
    if changed:
        con.info(console, "the small model for bf16: " + ", ".join(
            f"--{name.replace('_', '-')} {value}" for name, value in changed.items()))


def _auto_precision(dev: Any, console: Any) -> str:
    """What --precision auto picks on `dev`, said on stderr with why."""
    from charrnn.display import console as con
    from charrnn.model.network import resolve_precision

    precision = resolve_precision("auto", dev)
    con.info(console, f"precision auto: {precision} ("
             + ("native bfloat16 on this device)" if precision == "bf16" else
                f"no native bfloat16 on this {dev.type.upper() if dev.type != 'cpu' else 'CPU'})"))
    return precision


def _read_labelled(parts: Any, encoding: str, opts: dict[str, Any], vocab: Any, min_freq: int) -> Any:
    """--labels: the records LABEL<TAB>TEXT of the corpus, read whole (charrnn.data.labels; not cached)."""
    from charrnn.data.corpora import join_parts
    from charrnn.data.labels import read_labelled

    return read_labelled(join_parts(parts, encoding), opts["delimiter"], vocab, min_freq)


def _split(ids: Any, vocab: Any, opts: dict[str, Any], val_fraction: float, val_max_chars: int | None,
           official: bool, valid_parts: Any, encode_valid: Any) -> tuple[Any, Any, float]:
    """(training ids, validation ids, the validation fraction used): for a corpus with official splits,
    its valid part (`valid_parts`, encoded by `encode_valid` with the training vocabulary: characters
    it lacks become <unk>, not scored, as in `eval perplexity`), else whole records or a tail of the text."""
    if official:
        return ids, ids[:0] if valid_parts is None else encode_valid(valid_parts), 0.0
    if opts["partition"] == "records":
        from charrnn.data.partition import split_records_train_val
        from charrnn.data.records import delimiter_ids

        train_ids, val_ids = split_records_train_val(ids, delimiter_ids(vocab, opts["delimiter"]), val_fraction,
                                                     max_chars=val_max_chars)
        return train_ids, val_ids, val_fraction
    from charrnn.data.partition import split_train_val

    train_ids, val_ids = split_train_val(ids, val_fraction, max_chars=val_max_chars)
    return train_ids, val_ids, val_fraction


STOPPED = {"budget": "time budget reached", "steps": "--max-steps reached", "epochs": "--epochs done",
           "patience": "out of --patience", "interrupted": "interrupted"}


def _summary(result: Any, as_json: bool) -> None:
    """The run's summary on stdout: one line, or one JSON object."""
    if as_json:
        json_out(result.to_dict())
    elif result.checkpoint is None:
        click.echo(f"trained 0 steps (already at step {result.steps}): validation loss {num(result.val_loss)} "
                   "nats/char from the checkpoint; nothing saved")
    else:
        click.echo(f"trained {result.steps} steps in {result.seconds:.1f} s ({result.chars_per_second:,.0f} "
                   f"chars/s), stopped: {STOPPED.get(result.stop_reason, result.stop_reason)}: "
                   f"train loss {num(result.train_loss)}, validation loss {num(result.val_loss)} nats/char, "
                   f"perplexity {num(result.val_perplexity, '.3f')}, {num(result.val_bits_per_char)} bits/char; "
                   f"saved {result.checkpoint}" + (f" and {result.best_checkpoint}" if result.best_checkpoint else ""))


@contextlib.contextmanager
def stop_on_signals(callbacks: Any, repeat_exits: bool = True, say: bool = True) -> Iterator[None]:
    """SIGINT/SIGTERM ask training to save and stop after the current step (callbacks.stop_code);
    a second signal exits at once. Saves are atomic, so that never damages the last checkpoint.

    In a process of a distributed run (`repeat_exits` False) a second signal changes nothing: the
    launcher may signal a process that is already stopping, and its own shutdown timeout is
    the way out of a stuck run."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        code = 143 if signum == signal.SIGTERM else 130
        if callbacks.stop_code is not None:
            if not repeat_exits:
                return
            os.write(2, b"\nstopped at once; the last saved checkpoint is intact\n")
            os._exit(code)
        callbacks.stop_code = code
        if repeat_exits:
            os.write(2, b"\nstopping after this step and saving (press Ctrl-C again to quit at once)\n")
        elif say:
            os.write(2, b"\nstopping all processes after this step and saving\n")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
