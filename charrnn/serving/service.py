"""Models kept loaded, answering requests: the core of `charrnn serve`, on stdin/stdout (the line
protocol, `handle`) or over HTTP (charrnn.serving.server, which calls the run_* functions itself).

Requests are parsed and checked by charrnn.serving.protocol; here they run on a LoadedModel through the
same code as the commands they mirror, so an answer is what the command prints with --json:
`next` is `charrnn complete`, `generate` is `charrnn generate` (records models, stop strings,
--novel and --beam included), `score` is `charrnn eval score`. Nothing here keeps state between
requests, and the models are only read (inference mode): several threads may run requests at once.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from charrnn.data.labels import LabelSet
from charrnn.data.vocab import Vocab
from charrnn.errors import CharrnnError, RequestError, UnknownCharacterError, UsageError
from charrnn.inference.genplan import GenerationPlan, RecordsInfo, plan
from charrnn.model.network import CharRNN
from charrnn.serving.protocol import (
    GenerateRequest,
    Limits,
    NextRequest,
    ScoreRequest,
    json_kind,
    parse_generate,
    parse_models,
    parse_next,
    parse_score,
)

__all__ = ["Limits", "LoadedModel", "RequestError", "error_status", "handle", "load_models", "model_spec",
           "models_info", "pick_model", "prefix_ids", "run_generate", "run_next", "run_score", "stream_generate"]

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model loaded once for many requests, with what its requests need from the checkpoint."""

    name: str
    model: CharRNN  # in eval mode, on its device
    vocab: Vocab
    delimiter: str | None  # a records model's delimiter (its record-start state), else None
    start_ids: np.ndarray | None  # the delimiter's ids, read before a prefix (`complete`)
    record_hashes: np.ndarray | None  # sorted hashes of the training records (--novel), if kept
    summary: dict  # what `info()` reports
    created: int = 0  # when its checkpoint was written (Unix seconds; OpenAI's model list shows it)
    labels: LabelSet | None = None  # a label-conditioned model's labels

    def info(self) -> dict:
        """What `models` reports of this model: its name, architecture, vocabulary and training."""
        return dict(self.summary)


def _finite(x: Any) -> Any:
    return x if not isinstance(x, float) or math.isfinite(x) else None


def _summary(name: str, model: CharRNN, vocab: Vocab, ckpt: dict, delimiter: str | None) -> dict:
    from charrnn.model.history import History

    cfg = model.config
    train = ckpt.get("train_config") if isinstance(ckpt.get("train_config"), dict) else {}
    seconds = History.from_checkpoint(ckpt.get("history")).summary()["seconds"] if "history" in ckpt else None
    return {
        "name": name, "cell": cfg.cell, "layers": cfg.layers, "hidden": cfg.hidden, "input": cfg.input,
        "embed_dim": cfg.embed_dim if cfg.input == "embedding" else None,
        "vocab_size": len(vocab.chars) + int(vocab.unk_id is not None), "parameters": model.num_parameters(),
        "records_delimiter": delimiter,
        "labels": None if ckpt.get("labels") is None else list(ckpt["labels"]["names"]),
        "training": {"step": ckpt.get("step"), "epoch": ckpt.get("epoch"), "val_loss": _finite(ckpt.get("val_loss")),
                     "best_val_loss": _finite(ckpt.get("best_val_loss")),
                     "chars": (ckpt.get("data") or {}).get("chars"), "seconds": _finite(seconds),
                     "precision": train.get("precision"), "init_from": ckpt.get("init_from")},
    }


def model_spec(text: str) -> tuple[str, str]:
    """`-m NAME=PATH` or `-m PATH` -> (name, path); the name of a bare path is its file's stem. A
    NAME= part is read as a name only when the whole text is not itself an existing file."""
    head, sep, tail = text.partition("=")
    if sep and NAME.fullmatch(head) and tail and not Path(text).exists():
        return head, tail
    stem = Path(text).stem
    if not NAME.fullmatch(stem):
        raise UsageError(f"-m {text!r}: its file name does not make a model name (letters, digits, _ . -): "
                         "give one with -m NAME=PATH")
    return stem, text


def load_models(specs: list[tuple[str, str]], device: torch.device | str = "cpu") -> dict[str, LoadedModel]:
    """(name, path) pairs -> the loaded models by name, in the order given (the first is the default).
    Each checkpoint goes through charrnn.model.checkpoint.load_model (validated, weights only); its
    weights and optimizer state are not kept beyond the model."""
    from charrnn.model.checkpoint import label_set, load_model, record_delimiter

    if not specs:
        raise UsageError("give at least one model with -m PATH or -m NAME=PATH")
    models: dict[str, LoadedModel] = {}
    for name, path in specs:
        if name in models:
            raise UsageError(f"two models are named {name!r}: give each its own name with -m NAME=PATH")
        model, vocab, ckpt = load_model(path, device)
        delimiter = record_delimiter(ckpt)
        start = vocab.encode(delimiter, unk="map") if delimiter is not None else None
        hashes = ckpt.get("record_hashes")
        models[name] = LoadedModel(name, model, vocab, delimiter, start,
                                   None if hashes is None else hashes.numpy(),
                                   _summary(name, model, vocab, ckpt, delimiter), int(os.path.getmtime(path)),
                                   label_set(ckpt))
    return models


def pick_model(models: dict[str, LoadedModel], name: str | None) -> LoadedModel:
    """The model a request names, or the default (the first loaded) when it names none."""
    if name is None:
        return next(iter(models.values()))
    if name not in models:
        shown = name if len(name) <= 40 else name[:40] + "..."
        raise RequestError(404, f"unknown model {shown!r}: loaded are {', '.join(models)}")
    return models[name]


def models_info(models: dict[str, LoadedModel]) -> dict:
    return {"models": [lm.info() for lm in models.values()], "default": next(iter(models), None)}


def prefix_ids(lm: LoadedModel, text: str, unk: str) -> np.ndarray:
    """The ids of a request's prefix; characters the model does not know are a 422 under "unk": "error"."""
    try:
        return lm.vocab.encode(text, unk=unk, where='"prefix"')  # type: ignore[arg-type]
    except UnknownCharacterError as e:
        raise RequestError(422, str(e).replace("use --unk map", 'use "unk": "map"')) from None


def run_next(lm: LoadedModel, req: NextRequest) -> dict:
    """The answer of `charrnn complete --json`: {"prefix", "next": [{"char", "prob"}]}, or with
    "words", {"prefix", "words": [{"word", "prob"}]}."""
    from charrnn.inference.complete import next_chars, next_words
    from charrnn.inference.genplan import for_label

    ids = prefix_ids(lm, req.prefix, req.unk)
    try:
        model = for_label(lm.model, lm.labels, req.label, '"label"')
    except UsageError as e:
        raise RequestError(422, str(e)) from None
    if req.words is not None:
        guesses, key, field = next_words(model, lm.vocab, ids, req.words, lm.start_ids), "words", "word"
    else:
        guesses, key, field = next_chars(model, lm.vocab, ids, req.k, lm.start_ids), "next", "char"
    return {"prefix": req.prefix, key: [g.to_dict(field) for g in guesses]}


def stream_generate(lm: LoadedModel, req: GenerateRequest) -> Iterator[tuple[int, str]]:
    """(sample index, text) pieces of the samples as they are made; the pieces of index i, joined,
    are one sample. Without a stop string, one character of every sample per step; with a stop
    string (or a records model) the text of each sample as soon as no stop string can begin in it,
    the samples numbered in the order they begin to be told (with "novel", each whole once it is
    known to be new); beam search gives its results at the end. The request is checked against
    the model before this returns (a RequestError here, not at the first piece); closing the
    iterator stops the generation."""
    return ((i, piece) for i, piece, _ in _pieces(lm, req))


def run_generate(lm: LoadedModel, req: GenerateRequest, stopped: Callable[[], bool] | None = None) -> dict:
    """{"samples": [...], "seed": ...} (no seed for beam search, which does not sample); the
    samples are the continuations, each after the prefix when the request asks for "echo". Samples
    that end at a stop string are listed in the order they end, as `charrnn generate` prints them.
    `stopped()` true between two pieces ends it with genplan.GenerationStopped (the HTTP client has gone)."""
    job = generation_plan(lm, req)
    echo = req.prefix if req.echo else ""
    samples = [echo + s for s in job.samples(stopped=stopped)]
    if job.kind == "form":  # each sample's log-probabilities per character (charrnn.inference.constrained)
        return {"samples": samples, "seed": req.seed, "logprobs": [list(r.logprobs) for r in job.form_results],
                "model_logprobs": [list(r.model_logprobs) for r in job.form_results]}
    return {"samples": samples} if req.beam is not None else {"samples": samples, "seed": req.seed}


def generation_plan(lm: LoadedModel, req: GenerateRequest) -> GenerationPlan:
    """The request's generation on `lm` (charrnn.inference.genplan), checked: a RequestError (422) for what
    does not apply."""

    try:
        return plan(lm.model, lm.vocab, RecordsInfo(lm.delimiter, lm.record_hashes, labels=lm.labels), req,
                    name=lambda field: f'"{field}"', where='"prefix"')
    except UnknownCharacterError as e:
        raise RequestError(422, str(e).replace("use --unk map", 'use "unk": "map"')) from None
    except UsageError as e:
        raise RequestError(422, str(e)) from None


def _pieces(lm: LoadedModel, req: GenerateRequest) -> Iterator[tuple[int, str, bool]]:
    """(sample index, text, whether that sample ended with it), the request checked before the first."""
    job = generation_plan(lm, req)
    return _echoed(job, req.prefix if req.echo else "")


def _echoed(job: GenerationPlan, echo: str) -> Iterator[tuple[int, str, bool]]:
    """The plan's pieces, `echo` in front of each sample's first (alone, for plain samples of no characters)."""
    told: set[int] = set()
    if echo and job.kind == "plain":
        for i in range(job.options.num_samples):
            told.add(i)
            yield i, echo, False
    for i, piece, ended in job.pieces():
        if i not in told:
            told.add(i)
            piece = echo + piece
        yield i, piece, ended


def run_score(lm: LoadedModel, req: ScoreRequest) -> dict:
    """{"scores": [...]}, one object per record as `charrnn eval score --json` prints it."""
    from charrnn.inference.score import Scorer, score_texts

    boundary = lm.delimiter or req.delimiter or "\n"
    scores = score_texts(Scorer(lm.model, lm.vocab, boundary), list(req.records), end=req.end)
    return {"scores": [{"text": r, **{k: _finite(v) for k, v in s.to_dict().items()}}
                       for r, s in zip(req.records, scores, strict=True)]}


def error_status(e: BaseException) -> tuple[int, str]:
    """(HTTP status, one-line message) of anything a request raised."""
    if isinstance(e, RequestError):
        return e.status, str(e)
    if isinstance(e, CharrnnError):  # a request the core refuses (a usage or data error)
        return 422, " ".join(str(e).split())
    text = (str(e).splitlines() or [""])[0]
    if isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and ("allocate" in text or "out of memory" in text)):
        return 503, f"out of memory ({text or 'a memory allocation failed'}); ask for less"
    return 500, f"internal error: {type(e).__name__}: {text}"[:500]


OPS = ("next", "generate", "score", "models")
_RUN: dict[str, tuple[Callable[[Any, Limits], Any], Callable[[LoadedModel, Any], dict]]] = {
    "next": (parse_next, run_next), "generate": (parse_generate, run_generate), "score": (parse_score, run_score)}


def _answer(request: Any, models: dict[str, LoadedModel], limits: Limits) -> dict:
    if not isinstance(request, dict):
        raise RequestError(400, f"a request must be a JSON object, got {json_kind(request)}")
    op = request.get("op")
    if op not in OPS:
        shown = "missing" if "op" not in request else f"{str(op)[:40]!r}" if isinstance(op, str) else "not a string"
        raise RequestError(400, f'"op" is {shown}: one of {", ".join(OPS)}')
    if op == "models":
        parse_models(request, limits)
        return models_info(models)
    parse, run = _RUN[op]
    req = parse(request, limits)
    if getattr(req, "stream", False):
        raise RequestError(422, '"stream" is for HTTP: the line protocol answers each request with one line')
    return run(pick_model(models, req.model), req)


def handle(request: Any, models: dict[str, LoadedModel], limits: Limits | None = None) -> dict:
    """The answer to one request of the line protocol (a decoded JSON value): the op's answer, or
    {"error": "..."}; an "id" in the request is copied into the answer. Never raises (but for
    KeyboardInterrupt and SystemExit)."""
    try:
        answer = _answer(request, models, limits or Limits())
    except Exception as e:  # every failure of one request is that request's answer
        answer = {"error": error_status(e)[1]}
    if isinstance(request, dict) and "id" in request:
        answer = {"id": request["id"], **answer}
    return answer
