"""The connections of `charrnn serve`'s HTTP server: uvicorn's HTTP/1.1 protocol (h11) with a bound on how
long a request may take to arrive and on how many connections are open.

uvicorn closes a kept-alive connection that sends nothing for a few seconds, but not one that has sent
part of a request's head: a client that opens connections and never finishes their headers held each
forever, and enough of them took every file descriptor. Here
- a connection that has not delivered a whole request head within `header_timeout` seconds of opening (or
  of its last answer) gets a JSON 408 and is closed;
- at most `max_connections` are open: one more makes room by closing the connection that has waited
  longest for its request (an idle one before one still sending its body; a request being answered is
  never cut). When every connection is being answered, the newcomer gets a JSON 503 and is closed.
A slow body is the application's to bound (--body-timeout, charrnn.serving.httpapp); h11 bounds a request head to
16 KiB (uvicorn's h11_max_incomplete_event_size).
"""

from __future__ import annotations

import json
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def _answer(protocol: Any, status: int, reason: bytes, message: str) -> None:
    """Write a JSON error straight to the connection and close it (no request cycle runs)."""
    body = json.dumps({"error": message}).encode()
    head = (f"HTTP/1.1 {status} ".encode() + reason + b"\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\n".encode() + b"connection: close\r\n\r\n")
    protocol.transport.write(head + body)
    protocol.transport.close()


def guarded_protocol(header_timeout: float, max_connections: int) -> type:
    """uvicorn's H11Protocol with the bounds of the module docstring (given as the Config's `http`)."""

    class Guarded(H11Protocol):
        timer: Any = None
        waiting_since = 0.0  # when it began to wait for its next request (monotonic seconds)
        heard = False  # whether anything of that request has arrived

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._wait()
            if len(self.connections) > max_connections:
                self._make_room()

        def data_received(self, data: bytes) -> None:
            self.heard = True
            super().data_received(data)
            if self.timer is not None and self._answering():
                self.timer.cancel()  # its head has arrived: the body's bound is the application's
                self.timer = None

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and not self._answering():
                self._wait()

        def connection_lost(self, exc: Exception | None) -> None:
            if self.timer is not None:
                self.timer.cancel()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:  # uvicorn's is text/plain
            if self.cycle is not None and self.cycle.response_started and not self.cycle.response_complete:
                self.transport.close()  # garbage after a request whose answer is being written
            else:
                _answer(self, 400, b"Bad Request", "malformed HTTP request (or a request head over 16 KiB)")

        def _answering(self) -> bool:
            """Whether a request of this connection has reached the application and is not yet answered."""
            return self.cycle is not None and not self.cycle.response_complete

        def _wait(self) -> None:
            if self.timer is not None:
                self.timer.cancel()
            self.waiting_since, self.heard = time.monotonic(), False
            self.timer = self.loop.call_later(header_timeout, self._too_slow)

        def _too_slow(self) -> None:
            self.timer = None
            if self.transport.is_closing() or self._answering():
                return
            if self.heard and self.conn.our_state is h11.IDLE:
                _answer(self, 408, b"Request Timeout",
                        f"the request's head did not arrive within {header_timeout:g} s (--header-timeout)")
            else:
                self.transport.close()

        def _make_room(self) -> None:
            def waited(c: Any) -> tuple[bool, float]:  # idle ones first, then those sending a body; the oldest
                return (c.conn.their_state is not h11.IDLE, c.waiting_since)

            candidates = [c for c in self.connections if c is not self and isinstance(c, Guarded)
                          and not c.transport.is_closing() and c.conn.their_state in (h11.IDLE, h11.SEND_BODY)
                          and not (c._answering() and c.cycle.response_started)]
            if candidates:
                oldest = min(candidates, key=waited)
                oldest.transport.close()  # a body in progress: its request sees the client gone
            else:
                _answer(self, 503, b"Service Unavailable",
                        f"the server has {max_connections:,} connections open, each with a request in progress "
                        "(--max-connections); try again shortly")

    return Guarded
