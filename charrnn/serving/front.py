"""What every HTTP request of `charrnn serve` passes before the application (charrnn.serving.httpapp): plain ASGI,
no framework, so that it holds for every route, those to come included.

- The Host header must name this server: an IP address (a DNS-rebinding page can only be reached through
  a name of its own), `localhost`, the name given to --host, or one given with --allow-host. Anything else
  is a 403: a web page in the user's own browser cannot read the API through a name it controls.
- A body is read only as `application/json` (415 otherwise): a browser sends text/plain, form and
  multipart bodies across origins without asking, never application/json.
- At most `max_requests` requests in progress (more: 503 with Retry-After); /healthz and /metrics do not
  count, so that they answer however busy the server is.
- One access-log line per request (below), also given to `observe` (method, path, status, seconds).
- A refusal made before the body is read lets the body arrive first (drain: at most DRAIN_BYTES within the
  body timeout), then closes the connection: a client that sends its whole body before reading (Python's
  urllib and requests) reads the refusal instead of a reset connection.
- A request still running when the shutdown's bound passes is answered in JSON (503, or the last line of a
  stream), not cut with a text/plain 500.
- One access-log line per request, `client "METHOD /path" status milliseconds`, the path's control and
  quoting characters escaped, so that a request cannot forge a line or ring the operator's terminal bell.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from charrnn.errors import RequestError

RETRY_AFTER = "1"  # seconds, with every 503
DRAIN_BYTES = 16 << 20  # the most of a refused body read (and dropped) so that its client can read the refusal
UNPRINTABLE = re.compile('[\x00-\x1f\x7f-\x9f"\\\\\u200b-\u200f\u2028-\u202e\u2066-\u2069]')
UNLIMITED = ("/healthz", "/metrics")  # probes and scrapers: answered however busy the server is


def printable(text: str) -> str:
    """`text` for one line of a log: control characters (C0, C1), Unicode line and direction marks, quotes
    and backslashes escaped as Python writes them (\\n, \\x07, \\", \\u2028)."""
    def escape(m: re.Match) -> str:
        c = m.group()
        return {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c) or \
            (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
    return UNPRINTABLE.sub(escape, text)


def host_allowed(host: str | None, allowed: frozenset[str]) -> bool:
    """Whether a Host header (`name`, `name:port`, `[v6]:port`) names this server: no header (HTTP/1.0), an
    IP address, `localhost`, or a name in `allowed` ("*" allows any)."""
    if host is None or "*" in allowed:
        return True
    name = host.strip().lower()
    if name.startswith("["):  # [v6] or [v6]:port
        name = name[1:].split("]", 1)[0]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    name = name.rstrip(".")
    if name == "localhost" or name in allowed:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_json(content_type: str | None) -> bool:
    """Whether a Content-Type is application/json (parameters such as charset=utf-8 allowed)."""
    return content_type is not None and content_type.split(";", 1)[0].strip().lower() == "application/json"


def json_body(status: int, payload: dict, close: bool = False) -> tuple[list[tuple[bytes, bytes]], bytes]:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 503:
        headers.append((b"retry-after", RETRY_AFTER.encode()))
    if close:
        headers.append((b"connection", b"close"))
    return headers, body


async def send_error(send: Callable[[dict], Awaitable[None]], e: RequestError, close: bool = False) -> None:
    """{"error": ...} with the status of `e` (a 503 says when to retry)."""
    headers, body = json_body(e.status, {"error": str(e)}, close)
    await send({"type": "http.response.start", "status": e.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def drain(receive: Callable[[], Awaitable[dict]], timeout: float, limit: int = DRAIN_BYTES) -> bool:
    """Read and drop the rest of a request's body: True once it has all arrived, False when the client went
    away, sent more than `limit` bytes or took more than `timeout` seconds."""
    async def read() -> bool:
        seen = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return False
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return True
            if seen > limit:
                return False

    try:
        return await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        return False


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


class Front:
    """ASGI middleware in front of the application; see the module docstring."""

    def __init__(self, app: Any, log: Callable[[str], None], max_requests: int, allowed_hosts: frozenset[str],
                 body_timeout: float, observe: Callable[[str, str, str, float], None] | None = None) -> None:
        self.app, self.log, self.max_requests, self.observe = app, log, max_requests, observe
        self.allowed_hosts, self.body_timeout = allowed_hosts, body_timeout
        self.in_progress = 0

    def _refusal(self, scope: dict) -> RequestError | None:
        host = _header(scope, b"host")
        if not host_allowed(host, self.allowed_hosts):
            return RequestError(403, f"the Host header {printable(host or '')[:100]!r} does not name this server "
                                     "(an IP address, localhost or a name given with --allow-host)")
        if scope["method"] not in ("GET", "HEAD") and not is_json(_header(scope, b"content-type")):
            given = _header(scope, b"content-type")
            return RequestError(415, "the body must be sent as Content-Type: application/json, got "
                                     + (repr(printable(given)[:100]) if given else "none"))
        if scope["path"] not in UNLIMITED and self.in_progress >= self.max_requests:
            return RequestError(503, f"the server has {self.max_requests:,} requests in progress (--max-requests); "
                                     "try again shortly")
        return None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status, ndjson = time.perf_counter(), "-", False

        async def send_and_note(message: dict) -> None:
            nonlocal status, ndjson
            if message["type"] == "http.response.start":
                status = str(message["status"])
                ndjson = any(k == b"content-type" and v.startswith(b"application/x-ndjson")
                             for k, v in message.get("headers", ()))
            await send(message)

        refusal = self._refusal(scope)
        counted = refusal is None and scope["path"] not in UNLIMITED
        self.in_progress += counted
        try:
            if refusal is not None:
                if (_header(scope, b"expect") or "").lower() == "100-continue":
                    close = True  # its client sends no body before it is told to go on
                else:
                    close = not await drain(receive, self.body_timeout)
                await send_error(send_and_note, refusal, close=close)
            else:
                await self.app(scope, receive, send_and_note)
        except asyncio.CancelledError:  # the shutdown's bound passed (uvicorn cancels what is left)
            await self._cut(send_and_note, status == "-", ndjson)
        finally:
            self.in_progress -= counted
            host, port = scope.get("client") or ("-", 0)
            seconds = time.perf_counter() - start
            self.log(f'{host}:{port} "{scope["method"]} {printable(scope["path"][:200])}" {status} '
                     f"{seconds * 1000:.1f} ms")
            if self.observe is not None:
                self.observe(scope["method"], scope["path"], status, seconds)

    async def _cut(self, send: Callable, unanswered: bool, ndjson: bool) -> None:
        """Answer a request cancelled at shutdown: a JSON 503, or a stream's last line. Awaited directly, not
        bounded by a task of its own: uvicorn writes at once unless the client has stopped reading, and the
        event loop is closed right after (which cancels this too, and then nothing more is said)."""
        message = "the server stopped before this request was answered (--shutdown-timeout)"
        try:
            if unanswered:
                await send_error(send, RequestError(503, message), close=True)
            else:
                line = (json.dumps({"error": message}) + "\n").encode() if ndjson else b""
                await send({"type": "http.response.body", "body": line, "more_body": False})
        except (asyncio.CancelledError, OSError, RuntimeError):
            pass  # the client does not read, or the connection is gone: nothing more to say
