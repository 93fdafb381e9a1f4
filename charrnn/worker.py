"""Model work off the event loop, for the HTTP server: one worker thread per model that batches, and a
small shared pool for everything else.

A ModelWorker owns one model's batched work. Its inbox is a bounded queue (full: a 503 for the
caller to pass on, with Retry-After). The thread takes what has arrived, waiting `batch_wait`
seconds after the first task when it is idle (the micro-batch: requests that arrive together share
a forward pass), and then
- answers every `next` task taken together with one batched pass (complete.next_chars_batch);
- starts the generate jobs taken (engine.Engine) and advances all running jobs by one character,
  so that new jobs join between steps and finished or cancelled ones leave.
When the engine holds `max_rows` streams, jobs that do not fit wait and the thread takes nothing
more from its inbox until they have started: the inbox is the only queue and it is bounded.

A Pool runs the requests that do not batch (score, next words, generate with stop strings or beam
search) on a few threads, with its own bound on waiting work. Results go back through the
callbacks the caller gives (the HTTP layer hands them to its event loop); a failure is delivered
as the exception, never raised in the worker.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from charrnn.complete import Guess, next_chars_batch
from charrnn.engine import Engine, Job
from charrnn.errors import RequestError
from charrnn.model import CharRNN
from charrnn.vocab import Vocab

Deliver = Callable[[Any], None]  # gets the result, or the exception that stopped the work
_STOP = object()
PAUSED_POLL = 0.01  # seconds between looks at paused jobs when nothing else is to be done


@dataclass(eq=False)
class NextTask:
    """The k likeliest next characters after a prefix (ids, without the model's start ids)."""

    prefix_ids: np.ndarray
    k: int
    deliver: Callable[[list[Guess] | BaseException], None]
    cancelled: bool = False


def busy(what: str) -> RequestError:
    return RequestError(503, f"{what} is full (too many requests at once); try again shortly")


class ModelWorker:
    """One model's batched work (next and plain generate) on a thread of its own; see the module docstring."""

    def __init__(self, name: str, model: CharRNN, vocab: Vocab, start_ids: np.ndarray | None, *,
                 max_queue: int = 256, batch_wait: float = 0.002, max_batch: int = 64, max_rows: int = 256) -> None:
        self.name, self.model, self.vocab, self.start_ids = name, model, vocab, start_ids
        self.batch_wait, self.max_batch, self.max_rows = batch_wait, max_batch, max_rows
        self.inbox: queue.Queue = queue.Queue(maxsize=max_queue)
        self.engine = Engine(model, vocab)
        self.waiting: deque[Job] = deque()  # taken from the inbox, not yet started: no room in the engine
        self.thread = threading.Thread(target=self._run, name=f"charrnn-model-{name}", daemon=True)
        self.batches: list[int] = []  # sizes of the last next batches (the tests look), at most 1000
        self.stopping = False
        self.generating = 0  # jobs in the engine after the last step (read by other threads)

    def start(self) -> ModelWorker:
        self.thread.start()
        return self

    def submit(self, task: NextTask | Job) -> None:
        """Queue a task; a RequestError(503) when the inbox is full or the worker is stopping."""
        if self.stopping:
            raise RequestError(503, "the server is shutting down")
        try:
            self.inbox.put_nowait(task)
        except queue.Full:
            raise busy(f"the queue of model {self.name!r}") from None

    def stop(self, timeout: float | None = None) -> None:
        """Finish the work in hand (jobs still running are cancelled) and end the thread."""
        self.stopping = True
        for job in self.engine.jobs + list(self.waiting):
            job.cancelled = True
        try:
            self.inbox.put(_STOP, timeout=timeout)
        except queue.Full:  # the thread is not taking anything any more: it is a daemon, left behind
            return
        self.thread.join(timeout)

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            tasks = self._take()
            if any(t is _STOP for t in tasks):
                break
            nexts = [t for t in tasks if isinstance(t, NextTask) and not t.cancelled]
            if nexts:
                self._answer_next(nexts)
            self.waiting.extend(t for t in tasks if isinstance(t, Job))
            self._start_jobs()
            self.generating = len(self.engine.jobs)  # before any of their text is sent
            try:
                self.engine.step()
            except Exception as e:  # noqa: BLE001 - delivered to every job that was running
                failed, self.engine = self.engine.jobs, Engine(self.model, self.vocab)
                for job in failed:
                    job.on_done(e)
            self.generating = len(self.engine.jobs)

    def load(self) -> dict:
        """What the worker has in hand (for /healthz): generate jobs running, those paused for their reader,
        and requests waiting."""
        return {"generating": self.generating, "paused": sum(j.paused for j in self.engine.jobs),
                "waiting": self.inbox.qsize() + len(self.waiting)}

    def _take(self) -> list[Any]:
        """What has arrived: blocks for the first task when there is nothing to do, then gathers more for
        `batch_wait` seconds; only what is already there while jobs run. Nothing while jobs wait for room."""
        if self.waiting:
            return []
        tasks: list[Any] = []
        idle = not self.engine.jobs
        try:
            if idle:
                tasks.append(self.inbox.get())
            elif not self.engine.moving:  # every job waits for its reader: look again soon
                tasks.append(self.inbox.get(timeout=PAUSED_POLL))
        except queue.Empty:
            return tasks
        deadline = time.monotonic() + (self.batch_wait if idle else 0.0)
        try:
            while len(tasks) < self.max_batch and tasks[-1:] != [_STOP]:
                left = deadline - time.monotonic()
                tasks.append(self.inbox.get(timeout=left) if left > 0 else self.inbox.get_nowait())
        except queue.Empty:
            pass
        return tasks

    def _answer_next(self, tasks: list[NextTask]) -> None:
        self.batches = self.batches[-999:] + [len(tasks)]
        try:
            answers: list[Any] = next_chars_batch(self.model, self.vocab, [t.prefix_ids for t in tasks],
                                                  [t.k for t in tasks], self.start_ids)
        except Exception as e:  # noqa: BLE001 - every task of the batch gets the failure
            answers = [e] * len(tasks)
        for task, answer in zip(tasks, answers, strict=True):
            task.deliver(answer)

    def _start_jobs(self) -> None:
        while self.waiting:
            job = self.waiting[0]
            if job.cancelled:
                self.waiting.popleft()
                continue
            if self.engine.jobs and self.engine.rows + job.num_samples > self.max_rows:
                return
            self.waiting.popleft()
            try:
                self.engine.add(job)
            except Exception as e:  # noqa: BLE001 - the job's own failure (its prefix, its memory)
                job.on_done(e)


class Pool:
    """A few threads for the work that does not batch, with at most `max_queue` tasks waiting."""

    def __init__(self, workers: int = 2, max_queue: int = 256) -> None:
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="charrnn-pool")
        self.slots = threading.BoundedSemaphore(workers + max_queue)
        self.stopping = False

    def submit(self, work: Callable[[], Any], deliver: Deliver) -> None:
        """Run work() on a pool thread and deliver its result (or its exception); a RequestError(503)
        when too much is waiting."""
        if self.stopping:
            raise RequestError(503, "the server is shutting down")
        if not self.slots.acquire(blocking=False):
            raise busy("the server's queue")

        def run() -> None:
            try:
                result = work()
            except Exception as e:  # noqa: BLE001 - handed to the caller
                result = e
            finally:
                self.slots.release()
            deliver(result)

        self.executor.submit(run)

    def stop(self) -> None:
        self.stopping = True
        self.executor.shutdown(wait=True, cancel_futures=True)
