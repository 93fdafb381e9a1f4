"""One generation plan: what a generation with given options does on a given model, decided once for
`charrnn generate`, the Python API (charrnn.api) and the server (charrnn.serving.service).

A plan is plain sampling (one character of every sample per step), records (samples that end at a
stop string: the options' --stop, or a records model's delimiter), beam search, or a form (--acrostic,
--template: charrnn.inference.forms, sampled by charrnn.inference.constrained); with --novel the samples that copy a
training record are dropped and drawn again. `plan()` checks the options
against the model and raises UsageError naming the options as the caller's users know them (the
command's `--min-length`, the protocol's `"min_length"`); `GenerationPlan.pieces()` runs it and
yields the continuations (never the prefix) as they are made.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from charrnn.data.labels import LabelSet
from charrnn.errors import UsageError
from charrnn.inference.forms import DEFAULT_LINE_ENDS, DEFAULT_PLACEHOLDER, Constraint

if TYPE_CHECKING:  # the options alone import no torch: charrnn.serving.protocol's requests are made of them
    import numpy as np

    from charrnn.data.vocab import Vocab
    from charrnn.inference.constrained import ConstrainedSample
    from charrnn.inference.generate import BeamResult, Sampling, Stops
    from charrnn.model.network import CharRNN, LabelView
    from charrnn.threads import ThreadChooser


def option_name(name: str) -> str:
    """How `charrnn generate` names an option: n -> -n (--length), min_length -> --min-length."""
    return "-n" if name == "n" else "--" + name.replace("_", "-")


@dataclass(frozen=True, eq=False)
class RecordsInfo:
    """What generation needs of a checkpoint besides its weights: a records model's delimiter (its
    samples are records, begun from the state after it) and the hashes of its training records (--novel)."""

    delimiter: str | None = None
    hashes: np.ndarray | None = None  # sorted record hashes (charrnn.data.records), or None when not kept
    hashes_complete: bool = True  # False: only some records' hashes were kept
    exported_as: str | None = None  # the format of an exported model (it keeps no hashes)
    labels: LabelSet | None = None  # a label-conditioned model's labels

    @classmethod
    def of(cls, ckpt: dict[str, Any]) -> RecordsInfo:
        from charrnn.model.checkpoint import label_set, record_delimiter

        hashes = ckpt.get("record_hashes")
        return cls(record_delimiter(ckpt), None if hashes is None else hashes.numpy(),
                   bool(ckpt.get("record_hashes_complete", True)), ckpt.get("exported_as"), label_set(ckpt))


@dataclass(frozen=True)
class GenerateOptions:
    """The options of `charrnn generate`, by their long names with underscores (n is --length)."""

    prefix: str = ""
    n: int = 500  # characters per sample (with a stop string: at most)
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    greedy: bool = False
    seed: int | None = None  # None: drawn at random (GenerationPlan.seed_drawn)
    num_samples: int = 1
    stop: tuple[str, ...] = ()
    min_length: int | None = None  # None: 0, or 1 for a records model
    novel: bool = False
    beam: int | None = None
    unk: str = "error"
    acrostic: str | None = None  # the k-th line begins with its k-th character
    template: str | None = None  # every character forced but the placeholder
    placeholder: str = DEFAULT_PLACEHOLDER
    line_ends: str = DEFAULT_LINE_ENDS
    label: str | None = None  # a label-conditioned model's label


@dataclass(eq=False)
class GenerationPlan:
    """A checked generation: run it with pieces() (once)."""

    model: CharRNN | LabelView  # a label-conditioned model: fixed to the options' label
    vocab: Vocab
    options: GenerateOptions
    kind: str  # "plain", "records", "beam" or "form"
    context: np.ndarray  # (T,) ids read before the first character: the record start, then the prefix
    sampling: Sampling
    stops: Stops | None
    seed: int | None  # None for beam search, which does not sample
    seed_drawn: bool  # the options gave none: a caller may say which was drawn
    accept: Callable[[str], bool] | None
    notes: list[str] = field(default_factory=list)  # things worth saying on stderr
    dropped: list[str] = field(default_factory=list)  # --novel: the samples dropped so far
    beam_results: list[BeamResult] = field(default_factory=list)  # beam search: its results, once run
    constraint: Constraint | None = None  # a form: what it allows
    form_results: list[ConstrainedSample] = field(default_factory=list)  # a form: its samples, once run

    def pieces(self, threads: ThreadChooser | None = None) -> Iterator[tuple[int, str, bool]]:
        """(sample index, new text, whether that sample ended with it). Plain: one character of every
        sample per step (a sample's pieces joined are the sample); records: the text of each sample as
        soon as no stop string can begin in it, samples numbered in the order they begin to be told
        (with --novel, each whole once known to be new); beam: each result whole, best first; a form:
        each sample whole, once all are made (they are drawn side by side)."""
        from charrnn.inference.generate import beam_search, generate, stream_samples

        o = self.options
        if self.kind == "form":
            from charrnn.inference.constrained import sample_constrained

            assert self.constraint is not None and self.seed is not None
            self.form_results = sample_constrained(self.model, self.vocab, self.context, self.constraint,
                                                   max_length=o.n, sampling=self.sampling, seed=self.seed,
                                                   num_samples=o.num_samples, threads=threads)
            for i, r in enumerate(self.form_results):
                yield i, r.text, True
            return
        if self.kind == "beam":
            self.beam_results = beam_search(self.model, self.vocab, self.context, o.beam or 1, o.n, self.stops,
                                            num_results=o.num_samples, accept=self.accept,
                                            on_rejected=self.dropped.append)
            for i, r in enumerate(self.beam_results):
                yield i, r.text, True
            return
        assert self.seed is not None
        if self.kind == "plain":
            for chars in generate(self.model, self.vocab, self.context, o.n, self.sampling, seed=self.seed,
                                  num_samples=o.num_samples, threads=threads):
                for i, c in enumerate(chars):
                    yield i, c, False
            return
        assert self.stops is not None
        numbers: dict[int, int] = {}  # stream_samples' numbers (the order samples start) -> the order first told
        for number, piece, ended in stream_samples(self.model, self.vocab, self.context, self.stops, self.sampling,
                                                   seed=self.seed, num_samples=o.num_samples, accept=self.accept,
                                                   on_rejected=self.dropped.append, threads=threads):
            yield numbers.setdefault(number, len(numbers)), piece, ended

    def samples(self, threads: ThreadChooser | None = None, stopped: Callable[[], bool] | None = None) -> list[str]:
        """The whole continuations: plain samples by index; records and beam results in the order they
        end (as `charrnn generate` prints them). `stopped()` true between two pieces ends the generation
        with GenerationStopped (the server's client has gone)."""
        parts: dict[int, list[str]] = {i: [] for i in range(self.options.num_samples if self.kind == "plain" else 0)}
        ends: list[int] = []
        for i, piece, ended in self.pieces(threads):
            if stopped is not None and stopped():
                raise GenerationStopped("the generation was stopped: its client went away")
            parts.setdefault(i, []).append(piece)
            if ended:
                ends.append(i)
        return ["".join(parts[i]) for i in (ends or sorted(parts))]


class GenerationStopped(Exception):
    """A generation ended by its caller's `stopped()` before it was done."""


def plan(model: CharRNN, vocab: Vocab, records: RecordsInfo, options: GenerateOptions, *,
         name: Callable[[str], str] = option_name, where: str = "the prefix") -> GenerationPlan:
    """The plan of a generation with `options` on `model`, checked: a UsageError for options that do not
    apply, each named by `name(field)`; `where` names the prefix in an unknown-character error."""
    import numpy as np

    from charrnn.inference.generate import Sampling, Stops

    o = options
    if o.n < 0:
        raise UsageError(f"{name('n')} must be >= 0, got {o.n}")
    if o.num_samples < 1:
        raise UsageError(f"{name('num_samples')} must be >= 1, got {o.num_samples}")
    if o.beam is not None and o.beam < 1:
        raise UsageError(f"{name('beam')} must be >= 1, got {o.beam}")
    sampling = Sampling(temperature=o.temperature, top_k=o.top_k, top_p=o.top_p, greedy=o.greedy)
    model = for_label(model, records.labels, o.label, name("label"))
    prefix_ids = vocab.encode(o.prefix, unk=o.unk, where=where)  # type: ignore[arg-type]
    stops, min_length = tuple(o.stop), o.min_length
    if not stops and records.delimiter is not None:
        stops = (records.delimiter,)  # a records model generates records
        if min_length is None and o.n >= 1:
            min_length = 1  # it never saw an empty record: do not end one before its first character
        if o.n < 1 and o.beam is None:
            raise UsageError(f"{name('n')} must be >= 1 for a model trained with --partition records (it generates "
                             f"records, each at most {name('n')} characters), got {o.n}")
    if min_length and not stops:
        raise UsageError(f"{name('min_length')} needs {name('stop')} (or a model trained with --partition records)")
    if o.novel and not stops:
        raise UsageError(f"{name('novel')} needs {name('stop')} (or a model trained with --partition records)")
    notes: list[str] = []
    constraint = _form(vocab, o, name)
    accept = _novelty(records, o.prefix, name, notes) if o.novel else None
    kind = "form" if constraint else "beam" if o.beam is not None else "records" if stops else "plain"
    if kind == "beam" and not sampling.plain:
        # Beam search does not sample: refuse only what would change sampling (temperature 1 and
        # top-p 1 are the model's own distribution, as the defaults are).
        raise UsageError(f"{name('beam')} is deterministic: {name('temperature')} (other than 1), {name('top_k')}, "
                         f"{name('top_p')} (below 1) and {name('greedy')} do not apply")
    context = prefix_ids
    if kind != "plain":
        # A sample begins from the record-start state: after the model's delimiter for a records model,
        # else, without a prefix, after the first stop string when the model knows it.
        start = records.delimiter
        if start is None and not o.prefix and stops and all(c in vocab.chars for c in stops[0]):
            start = stops[0]
        # Both in the vocabulary's dtype (1 to 4 bytes per character): the prefix may be megabytes long.
        context = np.concatenate([vocab.encode(start), prefix_ids]) if start else prefix_ids
    rule = Stops(stops, max_length=o.n, min_length=min_length or 0) if stops else None
    seed, drawn = o.seed, False
    if kind == "beam":
        seed = None
    elif seed is None:
        seed, drawn = secrets.randbelow(2**31), True
    return GenerationPlan(model, vocab, o, kind, context, sampling, rule, seed, drawn, accept, notes,
                          constraint=constraint)


def for_label(model: CharRNN, labels: LabelSet | None, label: str | None, option: str = "--label") -> Any:
    """`model` fixed to `label` (model.LabelView) for a label-conditioned model, which needs one; an
    unlabelled model takes none. An unknown label is a UsageError naming the closest ones."""
    if labels is None or not model.config.labels:
        if label is not None:
            raise UsageError(f"{option} applies to a model trained with --labels; this one has no labels")
        return model
    if label is None:
        shown = ", ".join(repr(n) for n in labels.names[:10]) + (" ..." if len(labels.names) > 10 else "")
        raise UsageError(f"this model is conditioned on labels: give {option} (one of {shown})")
    return model.for_label(labels.id_of(label, option))


def _form(vocab: Vocab, o: GenerateOptions, name: Callable[[str], str]) -> Constraint | None:
    """The options' form (--acrostic, --template), checked against the vocabulary before anything is
    sampled; None without one. A form ends its samples itself: stop strings, --min-length, --novel and
    --beam do not combine with it (a records model's own delimiter is only where its samples start)."""
    if o.acrostic is None and o.template is None:
        return None
    clash = [f for f, given in (("beam", o.beam is not None), ("stop", o.stop), ("novel", o.novel),
                                ("min_length", o.min_length)) if given]
    if clash:
        raise UsageError(f"{name(clash[0])} does not combine with {name('acrostic')} or {name('template')}")
    if o.template is None and o.n < 1:
        raise UsageError(f"{name('n')} must be >= 1 with {name('acrostic')}, got {o.n}")
    try:
        constraint = Constraint(acrostic=o.acrostic or "", template=o.template, placeholder=o.placeholder,
                                line_ends=o.line_ends)
        constraint.check(vocab)
    except UsageError as e:  # charrnn.inference.forms names the options as `charrnn generate` does
        message = str(e)
        for f in ("acrostic", "template", "placeholder", "line_ends"):
            message = message.replace(option_name(f), name(f))
        raise UsageError(message) from None
    return constraint


def _novelty(records: RecordsInfo, prefix: str, name: Callable[[str], str],
             notes: list[str]) -> Callable[[str], bool]:
    """--novel: whether a sample (after `prefix`) is not a training record, by the checkpoint's hashes."""
    from charrnn.data.records import contains

    if records.hashes is None and records.exported_as:
        raise UsageError(f"{name('novel')} needs the hashes of the training records, which an exported model "
                         f"({records.exported_as}) does not keep: use its checkpoint")
    if records.hashes is None:
        raise UsageError(f"{name('novel')} needs a model trained with --partition records (this checkpoint keeps "
                         "no hashes of its training records)")
    known = records.hashes
    if not records.hashes_complete:
        notes.append(f"note: the checkpoint keeps the hashes of {len(known):,} training records, not all: "
                     "a copy of another one is not recognised")

    def accept(sample: str) -> bool:
        return not contains(known, prefix + sample)

    return accept
