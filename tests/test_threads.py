"""Choosing the CPU threads by measurement (charrnn.threads): the chooser's logic on injected timings
(no real time is asserted), the explicit settings that switch it off, and --threads on the command line."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from charrnn import threads as th
from charrnn.cli import cli
from charrnn.config import MAX_THREADS, TrainConfig
from charrnn.data.vocab import Vocab
from charrnn.errors import UsageError
from charrnn.model.network import ModelConfig
from charrnn.training.callbacks import Callbacks
from charrnn.training.train import train

TINY = ["--hidden", "16", "-b", "4", "-t", "16", "--max-steps", "6", "--val-every", "3", "-q"]


@pytest.fixture(autouse=True)
def keep_torch_threads() -> Iterator[None]:
    """Commands run in this process set torch's global thread count: put it back after each test."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


class Machine:
    """A fake machine: a unit of work takes `speed[threads]` seconds per character (times `noise`)."""

    def __init__(self, speed: dict[int, float], seed: int = 0, noise: float = 0.0) -> None:
        self.speed, self.noise, self.rng = dict(speed), noise, random.Random(seed)
        self.set_calls: list[int] = []

    def chooser(self, options: tuple[int, ...] = (1, 2), **tuning: float) -> th.ThreadChooser:
        tuning.setdefault("min_unit_seconds", 0.0)
        return th.ThreadChooser(options, set_threads=self.set_calls.append, **tuning)  # type: ignore[arg-type]

    def run(self, chooser: th.ThreadChooser, units: int, chars: int = 100) -> list[int]:
        """Do `units` units; the thread count each one ran with."""
        used = []
        for _ in range(units):
            chooser.before()
            used.append(chooser.threads)
            factor = 1 + self.rng.uniform(-self.noise, self.noise)
            chooser.observe(self.speed[chooser.threads] * chars * factor, chars)
        return used


def test_candidates_are_the_default_and_its_halves() -> None:
    assert th.candidates(1) == (1,)
    assert th.candidates(2) == (1, 2)
    assert th.candidates(4) == (1, 2, 4)
    assert th.candidates(32) == (8, 16, 32)
    assert th.candidates(3) == (1, 3)


@pytest.mark.parametrize("speed, best", [({1: 1.0, 2: 2.5}, 1), ({1: 1.8, 2: 1.0}, 2)])
def test_picks_the_faster_per_character(speed: dict[int, float], best: int) -> None:
    machine = Machine(speed)
    chooser = machine.chooser()
    used = machine.run(chooser, 30)  # a check of a count below the most comes after 30 units, not in these
    assert [c.threads for c in chooser.choices] == [best]
    assert chooser.threads == best and machine.set_calls[-1] == best
    assert used[-20:] == [best] * 20
    # The loser is clearly slower (past `abandon`): after the warm-up it runs one unit, no more.
    assert used[1:].count(3 - best) == 1
    choice = chooser.choices[0]
    assert choice.reason == "start" and choice.slower()[3 - best] == pytest.approx(max(speed.values()))


def test_close_candidates_run_every_round_and_the_lower_median_wins() -> None:
    machine = Machine({1: 1.0, 2: 1.1})
    chooser = machine.chooser(trial_units=3)
    used = machine.run(chooser, 15)  # warm-up, then seven rounds of (1, 2): within `close`, three are too few
    assert used == [1] + [1, 2] * 7 and chooser.threads == 1  # the warm-up with the fewest
    assert chooser.choices[0].seconds_per_char == {1: pytest.approx(1.0), 2: pytest.approx(1.1)}
    assert chooser.choices[0].unit == 15
    far = Machine({1: 1.0, 2: 1.3})  # past `close`: three rounds decide
    decided = far.chooser(trial_units=3)
    assert far.run(decided, 7) == [1] + [1, 2] * 3 and [c.threads for c in decided.choices] == [1]


def test_a_tie_goes_to_the_most_threads() -> None:
    """Within `tie` (5%) the counts are equal as far as a trial can tell: torch's default wins (the best
    on a quiet machine), at most 5% from the best."""
    machine = Machine({1: 1.0, 2: 1.04})
    chooser = machine.chooser()
    machine.run(chooser, 15)
    assert [c.threads for c in chooser.choices] == [2]


def test_a_wrong_pick_of_fewer_threads_is_checked_again() -> None:
    """A noisy trial picks 1 thread where 2 are 1.25x faster: the run is steady, so nothing drifts, but the
    check after the gap finds 2; then nothing more is checked (the most threads are in use)."""
    machine = Machine({1: 1.0, 2: 1.5})  # what the trial sees (a neighbour that soon stops)
    chooser = machine.chooser(gap=16)
    machine.run(chooser, 7)  # the warm-up and three rounds
    assert [c.threads for c in chooser.choices] == [1]
    machine.speed = {1: 1.0, 2: 0.8}  # 1 thread runs as before: no drift
    machine.run(chooser, 400)
    assert [(c.threads, c.reason) for c in chooser.choices] == [(1, "start"), (2, "check")]


def test_units_are_per_character() -> None:
    """Units of different sizes compare by time per character, not per unit."""
    chooser = th.ThreadChooser((1, 2), set_threads=lambda n: None, min_unit_seconds=0.0, warmup=0)
    for _ in range(3):
        chooser.observe(1.0, 100)  # 1 thread: 0.01 s per character
        chooser.observe(1.5, 300)  # 2 threads: a longer unit, but 0.005 s per character
    assert chooser.choices[0].threads == 2


def test_a_lasting_change_of_speed_brings_a_new_trial() -> None:
    machine = Machine({1: 1.0, 2: 2.5})  # busy: 1 thread wins
    chooser = machine.chooser(gap=16)
    machine.run(chooser, 30)
    assert chooser.threads == 1
    machine.speed = {1: 1.8, 2: 1.0}  # the neighbour stopped: 1 thread is now 1.8x slower per character
    machine.run(chooser, 40)
    assert [(c.threads, c.reason) for c in chooser.choices] == [(1, "start"), (2, "drift")]


def test_no_trial_without_drift_nor_before_the_median_moves() -> None:
    machine = Machine({1: 2.0, 2: 1.0}, noise=0.2)  # +-20%: within the 30% threshold once medians are taken
    chooser = machine.chooser(gap=16)
    machine.run(chooser, 2000)
    assert len(chooser.choices) == 1 and chooser.threads == 2  # the most threads: no check either
    machine.speed = {1: 4.0, 2: 2.0}  # everything twice as slow, the same winner
    machine.run(chooser, 2)
    assert chooser.phase == "watch"  # two slow units of five: the median has not moved
    machine.run(chooser, 30)
    assert [c.threads for c in chooser.choices] == [2, 2] and chooser.choices[1].reason == "drift"


def test_checks_of_fewer_threads_double_their_gap() -> None:
    """A busy machine where 1 thread stays 2x faster: checks confirm it, ever further apart."""
    machine = Machine({1: 1.0, 2: 2.0})
    chooser = machine.chooser(gap=16, retrial_share=1.0)
    machine.run(chooser, 2000)
    assert all(c.threads == 1 for c in chooser.choices) and {c.reason for c in chooser.choices[1:]} == {"check"}
    gaps = np.diff([c.unit for c in chooser.choices])
    assert len(chooser.choices) <= 8 and all(b > a for a, b in zip(gaps, gaps[1:], strict=False))


def test_no_trial_before_the_gap() -> None:
    machine = Machine({1: 1.0, 2: 2.0})
    chooser = machine.chooser(gap=50)
    machine.run(chooser, 10)  # chosen at unit 3, the baseline settled at unit 8
    machine.speed = {1: 3.0, 2: 2.0}
    machine.run(chooser, 40)
    assert len(chooser.choices) == 1 and chooser.threads == 1
    machine.run(chooser, 20)
    assert [c.threads for c in chooser.choices] == [1, 2] and chooser.choices[1].unit >= 3 + 50


def test_no_flapping_on_a_noisy_machine() -> None:
    """Timings that jump by 4x at random: trials confirm the same count, and each doubles the gap before the
    next, so that a noisy machine pays for few trials."""
    machine = Machine({1: 1.0, 2: 3.0}, noise=0.6)
    chooser = machine.chooser(gap=16, retrial_share=1.0)  # the doubling alone
    machine.run(chooser, 3000)
    assert all(c.threads == 1 for c in chooser.choices)
    gaps = np.diff([c.unit for c in chooser.choices])
    assert len(chooser.choices) <= 10 and all(b >= a for a, b in zip(gaps, gaps[1:], strict=False))


def test_a_costly_loser_is_tried_seldom() -> None:
    """A loser 10x slower costs 9 units a trial: trials wait at least 9 / retrial_share units."""
    machine = Machine({1: 1.0, 2: 10.0})
    chooser = machine.chooser(gap=16, retrial_share=0.05)
    machine.run(chooser, 20)
    assert chooser.next_gap == 180
    machine.speed = {1: 2.0, 2: 20.0}
    machine.run(chooser, 150)
    assert len(chooser.choices) == 1
    machine.run(chooser, 50)
    assert len(chooser.choices) == 2 and chooser.choices[1].unit >= chooser.choices[0].unit + 180


@given(speed=st.tuples(st.floats(0.1, 10), st.floats(0.1, 10), st.floats(0.1, 10)),
       units=st.integers(0, 200), chars=st.integers(1, 10_000))
def test_steady_speeds_give_one_choice_the_fastest(speed: tuple[float, float, float], units: int, chars: int) -> None:
    machine = Machine(dict(zip((1, 2, 4), speed, strict=True)))
    chooser = machine.chooser(options=(1, 2, 4))
    machine.run(chooser, units, chars)
    assert chooser.threads in (1, 2, 4)
    fastest = min(s for n, s in machine.speed.items())
    # Every choice (the start, and checks of a count below the most) is the fastest, or within the tie of it.
    assert all(machine.speed[c.threads] <= chooser.tie * fastest for c in chooser.choices)
    assert len({c.threads for c in chooser.choices}) <= 1


def test_tiny_units_are_pooled() -> None:
    chooser = th.ThreadChooser((1, 2), set_threads=lambda n: None, min_unit_seconds=1 / 16)
    for _ in range(7):
        chooser.observe(1 / 128, 1)
    assert chooser.units == 0
    chooser.observe(1 / 128, 1)
    assert chooser.units == 1 and chooser.pending == (0.0, 0)


def test_before_and_after_time_with_the_clock() -> None:
    now = [0.0]
    chooser = th.ThreadChooser((1, 2), clock=lambda: now[0], set_threads=lambda n: None, min_unit_seconds=0.0,
                               warmup=0, trial_units=1)
    for seconds in (1.0, 3.0):  # 1 thread, then 2
        chooser.before()
        now[0] += seconds
        chooser.after(10)
    assert chooser.choices[0].seconds_per_char == {1: 0.1, 2: 0.3}
    assert chooser.after(10) is None  # no unit started


def test_the_warm_up_runs_with_the_fewest_threads() -> None:
    calls: list[int] = []
    chooser = th.ThreadChooser((1, 2, 4), set_threads=calls.append)
    assert chooser.threads == 4 and calls == []  # nothing changes before the work starts
    chooser.before()
    assert chooser.threads == 1 and calls == [1]


def test_a_fixed_chooser_sets_nothing_and_measures_nothing() -> None:
    calls: list[int] = []
    chooser = th.ThreadChooser((3,), set_threads=calls.append, min_unit_seconds=0.0)
    Machine({3: 1.0}).run(chooser, 100)
    assert not chooser.adaptive and chooser.threads == 3 and calls == [] and chooser.choices == []


def test_explicit_threads_win() -> None:
    chooser = th.make_chooser(1, "cpu", env={"OMP_NUM_THREADS": "2"})
    assert torch.get_num_threads() == 1 and not chooser.adaptive and chooser.threads == 1
    for bad in (0, -1, MAX_THREADS + 1):
        with pytest.raises(UsageError, match="--threads"):
            th.make_chooser(bad)


def test_omp_num_threads_or_another_device_switch_the_choice_off() -> None:
    now = torch.get_num_threads()
    assert th.env_threads({"OMP_NUM_THREADS": "3"}) == 3
    assert th.env_threads({"OMP_NUM_THREADS": "0"}) is None and th.env_threads({"OMP_NUM_THREADS": "x"}) is None
    assert th.env_threads({}) is None
    assert not th.make_chooser(None, "cpu", env={"OMP_NUM_THREADS": "1"}, default=2).adaptive
    assert not th.make_chooser(None, "cuda", env={}, default=2).adaptive
    adaptive = th.make_chooser(None, "cpu", env={}, default=2)
    assert adaptive.adaptive and adaptive.options == (1, 2)
    assert not th.make_chooser(None, "cpu", env={}, default=1).adaptive  # one candidate: nothing to choose
    assert torch.get_num_threads() == now  # none of these changed the count


def test_choice_describes_itself() -> None:
    c = th.Choice(1, {1: 0.01, 2: 0.024}, "start", 3)
    assert c.describe() == "threads: 1 (2: 2.4x slower per character)"
    assert "drifted" in th.Choice(2, {1: 0.02, 2: 0.01}, "drift", 40).describe()
    assert th.Choice(4, {4: 0.01}, "start", 3).describe() == "threads: 4"


def test_more_threads_than_cores_are_a_usage_error() -> None:
    assert th.check_threads(2, cores=2) == 2
    with pytest.raises(UsageError, match="--threads 3 is more than the 2 CPU core"):
        th.check_threads(3, cores=2)


class Recorder(Callbacks):
    def __init__(self) -> None:
        self.choices: list[th.Choice] = []

    def on_threads(self, choice: th.Choice) -> None:
        self.choices.append(choice)


def test_training_times_its_steps_and_logs_the_threads(tmp_path: Path) -> None:
    """A chooser on a fake clock (1 thread 3x faster) inside a real, tiny training run."""
    vocab = Vocab.build("abcab cab ba " * 40)
    ids = vocab.encode("abcab cab ba " * 40)
    cost = {1: 1.0, 2: 3.0}
    now = [0.0]
    chooser = th.ThreadChooser((1, 2), set_threads=lambda n: None, min_unit_seconds=0.0)

    def clock() -> float:
        now[0] += cost[chooser.threads] / 2  # before() and after() each add half a unit's time
        return now[0]

    chooser.clock = clock
    recorder = Recorder()
    result = train(ids[:400], ids[400:], vocab, ModelConfig(vocab_size=vocab.size, hidden=8),
                   TrainConfig(batch_size=2, num_steps=8, max_steps=12, val_every=6, log_every=4),
                   tmp_path / "m.pt", callbacks=recorder, threads=chooser)
    # Step 1 warms up (2 threads), step 2 runs with 1, step 3 with 2: 3x slower, dropped; chosen at step 3.
    assert [(c.threads, c.unit) for c in recorder.choices] == [(1, 3)] and result.threads == 1
    log = [json.loads(line) for line in (tmp_path / "m.pt.log.jsonl").read_text().splitlines()]
    assert [r["threads"] for r in log if r["kind"] == "train"] == [1, 1, 1]


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("threads")
    corpus = d / "corpus.txt"
    corpus.write_text("the time traveller smiled\nand we sat about the fire\n" * 20, encoding="utf-8")
    before = torch.get_num_threads()
    r = run("train", str(corpus), "-o", str(d / "m.pt"), *TINY)
    torch.set_num_threads(before)
    assert r.exit_code == 0, r.stderr
    return d / "m.pt", corpus


COMMANDS = [["train", "{corpus}", "-o", "{dir}/new.pt", *TINY], ["eval", "perplexity", "-m", "{model}", "{corpus}"],
            ["eval", "score", "-m", "{model}", "{corpus}"], ["generate", "-m", "{model}", "-n", "5", "--seed", "1"],
            ["complete", "-m", "{model}", "--prefix", "the"]]


@pytest.mark.parametrize("bad", ["0", "-1", "100000", "two", str(th.usable_cores() + 1)])
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_bad_threads_are_usage_errors(trained: tuple[Path, Path], command: list[str], bad: str) -> None:
    model, corpus = trained
    args = [a.format(model=model, corpus=corpus, dir=model.parent) for a in command]
    r = run(*args, "--threads", bad)
    assert r.exit_code == 2 and r.stdout == "" and "--threads" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_threads_is_accepted_everywhere(trained: tuple[Path, Path], command: list[str]) -> None:
    model, corpus = trained
    torch.set_num_threads(2)
    args = [a.format(model=model, corpus=corpus, dir=model.parent) for a in command]
    r = run(*args, "--threads", "1")
    assert r.exit_code == 0, r.stderr
    assert torch.get_num_threads() == 1


def test_threads_is_applied_and_reported(trained: tuple[Path, Path], tmp_path: Path) -> None:
    model, corpus = trained
    torch.set_num_threads(2)
    r = run("train", str(corpus), "-o", str(tmp_path / "m.pt"), *TINY, "--threads", "1", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["threads"] == 1
    log = [json.loads(line) for line in (tmp_path / "m.pt.log.jsonl").read_text().splitlines()]
    assert {r["threads"] for r in log if r["kind"] == "train"} == {1}
    torch.set_num_threads(2)
    r = run("eval", "perplexity", "-m", str(model), str(corpus), "--threads", "1", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["threads"] == 1
    r = run("generate", "-m", str(model), "-n", "5", "--seed", "1", "--threads", "1", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["threads"] == 1


def test_omp_num_threads_means_no_trial(trained: tuple[Path, Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """With OMP_NUM_THREADS set the count stays what torch made of it; no choice is said."""
    _, corpus = trained
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(2)  # what torch would have read at start-up does not matter here: nothing changes it
    r = run("train", str(corpus), "-o", str(tmp_path / "m.pt"), *TINY[:-1], "--json")
    assert r.exit_code == 0, r.stderr
    assert "threads:" not in r.stderr and json.loads(r.stdout)["threads"] == 2 and torch.get_num_threads() == 2


def test_consumers_cut_their_windows_finer_while_trying() -> None:
    chooser = th.ThreadChooser((1, 2), set_threads=lambda n: None)
    assert chooser.unit_size(256) == 32 and chooser.unit_size(4) == 1
    Machine({1: 1.0, 2: 3.0}).run(chooser, 3)  # warm-up, one unit each: 2 dropped, 1 chosen
    assert chooser.choices and chooser.unit_size(256) == 256
    assert th.fixed(2).unit_size(256) == 256


def test_eval_and_score_give_the_same_result_with_a_chooser() -> None:
    """The shorter windows of a trial carry the state and the losses are summed exactly: the result is the
    one without a chooser, to the bit."""
    from charrnn.inference.evaluate import evaluate
    from charrnn.inference.score import Scorer, score_texts
    from charrnn.model.network import CharRNN

    torch.manual_seed(0)
    text = "the time traveller smiled and we sat about the fire\n" * 30
    vocab = Vocab.build(text)
    model = CharRNN(ModelConfig(vocab_size=vocab.size, hidden=8))
    ids = vocab.encode(text)
    sizes: list[int] = []
    chooser = th.ThreadChooser((1, 2), set_threads=lambda n: None, min_unit_seconds=0.0)
    chooser.observe = lambda seconds, chars: sizes.append(chars)  # type: ignore[method-assign]
    plain = evaluate(model, ids, streams=4, num_steps=64)
    timed = evaluate(model, ids, streams=4, num_steps=64, threads=chooser)
    assert timed == plain
    length = -(-(len(ids) - 1) // 4)  # steps of each of the 4 streams
    assert max(sizes) == 4 * 8 and len(sizes) == -(-length // 8)  # (still trying) windows of an eighth of 64
    records = text.splitlines()[:7] + ["a much longer record " * 20]
    scorer = Scorer(model, vocab, "\n")
    sizes.clear()
    timed_scores = score_texts(scorer, records, num_steps=64, threads=chooser)
    assert timed_scores == score_texts(scorer, records, num_steps=64)
    assert max(sizes) <= 8 * 8  # rows x an eighth of 64 columns


@pytest.mark.parametrize("command", [["eval", "perplexity"], ["eval", "score", "--json"],
                                     ["eval", "perplexity", "--dynamic", "--dynamic-segment", "7"]],
                         ids=lambda c: " ".join(c))
@pytest.mark.skipif(th.usable_cores() < 2, reason="needs 2 cores for --threads 2")
def test_every_figure_is_the_same_whatever_the_threads(tmp_path: Path, command: list[str]) -> None:
    """One model, one text, one number: --threads 1, 2 and the chooser (whose trial cuts the windows
    finer) give the same bits, because every loss is summed exactly (charrnn.inference.exactsum)."""
    lines = 30 if "--dynamic" in command else 300  # dynamic evaluation steps every 7 characters: slow
    text = "".join(f"the time traveller smiled {i * 7919 % 1000} times, and we sat about the fire\n"
                   for i in range(lines))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    torch.manual_seed(3)
    vocab = Vocab.build(text)
    from charrnn.model.network import CharRNN

    model = CharRNN(ModelConfig(vocab_size=vocab.size, hidden=32))
    train(vocab.encode(text), vocab.encode(text[:500]), vocab, model.config,
          TrainConfig(batch_size=4, num_steps=16, max_steps=4, val_every=4, precision="fp32"), tmp_path / "m.pt",
          threads=th.fixed())
    outputs = {}
    for threads in (["--threads", "1"], ["--threads", "2"], []):
        torch.set_num_threads(2)  # the chooser's candidates are then 1 and 2
        r = run(*command, "-m", str(tmp_path / "m.pt"), str(corpus), *(["--json"] if "--json" not in command else []),
                *threads)
        assert r.exit_code == 0, r.stderr
        # Everything but the thread count reported: the figures, as the text that carries them.
        lines = [json.loads(line) for line in r.stdout.splitlines()]
        outputs[" ".join(threads) or "chooser"] = [{k: v for k, v in d.items() if k != "threads"} for d in lines]
    assert outputs["--threads 1"] == outputs["--threads 2"] == outputs["chooser"]
