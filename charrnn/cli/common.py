"""What every command shares: the group that maps domain errors to exits, stdin, JSON output and
the options several commands take. The CLI package is the only part of charrnn that imports click.

Contract: stdout carries data (generated text, results, --json); progress, logs and warnings go
to stderr. A domain error becomes one line on stderr and exit code 1 (run time) or 2 (usage).
torch is imported inside the commands, never at module level, so `charrnn --help` is instant.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

import click

from charrnn.config import MAX_THREADS
from charrnn.errors import CharrnnError, UsageError

ARCH_DEFAULTS = {"cell": "lstm", "layers": 1, "hidden": 384, "dropout": 0.0, "input": "embedding", "embed_dim": 64,
                 "weight_drop": 0.0, "embed_dropout": 0.0}


class CharrnnGroup(click.Group):
    """Turns every error into one line and its exit code, and guards the standard streams.

    Domain errors, Ctrl-C and a closed stdout pipe are mapped in `invoke`; click's own usage
    errors (bad int syntax, a missing option, a directory where a file is expected) in `main`,
    as one `Error: ...` line instead of click's "Usage: / Try ..." block.
    """

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        if hasattr(signal, "SIGXFSZ"):
            # Past a file-size limit (ulimit -f), a write should fail with EFBIG, which a save turns
            # into a clean error, instead of the signal killing the process with nothing said.
            with contextlib.suppress(ValueError):  # not the main thread
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        with guarded_streams():
            try:
                rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            except click.ClickException as e:
                message = " ".join(e.format_message().split())
                ctx = getattr(e, "ctx", None)
                if isinstance(e, click.UsageError) and ctx is not None:
                    message += f" (see '{ctx.command_path} --help')"
                click.echo(f"Error: {message}", err=True)
                sys.exit(e.exit_code)
            except click.Abort:  # Ctrl-C or end of input while click itself was reading
                click.echo("Aborted.", err=True)
                sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CharrnnError as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("Aborted.", err=True)
            ctx.exit(130)
        except (MemoryError, RuntimeError) as e:
            # torch reports a failed allocation as a RuntimeError; anything else is a bug to see whole.
            text = str(e)
            if not isinstance(e, MemoryError) and "allocate" not in text and "out of memory" not in text:
                raise
            first = text.splitlines()[0] if text else "a memory allocation failed"
            click.echo(f"Error: out of memory ({first}); try a smaller model, batch or --num-steps", err=True)
            ctx.exit(1)
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly, and keep Python from complaining
            # about the unflushed stdout at exit.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(0)


class _StderrGuard:
    """sys.stderr that survives its reader going away: on the first broken pipe, file descriptor 2
    is pointed at /dev/null and the run goes on (hours of training are worth more than progress
    lines). Everything else is the wrapped stream's."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def _guard(self, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except (BrokenPipeError, ConnectionResetError):
            silence_fd(self._fileno())
            return None

    def _fileno(self) -> int | None:
        try:
            return self._stream.fileno()
        except (AttributeError, OSError, ValueError):
            return None

    def write(self, text: str) -> int:
        written = self._guard(self._stream.write, text)
        return len(text) if written is None else written

    def flush(self) -> None:
        self._guard(self._stream.flush)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def silence_fd(fd: int | None) -> None:
    """Point `fd` at /dev/null (a reader that went away), so later writes succeed and vanish."""
    if fd is None:
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def write_stderr(data: bytes) -> None:
    """A raw write to fd 2 that never raises (for signal handlers)."""
    try:
        os.write(2, data)
    except OSError:
        pass


def stdout_is_unicode() -> bool:
    """Whether stdout's encoding can represent any character (else JSON is written with \\u escapes)."""
    encoding = (getattr(sys.stdout, "encoding", None) or "utf-8").lower().replace("_", "-")
    return encoding.startswith(("utf-8", "utf8", "utf-16", "utf-32"))


@contextlib.contextmanager
def guarded_streams() -> Iterator[None]:
    """For the length of a command: stderr survives a reader that goes away; text that stdout's
    encoding cannot represent is written as backslash escapes (\\xe9, \\u2014) instead of failing
    half-way through the output."""
    saved_err, saved_errors = sys.stderr, None
    if sys.stderr is not None:
        sys.stderr = _StderrGuard(sys.stderr)  # type: ignore[assignment]
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        saved_errors = sys.stdout.errors
        with contextlib.suppress(ValueError, OSError):
            reconfigure(errors="backslashreplace")
    try:
        yield
    finally:
        sys.stderr = saved_err
        if saved_errors is not None:
            with contextlib.suppress(ValueError, OSError):
                sys.stdout.reconfigure(errors=saved_errors)  # type: ignore[union-attr]


def stdin() -> Any:
    """Standard input as bytes, or None when it is closed (`<&-`); commands look it up here at call
    time, so tests can replace it."""
    return getattr(sys.stdin, "buffer", sys.stdin) if sys.stdin is not None else None


def json_line(obj: Any) -> str:
    """`obj` as one line of JSON for stdout, the one encoding of every --json output: non-finite numbers
    become null (JSON has no inf/nan), and characters stdout's encoding lacks become \\u escapes."""
    return json.dumps(finite_or_none(obj), ensure_ascii=not stdout_is_unicode(), allow_nan=False, default=str)


def json_out(obj: Any) -> None:
    click.echo(json_line(obj))


def finite_or_none(obj: Any) -> Any:
    """`obj` with every inf and nan float replaced by None, at any depth."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def num(x: float | None, fmt: str = ".4f") -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x, fmt)


device_option = click.option("--device", default="auto", show_default=True,
                             help="auto, cpu, cuda, cuda:N or mps (auto picks a GPU when there is one).")
label_option = click.option("--label", default=None,
                             help="A model trained with --labels: the label its text is conditioned on.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout instead of text.")
encoding_option = click.option("--encoding", default="utf-8", show_default=True, help="Text encoding of the input.")
model_option = click.option("-m", "--model", "model_path", required=True, type=click.Path(),
                            help="Checkpoint written by `charrnn train` (or a .safetensors file or model folder of "
                                 "`charrnn export`).")


class Finite(click.ParamType):
    """A finite float (NaN and infinity refused) within optional bounds, checked at the boundary."""

    name = "number"

    def __init__(self, low: float | None = None, high: float | None = None, *, low_open: bool = False,
                 high_open: bool = False) -> None:
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open

    def _range(self) -> str:
        lo = "" if self.low is None else f"{self.low:g} {'<' if self.low_open else '<='} "
        hi = "" if self.high is None else f" {'<' if self.high_open else '<='} {self.high:g}"
        return f"{lo}x{hi}"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            x = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(x):
            self.fail(f"{value} is not a finite number", param, ctx)
        if self.low is not None and (x < self.low or (self.low_open and x == self.low)) or \
                self.high is not None and (x > self.high or (self.high_open and x == self.high)):
            self.fail(f"{x:g} is not in the range {self._range()}", param, ctx)
        return x


class IntRange(click.IntRange):
    name = "integer"  # click's own says "'abc' is not a valid integer range"


def positive_int() -> click.IntRange:
    return IntRange(min=1)


threads_option = click.option(
    "--threads", type=IntRange(1, MAX_THREADS), default=None,
    help="CPU threads for the model's operators (default: chosen by timing the first units of work with 1 and "
         "with torch's default, and again when the speed drifts; OMP_NUM_THREADS, when set, fixes it too).")


# Seeds reach numpy's SeedSequence (non-negative only) and torch.manual_seed (at most 2**64 - 1).
SEED = IntRange(0, 2**63 - 1)


def read_head(text: str, encoding: str, max_chars: int, console: Any) -> tuple[str, str]:
    """(at most `max_chars` characters from the start of TEXT, a file, `-` or a corpus name, read no
    further than that; the text's name). Said on stderr when it cuts; --max-chars below 1 is a usage error."""
    from charrnn.data.corpora import source_parts, stream_text
    from charrnn.display import console as con

    if max_chars < 1:
        raise UsageError(f"--max-chars must be >= 1, got {max_chars}")
    parts = source_parts(text, stdin(), callbacks=con.DownloadConsole(console))
    chunks, size = [], 0
    for chunk in stream_text(parts, encoding):
        chunks.append(chunk)
        size += len(chunk)
        if size > max_chars:
            break
    body = "".join(chunks)
    if len(body) > max_chars:
        body = body[:max_chars]
        con.info(console, f"using the first {max_chars:,} characters of the text (--max-chars)")
    return body, parts[0].name if len(parts) == 1 else text


def check_picture(output: str | None, model_paths: tuple[str, ...] | list[str], text: str,
                  html: bool = False) -> str | None:
    """Before any work: the kind of picture -o asks for ('png', 'svg' or, where `html`, 'html') and its
    path (writable, none of the models or the text); None without -o."""
    from pathlib import Path

    from charrnn.display.figure import image_format
    from charrnn.outputs import check_output

    if output is None:
        return None
    check_output(output, [*((m, "a model (-m)") for m in model_paths), (text, "the text")], what="picture")
    if html and Path(output).suffix.lower() == ".html":
        kind = "html"
    else:
        try:
            kind = image_format(output)
        except UsageError:
            endings = ".png, .svg or .html" if html else ".png or .svg"
            raise UsageError(f"cannot tell what to write to {output!r}: use a name ending in {endings}") from None
    return kind


def use_colour(color: str, console: Any, page: str) -> bool | None:
    """--color always/never, or None (auto: the console decides) on a terminal; on a pipe auto means no
    colours, said on stderr with the alternatives (`page`: the option that writes a coloured page)."""
    chosen = {"always": True, "never": False}.get(color)
    if chosen is None and not sys.stdout.isatty():
        from charrnn.display import console as con

        con.info(console, f"stdout is not a terminal: no colours (use --color always, {page} or --json)")
        chosen = False
    return chosen


def read_prefix(prefix: str | None, prefix_file: str | None, encoding: str) -> str:
    """The prefix of `generate` and `complete`: --prefix, or the text of --prefix-file (`-`: stdin), or ""."""
    if prefix_file is None:
        return prefix or ""
    from charrnn.data.corpora import read_text

    return read_text(prefix_file, encoding, stdin())
