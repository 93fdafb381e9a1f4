"""`charrnn serve` over HTTP in a subprocess on a free loopback port, for the tests that talk to it
(test_server.py, test_serve_hostile.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from typing import Any

import httpx

CHARRNN = [sys.executable, "-m", "charrnn"]
JSON = {"Content-Type": "application/json"}


class Server:
    """`charrnn serve` in a subprocess; its stderr is read all along (a full pipe would block it)."""

    def __init__(self, *args: str, preexec_fn: Any = None) -> None:
        self.proc = subprocess.Popen([*CHARRNN, "serve", "--port", "0", "--device", "cpu", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=preexec_fn)
        self.lines: list[str] = []
        self.started = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        assert self.started.wait(120), "".join(self.lines)
        url = next(w for line in self.lines for w in line.split() if w.startswith("http://"))
        self.client = httpx.Client(base_url=url, timeout=60, headers=JSON)
        self.url = url
        self.port = int(url.rsplit(":", 1)[1])

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.lines.append(raw.decode("utf-8", "replace"))
            if raw.startswith(b"serving "):
                self.started.set()
        self.started.set()  # it ended: the waiter looks at the lines

    def stop(self, sig: int | None = signal.SIGTERM, timeout: float = 60) -> tuple[int, bytes]:
        """Signal it (unless `sig` is None) and wait for its end: (exit code, stdout)."""
        self.client.close()
        if sig is not None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)  # not communicate(): the reader thread owns stderr
        self.reader.join(10)
        assert self.proc.stdout is not None
        return code, self.proc.stdout.read()

    def access(self, needle: str, at_least: int = 1, timeout: float = 30) -> list[str]:
        """The access-log lines of `needle` ("POST /v1/next"), once there are `at_least` of them (a line is
        written after its answer has gone, so it may come a moment after the client has the answer)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.lines if f'"{needle}"' in line]
            if len(found) >= at_least or time.monotonic() > deadline:
                return found
            time.sleep(0.02)
