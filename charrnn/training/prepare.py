"""One train preparation: from the options of `charrnn train` (or charrnn.train's keywords, the same
names with underscores) to a run ready to start, decided once for the command and the Python API.

`prepare()` reads the corpus (catalog corpora fetched, the encoded-corpus cache), applies --preset,
resolves --precision auto, switches the default small model to its bf16 form where the run is bf16,
applies the --resume and --init-from rules, splits off the validation text and checks everything
a run can be refused for; what it has to say goes to `report.on_message` (the command prints it on
stderr, the API hands it to its callback). An option counts as given when it is in `given` (the
command: set on its command line); the others take OPTION_DEFAULTS, then the preset's values.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from charrnn.config import DEFAULT_TIME_BUDGET, DEFAULT_VAL_MAX_CHARS, ONEHOT_WARN_VOCAB
from charrnn.data.labels import DEFAULT_LABEL_MODE
from charrnn.errors import DataError, UsageError

if TYPE_CHECKING:
    import numpy as np

    from charrnn.config import TrainConfig
    from charrnn.data.vocab import Vocab
    from charrnn.model.network import ModelConfig
    from charrnn.threads import ThreadChooser
    from charrnn.training.callbacks import Callbacks
    from charrnn.training.distributed import Group
    from charrnn.training.runconfig import TrainResult

# Every option of `charrnn train` (charrnn.train's keywords) with its default.
OPTION_DEFAULTS: dict[str, Any] = {
    "resume": None, "init_from": None, "keep_vocab": False, "encoding": "utf-8", "val_fraction": 0.1,
    "val_max_chars": DEFAULT_VAL_MAX_CHARS, "no_cache": False, "min_freq": 1, "max_vocab": None, "softmax": "auto",
    "preset": None,
    "cell": "lstm", "layers": 1, "hidden": 384, "dropout": 0.0, "weight_drop": 0.0, "embed_dropout": 0.0,
    "input": "embedding", "embed_dim": 64, "partition": "sequential", "delimiter": "\n", "batch_size": 32,
    "num_steps": 64, "warmup": 0, "optimizer": "adam", "lr": 5e-3, "weight_decay": 0.0, "schedule": "cosine",
    "clip": 1.0, "average": "none", "ema_decay": 0.998, "average_tail": 0.25, "epochs": None, "max_steps": None,
    "time_budget": None, "val_every": None, "val_share": 0.1, "save_every": None, "patience": None, "seed": 0,
    "device": "auto", "precision": "auto", "threads": None, "labels": False, "label_mode": DEFAULT_LABEL_MODE,
}
ARCH_NAMES = ("cell", "layers", "hidden", "dropout", "input", "embed_dim", "weight_drop", "embed_dropout")
# TrainConfig's fields that are not options of their own (val_fraction and val_max_chars are, apart).
INTERNAL = ("val_fraction", "val_max_chars", "eval_streams", "log_every")


@dataclass(eq=False)
class TrainJob:
    """A prepared run: call run() (once) to train."""

    train_ids: np.ndarray  # (n,) the training text's ids
    val_ids: np.ndarray  # (m,) the validation text's ids
    vocab: Vocab
    model_config: ModelConfig
    config: TrainConfig
    out: Path
    device: Any  # torch.device
    resume: dict | None  # the checkpoint resumed
    base: dict | None  # the checkpoint fine-tuned (--init-from)
    init_from: str | None
    group: Group
    threads: ThreadChooser
    labels: Any = None  # --labels: the training records' labels (charrnn.labels.split_labels)

    def run(self, callbacks: Callbacks) -> TrainResult:
        from charrnn.training.train import train

        return train(self.train_ids, self.val_ids, self.vocab, self.model_config, self.config, self.out,
                     device=self.device, callbacks=callbacks, resume=self.resume, init_from=self.base,
                     init_from_path=self.init_from, group=self.group, threads=self.threads,
                     labels=self.labels)


@dataclass
class _Prep:
    """What prepare()'s steps share."""

    opts: dict[str, Any]
    given: Collection[str]
    report: Callbacks
    encoding: str
    no_cache: bool
    train_parts: list
    valid_parts: list | None
    official: bool
    labelled: Any = None  # --labels: the labelled records read (charrnn.labels)

    def chosen(self, name: str) -> bool:
        """Given, directly or through --preset."""
        return name in self.given or name in self.preset

    @property
    def preset(self) -> dict[str, Any]:
        from charrnn.config import PRESETS

        return PRESETS[self.opts["preset"]] if self.opts["preset"] is not None else {}

    def say(self, message: str, notice: bool = False) -> None:
        self.report.on_message(message, notice)

    def readable(self, parts: list) -> list:
        """Records delimited by NUL (`find -print0`): NUL is then text, not the sign of a binary file."""
        if self.opts["partition"] == "records" and "\0" in self.opts["delimiter"]:
            return [dataclasses.replace(p, nul=True) for p in parts]
        return parts

    def encode(self, parts: list, **how: Any) -> Any:
        from charrnn.data.cache import encode_corpus

        return encode_corpus(self.readable(parts), self.encoding, cache=not self.no_cache, **how)


def prepare(corpus: Sequence[str], output: str, options: dict[str, Any], given: Collection[str], *,
            report: Callbacks, group: Group | None = None, stdin: BinaryIO | None = None, downloads: Any = None,
            preflight: bool = False) -> TrainJob | None:
    """The run `charrnn train CORPUS -o OUTPUT` with `options` would make (None with `preflight`: only
    the usage and the corpus arguments checked, a catalog corpus fetched, for --nproc before its
    processes start). `options` holds OPTION_DEFAULTS' names; `downloads` reports corpus fetches."""
    from charrnn.data.corpora import catalog_entry, expand_sources, training_parts
    from charrnn.model.network import resolve_device
    from charrnn.outputs import check_output, run_files
    from charrnn.training import distributed as dd

    unknown = sorted(set(options) - set(OPTION_DEFAULTS))
    if unknown:
        raise UsageError(f"unknown training option {unknown[0]!r}")
    opts = {**OPTION_DEFAULTS, **options}
    group = group or dd.SINGLE
    init_from, resume = opts["init_from"], opts["resume"]
    if resume and init_from:
        raise UsageError("--resume continues a run and --init-from starts a new one from a model: give one")
    if opts["keep_vocab"] and not init_from:
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
    if opts["val_max_chars"] < 2:
        raise UsageError(f"--val-max-chars must be >= 2, got {opts['val_max_chars']}")
    dev = dd.process_device(group, resolve_device(opts["device"]))
    if group.active:
        _check_shared_input(sources, dev, opts["threads"], group)
    entry = catalog_entry(sources[0]) if len(sources) == 1 else None
    official = entry is not None and entry.has_splits
    if official and "val_fraction" in given:
        raise UsageError(f"{sources[0]} has an official validation split, so --val-fraction does not apply")
    if opts["labels"] and (opts["partition"] != "records" or init_from or official):
        raise UsageError("--labels needs --partition records, a corpus without an official validation part, and "
                         "no --init-from" if opts["partition"] == "records" else "--labels needs --partition records")
    if "label_mode" in given and not opts["labels"]:
        raise UsageError("--label-mode applies to --labels")
    train_parts, valid_parts = training_parts(sources, stdin, callbacks=downloads)
    check_writes([p.path for p in [*train_parts, *(valid_parts or [])] if p.path is not None])  # catalog files now
    if preflight:
        return None
    prep = _Prep(opts, given, report, opts["encoding"], opts["no_cache"], train_parts, valid_parts, official)
    return _prepared(prep, sources, Path(output), dev, group)


def _check_shared_input(sources: list[str], dev: Any, threads: int | None, group: Group) -> None:
    """Several processes each read the corpus: no stdin, no pipe; each takes its share of the cores."""
    from charrnn.training import distributed as dd

    if "-" in sources:
        raise UsageError("several processes cannot share standard input: give the corpus as a file")
    pipes = [s for s in sources if os.path.exists(s) and not os.path.isfile(s) and not os.path.isdir(s)]
    if pipes:  # each process reads the corpus: a pipe would give its text to one of them
        raise UsageError(f"several processes cannot share the pipe {pipes[0]!r}: give the corpus as a file")
    if dev.type == "cpu":
        import torch

        torch.set_num_threads(threads or dd.cpu_threads(group))  # --threads wins over the process's share


def resolved(options: dict[str, Any], given: Collection[str] | None = None, device: Any = "cpu",
             say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The options a new run uses before it reads its corpus or checkpoint: OPTION_DEFAULTS, the preset's
    values where not `given` (default: the names in `options`), --precision auto resolved for `device`, and
    the small model's bf16 form where the run is bf16 (charrnn.runconfig.SMALL_BF16; not for a fine-tuned
    model, nor for a resumed run, which takes its checkpoint's settings). `say` is told each decision."""
    from charrnn.config import PRESETS

    given = set(options) if given is None else given
    say = say or (lambda message: None)
    opts = {**OPTION_DEFAULTS, **options}
    for name, value in (PRESETS[opts["preset"]] if opts["preset"] is not None else {}).items():
        if name not in given:
            opts[name] = value
    if not opts["resume"]:  # a resumed run takes the checkpoint's precision unless one is given (resume_options)
        if opts["precision"] == "auto":
            opts["precision"] = _auto_precision(device, say)
        if opts["preset"] in (None, "small") and not opts["init_from"] and opts["precision"] == "bf16":
            _small_for_bf16(opts, given, say)
    return opts


def _prepared(prep: _Prep, sources: list[str], out: Path, dev: Any, group: Group) -> TrainJob:
    """The settings decided, the corpus encoded and split."""
    from charrnn.config import TrainConfig
    from charrnn.threads import fixed, make_chooser

    opts = prep.opts = resolved(prep.opts, prep.given, dev, prep.say)
    if "delimiter" in prep.given and opts["partition"] != "records" and not opts["resume"]:
        raise UsageError("--delimiter applies to --partition records")
    vocab, encoded, model_config, ckpt, base, val_fraction, val_max_chars = _vocab_and_text(prep)
    ids = encoded.ids  # (n,) the training text's ids
    if model_config.input == "onehot" and vocab.size > ONEHOT_WARN_VOCAB:
        prep.say(f"warning: --input onehot with {vocab.size:,} characters builds inputs of shape "
                 f"(batch, time, {vocab.size:,}) and multiplies them out: slow; --input embedding is a lookup", True)
    if prep.labelled is not None:
        prep.say(f"{len(encoded.record_labels):,} labelled records, {len(encoded.names.names):,} labels")
    elif encoded.ids_cached:
        prep.say(f"read the encoded corpus ({len(ids):,} characters) from the cache: {encoded.path}")
    elif encoded.path is not None:
        prep.say(f"encoded the corpus ({len(ids):,} characters) into the cache: {encoded.path}")
    if all(opts[n] is None for n in ("epochs", "max_steps", "time_budget")):
        opts["time_budget"] = DEFAULT_TIME_BUDGET
        prep.say(f"no stopping rule given: training for {DEFAULT_TIME_BUDGET:g} seconds (--time-budget)", True)
    train_ids, val_ids, val_fraction = _split(prep, ids, vocab, val_fraction, val_max_chars, sources[0])
    if opts["precision"] == "auto":  # a resumed run whose checkpoint said auto
        opts["precision"] = _auto_precision(dev, prep.say)
    config = TrainConfig(val_fraction=val_fraction, val_max_chars=val_max_chars,
                         **{n: opts[n] for n in _train_names()})
    # Several processes have their share of the cores (distributed.cpu_threads): not chosen again here.
    chooser = fixed() if group.active else make_chooser(opts["threads"], dev)
    return TrainJob(train_ids, val_ids, vocab, model_config, config, out, dev, ckpt, base, opts["init_from"], group,
                    chooser, _record_labels(prep, train_ids, vocab))


def _record_labels(prep: _Prep, train_ids: Any, vocab: Vocab) -> Any:
    """--labels: the labels of the training records (those the split kept), else None."""
    if prep.labelled is None:
        return None
    from charrnn.data.labels import split_labels
    from charrnn.data.records import delimiter_ids

    return split_labels(prep.labelled.record_labels, train_ids, delimiter_ids(vocab, prep.opts["delimiter"]),
                        prep.labelled.names)


def _train_names() -> list[str]:
    from charrnn.config import TrainConfig

    return [f for f in TrainConfig.__dataclass_fields__ if f not in INTERNAL]


def _vocab_and_text(prep: _Prep) -> tuple[Any, ...]:
    """(vocabulary, encoded training text, model config, resumed checkpoint, base checkpoint, val_fraction,
    val_max_chars): from the checkpoint resumed, the base model fine-tuned, or the text alone."""
    from charrnn.data.vocab import Vocab
    from charrnn.model import checkpoint
    from charrnn.model.network import ModelConfig
    from charrnn.training.train_from import check_architecture, check_softmax, fine_tune_vocab, resume_options

    opts = prep.opts
    resume, init_from = opts["resume"], opts["init_from"]
    val_fraction, val_max_chars = opts["val_fraction"], opts["val_max_chars"]
    ckpt = base = None
    if opts["max_vocab"] is not None and (resume or init_from):
        raise UsageError("--max-vocab applies to a new run: the vocabulary of --resume and --init-from is the "
                         "checkpoint's")
    if init_from:
        base = checkpoint.load(init_from)
        checkpoint.check_finite(base, init_from)  # refused now, not blamed on the learning rate later
        if base.get("labels") is not None:
            raise UsageError("--init-from a model trained with --labels is not supported yet: train it with --labels "
                             "from scratch, or --resume it")
        check_architecture(opts, prep.chosen, list(ARCH_NAMES), base["model_config"],
                           "with --init-from the architecture is the base model's")
        check_softmax(opts["softmax"], "softmax" in prep.given, base["model_config"],
                      "with --init-from the architecture is the base model's")
    if resume:
        ckpt = checkpoint.load(resume)
        checkpoint.check_resume_fields(ckpt, resume)
        checkpoint.check_finite(ckpt, resume)
        check_architecture(opts, prep.chosen, list(ARCH_NAMES), ckpt["model_config"],
                           "the architecture cannot change on resume")
        check_softmax(opts["softmax"], "softmax" in prep.given, ckpt["model_config"],
                      "the architecture cannot change on resume")
        changes, val_fraction, val_max_chars = resume_options(ckpt, opts, lambda n: n in prep.given, prep.chosen,
                                                               _train_names(), prep.official, val_fraction,
                                                               val_max_chars)
        vocab = Vocab.from_dict(ckpt["vocab"])
        if opts["labels"] != bool(ckpt.get("labels")):
            raise UsageError("--labels must be given on resume exactly when the run was trained with it")
        if opts["labels"]:
            encoded = prep.labelled = _read_labelled(prep, vocab)
            if encoded.names.names != tuple(ckpt["labels"]["names"]):
                raise DataError("the training text's labels differ from the ones this checkpoint was trained on")
        else:
            encoded = prep.encode(prep.train_parts, vocab=vocab, unk="map" if vocab.unk else "error")
        prep.say(f"resuming from {resume} at step {ckpt['step']}"
                 + (f"; changed: {', '.join(changes)}" if changes else ""), True)
        return vocab, encoded, ModelConfig.from_dict(ckpt["model_config"]), ckpt, base, val_fraction, val_max_chars
    min_freq = opts["min_freq"]
    if opts["labels"]:
        encoded = prep.labelled = _read_labelled(prep, None)
        output = _output_layer(prep, encoded.vocab, len(encoded.ids))  # first: it may set large-vocabulary defaults
        model_config = ModelConfig(vocab_size=encoded.vocab.size, labels=len(encoded.names.names),
                                   label_mode=opts["label_mode"], **{n: opts[n] for n in ARCH_NAMES}, **output)
        return encoded.vocab, encoded, model_config, ckpt, base, val_fraction, val_max_chars
    encoded = prep.encode(prep.train_parts, min_freq=min_freq, max_chars=opts["max_vocab"])
    vocab = encoded.vocab
    if not vocab.chars:
        raise UsageError(f"--min-freq {min_freq} leaves no character in the vocabulary (every character occurs "
                         f"fewer than {min_freq} times), so there is nothing to train on; lower --min-freq")
    if base is not None:
        vocab, encoded, model_config = fine_tune_vocab(
            base, init_from, encoded, opts["keep_vocab"], lambda message: prep.say(message, True),
            lambda v: prep.encode(prep.train_parts, vocab=v, unk="map"))
    else:
        output = _output_layer(prep, vocab, len(encoded.ids))  # first: it may set large-vocabulary defaults
        model_config = ModelConfig(vocab_size=vocab.size, **{n: opts[n] for n in ARCH_NAMES}, **output)
    return vocab, encoded, model_config, ckpt, base, val_fraction, val_max_chars


def _output_layer(prep: _Prep, vocab: Vocab, chars: int) -> dict[str, Any]:
    """The model-config fields of --softmax for a new run on `chars` characters under `vocab`, said when
    adaptive; then the default model for a large vocabulary (config.LARGE_VOCAB) where not given."""
    from charrnn.config import LARGE_VOCAB
    from charrnn.model import heads

    softmax = prep.opts["softmax"]
    # <unk> counts what it stands for (the characters --min-freq and --max-vocab left out).
    counts = [*vocab.counts, *([chars - sum(vocab.counts)] if vocab.unk else [])]
    output = heads.choose(softmax, counts)
    if output["output"] == "adaptive":
        prep.say(f"output layer: the adaptive softmax over {vocab.size:,} characters (a shortlist of "
                 f"{output['cutoffs'][0]:,}, {len(output['cutoffs'])} tail clusters)"
                 + (" (--softmax auto)" if softmax == "auto" else ""))
        changed = {name: value for name, value in LARGE_VOCAB.items() if name not in prep.given}
        if prep.opts["preset"] in (None, "small") and changed:
            prep.opts.update(changed)
            prep.say("the model for a large vocabulary: " + ", ".join(
                f"--{name.replace('_', '-')} {value}" for name, value in changed.items()))
    return output


def _read_labelled(prep: _Prep, vocab: Vocab | None) -> Any:
    """--labels: the records LABEL<TAB>TEXT of the corpus, read whole (charrnn.labels; not cached): their ids,
    vocabulary (`vocab`, or built from the text), label names and each record's label."""
    from charrnn.data.corpora import join_parts
    from charrnn.data.labels import read_labelled

    return read_labelled(join_parts(prep.readable(prep.train_parts), prep.encoding), prep.opts["delimiter"], vocab,
                         prep.opts["min_freq"])


def _small_for_bf16(opts: dict[str, Any], given: Collection[str], say: Callable[[str], None]) -> None:
    """The small model (the default) as tuned for bf16: the options of runconfig.SMALL_BF16 not given, said."""
    from charrnn.config import SMALL_BF16

    changed = {name: value for name, value in SMALL_BF16.items() if name not in given}
    opts.update(changed)
    if changed:
        say("the small model for bf16: " + ", ".join(
            f"--{name.replace('_', '-')} {value}" for name, value in changed.items()))


def _auto_precision(dev: Any, say: Callable[[str], None]) -> str:
    """What --precision auto picks on `dev`, said with why."""
    import torch

    from charrnn.model.network import resolve_precision

    dev = torch.device(dev)
    precision = resolve_precision("auto", dev)
    say(f"precision auto: {precision} ("
        + ("native bfloat16 on this device)" if precision == "bf16" else
           f"no native bfloat16 on this {dev.type.upper() if dev.type != 'cpu' else 'CPU'})"))
    return precision


def _split(prep: _Prep, ids: Any, vocab: Any, val_fraction: float, val_max_chars: int | None,
           source: str) -> tuple[Any, Any, float]:
    """(training ids, validation ids, the validation fraction used): for a corpus with official splits,
    its valid part (encoded with the training vocabulary: characters it lacks become <unk>, not scored,
    as in `eval perplexity`), else whole records or a tail of the text."""
    if prep.official:
        if prep.valid_parts is None:
            return ids, ids[:0], 0.0
        valid = prep.encode(prep.valid_parts, vocab=vocab, unk="map" if vocab.unk else "error",
                            where=f"the {source} validation text")
        return ids, valid.ids, 0.0
    if prep.opts["partition"] == "records":
        from charrnn.data.partition import split_records_train_val
        from charrnn.data.records import delimiter_ids

        train_ids, val_ids = split_records_train_val(ids, delimiter_ids(vocab, prep.opts["delimiter"]), val_fraction,
                                                     max_chars=val_max_chars)
        return train_ids, val_ids, val_fraction
    from charrnn.data.partition import split_train_val

    train_ids, val_ids = split_train_val(ids, val_fraction, max_chars=val_max_chars)
    return train_ids, val_ids, val_fraction

