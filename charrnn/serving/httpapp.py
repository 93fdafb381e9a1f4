"""The HTTP face of `charrnn serve`: a Starlette application over the loaded models.

    POST /charrnn/v1/next       {"prefix", "k", "words", "unk", "model"}       -> {"prefix", "next": [{"char", "prob"}]}
    POST /charrnn/v1/generate   {"prefix", "n", "temperature", ..., "stream"}  -> {"samples": [...], "seed"}
    POST /charrnn/v1/score      {"records": [...], "end", "delimiter", "model"} -> {"scores": [{"text", "chars", ...}]}
    GET  /charrnn/v1/models     -> {"models": [...], "default"}
    GET  /healthz               -> {"status": "ok", "models": {name: {"generating", "paused", "waiting"}},
                                    "pool": {"running", "waiting"}}

These native routes live under /charrnn/v1/: /v1/ is OpenAI's (charrnn.serving.openai_routes, given to
build_app as extra routes), where `n` counts samples, not characters; the native routes' old /v1/
paths answer 404 naming the new ones. The bodies and answers are those of the line protocol
(charrnn.serving.protocol, charrnn.serving.service) without "op". Every refusal is a JSON body {"error": "..."} with
its status: 400 not JSON, 401 a wrong API key, 404 an unknown model or path, 405 a wrong method, 408 a
body that took longer than --body-timeout, 413 too large, 422 a wrong field, 503 too busy (with
Retry-After); charrnn.serving.front adds 403 (Host), 415 (not JSON) and its own 503s, charrnn.serving.connections the
408 of a slow request head.

With "stream": true, /charrnn/v1/generate answers NDJSON (application/x-ndjson), one object per line as the
text is made: {"sample": i, "text": "..."} (the texts of sample i, joined, are the sample), then
{"done": true, "seed": S} last (no seed for beam search), or {"error": "..."} if the generation
fails after it began. A client that goes away stops its generation, streamed or not; a stream whose
client reads nothing for --send-timeout seconds is dropped (BoundedStream, for every streamed route).

No model work runs on the event loop: `next` (characters) and plain `generate` go to the model's
ModelWorker (batched), the rest to the shared Pool (charrnn.serving.worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from charrnn.errors import RequestError
from charrnn.inference.generate import Sampling
from charrnn.serving.engine import Job
from charrnn.serving.front import DRAIN_BYTES, RETRY_AFTER, Front, drain
from charrnn.serving.protocol import (
    GenerateRequest,
    Limits,
    ServerOptions,
    decode_json,
    parse_generate,
    parse_next,
    parse_score,
)
from charrnn.serving.service import (
    LoadedModel,
    error_status,
    generation_plan,
    models_info,
    pick_model,
    prefix_ids,
    run_generate,
    run_next,
    run_score,
    stream_generate,
)
from charrnn.serving.worker import CLIENT_GONE, ModelWorker, NextTask, Pool

NDJSON = "application/x-ndjson"
PAUSE_AT = 64  # steps of a streamed generation waiting to be sent: its job pauses until they are
NATIVE = "/charrnn/v1"  # the native routes' prefix
MOVED = {f"/v1/{op}": f"{NATIVE}/{op}" for op in ("next", "generate", "score")}  # their paths before


@dataclass
class Backend:
    """What the routes answer from: the models, their workers, the shared pool and the limits."""

    models: dict[str, LoadedModel]
    workers: dict[str, ModelWorker]
    pool: Pool
    limits: Limits
    # told (model, characters) of what the pool generated (/metrics; the workers count their own)
    on_generated: Callable[[str, int], None] = lambda model, chars: None
    body_timeout: float = ServerOptions.body_timeout  # seconds a request's body may take to arrive
    send_timeout: float = ServerOptions.send_timeout  # seconds a stream waits for a client that reads nothing


class Unread(RequestError):
    """A refusal that leaves part of the body unread: its answer closes the connection, which cannot carry
    another request."""


def error_response(e: BaseException) -> JSONResponse:
    """{"error": ...} with the status of `e`; a 503 says when to retry."""
    status, message = error_status(e)
    headers = {"Retry-After": RETRY_AFTER} if status == 503 else {"Connection": "close"} if isinstance(e, Unread) \
        else None
    return JSONResponse({"error": message}, status, headers=headers)


def guard(route: Callable[[Request], Awaitable[Response]],
          answer: Callable[[BaseException], Response] = error_response) -> Callable[[Request], Awaitable[Response]]:
    """The route, its failures answered by `answer` (a JSON error with its status)."""
    async def guarded(request: Request) -> Response:
        try:
            return await route(request)
        except ClientDisconnect:  # it went away while its body was read
            return _gone()
        except Exception as e:  # noqa: BLE001 - every failure of a request is its JSON answer
            return answer(e)
    return guarded


def _channel() -> tuple[asyncio.Future, Callable[[Any], None]]:
    """A future of the event loop and a function that settles it from any thread (a result, or an exception)."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(result: Any) -> None:
        if not future.done():
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    def deliver(result: Any) -> None:
        try:
            loop.call_soon_threadsafe(settle, result)
        except RuntimeError:  # the loop has closed: nobody is waiting any more
            pass

    return future, deliver


async def _read_json(request: Request, limits: Limits, timeout: float) -> Any:
    """The body as JSON (protocol.decode_json: strict, UTF-8) within `timeout` seconds (else 408); 413 past the
    limit, found before reading when Content-Length says so, else as soon as the body passes it; 400 not JSON.
    A body too large is still read to its end (up to front.DRAIN_BYTES, dropped), so that a client that
    sends it whole before reading (urllib, requests) reads the 413 rather than a reset connection."""
    limit, deadline = limits.max_body_bytes, asyncio.get_running_loop().time() + timeout
    length = request.headers.get("content-length")
    declared = int(length) if length is not None and length.isdigit() else None
    body = bytearray()

    async def read() -> bool:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                return False
        return True

    if declared is not None and declared > limit:
        too_large = f"the body has {declared:,} bytes, more than the limit of {limit:,} (--max-body-bytes)"
    else:
        try:
            if await asyncio.wait_for(read(), timeout):
                return decode_json(bytes(body), limits)
        except asyncio.TimeoutError:
            raise Unread(408, f"the body did not arrive within {timeout:g} s (--body-timeout)") from None
        too_large = f"the body has more than the limit of {limit:,} bytes (--max-body-bytes)"
    left = deadline - asyncio.get_running_loop().time()
    if (request.headers.get("expect", "").lower() == "100-continue" or (declared or 0) > DRAIN_BYTES
            or not await drain(request.receive, left)):
        raise Unread(413, too_large)
    raise RequestError(413, too_large)


async def _unless_gone(request: Request, future: asyncio.Future, cancel: Callable[[], None]) -> Any:
    """The future's result, or, when the client goes away first, cancel() and an empty response's None."""
    watcher = asyncio.ensure_future(_until_gone(request.receive))
    try:
        await asyncio.wait({future, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not future.done():
        cancel()
        return None
    return future.result()


def _gone() -> Response:
    """The answer to a client that has gone: nobody reads it; 499 ("client closed request", as nginx
    logs it) says so in the access log."""
    return Response(status_code=CLIENT_GONE)


def _plain(lm: LoadedModel, req: GenerateRequest) -> bool:
    """Whether the engine can run this generation: the generation plan (charrnn.genplan) is plain sampling (no
    stop strings, beam search, --novel, form or records model) of a model without labels (the engine steps
    unconditioned models). The request is checked on the way (a 422)."""
    return generation_plan(lm, req).kind == "plain" and lm.labels is None


class App:
    """The routes over one Backend."""

    def __init__(self, backend: Backend) -> None:
        self.b = backend

    def starlette(self, extra: Sequence[Route] = ()) -> Starlette:
        """The native routes and /healthz, then the `extra` ones (the OpenAI-compatible routes)."""
        routes = [Route(f"{NATIVE}/next", guard(self.next), methods=["POST"]),
                  Route(f"{NATIVE}/generate", guard(self.generate), methods=["POST"]),
                  Route(f"{NATIVE}/score", guard(self.score), methods=["POST"]),
                  Route(f"{NATIVE}/models", guard(self.models), methods=["GET"]),
                  Route("/healthz", guard(self.healthz), methods=["GET"]), *extra]
        return Starlette(routes=routes, exception_handlers={HTTPException: self._http_error})

    @staticmethod
    async def _http_error(request: Request, e: Exception) -> Response:
        assert isinstance(e, HTTPException)
        path = request.url.path
        if e.status_code == 404 and path in MOVED:
            message = f"{path} has moved to {MOVED[path]} (the /v1/ paths are the OpenAI-compatible API's; " \
                      "docs/serve.md)"
        else:
            message = {404: f"no such path {path[:100]!r}: POST {NATIVE}/next, {NATIVE}/generate, {NATIVE}/score, "
                            f"GET {NATIVE}/models, /healthz; OpenAI's POST /v1/completions, GET /v1/models",
                       405: f"{request.method} is not allowed on {path}"}.get(e.status_code, str(e.detail))
        return JSONResponse({"error": message}, e.status_code, headers=e.headers)

    async def _in_pool(self, request: Request, work: Callable[[threading.Event], Any]) -> Any:
        """work(gone) on the shared pool: its result, or None when the client goes away first; then `gone` is
        set, so that work not yet begun is skipped and work that looks at it stops."""
        future, deliver = _channel()
        gone = threading.Event()
        self.b.pool.submit(lambda: work(gone), deliver, cancelled=gone.is_set)
        return await _unless_gone(request, future, gone.set)

    async def healthz(self, request: Request) -> Response:
        """What is in hand: per model, generations running, paused for their readers and requests waiting;
        the shared pool's tasks running and waiting."""
        return JSONResponse({"status": "ok", "models": {name: w.load() for name, w in self.b.workers.items()},
                             "pool": self.b.pool.load()})

    async def models(self, request: Request) -> Response:
        return JSONResponse(models_info(self.b.models))

    async def next(self, request: Request) -> Response:
        req = parse_next(await _read_json(request, self.b.limits, self.b.body_timeout), self.b.limits)
        lm = pick_model(self.b.models, req.model)
        if req.words is not None or lm.labels is not None:  # a beam per request, or a label's model: the pool
            answer = await self._in_pool(request, lambda gone: run_next(lm, req))
            return JSONResponse(answer) if answer is not None else _gone()
        future, deliver = _channel()
        task = NextTask(prefix_ids(lm, req.prefix, req.unk), req.k, deliver)
        self.b.workers[lm.name].submit(task)
        try:
            guesses = await future
        finally:
            task.cancelled = True  # no-op once answered; drops it from the batch if this request was cancelled
        return JSONResponse({"prefix": req.prefix, "next": [g.to_dict("char") for g in guesses]})

    async def score(self, request: Request) -> Response:
        req = parse_score(await _read_json(request, self.b.limits, self.b.body_timeout), self.b.limits)
        lm = pick_model(self.b.models, req.model)
        answer = await self._in_pool(request, lambda gone: run_score(lm, req))
        return JSONResponse(answer) if answer is not None else _gone()

    async def generate(self, request: Request) -> Response:
        req = parse_generate(await _read_json(request, self.b.limits, self.b.body_timeout), self.b.limits)
        lm = pick_model(self.b.models, req.model)
        if req.stream:
            return self._stream(lm, req)
        future, deliver = _channel()
        if _plain(lm, req):
            job = self._job(lm, req, on_done=deliver)
            self.b.workers[lm.name].submit(job)
            samples = await _unless_gone(request, future, lambda: setattr(job, "cancelled", True))
            return JSONResponse({"samples": samples, "seed": req.seed}) if samples is not None else _gone()
        stream_generate(lm, req).close()  # its checks, here, before any work is queued

        def work(gone: threading.Event) -> dict:
            answer = run_generate(lm, req, stopped=gone.is_set)  # stops at its next piece once the client goes
            echoed = len(req.prefix) if req.echo else 0
            self.b.on_generated(lm.name, sum(len(s) - echoed for s in answer["samples"]))
            return answer

        answer = await self._in_pool(request, work)
        return JSONResponse(answer) if answer is not None else _gone()

    def _job(self, lm: LoadedModel, req: GenerateRequest, **callbacks: Any) -> Job:
        return Job(prefix_ids(lm, req.prefix, req.unk), req.n, Sampling(req.temperature, req.top_k, req.top_p,
                   req.greedy), req.seed, req.num_samples, req.prefix if req.echo else "", **callbacks)

    def _stream(self, lm: LoadedModel, req: GenerateRequest) -> Response:
        """The NDJSON answer of a streamed generation; the work is queued before the first byte is sent,
        so that a refusal (422, 503) is still a plain JSON error."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        job: Job | None = None

        def arrive(event: tuple) -> None:  # on the loop
            events.put_nowait(event)
            if job is not None and events.qsize() >= PAUSE_AT:
                job.paused = True  # the client reads slower than the model writes: hold its rows

        def post(event: tuple) -> None:
            try:
                loop.call_soon_threadsafe(arrive, event)
            except RuntimeError:  # the loop has closed
                pass

        if _plain(lm, req):
            job = self._job(lm, req, on_piece=lambda pieces: post(("pieces", pieces)),
                            on_done=lambda result: post(("done", result)))
            self.b.workers[lm.name].submit(job)

            def cancel() -> None:
                job.cancelled = True

            def resume() -> None:
                job.paused = False
        else:
            pieces = stream_generate(lm, req)  # checked now; iterated on a pool thread
            stopped = False

            def work() -> None:
                made = -len(req.prefix) * req.num_samples if req.echo else 0  # the echoed prefixes are not made
                try:
                    for i, piece in pieces:
                        if stopped:
                            break
                        made += len(piece)
                        post(("piece", i, piece))
                finally:
                    pieces.close()
                    self.b.on_generated(lm.name, max(made, 0))

            def cancel() -> None:
                nonlocal stopped
                stopped = True

            def resume() -> None:  # a pool thread's text is at most n x num_samples characters: not held back
                pass

            self.b.pool.submit(work, lambda result: post(("done", result)), cancelled=lambda: stopped)
        return BoundedStream(_ndjson(events, cancel, resume, None if req.beam is not None else req.seed),
                             self.b.send_timeout, NDJSON)  # type: ignore[return-value]


STALLED = "a stream's client read nothing for --send-timeout seconds: dropped"


class BoundedStream:
    """The ASGI answer of a streamed generation (NDJSON, or server-sent events): each piece written as it
    comes, each write waiting at most `send_timeout` seconds for the client to take it (its socket's
    buffers are full while it reads nothing). A client that reads nothing for that long has its stream
    dropped and its connection closed (uvicorn closes a response left incomplete, and logs STALLED's line
    through server.py); one that goes away ends it too. Either way the generator is closed, which stops
    the generation."""

    def __init__(self, lines: AsyncIterator[str], send_timeout: float, media_type: str,
                 headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        self.lines, self.send_timeout = lines, send_timeout
        self.headers = [(b"content-type", media_type.encode()), *headers]

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        gone = asyncio.ensure_future(_until_gone(receive))
        step: asyncio.Future | None = None  # the next line, then its write
        try:
            while True:
                step = asyncio.ensure_future(self.lines.__anext__())  # type: ignore[attr-defined]
                await asyncio.wait({step, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not step.done():
                    return  # gone while the generation was making its next piece
                try:
                    text = step.result()
                except StopAsyncIteration:
                    break
                step = asyncio.ensure_future(send({"type": "http.response.body", "body": text.encode(),
                                                   "more_body": True}))
                await asyncio.wait({step, gone}, timeout=self.send_timeout, return_when=asyncio.FIRST_COMPLETED)
                if gone.done() or not step.done():
                    return  # gone, or stalled: left incomplete, the connection is closed
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            gone.cancel()
            if step is not None and not step.done():
                step.cancel()
                with contextlib.suppress(BaseException):
                    await step  # a line's wait ends before the generator is closed
            await self.lines.aclose()  # type: ignore[attr-defined]


async def _until_gone(receive: Callable) -> None:
    """Returns when the client has gone (the body has been read: what comes next is the disconnect)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _ndjson(events: asyncio.Queue, cancel: Callable[[], None], resume: Callable[[], None],
                  seed: int | None) -> AsyncIterator[str]:
    """The lines of a streamed generation: whatever has arrived since the last write, one line per sample
    that grew, then the closing line; resume() once all is taken. Cancelled (the client went away) or not,
    the generation is stopped at the end."""
    try:
        while True:
            batch = [await events.get()]
            while not events.empty():
                batch.append(events.get_nowait())
            resume()
            grown: dict[int, list[str]] = {}
            end: tuple | None = None  # ("done", the samples or the exception that stopped them)
            for event in batch:
                if event[0] == "pieces":  # one piece per sample
                    for i, piece in enumerate(event[1]):
                        grown.setdefault(i, []).append(piece)
                elif event[0] == "piece":  # (sample index, piece)
                    grown.setdefault(event[1], []).append(event[2])
                else:
                    end = event
            lines = [json.dumps({"sample": i, "text": "".join(p)}, ensure_ascii=False) + "\n" for i, p in grown.items()]
            if end is not None:
                failure = end[1] if isinstance(end[1], BaseException) else None
                closing = {"error": error_status(failure)[1]} if failure is not None else \
                    {"done": True, **({"seed": seed} if seed is not None else {})}
                lines.append(json.dumps(closing) + "\n")
            yield "".join(lines)
            if end is not None:
                return
    finally:
        cancel()


class ApiKey:
    """ASGI middleware: a request to a model route (under /v1/ or /charrnn/) without `Authorization: Bearer
    KEY` gets 401; /healthz (and /metrics) stay open, for probes and scrapers."""

    GUARDED = ("/v1/", "/charrnn/")

    def __init__(self, app: Any, key: str) -> None:
        self.app, self.key = app, key.encode()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.GUARDED):
            given = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, key = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(key.strip(), self.key):
                said = "no API key" if not given else "a wrong API key"
                refusal = JSONResponse({"error": f"{said}: this server wants `Authorization: Bearer KEY` with the "
                                                 "key of --api-key (or CHARRNN_API_KEY)"}, 401,
                                       headers={"WWW-Authenticate": "Bearer"})
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_app(backend: Backend, log: Callable[[str], None], max_requests: int = 1000, *,
              extra: Sequence[Route] = (), api_key: str | None = None,
              outer: Callable[[Any], Any] | None = None,
              observe: Callable[[str, str, str, float], None] | None = None,
              allowed_hosts: frozenset[str] = frozenset()) -> Any:
    """The ASGI application: the routes (and the `extra` ones), behind the API key when one is given and
    charrnn.serving.front (the Host and content checks, the request limit, the access log, whose lines `observe`
    also gets); `outer` (a middleware) wraps the whole."""
    app: Any = App(backend).starlette(extra)
    if api_key is not None:
        app = ApiKey(app, api_key)
    app = Front(app, log, max_requests, allowed_hosts, backend.body_timeout, observe)
    return outer(app) if outer is not None else app
