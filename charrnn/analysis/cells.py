"""What the hidden state holds: every unit scored against every text property by Pearson correlation.

A unit is one coordinate of one layer's state: for an LSTM both the cell state, taken as tanh(c),
and h; for a GRU or a plain RNN, h. tanh(c) rather than c: it is the part of the cell state that
reaches h (h = o ⊙ tanh(c)), it is bounded like h, so one colour scale shows both, and a few huge
|c| values do not dominate the correlation. Layers count from 1, units from 0; a unit's label is
LAYER:INDEX, with :c or :h after it for an LSTM (`1:17:c`).

Each (unit, property) pair is scored by the Pearson correlation r of the unit's value after each
character with the property's value there (charrnn.analysis.textprops), over the whole text; units are
ranked by |r|. A constant column (a dead or saturated unit, a property absent from the text) has
no correlation: r = 0, never NaN.

The control (`control_model`): the same architecture with fresh random weights (seeded), scored
the same way on the same text. A random recurrent network already echoes its input, so the
control's best |r| is not zero; what a trained unit reaches beyond it is what training put there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from charrnn.analysis.textprops import PROPERTIES, properties
from charrnn.analysis.trace import Trace
from charrnn.errors import DataError, UsageError
from charrnn.model.network import CharRNN

MIN_STD = 1e-6  # a column whose standard deviation is below this is constant: r = 0
MAX_BYTES = 1 << 30  # what `inspect cells` may hold for the states of the model and of its control


@dataclass(frozen=True, order=True)
class Unit:
    layer: int  # from 1
    state: str  # "c" (shown as tanh(c)) or "h"
    index: int  # from 0

    def label(self, lstm: bool) -> str:
        return f"{self.layer}:{self.index}:{self.state}" if lstm else f"{self.layer}:{self.index}"


def units_of(t: Trace) -> list[Unit]:
    """Every unit of the trace, layer by layer (for an LSTM, c before h): the rows of Ranking.r."""
    out = []
    for k, layer in enumerate(t.layers, 1):
        for state in (("c", "h") if layer.c is not None else ("h",)):
            out.extend(Unit(k, state, i) for i in range(layer.h.shape[1]))
    return out


def activation(t: Trace, unit: Unit) -> np.ndarray:
    """The unit's value after each character, (T,) float64: tanh(c) or h."""
    layer = t.layers[unit.layer - 1]
    if unit.state == "c":
        return np.tanh(layer.c[:, unit.index].astype(np.float64))
    return layer.h[:, unit.index].astype(np.float64)


def parse_unit(spec: str, layers: int, hidden: int, lstm: bool) -> Unit:
    """LAYER:INDEX (for an LSTM its cell state c), or LAYER:INDEX:c / LAYER:INDEX:h, checked
    against the model's shape; a UsageError otherwise."""
    parts = spec.strip().split(":")
    state = "c" if lstm else "h"
    if len(parts) == 3 and parts[2] in ("c", "h"):
        state = parts.pop()
    form = "LAYER:INDEX or LAYER:INDEX:c|h" if lstm else "LAYER:INDEX"
    try:
        layer, index = (int(p) for p in parts)
    except ValueError:
        raise UsageError(f"bad --unit {spec!r}: write it {form}, e.g. 1:0") from None
    if not 1 <= layer <= layers or not 0 <= index < hidden:
        raise UsageError(f"bad --unit {spec!r}: the model has layers 1 to {layers} and units 0 to {hidden - 1}")
    if state == "c" and not lstm:
        raise UsageError(f"bad --unit {spec!r}: only an LSTM has a cell state c")
    return Unit(layer, state, index)


def correlate(values: np.ndarray, props: np.ndarray) -> np.ndarray:
    """Pearson r of every column of values (T, U) with every column of props (T, P): (U, P), 0
    where either column is constant."""
    x = values - values.mean(axis=0)
    p = props - props.mean(axis=0)
    n = max(len(values), 1)
    sx, sp = np.sqrt((x * x).sum(axis=0) / n), np.sqrt((p * p).sum(axis=0) / n)
    r = (x.T @ p) / n
    ok = (sx >= MIN_STD)[:, None] & (sp >= MIN_STD)[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(ok, r / (sx[:, None] * sp[None, :]), 0.0)
    return np.clip(r, -1.0, 1.0)


@dataclass(frozen=True)
class Ranking:
    """r (U, P): Pearson r of units[u] with property names[p] over `chars` characters. The properties in
    `constant` do not vary over the text: no unit correlates with them (r = 0), and nothing ranks them."""

    units: list[Unit]
    r: np.ndarray
    chars: int
    lstm: bool
    names: tuple[str, ...] = PROPERTIES
    constant: frozenset[str] = frozenset()

    @property
    def scored(self) -> list[str]:
        """The properties that vary over the text, in order: the ones a unit can be found for."""
        return [n for n in self.names if n not in self.constant]

    def column(self, prop: str) -> np.ndarray:
        return self.r[:, self.names.index(prop)]

    def by_property(self, prop: str) -> list[int]:
        """Unit rows ranked by |r| with `prop`, best first (ties: model order)."""
        return np.argsort(-np.abs(self.column(prop)), kind="stable").tolist()

    def best_r(self, prop: str) -> float:
        """The signed r of the best unit for `prop`."""
        return float(self.column(prop)[self.by_property(prop)[0]])

    def best_properties(self) -> np.ndarray:
        """Each unit's best property among those that vary (index into names), (U,)."""
        varying = np.array([n not in self.constant for n in self.names])
        return np.argmax(np.where(varying[None, :], np.abs(self.r), -1.0), axis=1)

    def by_unit(self) -> list[int]:
        """Unit rows ranked by |r| with their own best property, best first."""
        best = np.abs(self.r).max(axis=1)
        return np.argsort(-best, kind="stable").tolist()

    def records(self, prop: str | None = None, control: Ranking | None = None) -> list[dict]:
        """One object per unit, best first: layer, unit, state, property (`prop`, or the unit's best),
        r (signed), and with a control, control: the control's best |r| for that property."""
        best = self.best_properties()
        rows = self.by_property(prop) if prop is not None else self.by_unit()
        out = []
        for u in rows:
            p = self.names.index(prop) if prop is not None else int(best[u])
            unit = self.units[u]
            record = {"layer": unit.layer, "unit": unit.index, "state": unit.state, "property": self.names[p],
                      "r": round(float(self.r[u, p]), 6)}
            if control is not None:
                record["control"] = round(abs(control.best_r(self.names[p])), 6)
            out.append(record)
        return out


def rank(t: Trace, text: str, extra: dict[str, np.ndarray] | None = None) -> Ranking:
    """Score every unit of trace `t` (over `text`, one row per character) against every property, and
    against the `extra` ones (name -> (T,) values: the user's own)."""
    if len(text) != t.length:
        raise ValueError(f"the trace has {t.length} steps for {len(text)} characters")
    props = {**properties(text), **(extra or {})}
    p = np.stack(list(props.values()), axis=1)  # (T, P)
    # Correlation with a constant is undefined: such a property (no bracket in prose) is not ranked.
    constant = frozenset(name for name, v in props.items() if v.std() < MIN_STD)
    units = units_of(t)
    blocks = []  # one (T, H) block at a time: memory stays at one layer's state in float64
    for layer in t.layers:
        if layer.c is not None:
            blocks.append(correlate(np.tanh(layer.c.astype(np.float64)), p))
        blocks.append(correlate(layer.h.astype(np.float64), p))
    return Ranking(units, np.concatenate(blocks, axis=0), len(text), t.layers[0].c is not None, tuple(props),
                   constant)


def check_memory(layers: int, hidden: int, lstm: bool, chars: int) -> None:
    """A DataError when scoring `chars` characters would hold more than MAX_BYTES: the float32 states of the
    model and of its control (4 bytes per unit per character each), one layer's float64 working copies
    (3 x 8 bytes per unit) and the properties (2 x 8 bytes per property)."""
    units = layers * hidden * (2 if lstm else 1)
    per_char = 2 * 4 * units + 3 * 8 * hidden + 2 * 8 * len(PROPERTIES)
    if chars * per_char > MAX_BYTES:
        most = MAX_BYTES // per_char
        raise DataError(f"scoring {chars:,} characters would hold about {chars * per_char / 2**30:.1f} GiB for this "
                        f"model's {units:,} units (and its control's); at most {most:,} fit in "
                        f"{MAX_BYTES / 2**30:.0f} GiB: lower --max-chars")


def control_model(model: CharRNN, seed: int = 0) -> CharRNN:
    """A model of `model`'s architecture with fresh random weights (torch's initialisation, seeded),
    on the same device, in eval mode; the global random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = CharRNN(model.config)
    return fresh.to(next(model.parameters()).device).eval()


def draw(fig: Any, ranking: Ranking, control: Ranking | None = None, title: str = "") -> None:
    """On a matplotlib Figure: for every property, the best unit's |r| in the model (labelled with
    the unit) beside the best |r| of the random-weights control."""
    ax = fig.add_subplot()
    names = ranking.scored
    x = np.arange(len(names))
    width = 0.4 if control is not None else 0.7
    best = [abs(ranking.best_r(p)) for p in names]
    bars = ax.bar(x - (width / 2 if control is not None else 0), best, width, color="tab:red", label="model")
    for bar, p in zip(bars, names, strict=True):
        unit = ranking.units[ranking.by_property(p)[0]]
        ax.annotate(unit.label(ranking.lstm), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize="x-small", xytext=(0, 2), textcoords="offset points")
    if control is not None:
        ax.bar(x + width / 2, [abs(control.best_r(p)) for p in names], width, color="0.65",
               label="same architecture, random weights (control)")
    ax.set_xticks(x, [p.replace("_", " ") for p in names], rotation=20)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("best unit's |Pearson r|")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")
    if title:
        ax.set_title(title)
