"""How many CPU threads torch's operators use, chosen by measurement rather than by counting cores.

On a quiet machine torch's default (one intra-op thread per core) is fastest; beside another
CPU-bound process it can be the slowest: the threads of every operator wait at a barrier for a
core that is busy. Measured on a 2-core AMD EPYC (2026-12-01), training the default model beside
one busy loop ran at 11.7k chars/s with 2 threads and 29.0k with 1 (quiet: 44.7k and 25.0k).

A ThreadChooser times the units of work a consumer already does (a training step, a window of
evaluation, a batch of records, a few generated characters) and picks the thread count that does
them fastest per character:

1. warm-up: the first `warmup` units run with the fewest threads and are not timed into anything (lazy
   allocations, optimizer state). The fewest, because the two ways of being wrong are not alike: too few
   threads is at most as slow as the ratio of the counts, too many on a busy machine can be ten times
   slower (each operator waits at a barrier for a thread whose core is taken);
2. trial: the candidates take one unit each in turn, ascending; after each round a candidate whose
   median time per character is more than `abandon` times the best one's is dropped, so a clear
   loser costs one unit; after `trial_units` rounds the lowest median wins, unless the two best are
   within `close` of each other: then the rounds go on, up to `max_trial_units`, since a median of
   three units is easily swayed by a noisy unit on a quiet machine (where the counts are close, a
   wrong pick costs that ratio for the whole run). Medians within `tie` of the best count as equal,
   and the most threads among them win: torch's default, the best on a quiet machine;
3. settle: the next `window` units at the chosen count give the baseline (no switching in them);
4. watch: when the median of the last `window` units drifts more than `drift` from the baseline
   (either way: a neighbour started or stopped), and at least `gap` units have passed since the
   last trial, the trial runs again. A trial that confirms the same count doubles `gap` (up to
   MAX_GAP), so that a noisy machine does not keep paying for trials; a changed count resets it. A
   trial costs about r - 1 units when the loser is r times slower, so the gap is also at least
   (r - 1) / `retrial_share` units: trials take at most that share of the time. A count below the
   most is also checked again once the gap has passed, drift or not (the gap doubling after every
   check): a pick that a noisy trial got wrong would otherwise hold for the whole run, since a wrong
   count runs steadily and never drifts.

An explicit count (`--threads`, or OMP_NUM_THREADS in the environment) and any device but the CPU
make a fixed chooser: it sets nothing adaptive and measures nothing. The interface is callback-free
(`before()` / `after(chars)`, or `with chooser.unit(chars):`), so every consumer can use it; the
overhead is two perf_counter calls per unit and torch.set_num_threads (0.1 us) at a switch.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch

from charrnn.config import MAX_THREADS
from charrnn.errors import UsageError

MAX_GAP = 4096  # units between trials, at most, after trials that keep confirming the same count
MAX_CANDIDATES = 3
TRIAL_CUT = 8  # see ThreadChooser.unit_size


def env_threads(env: Mapping[str, str] | None = None) -> int | None:
    """OMP_NUM_THREADS as a count >= 1 when set to one (torch honours it at start-up), else None."""
    raw = (os.environ if env is None else env).get("OMP_NUM_THREADS", "").strip()
    return int(raw) if raw.isdigit() and int(raw) >= 1 else None


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the system has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def check_threads(threads: int, cores: int | None = None) -> int:
    """`threads` if it is a usable count, else a UsageError (exit 2): more threads than the process's `cores`
    never run faster (each operator's threads wait at a barrier for the ones that have no core), so a count
    past them is a mistake (`--threads 999` on 2 cores ran at 139 chars/s), said rather than taken."""
    if not 1 <= threads <= MAX_THREADS:
        raise UsageError(f"--threads must be between 1 and {MAX_THREADS}, got {threads}")
    cores = usable_cores() if cores is None else cores
    if threads > cores:
        raise UsageError(f"--threads {threads} is more than the {cores} CPU core(s) this process can use: "
                         f"give at most {cores}")
    return threads


def candidates(default: int) -> tuple[int, ...]:
    """The counts tried, ascending: the default and its halves, at most MAX_CANDIDATES of them
    (2 -> (1, 2); 4 -> (1, 2, 4); 32 -> (8, 16, 32))."""
    out = [max(1, default)]
    while out[-1] > 1 and len(out) < MAX_CANDIDATES:
        out.append(max(1, out[-1] // 2))
    return tuple(sorted(set(out)))


@dataclass(frozen=True)
class Choice:
    """One decision: the count chosen, and the median seconds per character each candidate took in
    the trial that chose it (a dropped candidate: over the units it ran)."""

    threads: int
    seconds_per_char: dict[int, float]
    reason: str  # "start", "drift" (the step time moved past the threshold) or "check" (a count below the most)
    unit: int  # units done when the choice was made

    def slower(self) -> dict[int, float]:
        """How many times slower per character each other candidate was than the chosen one."""
        best = self.seconds_per_char[self.threads]
        return {n: s / best for n, s in self.seconds_per_char.items() if n != self.threads and best > 0}

    def describe(self) -> str:
        """One line for stderr: `threads: 1 (2: 2.4x slower per character)`."""
        others = ", ".join(f"{n}: {r:.1f}x slower" for n, r in sorted(self.slower().items()))
        why = {"start": "", "drift": ", chosen again as the step time drifted",
               "check": ", checked again"}[self.reason]
        return f"threads: {self.threads} ({others} per character{why})" if others else f"threads: {self.threads}"


@dataclass
class ThreadChooser:
    """Chooses torch's intra-op thread count among `options` by timing units of work (see the module's
    docstring); with a single option it is fixed and only says which."""

    options: tuple[int, ...]
    warmup: int = 1
    trial_units: int = 3
    max_trial_units: int = 7
    close: float = 1.25
    tie: float = 1.05
    abandon: float = 1.5
    window: int = 5
    drift: float = 0.3
    gap: int = 16
    retrial_share: float = 0.05
    min_unit_seconds: float = 0.02  # tiny units (a generated character) are pooled up to this much time
    clock: Callable[[], float] = time.perf_counter
    set_threads: Callable[[int], None] = torch.set_num_threads
    choices: list[Choice] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.options = tuple(sorted(set(self.options)))
        self.threads = self.options[-1]  # the count in use now
        self.phase = "fixed" if len(self.options) < 2 else "warmup"
        self.units = 0  # units timed so far
        self.pending: tuple[float, int] = (0.0, 0)  # seconds and characters pooled into the unit in progress
        self.started: float | None = None
        self.samples: dict[int, list[float]] = {}
        self.alive: list[int] = []
        self.turn = 0
        self.recent: deque[float] = deque(maxlen=self.window)
        self.baseline = 0.0
        self.chosen_at = 0
        self.next_gap = self.gap
        self.reason = "start"
        if self.adaptive and self.warmup <= 0:
            self._start_trial("start")

    @property
    def adaptive(self) -> bool:
        return self.phase != "fixed"

    def unit_size(self, size: int) -> int:
        """How much of `size` (a window's columns) a consumer that can cut its work finer should do as one
        unit now: an eighth while the candidates are being tried, so that a unit run with a count that
        proves ten times slower costs little; all of it otherwise."""
        return max(1, size // TRIAL_CUT) if self.phase in ("warmup", "trial") else size

    def before(self) -> None:
        """A unit of work starts."""
        if self.phase == "warmup" and self.units == 0:
            self._use(self.options[0])
        self.started = self.clock()

    def after(self, chars: int) -> Choice | None:
        """The unit started by `before()` is done and covered `chars` characters; returns the new
        Choice when this unit completed a trial."""
        if self.started is None:
            return None
        seconds, self.started = self.clock() - self.started, None
        return self.observe(seconds, chars)

    @contextlib.contextmanager
    def unit(self, chars: int) -> Iterator[None]:
        """`with chooser.unit(n):` times the block as one unit of `n` characters."""
        self.before()
        yield
        self.after(chars)

    def observe(self, seconds: float, chars: int) -> Choice | None:
        """Account `seconds` of work on `chars` characters; units shorter than min_unit_seconds are
        pooled with the next ones. Returns the new Choice when a trial completes."""
        if self.phase == "fixed" or chars <= 0 or seconds < 0:
            return None
        pooled_s, pooled_c = self.pending[0] + seconds, self.pending[1] + chars
        if pooled_s < self.min_unit_seconds:
            self.pending = (pooled_s, pooled_c)
            return None
        self.pending = (0.0, 0)
        self.units += 1
        return self._step(pooled_s / pooled_c)

    def _step(self, per_char: float) -> Choice | None:
        if self.phase == "warmup":
            if self.units >= self.warmup:
                self._start_trial("start")
            return None
        if self.phase == "trial":
            return self._trial(per_char)
        self.recent.append(per_char)
        if self.phase == "settle":
            if len(self.recent) == self.window:
                self.baseline, self.phase = statistics.median(self.recent), "watch"
            return None
        moved = abs(statistics.median(self.recent) / self.baseline - 1) if self.baseline > 0 else 0.0
        if self.units - self.chosen_at >= self.next_gap:
            if moved > self.drift:
                self._start_trial("drift")
            elif self.threads < self.options[-1]:
                self._start_trial("check")
        return None

    def _start_trial(self, reason: str) -> None:
        self.phase, self.reason = "trial", reason
        self.samples = {n: [] for n in self.options}
        self.alive, self.turn = list(self.options), 0
        self._use(self.alive[0])

    def _trial(self, per_char: float) -> Choice | None:
        self.samples[self.threads].append(per_char)
        self.turn += 1
        if self.turn < len(self.alive):
            self._use(self.alive[self.turn])
            return None
        # A round is complete: drop the clear losers, then go on or decide.
        medians = {n: statistics.median(self.samples[n]) for n in self.alive}
        best = min(medians.values())
        self.alive = [n for n in self.alive if medians[n] <= self.abandon * best]
        rounds = len(self.samples[self.alive[0]])
        two_best = sorted(medians[n] for n in self.alive)[:2]
        close = len(two_best) > 1 and two_best[1] <= self.close * two_best[0]
        if len(self.alive) > 1 and (rounds < self.trial_units or close and rounds < self.max_trial_units):
            self.turn = 0
            self._use(self.alive[0])
            return None
        return self._decide()

    def _decide(self) -> Choice:
        measured = {n: statistics.median(s) for n, s in self.samples.items() if s}
        best = min(measured[n] for n in self.alive)
        chosen = max(n for n in self.alive if measured[n] <= self.tie * best)  # a tie: the most threads
        previous = self.choices[-1].threads if self.choices else None
        choice = Choice(chosen, measured, self.reason, self.units)
        doubled = self.next_gap * 2 if chosen == previous or self.reason == "check" else self.gap
        worst = max(choice.slower().values(), default=1.0)
        self.next_gap = min(MAX_GAP, max(doubled, math.ceil((worst - 1) / self.retrial_share)))
        self.choices.append(choice)
        self._use(chosen)
        self.phase, self.chosen_at = "settle", self.units
        self.recent.clear()
        return choice

    def _use(self, n: int) -> None:
        if n != self.threads:
            self.set_threads(n)
            self.threads = n


def make_chooser(threads: int | None, device: torch.device | str = "cpu", *, env: Mapping[str, str] | None = None,
                 default: int | None = None, **tuning: float) -> ThreadChooser:
    """The chooser a command uses: `threads` given (--threads) sets that count and fixes it; so does
    OMP_NUM_THREADS in `env` (already applied by torch at start-up); on a device other than the CPU
    the count is left as it is; otherwise the candidates of `default` (torch's count now)."""
    now = torch.get_num_threads() if default is None else default
    if threads is not None:
        check_threads(threads)
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        return ThreadChooser((threads,))
    if env_threads(env) is not None or torch.device(device).type != "cpu":
        return ThreadChooser((now,))
    return ThreadChooser(candidates(now), **tuning)  # type: ignore[arg-type]


def fixed(count: int | None = None) -> ThreadChooser:
    """A chooser that never changes anything (the current count, or `count` as the one it reports)."""
    return ThreadChooser((torch.get_num_threads() if count is None else count,))

