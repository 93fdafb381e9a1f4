"""Data-parallel training across processes: torch.distributed with DistributedDataParallel.

Processes are started by `torchrun` (or by `charrnn train --nproc N`, which runs the same launcher
in-process), which sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and
MASTER_PORT in each process's environment. This module reads them, picks the backend (NCCL with
one GPU per process when CUDA is there, gloo on CPUs), sets the CPU threads of each process, and
wraps the few collectives the training loop needs beyond DDP's gradient all-reduce: sums (sharded
validation), the per-step agreement on stopping, and gathering per-process state for rank 0's
checkpoint. Every collective failure (a process died, a connection broke) becomes PeerLost.

A run started by `launch` (`--nproc N`) tells each failure once: the processes hand their errors to
the launcher (report_to_launcher) instead of printing them, and it prints one line for the cause
(failure_code), whichever process met it first.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist

from charrnn.errors import CharrnnError, Interrupted, PeerLost, TrainingError, UsageError

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
# How long a collective waits for a process that neither answers nor dies (a dead process closes its
# sockets and is noticed at once); torch's default is 30 minutes.
TIMEOUT = datetime.timedelta(minutes=10)
# Set by `launch` for the processes it starts: the folder where each leaves its error (report_to_launcher).
REPORTS_ENV = "CHARRNN_LAUNCH_REPORTS"


@dataclass(frozen=True)
class Group:
    """This process's place in the run: global rank of world_size, local rank on this node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs and progress, and decides the time budget."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


SINGLE = Group()


def from_env(env: Mapping[str, str] | None = None) -> Group:
    """The Group described by torchrun's environment variables; SINGLE when they are absent."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return SINGLE
    values = {}
    for name in ENV_VARS:
        raw = env.get(name, "0" if name in ("RANK", "LOCAL_RANK") else env["WORLD_SIZE"])
        try:
            values[name] = int(raw)
        except ValueError:
            raise UsageError(f"environment variable {name}={raw!r} is not an integer (set by torchrun)") from None
    group = Group(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"], values["LOCAL_WORLD_SIZE"])
    if group.world_size < 1 or not 0 <= group.rank < group.world_size \
            or not 0 <= group.local_rank < group.local_world_size <= group.world_size:
        raise UsageError(f"inconsistent torchrun environment: RANK={group.rank} WORLD_SIZE={group.world_size} "
                         f"LOCAL_RANK={group.local_rank} LOCAL_WORLD_SIZE={group.local_world_size}")
    return group


def cpu_threads(group: Group, env: Mapping[str, str] | None = None, cores: int | None = None) -> int:
    """Intra-op threads for one process: OMP_NUM_THREADS when set (torchrun sets it to 1 for
    several processes per node unless the user did), else this process's share of the cores it
    may run on, cores // LOCAL_WORLD_SIZE (at least 1)."""
    env = os.environ if env is None else env
    raw = env.get("OMP_NUM_THREADS", "")
    if raw.strip().isdigit() and int(raw) >= 1:
        return int(raw)
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // group.local_world_size)


def process_device(group: Group, device: torch.device) -> torch.device:
    """The device of this process: with CUDA, the GPU numbered LOCAL_RANK (one GPU per process)."""
    if device.type != "cuda" or not group.active:
        return device
    if device.index not in (None, group.local_rank) and group.local_world_size > 1:
        raise UsageError(f"--device {device} with {group.local_world_size} processes on this node: each process "
                         "uses the GPU numbered by its LOCAL_RANK; give --device cuda")
    index = group.local_rank if device.index is None or group.local_world_size > 1 else device.index
    return torch.device("cuda", index)


def backend_for(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPUs."""
    return "nccl" if device.type == "cuda" else "gloo"


@contextlib.contextmanager
def session(group: Group, device: torch.device) -> Iterator[None]:
    """The process group for the duration of a run (nothing to do for a single process)."""
    if not group.active:
        yield
        return
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {device.type} cannot train with several processes (use cpu or cuda)")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        # MASTER_ADDR/MASTER_PORT come from torchrun (env:// rendezvous).
        dist.init_process_group(backend_for(device), rank=group.rank, world_size=group.world_size,
                                timeout=TIMEOUT)
    except (RuntimeError, ValueError) as e:
        raise PeerLost(f"could not join the other processes: {_first_line(e)}") from None
    try:
        yield
        _meet_at_the_end(group)
    except Interrupted:  # a stop all processes agreed on: they all end here too
        with contextlib.suppress(PeerLost):
            _meet_at_the_end(group)
        raise
    finally:
        dist.destroy_process_group()


def _meet_at_the_end(group: Group) -> None:
    """Before the group goes, every process past its last collective (the save's barrier is not the
    last one everywhere: an interrupted run sums its loss after it, a run with nothing to do saves
    nothing), so that none closes its connections while another still has an operation in flight
    with it."""
    barrier(group)


def end_process(code: int) -> NoReturn:
    """Leave a process of a distributed run at once with `code`, its output flushed, without the
    interpreter's finalisation.

    destroy_process_group does not end gloo's process group once DistributedDataParallel has been
    built on it: DDP leaves references to it that neither deleting the model nor gc releases
    (measured with torch 2.13: 10 of them), so its three threads (gloo_tcp_loop, 2 pt_gloo_runloop)
    still run when the interpreter finalises, and the group is torn down under them in whatever
    order finalisation and exit take: the likely source of the abort seen at the end of a run on a
    busy machine ("terminate called without an active exception", SIGABRT; docs/parallel.md).
    Everything a run writes is closed by then (checkpoints and log written atomically, lock released)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a reader that went away: nothing more to say
            stream.flush()
    os._exit(code)


def _first_line(e: BaseException) -> str:
    """The gist of a torch/gloo error: its first line, without the C++ source location and advice."""
    lines = [line for line in str(e).splitlines() if line.strip()]
    text = re.sub(r"^\[[^\]]*\.(cc|cpp|h|hpp):\d+\]\s*", "", lines[0]) if lines else type(e).__name__
    return text.split(". This is typically")[0].rstrip(".")


@contextlib.contextmanager
def collective(group: Group) -> Iterator[None]:
    """Turn a failing collective (DDP's gradient all-reduce included) into PeerLost."""
    try:
        yield
    except RuntimeError as e:
        if not group.active or not _is_comm_error(e):
            raise
        raise PeerLost(f"process {group.rank} of {group.world_size} lost contact with the others "
                       f"({_first_line(e)}): another process stopped; this one stops too") from None


def _is_comm_error(e: RuntimeError) -> bool:
    if isinstance(e, dist.DistError):
        return True
    text = str(e).lower()
    return any(k in text for k in ("gloo", "nccl", "connection", "peer", "socket", "timed out", "broken pipe"))


def all_sum(group: Group, values: Sequence[float], device: torch.device) -> list[float]:
    """Element-wise sum of `values` over all processes (float64: counts stay exact up to 2**53)."""
    if not group.active:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    with collective(group):
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def agree(group: Group, stop_code: int | None, main_values: Sequence[float],
          device: torch.device) -> tuple[int | None, list[float]]:
    """One decision for all processes before each step: the exit code of a signal any process got
    (SIGTERM's 143 wins over SIGINT's 130), and rank 0's `main_values` (its clock's fractions of
    the run: the time budget and the learning-rate schedule must not differ by a few milliseconds
    between processes, or their weights would drift apart). One small all-reduce (max)."""
    if not group.active:
        return stop_code, list(main_values)
    others = float("-inf")  # every process but rank 0 sends -inf, so the max is rank 0's value
    t = torch.tensor([float(stop_code or 0), *(v if group.is_main else others for v in main_values)],
                     dtype=torch.float64, device=device)
    with collective(group):
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    code, *values = t.tolist()
    return (int(code) or None), values


def gather_to_main(group: Group, obj: Any) -> list[Any] | None:
    """Every process's `obj` (tensors and plain data), in rank order, on rank 0; None elsewhere."""
    if not group.active:
        return [obj]
    out: list[Any] | None = [None] * group.world_size if group.is_main else None
    with collective(group):
        dist.gather_object(obj, out, dst=0)
    return out


def barrier(group: Group) -> None:
    """Wait for every process (after rank 0's checkpoint write, so that no process exits before the
    file is complete: torchrun stops the rest of a run as soon as one process has exited)."""
    if group.active:
        with collective(group):
            dist.barrier()


def report_to_launcher(group: Group, error: CharrnnError, env: Mapping[str, str] | None = None) -> bool:
    """In a process started by `launch`, hand `error` to the launcher instead of printing it, and
    say so (True); elsewhere (one process, or under torchrun) do nothing and return False.

    Every process of a run meets the same errors, and a process that dies takes the others down
    with "lost contact" errors of their own: printed by each process, one failure would be told
    several times, in a racing order. The launcher reads every report once the processes have
    ended and prints one line: the cause (see `failure_code`)."""
    folder = (os.environ if env is None else env).get(REPORTS_ENV)
    if not group.active or not folder:
        return False
    report = {"rank": group.rank, "code": error.exit_code, "message": str(error),
              "peer_lost": isinstance(error, PeerLost), "time": time.time()}
    path = Path(folder) / f"rank{group.rank}.json"
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(json.dumps(report))
        os.replace(tmp, path)  # the launcher never reads half a report
    except OSError:  # the launcher is gone (its folder with it): say it here
        return False
    return True


def read_reports(folder: Path) -> list[dict[str, Any]]:
    """The reports that processes left in `folder` (malformed ones are skipped)."""
    reports = []
    for path in sorted(folder.glob("rank*.json")):
        try:
            report = json.loads(path.read_text())
            reports.append({"rank": int(report["rank"]), "code": int(report["code"]),
                            "message": str(report["message"]), "peer_lost": bool(report["peer_lost"]),
                            "time": float(report["time"])})
        except (OSError, ValueError, TypeError, KeyError):
            continue
    return reports


def launch(nproc: int, argv: Sequence[str], what: str = "train") -> int:
    """Run `python -m charrnn WHAT ARGV` in `nproc` processes on this machine through PyTorch's own
    launcher, torch.distributed.run, in this process (what `torchrun --standalone --nproc-per-node
    N` does), wait for them, and return the exit code for the whole run.

    Each process gets OMP_NUM_THREADS = its share of the cores, unless the user set it. A signal to
    this process reaches the workers through the launcher (it forwards SIGINT/SIGTERM and waits for
    them to save): the code is then 130/143. A process that dies takes the others down (torchrun
    stops them); that is an error naming it.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if nproc < 1:
        raise UsageError(f"--nproc must be >= 1, got {nproc}")
    os.environ.setdefault("OMP_NUM_THREADS", str(cpu_threads(Group(0, nproc, 0, nproc), env={})))
    reports = tempfile.TemporaryDirectory(prefix="charrnn-reports-")
    # The launcher logs every start and stop at WARNING; the workers say what matters themselves.
    for name in list(logging.root.manager.loggerDict):  # each module's logger has its own level
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    args = parse_args(["--standalone", "--nproc-per-node", str(nproc), "--module", "charrnn", what, *argv])
    saved = os.environ.get(REPORTS_ENV)
    os.environ[REPORTS_ENV] = reports.name  # the processes inherit it
    try:
        run(args)
    except SignalException as e:
        return 143 if e.sigval == signal.SIGTERM else 130  # rank 0 has said where it saved
    except ChildFailedError as e:
        failures = sorted(e.failures.items(), key=lambda item: item[1].timestamp)  # the first to fail first
        return failure_code([(rank, f.exitcode) for rank, f in failures], nproc, read_reports(Path(reports.name)))
    finally:
        if saved is None:
            os.environ.pop(REPORTS_ENV, None)
        else:
            os.environ[REPORTS_ENV] = saved
        reports.cleanup()
    return 0


def failure_code(exit_codes: Sequence[tuple[int, int]], nproc: int,
                 reports: Sequence[Mapping[str, Any]] = ()) -> int:
    """The exit code of a run whose failed processes ended with `exit_codes` ((rank, code) in the
    order they failed; a negative code is a signal) and left `reports` (report_to_launcher): the
    code of rank 0 when it printed its own error, else one error raised for the cause, the first of:
    a process killed by a signal (SIGTERM aside: the launcher stops the others with it), an error a
    process reported, rank 0's own line, a process stopped by SIGTERM, a lost connection, a bare code."""

    def died(rank: int, code: int) -> PeerLost:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return PeerLost(f"process {rank} of {nproc} died ({name}); the others stopped, and the last "
                        "saved checkpoint is intact")

    codes = dict(exit_codes)
    signalled = [(rank, code) for rank, code in exit_codes if code < 0]
    crashed = [(rank, code) for rank, code in signalled if code != -signal.SIGTERM]
    if crashed:  # it could say nothing; those that failed after it were taken down with it
        raise died(*crashed[0])
    reports = sorted(reports, key=lambda r: (r["peer_lost"], r["time"]))  # causes first, then the earliest
    if reports and not reports[0]["peer_lost"]:
        raise _reported(reports[0])
    if codes.get(0, -1) > 0 and not any(r["rank"] == 0 for r in reports):
        return codes[0]  # rank 0 has said what went wrong itself (or that it saved and stopped)
    if signalled:
        raise died(*signalled[0])
    if reports:
        raise _reported(reports[0])
    rank, code = exit_codes[0]
    raise TrainingError(f"process {rank} of {nproc} failed (exit code {code}); the run stopped")


def _reported(report: Mapping[str, Any]) -> CharrnnError:
    """A process's reported error, to be raised (and printed) once by the launcher, with its exit code."""
    error = PeerLost(report["message"]) if report["peer_lost"] else CharrnnError(report["message"])
    error.exit_code = report["code"]
    return error
