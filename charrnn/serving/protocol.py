"""The requests a served model answers (`charrnn serve`, on stdin/stdout or over HTTP): their
limits, their fields and the checks that turn a decoded JSON body into a request, or refuse it.

Plain Python, no torch: the CLI reads the limits at import time for its flags. Every refusal is a
RequestError (charrnn.errors) with a one-line message naming the field and an HTTP status: 400
malformed, 404 unknown model, 413 too large, 422 wrong type or value. Types are strict: a bool is
not a number, an integer field refuses 5.0, a float must be finite, an unknown field is refused by
name (a misspelt `temprature` must not be silently ignored). `op` and `id` may appear in every body:
the line protocol needs them, HTTP ignores them.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from dataclasses import dataclass, fields
from typing import Any

from charrnn.data.labels import MAX_LABEL_CHARS
from charrnn.errors import RequestError
from charrnn.inference.forms import DEFAULT_LINE_ENDS, DEFAULT_PLACEHOLDER
from charrnn.inference.genplan import GenerateOptions

SEED_MAX = 2**63 - 1  # as `charrnn generate --seed`
UNK = ("error", "map")
ENVELOPE = ("op", "id")
MAX_DIGITS = 100  # of a JSON integer (seeds take 19): a longer one is refused before Python converts it
SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class ServerOptions:
    """How the HTTP server runs (`charrnn serve`'s flags take their defaults here; the limits of one
    request are Limits, below)."""

    host: str = "127.0.0.1"
    port: int = 8000
    batch_wait_ms: float = 2.0  # how long an idle model's worker waits for more requests to batch with the first
    max_queue: int = 256  # requests waiting per model (and in the shared pool) before a 503
    max_streams: int = 256  # generate streams a model advances together
    pool_threads: int = 2  # threads for score, next words and generate with stop strings or beam search
    max_requests: int = 1000  # requests in progress at once before a 503
    shutdown_timeout: float = 30.0  # seconds requests in flight get to finish on SIGTERM, SIGHUP or Ctrl-C
    header_timeout: float = 10.0  # seconds a connection may take to send a whole request head
    body_timeout: float = 30.0  # seconds a request's body may take to arrive once its head has
    send_timeout: float = 30.0  # seconds a streamed answer waits for a client that reads nothing
    max_connections: int = 512  # connections open at once (fewer where the descriptor limit leaves less room)
    allow_host: tuple[str, ...] = ()  # Host names served besides IP addresses, localhost and --host ("*": any)
    threads: int = 1  # torch's threads within one operation (the server's work is many small operations)
    api_key: str | None = None  # when set, the model routes want `Authorization: Bearer api_key`


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. The defaults keep one request of a served model under about a
    second of CPU for a mid-sized model; `charrnn serve --max-...` changes each."""

    max_body_bytes: int = 1 << 20  # an HTTP body, or one line of the line protocol (1 MiB)
    max_prefix_chars: int = 100_000  # characters of a prefix (next, generate)
    max_n: int = 10_000  # characters generated per sample (generate's n)
    max_num_samples: int = 64  # samples of one generate request
    max_beam: int = 64  # beam width of generate
    max_k: int = 1_000  # next: k, and words
    max_stops: int = 16  # stop strings of one generate request
    max_records: int = 1_000  # records of one score request
    max_record_chars: int = 100_000  # characters of one record

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise RequestError(422, f"--{f.name.replace('_', '-')} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class NextRequest:
    prefix: str = ""
    k: int = 10
    words: int | None = None  # the k likeliest next words instead of characters
    unk: str = "map"  # as `charrnn complete`
    label: str | None = None  # a label-conditioned model's label
    model: str | None = None


@dataclass(frozen=True)
class GenerateRequest(GenerateOptions):
    """The options of `charrnn generate` (charrnn.inference.genplan), and how the answer is given."""

    seed: int = 0  # parse_generate draws one when the body has none
    echo: bool = False  # put the prefix in front of each sample (`charrnn generate` does by default)
    stream: bool = False  # HTTP only: the characters as they are made
    model: str | None = None


@dataclass(frozen=True)
class ScoreRequest:
    records: tuple[str, ...] = ()
    end: bool = True  # score the delimiter after each record (false: `eval score --no-end`)
    delimiter: str | None = None  # read before (and after) each record; a records model uses its own
    model: str | None = None


def _shown(key: Any) -> str:
    text = str(key)
    return repr(text if len(text) <= 40 else text[:40] + "...")


class _Body:
    """A decoded JSON object whose fields are taken one by one; `done()` refuses any left over."""

    def __init__(self, body: Any, op: str, allowed: tuple[str, ...]) -> None:
        if not isinstance(body, dict):
            raise RequestError(400, f"a {op} request must be a JSON object, got {json_kind(body)}")
        self.body, self.op = body, op
        unknown = [k for k in body if k not in allowed and k not in ENVELOPE]
        if unknown:
            known = f"its fields are {', '.join(allowed)}" if allowed else "it takes no field but \"op\" and \"id\""
            raise RequestError(422, f"unknown field {_shown(unknown[0])} in a {op} request ({known})")

    def text(self, key: str, default: str | None, limit: int | None = None) -> str | None:
        value = self.body.get(key, default)
        if value is None and default is None:
            return None
        if not isinstance(value, str):
            raise RequestError(422, f'"{key}" must be a string, got {json_kind(value)}')
        if limit is not None and len(value) > limit:
            raise RequestError(413, f'"{key}" has {len(value):,} characters, more than the limit of {limit:,}')
        return value

    def integer(self, key: str, default: int | None, low: int, high: int, limit_flag: str | None = None) -> int | None:
        """The field, or `default` cut to the server's limit `high` when the body has none."""
        if key not in self.body:
            return None if default is None else min(default, high)
        value = self.body[key]
        if value is None and default is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise RequestError(422, f'"{key}" must be an integer, got {json_kind(value)}')
        if not low <= value <= high:
            cap = f" (the server's limit, {limit_flag})" if limit_flag and value > high else ""
            raise RequestError(422, f'"{key}" must be an integer from {low} to {high:,}{cap}, got {value}')
        return value

    def number(self, key: str, default: float | None, low: float, high: float, low_open: bool) -> float | None:
        value = self.body.get(key, default)
        if value is None and (key not in self.body or default is None):
            return None
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise RequestError(422, f'"{key}" must be a finite number, got {json_kind(value)}')
        if value < low or value > high or (low_open and value == low):
            where = f"({low:g}, {high:g}]" if low_open else f"[{low:g}, {high:g}]"
            raise RequestError(422, f'"{key}" must be in {where}, got {value:g}')
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self.body.get(key, default)
        if not isinstance(value, bool):
            raise RequestError(422, f'"{key}" must be true or false, got {json_kind(value)}')
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(key, default)
        if value not in choices:
            raise RequestError(422, f'"{key}" must be one of {", ".join(choices)}, got {_shown(value)}')
        return value  # type: ignore[return-value]

    def strings(self, key: str, max_items: int, max_chars: int, one_allowed: bool) -> tuple[str, ...]:
        """A list of strings (or, where `one_allowed`, one string), within the limits."""
        value = self.body.get(key, [])
        if one_allowed and isinstance(value, str):
            value = [value]
        what = "a string or an array of strings" if one_allowed else "an array of strings"
        if not isinstance(value, list):
            raise RequestError(422, f'"{key}" must be {what}, got {json_kind(value)}')
        for i, v in enumerate(value):
            if not isinstance(v, str):
                raise RequestError(422, f'"{key}" must be {what}, got {json_kind(v)} at [{i}]')
        if len(value) > max_items:
            raise RequestError(413, f'"{key}" has {len(value):,} items, more than the limit of {max_items:,}')
        for i, v in enumerate(value):
            if len(v) > max_chars:
                raise RequestError(413, f'"{key}"[{i}] has {len(v):,} characters, more than the limit of '
                                        f'{max_chars:,}')
        return tuple(value)


def json_kind(value: Any) -> str:
    """What a wrong value is, in JSON's words, for a message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return repr(value) if abs(value) < 10**20 else f"a number of {len(str(abs(value)))} digits"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else "a non-finite number"
    if isinstance(value, str):
        return f"the string {_shown(value)}"
    return "an array" if isinstance(value, list) else "an object"


def _no_constant(name: str) -> Any:
    raise RequestError(400, f"malformed JSON: {name} is not a JSON number")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise RequestError(400, f"malformed JSON: a number of {len(text.lstrip('-')):,} digits (no field takes more "
                                f"than {MAX_DIGITS})")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise RequestError(400, f"malformed JSON: the number {text[:40]} is out of range")
    return value


def decode_json(data: bytes, limits: Limits) -> Any:
    """A request body (or a line of the line protocol) -> its JSON value: UTF-8, at most
    `limits.max_body_bytes`, strict JSON (no NaN or Infinity), else a RequestError (413 or 400)."""
    if len(data) > limits.max_body_bytes:
        raise RequestError(413, f"the request has {len(data):,} bytes, more than the limit of "
                                f"{limits.max_body_bytes:,} (--max-body-bytes)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(400, f"the request is not UTF-8 (byte {e.start})") from None
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except json.JSONDecodeError as e:
        raise RequestError(400, f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise RequestError(400, "malformed JSON: arrays or objects nested too deeply") from None
    _refuse_lone_surrogates(value)
    return value


def _refuse_lone_surrogates(value: Any) -> None:
    """A 400 for a string (or key) holding half of a UTF-16 surrogate pair alone ("\\ud800"): valid JSON,
    but not a character; no model knows it and no answer could carry it as UTF-8. Walked with a stack,
    since a body may nest as deep as the JSON decoder allows."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            for key, v in item.items():
                _check_text(key, f"the key {where}{_shown(key)}")
                stack.append((v, f"{where}{_quoted(key)}" if not where else f"{where}[{_quoted(key)}]"))
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
        elif isinstance(item, str):
            _check_text(item, where or "the request")


def _quoted(key: str) -> str:
    return json.dumps(key if len(key) <= 40 else key[:40] + "...", ensure_ascii=True)


def _check_text(text: str, where: str) -> None:
    found = SURROGATE.search(text)
    if found:
        raise RequestError(400, f"{where} holds \\u{ord(found.group()):04x} alone, half of a UTF-16 surrogate pair: "
                                "not a character (send the pair, or the character as UTF-8)")


def model_name(body: Any) -> str | None:
    """The "model" field of a request, checked (None: the default model)."""
    if not isinstance(body, dict) or body.get("model") is None:
        return None
    if not isinstance(body["model"], str):
        raise RequestError(422, f'"model" must be a string, got {json_kind(body["model"])}')
    return body["model"]


def parse_next(body: Any, limits: Limits) -> NextRequest:
    """The body of a `next` request: {"prefix", "k", "words", "unk", "label", "model"}."""
    b = _Body(body, "next", ("prefix", "k", "words", "unk", "label", "model"))
    return NextRequest(prefix=b.text("prefix", "", limits.max_prefix_chars) or "",
                       k=b.integer("k", 10, 1, limits.max_k, "--max-k") or 10,
                       words=b.integer("words", None, 1, limits.max_k, "--max-k"),
                       unk=b.choice("unk", "map", UNK), label=b.text("label", None, MAX_LABEL_CHARS),
                       model=model_name(body))


GENERATE_FIELDS = ("prefix", "n", "temperature", "top_k", "top_p", "greedy", "seed", "num_samples", "stop",
                   "min_length", "beam", "novel", "echo", "unk", "stream", "acrostic", "template", "placeholder",
                   "line_ends", "label", "model")


def parse_generate(body: Any, limits: Limits) -> GenerateRequest:
    """The body of a `generate` request (the options of `charrnn generate` by their long names, with
    underscores). Without "seed", a random one is drawn here, and the answer reports it."""
    b = _Body(body, "generate", GENERATE_FIELDS)
    n = b.integer("n", 500, 0, limits.max_n, "--max-n")
    assert n is not None
    seed = b.integer("seed", None, 0, SEED_MAX)
    req = GenerateRequest(
        prefix=b.text("prefix", "", limits.max_prefix_chars) or "", n=n,
        temperature=b.number("temperature", 1.0, 0.0, math.inf, low_open=True) or 1.0,
        top_k=b.integer("top_k", None, 1, SEED_MAX), top_p=b.number("top_p", None, 0.0, 1.0, low_open=True),
        greedy=b.flag("greedy", False), seed=seed if seed is not None else secrets.randbelow(2**31),
        num_samples=b.integer("num_samples", 1, 1, limits.max_num_samples, "--max-num-samples") or 1,
        stop=b.strings("stop", limits.max_stops, limits.max_prefix_chars, one_allowed=True),
        min_length=b.integer("min_length", None, 0, n), beam=b.integer("beam", None, 1, limits.max_beam, "--max-beam"),
        novel=b.flag("novel", False), echo=b.flag("echo", False), unk=b.choice("unk", "error", UNK),
        stream=b.flag("stream", False), acrostic=b.text("acrostic", None, limits.max_n),
        # A template is the whole sample: as long as "n" may be.
        template=b.text("template", None, limits.max_n),
        placeholder=b.text("placeholder", DEFAULT_PLACEHOLDER) or DEFAULT_PLACEHOLDER,
        line_ends=b.text("line_ends", DEFAULT_LINE_ENDS, limits.max_prefix_chars) or "",
        label=b.text("label", None, MAX_LABEL_CHARS), model=model_name(body))
    if any(not s for s in req.stop):
        raise RequestError(422, '"stop" must not hold an empty string (it would match everywhere)')
    if req.beam is not None:
        if not (req.temperature == 1 and req.top_k is None and req.top_p in (None, 1) and not req.greedy):
            raise RequestError(422, '"beam" is deterministic: "temperature" (other than 1), "top_k", "top_p" '
                                    '(below 1) and "greedy" do not apply')
        if req.num_samples > req.beam:
            raise RequestError(422, f'"num_samples" must be at most "beam" ({req.beam}) with beam search, '
                                    f'got {req.num_samples}')
        if req.stream:
            raise RequestError(422, '"stream" does not apply to "beam": beam search finds its results at the end')
    if (req.beam is not None or req.stop) and n < 1:
        raise RequestError(422, '"n" must be >= 1 with "stop" or "beam", got 0')
    return req


def parse_score(body: Any, limits: Limits) -> ScoreRequest:
    """The body of a `score` request: {"records": [...], "end", "delimiter", "model"}."""
    b = _Body(body, "score", ("records", "end", "delimiter", "model"))
    if "records" not in body:
        raise RequestError(422, '"records" is missing: a score request needs a list of strings')
    records = b.strings("records", limits.max_records, limits.max_record_chars, one_allowed=False)
    delimiter = b.text("delimiter", None, limits.max_prefix_chars)
    if delimiter == "":
        raise RequestError(422, '"delimiter" must not be empty')
    return ScoreRequest(records=records, end=b.flag("end", True), delimiter=delimiter, model=model_name(body))


def parse_models(body: Any, limits: Limits) -> None:
    """The body of a `models` request: nothing but the envelope."""
    _Body(body, "models", ())
