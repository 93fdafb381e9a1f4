"""How the gates of an LSTM or GRU saturate (Karpathy, Johnson and Fei-Fei 2015, figure 3).

For every gate unit, the fraction of characters at which its activation is left-saturated (below
0.1) and right-saturated (above 0.9). A forget gate that is right-saturated most of the time keeps
its cell's content for long stretches: an integrator, the LSTM's long memory. A unit near the
origin of the picture is never saturated: it is used as a soft switch. x + y <= 1: no unit lies
above the diagonal.

The sigmoid gates (LSTM input, forget, output; GRU reset, update) live in (0, 1). The tanh gates
(LSTM cell g, GRU new n) live in (-1, 1) and are rescaled to (0, 1) as (a + 1) / 2 first, so that
"left" means the first tenth of every gate's range: a < -0.8 for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from charrnn.analysis.trace import GATE_NAMES, TANH_GATES, Trace
from charrnn.errors import UsageError

LOW, HIGH = 0.1, 0.9
LAYER_COLOURS = ("tab:blue", "tab:red", "tab:green", "tab:orange", "tab:purple", "tab:cyan", "tab:gray", "tab:olive")


@dataclass(frozen=True)
class GateSaturation:
    """left, right: (H,) fractions of characters for every unit of one gate of one layer (from 1)."""

    layer: int
    gate: str
    left: np.ndarray
    right: np.ndarray


def check_gated(cell: str) -> None:
    """A UsageError when `cell` has no gates (a plain RNN)."""
    if not GATE_NAMES[cell]:
        raise UsageError(f"a plain {cell.upper()} has no gates: inspect gates needs an LSTM or a GRU model "
                         "(train one with --cell lstm or --cell gru)")


def saturation(t: Trace) -> list[GateSaturation]:
    """Saturation of every gate of every layer of a trace recorded with gates=True, in layer then
    gate order (GATE_NAMES)."""
    check_gated(t.cell)
    out = []
    for k, layer in enumerate(t.layers, 1):
        if not layer.gates:
            raise ValueError("the trace was recorded without gates")
        for name in GATE_NAMES[t.cell]:
            a = layer.gates[name].astype(np.float64)
            if name in TANH_GATES:
                a = (a + 1.0) / 2.0
            out.append(GateSaturation(k, name, (a < LOW).mean(axis=0), (a > HIGH).mean(axis=0)))
    return out


def records(sat: list[GateSaturation]) -> list[dict]:
    """One object per gate unit: layer, gate, unit, left, right (in layer, gate, unit order)."""
    return [{"layer": s.layer, "gate": s.gate, "unit": i, "left": round(float(s.left[i]), 6),
             "right": round(float(s.right[i]), 6)} for s in sat for i in range(len(s.left))]


def summary(sat: list[GateSaturation]) -> list[dict]:
    """Per layer and gate: units, mean left and right, and how many units are left- or
    right-saturated more than half the time."""
    return [{"layer": s.layer, "gate": s.gate, "units": len(s.left), "left": float(s.left.mean()),
             "right": float(s.right.mean()), "mostly_left": int((s.left > 0.5).sum()),
             "mostly_right": int((s.right > 0.5).sum())} for s in sat]


def draw(fig: Any, sat: list[GateSaturation], title: str = "") -> None:
    """The paper's picture on a matplotlib Figure: one panel per gate, a point per unit (x: fraction
    left-saturated, y: fraction right-saturated), coloured by layer."""
    gates = list(dict.fromkeys(s.gate for s in sat))
    layers = sorted({s.layer for s in sat})
    axes = fig.subplots(1, len(gates), sharex=True, sharey=True, squeeze=False)[0]
    for ax, gate in zip(axes, gates, strict=True):
        ax.plot([0, 1], [1, 0], color="0.8", linewidth=0.8, zorder=0)
        for s in sat:
            if s.gate == gate:
                ax.scatter(s.left, s.right, s=10, alpha=0.6, color=LAYER_COLOURS[(s.layer - 1) % len(LAYER_COLOURS)],
                           label=f"layer {s.layer}", edgecolors="none")
        ax.set_title(f"{gate} gate")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_box_aspect(1)
        ax.set_xlabel(f"fraction left-saturated (< {LOW:g})")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(f"fraction right-saturated (> {HIGH:g})")
    if len(layers) > 1:
        axes[-1].legend(loc="upper right", fontsize="small", markerscale=1.5)
    if title:
        fig.suptitle(title)
