"""The constrained sampler: samples drawn under a charrnn.inference.forms.Constraint (acrostics, templates).

Each step, the constraint says what may follow each sample's text; what it forbids is masked
(logits set to -inf) and the rest sampled as `generate` samples (temperature, top-k, top-p,
greedy): the model's distribution renormalised over the allowed characters. A forced step has
probability 1. Each character's log-probability is reported twice: under that renormalised
distribution at temperature 1 (what the constraint leaves of the model), and the model's own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from charrnn.data.vocab import Vocab
from charrnn.errors import UsageError
from charrnn.inference.forms import ANY, DONE, NOT_LINE_END, Constraint
from charrnn.inference.generate import Sampling, next_ids, put_rows, start
from charrnn.model.network import CharRNN
from charrnn.model.stepper import Stepper
from charrnn.threads import ThreadChooser, fixed


class Masks:
    """The allowed ids (V,) bool of each kind of step, for one vocabulary: built once per generation."""

    def __init__(self, vocab: Vocab, constraint: Constraint, device: torch.device) -> None:
        size = vocab.size
        self.ids = {c: i for i, c in enumerate(vocab.chars)}
        self.any = torch.ones(size, dtype=torch.bool, device=device)
        if vocab.unk_id is not None:
            self.any[vocab.unk_id] = False  # never sample <unk>
        self.not_line_end = self.any.clone()
        ends = [self.ids[c] for c in constraint.line_ends if c in self.ids]
        if ends:
            self.not_line_end[torch.tensor(ends, device=device)] = False

    def of(self, allowed: str) -> torch.Tensor | int:
        """The mask of a kind of step, or the id of a forced character."""
        if allowed == ANY:
            return self.any
        if allowed == NOT_LINE_END:
            return self.not_line_end
        return self.ids[allowed]


@dataclass(frozen=True)
class ConstrainedSample:
    text: str  # the generated text (prefix not included)
    logprobs: tuple[float, ...]  # per character: log-probability under the renormalised distribution (T = 1)
    model_logprobs: tuple[float, ...]  # per character: the model's own, unconstrained log-probability

    @property
    def logprob(self) -> float:
        return float(sum(self.logprobs))

    def to_dict(self) -> dict:
        return {"text": self.text, "logprob": self.logprob, "logprobs": list(self.logprobs),
                "model_logprobs": list(self.model_logprobs)}


def masked_logits(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Logits (B, V) with what `allowed` (B, V) bool forbids set to -inf: softmax of the result is
    the model's distribution renormalised over the allowed characters."""
    return logits.float().masked_fill(~allowed, float("-inf"))


def step_masks(masks: Masks, constraint: Constraint, texts: list[str], rows: list[int],
               size: int, device: torch.device) -> torch.Tensor:
    """(len(rows), V) bool: what each row may draw next (rows still running; none is DONE)."""
    allowed = torch.zeros(len(rows), size, dtype=torch.bool, device=device)
    for j, i in enumerate(rows):
        kind = masks.of(constraint.next(texts[i]))
        if isinstance(kind, int):
            allowed[j, kind] = True
        else:
            allowed[j] = kind
    return allowed


@torch.inference_mode()
def sample_constrained(model: CharRNN, vocab: Vocab, prefix_ids: np.ndarray, constraint: Constraint,
                       max_length: int, sampling: Sampling | None = None, seed: int = 0, num_samples: int = 1,
                       threads: ThreadChooser | None = None) -> list[ConstrainedSample]:
    """`num_samples` samples drawn side by side under `constraint`, each at most `max_length`
    characters (a template sets its own length).

    The prefix warms up the state as in `generate.generate`; without one, the first character is
    drawn from the training text's frequencies (renormalised over what the constraint allows).
    Each step masks what the constraint forbids and samples the rest with `sampling`; a row that
    is complete keeps stepping (its output ignored) until all are, so the rows stay aligned.
    """
    if num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1, got {num_samples}")
    constraint.check(vocab)
    template_length = constraint.max_length()
    if template_length is not None:
        max_length = template_length
    elif max_length < 1:
        raise UsageError(f"--length must be >= 1 with --acrostic, got {max_length}")
    sampling = sampling if sampling is not None else Sampling()
    threads = threads if threads is not None else fixed()  # times nothing it acts on
    device = next(model.parameters()).device
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    rows = num_samples
    step = Stepper(model, banned=(vocab.unk_id,))  # never emit <unk>
    state = model.begin_state(rows, device)
    if len(prefix_ids):
        state0, first = start(model, vocab, prefix_ids, generator)
        put_rows(state, list(range(rows)), state0)
        logits, state = step(first(rows), state)  # (rows, V)
    else:  # no context: the first character's distribution is the training text's frequencies
        logits = frequency_logits(vocab, device).expand(rows, -1)
    masks = Masks(vocab, constraint, device)
    texts, lps, model_lps = [""] * rows, [[] for _ in range(rows)], [[] for _ in range(rows)]
    live = list(range(rows))
    while True:
        live = [i for i in live if len(texts[i]) < max_length and constraint.next(texts[i]) != DONE]
        if not live:
            break
        threads.before()
        allowed = torch.ones(rows, vocab.size, dtype=torch.bool, device=device)
        allowed[live] = step_masks(masks, constraint, texts, live, vocab.size, device)
        masked = masked_logits(logits, allowed)  # (rows, V)
        ids = next_ids(masked, sampling, generator)  # (rows,)
        own = torch.log_softmax(logits.double(), dim=-1).gather(1, ids[:, None])[:, 0].tolist()
        renorm = torch.log_softmax(masked.double(), dim=-1).gather(1, ids[:, None])[:, 0].tolist()
        chars = vocab.decode(ids)
        for i in live:
            texts[i] += chars[i]
            lps[i].append(renorm[i])
            model_lps[i].append(own[i])
        logits, state = step(ids, state)
        threads.after(rows)
    return [ConstrainedSample(t, tuple(lp), tuple(mlp)) for t, lp, mlp in zip(texts, lps, model_lps, strict=True)]


def frequency_logits(vocab: Vocab, device: torch.device) -> torch.Tensor:
    """Log of the training text's character frequencies (V,): the first character's distribution
    when there is no context to run the model from."""
    counts = np.zeros(vocab.size, dtype=np.float64)  # <unk>, when there is one, never: probability 0
    counts[: len(vocab.chars)] = vocab.counts
    return torch.from_numpy(counts / counts.sum()).log().float().to(device)
