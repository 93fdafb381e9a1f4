"""`charrnn train`: options, presets, resume rules, and the signals that stop a run cleanly."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from charrnn.cli import common
from charrnn.cli.common import (
    ARCH_DEFAULTS,
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
from charrnn.config import (
    ADAPTIVE_FROM,
    AVERAGES,
    CELLS,
    DEFAULT_EMA_DECAY,
    DEFAULT_TAIL,
    DEFAULT_TIME_BUDGET,
    DEFAULT_VAL_EVERY,
    DEFAULT_VAL_MAX_CHARS,
    INPUTS,
    MAX_LAYERS,
    MAX_WIDTH,
    PRESETS,
    SOFTMAXES,
)
from charrnn.data.labels import DEFAULT_LABEL_MODE, LABEL_MODES
from charrnn.errors import CharrnnError, Interrupted, PeerLost, UsageError

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
@click.option("--max-vocab", type=positive_int(), default=None,
              help="Keep only the K most frequent characters (after --min-freq); the others map to <unk>.")
@click.option("--softmax", type=click.Choice(SOFTMAXES), default="auto", show_default=True,
              help="The output layer: a full softmax, or the adaptive softmax (cost that grows far slower with "
                   f"the vocabulary; exact probabilities); auto: adaptive from {ADAPTIVE_FROM:,} characters on.")
@click.option("--preset", type=click.Choice(list(PRESETS)), default=None,
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
@click.option("--input", "input_", type=click.Choice(INPUTS), default=ARCH_DEFAULTS["input"],
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
              help=f"Stop after this many seconds, the final validation and save included (default "
                   f"{DEFAULT_TIME_BUDGET:g} when no stopping rule is given).")
@click.option("--val-every", type=positive_int(),
              help=f"Validate every N steps (default: every {DEFAULT_VAL_EVERY} and at each tenth of the run).")
@click.option("--val-share", default=0.1, type=Finite(0, 1, low_open=True), show_default=True,
              help="At most this share of the run goes to validation, estimated from the held-out and minibatch "
                   "sizes: a validation that is due waits while the last was too few steps ago (1: never waits).")
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
def train(ctx: click.Context, corpus: tuple[str, ...], output: str, as_json: bool, quiet: bool, nproc: int | None,
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
    from charrnn.data.records import unescape
    from charrnn.training import distributed as dd

    opts["input"] = opts.pop("input_")
    given = {name for name in opts if ctx.get_parameter_source("input_" if name == "input" else name)
             not in (ParameterSource.DEFAULT, None)}
    opts["delimiter"] = unescape(opts["delimiter"])
    group = dd.from_env()
    if nproc is not None:
        if nproc < 1:
            raise UsageError(f"--nproc must be >= 1, got {nproc}")
        if group.active:
            raise UsageError("--nproc launches the processes itself: leave it out under torchrun")
        if nproc > 1:
            # Usage is checked once, here, before any process starts (they would all find the same error).
            _train(dd.Group(0, nproc, 0, nproc), corpus, output, opts, given, as_json, quiet, preflight=True)
            ctx.exit(dd.launch(nproc, without_nproc(ctx.meta["argv"])))
    try:
        _train(group, corpus, output, opts, given, as_json, quiet)
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


def _train(group: Group, corpus: tuple[str, ...], output: str, opts: dict[str, Any], given: set[str], as_json: bool,
           quiet: bool, preflight: bool = False) -> None:
    """Train, in this process (one of `group`), as charrnn.training.prepare prepares the run; with `preflight`,
    only check the usage and the corpus arguments (fetching a catalog corpus), for `--nproc`."""
    from charrnn.display import console as con
    from charrnn.training.prepare import prepare

    # -q silences progress and routine information; warnings and notices that change what the run
    # means (a stopping rule chosen for you, unknown characters, nothing to do) are said anyway.
    console = con.make_console(quiet or not group.is_main)  # from rank 0 only
    notices = con.make_console(not group.is_main)
    callbacks = con.TrainConsole(console, notices)
    job = prepare(corpus, output, opts, given, report=callbacks, group=group, stdin=common.stdin(),
                  downloads=con.DownloadConsole(console), preflight=preflight)
    if job is not None:
        _run(job, callbacks, notices, as_json)


def _run(job: Any, callbacks: Any, notices: Any, as_json: bool) -> None:
    """Run the prepared `job` with progress on `callbacks`, stopping cleanly on SIGINT/SIGTERM, and
    print the summary (rank 0): the summary of what was done before an interruption's error line."""
    from charrnn.display import console as con
    from charrnn.training import distributed as dd

    group = job.group
    try:
        # Signals are caught once the processes have met: before that, torchrun's SIGTERM (a process
        # failed to start) must end this one at once rather than wait on the missing process.
        with dd.session(group, job.device), stop_on_signals(callbacks, repeat_exits=not group.active,
                                                            say=group.is_main):
            result = job.run(callbacks)
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
