"""`charrnn serve`: models loaded once, answering requests on stdin/stdout (--stdio, the line
protocol) or over HTTP. The requests and their answers are charrnn.serving.service's; this is the shell
around them: the options, the lines in and out, the signals."""

from __future__ import annotations

import os
import select
import signal
import sys
from dataclasses import fields
from typing import Any

import click
from click.core import ParameterSource

from charrnn.cli import common
from charrnn.cli.common import Finite, IntRange, device_option
from charrnn.errors import CharrnnError, RequestError, UsageError
from charrnn.serving.protocol import Limits, ServerOptions

LIMIT_HELP = {
    "max_body_bytes": "Longest request in bytes: an HTTP body, or a line with --stdio.",
    "max_prefix_chars": "Longest prefix (next, generate) and stop string, in characters.",
    "max_n": "Most characters generated per sample (generate's n).",
    "max_num_samples": "Most samples of one generate request.",
    "max_beam": "Widest beam of one generate request.",
    "max_k": "Largest k (and words) of one next request.",
    "max_stops": "Most stop strings of one generate request.",
    "max_records": "Most records of one score request.",
    "max_record_chars": "Longest record of a score request, in characters.",
}


HTTP_OPTIONS = {  # name: (type, help); the defaults are protocol.ServerOptions's
    "batch_wait_ms": (Finite(0, 1000), "How long an idle model waits after a request for others to batch with it, "
                                       "in milliseconds (HTTP)."),
    "max_queue": (IntRange(min=1), "Requests waiting per model (and for the shared threads) before the server "
                                   "answers 503 with Retry-After (HTTP)."),
    "max_streams": (IntRange(min=1), "Samples a model generates side by side; more requests wait in the queue "
                                     "(HTTP)."),
    "pool_threads": (IntRange(1, 64), "Threads for score, next with words and generate with stop or beam (HTTP)."),
    "max_requests": (IntRange(min=1), "Requests in progress at once (streams included); more get 503 with "
                                      "Retry-After (HTTP)."),
    "shutdown_timeout": (Finite(0), "Seconds requests in flight get to finish after SIGTERM, SIGHUP or Ctrl-C; then "
                                    "they are answered 503 (HTTP)."),
    "header_timeout": (Finite(0.01, 3600), "Seconds a connection may take to send a whole request head (then 408 "
                                           "and closed) (HTTP)."),
    "body_timeout": (Finite(0.01, 3600), "Seconds a request's body may take to arrive (then 408) (HTTP)."),
    "send_timeout": (Finite(0.01, 3600), "Seconds a stream waits for a client that reads nothing before it is "
                                         "dropped (HTTP)."),
    "max_connections": (IntRange(min=1), "Connections open at once (fewer if the descriptor limit, ulimit -n, leaves "
                                         "less room); one more closes the one that has waited longest for its "
                                         "request (HTTP)."),
    "threads": (IntRange(1, 1024), "Threads torch may use within one operation; the server's work is many small "
                                   "operations, which more threads slow down on a busy machine (HTTP)."),
}


def http_options(command: Any) -> Any:
    defaults = ServerOptions()
    for name, (kind, text) in reversed(HTTP_OPTIONS.items()):
        command = click.option(f"--{name.replace('_', '-')}", name, type=kind, default=getattr(defaults, name),
                               show_default=True, help=text)(command)
    return click.option("--allow-host", "allow_host", multiple=True, metavar="NAME",
                        help="A Host name to serve besides IP addresses, localhost and --host (a name this machine "
                             "is reached by); repeat for several; '*' serves any (HTTP).")(command)


def limit_options(command: Any) -> Any:
    """One --max-... option per field of protocol.Limits, its default the field's."""
    for f in reversed(fields(Limits)):
        command = click.option(f"--{f.name.replace('_', '-')}", f.name, type=IntRange(min=1), default=f.default,
                               show_default=True, help=LIMIT_HELP[f.name])(command)
    return command


@click.command(name="serve")
@click.option("-m", "--model", "model_specs", required=True, multiple=True,
              help="Checkpoint to serve, as PATH (named by its file's stem) or NAME=PATH; repeat for several "
                   "(the first is the default).")
@click.option("--stdio", is_flag=True,
              help="Answer JSON requests on stdin, one per line, with one JSON line each on stdout, until stdin ends.")
@click.option("--host", default=ServerOptions.host, show_default=True,
              help="Address the HTTP server binds (0.0.0.0: every interface; think first).")
@click.option("--port", default=ServerOptions.port, type=IntRange(0, 65535), show_default=True,
              help="Port of the HTTP server (0: any free port).")
@click.option("--api-key", envvar="CHARRNN_API_KEY", show_envvar=True, default=None,
              help="Answer the model routes only with `Authorization: Bearer KEY` (others get 401); the "
                   "environment variable keeps the key out of the process list (HTTP).")
@device_option
@limit_options
@http_options
@click.pass_context
def serve(ctx: click.Context, model_specs: tuple[str, ...], stdio: bool, host: str, port: int, api_key: str | None,
          device: str, **limits: Any) -> None:
    """Keep models loaded and answer requests: the next characters or words after a prefix (like
    `complete`), generated samples (like `generate`), scores of records (like `eval score`), the
    models loaded. With --stdio, one JSON request per line of stdin and one JSON answer per line of
    stdout, in order, flushed at once, until stdin ends (docs/serve.md); a bad request gets
    {"error": "..."} and the next line is read. Without it, the same over HTTP.

    \b
    coproc charrnn serve --stdio -m model.pt
    echo '{"op": "next", "prefix": "The Time Trav", "k": 3}' >&"${COPROC[1]}"
    read -r answer <&"${COPROC[0]}"
    """
    from charrnn.serving.service import model_spec

    http = {name: limits.pop(name) for name in (*HTTP_OPTIONS, "allow_host")}
    try:
        limit = Limits(**limits)
    except RequestError as e:
        raise UsageError(str(e)) from None
    specs = [model_spec(text) for text in model_specs]
    if api_key is not None and not (api_key and api_key.isascii() and api_key.isprintable() and " " not in api_key):
        raise UsageError("--api-key (or CHARRNN_API_KEY) must be printable ASCII without spaces, and not empty")
    if not stdio:
        _serve_http(specs, device, limit, host, port, {**http, "api_key": api_key})
        return
    given = [f"--{name.replace('_', '-')}" for name in ("host", "port", *HTTP_OPTIONS, "allow_host")
             if ctx.get_parameter_source(name) != ParameterSource.DEFAULT]
    given += ["--api-key"] if ctx.get_parameter_source("api_key") == ParameterSource.COMMANDLINE else []
    if given:
        raise UsageError(f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} for HTTP: not with --stdio")
    stream = common.stdin()
    if stream is None:  # `<&-`: Python starts with sys.stdin = None
        raise UsageError("standard input is closed: --stdio reads its requests there")
    if sys.stdout is None:
        raise UsageError("standard output is closed: --stdio writes its answers there")
    _serve_stdio(stream, specs, device, limit)


def _serve_http(specs: list[tuple[str, str]], device: str, limits: Limits, host: str, port: int,
                http: dict[str, Any]) -> None:
    """The HTTP face (charrnn.serving.server; docs/serve.md): the start line, one access-log line per
    request and the closing line on stderr, nothing on stdout; SIGTERM or Ctrl-C end it with exit 0."""
    from charrnn.model.network import resolve_device
    from charrnn.serving.server import check_dependencies, serve_http
    from charrnn.serving.service import load_models

    check_dependencies()  # before the models load: a missing extra is said at once
    models = load_models(specs, resolve_device(device))
    serve_http(models, limits, ServerOptions(host=host, port=port, **http), lambda line: click.echo(line, err=True))


TOO_LONG = object()  # what _lines yields for a line over the limit (skipped, not kept)


def _lines(stream: Any, max_bytes: int) -> Any:
    """The lines of the binary `stream` (without their end), or TOO_LONG for one of more than
    `max_bytes` bytes, which is read past a piece at a time, never held whole."""
    while True:
        line = stream.readline(max_bytes + 2)  # + "\r\n"
        if not line:
            return
        if line.endswith(b"\n") or len(line) <= max_bytes:
            yield line.rstrip(b"\r\n") if len(line.rstrip(b"\r\n")) <= max_bytes else TOO_LONG
            continue
        while line and not line.endswith(b"\n"):
            line = stream.readline(1 << 16)
        yield TOO_LONG


class _Stop(BaseException):
    """SIGTERM or SIGINT while waiting for a request (or a second one while answering). A
    BaseException, like KeyboardInterrupt, so that no request's `except Exception` takes it."""


def _serve_stdio(stream: Any, specs: list[tuple[str, str]], device: str, limits: Limits) -> None:
    """The line protocol: read a line, answer it, flush; until stdin ends or a signal comes (then
    the request being answered is finished first, and the exit is 0)."""
    from charrnn.display import console as con
    from charrnn.model.network import resolve_device
    from charrnn.serving.protocol import decode_json
    from charrnn.serving.service import handle, load_models

    models = load_models(specs, resolve_device(device))
    state = {"waiting": False, "stop": False}

    def on_signal(signum: int, frame: Any) -> None:
        again, state["stop"] = state["stop"], True
        if state["waiting"] or again:  # idle in a read: leave it now; else after the answer, unless told twice
            raise _Stop

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    con.info(con.make_console(), f"serving {', '.join(models)} on stdin/stdout: one JSON request per line")
    out = sys.stdout
    lines = _lines(stream, limits.max_body_bytes)
    try:
        while not state["stop"]:
            state["waiting"] = True
            line = next(lines, None)
            state["waiting"] = False
            if line is None:
                break
            if line is TOO_LONG:
                answer: dict = {"error": f"the request line is longer than {limits.max_body_bytes:,} bytes "
                                         "(--max-body-bytes)"}
            elif not line.strip():
                continue  # blank lines are not requests
            else:
                try:
                    answer = handle(decode_json(line, limits), models, limits)
                except RequestError as e:
                    answer = {"error": str(e)}
            try:
                _write(out, common.json_line(answer) + "\n")
            except BrokenPipeError:
                raise  # the reader went away: the CLI stops quietly
            except OSError as e:  # a full disk (`> /dev/full`), an I/O error: nothing more can be answered
                common.silence_fd(_fileno(out))
                raise CharrnnError(f"cannot write the answers to standard output: {e.strerror or e}") from None
    except _Stop:
        if not state["waiting"]:  # told twice: the answer in hand (perhaps half written) is dropped
            common.silence_fd(_fileno(out))
            raise CharrnnError("stopped by a second signal before the request in hand was answered") from None


def _write(out: Any, text: str) -> None:
    """Write an answer whole. To a file descriptor, in pieces as the reader takes them, waiting at most
    0.1 s at a time, so that Python gets control back while a reader that does not read keeps the pipe
    full: a signal that arrives while its handler for another runs is otherwise left pending, with the
    process blocked in write() (a second Ctrl-C would then be lost)."""
    fd = _fileno(out)
    if fd is None:  # not a real file (tests' captured streams)
        out.write(text)
        out.flush()
        return
    out.flush()
    # json_line has escaped what the encoding lacks; a piece of PIPE_BUF bytes never blocks once writable.
    view = memoryview(text.encode(getattr(out, "encoding", None) or "utf-8", "backslashreplace"))
    while view:
        if select.select([], [fd], [], 0.1)[1]:
            view = view[os.write(fd, view[:select.PIPE_BUF]):]


def _fileno(stream: Any) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None

