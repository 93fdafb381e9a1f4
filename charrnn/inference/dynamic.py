"""Dynamic evaluation (Krause, Kahembwe, Murray, Renals 2017, arXiv 1709.07432): the model adapts to
the text as it reads it.

The text is read as one stream (the hidden state carried throughout, like `evaluate` with
streams=1), cut into segments of `segment` targets. Each segment is first scored with the
current weights (that score is what counts), then the weights take one step on the segment's
mean loss, and reading goes on with the state carried. A target is scored before any gradient
of its own loss exists, so no character's score depends on itself or on anything after it.

The step is the paper's RMS-normalised rule with a decay towards the trained weights θ_g, per
parameter tensor:

    θ ← θ - lr · g / (rms + eps) + decay · min(rms / mean_rms, 1 / decay) · (θ_g - θ)

g is the gradient of the segment's mean loss; rms = sqrt(mean of g² over segments), per
parameter; mean_rms is the mean over tensors of each tensor's mean rms (as in the authors' code).
Where the mean squared gradient comes from (`GradStats`):

- "causal" (the default): the segments of the evaluated text read so far, this one included,
  since its score is already taken (a running mean, like RMSprop's, but not forgetting);
- a stats text (`collect_stats`): the paper's way, segments of another text (the training text)
  scored at the trained weights, before evaluation starts, and then fixed.

Both measure gradients of the same kind (one stream, one segment's mean loss), so the same lr
and decay serve both. Gradients run in float32 on a private copy of the model: the caller's model
(and so its file) is never changed.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from charrnn.data.partition import IGNORE
from charrnn.errors import DataError, UsageError
from charrnn.inference.evaluate import EvalResult
from charrnn.inference.exactsum import ExactSum
from charrnn.model.network import CharRNN, detach_state

# Chosen by a grid on tinyshakespeare's validation part: docs/eval.md, "Dynamic evaluation".
DEFAULT_LR = 1e-3
DEFAULT_DECAY = 1e-2
DEFAULT_SEGMENT = 20
DEFAULT_EPS = 2e-5
FLOAT32_MAX = float(torch.finfo(torch.float32).max)  # 3.4028e38
FLOAT32_TINY = float(torch.finfo(torch.float32).tiny)  # 1.1755e-38, the smallest normal float32
STATS_MAX_CHARS = 100_000  # of a stats text: one forward and backward pass per segment, at one stream


@dataclass(frozen=True)
class DynamicConfig:
    lr: float = DEFAULT_LR
    decay: float = DEFAULT_DECAY
    segment: int = DEFAULT_SEGMENT
    eps: float = DEFAULT_EPS

    def __post_init__(self) -> None:
        for name in ("lr", "decay", "eps"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise UsageError(f"--dynamic-{name} must be a finite number, got {value!r}")
        # The step runs in float32: a value it cannot hold (an lr past 3.4e38, an eps or a decay below
        # 1.2e-38) would overflow to infinity or vanish to 0 there (a RuntimeError, or NaN losses).
        if not 0 <= self.lr <= FLOAT32_MAX:
            raise UsageError(f"--dynamic-lr must be in [0, {FLOAT32_MAX:.4g}] (float32), got {self.lr:g}")
        if not (self.decay == 0 or FLOAT32_TINY <= self.decay <= 1):
            raise UsageError(f"--dynamic-decay must be 0 or in [{FLOAT32_TINY:.4g}, 1] (float32), got {self.decay:g}")
        if not FLOAT32_TINY <= self.eps <= FLOAT32_MAX:
            raise UsageError(f"--dynamic-eps must be in [{FLOAT32_TINY:.4g}, {FLOAT32_MAX:.4g}] (float32), "
                             f"got {self.eps:g}")
        if not isinstance(self.segment, int) or isinstance(self.segment, bool) or self.segment < 1:
            raise UsageError(f"--dynamic-segment must be an integer >= 1, got {self.segment!r}")

    def to_dict(self) -> dict:
        return {"lr": self.lr, "decay": self.decay, "segment": self.segment, "eps": self.eps}


class GradStats:
    """Per parameter tensor, the sum of squared segment gradients and how many segments it holds."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.sums = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        self.count = 0

    def add(self, grads: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> None:
        for s, g in zip(self.sums, grads, strict=True):
            s.addcmul_(g, g)
        self.count += 1

    def rms(self) -> list[torch.Tensor]:
        """sqrt(mean g²) per parameter, each of its tensor's shape."""
        return [(s / max(1, self.count)).sqrt_() for s in self.sums]

    def to(self, device: torch.device) -> GradStats:
        self.sums = [s.to(device) for s in self.sums]
        return self


def rms_update(params: list[torch.Tensor], grads: list[torch.Tensor] | tuple[torch.Tensor, ...],
               trained: list[torch.Tensor], rms: list[torch.Tensor], config: DynamicConfig) -> None:
    """One step of the rule in the module docstring, in place on `params` (every term from the
    weights before the step, as in the paper)."""
    mean_rms = torch.stack([r.mean() for r in rms]).mean().clamp_min(torch.finfo(torch.float32).tiny)
    # Multi-tensor ops: the step is a handful of passes over the weights, not a dozen per tensor
    # (it costs more than the segment's forward and backward passes of a small model).
    with torch.no_grad():
        steps = torch._foreach_div(list(grads), torch._foreach_add(rms, config.eps))
        if config.decay:
            rates = torch._foreach_div(rms, mean_rms)
            torch._foreach_clamp_max_(rates, 1.0 / config.decay)
            pull = torch._foreach_sub(trained, params)
            torch._foreach_mul_(pull, rates)
            torch._foreach_add_(params, pull, alpha=config.decay)
        torch._foreach_add_(params, steps, alpha=-config.lr)


def _working_copy(model: CharRNN) -> CharRNN:
    """A float32 copy in eval mode (no dropout): the steps change it, never `model`."""
    work = copy.deepcopy(model).float().eval()
    for p in work.parameters():
        p.requires_grad_(True)
    return work


def _segments(model: CharRNN, ids: np.ndarray, segment: int,
              unk_id: int | None) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """Per segment, the loss of each target (T,) (0 where the target is <unk>, which is not scored)
    and which targets are scored (T,) bool, the state carried as one stream. Each segment is run
    with the weights as they are when it is asked for: the consumer steps them between segments."""
    n_pairs = len(ids) - 1
    device = next(model.parameters()).device
    state = model.begin_state(1, device)
    # cuDNN's RNN backward wants training mode (dropout on); torch's own kernels do not.
    no_cudnn = torch.backends.cudnn.flags(enabled=False) if device.type == "cuda" else nullcontext()
    for start in range(0, n_pairs, segment):
        end = min(start + segment, n_pairs)
        x = np.asarray(ids[start:end], dtype=np.int64)
        y = np.array(ids[start + 1:end + 1], dtype=np.int64)  # a copy: the ignored targets are overwritten
        scored = (y != unk_id) if unk_id is not None else np.ones(len(y), dtype=bool)
        y[~scored] = IGNORE
        with no_cudnn:
            losses, state = model.nll(torch.from_numpy(x).to(device)[None], torch.from_numpy(y).to(device)[None],
                                      state, ignore_index=IGNORE)
            losses = losses[0]  # (T,), 0 where ignored
        state = detach_state(state)
        yield losses, scored


def _grads(loss_sum: torch.Tensor, scored: int, params: list[torch.Tensor],
           device: torch.device) -> tuple[torch.Tensor, ...]:
    """Gradients of the mean loss of `scored` targets whose losses sum to `loss_sum`."""
    no_cudnn = torch.backends.cudnn.flags(enabled=False) if device.type == "cuda" else nullcontext()
    with no_cudnn:
        return torch.autograd.grad(loss_sum / scored, params)


def collect_stats(model: CharRNN, ids: np.ndarray, *, segment: int = DEFAULT_SEGMENT, unk_id: int | None = None,
                  max_chars: int = STATS_MAX_CHARS) -> GradStats:
    """Mean squared gradients of segments of the first `max_chars` characters of `ids` (shape (n,)),
    at the model's weights (which are not changed): the paper's statistics, from a text of the
    user's choice (the training text)."""
    ids = ids[:max_chars]
    if len(ids) < 2:
        raise DataError("the --dynamic-stats text needs at least 2 characters")
    work = _working_copy(model)
    params = list(work.parameters())
    stats = GradStats(params)
    device = params[0].device
    for losses, scored in _segments(work, ids, segment, unk_id):
        if scored.any():
            stats.add(_grads(losses.sum(), int(scored.sum()), params, device))
    if stats.count == 0:
        raise DataError("no character of the --dynamic-stats text could be scored: every one is unknown to the "
                        "model (<unk>)")
    return stats


def check_segment(config: DynamicConfig, chars: int) -> None:
    """A UsageError when a text of `chars` characters is one segment or less: that segment is scored before
    the only step, so the "dynamic" figure would be the static one."""
    targets = chars - 1
    if config.lr > 0 and targets > 0 and config.segment >= targets:
        raise UsageError(f"--dynamic-segment {config.segment:,} is not shorter than the text ({targets:,} "
                         "characters to score): no step would come before the last character, and the dynamic "
                         "figure would be the static one; give a shorter segment")


def dynamic_losses(
    model: CharRNN,
    ids: np.ndarray,
    *,
    config: DynamicConfig | None = None,
    unk_id: int | None = None,
    stats: GradStats | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per segment of `ids` (shape (n,)), the loss in nats of each target under dynamic evaluation
    (float64 (T,), 0 where not scored) and which targets are scored ((T,) bool); every loss is
    taken before the step on its segment. `stats`: fixed statistics from `collect_stats`; None
    gathers them causally on `ids`. `model` is left as it was."""
    config = config or DynamicConfig()
    work = _working_copy(model)
    params = list(work.parameters())
    device = params[0].device
    trained = [p.detach().clone() for p in params]
    running = stats is None
    gathered = GradStats(params) if running else stats.to(device)
    fixed_rms = None if running else gathered.rms()
    read = 0
    for losses, scored in _segments(work, ids, config.segment, unk_id):
        values = losses.detach().double().cpu().numpy()
        if not np.isfinite(values[scored]).all():
            raise DataError(f"dynamic evaluation diverged: a non-finite loss after {read:,} characters (the weights "
                            f"overflowed); lower --dynamic-lr (now {config.lr:g}) or raise --dynamic-eps "
                            f"(now {config.eps:g})")
        read += len(values)
        yield values, scored
        count = int(scored.sum())
        if count and config.lr > 0:  # lr 0: the weights never move, whatever the decay
            grads = _grads(losses.sum(), count, params, device)
            if running:
                gathered.add(grads)
            rms_update(params, grads, trained, fixed_rms if fixed_rms is not None else gathered.rms(), config)


def dynamic_evaluate(
    model: CharRNN,
    ids: np.ndarray,
    *,
    config: DynamicConfig | None = None,
    unk_id: int | None = None,
    stats: GradStats | None = None,
) -> EvalResult:
    """Mean nats per scored character of `model` on `ids` under dynamic evaluation (`dynamic_losses`)."""
    if len(ids) < 2:
        raise DataError("need at least 2 characters to measure perplexity")
    total, scored, seen = ExactSum(), 0, 0  # exact: with lr 0, the same bits as `evaluate` with one stream
    for losses, mask in dynamic_losses(model, ids, config=config, unk_id=unk_id, stats=stats):
        total.add(torch.from_numpy(losses))  # float64 copies of float32 losses: converted back exactly
        scored, seen = scored + int(mask.sum()), seen + len(mask)
    return EvalResult.from_sums(total.total(), scored, seen - scored)
