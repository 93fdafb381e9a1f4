"""The OpenAI-compatible face of `charrnn serve`, beside its native routes (charrnn.serving.httpapp):

    POST /v1/completions     OpenAI's completion request (charrnn.serving.openai_protocol) -> a text_completion,
                             or with "stream": true server-sent events, `data: {...}` chunks then `data: [DONE]`
    GET  /v1/models          {"object": "list", "data": [{"id", "object": "model", "created", "owned_by",
                             "charrnn": {what the native models route tells of it}}]}
    GET  /v1/models/{model}  one such entry

Every error under /v1/ has OpenAI's shape, {"error": {"message", "type", "param", "code"}}, whoever
raised it (OpenAIErrors rewrites the native {"error": "..."} of the layers in front). The work runs
on the shared pool (charrnn.serving.worker.Pool), the choices of a prompt side by side; a client that goes
away stops its completion. docs/serve.md tells how the `openai` client, `llm` and lm-evaluation-harness
use it.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from charrnn.errors import RequestError
from charrnn.serving.completions import Piece, complete
from charrnn.serving.front import RETRY_AFTER
from charrnn.serving.httpapp import Backend, BoundedStream, _channel, _gone, _read_json, _unless_gone, guard
from charrnn.serving.openai_protocol import CompletionRequest, openai_error, parse_completion
from charrnn.serving.service import LoadedModel, error_status, pick_model

PREFIX = "/v1/"
SSE = "text/event-stream"


def error_response(e: BaseException) -> JSONResponse:
    status, message = error_status(e)
    headers = {"Retry-After": RETRY_AFTER} if status == 503 else None
    return JSONResponse(openai_error(status, message, getattr(e, "param", None)), status, headers=headers)


def model_entry(lm: LoadedModel) -> dict:
    return {"id": lm.name, "object": "model", "created": lm.created, "owned_by": "charrnn", "charrnn": lm.info()}


def _pick(backend: Backend, name: str | None) -> LoadedModel:
    try:
        return pick_model(backend.models, name)
    except RequestError as e:
        raise RequestError(e.status, str(e), param="model") from None


class Choices:
    """The choices of one completion as its pieces arrive: their text, log-probabilities and end."""

    def __init__(self, req: CompletionRequest) -> None:
        self.req = req
        count = len(req.prompts) * req.n
        self.texts: list[list[str]] = [[] for _ in range(count)]
        self.length = [0] * count  # characters of each choice's text so far (the next text_offset)
        self.finish: list[str | None] = [None] * count
        self.made = [0] * count
        self.logprobs = [{"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
                         for _ in range(count)] if req.logprobs is not None else None

    def add(self, prompt: int, piece: Piece) -> dict:
        """Take a piece of prompt `prompt`'s choice; its part of a choice object (text, logprobs, finish)."""
        index = prompt * self.req.n + piece.index
        self.texts[index].append(piece.text)
        logprobs = None
        if self.req.logprobs is not None:
            offsets = list(range(self.length[index], self.length[index] + len(piece.tokens)))
            logprobs = {"tokens": [t.text for t in piece.tokens], "token_logprobs": [t.logprob for t in piece.tokens],
                        "top_logprobs": [t.top for t in piece.tokens], "text_offset": offsets}
            for key, values in logprobs.items():
                self.logprobs[index][key].extend(values)  # type: ignore[index]
        self.length[index] += len(piece.text)
        if piece.finish is not None:
            self.finish[index], self.made[index] = piece.finish, piece.made
        return {"text": piece.text, "index": index, "logprobs": logprobs, "finish_reason": piece.finish}

    def whole(self, index: int) -> dict:
        """Choice `index` as a whole (the answer of a completion that is not streamed)."""
        return {"text": "".join(self.texts[index]), "index": index,
                "logprobs": self.logprobs[index] if self.logprobs is not None else None,
                "finish_reason": self.finish[index]}

    def usage(self) -> dict:
        prompt = sum(len(p) for p in self.req.prompts)
        return {"prompt_tokens": prompt, "completion_tokens": sum(self.made), "total_tokens": prompt + sum(self.made)}


def _merge(parts: list[dict]) -> dict:
    """The choice objects of several pieces of one choice, as one."""
    first = parts[0]
    logprobs = first["logprobs"]
    if logprobs is not None:
        logprobs = {key: [v for p in parts for v in p["logprobs"][key]] for key in logprobs}
    return {"text": "".join(p["text"] for p in parts), "index": first["index"], "logprobs": logprobs,
            "finish_reason": parts[-1]["finish_reason"]}


class OpenAIRoutes:
    """The /v1/ routes over one Backend."""

    def __init__(self, backend: Backend) -> None:
        self.b = backend

    def routes(self) -> list[Route]:
        return [Route("/v1/completions", guard(self.completions, error_response), methods=["POST"]),
                Route("/v1/models", guard(self.models, error_response), methods=["GET"]),
                Route("/v1/models/{model:path}", guard(self.model, error_response), methods=["GET"])]

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [model_entry(lm) for lm in self.b.models.values()]})

    async def model(self, request: Request) -> Response:
        return JSONResponse(model_entry(_pick(self.b, request.path_params["model"])))

    async def completions(self, request: Request) -> Response:
        req = parse_completion(await _read_json(request, self.b.limits, self.b.body_timeout), self.b.limits)
        lm = _pick(self.b, req.model)
        stopped = False
        pieces = [complete(lm, req, prompt, lambda: stopped) for prompt in req.prompts]  # the prompts checked here
        head = {"id": f"cmpl-{secrets.token_hex(12)}", "object": "text_completion", "created": int(time.time()),
                "model": lm.name}
        if req.stream:
            return self._stream(lm, req, pieces, head)

        def work() -> Choices:
            choices = Choices(req)
            for p, prompt_pieces in enumerate(pieces):
                for piece in prompt_pieces:
                    choices.add(p, piece)
            self.b.on_generated(lm.name, sum(choices.made))
            return choices

        def stop() -> None:
            nonlocal stopped
            stopped = True

        future, deliver = _channel()
        self.b.pool.submit(work, deliver, cancelled=lambda: stopped)  # skipped if its client went first
        choices = await _unless_gone(request, future, stop)
        if choices is None:
            return _gone()
        return JSONResponse({**head, "choices": [choices.whole(i) for i in range(len(choices.texts))],
                             "usage": choices.usage()})

    def _stream(self, lm: LoadedModel, req: CompletionRequest, pieces: list[Iterator[Piece]],
                head: dict) -> Response:
        """Server-sent events: the work is queued before the first byte is sent, so that a refusal (503) is
        still a plain JSON error."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        stopped = False

        def post(event: tuple) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the loop has closed
                pass

        def work() -> None:
            made = 0
            try:
                for p, prompt_pieces in enumerate(pieces):
                    for piece in prompt_pieces:
                        if stopped:
                            return
                        made += piece.made if piece.finish is not None else 0
                        post(("piece", p, piece))
            finally:
                self.b.on_generated(lm.name, made)

        def cancel() -> None:
            nonlocal stopped
            stopped = True

        self.b.pool.submit(work, lambda result: post(("done", result)), cancelled=lambda: stopped)
        return BoundedStream(_events(events, Choices(req), head, cancel), self.b.send_timeout, SSE,
                             ((b"cache-control", b"no-cache"),))  # type: ignore[return-value]


def _chunk(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


async def _events(events: asyncio.Queue, choices: Choices, head: dict,
                  cancel: Callable[[], None]) -> AsyncIterator[str]:
    """The server-sent events of a streamed completion: one chunk per choice that grew since the last
    write, an error chunk if the work failed, the usage when asked, then [DONE]."""
    try:
        while True:
            batch = [await events.get()]
            while not events.empty():
                batch.append(events.get_nowait())
            grown: dict[int, list[dict]] = {}
            end: tuple | None = None
            for event in batch:
                if event[0] == "piece":
                    part = choices.add(event[1], event[2])
                    grown.setdefault(part["index"], []).append(part)
                else:
                    end = event
            out = [_chunk({**head, "choices": [_merge(parts)]}) for parts in grown.values()]
            if end is not None:
                if isinstance(end[1], BaseException):
                    status, message = error_status(end[1])
                    out.append(_chunk(openai_error(status, message)))
                elif choices.req.include_usage:
                    out.append(_chunk({**head, "choices": [], "usage": choices.usage()}))
                out.append("data: [DONE]\n\n")
            yield "".join(out)
            if end is not None:
                return
    finally:
        cancel()


class OpenAIErrors:
    """ASGI middleware: an error answer under /v1/ whose JSON body is the native {"error": "..."} (a 404,
    405, 413, 503 of the layers in front) is given OpenAI's shape instead."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        start: dict | None = None
        body = bytearray()

        async def reshape(message: dict) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start = message
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            body.extend(message.get("body", b""))
            if message.get("more_body"):
                return
            new = _reshaped(start["status"], bytes(body))
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", str(len(new)).encode())]})
            await send({"type": "http.response.body", "body": new})

        await self.app(scope, receive, reshape)


def _reshaped(status: int, body: bytes) -> bytes:
    try:
        value = json.loads(body)
    except ValueError:
        return body
    if isinstance(value, dict) and isinstance(value.get("error"), str):
        return json.dumps(openai_error(status, value["error"])).encode()
    return body
