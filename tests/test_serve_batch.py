"""The HTTP server's batching, without HTTP: next characters for many prefixes in one pass
(complete.next_logprobs), the stepping engine that advances many generations together
(charrnn.serving.engine) and the per-model worker thread that feeds both (charrnn.serving.worker)."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from charrnn.data.vocab import Vocab
from charrnn.errors import RequestError
from charrnn.inference.complete import next_chars, next_chars_batch, next_logprobs
from charrnn.inference.generate import Sampling, generate, next_ids
from charrnn.model.network import CharRNN, ModelConfig
from charrnn.serving.engine import Engine, Job, sample_rows
from charrnn.serving.worker import ModelWorker, NextTask, Pool

VOCAB = Vocab.build("the quick brown fox jumps over the lazy dog.\n")


def model(cell: str = "lstm", seed: int = 0, layers: int = 2) -> CharRNN:
    torch.manual_seed(seed)
    m = CharRNN(ModelConfig(vocab_size=VOCAB.size, cell=cell, layers=layers, hidden=16, input="embedding",
                            embed_dim=6))
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(3.0)  # sharper distributions than the initialisation's
    return m.eval()


def ids(text: str) -> np.ndarray:
    return VOCAB.encode(text, unk="map")


# next_logprobs / next_chars_batch ---------------------------------------------------------------------------

@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm", "scratch-gru"])
def test_a_batch_of_prefixes_gives_what_next_chars_gives_for_each(cell: str) -> None:
    m = model(cell)
    prefixes = ["the quick", "", "t", "over the lazy dog.\nthe", "qu", "the quick"]
    ks = [3, 5, 40, 1, 7, 2]
    got = next_chars_batch(m, VOCAB, [ids(p) for p in prefixes], ks)
    for p, k, guesses in zip(prefixes, ks, got, strict=True):
        alone = next_chars(m, VOCAB, ids(p), k)
        assert [g.text for g in guesses] == [g.text for g in alone]
        assert [g.prob for g in guesses] == pytest.approx([g.prob for g in alone], rel=1e-5)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.text(alphabet="the qx.\n", max_size=30), min_size=1, max_size=6), st.integers(1, 200),
       st.booleans())
def test_windows_and_start_ids_do_not_change_the_answer(prefixes: list[str], max_logits: int, start: bool) -> None:
    """However small the windows (max_logits), with or without start ids (a records model's delimiter),
    each row is the forward pass of its own prefix alone."""
    m = model("gru", seed=2, layers=1)
    start_ids = ids("\n") if start else None
    got = next_logprobs(m, VOCAB, [ids(p) for p in prefixes], start_ids, max_logits=max_logits)
    assert got.shape == (len(prefixes), VOCAB.size)
    for p, row in zip(prefixes, got, strict=True):
        seq = list(start_ids if start_ids is not None else []) + list(ids(p))
        if not seq:
            continue  # the character frequencies, checked in the test above
        logits, _ = m(torch.tensor([seq]))
        expected = torch.log_softmax(logits[0, -1].double(), dim=0)
        expected[VOCAB.unk_id] = -math.inf
        torch.testing.assert_close(row, expected, rtol=1e-5, atol=1e-6)


# sample_rows and the engine -------------------------------------------------------------------------------------

def test_sample_rows_is_next_ids_row_by_row() -> None:
    torch.manual_seed(1)
    logits = torch.randn(6, 30) * 3
    logits[:, 4] = -math.inf  # a banned token
    samplings = [Sampling(), Sampling(0.3), Sampling(2.5, top_k=4), Sampling(0.8, top_p=0.6),
                 Sampling(1.0, 1, 0.99), Sampling(greedy=True)]
    expected, uniform = [], []
    for row, s in enumerate(samplings):
        expected.append(int(next_ids(logits[row : row + 1], s, torch.Generator().manual_seed(row))[0]))
        uniform.append(torch.rand(1, generator=torch.Generator().manual_seed(row)))
    got = sample_rows(logits, torch.tensor([s.temperature for s in samplings]),
                      torch.tensor([s.top_k or 0 for s in samplings]),
                      torch.tensor([s.top_p if s.top_p else math.inf for s in samplings]),
                      torch.tensor([s.greedy for s in samplings]), torch.stack(uniform))
    assert got.tolist() == expected


def reference(m: CharRNN, prefix: str, n: int, sampling: Sampling, seed: int, k: int) -> list[str]:
    steps = generate(m, VOCAB, ids(prefix), n, sampling, seed=seed, num_samples=k)  # n lists of k characters
    return ["".join(s) for s in zip(*steps, strict=True)] if n else [""] * k


def run_alone(m: CharRNN, job: Job) -> list[str]:
    out: list = []
    job.on_done = out.append
    engine = Engine(m, VOCAB)
    engine.add(job)
    while engine.jobs:
        engine.step()
    return out[0]


@pytest.mark.parametrize("prefix", ["the ", ""])
@pytest.mark.parametrize("sampling", [Sampling(), Sampling(0.7), Sampling(1.3, top_k=5), Sampling(0.9, top_p=0.8),
                                      Sampling(greedy=True)], ids=str)
def test_a_job_alone_is_charrnn_generate(prefix: str, sampling: Sampling) -> None:
    m = model()
    got = run_alone(m, Job(ids(prefix), 25, sampling, seed=5, num_samples=3))
    assert got == reference(m, prefix, 25, sampling, 5, 3)


def test_jobs_that_join_and_leave_between_steps_keep_their_own_samples() -> None:
    """Each job's rows stay its own while others join and leave (the same text as the job alone: a wider
    matrix product could in principle round differently, but a draw changes only when its uniform
    number falls within rounding of a boundary)."""
    m = model()
    specs = [("the ", Sampling(), 1, 20), ("", Sampling(0.7, top_k=4), 2, 9), ("qu", Sampling(1.2, top_p=0.9), 3, 30),
             ("do", Sampling(greedy=True), 1, 14)]
    done: dict[int, list[str]] = {}
    pieces: list[list[str]] = []
    engine = Engine(m, VOCAB)
    for i, (prefix, sampling, k, n) in enumerate(specs):
        on_piece = pieces.append if i == 2 else None
        engine.add(Job(ids(prefix), n, sampling, seed=i, num_samples=k, echo="<" * (i == 2),
                       on_done=lambda r, i=i: done.__setitem__(i, r), on_piece=on_piece))
        engine.step()
        engine.step()
    while engine.jobs:
        engine.step()
    assert engine.rows == 0
    for i, (prefix, sampling, k, n) in enumerate(specs):
        expected = reference(m, prefix, n, sampling, i, k)
        assert done[i] == (["<" + s for s in expected] if i == 2 else expected)
    assert ["".join(p[j] for p in pieces) for j in range(3)] == done[2]  # the streamed pieces make the samples


def test_a_cancelled_job_leaves_without_an_answer_and_the_others_go_on() -> None:
    m = model()
    done: dict[str, list[str]] = {}
    gone = Job(ids("the "), 50, on_done=lambda r: done.__setitem__("gone", r), num_samples=2)
    kept = Job(ids("over "), 12, seed=3, on_done=lambda r: done.__setitem__("kept", r))
    engine = Engine(m, VOCAB)
    engine.add(gone)
    engine.add(kept)
    engine.step()
    gone.cancelled = True
    while engine.jobs:
        engine.step()
    assert "gone" not in done
    assert done["kept"] == reference(m, "over ", 12, Sampling(), 3, 1)


def test_a_paused_job_holds_its_place_and_goes_on_as_if_never_paused() -> None:
    m = model()
    done: dict[str, list[str]] = {}
    slow = Job(ids("the "), 30, Sampling(0.9, top_k=6), seed=8, num_samples=2,
               on_done=lambda r: done.__setitem__("slow", r))
    other = Job(ids("we "), 30, seed=9, on_done=lambda r: done.__setitem__("other", r))
    engine = Engine(m, VOCAB)
    engine.add(slow)
    engine.add(other)
    for i in range(40):
        slow.paused = 3 <= i < 13  # ten steps held back in the middle
        made = slow.made
        engine.step()
        assert slow.made == (made if slow.paused else made + 1) or "slow" in done
    assert not engine.moving and not engine.jobs
    assert done["slow"] == reference(m, "the ", 30, Sampling(0.9, top_k=6), 8, 2)
    assert done["other"] == reference(m, "we ", 30, Sampling(), 9, 1)


def test_nothing_or_one_character_to_make() -> None:
    m = model()
    assert run_alone(m, Job(ids("the"), 0, echo="the", num_samples=2)) == ["the", "the"]
    assert run_alone(m, Job(ids(""), 1, seed=4)) == reference(m, "", 1, Sampling(), 4, 1)


# the worker thread ----------------------------------------------------------------------------------------------

class Answers:
    """Collects what a worker delivers, from its thread."""

    def __init__(self, count: int) -> None:
        self.items: dict[int, object] = {}
        self.lock = threading.Lock()
        self.count = count
        self.all_in = threading.Event()

    def deliver(self, key: int):  # noqa: ANN201
        def put(result: object) -> None:
            with self.lock:
                self.items[key] = result
                if len(self.items) == self.count:
                    self.all_in.set()
        return put


def test_next_requests_that_arrive_together_are_answered_by_one_batch() -> None:
    m = model()
    prefixes = ["the", "", "quick brown", "t", "lazy dog"]
    answers = Answers(len(prefixes))
    worker = ModelWorker("m", m, VOCAB, None, batch_wait=0.05)
    for i, p in enumerate(prefixes):  # queued before the thread starts: all there at its first look
        worker.submit(NextTask(ids(p), 3, answers.deliver(i)))
    worker.start()
    assert answers.all_in.wait(30)
    worker.stop(timeout=30)
    assert worker.batches == [len(prefixes)]
    for i, p in enumerate(prefixes):
        assert [g.text for g in answers.items[i]] == [g.text for g in next_chars(m, VOCAB, ids(p), 3)]


def test_the_worker_runs_generate_jobs_and_next_tasks_side_by_side() -> None:
    m = model()
    answers = Answers(4)
    worker = ModelWorker("m", m, VOCAB, None, max_rows=2).start()  # room for two streams: the rest wait
    worker.submit(Job(ids("the "), 30, seed=1, num_samples=2, on_done=answers.deliver(0)))
    worker.submit(Job(ids("a"), 10, seed=2, on_done=answers.deliver(1)))
    worker.submit(NextTask(ids("the q"), 2, answers.deliver(2)))
    worker.submit(Job(ids(""), 5, seed=3, on_done=answers.deliver(3)))
    assert answers.all_in.wait(60)
    worker.stop(timeout=30)
    assert not worker.thread.is_alive()
    assert answers.items[0] == reference(m, "the ", 30, Sampling(), 1, 2)
    assert answers.items[1] == reference(m, "a", 10, Sampling(), 2, 1)
    assert answers.items[3] == reference(m, "", 5, Sampling(), 3, 1)
    assert [g.text for g in answers.items[2]] == [g.text for g in next_chars(m, VOCAB, ids("the q"), 2)]


def test_a_full_queue_is_a_503_and_a_failing_job_gets_its_error() -> None:
    m = model()
    worker = ModelWorker("m", m, VOCAB, None, max_queue=2)
    worker.submit(NextTask(ids("a"), 1, lambda r: None))
    worker.submit(NextTask(ids("b"), 1, lambda r: None))
    with pytest.raises(RequestError) as e:
        worker.submit(NextTask(ids("c"), 1, lambda r: None))
    assert e.value.status == 503
    answers = Answers(1)
    worker.start()
    bad = Job(np.array([VOCAB.size + 5]), 3, on_done=answers.deliver(0))  # an id past the vocabulary
    worker.submit(bad)
    assert answers.all_in.wait(30)
    assert isinstance(answers.items[0], Exception)
    worker.stop(timeout=30)


def test_the_pool_bounds_what_waits_and_delivers_failures() -> None:
    pool = Pool(workers=1, max_queue=1)
    release = threading.Event()
    answers = Answers(2)
    pool.submit(lambda: release.wait(30), answers.deliver(0))
    pool.submit(lambda: 1 / 0, answers.deliver(1))
    with pytest.raises(RequestError) as e:
        pool.submit(lambda: None, lambda r: None)
    assert e.value.status == 503
    release.set()
    assert answers.all_in.wait(30)
    assert answers.items[0] is True and isinstance(answers.items[1], ZeroDivisionError)
    pool.stop()
