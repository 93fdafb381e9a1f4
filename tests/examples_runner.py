"""How tests/test_examples.py runs the documentation's shell examples: `charrnn` shortened, and fast.

Run as a script, it is either side of a fork server:

    python examples_runner.py serve SOCKET        import torch and charrnn once, then fork per command
    python examples_runner.py client ARGS...      what the examples' `charrnn` runs (a bash function)

A command of an example is `charrnn ARGS`: the client shortens ARGS (`shorten`) and hands them,
with its working folder, environment and standard streams (the file descriptors themselves, passed
over a Unix socket), to the server, which forks a child that runs charrnn's `main()` on them and
sends back its exit code. So every command is a fresh process with the example's own streams,
folder and environment, without paying for `import torch` (seconds on a busy 2-core machine) each
time. Without CHARRNN_EXAMPLES_SOCKET the client execs `python -m charrnn` instead: the same
shortened command, the slow way.

Only the standard library is imported at module level: the client starts in milliseconds.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys

SOCKET_ENV = "CHARRNN_EXAMPLES_SOCKET"
MAX_STEPS = 30  # --max-steps N runs at most this many steps
EPOCH_CAP = 100  # a fresh run with --epochs and no --max-steps: at most this many steps (the example
# texts are a few steps an epoch at the tiny size; a catalog corpus is thousands)
# Appended to a training run that starts a model (no --resume, no --init-from): later options win in
# click, so these replace an example's size; small enough that a step takes milliseconds.
TINY = ["--hidden", "16", "--embed-dim", "8", "-b", "8", "-t", "16", "--val-every", "50",
        "--val-max-chars", "2000"]


def shorten(argv: list[str]) -> list[str]:
    """`charrnn train` arguments rewritten to run for a few steps at a tiny size; others unchanged.

    --time-budget S -> --max-steps 2 (a clock is no rule for a test); --max-steps N -> at most
    MAX_STEPS; --epochs N stays (so a resumed run stops where the example's would, and an example
    that resumes without raising the rule that stopped it trains nothing, which the test catches),
    with --max-steps EPOCH_CAP added to a fresh run; no stopping rule and no --resume ->
    --max-steps 2 (a resumed run keeps its checkpoint's rule). A run that starts a model gets TINY
    appended (a resumed or fine-tuned one has its architecture).
    """
    if not argv or argv[0] != "train":
        return list(argv)
    out: list[str] = []
    rules: set[str] = set()
    i = 0
    while i < len(argv):
        name, eq, value = argv[i].partition("=") if argv[i].startswith("--") else (argv[i], "", "")
        if name in ("--time-budget", "--max-steps"):
            if not eq:
                value = argv[i + 1] if i + 1 < len(argv) else "2"
            i += 1 if eq else 2
            out += ["--max-steps", "2" if name == "--time-budget" else str(min(int(value), MAX_STEPS))]
            rules.add("--max-steps")
            continue
        if name == "--epochs":
            rules.add(name)
        out.append(argv[i])
        i += 1
    resumed, started = "--resume" in out, not ({"--resume", "--init-from"} & set(out))
    if not rules and not resumed:
        out += ["--max-steps", "2"]
    elif rules == {"--epochs"} and not resumed:
        out += ["--max-steps", str(EPOCH_CAP)]
    if started:
        out += TINY
    return out


def client(argv: list[str]) -> int:
    argv = shorten(argv)
    path = os.environ.get(SOCKET_ENV)
    if not path:
        os.execv(sys.executable, [sys.executable, "-m", "charrnn", *argv])
    fds = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:  # a closed stream (`<&-`) stays closed in the child
            fds.append(-1)
    request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ),
                          "open": [fd >= 0 for fd in fds]}).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        socket.send_fds(s, [struct.pack("!I", len(request)) + request], [fd for fd in fds if fd >= 0])
        reply = b""
        while chunk := s.recv(64):
            reply += chunk
    if not reply:
        print("examples_runner: the command's process ended without an exit code", file=sys.stderr)
        return 1
    return int(reply)


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    while len(data) < 4 or len(data) < 4 + struct.unpack("!I", data[:4])[0]:
        chunk = conn.recv(1 << 16)
        if not chunk:
            raise EOFError("short request")
        data += chunk
    return json.loads(data[4:]), fds


def _child(conn: socket.socket, request: dict, fds: list[int]) -> None:
    """In the forked child: become the example's process, run charrnn, report the exit code."""
    import atexit
    import signal
    import traceback

    received = iter(fds)
    for target, is_open in enumerate(request["open"]):
        if is_open:
            fd = next(received)
            os.dup2(fd, target)
            os.close(fd)
        else:
            os.close(target)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the server ignores it; charrnn's launcher waits
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    encoding = os.environ.get("PYTHONIOENCODING")
    if encoding:
        name, _, errors = encoding.partition(":")
        for stream in (sys.stdout, sys.stderr):
            stream.reconfigure(encoding=name or None, errors=errors or None)
    sys.argv = ["charrnn", *request["argv"]]
    code: int = 0
    try:
        from charrnn.cli import main

        main()
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    try:
        conn.sendall(str(code).encode())
    finally:
        os._exit(code)


def serve(path: str) -> None:
    import signal

    # What every command needs, imported once; nothing is computed, so no thread pool exists to fork.
    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401  (the optimizers import it on first use: seconds)

    import charrnn.cli  # noqa: F401
    import charrnn.display.console  # noqa: F401
    import charrnn.display.plot  # noqa: F401
    import charrnn.inference.evaluate  # noqa: F401
    import charrnn.inference.generate  # noqa: F401
    import charrnn.inference.score  # noqa: F401
    import charrnn.inference.surprise  # noqa: F401
    import charrnn.model.checkpoint  # noqa: F401
    import charrnn.training.train  # noqa: F401

    try:  # the plot extra, where it is installed (a missing one is charrnn's to report, in the child)
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.figure  # noqa: F401
        import plotext  # noqa: F401
    except ImportError:
        pass

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(16)
        print("ready", flush=True)
        while True:
            conn, _ = listener.accept()
            try:
                request, fds = _receive(conn)
            except (OSError, EOFError, ValueError):
                conn.close()
                continue
            sys.stdout.flush()
            sys.stderr.flush()
            if os.fork() == 0:
                listener.close()
                _child(conn, request, fds)
            for fd in fds:
                os.close(fd)
            conn.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2])
    elif sys.argv[1:2] == ["client"]:
        sys.exit(client(sys.argv[2:]))
    else:
        sys.exit("usage: examples_runner.py serve SOCKET | client ARGS...")
