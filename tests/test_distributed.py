"""Data-parallel training: the torchrun environment, threads, failures, and end to end with two gloo
processes on CPU (`charrnn train --nproc 2`): the same weights as one process, signals, a dead process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from charrnn.cli import cli
from charrnn.config import TrainConfig
from charrnn.data.vocab import Vocab
from charrnn.errors import CharrnnError, CheckpointError, PeerLost, TrainingError, UsageError
from charrnn.model.checkpoint import saved_processes
from charrnn.model.network import ModelConfig
from charrnn.training import distributed as dd
from charrnn.training.train import train

# fp32 pinned: runs are compared to 1e-5, and `--precision auto` would pick bf16 on a CPU that has it.
TINY = ["--hidden", "16", "--layers", "1", "--embed-dim", "8", "-b", "8", "-t", "16", "--no-cache",
        "--precision", "fp32", "-q"]


def test_from_env_reads_torchrun_variables() -> None:
    assert dd.from_env({}) == dd.SINGLE and not dd.SINGLE.active and dd.SINGLE.is_main
    g = dd.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (g.rank, g.world_size, g.local_rank, g.local_world_size, g.active, g.is_main) == (3, 4, 1, 2, True, False)
    assert dd.from_env({"WORLD_SIZE": "2"}) == dd.Group(0, 2, 0, 2)  # older launchers: no LOCAL_*


@pytest.mark.parametrize("env", [{"WORLD_SIZE": "two"}, {"WORLD_SIZE": "2", "RANK": "2"},
                                 {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "2"},
                                 {"WORLD_SIZE": "0"}])
def test_from_env_refuses_nonsense(env: dict[str, str]) -> None:
    with pytest.raises(UsageError):
        dd.from_env(env)


def test_threads_are_the_process_share_of_the_cores_unless_omp_says() -> None:
    node = dd.Group(0, 4, 0, 2)
    assert dd.cpu_threads(node, env={}, cores=16) == 8
    assert dd.cpu_threads(dd.Group(0, 3, 0, 3), env={}, cores=2) == 1
    assert dd.cpu_threads(node, env={"OMP_NUM_THREADS": "3"}, cores=16) == 3
    assert dd.cpu_threads(node, env={"OMP_NUM_THREADS": "0"}, cores=16) == 8


def test_backend_and_device_per_process() -> None:
    assert dd.backend_for(torch.device("cpu")) == "gloo"
    assert dd.backend_for(torch.device("cuda", 1)) == "nccl"
    cpu = torch.device("cpu")
    assert dd.process_device(dd.Group(1, 2, 1, 2), cpu) == cpu
    assert dd.process_device(dd.Group(1, 2, 1, 2), torch.device("cuda")) == torch.device("cuda", 1)
    assert dd.process_device(dd.SINGLE, torch.device("cuda", 2)) == torch.device("cuda", 2)
    with pytest.raises(UsageError, match="LOCAL_RANK"):
        dd.process_device(dd.Group(1, 2, 1, 2), torch.device("cuda", 0))


def test_one_process_needs_no_collective() -> None:
    cpu = torch.device("cpu")
    assert dd.all_sum(dd.SINGLE, [1.5, 2.0], cpu) == [1.5, 2.0]
    assert dd.agree(dd.SINGLE, 143, [0.25, 0.5], cpu) == (143, [0.25, 0.5])
    assert dd.gather_to_main(dd.SINGLE, "x") == ["x"]
    with dd.session(dd.SINGLE, cpu):
        dd.barrier(dd.SINGLE)


def test_failure_code_names_the_first_process_to_fail() -> None:
    with pytest.raises(PeerLost, match="process 1 of 2 died \\(SIGKILL\\).*checkpoint is intact"):
        dd.failure_code([(1, -9), (0, -15)], 2)
    assert dd.failure_code([(1, 143), (0, 143)], 2) == 143  # stopped by a signal: rank 0 reported it
    assert dd.failure_code([(0, 2), (1, 2)], 2) == 2
    with pytest.raises(TrainingError, match="process 2 of 3 failed \\(exit code 1\\)"):
        dd.failure_code([(2, 1)], 3)


def report(rank: int, code: int, message: str, peer_lost: bool = False, at: float = 0.0) -> dict:
    return {"rank": rank, "code": code, "message": message, "peer_lost": peer_lost, "time": at}


def test_failure_code_tells_the_cause_once() -> None:
    """The processes' reports decide the one error line: a death by a signal first, then an error a
    process met (the earliest), before the "lost contact" of those that outlived another."""
    lost = report(0, 1, "process 0 of 2 lost contact with the others", peer_lost=True, at=1.0)
    with pytest.raises(PeerLost, match="^process 1 of 2 died \\(SIGKILL\\)"):
        dd.failure_code([(0, 1), (1, -9)], 2, [lost])  # rank 0 told the launcher first: still the death
    # Rank 1 met a usage error first and the launcher stopped rank 0 (SIGTERM) before it could say it.
    with pytest.raises(CharrnnError, match="^--min-freq 9 leaves no character$") as info:
        dd.failure_code([(1, 2), (0, -15)], 2, [report(1, 2, "--min-freq 9 leaves no character", at=2.0)])
    assert info.value.exit_code == 2
    with pytest.raises(CharrnnError, match="^first$") as info:
        dd.failure_code([(0, 1), (1, 1)], 2, [lost, report(1, 1, "second", at=3.0), report(0, 1, "first", at=2.0)])
    assert info.value.exit_code == 1
    with pytest.raises(PeerLost, match="^process 1 of 2 died \\(SIGTERM\\)"):
        dd.failure_code([(1, -15), (0, 1)], 2, [lost])  # stopped from outside before it could say anything
    with pytest.raises(PeerLost, match="lost contact"):
        dd.failure_code([(0, 1), (1, 1)], 2, [lost])
    assert dd.failure_code([(0, 143), (1, 1)], 2, [report(1, 1, "x", peer_lost=True)]) == 143  # rank 0 said it


def test_reports_reach_the_launcher_only_from_its_processes(tmp_path: Path) -> None:
    group, error = dd.Group(1, 2, 1, 2), UsageError("bad option")
    assert not dd.report_to_launcher(group, error, env={})  # under torchrun: the process prints
    assert not dd.report_to_launcher(dd.SINGLE, error, env={dd.REPORTS_ENV: str(tmp_path)})
    assert not dd.report_to_launcher(group, error, env={dd.REPORTS_ENV: str(tmp_path / "gone")})  # no launcher
    assert dd.report_to_launcher(group, error, env={dd.REPORTS_ENV: str(tmp_path)})
    assert dd.report_to_launcher(dd.Group(0, 2, 0, 2), PeerLost("gone"), env={dd.REPORTS_ENV: str(tmp_path)})
    (tmp_path / "rank7.json").write_text("{not json")  # a damaged report is skipped
    got = sorted(dd.read_reports(tmp_path), key=lambda r: r["rank"])
    assert [(r["rank"], r["code"], r["message"], r["peer_lost"]) for r in got] == [
        (0, 1, "gone", True), (1, 2, "bad option", False)]


def test_collective_errors_become_peer_lost_with_the_gist() -> None:
    group = dd.Group(0, 2, 0, 2)
    gloo = RuntimeError("[/x/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:1: Connection reset by peer. "
                        "This is typically caused by a remote worker hanging")
    with pytest.raises(PeerLost) as info, dd.collective(group):
        raise gloo
    assert "(Read error [127.0.0.1]:1: Connection reset by peer)" in str(info.value)
    with pytest.raises(RuntimeError, match="shape mismatch"), dd.collective(group):
        raise RuntimeError("shape mismatch")  # not a communication error: left as it is


def test_batch_must_divide_before_any_collective(tmp_path: Path) -> None:
    vocab = Vocab.build("abcd" * 100)
    ids = vocab.encode("abcd" * 100)
    with pytest.raises(UsageError, match="--batch-size 3 does not divide among 2 processes"):
        train(ids, ids[:0], vocab, ModelConfig(vocab_size=vocab.size, hidden=8, layers=1), TrainConfig(
            batch_size=3, num_steps=4, max_steps=1), tmp_path / "m.pt", group=dd.Group(0, 2, 0, 2))


def test_saved_processes_is_checked() -> None:
    rng = {"torch": torch.get_rng_state()}
    assert saved_processes({"rng": rng}) == (1, [rng])  # a checkpoint from before the field
    assert saved_processes({"processes": 2, "rng": rng, "rng_ranks": [rng, rng]})[0] == 2
    for bad in ({"processes": 0, "rng": rng}, {"processes": 2, "rng": rng, "rng_ranks": [rng]},
                {"processes": "2", "rng": rng}, {"processes": 2, "rng": rng, "rng_ranks": [rng, {"torch": 1}]}):
        with pytest.raises(CheckpointError):
            saved_processes(bad)


def test_nproc_usage_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world " * 100)
    runner = CliRunner()
    r = runner.invoke(cli, ["train", str(corpus), "-o", str(tmp_path / "m.pt"), "--nproc", "0"])
    assert r.exit_code == 2 and "--nproc must be >= 1" in r.output
    r = runner.invoke(cli, ["train", "-", "-o", str(tmp_path / "m.pt"), "--nproc", "2"], input="hello " * 100)
    assert r.exit_code == 2 and "standard input" in r.output
    monkeypatch.setenv("WORLD_SIZE", "2")
    r = runner.invoke(cli, ["train", str(corpus), "-o", str(tmp_path / "m.pt"), "--nproc", "2"])
    assert r.exit_code == 2 and "leave it out under torchrun" in r.output


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a named pipe")
def test_nproc_usage_is_checked_once_before_any_process_starts(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Each usage error of a `--nproc 2` run: one error line and exit 2, every time, and no process
    started (the launcher is replaced by one that fails the test)."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world " * 100)
    os.mkfifo(tmp_path / "fifo")

    def no_launch(*args, **kwargs):
        raise AssertionError("processes were started for a usage error")

    monkeypatch.setattr(dd, "launch", no_launch)
    out = str(tmp_path / "m.pt")
    cases = {"does not exist": [str(tmp_path / "missing.txt"), "-o", out],
             "folder 'nodir' does not exist": [str(corpus), "-o", "nodir/m.pt"],
             "give one": [str(corpus), "-o", out, "--resume", out, "--init-from", out],
             "--keep-vocab only applies": [str(corpus), "-o", out, "--keep-vocab"],
             "cannot share the pipe": [str(tmp_path / "fifo"), "-o", out],
             "is an input": [str(corpus), "-o", str(corpus)]}
    for _ in range(5):
        for needle, args in cases.items():
            r = CliRunner().invoke(cli, ["train", *args, "--nproc", "2", "-q"])
            assert r.exit_code == 2, (needle, r.output)
            assert r.stdout == "" and r.stderr.count("Error:") == 1 and needle in r.stderr, (needle, r.stderr)


# End to end: real processes, real gloo. -----------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    words = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex".split()
    path = tmp_path_factory.mktemp("ddp") / "corpus.txt"
    path.write_text(" ".join(rng.choice(words, size=4000)))
    return path


def launch(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "charrnn", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:  # never leave a run behind: the launcher takes its workers down
            proc.terminate()
            proc.communicate(timeout=60)
    return proc.returncode, out, err


def one_process(corpus: Path, out: Path, *args: str) -> dict:
    r = CliRunner().invoke(cli, ["train", str(corpus), "-o", str(out), *TINY, *args])
    assert r.exit_code == 0, r.output
    return torch.load(out, weights_only=True)


def assert_same_run(a: dict, b: dict) -> None:
    assert a["step"] == b["step"] and a["chars_seen"] == b["chars_seen"]
    for name, w in a["weights"].items():
        torch.testing.assert_close(b["weights"][name], w, atol=1e-5, rtol=0)
    assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-6)
    if a["hidden"] is not None:  # the whole minibatch's carried state, rows of every process in order
        for x, y in zip(a["hidden"], b["hidden"], strict=True):
            torch.testing.assert_close(y, x, atol=1e-5, rtol=0)


def test_two_processes_random_equal_one(corpus: Path, tmp_path: Path) -> None:
    common = [*TINY, "--partition", "random", "--warmup", "3", "--max-steps", "20", "--val-every", "7"]
    single = one_process(corpus, tmp_path / "one.pt", *common)
    code, _, err = finish(launch(str(corpus), "-o", str(tmp_path / "two.pt"), *common, "--nproc", "2"))
    assert code == 0, err
    assert_same_run(single, torch.load(tmp_path / "two.pt", weights_only=True))


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 90) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "no checkpoint appeared"
        time.sleep(0.1)


def test_sequential_across_sigterm_and_resume_equals_one_process(corpus: Path, tmp_path: Path) -> None:
    """SIGTERM to the launcher stops both processes at one step (exit 143, one report, a resumable
    checkpoint); resumed in 2 processes to K >= 20 steps, the run ends with the weights, carried
    state and (sharded) validation loss of K steps in one process. Then one process goes on from
    the 2-process checkpoint at the next epoch, and says so."""
    common = [*TINY, "--schedule", "constant", "--val-every", "1000", "--save-every", "5"]
    out = tmp_path / "two.pt"
    proc = launch(str(corpus), "-o", str(out), *common, "--max-steps", "1000000", "--nproc", "2")
    wait_for(out, proc)
    proc.send_signal(signal.SIGTERM)
    code, stdout, err = finish(proc)
    assert code == 143, err
    assert stdout.count("trained ") == 1 and "interrupted" in stdout  # the summary from rank 0 only
    stopped = torch.load(out, weights_only=True)  # complete and resumable
    assert err.count("Error:") == 1 and f"terminated at step {stopped['step']};" in err
    assert stopped["processes"] == 2 and len(stopped["rng_ranks"]) == 2 and stopped["step"] >= 5

    steps = str(max(20, stopped["step"] + 5))
    code, stdout, err = finish(launch(str(corpus), "-o", str(out), "--resume", str(out), "--max-steps", steps,
                                      "--val-every", "10", "--nproc", "2", "--no-cache"))
    assert code == 0, err
    assert stdout.count(f"trained {steps} steps") == 1  # the summary from rank 0 only
    assert "written by" not in err  # same number of processes: an exact continuation
    two = torch.load(out, weights_only=True)
    one = one_process(corpus, tmp_path / "one.pt", *common, "--val-every", "10", "--max-steps", steps)
    assert_same_run(one, two)

    r = CliRunner().invoke(cli, ["train", str(corpus), "-o", str(out), "--resume", str(out), "--max-steps",
                                 str(two["step"] + 2), "--no-cache"])
    assert r.exit_code == 0, r.output
    assert f"written by 2 process(es) and this run has 1: continuing at the start of epoch {two['epoch'] + 1}" \
        in r.output
    assert torch.load(out, weights_only=True)["epoch"] == two["epoch"] + 1


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the worker through /proc")
def test_a_dead_process_stops_the_others_and_keeps_the_last_checkpoint(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    proc = launch(str(corpus), "-o", str(out), *TINY[:-1], "--max-steps", "1000000", "--save-every", "5",
                  "--val-every", "1000", "--nproc", "2")
    wait_for(out, proc)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    rank1 = [pid for pid in children if b"\0RANK=1\0" in b"\0" + Path(f"/proc/{pid}/environ").read_bytes()]
    assert len(rank1) == 1
    os.kill(int(rank1[0]), signal.SIGKILL)
    code, stdout, err = finish(proc)
    assert code == 1 and stdout == ""
    # One line: the cause. Rank 0's "lost contact" is a consequence, told to the launcher, not printed.
    assert [line for line in err.splitlines() if "Error" in line or "lost contact" in line] == [
        "Error: process 1 of 2 died (SIGKILL); the others stopped, and the last saved checkpoint is intact"], err
    assert "Traceback" not in err
    assert torch.load(out, weights_only=True)["step"] % 5 == 0  # a periodic save, complete
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no half-written file left


def test_a_usage_error_the_processes_meet_is_told_once(corpus: Path, tmp_path: Path) -> None:
    """An error found only once the processes read the corpus (here --min-freq leaves no character):
    every process meets it; whichever is first, one line and exit 2, every time (3 tries: processes
    are slow to start; the order is the launcher's to sort out, see test_failure_code_tells_the_cause_once)."""
    for _ in range(3):
        code, stdout, err = finish(launch(str(corpus), "-o", str(tmp_path / "m.pt"), *TINY, "--min-freq", "100000",
                                          "--max-steps", "2", "--nproc", "2"))
        assert (code, stdout) == (2, "") and err.count("Error:") == 1 and "--min-freq 100000" in err, err


def test_two_processes_train_in_bf16_when_auto_picks_it(corpus: Path, tmp_path: Path) -> None:
    """The bf16 path end to end in two processes, on any CPU (emulated where it is not native): auto
    follows CHARRNN_NATIVE_BF16 in every process, and the checkpoint evaluates."""
    out = tmp_path / "bf16.pt"
    args = [a for a in TINY if a not in ("--precision", "fp32")]
    code, _, err = finish(launch(str(corpus), "-o", str(out), *args, "--precision", "auto", "--max-steps", "10",
                                 "--lr", "0.05", "--val-every", "5", "--nproc", "2",
                                 env={**os.environ, "CHARRNN_NATIVE_BF16": "1"}))
    assert code == 0, err
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["train_config"]["precision"] == "bf16" and ckpt["processes"] == 2
    r = CliRunner().invoke(cli, ["eval", "perplexity", "-m", str(out), str(corpus), "--json"])
    assert r.exit_code == 0, r.output
    assert 0 < json.loads(r.stdout)["nats_per_char"] < np.log(len(ckpt["vocab"]["chars"]))


@pytest.mark.slow
def test_thirty_runs_beside_a_busy_core_all_end_well() -> None:
    """bench/ddp_stress.py: 30 tiny `--nproc 2` runs beside a CPU-bound job, every one exit 0 with
    nothing on stderr (a teardown race showed as an abort in about 1 run of 10). Minutes: `-m slow`."""
    script = Path(__file__).resolve().parents[1] / "bench" / "ddp_stress.py"
    done = subprocess.run([sys.executable, str(script), "--runs", "30", "--json"], capture_output=True, text=True,
                          timeout=3600)
    summary = json.loads(done.stdout)
    assert done.returncode == 0 and summary["passed"] == 30, summary
