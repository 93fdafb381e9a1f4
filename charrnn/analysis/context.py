"""How much context a model uses: Khandelwal et al. 2018 ("Sharp Nearby, Fuzzy Far Away"), in characters.

The same target characters are scored twice over:

- with full context: the text read as `eval perplexity` reads it, the state carried from the start.
  To keep this fast the text runs as up to 64 side-by-side streams; each stream starts reading
  2 x max(n) characters before its first target, so every target sees at least that much context
  (or all of the text before it), more than any truncated context it is compared with;
- with only its last n characters, for each n in `lengths`: each (target, n) context is a row of a
  minibatch, read from the model's begin state (for a model trained with `--partition records`, the
  state after reading its record delimiter: its record-start state).

Targets are spread evenly over the text from position max(n) on, so that every n scores the same
characters; <unk> targets are skipped (an <unk> in a context is fed, as `eval perplexity` does).
The loss increase of length n is its mean loss minus the full-context mean, in nats per character.

With `perturb`, the part of each truncated context farther than `beyond` characters from the target
is shuffled (a seeded permutation per row) or reversed: the near `beyond` characters stay as they
were, so the increase over the intact context of the same length says whether the model used the
order of the far characters or only their presence (Khandelwal et al., section 5).

Cost: targets x sum(lengths) steps of the recurrence; for the default lengths (sum 1,888) and 2,000
targets that is 3.8 million steps, 5.2 TFLOP on a 1x384 LSTM, in minibatches of 2,000 rows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from charrnn.errors import DataError, UsageError
from charrnn.model.network import CharRNN, State, repeat_stream

DEFAULT_LENGTHS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
DEFAULT_TARGETS = 2000
MAX_LENGTH = 100_000  # longest context asked for: a row of ids per target, and twice that read as warm-up
PERTURBATIONS = ("shuffle", "reverse")
FULL_STREAMS = 64
# Elements of the largest per-window tensor (rows x columns x max(gates * hidden, vocab)): 64 MB of float32.
MAX_WINDOW_FLOATS = 1 << 24


@dataclass(frozen=True)
class ContextPoint:
    length: int
    nats_per_char: float  # mean loss of the targets given only their last `length` characters
    increase: float  # nats_per_char minus the full-context loss
    targets: int

    @property
    def percent(self) -> float:
        full = self.nats_per_char - self.increase
        return 100.0 * self.increase / full if full > 0 else math.inf

    def to_dict(self) -> dict:
        return {"length": self.length, "nats_per_char": self.nats_per_char, "increase": self.increase,
                "targets": self.targets}


@dataclass(frozen=True)
class ContextCurve:
    full: float  # mean full-context loss of the targets, nats/char
    targets: int
    points: list[ContextPoint]


def parse_lengths(spec: str) -> tuple[int, ...]:
    """'1,2,5 10' -> (1, 2, 5, 10): integers from 1 to MAX_LENGTH, sorted, duplicates dropped."""
    fields = spec.split(",")
    words = [w for f in fields for w in f.split()]
    if not words:
        raise UsageError("--lengths is empty: give context lengths such as 1,10,100")
    if any(not f.strip() for f in fields):
        raise UsageError(f"--lengths {spec!r} has an empty length between commas (give lengths such as 1,10,100)")
    lengths = set()
    for word in words:
        try:
            n = int(word)
        except ValueError:
            raise UsageError(f"--lengths: {word!r} is not an integer (give lengths such as 1,10,100)") from None
        if not 1 <= n <= MAX_LENGTH:
            raise UsageError(f"--lengths: {n} is not a length from 1 to {MAX_LENGTH:,}")
        lengths.add(n)
    return tuple(sorted(lengths))


@torch.inference_mode()
def start_state(model: CharRNN, boundary_ids: np.ndarray | None = None, rows: int = 1) -> State:
    """Where a reading starts, for `rows` streams: the model's begin state, or with `boundary_ids`
    (the record delimiter of a records model) the state after reading the whole delimiter."""
    param = next(model.parameters())
    state = model.begin_state(1, param.device)
    state = tuple(s.to(param.dtype) for s in state) if isinstance(state, tuple) else state.to(param.dtype)
    if boundary_ids is not None and len(boundary_ids):
        ids = torch.as_tensor(np.asarray(boundary_ids, dtype=np.int64)[None], device=param.device)  # (1, n)
        _, state = model.features(ids, state)
    return repeat_stream(state, rows)


def pick_targets(ids: np.ndarray, first: int, count: int, unk_id: int | None = None) -> np.ndarray:
    """At most `count` positions of known characters at or after `first`, spread evenly (sorted)."""
    candidates = np.arange(first, len(ids), dtype=np.int64)
    if unk_id is not None and len(candidates):
        candidates = candidates[np.asarray(ids[first:]) != unk_id]
    if len(candidates) <= count:
        return candidates
    return candidates[np.unique(np.linspace(0, len(candidates) - 1, count).round().astype(np.int64))]


def _window(rows: int, model: CharRNN) -> int:
    """Columns per forward call so that one call's largest tensor stays under MAX_WINDOW_FLOATS."""
    gates = {"rnn": 1, "gru": 3, "lstm": 4}[model.config.base_cell]
    width = max(gates * model.config.hidden, model.config.vocab_size)
    return max(1, MAX_WINDOW_FLOATS // (rows * width))


@torch.inference_mode()
def full_context_losses(model: CharRNN, ids: np.ndarray, targets: np.ndarray, warm: int,
                        boundary_ids: np.ndarray | None = None, streams: int = FULL_STREAMS) -> np.ndarray:
    """Loss (nats, float64) of each target (sorted positions >= 1) given the text before it.

    The text before the last target is cut into S contiguous pieces; piece r is scored by a stream that
    starts reading `warm` characters before it, so a target's context is everything from
    max(0, piece start - warm) on. Returns shape (len(targets),).
    """
    device = next(model.parameters()).device
    end = int(targets[-1])  # inputs are ids[0:end]; input j predicts ids[j + 1]
    s = max(1, min(streams, -(-end // max(warm, 1))))
    piece = -(-end // s)
    begins = np.maximum(np.arange(s) * piece - warm, 0)  # (S,) first input each stream reads
    ends = np.minimum((np.arange(s) + 1) * piece, end)  # (S,) one past the last input each stream scores
    width = int((ends - begins).max())
    pos = begins[:, None] + np.arange(width)[None, :]  # (S, W) input position of each column
    x = torch.from_numpy(np.asarray(ids[np.minimum(pos, end - 1)], dtype=np.int64)).to(device)
    stream = (targets - 1) // piece  # the piece that holds input targets - 1
    column = targets - 1 - begins[stream]
    losses = np.empty(len(targets), dtype=np.float64)
    y = torch.from_numpy(np.asarray(ids[targets], dtype=np.int64)).to(device)
    state = start_state(model, boundary_ids, s)
    step = _window(s, model)
    for start in range(0, width, step):
        out, state = model.features(x[:, start : start + step], state)  # (S, w, H)
        inside = np.flatnonzero((column >= start) & (column < start + out.shape[1]))
        if len(inside):
            picked = out[torch.from_numpy(stream[inside]), torch.from_numpy(column[inside] - start)]  # (k, H)
            losses[inside] = model.head.nll(picked, y[inside]).double().cpu().numpy()
    return losses


def perturb_rows(rows: np.ndarray, beyond: int, kind: str, rng: np.random.Generator | None = None) -> np.ndarray:
    """`rows` (B, n) of contexts, each ending just before its target, with columns [0, n - beyond)
    (the characters farther than `beyond` from the target) shuffled per row or reversed."""
    far = rows.shape[1] - beyond
    if far <= 1:
        return rows
    out = rows.copy()
    if kind == "reverse":
        out[:, :far] = rows[:, far - 1 :: -1]
    elif kind == "shuffle":
        rng = rng if rng is not None else np.random.default_rng(0)
        order = np.argsort(rng.random((rows.shape[0], far)), axis=1)  # (B, far): a permutation per row
        out[:, :far] = np.take_along_axis(rows[:, :far], order, axis=1)
    else:
        raise UsageError(f"unknown perturbation {kind!r}: choose one of {', '.join(PERTURBATIONS)}")
    return out


@torch.inference_mode()
def truncated_losses(model: CharRNN, ids: np.ndarray, targets: np.ndarray, length: int,
                     boundary_ids: np.ndarray | None = None, perturb: str | None = None, beyond: int = 0,
                     rng: np.random.Generator | None = None) -> np.ndarray:
    """Loss (nats, float64) of each target given only its last `length` characters, read from the
    start state: one minibatch row per target (targets >= length). Shape (len(targets),)."""
    device = next(model.parameters()).device
    rows = np.asarray(ids[targets[:, None] - length + np.arange(length)[None, :]], dtype=np.int64)  # (B, n)
    if perturb is not None:
        rows = perturb_rows(rows, beyond, perturb, rng)
    x = torch.from_numpy(rows).to(device)
    state = start_state(model, boundary_ids, len(targets))
    step = _window(len(targets), model)
    for start in range(0, length, step):
        out, state = model.features(x[:, start : start + step], state)  # (B, w, H); only the last column is read
    y = torch.from_numpy(np.asarray(ids[targets], dtype=np.int64)).to(device)
    return model.head.nll(out[:, -1], y).double().cpu().numpy()


def context_curve(model: CharRNN, ids: np.ndarray, *, lengths: tuple[int, ...] = DEFAULT_LENGTHS,
                  targets: int = DEFAULT_TARGETS, unk_id: int | None = None,
                  boundary_ids: np.ndarray | None = None, perturb: str | None = None, beyond: int = 0,
                  seed: int = 0, max_rows: int = 4096, on_full: Callable[[float, int, float], None] | None = None,
                  on_point: Callable[[ContextPoint, float], None] | None = None) -> ContextCurve:
    """The loss of the same targets of `ids` (shape (n,)) with full context and with each truncated
    context length; `on_full(loss, targets, seconds)` is called when the full-context pass is done,
    `on_point(point, seconds)` as each length is."""
    if not lengths:
        raise UsageError("--lengths is empty")
    if targets < 1:
        raise UsageError(f"--targets must be >= 1, got {targets}")
    if perturb is not None and perturb not in PERTURBATIONS:
        raise UsageError(f"unknown perturbation {perturb!r}: choose one of {', '.join(PERTURBATIONS)}")
    if perturb is not None and not 0 <= beyond < max(lengths) - 1:
        raise UsageError(f"--beyond {beyond} leaves nothing to {perturb}: it must be from 0 to "
                         f"{max(lengths) - 2} (below the longest length minus one)")
    longest = max(lengths)
    if unk_id is not None and len(ids) and bool((np.asarray(ids) == unk_id).all()):
        raise DataError("every character of the text is unknown to the model: nothing to score")
    if len(ids) <= longest:
        raise DataError(f"the text is too short for context length {longest:,}: it has {len(ids):,} characters and "
                        f"needs more than {longest:,} (shorten --lengths or give more text)")
    picked = pick_targets(ids, longest, targets, unk_id)
    if len(picked) == 0:
        raise DataError(f"no character after the first {longest:,} of the text is known to the model: nothing to "
                        "score (shorten --lengths or give more text)")
    was_training = model.training
    model.eval()
    try:
        began = time.perf_counter()
        full_losses = full_context_losses(model, ids, picked, 2 * longest, boundary_ids)
        full = float(full_losses.mean())
        if on_full is not None:
            on_full(full, len(picked), time.perf_counter() - began)
        rng = np.random.default_rng(seed)
        points = []
        for n in lengths:
            began = time.perf_counter()
            losses = np.concatenate([
                truncated_losses(model, ids, picked[i : i + max_rows], n, boundary_ids, perturb, beyond, rng)
                for i in range(0, len(picked), max_rows)])
            point = ContextPoint(n, float(losses.mean()), float((losses - full_losses).mean()), len(picked))
            points.append(point)
            if on_point is not None:
                on_point(point, time.perf_counter() - began)
    finally:
        model.train(was_training)
    return ContextCurve(full, len(picked), points)


def draw_context(fig: object, curves: list[tuple[str, ContextCurve]], title: str = "") -> None:
    """The loss against context length (log x) of each named curve on matplotlib Figure `fig`, with
    its full-context loss as a dashed line of the same colour."""
    ax = fig.subplots()  # type: ignore[attr-defined]
    colours = ("tab:blue", "tab:red", "tab:green", "tab:orange", "tab:purple", "tab:cyan", "tab:gray", "tab:olive")
    for i, (name, curve) in enumerate(curves):
        colour = colours[i % len(colours)]
        xs = [p.length for p in curve.points]
        ax.plot(xs, [p.nats_per_char for p in curve.points], marker="o", color=colour, label=f"{name}: last n chars")
        ax.axhline(curve.full, color=colour, linestyle="--", linewidth=1,
                   label=f"{name}: full context {curve.full:.3f}")
    ax.set_xscale("log")
    lengths = sorted({p.length for _, curve in curves for p in curve.points})
    ax.set_xticks(lengths, [f"{n:,}" for n in lengths])  # the lengths measured, not powers of ten
    ax.set_xlabel("context length n (characters)")
    ax.set_ylabel("loss (nats/char)")
    ax.set_title(title or "loss of the same characters given only their last n characters")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
