"""The OpenAI-compatible completion request (`POST /v1/completions` of `charrnn serve`): its fields, the
checks that turn a decoded JSON body into a CompletionRequest, and OpenAI's error shape.

Plain Python, no torch (charrnn.serving.protocol's neighbour: the same limits, the same strict JSON). As
OpenAI-compatible servers do, a field this server does not know is ignored (clients send the whole
of OpenAI's request); a known field of the wrong type or value is refused with status 400 and the
field's name in "param"; a field whose only meaning here would change the text silently
(`logit_bias`, a penalty, `suffix`, `best_of` above `n`) is refused unless it asks for nothing.
A token is a character: `max_tokens` counts characters, `usage` counts characters, and a prompt
given as token ids is refused (charrnn's ids are its own vocabulary's, not a tokenizer's).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Any

from charrnn.errors import RequestError
from charrnn.serving.protocol import SEED_MAX, Limits, json_kind

MAX_STOPS = 4  # OpenAI's limit
MAX_LOGPROBS = 5  # OpenAI's limit on the completions endpoint
DEFAULT_MAX_TOKENS = 16  # OpenAI's default


@dataclass(frozen=True)
class CompletionRequest:
    prompts: tuple[str, ...]  # one choice group per prompt
    model: str | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS  # characters per choice
    temperature: float = 1.0  # 0: greedy (also top_p 0)
    top_p: float | None = None
    n: int = 1  # samples per prompt
    stop: tuple[str, ...] = ()
    seed: int = 0  # parse_completion draws one when the body has none
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the usage
    logprobs: int | None = None  # the k likeliest characters at each position, 0 to 5
    echo: bool = False  # the prompt in front of the text (with its log-probabilities when asked)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_p == 0


def openai_error(status: int, message: str, param: str | None = None) -> dict:
    """OpenAI's error body: {"error": {"message", "type", "param", "code"}}."""
    kind = ("invalid_request_error" if status < 500 else "server_error") if status != 401 else "authentication_error"
    code = {401: "invalid_api_key", 404: "model_not_found" if param == "model" else "not_found",
            429: "rate_limit_exceeded", 503: "server_busy"}.get(status)
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class _Fields:
    """The known fields of a decoded body, each taken with its check; absent and null mean the default."""

    def __init__(self, body: dict) -> None:
        self.body = body

    def given(self, key: str) -> bool:
        return self.body.get(key) is not None

    def _bad(self, key: str, what: str) -> RequestError:
        return RequestError(400, f'"{key}" must be {what}, got {json_kind(self.body[key])}', param=key)

    def integer(self, key: str, default: int, low: int, high: int, flag: str = "") -> int:
        if not self.given(key):
            return default
        value = self.body[key]
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._bad(key, "an integer")
        if not low <= value <= high:
            cap = f" (the server's limit, {flag})" if flag and value > high else ""
            raise RequestError(400, f'"{key}" must be an integer from {low} to {high:,}{cap}, got {value}', param=key)
        return value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        if not self.given(key):
            return default
        value = self.body[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise self._bad(key, "a finite number")
        if not low <= value <= high:
            raise RequestError(400, f'"{key}" must be in [{low:g}, {high:g}], got {value:g}', param=key)
        return float(value)

    def flag(self, key: str) -> bool:
        if not self.given(key):
            return False
        if not isinstance(self.body[key], bool):
            raise self._bad(key, "true or false")
        return self.body[key]

    def strings(self, key: str, max_items: int, max_chars: int, what: str) -> tuple[str, ...]:
        """A string or a list of strings (at most `max_items`, each at most `max_chars`)."""
        value = self.body[key]
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise self._bad(key, what)
        if len(items) > max_items:
            raise RequestError(400 if key == "stop" else 413, f'"{key}" has {len(items):,} items, more than the '
                               f"limit of {max_items:,}", param=key)
        for i, v in enumerate(items):
            if len(v) > max_chars:
                raise RequestError(413, f'"{key}"[{i}] has {len(v):,} characters, more than the limit of '
                                        f"{max_chars:,} (--max-prefix-chars)", param=key)
        return tuple(items)

    def nothing(self, key: str, neutral: tuple[Any, ...], why: str) -> None:
        """Refuse `key` unless it is absent or one of the `neutral` values (which ask for nothing)."""
        value = self.body.get(key)
        if value is not None and not any(value == v and type(value) is type(v) for v in neutral):
            raise RequestError(400, f'"{key}" is not supported: {why}', param=key)


def _prompts(f: _Fields, limits: Limits) -> tuple[str, ...]:
    if "prompt" not in f.body or f.body["prompt"] is None:
        raise RequestError(400, '"prompt" is missing: a string, or a list of strings', param="prompt")
    value = f.body["prompt"]
    if isinstance(value, list) and value and all(isinstance(v, (int, list)) and not isinstance(v, bool)
                                                 for v in value):
        raise RequestError(400, '"prompt" as token ids is not supported: send text (a character is a token, '
                                "and charrnn's ids are its own vocabulary's)", param="prompt")
    prompts = f.strings("prompt", limits.max_records, limits.max_prefix_chars, "a string or a list of strings")
    if not prompts:
        raise RequestError(400, '"prompt" must not be an empty list', param="prompt")
    return prompts


def parse_completion(body: Any, limits: Limits) -> CompletionRequest:
    """The body of `POST /v1/completions` -> a CompletionRequest (see the module docstring). Without
    "seed", a random one is drawn here."""
    if not isinstance(body, dict):
        raise RequestError(400, f"a completion request must be a JSON object, got {json_kind(body)}")
    f = _Fields(body)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise f._bad("model", "a string")
    prompts = _prompts(f, limits)
    n = f.integer("n", 1, 1, limits.max_num_samples, "--max-num-samples")
    f.nothing("best_of", (n,), f"it would draw more samples than n ({n}) and keep the likeliest")
    f.nothing("suffix", ("",), "charrnn continues a prompt; it does not fill in between")
    f.nothing("logit_bias", ({},), "charrnn samples from the model's own distribution")
    for penalty in ("presence_penalty", "frequency_penalty"):
        f.nothing(penalty, (0, 0.0), "charrnn samples from the model's own distribution")
    stop = f.strings("stop", MAX_STOPS, limits.max_prefix_chars, "a string or a list of strings") \
        if f.given("stop") else ()
    if any(not s for s in stop):
        raise RequestError(400, '"stop" must not hold an empty string (it would match everywhere)', param="stop")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or not isinstance(options.get("include_usage", False),
                                                                                  bool)):
        raise RequestError(400, '"stream_options" must be an object such as {"include_usage": true}, got '
                                f"{json_kind(options)}", param="stream_options")
    stream = f.flag("stream")
    if options is not None and not stream:
        raise RequestError(400, '"stream_options" is only for "stream": true', param="stream_options")
    seed = f.integer("seed", -1, 0, SEED_MAX)
    return CompletionRequest(
        prompts=prompts, model=model, max_tokens=f.integer("max_tokens", DEFAULT_MAX_TOKENS, 0, limits.max_n,
                                                           "--max-n"),
        temperature=f.number("temperature", 1.0, 0.0, 2.0),
        top_p=f.number("top_p", 1.0, 0.0, 1.0) if f.given("top_p") else None,
        n=n, stop=stop, seed=seed if seed >= 0 else secrets.randbelow(2**31), stream=stream,
        include_usage=bool(options and options.get("include_usage")),
        logprobs=f.integer("logprobs", -1, 0, MAX_LOGPROBS) if f.given("logprobs") else None,
        echo=f.flag("echo"))
