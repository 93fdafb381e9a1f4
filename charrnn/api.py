"""The public Python API: `charrnn.load(path)` gives a Model to generate from, score, complete,
export and look inside.

Each method runs the code of the command it mirrors, so its answer is what the command prints
with --json (or, for generate, with --no-echo); it prints nothing, and raises the domain errors of
charrnn.errors, never SystemExit.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from charrnn.errors import DataError, UsageError
from charrnn.inference.forms import DEFAULT_LINE_ENDS, DEFAULT_PLACEHOLDER

if TYPE_CHECKING:
    import numpy as np

    from charrnn.analysis.bptt import BpttCurve
    from charrnn.analysis.cells import Ranking, Unit
    from charrnn.analysis.context import ContextCurve
    from charrnn.analysis.trace import Trace
    from charrnn.data.vocab import Vocab
    from charrnn.inference.evaluate import EvalResult
    from charrnn.inference.genplan import GenerationPlan, RecordsInfo
    from charrnn.model.network import CharRNN
    from charrnn.threads import ThreadChooser


def load(path: str | os.PathLike, device: str = "cpu", threads: int | None = None) -> Model:
    """The model of a checkpoint or a .safetensors file (whatever `-m` takes), in eval mode on `device`
    ("cpu", "cuda", "mps" or "auto"). `threads` sets torch's CPU thread count (as --threads does);
    None leaves it as it is."""
    from charrnn.inference.genplan import RecordsInfo
    from charrnn.model.checkpoint import load_model
    from charrnn.model.network import resolve_device
    from charrnn.threads import fixed, make_chooser

    dev = resolve_device(device)
    chooser = make_chooser(threads, dev) if threads is not None else fixed()
    model, vocab, ckpt = load_model(path, dev)
    return Model(os.fspath(path), model, vocab, RecordsInfo.of(ckpt), chooser)


@dataclass(frozen=True)
class CellReport:
    """What `inspect cells` finds: every unit correlated with properties of the text (`ranking`), beside a
    control of random weights (`control`), and the units' activations over the text (`trace`)."""

    text: str
    ranking: Ranking
    control: Ranking
    trace: Trace

    def records(self, prop: str | None = None) -> list[dict]:
        """One dict per unit, best first, as `inspect cells --json` prints them (ranked by `prop`, or each
        unit's best property)."""
        return self.ranking.records(prop, self.control)

    def unit(self, spec: str) -> Unit:
        """A unit named as `--unit` names it: "LAYER:INDEX" (an LSTM's cell state) or "LAYER:INDEX:h"."""
        from charrnn.analysis.cells import parse_unit

        layer = self.trace.layers[0]
        return parse_unit(spec, len(self.trace.layers), layer.h.shape[1], self.ranking.lstm)

    def activation(self, spec: str) -> np.ndarray:
        """A unit's value after each character of the text, (T,): tanh(c) for an LSTM's cell state, else h."""
        from charrnn.analysis.cells import activation

        return activation(self.trace, self.unit(spec))


class Model:
    """A loaded model. Build one with charrnn.load()."""

    def __init__(self, path: str, model: CharRNN, vocab: Vocab, records: RecordsInfo, threads: ThreadChooser) -> None:
        self.path = path
        self.module = model  # the torch module (charrnn.model.network.CharRNN), in eval mode
        self.vocab = vocab
        self.records = records
        self._threads = threads

    def __repr__(self) -> str:
        c = self.module.config
        return f"<charrnn.Model {self.path!r}: {c.cell} {c.layers}x{c.hidden}, {self.vocab.size} characters>"

    @property
    def config(self) -> dict:
        """The architecture: cell, layers, hidden, input, embed_dim, dropout, ... (as the checkpoint keeps it)."""
        return self.module.config.to_dict()

    def _plan(self, prefix: str, n: int, options: dict[str, Any]) -> GenerationPlan:
        from charrnn.inference.genplan import GenerateOptions, plan

        stop = options.pop("stop", ())
        stops = (stop,) if isinstance(stop, str) else tuple(stop)
        return plan(self.module, self.vocab, self.records, GenerateOptions(prefix=prefix, n=n, stop=stops, **options))

    def generate(self, prefix: str = "", n: int = 500, *, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, greedy: bool = False, seed: int | None = None, num_samples: int = 1,
                 stop: str | Sequence[str] = (), min_length: int | None = None, novel: bool = False,
                 beam: int | None = None, unk: str = "error", acrostic: str | None = None,
                 template: str | None = None, placeholder: str = DEFAULT_PLACEHOLDER,
                 line_ends: str = DEFAULT_LINE_ENDS, label: str | None = None) -> list[str]:
        """The continuations of `prefix` (without it), one per sample: what `charrnn generate --no-echo`
        prints with the same options and seed. With `stop` (strings, taken as given: no backslash escapes),
        or for a model trained with --partition records, samples end at a stop string and are listed in
        the order they end; `beam` gives beam search's results, best first. `seed` None draws one at random.
        `acrostic`, `template` (with `placeholder`, `line_ends`) give samples of that form (`generate_form`
        gives their log-probabilities too); `label` conditions a model trained with --labels."""
        job = self._plan(prefix, n, dict(temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy, seed=seed,
                                         num_samples=num_samples, stop=stop, min_length=min_length, novel=novel,
                                         beam=beam, unk=unk, acrostic=acrostic, template=template,
                                         placeholder=placeholder, line_ends=line_ends, label=label))
        return job.samples(self._threads)

    def generate_form(self, prefix: str = "", n: int = 500, *, acrostic: str | None = None,
                      template: str | None = None, placeholder: str = DEFAULT_PLACEHOLDER,
                      line_ends: str = DEFAULT_LINE_ENDS, temperature: float = 1.0, top_k: int | None = None,
                      top_p: float | None = None, greedy: bool = False, seed: int | None = None,
                      num_samples: int = 1, unk: str = "error", label: str | None = None) -> list[dict]:
        """Samples of a form (an acrostic, a template, or both), each a dict text, logprob, logprobs and
        model_logprobs: what `charrnn generate --json --no-echo` gives with the same options and seed."""
        if acrostic is None and template is None:
            raise UsageError("generate_form needs an acrostic or a template")
        job = self._plan(prefix, n, dict(temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy, seed=seed,
                                         num_samples=num_samples, unk=unk, acrostic=acrostic, template=template,
                                         placeholder=placeholder, line_ends=line_ends, label=label))
        job.samples(self._threads)
        return [r.to_dict() for r in job.form_results]

    def stream(self, prefix: str = "", n: int = 500, *, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, greedy: bool = False, seed: int | None = None,
               stop: str | Sequence[str] = (), min_length: int | None = None, novel: bool = False,
               unk: str = "error", label: str | None = None) -> Iterator[str]:
        """One sample's text as it is sampled (joined: generate()'s one sample). The options are checked
        before the first piece; closing the iterator stops the generation."""
        job = self._plan(prefix, n, dict(temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy, seed=seed,
                                         stop=stop, min_length=min_length, novel=novel, unk=unk, label=label))
        return (piece for _, piece, _ in job.pieces(self._threads))

    def perplexity(self, text: str, *, unk: str = "map", streams: int = 64, num_steps: int = 256) -> EvalResult:
        """How well the model predicts `text`: a result with nats_per_char, bits_per_char, perplexity, chars
        (scored) and unknown (skipped), as `charrnn eval perplexity --json` gives them. unk="error" refuses
        characters the model does not know."""
        from charrnn.inference.evaluate import evaluate

        if streams < 1 or num_steps < 1:
            raise UsageError("streams and num_steps must be >= 1")
        ids = self.vocab.encode(text, unk=unk, where="the text")  # type: ignore[arg-type]
        return evaluate(self.module, ids, unk_id=self.vocab.unk_id, streams=streams, num_steps=num_steps,
                        threads=self._threads)

    def score(self, records: Iterable[str], *, end: bool = True, delimiter: str | None = None) -> list[dict]:
        """One dict per record, in order, as `charrnn eval score --json` prints them: text, chars, unknown,
        nats, nats_per_char and bits_per_char (None when nothing was scored). Each record is read from the
        record-start state (after the model's delimiter, else after `delimiter`, by default a newline);
        `end` scores the delimiter after it too."""
        from charrnn.inference.score import Scorer, score_stream

        if delimiter == "":
            raise UsageError("the delimiter must not be empty")
        scorer = Scorer(self.module, self.vocab, self.records.delimiter or delimiter or "\n")
        out = []
        for window in score_stream([scorer], [list(records)], end=end, threads=self._threads):
            out.extend({"text": text, **scores[0].to_dict()} for text, scores in window)
        return out

    def classify(self, records: Iterable[str]) -> list[dict]:
        """A model trained with --labels as a classifier: one dict per record (TEXT, or LABEL<TAB>TEXT),
        as `charrnn eval classify --json` prints them: text, label (the best), scores (best first), and
        for a labelled record expected and correct."""
        from charrnn.inference.classify import classify

        if self.records.labels is None:
            raise UsageError("classify needs a model trained with --labels")
        boundary = self.records.delimiter or "\n"
        return [c.to_dict() for c in classify(self.module, self.vocab, self.records.labels, boundary, list(records),
                                              threads=self._threads)]

    def complete(self, prefix: str = "", k: int = 5, *, words: int | None = None,
                 unk: str = "error", label: str | None = None) -> list[tuple[str, float]]:
        """The k likeliest next characters after `prefix`, best first, as (char, probability) pairs (as
        `charrnn complete --json`); with `words`, that many likeliest next words instead; `label` for a
        model trained with --labels."""
        from charrnn.inference.complete import next_chars, next_words
        from charrnn.inference.genplan import for_label

        if k < 1 or (words is not None and words < 1):
            raise UsageError("k and words must be >= 1")
        ids = self.vocab.encode(prefix, unk=unk, where="the prefix")  # type: ignore[arg-type]
        delimiter = self.records.delimiter
        start = self.vocab.encode(delimiter, unk="map") if delimiter is not None else None
        model = for_label(self.module, self.records.labels, label, "label")
        guesses = (next_words(model, self.vocab, ids, words, start) if words is not None
                   else next_chars(model, self.vocab, ids, k, start))
        return [(g.text, g.prob) for g in guesses]

    def export(self, path: str | os.PathLike, format: str | None = None, **options: Any) -> dict:  # noqa: A002
        """Write the model as `charrnn export` does (format "onnx", "safetensors" or "html", else by the
        name's ending; html takes weights= and title=): {"path", "format", "bytes"}."""
        from charrnn.export.exporting import export

        return export(self.path, os.fspath(path), format, **options)

    def _analysed(self, text: str) -> np.ndarray:
        from charrnn.analysis.trace import analysis_ids

        return analysis_ids(text, self.vocab)[0]

    def cells(self, text: str, *, seed: int = 0) -> CellReport:
        """What the hidden units track in `text`, as `charrnn inspect cells` finds it (`seed`: the control's)."""
        from charrnn.analysis.cells import control_model, rank
        from charrnn.analysis.trace import trace

        ids = self._analysed(text)
        t = trace(self.module, ids)
        control = rank(trace(control_model(self.module, seed), ids), text)
        return CellReport(text, rank(t, text), control, t)

    def gates(self, text: str) -> list[dict]:
        """How the gates of an LSTM or GRU saturate on `text`: one dict per gate unit (layer, gate, unit,
        left, right), as `charrnn inspect gates --json` prints them."""
        from charrnn.analysis import gates as gt
        from charrnn.analysis.trace import trace

        gt.check_gated(self.module.config.base_cell)
        return gt.records(gt.saturation(trace(self.module, self._analysed(text), gates=True)))

    def bptt(self, text: str, **options: Any) -> BpttCurve:
        """How far gradients reach back in `text` (`charrnn inspect bptt`): the curve's grad_norms[k] is the
        mean gradient norm k characters back; options: steps, windows."""
        from charrnn.analysis.bptt import gradient_norms

        ids = self._analysed(text)
        return gradient_norms(self.module, ids, unk_id=self.vocab.unk_id, boundary_ids=self._boundary(), **options)

    def context(self, text: str, **options: Any) -> ContextCurve:
        """How much context the model uses on `text` (`charrnn eval context`): the loss with full context
        (`full`) and with each truncated length (`points`); options: lengths, targets, perturb, beyond, seed."""
        import numpy as np

        from charrnn.analysis.context import context_curve

        if len(text) < 2:
            raise DataError("the text is too short: nothing to measure")
        ids = np.asarray(self.vocab.encode(text, unk="map", where="the text"))
        return context_curve(self.module, ids, unk_id=self.vocab.unk_id, boundary_ids=self._boundary(), **options)

    def _boundary(self) -> np.ndarray | None:
        import numpy as np

        delimiter = self.records.delimiter
        return None if delimiter is None else self.vocab.encode(delimiter, unk="map").astype(np.int64)
