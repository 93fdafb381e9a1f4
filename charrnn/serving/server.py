"""`charrnn serve` over HTTP: the models' workers, the application (charrnn.serving.httpapp) and uvicorn.

Starlette, uvicorn and prometheus-client are the optional extra `charrnn[serve]`, imported only here and
in the HTTP modules (httpapp, openai_routes, metrics),
only when a server starts; without them, a one-line MissingDependency. The listening socket is bound
here before the server starts, so that `--port 0` can report the port the system chose. SIGTERM, SIGHUP
and SIGINT (Ctrl-C) stop the server gracefully: it stops accepting, lets the requests in flight finish
for at most `shutdown_timeout` seconds (then answers them 503, charrnn.serving.front), stops the workers and
returns, so that the command exits 0. A second Ctrl-C cancels at once.

The connections are bounded (charrnn.serving.connections) below what the descriptor limit (`ulimit -n`) leaves:
past it, accept() would fail with "Too many open files" and nobody would be served.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import resource
import signal
import socket
from collections.abc import Callable, Iterator
from typing import Any

from charrnn.errors import CharrnnError, MissingDependency
from charrnn.serving.protocol import Limits, ServerOptions
from charrnn.serving.service import LoadedModel

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SPARE_DESCRIPTORS = 16  # kept free of connections, for what the process opens besides them
MAX_BACKLOG = 128  # connections waiting to be accepted (and accepted at once when they are ready)


def check_dependencies() -> None:
    """A one-line MissingDependency when the extra `charrnn[serve]` is not installed."""
    _imports()


def _imports() -> tuple[Any, Any, Any]:
    try:
        import prometheus_client  # noqa: F401 - /metrics
        import uvicorn

        from charrnn.serving import httpapp, openai_routes
    except ImportError as e:
        raise MissingDependency(f"charrnn serve over HTTP needs starlette, uvicorn and prometheus-client "
                                f"({e.name} is missing): "
                                "pip install 'charrnn[serve]' (or use --stdio)") from None
    return uvicorn, httpapp, openai_routes


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on (host, port); port 0 lets the system choose. Made with protocol IPPROTO_TCP,
    not 0 (socket.create_server's): asyncio turns Nagle's algorithm off only on connections whose socket
    says TCP, and with it on, every answer on a kept-alive connection waited 40 ms for a delayed ACK."""
    sock = None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             proto=socket.IPPROTO_TCP)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
        return sock
    except OSError as e:
        if sock is not None:
            sock.close()
        raise CharrnnError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def connection_room(max_connections: int) -> tuple[int, int]:
    """(connections, backlog) that fit the descriptor limit: the open descriptors, SPARE_DESCRIPTORS and two
    backlogs stay below it (asyncio accepts up to a backlog in one go before the first is seen, and the
    connections closed to make room for them are closed one turn of the event loop later, when a second
    burst may already have come)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 64  # no /proc (macOS): a guess on the side of caution
    room = max_connections + MAX_BACKLOG if soft == resource.RLIM_INFINITY else soft - in_use - SPARE_DESCRIPTORS
    backlog = max(1, min(MAX_BACKLOG, room // 5))
    if room - 2 * backlog < 1:
        raise CharrnnError(f"the descriptor limit ({soft}, ulimit -n) leaves no room for connections: raise it")
    return min(max_connections, room - 2 * backlog), backlog


def serve_http(models: dict[str, LoadedModel], limits: Limits, options: ServerOptions,
               log: Callable[[str], None]) -> None:
    """Serve the models until SIGTERM, SIGHUP or Ctrl-C. `log` gets the start line, warnings, one line per
    request and the closing line (the CLI writes them to stderr)."""
    uvicorn, httpapp, openai_routes = _imports()
    import torch

    from charrnn.serving.connections import guarded_protocol
    from charrnn.serving.metrics import Metrics
    from charrnn.serving.worker import ModelWorker, Pool

    torch.set_num_threads(options.threads)
    sock = listen(options.host, options.port)
    max_connections, backlog = connection_room(options.max_connections)
    if max_connections < options.max_connections:
        log(f"at most {max_connections:,} connections (--max-connections {options.max_connections:,}): the "
            f"descriptor limit (ulimit -n) leaves no more room")
    workers = {name: ModelWorker(name, lm.model, lm.vocab, lm.start_ids, max_queue=options.max_queue,
                                 batch_wait=options.batch_wait_ms / 1000, max_rows=options.max_streams).start()
               for name, lm in models.items()}
    pool = Pool(options.pool_threads, options.max_queue)
    backend = httpapp.Backend(models, workers, pool, limits, body_timeout=options.body_timeout,
                              send_timeout=options.send_timeout)
    metrics = Metrics(backend)
    backend.on_generated = metrics.generated
    hosts = frozenset(h.lower().strip("[]") for h in (options.host, *options.allow_host))
    app = httpapp.build_app(backend, log, options.max_requests,
                            extra=[*openai_routes.OpenAIRoutes(backend).routes(), metrics.route_entry()],
                            api_key=options.api_key, outer=openai_routes.OpenAIErrors, observe=metrics.observe,
                            allowed_hosts=hosts)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", server_header=False,
                            timeout_graceful_shutdown=options.shutdown_timeout, backlog=backlog,
                            http=guarded_protocol(options.header_timeout, max_connections))
    server = _graceful(uvicorn, log)(config)
    _one_line_logs(log, httpapp)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    log(f"serving {', '.join(models)} on http://{shown}:{port} (Ctrl-C or SIGTERM to stop)")
    if not ipaddress.ip_address(host).is_loopback and options.api_key is None:
        log(f"Warning: {shown} is reachable from other machines, and the API has no authentication: anyone who "
            "can reach this port can use the models (give --api-key, or put a reverse proxy with authentication "
            "in front)")
    try:
        server.run(sockets=[sock])
    finally:
        pool.stopping = True
        for worker in workers.values():
            worker.stop(timeout=options.shutdown_timeout)
        pool.stop()
        sock.close()
    log("stopped")


def _one_line_logs(log: Callable[[str], None], httpapp: Any) -> None:
    """uvicorn's warnings and errors (a request cancelled when the shutdown's bound passes, an error of
    the server itself) as one line each through `log`, the exception's first line in place of a
    traceback (stderr keeps one line per event)."""

    class OneLine(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage().strip()
            error = record.exc_info[1] if record.exc_info else None
            if isinstance(error, asyncio.CancelledError):  # cut at the shutdown's bound, its client not reading
                log("a request was cancelled at the shutdown's bound (--shutdown-timeout)")
                return
            if message == "ASGI callable returned without completing response.":  # only a stalled stream does
                log(httpapp.STALLED)
                return
            if error is not None:
                detail = (str(error).splitlines() or [""])[0]
                message = f"{message}: {type(error).__name__}" + (f": {detail}" if detail else "")
            log(message)

    logger = logging.getLogger("uvicorn")
    logger.handlers = [OneLine(logging.WARNING)]
    logger.propagate = False
    logger.setLevel(logging.WARNING)


def _graceful(uvicorn: Any, log: Callable[[str], None]) -> type:
    """uvicorn's Server, but a signal ends it without being raised again afterwards (uvicorn re-raises it
    once shut down, so that the process would die of it): the command exits 0. SIGHUP is one of them. An
    error of the event loop itself (accept() out of descriptors) is one line, not a traceback."""

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in SIGNALS}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        async def serve(self, sockets: list[socket.socket] | None = None) -> None:
            def one_line(loop: asyncio.AbstractEventLoop, context: dict) -> None:
                error = context.get("exception")
                log(f"{context.get('message', 'event loop error')}" + (f": {error}" if error else ""))

            asyncio.get_running_loop().set_exception_handler(one_line)
            await super().serve(sockets)

    return Server
