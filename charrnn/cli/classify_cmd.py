"""`charrnn eval classify`: a label-conditioned model as a classifier, one line per record, streamed."""

from __future__ import annotations

import sys

import click

from charrnn.cli.common import device_option, encoding_option, json_line, model_option, threads_option
from charrnn.errors import UsageError


@click.command(name="classify")
@model_option
@click.argument("text", default="-")
@encoding_option
@click.option("--no-end", is_flag=True,
              help="Do not score the delimiter after each record: classify texts that may be the beginning of one.")
@device_option
@threads_option
@click.option("--json", "as_json", is_flag=True,
              help="JSON Lines: one object per record with text, label (the best) and scores (label -> score, "
                   "best first); a labelled record also expected and correct.")
def eval_classify(model_path: str, text: str, encoding: str, no_end: bool, device: str, threads: int | None,
                  as_json: bool) -> None:
    """Classify every record (line) of TEXT (a file or `-` for stdin) with MODEL, a model trained with
    --labels: its labels ranked by log p(text | label) + log p(label), the prior from the training
    records' labels (add-one smoothed).

    \b
    Text output, tab-separated, one line per record, streamed:
      best label  match  label:score ... (best first)  record
    A record given as LABEL<TAB>TEXT is classified as TEXT, and match says whether the best label is
    LABEL (yes or no; - for a record without a label); the accuracy over the labelled records goes to
    stderr at the end. Records are written escaped as `eval score` writes them (\\n, \\t, \\\\).
    """
    from charrnn.cli.eval_cmd import _open_records
    from charrnn.data.corpora import iter_decoded
    from charrnn.data.records import byte_chunks, escape, split_records
    from charrnn.display import console as con
    from charrnn.inference.classify import classify_stream
    from charrnn.model.checkpoint import label_set, load_model, record_delimiter
    from charrnn.model.network import resolve_device
    from charrnn.threads import make_chooser

    dev = resolve_device(device)
    chooser = make_chooser(threads, dev)
    model, vocab, ckpt = load_model(model_path, dev)
    labels = label_set(ckpt)
    if labels is None:
        raise UsageError(f"{model_path!r} has no labels: eval classify needs a model trained with --labels")
    delimiter = record_delimiter(ckpt) or "\n"
    stream, name = _open_records(text)
    records = split_records(iter_decoded(byte_chunks(stream, name), encoding, name), delimiter)
    out = sys.stdout
    labelled = correct = 0
    for window in classify_stream(model, vocab, labels, delimiter, records, end=not no_end, threads=chooser):
        for c in window:
            if c.expected is not None:
                labelled += 1
                correct += bool(c.correct)
            if as_json:
                out.write(json_line(c.to_dict()) + "\n")
            else:
                match = "-" if c.correct is None else "yes" if c.correct else "no"
                ranked = " ".join(f"{escape(label)}:{score:.4f}" for label, score in c.scores)
                out.write(f"{escape(c.label)}\t{match}\t{ranked}\t{escape(c.text)}\n")
        out.flush()
    if labelled:
        con.info(con.make_console(), f"accuracy {correct / labelled:.4f} ({correct:,} of {labelled:,} labelled "
                                     "records)")
