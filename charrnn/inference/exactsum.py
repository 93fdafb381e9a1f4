"""Exact sums of float32 losses: the reduction behind every reported loss (evaluation, scores,
validation, dynamic evaluation), so that the figure does not depend on the order of the additions.

A float32 sum depends on its order, and the order depends on things that say nothing about the
model: the thread count (a parallel reduction splits its sum by thread), the size of the windows a
text is cut into (the thread chooser cuts them finer while it times its candidates), the number of
processes. A float32 value is an integer times a power of two: m * 2**(e - 150), with m < 2**24
and e the biased exponent (1..254, or 0 for subnormals at the scale of e = 1). ExactSum adds the
m's of equal exponent as int64 (exact: no rounding at all, so any order gives the same integers),
and only at the end combines the 254 integers exactly with Python's integers and rounds once: the
result is the exact sum of the values, correctly rounded to float64, whatever the order, chunking or
thread count. Each bucket holds up to 2**39 values before it could overflow (half a trillion
characters per call). Infinities and NaN make the result what float arithmetic makes it (inf or nan).

The cost is a few element-wise integer operations and one scatter-add per window, on the device the
losses are on: no host transfer until the end.
"""

from __future__ import annotations

import math

import torch

EXPONENTS = 256  # biased float32 exponents 0..255
_SCALE = 1 << 149  # 2**149: the smallest float32 (a subnormal) is 2**-149


class ExactSum:
    """Running exact sums of float32 values, one per group (`groups` of them; one by default)."""

    def __init__(self, groups: int = 1, device: torch.device | str = "cpu") -> None:
        self.groups = groups
        # (groups * EXPONENTS,) signed sums of the integer mantissas, by group and biased exponent
        self.buckets = torch.zeros(groups * EXPONENTS, dtype=torch.int64, device=device)
        # The float64 sums of the same values, only to carry inf and nan (an exact sum has neither).
        self.rough = torch.zeros(groups, dtype=torch.float64, device=device)

    def add(self, values: torch.Tensor, group: torch.Tensor | None = None) -> None:
        """Add `values` (any shape; rounded to float32 first if wider) into their groups: `group` (int64,
        the shape of `values`) says which, or all into group 0 when None."""
        v = values.detach().to(torch.float32).reshape(-1)
        bits = v.view(torch.int32).to(torch.int64)  # sign-extended: negative iff the sign bit is set
        exponent = (bits >> 23) & 0xFF  # (N,)
        mantissa = bits & 0x7FFFFF
        mantissa = torch.where(exponent > 0, mantissa | 0x800000, mantissa)  # the implicit leading 1
        mantissa = torch.where(exponent == 0xFF, 0, torch.where(bits < 0, -mantissa, mantissa))
        g = torch.zeros_like(exponent) if group is None else group.reshape(-1).to(self.buckets.device)
        self.buckets.scatter_add_(0, g * EXPONENTS + exponent, mantissa)
        self.rough.scatter_add_(0, g, v.to(torch.float64))

    def totals(self) -> list[float]:
        """Each group's exact sum, rounded once to float64 (inf or nan where a value was)."""
        rough = self.rough.cpu().tolist()
        buckets = self.buckets.view(self.groups, EXPONENTS).cpu()
        out = []
        for g, row in enumerate(buckets):
            if not math.isfinite(rough[g]):
                out.append(rough[g])
                continue
            nonzero = torch.nonzero(row).flatten().tolist()
            # value = m * 2**(max(e, 1) - 150) = m * 2**(max(e, 1) - 1) / 2**149, an exact integer ratio
            exact = sum(int(row[e]) << (max(e, 1) - 1) for e in nonzero)
            out.append(exact / _SCALE)  # int / int: correctly rounded
        return out

    def total(self) -> float:
        """The exact sum of group 0 (see totals)."""
        return self.totals()[0]


def exact_sum(values: torch.Tensor) -> float:
    """The exact sum of a tensor's float32 values, rounded once to float64."""
    acc = ExactSum(device=values.device)
    acc.add(values)
    return acc.total()
