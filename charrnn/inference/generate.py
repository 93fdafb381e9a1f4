"""Sampling text from a model.

The prefix warms up the state: all its characters but the last go through the network and only
build state; the last one is the first input of the sampling loop. The warm-up reads the prefix a
window at a time (`warm_up`), at most MAX_WARM_UP_LOGITS logits per call, so memory is bounded by
the model, not by the prefix: a 4 MB prefix or a 70,000-character vocabulary costs what `eval
perplexity` costs. Each further character costs one step of a Stepper (charrnn.model.stepper: O(1) work,
no re-reading of the text so far).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from charrnn.data.vocab import Vocab
from charrnn.errors import DataError, UsageError
from charrnn.model.network import CharRNN, State, select_streams
from charrnn.model.stepper import Stepper
from charrnn.threads import ThreadChooser, fixed

MAX_WARM_UP_LOGITS = 1 << 24  # logits of one warm-up call, window x vocabulary floats (64 MB of float32)
WARM_UP_STEPS = 256  # the longest warm-up window


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    greedy: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.temperature < math.inf:
            raise UsageError(f"--temperature must be a finite number > 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise UsageError(f"--top-k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UsageError(f"--top-p must be in (0, 1], got {self.top_p}")

    @property
    def plain(self) -> bool:
        """Whether this draws from the model's own distribution: temperature 1, no top-k, top-p 1 or
        none, not greedy (what beam search, which does not sample, is compatible with)."""
        return self.temperature == 1 and self.top_k is None and self.top_p in (None, 1) and not self.greedy


def draw(weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One id per row of non-negative `weights` (B, V), with probability proportional to its weight.

    Inverse-CDF sampling: u uniform in [0, total), the first id whose cumulative weight exceeds u.
    That id's own weight is positive (its cumulative weight rises there). Should rounding make u
    equal the total, the answer is the first id where the cumulative weight reaches the total,
    also one of positive weight. A few small ops: torch.multinomial costs 3x as much for one row
    and 6x for 64 (measured on CPU), which matters when sampling one character at a time.
    """
    return draw_with(weights, torch.rand(weights.shape[0], 1, generator=generator, device=weights.device))


def draw_with(weights: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """draw() with its uniform numbers given, (B, 1) in [0, 1): for rows whose numbers come from
    generators of their own (the server's streams, each with its request's seed)."""
    cdf = weights.cumsum(dim=-1)  # (B, V)
    total = cdf[:, -1:].contiguous()  # (B, 1)
    u = uniform * total
    return torch.minimum(torch.searchsorted(cdf, u, right=True), torch.searchsorted(cdf, total))[:, 0]


def temper(logits: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """Logits (B, V) divided by the temperature (a number, or (B, 1) float64, one per row) -> float32 (B, V).

    Temperatures below 1 shift the best logit to 0 first, so that a tiny one gives 0 for the best and
    -inf for the others (the greedy limit, ties shared) rather than overflowing to +inf (softmax NaN);
    dividing by one above 1 cannot overflow, and softmax shifts by the maximum itself. The division is
    done in float64: a temperature the options accept (any finite number > 0, 5e-324 to 1.8e308) is
    no float32 (1e-300 would become 0, 1e39 infinity, and the logits NaN, drawing an id past the
    vocabulary); the quotient rounds to float32 exactly as the limit asks (-inf, or 0 for all: uniform).
    """
    x = logits.double()
    if isinstance(temperature, torch.Tensor):
        best = x.max(dim=-1, keepdim=True).values
        return torch.where(temperature > 1, x / temperature, (x - best) / temperature).float()
    if temperature < 1:
        return ((x - x.max(dim=-1, keepdim=True).values) / temperature).float()
    return (x / temperature).float() if temperature > 1 else logits.float()


def next_ids(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> torch.Tensor:
    """Logits (B, V) -> sampled ids (B,)."""
    if sampling.greedy:
        return logits.argmax(dim=-1)
    logits = temper(logits, sampling.temperature)
    if sampling.top_k is not None and sampling.top_k < logits.shape[-1]:
        kth = logits.topk(sampling.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if sampling.top_p is not None and sampling.top_p < 1:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # Drop a token when the tokens ranked above it already reach top_p (the first always stays).
        drop = (sorted_p.cumsum(dim=-1) - sorted_p) >= sampling.top_p
        probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
    return draw(probs, generator)


def generate(
    model: CharRNN,
    vocab: Vocab,
    prefix_ids: np.ndarray,
    length: int,
    sampling: Sampling = Sampling(),
    seed: int = 0,
    num_samples: int = 1,
    threads: ThreadChooser | None = None,
) -> Iterator[list[str]]:
    """Yield, `length` times, a list of `num_samples` new characters (one per sample). `threads` times
    the steps (pooled into units of a few milliseconds) to choose the CPU threads (charrnn.threads)."""
    for ids, _ in generate_steps(model, vocab, prefix_ids, length, sampling, seed, num_samples, threads):
        yield list(vocab.decode(ids))


@torch.inference_mode()
def generate_steps(
    model: CharRNN,
    vocab: Vocab,
    prefix_ids: np.ndarray,
    length: int,
    sampling: Sampling = Sampling(),
    seed: int = 0,
    num_samples: int = 1,
    threads: ThreadChooser | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """generate()'s steps as ids: `length` times (the new ids (B,), the logits (B, V) they were drawn
    from, <unk> at -inf), with None for the logits of a first character drawn from the training
    text's frequencies (no prefix: complete.frequency_logprobs is that distribution)."""
    if length < 0:
        raise UsageError(f"--length must be >= 0, got {length}")
    if num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1, got {num_samples}")
    threads = threads if threads is not None else fixed()  # times nothing it acts on
    device = next(model.parameters()).device
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    if length == 0:
        return
    # The prefix is read once, by one stream, and its state copied to every sample.
    state0, first = start(model, vocab, prefix_ids, generator)
    state = model.begin_state(num_samples, device)
    put_rows(state, list(range(num_samples)), state0)
    last = first(num_samples)
    remaining = length
    if len(prefix_ids) == 0:  # the first input was drawn from the character frequencies: it is output
        yield last, None
        remaining -= 1
    step = Stepper(model, banned=(vocab.unk_id,))  # never emit <unk>
    for _ in range(remaining):
        threads.before()
        logits, state = step(last, state)  # (B, V)
        last = next_ids(logits, sampling, generator)
        threads.after(num_samples)
        yield last, logits


@dataclass(frozen=True)
class Stops:
    """When a sample ends: on producing one of `strings` (if any), but never before `min_length` characters
    (the stop string not counted); at the latest after `max_length` characters (stop included).

    Before `min_length`, single-character stop strings cannot be drawn at all (their probability
    is set to 0), so a sample never contains its own delimiter; a longer stop string may appear
    there and simply does not end the sample.
    """

    strings: tuple[str, ...]
    max_length: int
    min_length: int = 0

    def __post_init__(self) -> None:
        if any(not s for s in self.strings):
            raise UsageError("--stop must not be empty")
        if self.max_length < 1:
            raise UsageError(f"--length must be >= 1 with --stop, got {self.max_length}")
        if not 0 <= self.min_length <= self.max_length:
            raise UsageError(f"--min-length must be in [0, --length={self.max_length}], got {self.min_length}")

    def single_char_ids(self, vocab: Vocab) -> list[int]:
        """Ids of the one-character stop strings the vocabulary knows."""
        table = {c: i for i, c in enumerate(vocab.chars)}
        return [table[s] for s in self.strings if len(s) == 1 and s in table]

    def pending(self, text: str) -> int:
        """How many characters at the end of `text` may still become a stop string (the longest end
        of `text` that begins one): what a stream holds back until the next characters decide."""
        held = 0
        for s in self.strings:
            for n in range(min(len(s) - 1, len(text)), held, -1):
                if text.endswith(s[:n]):
                    held = n
                    break
        return held

    def ended(self, text: str) -> str | None:
        """The sample `text` without its stop string if it has ended now, else None."""
        for s in self.strings:
            if text.endswith(s) and len(text) - len(s) >= self.min_length:
                return text[: -len(s)]
        return text if len(text) >= self.max_length else None


def warm_up(model: CharRNN, ids: np.ndarray, state: State, max_logits: int | None = None) -> State:
    """The state of one stream (layers, 1, H) after reading `ids` (shape (n,), any integer dtype),
    a window at a time: a window of T ids makes (1, T, V) logits that are thrown away, so T is cut
    to keep T x V under `max_logits`, and ids become int64 one window at a time (not 8 bytes per
    prefix character at once). `max_logits` defaults to MAX_WARM_UP_LOGITS."""
    device = next(model.parameters()).device
    limit = max_logits if max_logits is not None else MAX_WARM_UP_LOGITS
    window = max(1, min(WARM_UP_STEPS, limit // model.config.vocab_size))
    for start in range(0, len(ids), window):
        x = torch.as_tensor(np.asarray(ids[start : start + window], dtype=np.int64), device=device)[None]  # (1, T)
        _, state = model.features(x, state)
    return state


def start(model: CharRNN, vocab: Vocab, prefix_ids: np.ndarray,
           generator: torch.Generator) -> tuple[State, Callable[[int], torch.Tensor]]:
    """State for one stream after all prefix characters but the last, and a function giving the
    first inputs of `rows` streams: the prefix's last character, or, without a prefix, a draw from
    the training text's character frequencies (which is then the sample's first character)."""
    device = next(model.parameters()).device
    state = model.begin_state(1, device)
    if len(prefix_ids) == 0:
        counts = torch.tensor(vocab.counts, dtype=torch.float64, device=device)
        return state, lambda rows: torch.multinomial(counts.expand(rows, -1), 1, generator=generator)[:, 0]
    state = warm_up(model, prefix_ids[:-1], state)
    last = torch.tensor([int(prefix_ids[-1])], dtype=torch.int64, device=device)
    return state, lambda rows: last.expand(rows).clone()


def put_rows(state: State, rows: list[int], source: State) -> None:
    """Overwrite streams `rows` of `state` with the one-stream state `source`, in place."""
    pairs = zip(state, source, strict=True) if isinstance(state, tuple) else [(state, source)]
    for dst, src in pairs:
        dst[:, rows] = src


def generate_samples(
    model: CharRNN,
    vocab: Vocab,
    prefix_ids: np.ndarray,
    stops: Stops,
    sampling: Sampling = Sampling(),
    seed: int = 0,
    num_samples: int = 1,
    *,
    parallel: int = 64,
    accept: Callable[[str], bool] | None = None,
    max_rejected: int | None = None,
    on_rejected: Callable[[str], None] | None = None,
    threads: ThreadChooser | None = None,
) -> Iterator[str]:
    """Yield `num_samples` samples (without their stop string), each as soon as it ends.

    Up to `parallel` samples are drawn side by side; a stream that ends starts the next sample from
    the prefix's state. A sample that `accept` refuses is dropped (`on_rejected` is told) and drawn
    again; after `max_rejected` refusals (default 100 per sample asked, at least 1000) a DataError.
    `threads` times the steps to choose the CPU threads, as in `generate`.
    """
    parts: dict[int, list[str]] = {}
    for number, piece, ended in stream_samples(model, vocab, prefix_ids, stops, sampling, seed, num_samples,
                                               parallel=parallel, accept=accept, max_rejected=max_rejected,
                                               on_rejected=on_rejected, threads=threads):
        parts.setdefault(number, []).append(piece)
        if ended:
            yield "".join(parts.pop(number))


@torch.inference_mode()
def stream_samples(
    model: CharRNN,
    vocab: Vocab,
    prefix_ids: np.ndarray,
    stops: Stops,
    sampling: Sampling = Sampling(),
    seed: int = 0,
    num_samples: int = 1,
    *,
    parallel: int = 64,
    accept: Callable[[str], bool] | None = None,
    max_rejected: int | None = None,
    on_rejected: Callable[[str], None] | None = None,
    threads: ThreadChooser | None = None,
) -> Iterator[tuple[int, str, bool]]:
    """The samples of `generate_samples` as they grow: (sample number, new text, whether the sample
    ended with it). A sample's pieces joined are the sample; samples are numbered 0, 1, ... in the
    order they start. The characters that may still turn out to begin a stop string are held back
    until the next ones decide (Stops.pending). With `accept`, a sample is told only whole, when it
    has ended and been accepted (a dropped one is never shown), numbered in the order accepted.
    """
    if num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1, got {num_samples}")
    threads = threads if threads is not None else fixed()  # times nothing it acts on
    device = next(model.parameters()).device
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    state0, first = start(model, vocab, prefix_ids, generator)
    rows = min(parallel, num_samples)
    state = model.begin_state(rows, device)
    put_rows(state, list(range(rows)), state0)
    last = first(rows)
    drawn_first = len(prefix_ids) == 0  # the first input is then the sample's first character
    texts = list(vocab.decode(last)) if drawn_first else [""] * rows
    numbers, sent = list(range(rows)), [0] * rows  # each row's sample number; its characters already told
    banned_stops = stops.single_char_ids(vocab)
    limit = max_rejected if max_rejected is not None else max(1000, 100 * num_samples)
    done, started, rejected = 0, rows, 0
    active = [True] * rows
    step = Stepper(model, banned=(vocab.unk_id,))  # never emit <unk>
    while done < num_samples:
        threads.before()
        logits, state = step(last, state)  # (rows, V)
        short = [i for i in range(rows) if len(texts[i]) < stops.min_length]
        if banned_stops and short:
            logits[torch.tensor(short, device=device)[:, None], torch.tensor(banned_stops, device=device)] = -math.inf
        last = next_ids(logits, sampling, generator)
        threads.after(rows)
        chars = vocab.decode(last)
        restart = []
        for i in range(rows):
            if not active[i]:
                continue
            texts[i] += chars[i]
            sample = stops.ended(texts[i])
            if sample is None:
                safe = len(texts[i]) - stops.pending(texts[i])
                if accept is None and safe > sent[i]:
                    yield numbers[i], texts[i][sent[i] : safe], False
                    sent[i] = safe
                continue
            if accept is None or accept(sample):
                yield (numbers[i] if accept is None else done), sample[sent[i] :], True
                done += 1
            else:
                rejected += 1
                if on_rejected is not None:
                    on_rejected(sample)
                if rejected > limit:
                    raise DataError(f"gave up after dropping {rejected} samples that copy training records "
                                    f"({done} of {num_samples} novel samples found)")
            if started < num_samples + rejected:
                numbers[i], sent[i] = started, 0
                started += 1
                restart.append(i)
            else:
                active[i] = False
        if restart:
            index = torch.tensor(restart, device=device)
            put_rows(state, restart, state0)
            last[index] = first(len(restart))
            fresh = vocab.decode(last[index])
            for j, i in enumerate(restart):
                texts[i] = fresh[j] if drawn_first else ""


@dataclass(frozen=True)
class BeamResult:
    text: str  # the continuation, without its stop string
    logprob: float  # natural log-probability of the continuation and its stop string
    score: float  # logprob / characters (stop string included): the ranking, length-normalised
    stopped: bool  # ended on a stop string (else it reached the maximum length)

    def to_dict(self) -> dict:
        return {"text": self.text, "logprob": self.logprob, "score": self.score, "stopped": self.stopped}


def _choose(cand: torch.Tensor, finite: int, width: int, texts: list[str], vocab: Vocab, stops: Stops, beam: int,
            finished: list[BeamResult], accept: Callable[[str], bool] | None,
            on_rejected: Callable[[str], None] | None) -> tuple[list[int], list[int], list[float], list[str]]:
    """One step of beam search: the live hypotheses kept from the candidates `cand` (A * V,) (row,
    id, log-probability and text of each), the finished ones appended to `finished`.

    The 2 * beam best candidates are looked at, as if the ones `accept` drops were not there:
    without `accept` a top-k, with it every candidate is ranked and taken in order."""
    top = cand.topk(min(2 * beam, finite) if accept is None else finite)
    rows, ids, lps, kept = [], [], [], []
    taken = 0
    for value, flat in zip(top.values.tolist(), top.indices.tolist(), strict=True):
        if taken >= 2 * beam:
            break
        parent, cid = divmod(flat, width)
        text = texts[parent] + vocab.chars[cid]  # never <unk>: its log-probability is -inf
        sample = stops.ended(text)
        if sample is not None and accept is not None and not accept(sample):
            if on_rejected is not None:
                on_rejected(sample)
            continue
        taken += 1
        if sample is not None:
            if len(finished) < beam:
                finished.append(BeamResult(sample, value, value / len(text), len(sample) < len(text)))
        elif len(rows) < beam:
            rows.append(parent)
            ids.append(cid)
            lps.append(value)
            kept.append(text)
    return rows, ids, lps, kept


@torch.inference_mode()
def beam_search(model: CharRNN, vocab: Vocab, prefix_ids: np.ndarray, beam: int, max_length: int,
                stops: Stops | None = None, num_results: int = 1, *, accept: Callable[[str], bool] | None = None,
                on_rejected: Callable[[str], None] | None = None) -> list[BeamResult]:
    """The `num_results` most likely continuations found by beam search of width `beam`.

    Each step extends every live hypothesis by every character and keeps the `beam` best by total
    log-probability. A hypothesis ends on a stop string (not before `stops.min_length`) or at
    `max_length` characters. Finished hypotheses are ranked by their log-probability divided by
    their length in characters, stop string included (the mean log-probability per character):
    raw log-probability would always prefer the shortest ending. The search ends when `beam`
    hypotheses have finished or none is left. Deterministic (no sampling).

    A finished hypothesis that `accept` refuses (`--novel`: a copy of a training record) is dropped
    (`on_rejected` is told) and takes no place among the finished ones: the search goes on to the
    next likeliest, so what it returns are the likeliest continuations that `accept` takes.
    """
    if beam < 1:
        raise UsageError(f"--beam must be >= 1, got {beam}")
    if max_length < 1:
        raise UsageError(f"--length must be >= 1 with --beam, got {max_length}")
    if not 1 <= num_results <= beam:
        raise UsageError(f"--num-samples must be between 1 and --beam ({beam}) with beam search, got {num_results}")
    device = next(model.parameters()).device
    model.eval()
    stops = Stops(stops.strings if stops else (), max_length=max_length, min_length=stops.min_length if stops else 0)
    banned_stops = torch.tensor(stops.single_char_ids(vocab), dtype=torch.int64, device=device)
    state, _ = start(model, vocab, prefix_ids, torch.Generator(device=device))
    step = Stepper(model)
    texts, lps = [""], torch.zeros(1, dtype=torch.float64, device=device)
    if len(prefix_ids) == 0:  # the first character: log of the training text's frequencies
        counts = torch.tensor(vocab.counts, dtype=torch.float64, device=device)
        logp = (counts / counts.sum()).log()[None, :]
    else:
        last = torch.as_tensor(np.asarray(prefix_ids[-1:], dtype=np.int64), device=device)
        logp, state = step.log_probs(last, state, torch.float64)
    finished: list[BeamResult] = []
    while True:
        if vocab.unk_id is not None and logp.shape[1] > vocab.unk_id:
            logp[:, vocab.unk_id] = -math.inf
        if len(banned_stops) and len(texts[0]) < stops.min_length:
            logp[:, banned_stops] = -math.inf
        cand = (lps[:, None] + logp).reshape(-1)  # (A * V,)
        finite = int(torch.isfinite(cand).sum())
        if finite == 0:
            break
        keep = _choose(cand, finite, logp.shape[1], texts, vocab, stops, beam, finished, accept, on_rejected)
        keep_rows, keep_ids, keep_lp, keep_text = keep
        if len(finished) >= beam or not keep_rows:
            break
        index = torch.tensor(keep_rows, device=device)
        state = select_streams(state, index)
        texts, lps = keep_text, torch.tensor(keep_lp, dtype=torch.float64, device=device)
        logp, state = step.log_probs(torch.tensor(keep_ids, device=device), state, torch.float64)
    finished.sort(key=lambda r: -r.score)
    return finished[:num_results]
