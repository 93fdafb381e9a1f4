"""OpenAI-style completions of a loaded model: the text of each choice as it is made, with where it
stopped and, when asked, each character's log-probability and the likeliest alternatives.

The continuation is `charrnn generate`'s (generate.generate_steps: the same seed, the same samples,
temperature 0 as --greedy), so a greedy completion is what `charrnn generate --greedy --no-echo`
prints. A choice ends at a stop string (cut before it: finish "stop") or after `max_tokens`
characters ("length"); while the end of a choice may still begin a stop string it is held back, so
that streamed text never has to be taken back. The samples of one prompt are drawn side by side and
a choice that has stopped keeps its row until all have, so that its draws, and the others', do not
depend on when it stopped.

Log-probabilities are the model's own (before temperature and top-p; <unk> never drawn, its mass
left out). An echoed prompt is scored as `charrnn eval score --no-end` scores a record: read after
the boundary (a records model's delimiter, else a line break), so the prompt's log-probabilities sum
to minus its `nats` (a character the model cannot read has none). A token is a character.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from charrnn.errors import RequestError, UnknownCharacterError
from charrnn.inference.complete import frequency_logprobs
from charrnn.inference.generate import Sampling, Stops, generate_steps
from charrnn.inference.score import start_state
from charrnn.serving.openai_protocol import CompletionRequest
from charrnn.serving.service import LoadedModel

WINDOW = 256  # characters of an echoed prompt scored per forward call


@dataclass(frozen=True)
class Token:
    """One character of a choice: its log-probability (None: not scored) and, when asked, the k
    likeliest characters at its position with theirs."""

    text: str
    logprob: float | None
    top: dict[str, float] | None


@dataclass(frozen=True)
class Piece:
    """The next text of choice `index` (of its prompt), with its tokens when log-probabilities are asked;
    `finish` ("stop" or "length") on the choice's last piece, whose text may be empty."""

    index: int
    text: str
    tokens: tuple[Token, ...] = ()
    finish: str | None = None
    made: int = 0  # on the last piece: characters the model generated for the choice (its usage)


def encode_prompt(lm: LoadedModel, prompt: str) -> np.ndarray:
    """The prompt's ids: characters the model does not know read as <unk> (a 400 when it has none)."""
    try:
        return lm.vocab.encode(prompt, unk="map", where='"prompt"')
    except UnknownCharacterError as e:
        raise RequestError(400, str(e), param="prompt") from None


def _top(logp: torch.Tensor, k: int, chars: list[str]) -> list[dict[str, float]]:
    """The k likeliest characters of each row of logp (T, V), as {char: logprob}; impossible ones left out."""
    if k == 0:
        return [{} for _ in range(logp.shape[0])]
    values, ids = logp.topk(min(k, logp.shape[-1]), dim=-1)
    return [{chars[i]: v for i, v in zip(row_ids, row_values, strict=True) if v != float("-inf")}
            for row_ids, row_values in zip(ids.tolist(), values.tolist(), strict=True)]


@torch.inference_mode()
def prompt_tokens(lm: LoadedModel, prompt: str, ids: np.ndarray, k: int) -> list[Token]:
    """The prompt's characters with their log-probabilities as `eval score --no-end` computes them (the
    same float32 cross-entropy per position), and the k likeliest characters at each."""
    model, vocab = lm.model, lm.vocab
    device = next(model.parameters()).device
    boundary = vocab.encode(lm.delimiter or "\n", unk="map").astype(np.int64)
    state = start_state(model, boundary)
    inputs = np.concatenate([boundary[-1:], ids[:-1].astype(np.int64)])  # (T,): each target's previous character
    chars = [*vocab.chars, "\ufffd"]
    tokens: list[Token] = []
    for start in range(0, len(ids), WINDOW):
        x = torch.as_tensor(inputs[start:start + WINDOW], device=device)[None]  # (1, w)
        logp, state = model.log_probs(x, state)  # (1, w, V)
        logp = logp[0]  # (w, V)
        y = torch.as_tensor(ids[start:start + WINDOW].astype(np.int64), device=device)
        chosen = logp.gather(1, y[:, None])[:, 0].double().tolist()
        tops = _top(logp, k, chars)
        for j, lp in enumerate(chosen):
            known = vocab.unk_id is None or int(y[j]) != vocab.unk_id
            tokens.append(Token(prompt[start + j], lp if known else None, tops[j]))
    return tokens


def complete(lm: LoadedModel, req: CompletionRequest, prompt: str,
             stopped: Callable[[], bool] = lambda: False) -> Iterator[Piece]:
    """The pieces of the req.n choices of one prompt, as they are made (see the module docstring); the
    generation ends early when `stopped()` turns true. The prompt is checked before this returns."""
    if lm.labels is not None:
        raise RequestError(400, f"model {lm.name!r} is conditioned on labels (--labels), which completions do not "
                                'take: use /charrnn/v1/generate with "label"', param="model")
    ids = encode_prompt(lm, prompt)
    return _pieces(lm, req, prompt, ids, stopped)


def _pieces(lm: LoadedModel, req: CompletionRequest, prompt: str, ids: np.ndarray,
            stopped: Callable[[], bool]) -> Iterator[Piece]:
    k = req.logprobs
    if req.echo:
        echoed = tuple(prompt_tokens(lm, prompt, ids, k)) if k is not None else ()
        for i in range(req.n):
            yield Piece(i, prompt, echoed)
    if req.max_tokens == 0:
        for i in range(req.n):
            yield Piece(i, "", finish="length")
        return
    sampling = Sampling(temperature=req.temperature or 1.0, top_p=req.top_p or None, greedy=req.greedy)
    stops = Stops(req.stop, max_length=req.max_tokens) if req.stop else None
    chars = [*lm.vocab.chars, "\ufffd"]
    texts = [""] * req.n  # what each choice has generated so far
    tokens: list[list[Token]] = [[] for _ in range(req.n)]
    sent = [0] * req.n  # characters of each text already given out
    done = [False] * req.n
    steps = generate_steps(lm.model, lm.vocab, ids, req.max_tokens, sampling, req.seed, req.n)
    try:
        for made, (new, logits) in enumerate(steps, start=1):
            if stopped():
                return
            new_chars = lm.vocab.decode(new)
            if k is not None:
                logp = torch.log_softmax(logits.float(), dim=-1) if logits is not None else \
                    frequency_logprobs(lm.vocab, new.device).float().expand(req.n, -1)  # (n, V)
                chosen = logp.gather(1, new[:, None])[:, 0].double().tolist()
                tops = _top(logp, k, chars)
            for i in range(req.n):
                if done[i]:
                    continue
                texts[i] += new_chars[i]
                if k is not None:
                    tokens[i].append(Token(new_chars[i], chosen[i], tops[i]))
                piece = _advance(i, texts, tokens, sent, stops, made, made == req.max_tokens)
                if piece is not None:
                    done[i] = piece.finish is not None
                    yield piece
            if all(done):
                return
    finally:
        steps.close()


def _advance(i: int, texts: list[str], tokens: list[list[Token]], sent: list[int], stops: Stops | None,
             made: int, last: bool) -> Piece | None:
    """Choice i's next piece after its text grew by a character: cut at a stop string that has just
    appeared, all of it at the last character, else what no stop string can still begin in; None when
    nothing can be given out yet."""
    text, finish = texts[i], None
    end = len(text)
    if stops is not None:
        hit = next((s for s in stops.strings if text.endswith(s)), None)
        if hit is not None:
            end, finish = len(text) - len(hit), "stop"
        elif not last:
            end = len(text) - stops.pending(text)
    if finish is None and last:
        finish = "length"
    if end <= sent[i] and finish is None:
        return None
    piece = Piece(i, text[sent[i]:end], tuple(tokens[i][sent[i]:end]), finish, made)
    sent[i] = end
    return piece
