"""Weight averaging during training: an exponential moving average of the weights (EMA), or the uniform
average of the weights over the last part of the run (Polyak-Ruppert averaging, one cycle of
Izmailov et al. 2018's SWA).

SGD's iterates jitter around a minimum at the scale of the learning rate; their average sits nearer its
centre than any one of them, and often validates better at no extra cost in steps. The trainer
validates the average beside the raw weights and keeps whichever is better (charrnn.training.validation); the raw
weights go on training either way, and a checkpoint holds both, and the average's state, so that a
resumed run continues exactly.

EMA: avg <- avg + (1 - d) (w - avg) after every step, with d = min(decay, (1 + n) / (10 + n)) after n
updates, so that the first steps (random weights) are forgotten quickly. Tail: the plain mean of the
weights after every step once `tail` of the run is left (the run's fraction done as the trainer
measures it: steps, epochs or seconds, whichever is closest).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from charrnn.config import DEFAULT_EMA_DECAY, DEFAULT_TAIL, check_settings
from charrnn.errors import UsageError


class WeightAverage:
    """The running average of a model's parameters (float32 copies, by parameter name)."""

    def __init__(self, kind: str, decay: float = DEFAULT_EMA_DECAY, tail: float = DEFAULT_TAIL) -> None:
        check_settings(kind, decay, tail)
        if kind == "none":
            raise UsageError("a weight average needs a kind: ema or tail")
        self.kind, self.decay, self.tail = kind, float(decay), float(tail)
        self.count = 0  # updates folded in so far
        self.weights: dict[str, torch.Tensor] | None = None

    @property
    def ready(self) -> bool:
        """Whether there is an average to validate (a tail average starts late in the run)."""
        return self.weights is not None

    def update(self, model: nn.Module, fraction: float) -> None:
        """Fold in the parameters after a step; `fraction` is the share of the run done after it."""
        if self.kind == "tail" and fraction < 1.0 - self.tail:
            return
        params = dict(model.named_parameters())
        if self.weights is None:
            self.weights = {n: p.detach().float().clone() for n, p in params.items()}
            self.count = 1
            return
        names = list(self.weights)
        if self.kind == "ema":
            weight = 1.0 - min(self.decay, (1 + self.count) / (10 + self.count))
        else:
            weight = 1.0 / (self.count + 1)
        with torch.no_grad():
            torch._foreach_lerp_([self.weights[n] for n in names], [params[n].detach().float() for n in names],
                                 weight)
        self.count += 1

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """The averaged weights in `model` for the duration (validation); the raw ones back after."""
        if self.weights is None:
            raise RuntimeError("no average yet")
        params = dict(model.named_parameters())
        with torch.no_grad():
            raw = {n: params[n].detach().clone() for n in self.weights}
            for n, w in self.weights.items():
                params[n].copy_(w)
        try:
            yield
        finally:
            with torch.no_grad():
                for n, w in raw.items():
                    params[n].copy_(w)

    def weights_for(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`state_dict` (the model's, on the CPU) with the averaged parameters in place of the raw ones."""
        assert self.weights is not None
        return {k: self.weights[k].to(v.dtype).cpu() if k in self.weights else v for k, v in state_dict.items()}

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of it (plain data and CPU tensors)."""
        weights = None if self.weights is None else {k: v.detach().cpu() for k, v in self.weights.items()}
        return {"kind": self.kind, "decay": self.decay, "tail": self.tail, "count": self.count, "weights": weights}

    def load(self, saved: dict[str, Any], device: torch.device) -> None:
        """Continue from a checkpoint's average (checked by check_state) of the same kind."""
        self.count = saved["count"]
        self.weights = None if saved["weights"] is None else \
            {k: v.to(device=device, dtype=torch.float32) for k, v in saved["weights"].items()}
