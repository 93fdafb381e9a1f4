"""Many generations advanced together, one character per forward pass: the stepping engine of the
HTTP server (`charrnn serve`), one per model.

A Job is one generate request: `num_samples` streams from one prefix, sampled with the request's own
temperature, top-k, top-p and seed. The engine holds the streams of every job in one state
(layers, R, H) and advances them all with one Stepper call per step ((R,) ids in, (R, V) logits out):
at one stream a step costs its op calls, not its arithmetic, so 16 streams cost a few times one, not
16 times. Jobs join between steps (their prefix read by generate.warm_up) and leave when done or
cancelled. The engine is not thread-safe: one thread (charrnn.serving.worker) drives it; only a job's
`cancelled` flag may be set from elsewhere.

Each row is sampled as generate.next_ids samples it (the same operations, per-row parameters) with
uniform numbers from its job's own generator, so a job that runs alone gives what `charrnn generate
--seed` gives; in a batch, the wider matrix products may round differently, rarely changing a draw.
Plain sampling only: stop strings, beam search and records models go through charrnn.serving.service.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from charrnn.data.vocab import Vocab
from charrnn.inference.generate import Sampling, draw_with, temper, warm_up
from charrnn.model.network import CharRNN, State, cat_streams, repeat_stream, select_streams
from charrnn.model.stepper import Stepper


@torch.inference_mode()
def sample_rows(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                greedy: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """generate.next_ids with parameters per row: logits (R, V), temperature (R,), top_k (R,) int (0: none),
    top_p (R,) (inf: none), greedy (R,) bool, uniform (R, 1) in [0, 1) -> ids (R,). A row gives what
    next_ids gives for it (generate.temper: temperatures <= 1 shift the best logit to 0 first, others divide
    only, in float64)."""
    raw = logits
    logits = temper(logits, temperature[:, None].double())
    if bool((top_k > 0).any()):
        k = top_k.clamp(1, logits.shape[-1])
        top = logits.topk(int(k.max()), dim=-1).values  # (R, kmax)
        kth = top.gather(1, (k - 1)[:, None])
        kth = torch.where(((top_k > 0) & (top_k < logits.shape[-1]))[:, None], kth, -math.inf)
        logits = logits.masked_fill(logits < kth, -math.inf)
    probs = torch.softmax(logits, dim=-1)
    if bool(torch.isfinite(top_p).any()):
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = (sorted_p.cumsum(dim=-1) - sorted_p) >= top_p[:, None]  # the first token always stays
        probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
    ids = draw_with(probs, uniform)
    return torch.where(greedy, raw.argmax(dim=-1), ids) if bool(greedy.any()) else ids


@dataclass(eq=False)
class Job:
    """One generate request: `num_samples` samples of `n` characters after a prefix. `on_piece(pieces)`
    (optional) gets one piece per sample whenever the samples grow; `on_done(samples)` gets the whole
    samples at the end, or the exception that stopped the job. Both are called on the engine's thread."""

    prefix_ids: np.ndarray
    n: int
    sampling: Sampling = Sampling()
    seed: int = 0
    num_samples: int = 1
    echo: str = ""  # put in front of every sample
    on_done: Callable[[list[str] | BaseException], None] = lambda result: None
    on_piece: Callable[[list[str]], None] | None = None
    cancelled: bool = False  # set from any thread: the job leaves at the next step, with no on_done
    paused: bool = False  # set from any thread: the job's rows keep their state (its reader is behind)
    texts: list[list[str]] = field(default_factory=list)
    made: int = 0  # characters made per sample
    generator: torch.Generator | None = None
    parked: tuple | None = None  # (its rows of the state, its next inputs) while out of the engine (Engine.park)


class Engine:
    """The streams of all running jobs of one model; `add` a job, `step` them all one character."""

    def __init__(self, model: CharRNN, vocab: Vocab) -> None:
        self.model, self.vocab = model, vocab
        self.device = next(model.parameters()).device
        self.step_fn = Stepper(model, banned=(vocab.unk_id,))  # never emit <unk>
        self.jobs: list[Job] = []  # in row order: job i owns the next num_samples rows
        self.state: State = model.begin_state(0, self.device)
        self.last = torch.zeros(0, dtype=torch.int64, device=self.device)  # (R,) the next inputs
        self.params: tuple[torch.Tensor, ...] | None = None  # per-row sampling parameters, rebuilt on change
        self.made = 0  # characters generated, all jobs together (the server's metrics read it)

    @property
    def rows(self) -> int:
        return int(self.last.shape[0])

    @torch.inference_mode()
    def add(self, job: Job) -> None:
        """Start a job: read its prefix and give it its rows (or finish it at once when n allows)."""
        job.generator = torch.Generator(device=self.device).manual_seed(job.seed)
        job.texts = [[job.echo] if job.echo else [] for _ in range(job.num_samples)]
        if job.on_piece is not None and job.echo:
            job.on_piece([job.echo] * job.num_samples)
        if job.n == 0:
            job.on_done(["".join(t) for t in job.texts])
            return
        state = self.model.begin_state(1, self.device)
        if len(job.prefix_ids) == 0:  # nothing to condition on: a first character from the training text's
            counts = torch.tensor(self.vocab.counts, dtype=torch.float64, device=self.device)  # frequencies
            first = torch.multinomial(counts.expand(job.num_samples, -1), 1, generator=job.generator)[:, 0]
            self._emit(job, self.vocab.decode(first))
        else:
            state = warm_up(self.model, job.prefix_ids[:-1], state)
            first = torch.full((job.num_samples,), int(job.prefix_ids[-1]), dtype=torch.int64, device=self.device)
        if job.made >= job.n:
            job.on_done(["".join(t) for t in job.texts])
            return
        self.jobs.append(job)
        self.state = cat_streams([self.state, repeat_stream(state, job.num_samples)])
        self.last = torch.cat([self.last, first])
        self.params = None

    @property
    def moving(self) -> bool:
        """Whether a step would make anything: some job is running and not paused."""
        return any(not j.paused for j in self.jobs)

    @torch.inference_mode()
    def step(self) -> None:
        """One character more for every running sample but those of paused jobs, whose rows keep their
        state, input and generator as they were; finished and cancelled jobs leave."""
        self._drop([j for j in self.jobs if j.cancelled])
        held = [j.paused for j in self.jobs]  # read once: another thread may change them meanwhile
        if all(held):
            return
        logits, state = self.step_fn(self.last, self.state)  # (R, V)
        uniform = torch.cat([
            torch.zeros(j.num_samples, 1, device=self.device) if j.sampling.greedy or hold
            else torch.rand(j.num_samples, 1, generator=j.generator, device=self.device)
            for j, hold in zip(self.jobs, held, strict=True)])
        ids = sample_rows(logits, *self._params(), uniform)
        if any(held):
            keep = torch.tensor([hold for j, hold in zip(self.jobs, held, strict=True) for _ in range(j.num_samples)],
                                device=self.device)  # (R,)
            state = _where(keep, self.state, state)
            ids = torch.where(keep, self.last, ids)
        self.state, self.last = state, ids
        chars, row = self.vocab.decode(ids), 0
        for job, hold in zip(self.jobs, held, strict=True):
            if not hold:
                self._emit(job, chars[row : row + job.num_samples])
            row += job.num_samples
        done = [j for j in self.jobs if j.made >= j.n]
        self._drop(done)
        for job in done:
            job.on_done(["".join(t) for t in job.texts])

    def _emit(self, job: Job, chars: str) -> None:
        self.made += len(chars)
        for text, c in zip(job.texts, chars, strict=True):
            text.append(c)
        job.made += 1
        if job.on_piece is not None:
            job.on_piece(list(chars))

    def _params(self) -> tuple[torch.Tensor, ...]:
        """(temperature, top_k, top_p, greedy), one value per row, for sample_rows."""
        if self.params is None:
            rows = [j.sampling for j in self.jobs for _ in range(j.num_samples)]
            top_p = [s.top_p if s.top_p is not None and s.top_p < 1 else math.inf for s in rows]
            self.params = (torch.tensor([s.temperature for s in rows], dtype=torch.float64, device=self.device),
                           torch.tensor([s.top_k or 0 for s in rows], dtype=torch.int64, device=self.device),
                           torch.tensor(top_p, dtype=torch.float32, device=self.device),
                           torch.tensor([s.greedy for s in rows], dtype=torch.bool, device=self.device))
        return self.params

    def park(self, job: Job) -> None:
        """Take a (paused) job's rows out of the batch, kept on the job, so that they leave their room to
        others; `unpark` puts them back, and the job goes on where it stopped (same state, input and
        generator: the same text)."""
        row = 0
        for j in self.jobs:
            if j is job:
                break
            row += j.num_samples
        index = torch.arange(row, row + job.num_samples, device=self.device)
        job.parked = (select_streams(self.state, index), self.last.index_select(0, index))
        self._drop([job])

    def unpark(self, job: Job) -> None:
        assert job.parked is not None
        state, last = job.parked
        job.parked = None
        self.jobs.append(job)
        self.state = cat_streams([self.state, state])
        self.last = torch.cat([self.last, last])
        self.params = None

    def _drop(self, leaving: list[Job]) -> None:
        if not leaving:
            return
        keep, row = [], 0
        for job in self.jobs:
            if job not in leaving:
                keep.extend(range(row, row + job.num_samples))
            row += job.num_samples
        index = torch.tensor(keep, dtype=torch.int64, device=self.device)
        self.jobs = [j for j in self.jobs if j not in leaving]
        self.state = select_streams(self.state, index)
        self.last = self.last.index_select(0, index)
        self.params = None


def _where(rows: torch.Tensor, a: State, b: State) -> State:
    """Row r of `a` where rows[r], else of `b`: (layers, R, H) each (LSTM's (h, c) alike)."""
    if isinstance(a, tuple):
        return tuple(torch.where(rows[None, :, None], x, y) for x, y in zip(a, b, strict=True))  # type: ignore
    return torch.where(rows[None, :, None], a, b)

