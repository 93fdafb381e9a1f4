"""Everything the user sees on stderr (progress, logs, warnings), and the coloured text views
(surprise, unit activations). The only module that imports rich.

On a terminal, training shows a live progress bar; otherwise (a pipe, a log file, CI) it writes
one plain line per report, so logs stay readable.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from charrnn.data.catalog import CorpusFile, FetchCallbacks
from charrnn.display.heattext import LEGEND, HeatRow, lines
from charrnn.display.heattext import colour as heat_colour
from charrnn.inference.evaluate import EvalResult
from charrnn.inference.surprise import MAX_BITS, STOPS, Surprise, colour, dark, hex_colour, visible
from charrnn.threads import Choice
from charrnn.training.callbacks import Callbacks
from charrnn.training.callbacks import Progress as TrainProgress


def make_console(quiet: bool = False) -> Console:
    """A console on stderr (stdout is reserved for data)."""
    return Console(stderr=True, quiet=quiet, highlight=False, soft_wrap=True)


def info(console: Console, message: str) -> None:
    console.print(message, markup=False)


def _eta(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def status_line(p: TrainProgress, val: str, eta: str, width: int) -> str:
    """The live progress line, at most `width - 1` columns: fields are dropped whole, least useful
    first, and a bar takes the room left, so a number is never cut in half (80 columns hold step,
    percentage, loss, validation perplexity, speed and ETA)."""
    fields = [  # (priority: lower is kept first, text) in display order
        (0, f"step {p.step:,}"), (1, f"{p.fraction:.0%}"), (None, ""), (2, f"loss {p.train_loss:.4f}"),
        (6, f"ppl {math.exp(min(p.train_loss, 700)):.2f}"), (3, f"val ppl {val}"),
        (4, f"{p.chars_per_second:,.0f} chars/s"), (7, f"lr {p.lr:.1e}"), (8, _eta(p.elapsed)), (5, f"ETA {eta}"),
    ]
    room = max(width - 1, 20)
    kept: set[int] = set()
    used = -1
    for prio, text in sorted((f for f in fields if f[0] is not None), key=lambda f: f[0]):  # type: ignore[arg-type, return-value]
        if used + 1 + len(text) > room:
            break
        kept.add(prio)
        used += 1 + len(text)
    parts = []
    for prio, text in fields:
        if prio is None:
            bar = room - used - 1
            if bar >= 10:  # only a bar worth seeing
                done = round(bar * min(max(p.fraction, 0.0), 1.0))
                parts.append("━" * done + "╺" * (done < bar) + " " * max(bar - done - 1, 0))
        elif prio in kept:
            parts.append(text)
    return " ".join(parts)


class TrainConsole(Callbacks):
    """Training progress on stderr: step, loss, perplexity, validation, chars/s, ETA; notices (how a
    resume continues, where an interrupted run saved) go to `notices`, which -q does not silence."""

    def __init__(self, console: Console, notices: Console | None = None) -> None:
        self.console = console
        self.notices = notices if notices is not None else console
        self.live = console.is_terminal and not console.quiet
        self.val = "-"
        self.average_note = ""  # from on_average, for the validation line that follows
        self.bar: Progress | None = None
        self.task: Any = None
        self.stop_code: int | None = None  # set by the CLI's signal handlers
        self.threads: int | None = None  # the last thread count said

    def stop_requested(self) -> int | None:
        return self.stop_code

    def on_message(self, message: str, notice: bool) -> None:
        info(self.notices if notice else self.console, message)

    def on_start(self, info: dict[str, Any]) -> None:
        resumed = f", resumed at step {info['resumed_at']}" if info["resumed_at"] is not None else ""
        processes = info.get("processes", 1)
        where = f"{info['device']}" + (f" x {processes} processes" if processes > 1 else "")
        self.console.print(
            f"training: {info['parameters']:,} parameters on {where} ({info.get('precision', 'fp32')}), "
            f"vocabulary {info['vocab_size']}, "
            f"{info['train_chars']:,} training / {info['val_chars']:,} validation characters, "
            f"{info['batches_per_epoch']:,} minibatches per epoch{resumed}", markup=False)
        for note in info.get("notes", ()):
            self.notices.print(note, markup=False)
        if self.live:
            # One text column that this class lays out to the terminal's width (see status_line).
            self.bar = Progress(TextColumn("{task.fields[line]}"), console=self.console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task("train", total=1.0, line="")

    def on_step(self, p: TrainProgress) -> None:
        eta = _eta(p.elapsed / p.fraction * (1 - p.fraction)) if p.fraction > 0 else "?"
        if self.bar is not None:
            self.bar.update(self.task, completed=p.fraction, line=status_line(p, self.val, eta, self.console.width))
        else:
            stats = (f"loss {p.train_loss:.4f} ppl {math.exp(min(p.train_loss, 700)):.2f} val ppl {self.val} "
                     f"{p.chars_per_second:,.0f} chars/s lr {p.lr:.2e}")
            self.console.print(f"step {p.step} epoch {p.epoch} {stats} elapsed {_eta(p.elapsed)} ETA {eta}",
                               markup=False)

    def on_average(self, step: int, raw: EvalResult, average: EvalResult, kind: str, kept: bool) -> None:
        # Said with the validation line that follows: both results, and which the checkpoints hold.
        self.average_note = (f" (raw weights {raw.nats_per_char:.4f}, {kind} average {average.nats_per_char:.4f}: "
                             f"kept {kind if kept else 'raw'})")

    def on_validate(self, step: int, result: EvalResult, improved: bool) -> None:
        self.val = f"{result.perplexity:.2f}"
        mark = " (best)" if improved else ""
        line = (f"step {step}: validation loss {result.nats_per_char:.4f} nats/char, perplexity "
                f"{result.perplexity:.3f}, {result.bits_per_char:.4f} bits/char{self.average_note}{mark}")
        self.average_note = ""
        (self.bar.console if self.bar is not None else self.console).print(line, markup=False)

    def on_threads(self, choice: Choice) -> None:
        # A trial that confirms the count in use is not news; the first choice and a change are.
        if choice.threads != self.threads:
            (self.bar.console if self.bar is not None else self.console).print(choice.describe(), markup=False)
        self.threads = choice.threads

    def on_save(self, path: str, reason: str) -> None:
        if reason == "interrupted":
            self.close()
            self.notices.print(f"saved {path}", markup=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


class DownloadConsole(FetchCallbacks):
    """Corpus downloads on stderr: a live bar on a terminal, one line at start and end otherwise."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal and not console.quiet
        self.bar: Progress | None = None
        self.task: Any = None

    def on_download_start(self, file: CorpusFile, url: str) -> None:
        self.console.print(f"downloading {url} ({file.bytes:,} bytes)", markup=False)
        if self.live:
            self.bar = Progress(TextColumn(file.path), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                                console=self.console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task("download", total=file.bytes)

    def on_progress(self, bytes_done: int, bytes_total: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=bytes_done, total=bytes_total or None)

    def on_download_end(self, file: CorpusFile, path: Path | None) -> None:
        self.close()
        if path is not None:
            self.console.print(f"verified sha256 and saved {path}", markup=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


class DataConsole(Console):
    """A console on stdout (the data): a reader that goes away (`| head`) raises BrokenPipeError, which the
    CLI maps as for every other command (exit 0, quietly), where rich's own would exit 1."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


def _data_console(file: TextIO, color: bool | None, width: int | None) -> Console:
    return DataConsole(file=file, highlight=False, soft_wrap=True, width=width,
                       force_terminal=True if color else None, no_color=color is False,
                       color_system="truecolor" if color else "auto")


def surprise_view(blocks: Surprise | Iterable[Surprise], file: TextIO, color: bool | None = None,
                  width: int | None = None) -> None:
    """The text with every character's background coloured by its surprise, between a legend of
    the scale and a line with the mean, written to `file` (stdout: it is the data). color None: only
    when `file` is a terminal. `blocks` are consecutive pieces of the text (surprise.score_blocks),
    drawn one at a time, so memory is one block however long the text."""
    out = _data_console(file, color, width)
    legend = Text("surprise (bits): ")
    for bits, rgb in STOPS:
        legend.append(f" {bits:g}{'+' if bits == MAX_BITS else ''} ", style=_surprise_style(rgb))
    out.print(legend)
    styles: dict[tuple[int, int, int], str] = {}
    total, scored, ends_line = 0.0, 0, True
    for s in [blocks] if isinstance(blocks, Surprise) else blocks:
        text = Text()
        for i, c in enumerate(s.text):
            rgb = colour(s.char_bits(i))
            style = "" if rgb is None else styles.setdefault(rgb, _surprise_style(rgb))
            text.append(visible(c), style=style)
            if c == "\n":
                text.append("\n")
        out.print(text, end="")
        total, scored = total + s.total_bits, scored + s.scored
        ends_line = s.text.endswith("\n") if s.text else ends_line
    if not ends_line:
        out.print()
    out.print(f"mean {total / scored:.3f} bits/char over {scored:,} scored characters" if scored
              else "no character scored", markup=False)


def _surprise_style(rgb: tuple[int, int, int]) -> str:
    return f"{'#ffffff' if dark(rgb) else '#000000'} on {hex_colour(rgb)}"


def heat_view(text: str, rows: list[HeatRow], file: TextIO, color: bool | None = None,
              width: int | None = None) -> None:
    """The text with every character's background coloured by a unit's activation (-1 blue, +1 red),
    one row per unit under each line of the text, and a legend, written to `file` (stdout: it is the
    data). color None: only when `file` is a terminal."""
    out = _data_console(file, color, width)
    legend = Text("activation (tanh(c) or h): ")
    for v in LEGEND:
        legend.append(f" {v:+g} ", style=_surprise_style(heat_colour(v)))
    out.print(legend)
    if len(rows) > 1:
        for row in rows:
            out.print(Text(f"  {row.label}"))
    pad = max((len(row.label.split()[0]) for row in rows), default=0) + 2 if len(rows) > 1 else 0
    for start, end in lines(text):
        for row in rows:
            line = Text()
            if pad:
                line.append(f"{row.label.split()[0]:<{pad}}", style="dim")
            for i in range(start, end):
                line.append(visible(text[i]), style=_surprise_style(heat_colour(float(row.values[i]))))
            out.print(line)
        if len(rows) > 1:
            out.print("")
