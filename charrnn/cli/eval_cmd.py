"""`charrnn eval`: measure a model on text."""

from __future__ import annotations

import math
from typing import Any

import click

from charrnn.cli import common
from charrnn.cli.common import (
    Finite,
    device_option,
    encoding_option,
    json_line,
    json_option,
    json_out,
    model_option,
    positive_int,
    threads_option,
)
from charrnn.errors import UsageError

SPLIT_HELP = ("Score one part of TEXT: of a catalog corpus with official splits (ptb-char), that part; of any "
              "other text, the part the model's training used (train) or held out (valid), as its checkpoint "
              "records the cut (the text must be the training text).")

NO_TEST = ("--split test: {} has no official test part (a corpus with official splits, such as ptb-char, has "
           "one); a model's own split has the parts train and valid")


@click.group(name="eval")
def eval_group() -> None:
    """Measure a model on text."""


@eval_group.command()
@model_option
@click.argument("text", default="-")
@encoding_option
@click.option("--unk", type=click.Choice(["map", "error"]), default="map", show_default=True,
              help="Characters the model does not know: skip them as targets (map) or fail (error).")
@click.option("--streams", default=None, type=positive_int(),
              help="Score the text as this many contiguous pieces side by side, each carrying its own state "
                   "(faster); 1 scores it as one sequence.  [default: 64; 1 with --dynamic]")
@click.option("-t", "--num-steps", default=256, type=positive_int(), show_default=True,
              help="Characters per forward call.")
@click.option("--split", type=click.Choice(["test", "valid", "train"]), default=None,
              help=SPLIT_HELP)
@click.option("--dynamic", is_flag=True,
              help="Also report dynamic evaluation: the model adapts to the text as it reads it (Krause et al. "
                   "2017), a figure of its own beside the static one.")
@click.option("--dynamic-lr", type=Finite(0), default=None,
              help="Step size of dynamic evaluation (default 1e-3; 0: no adaptation).")
@click.option("--dynamic-decay", type=Finite(0, 1), default=None,
              help="Pull towards the trained weights at each step of dynamic evaluation (default 1e-2).")
@click.option("--dynamic-segment", type=positive_int(), default=None,
              help="Characters scored between two steps of dynamic evaluation (default 20).")
@click.option("--dynamic-eps", type=Finite(0, low_open=True), default=None,
              help="Added to the RMS gradient in the step of dynamic evaluation (default 2e-5).")
@click.option("--dynamic-stats", type=click.Path(dir_okay=False), default=None,
              help="Take dynamic evaluation's gradient statistics from this text (the training text; its first "
                   "100,000 characters) instead of gathering them on TEXT as it is read.")
@device_option
@threads_option
@json_option
def perplexity(model_path: str, text: str, encoding: str, unk: str, streams: int | None, num_steps: int,
               split: str | None, device: str, threads: int | None, as_json: bool, **dynamic: Any) -> None:
    """Perplexity and bits per character of MODEL on TEXT (a file, `-` for stdin, `pydoc` or a
    catalog corpus name; for one with official splits, choose the part with --split).

    Every character after the first is predicted from all before it; perplexity is
    exp(mean cross-entropy in nats), bits/char = nats / ln 2. --json also gives the CPU threads used.
    """
    from charrnn.data.cache import encode_corpus
    from charrnn.data.corpora import catalog_entry, part_of, source_parts
    from charrnn.display import console as con
    from charrnn.inference.evaluate import UNKNOWN_WARN_SHARE, evaluate
    from charrnn.model.checkpoint import load_model
    from charrnn.model.network import resolve_device
    from charrnn.threads import make_chooser

    settings = _dynamic_settings(dynamic)
    config = _dynamic_config(settings)  # before any work: a value out of range is a usage error at once
    stats_parts = _stats_parts(settings)  # before any work: a missing stats file fails at once
    streams = streams if streams is not None else (1 if settings is not None else 64)
    if streams < 1 or num_steps < 1:
        raise UsageError("--streams and --num-steps must be >= 1")
    entry = catalog_entry(text)
    if split is None and entry is not None and entry.has_splits:
        raise UsageError(f"{text} has official splits: choose the part to score with --split test, valid or train")
    dev = resolve_device(device)
    chooser = make_chooser(threads, dev)
    if split == "test" and not (entry is not None and entry.has_splits):
        raise UsageError(NO_TEST.format(_shown(text)))
    model, vocab, ckpt = load_model(model_path, dev)
    fetching = con.DownloadConsole(con.make_console())
    official = split is not None and entry is not None and entry.has_splits
    parts = [part_of(text, split, callbacks=fetching)] if official else source_parts(text, common.stdin(),
                                                                                     callbacks=fetching)
    # Streamed and encoded chunk by chunk: memory is the ids (1 to 4 bytes per character), not the text.
    ids = encode_corpus(parts, encoding, vocab=vocab, unk=unk, where="the text", cache=False).ids  # type: ignore[arg-type]
    if split is not None and not official:
        from charrnn.data.splits import split_bounds

        start, end = split_bounds(ids, vocab, ckpt, split, _shown(text))
        ids = ids[start:end]
    result = evaluate(model, ids, unk_id=vocab.unk_id, streams=streams, num_steps=num_steps, threads=chooser)
    if result.unknown_share > UNKNOWN_WARN_SHARE:
        con.info(con.make_console(), f"warning: {result.unknown:,} of {result.chars + result.unknown:,} characters "
                                     f"({result.unknown_share:.1%}) are unknown to the model and were not scored: "
                                     "the result describes the rest of the text only")
    lines = (f"perplexity {result.perplexity:.4f}\nnats/char {result.nats_per_char:.4f}\n"
             f"bits/char {result.bits_per_char:.4f}\nchars {result.chars}\nunknown {result.unknown}")
    out = {**result.to_dict(), "threads": chooser.threads}
    if config is not None:
        from charrnn.inference.dynamic import check_segment

        check_segment(config, len(ids))  # after evaluate, which says first what is wrong with the text itself
        dyn = _run_dynamic(model, vocab, ids, config, settings["dynamic_stats"], stats_parts, encoding)
        out["dynamic"] = dyn
        lines += (f"\ndynamic perplexity {dyn['perplexity']:.4f}\ndynamic nats/char {dyn['nats_per_char']:.4f}\n"
                  f"dynamic bits/char {dyn['bits_per_char']:.4f}")
    if as_json:
        json_out(out)
    else:
        click.echo(lines)


def _dynamic_settings(options: dict[str, Any]) -> dict[str, Any] | None:
    """The --dynamic-* options (None for those not given) when --dynamic is on, else None; a usage
    error for a --dynamic-* option without --dynamic."""
    on = options.pop("dynamic")
    given = [f"--{k.replace('_', '-')}" for k, v in options.items() if v is not None]
    if not on:
        if given:
            raise UsageError(f"{given[0]} applies to dynamic evaluation: add --dynamic")
        return None
    return options


def _stats_parts(settings: dict[str, Any] | None) -> list[Any] | None:
    """The parts of the --dynamic-stats text: a file, or a catalog corpus (its train part when it has
    official splits); None when not given."""
    from charrnn.data.corpora import catalog_entry, part_of, source_parts

    source = settings.get("dynamic_stats") if settings is not None else None
    if source is None:
        return None
    if source == "-":
        raise UsageError("--dynamic-stats must be a file or a corpus name, not standard input")
    entry = catalog_entry(source)
    if entry is not None and entry.has_splits:
        return [part_of(source, "train")]
    return source_parts(source)


def _dynamic_config(settings: dict[str, Any] | None) -> Any:
    """The DynamicConfig of the --dynamic-* settings (their defaults where not given); None without --dynamic."""
    if settings is None:
        return None
    from charrnn.inference import dynamic as dy

    return dy.DynamicConfig(
        lr=dy.DEFAULT_LR if settings["dynamic_lr"] is None else settings["dynamic_lr"],
        decay=dy.DEFAULT_DECAY if settings["dynamic_decay"] is None else settings["dynamic_decay"],
        segment=settings["dynamic_segment"] or dy.DEFAULT_SEGMENT,
        eps=dy.DEFAULT_EPS if settings["dynamic_eps"] is None else settings["dynamic_eps"])


def _run_dynamic(model: Any, vocab: Any, ids: Any, config: Any, stats_source: str | None,
                 stats_parts: list[Any] | None, encoding: str) -> dict[str, Any]:
    """Dynamic evaluation of MODEL on `ids` under `config`: its result and settings."""
    from charrnn.data.cache import encode_corpus
    from charrnn.display import console as con
    from charrnn.inference import dynamic as dy

    stats = None
    if stats_parts is not None:
        stats_ids = encode_corpus(stats_parts, encoding, vocab=vocab, unk="map", where="the --dynamic-stats text",
                                  cache=False).ids
        stats = dy.collect_stats(model, stats_ids, segment=config.segment, unk_id=vocab.unk_id)
    con.info(con.make_console(), f"dynamic evaluation: {len(ids) - 1:,} characters, a step every {config.segment}")
    result = dy.dynamic_evaluate(model, ids, config=config, unk_id=vocab.unk_id, stats=stats)
    return {**result.to_dict(), **config.to_dict(),
            "stats": "causal" if stats is None else stats_source}

DEFAULT_SHOW_CHARS = 10_000


@eval_group.command()
@model_option
@click.argument("text", default="-")
@encoding_option
@click.option("--html", "html_path", type=click.Path(dir_okay=False),
              help="Write one self-contained HTML page instead: hover a character to see the top 5 predictions.")
@click.option("--json", "as_json", is_flag=True,
              help="JSON Lines on stdout instead, one object per character: char, bits, top.")
@click.option("--max-chars", default=DEFAULT_SHOW_CHARS, show_default=True,
              help="Show at most this many characters from the start of the text (said on stderr when it cuts); "
                   "at most 100,000 with --html.")
@click.option("--color", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True,
              help="Colours in the terminal view: auto uses them when stdout is a terminal (always: for less -R).")
@device_option
def show(model_path: str, text: str, encoding: str, html_path: str | None, as_json: bool, max_chars: int,
         color: str, device: str) -> None:
    """TEXT coloured by how surprised MODEL is by each character (a file, `-` for stdin, `pydoc` or a
    catalog corpus name).

    The surprise of a character is -log2 of the probability the model gave it, from everything
    before it: pale where the model was sure, dark red where it was lost (8 bits and more). The
    first character and characters the model does not know are not scored.

    \b
    charrnn eval show -m model.pt notes.txt
    charrnn eval show -m model.pt notes.txt --html notes.html
    charrnn eval show -m model.pt notes.txt --json | jq -c 'select(.bits > 8)'
    """
    import sys
    from pathlib import Path

    from charrnn.display import console as con
    from charrnn.inference.surprise import HTML_MAX_CHARS, html_pieces, score, score_blocks
    from charrnn.model.checkpoint import load_model
    from charrnn.model.network import resolve_device
    from charrnn.outputs import check_output, write_atomic

    if max_chars < 1:
        raise UsageError(f"--max-chars must be >= 1, got {max_chars}")
    if html_path is not None and as_json:
        raise UsageError("give --html or --json, not both")
    if html_path is not None and max_chars > HTML_MAX_CHARS:
        raise UsageError(f"an --html page holds at most {HTML_MAX_CHARS:,} characters (about 200 bytes of HTML "
                         f"each), got --max-chars {max_chars:,}: the terminal view and --json have no such limit")
    if html_path is not None:
        check_output(html_path, [(text, "the text to show"), (model_path, "the model (-m)")], what="HTML page")
    model, vocab, _ = load_model(model_path, resolve_device(device))
    console = con.make_console()
    body, _ = common.read_head(text, encoding, max_chars, console)
    if html_path is not None:
        # The page is held whole for the atomic write, in bytes as its pieces come (HTML_MAX_CHARS bounds it).
        page = bytearray()
        title = f"charrnn surprise: {Path(model_path).name} on {text}"
        for piece in html_pieces(score(model, vocab, body), title=title):
            page += piece.encode("utf-8")
        write_atomic(html_path, page)
        con.info(console, f"wrote {html_path} ({len(body):,} characters)")
        return
    blocks = score_blocks(model, vocab, body)  # scored and written a block at a time: bounded memory
    if as_json:
        for block in blocks:
            for record in block.records():
                click.echo(json_line(record))
    else:
        con.surprise_view(blocks, sys.stdout, color=common.use_colour(color, console, "--html"))


@eval_group.command()
@click.option("-m", "--model", "model_paths", required=True, multiple=True, type=click.Path(),
              help="Checkpoint written by `charrnn train`; repeat for several models (one score each, and the best).")
@click.argument("text", default="-")
@encoding_option
@click.option("--delimiter", default=None,
              help="What ends a record, with backslash escapes: '\\0' (find -print0), '\\n\\n' (paragraphs). "
                   "Default: a newline, or the delimiter the models were trained on with --partition records.")
@click.option("--no-end", is_flag=True, help="Do not score the delimiter after each record.")
@click.option("--header", is_flag=True, help="Start the text output with a line naming the columns.")
@click.option("--skip-empty", is_flag=True,
              help="Leave out empty records (blank lines): each scores only its delimiter, all alike, and would "
                   "top a ranking by surprise.")
@click.option("--split", type=click.Choice(["test", "valid", "train"]), default=None,
              help=SPLIT_HELP + " TEXT may then be a catalog corpus too, and is read whole before scoring.")
@device_option
@threads_option
@click.option("--json", "as_json", is_flag=True, help="JSON Lines: one object per record.")
def score(model_paths: tuple[str, ...], text: str, encoding: str, delimiter: str | None, no_end: bool,
          header: bool, skip_empty: bool, split: str | None, device: str, threads: int | None,
          as_json: bool) -> None:
    """Score every record (line) of TEXT (a file or `-` for stdin) with each MODEL: one output line
    per record, in input order, streamed (an endless stdin works, in bounded memory).

    \b
    Text output, tab-separated, numbers first (`sort -n`, `awk`, `cut`), the record last:
      one model:    nats/char  bits/char  nats  chars  unknown  record
      several:      cost of each model (in -m order)  best model  record
    Records (and model paths) are written with \\n, \\t, \\r, \\0 and \\\\ escaped so that each
    stays on one line; a record with nothing scored shows nan (and `-` as best). One model skips
    the characters it cannot read (counted as unknown). Several models are compared on the same
    characters: a model's cost is nats per character of the record, each character it cannot read
    charged ln(1114112) = 13.92 nats (a guess among all Unicode characters); best is the lowest
    cost. A warning on stderr names a model that cannot read more than 5% of a record. --json
    gives JSON Lines with the keys text, chars, unknown, nats, nats_per_char, bits_per_char (null
    when nothing was scored), and with several models also scores (path -> cost) and best (the
    other numbers are then the best model's own).
    """
    import sys

    from charrnn.data.corpora import iter_decoded
    from charrnn.data.records import byte_chunks, split_records, unescape
    from charrnn.display import console as con
    from charrnn.inference.score import Scorer, score_stream
    from charrnn.model.checkpoint import load_model, record_delimiter
    from charrnn.model.network import resolve_device
    from charrnn.threads import make_chooser

    paths = list(model_paths)
    _refuse_repeated_models(paths)
    dev = resolve_device(device)
    chooser = make_chooser(threads, dev)
    loaded = [load_model(path, dev) for path in paths]
    trained = {record_delimiter(ckpt) for _, _, ckpt in loaded} - {None}
    if delimiter is not None:
        split_on = unescape(delimiter)
    elif len(trained) > 1:
        raise UsageError("the models were trained on different record delimiters: choose one with --delimiter")
    else:
        split_on = next(iter(trained), "\n")
    # A records model reads the delimiter it was trained on (its record-start state); others read ours.
    scorers = [Scorer(model, vocab, record_delimiter(ckpt) or split_on) for model, vocab, ckpt in loaded]
    found = []
    if split is not None:
        texts: Any = iter([_part_text(text, encoding, split, loaded)])
    else:
        stream, name = _open_records(text)
        texts = iter_decoded(byte_chunks(stream, name), encoding, name, allow_nul="\0" in split_on)
    records = split_records(texts, split_on, on_end=found.append)
    if skip_empty:
        records = ([r for r in window if r] for window in records)
    out = sys.stdout
    writer = _ScoreWriter(out, paths, as_json, con.make_console())
    if header and not as_json:
        writer.header()
    for window in score_stream(scorers, records, end=not no_end, threads=chooser):
        writer.write(window)
        out.flush()  # a window is what one read brought: answer a slow stream as it comes
    writer.finish()
    if found and found[0] == 0 and writer.count == 1:
        con.info(writer.console, f"note: the delimiter {_shown(split_on)} never occurs in the input: "
                                 "it was scored as one record")


def _part_text(text: str, encoding: str, split: str, loaded: list[Any]) -> str:
    """The text of part `split` of TEXT for `eval score`: an official part of a catalog corpus, else the
    part every model's training used or held out (they must agree on where it is)."""
    from charrnn.data.corpora import catalog_entry, part_of, source_parts
    from charrnn.data.splits import split_bounds
    from charrnn.display import console as con

    entry = catalog_entry(text)
    fetching = con.DownloadConsole(con.make_console())
    if entry is not None and entry.has_splits:
        return "".join(part_of(text, split, callbacks=fetching).texts(encoding))
    if split == "test":
        raise UsageError(NO_TEST.format(_shown(text)))
    whole = "".join(t for part in source_parts(text, common.stdin(), callbacks=fetching) for t in part.texts(encoding))
    bounds = {split_bounds(vocab.encode(whole, unk="map" if vocab.unk_id is not None else "error", where=_shown(text)),
                           vocab, ckpt, split, _shown(text)) for _, vocab, ckpt in loaded}
    if len(bounds) > 1:
        raise UsageError(f"--split {split}: the models were trained with different splits of {_shown(text)}: "
                         "score them one at a time")
    start, end = bounds.pop()
    return whole[start:end]


def _shown(s: str) -> str:
    from charrnn.data.records import escape

    return f"'{escape(s)}'"


def _refuse_repeated_models(paths: list[str]) -> None:
    """Each model once: the same file twice (by identity, however spelled) would score every record
    twice and, in JSON, collapse to one key."""
    from charrnn.outputs import same_file

    for j, b in enumerate(paths):
        for a in paths[:j]:
            if a == b or same_file(a, b):
                same = "" if a == b else f" ({_shown(a)} and {_shown(b)} are the same file)"
                raise UsageError(f"-m {_shown(b)} is given twice{same}: give each model once")


def _open_records(text: str) -> tuple[Any, str]:
    """The binary stream of TEXT (a file, or `-` for stdin) and its name for messages."""
    if text == "-":
        stream = common.stdin()
        if stream is None:  # `<&-`: Python starts with sys.stdin = None
            raise UsageError("standard input is closed: pipe records in or give a file")
        try:
            terminal = stream.isatty()
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read standard input: {getattr(e, 'strerror', None) or e}") from None
        if terminal:
            raise UsageError("standard input is a terminal: pipe records in or give a file")
        return stream, "standard input"
    try:
        return open(text, "rb"), repr(text)  # noqa: SIM115 (closed at exit; streamed until then)
    except FileNotFoundError:
        raise UsageError(f"{text!r} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"{text!r} is a directory, not a text file") from None
    except OSError as e:
        raise UsageError(f"cannot read {text!r}: {e.strerror or e}") from None


class _ScoreWriter:
    """The output lines of `eval score` (see its help for the format), and its warnings on stderr:
    the first record of which a model cannot read more than UNKNOWN_WARN_SHARE, then a count at the
    end, so that a long input gets a few lines of stderr, not one per record."""

    def __init__(self, out: Any, paths: list[str], as_json: bool, console: Any) -> None:
        from charrnn.data.records import escape

        self.out, self.paths, self.as_json, self.console = out, paths, as_json, console
        self.shown = [escape(p) for p in paths]  # a path with a tab or newline stays in its column
        self.count = 0
        self.unreadable = [0] * len(paths)

    def header(self) -> None:
        columns = ["nats_per_char", "bits_per_char", "nats", "chars", "unknown"] if len(self.paths) == 1 else \
            [*self.shown, "best"]
        self.out.write("\t".join([*columns, "text"]) + "\n")

    def write(self, window: list) -> None:
        from charrnn.data.records import escape
        from charrnn.inference.score import compare

        out, several = self.out, len(self.paths) > 1
        for record, scores in window:
            self.count += 1
            self._check(scores)
            costs, best = compare(scores) if several else ([scores[0].nats_per_char], 0)
            if self.as_json:
                obj = {"text": record, **scores[best if best is not None else 0].to_dict()}
                if several:
                    obj["scores"] = dict(zip(self.paths, costs, strict=True))
                    obj["best"] = self.paths[best] if best is not None else None
                out.write(json_line(obj))
            elif not several:
                s = scores[0]
                out.write(f"{_f(s.nats_per_char)}\t{_f(s.bits_per_char)}\t{s.nats if s.chars else math.nan:.4f}\t"
                          f"{s.chars}\t{s.unknown}\t")
                out.write(escape(record))
            else:
                out.write("\t".join([*(_f(v) for v in costs), self.shown[best] if best is not None else "-", ""]))
                out.write(escape(record))
            out.write("\n")  # apart: a record may be megabytes, not copied once more to add a newline

    def _check(self, scores: list) -> None:
        from charrnn.display import console as con
        from charrnn.inference.evaluate import UNKNOWN_WARN_SHARE
        from charrnn.inference.score import UNKNOWN_NATS

        for k, s in enumerate(scores):
            if s.unknown_share <= UNKNOWN_WARN_SHARE:
                continue
            self.unreadable[k] += 1
            if self.unreadable[k] == 1:
                what = (f"charged {UNKNOWN_NATS:.2f} nats each in the comparison" if len(scores) > 1
                        else "not scored: the score describes the rest")
                con.info(self.console, f"warning: {self.shown[k]} cannot read {s.unknown:,} of "
                                       f"{s.chars + s.unknown:,} characters ({s.unknown_share:.0%}) of record "
                                       f"{self.count:,} ({what})")

    def finish(self) -> None:
        from charrnn.display import console as con
        from charrnn.inference.evaluate import UNKNOWN_WARN_SHARE

        for k, n in enumerate(self.unreadable):
            if n > 1:
                con.info(self.console, f"warning: {self.shown[k]} cannot read more than {UNKNOWN_WARN_SHARE:.0%} "
                                       f"of {n:,} of the {self.count:,} records")


def _f(x: float | None) -> str:
    return "nan" if x is None else f"{x:.4f}"
