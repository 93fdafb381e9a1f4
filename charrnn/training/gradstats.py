"""The global gradient norm before clipping, summarised per training report (note 004: what clipping
does, seen on one's own run).

Every step adds its norm ||g||_2 over all parameters, measured before clipping; a report takes the
mean and the largest since the last one and the share of those steps whose norm exceeded the clip
threshold (and so were scaled down). The sums are 0-d tensors on the training device, so a GPU run
adds no host synchronisation per step; the report reads them once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def total_norm(parameters: Iterable[torch.Tensor]) -> torch.Tensor:
    """||g||_2 over every parameter's gradient, as clip_grad_norm_ measures it (for runs without clipping)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach()) for g in grads]))


class GradStats:
    """Gradient norms of the steps since the last report."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.total = torch.zeros((), device=device, dtype=torch.float32)
        self.largest = torch.zeros((), device=device, dtype=torch.float32)
        self.clipped = torch.zeros((), device=device, dtype=torch.float32)
        self.steps = 0

    def add(self, norm: torch.Tensor, clip: float) -> None:
        """One step's norm before clipping; `clip` is the threshold (0: no clipping, nothing clipped)."""
        n = norm.detach().to(self.total.dtype)
        self.total += n
        torch.maximum(self.largest, n, out=self.largest)
        if clip > 0:
            self.clipped += (n > clip).to(self.clipped.dtype)
        self.steps += 1

    def take(self) -> dict[str, float]:
        """{grad_norm (mean), grad_norm_max, clipped (share of steps)} since the last take, then start
        again; NaN for a report without steps and for norms that overflowed (not finite)."""
        if self.steps == 0:
            return {"grad_norm": math.nan, "grad_norm_max": math.nan, "clipped": math.nan}
        mean, largest, clipped = (self.total / self.steps).item(), self.largest.item(), self.clipped.item()
        out = {"grad_norm": mean, "grad_norm_max": largest, "clipped": clipped / self.steps}
        for key in ("grad_norm", "grad_norm_max"):
            if not math.isfinite(out[key]):
                out[key] = math.nan
        self.total.zero_()
        self.largest.zero_()
        self.clipped.zero_()
        self.steps = 0
        return out
