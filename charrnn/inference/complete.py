"""Next-character completion: what a model expects after a prefix, as characters or as whole words.

`next_chars` gives the k likeliest next characters with the model's probabilities. `next_words`
gives the k likeliest continuations up to the next word boundary (a character that is neither a
letter, a digit nor `_`: a space, punctuation, a newline): a beam search over characters in which
a partial word w finishes with probability P(w) x P(a boundary | w), the probability that the
next word is exactly w. A continuation may be empty (the prefix's word ends here). The search stops
when no partial word can still beat the k-th finished one, or at `max_length` characters.

Probabilities are the model's own: <unk> is never offered, and the mass the model puts on it is
left out, not spread over the rest. The state after the prefix comes from one stream warmed up
a window at a time (generate.warm_up); the steps after it run through a Stepper.

Where the prefix starts: for a model trained with `--partition records`, after its delimiter (the
record-start state), so an empty prefix asks for the start of a record; for another model an
empty prefix has nothing to condition on, and the first character's distribution is the training
text's character frequencies (what `generate` draws a first character from).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from charrnn.data.vocab import Vocab
from charrnn.inference.generate import MAX_WARM_UP_LOGITS, WARM_UP_STEPS, warm_up
from charrnn.model.network import CharRNN, State, cat_streams, select_streams
from charrnn.model.stepper import Stepper

MAX_WORD = 40  # characters a word continuation may have
CHUNK_ELEMENTS = 1 << 22  # partial words x vocabulary in one pass of next_words (32 MiB per float64 matrix)


@dataclass(frozen=True)
class Guess:
    text: str  # a character, or a word continuation
    prob: float

    def to_dict(self, key: str = "char") -> dict:
        return {key: self.text, "prob": self.prob}


def is_boundary(c: str) -> bool:
    """Whether `c` ends a word: anything but a letter, a digit or `_`."""
    return not (c.isalnum() or c == "_")


def frequency_logprobs(vocab: Vocab, device: torch.device) -> torch.Tensor:
    """The first character's log-probabilities when there is nothing to condition on: the training
    text's character frequencies, (V,) float64 (<unk>, never counted, at -inf)."""
    counts = torch.tensor([*vocab.counts] + [0] * (vocab.size - len(vocab.chars)), dtype=torch.float64,
                          device=device)
    return counts.log() - counts.sum().log()


@torch.inference_mode()
def after_prefix(model: CharRNN, vocab: Vocab, prefix_ids: np.ndarray,
                 start_ids: np.ndarray | None = None) -> tuple[Stepper, State, torch.Tensor]:
    """(a Stepper of the model, the state after reading the prefix, the next character's log-probabilities
    (V,) with <unk> at -inf). `start_ids` are read first (a records model's delimiter)."""
    device = next(model.parameters()).device
    ids = np.concatenate([start_ids, prefix_ids]) if start_ids is not None else np.asarray(prefix_ids)
    step = Stepper(model)
    state = model.begin_state(1, device)
    if len(ids) == 0:
        logp = frequency_logprobs(vocab, device)
    else:
        state = warm_up(model, ids[:-1], state)
        logp, state = step.log_probs(torch.tensor([int(ids[-1])], device=device), state, torch.float64)
        logp = logp[0]  # (V,)
    if vocab.unk_id is not None:
        logp[vocab.unk_id] = -math.inf
    return step, state, logp


def next_chars(model: CharRNN, vocab: Vocab, prefix_ids: np.ndarray, k: int = 10,
               start_ids: np.ndarray | None = None) -> list[Guess]:
    """The k likeliest next characters after the prefix, best first (fewer where fewer are possible)."""
    _, _, logp = after_prefix(model, vocab, prefix_ids, start_ids)
    return _top(logp, vocab, k)


def _top(logp: torch.Tensor, vocab: Vocab, k: int) -> list[Guess]:
    values, ids = torch.topk(logp, min(k, len(vocab.chars)))
    return [Guess(vocab.chars[i], math.exp(v)) for v, i in zip(values.tolist(), ids.tolist(), strict=True)
            if v > -math.inf]


@torch.inference_mode()
def next_logprobs(model: CharRNN, vocab: Vocab, prefixes: Sequence[np.ndarray], start_ids: np.ndarray | None = None,
                  max_logits: int | None = None) -> torch.Tensor:
    """The next character's log-probabilities after each of several prefixes, (B, V) float64 with <unk> at
    -inf, from one batched forward pass: the prefixes (after `start_ids`) are right-padded to the longest
    and each row's logits are taken at its own last position. Exact for a recurrent model, whose output at
    a position never depends on what follows it. Read a window at a time (at most `max_logits` logits per
    call, default generate.MAX_WARM_UP_LOGITS); rows leave the batch once their prefix is read."""
    device = next(model.parameters()).device
    limit = max_logits if max_logits is not None else MAX_WARM_UP_LOGITS
    seqs = [np.concatenate([start_ids, p]) if start_ids is not None else np.asarray(p) for p in prefixes]
    out = torch.empty(len(seqs), vocab.size, dtype=torch.float64, device=device)
    # Longest first, so that the rows still reading are always the first `active` ones.
    order = sorted((i for i, s in enumerate(seqs) if len(s)), key=lambda i: -len(seqs[i]))
    for i in set(range(len(seqs))) - set(order):  # nothing to condition on: the training text's frequencies
        out[i] = frequency_logprobs(vocab, device)
    if order:
        lengths = [len(seqs[i]) for i in order]
        ids = np.zeros((len(order), lengths[0]), dtype=np.int64)  # (B, L), padded with id 0 after each prefix
        for row, i in enumerate(order):
            ids[row, : lengths[row]] = seqs[i]
        state, start, active = model.begin_state(len(order), device), 0, len(order)
        while active:
            window = max(1, min(WARM_UP_STEPS, limit // (active * model.config.vocab_size)))
            x = torch.as_tensor(ids[:active, start : start + window], device=device)  # (active, w)
            logp, state = model.log_probs(x, state, torch.float64)  # (active, w, V)
            for row in range(active):
                if start <= lengths[row] - 1 < start + window:
                    out[order[row]] = logp[row, lengths[row] - 1 - start]
            start += window
            while active and lengths[active - 1] <= start:
                active -= 1
            state = select_streams(state, torch.arange(active, device=device))
    if vocab.unk_id is not None:
        out[:, vocab.unk_id] = -math.inf
    return out


def next_chars_batch(model: CharRNN, vocab: Vocab, prefixes: Sequence[np.ndarray], ks: Sequence[int],
                     start_ids: np.ndarray | None = None) -> list[list[Guess]]:
    """next_chars for several prefixes at once (one batched pass, next_logprobs): the ks[i] likeliest next
    characters after prefixes[i], best first."""
    logp = next_logprobs(model, vocab, prefixes, start_ids)
    return [_top(row, vocab, k) for row, k in zip(logp, ks, strict=True)]


@torch.inference_mode()
def next_words(model: CharRNN, vocab: Vocab, prefix_ids: np.ndarray, k: int = 5,
               start_ids: np.ndarray | None = None, max_length: int = MAX_WORD,
               width: int | None = None) -> list[Guess]:
    """The k likeliest continuations up to the next word boundary, best first (see the module docstring).
    `width` partial words are kept at each step (default max(4k, 16)). The partial words go through the
    model CHUNK_ELEMENTS // V at a time, so that memory stays bounded whatever k x V (k = 1000 on a
    20,000-character vocabulary held 4,000 x 20,000 float64 matrices at once: 3.1 GB)."""
    step, state, logp = after_prefix(model, vocab, prefix_ids, start_ids)
    width = width or max(4 * k, 16)
    n_chars = len(vocab.chars)
    boundary = torch.tensor([is_boundary(c) for c in vocab.chars] + [False] * (vocab.size - n_chars))
    extends = torch.zeros(vocab.size, dtype=torch.bool)
    extends[:n_chars] = ~boundary[:n_chars]
    chunk = max(1, CHUNK_ELEMENTS // vocab.size)  # partial words per pass
    texts, totals = [""], torch.zeros(1, dtype=torch.float64)  # (P,)
    rows = ids = None  # the current partial words' parents (rows of `state`) and last characters, (P,) each
    finished: dict[str, float] = {}
    for depth in range(max_length + 1):
        values_parts, flat_parts, states = [], [], []
        for a in range(0, len(texts), chunk):
            b = min(a + chunk, len(texts))
            if rows is None:
                logps = logp[None]  # (1, V): the prefix's own
            else:
                logps, after = step.log_probs(ids[a:b], select_streams(state, rows[a:b]), torch.float64)  # (c, V)
                states.append(after)
                if vocab.unk_id is not None:
                    logps[:, vocab.unk_id] = -math.inf
            # A partial word ends here with the probability of any boundary after it.
            if bool(boundary.any()):
                ends = totals[a:b] + torch.logsumexp(logps[:, boundary], dim=1)
                for text, end in zip(texts[a:b], ends.tolist(), strict=True):
                    if end > -math.inf:
                        finished[text] = math.exp(end)
            if depth < max_length:
                grown = (totals[a:b, None] + logps).masked_fill(~extends, -math.inf)  # (c, V)
                values, flat = torch.topk(grown.flatten(), min(width, grown.numel()))
                values_parts.append(values)
                flat_parts.append(flat + a * vocab.size)
        if states:
            state = cat_streams(states)
        if depth == max_length:
            break
        values, flat = torch.cat(values_parts), torch.cat(flat_parts)
        values, order = torch.topk(values, min(width, len(values)))
        flat = flat[order]
        keep = values > -math.inf
        values, flat = values[keep], flat[keep]
        best = sorted(finished.values(), reverse=True)
        if len(flat) == 0 or (len(best) >= k and math.exp(values[0].item()) < best[k - 1]):
            break  # extending only lowers a probability: no partial word can enter the top k
        rows, ids = flat // vocab.size, flat % vocab.size
        texts = [texts[r] + vocab.chars[i] for r, i in zip(rows.tolist(), ids.tolist(), strict=True)]
        totals = values
    ranked = sorted(finished.items(), key=lambda item: -item[1])[:k]
    return [Guess(text, prob) for text, prob in ranked]

