"""`charrnn export`: a model in a format other programs read (ONNX, safetensors, a web page)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import click

from charrnn.cli.common import json_option, json_out, model_option
from charrnn.errors import UsageError


class Format(NamedTuple):
    suffix: str  # the file name ending that chooses this format
    write: Any  # (model, vocab, checkpoint dict, **options) -> the file's bytes; imports its library when called
    what: str  # for the summary line
    options: tuple[str, ...] = ()  # the options of this format alone


def _onnx(model: Any, vocab: Any, ckpt: dict, **_: Any) -> bytes:
    from charrnn.onnx_export import to_onnx

    return to_onnx(model, vocab)


def _safetensors(model: Any, vocab: Any, ckpt: dict, **_: Any) -> bytes:
    from charrnn.safetensors_io import to_safetensors

    return to_safetensors(ckpt)


def _html(model: Any, vocab: Any, ckpt: dict, *, weights: str | None, title: str | None, **_: Any) -> bytes:
    from charrnn.webpage import page_html

    return page_html(model, vocab, ckpt, weights=weights or "auto", title=title).encode("utf-8")


# Every format `export` writes, by its --format name. A new format is one entry here.
FORMATS: dict[str, Format] = {
    "onnx": Format(".onnx", _onnx, "ONNX graph"),
    "safetensors": Format(".safetensors", _safetensors, "safetensors weights"),
    "html": Format(".html", _html, "web page", ("weights", "title")),
}


def choose_format(output: str, fmt: str | None) -> str:
    """The format to write: --format, else the output name's ending; a UsageError when neither says, or
    when they disagree (a .onnx file holding safetensors would mislead every reader)."""
    suffix = Path(output).suffix.lower()
    by_name = next((name for name, f in FORMATS.items() if f.suffix == suffix), None)
    if fmt is not None:
        if by_name is not None and by_name != fmt:
            raise UsageError(f"output {output!r} ends in {suffix} but --format is {fmt}; give a name ending in "
                             f"{FORMATS[fmt].suffix} or leave out --format")
        return fmt
    if by_name is None:
        *others, last = [f.suffix for f in FORMATS.values()]
        endings = f"{', '.join(others)} or {last}" if others else last
        raise UsageError(f"cannot tell which format to write to {output!r}: use a name ending in {endings}, "
                         f"or give --format {'|'.join(FORMATS)}")
    return by_name


@click.command(name="export")
@model_option
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The file to write; its ending chooses the format (.onnx, .safetensors, .html) unless --format "
                   "does.")
@click.option("--format", "fmt", type=click.Choice(list(FORMATS)),
              help="The format, whatever the output's name: onnx (a graph for onnxruntime), safetensors "
                   "(the weights, readable back by charrnn) or html (a page that generates in the browser).")
@click.option("--weights", type=click.Choice(["auto", "float32", "float16"]), default=None,
              help="html: how the page stores the weights; auto (the default) is float32 unless the page would "
                   "pass 5 MB, then float16.")
@click.option("--title", default=None, help="html: the page's title (default: the cell, layers and width).")
@json_option
def export_cmd(model_path: str, output: str, fmt: str | None, weights: str | None, title: str | None,
               as_json: bool) -> None:
    """Write the model (-m) in a format other programs read: an ONNX graph (runs in onnxruntime, with the
    vocabulary and config in its metadata; needs `pip install 'charrnn[export]'`), a .safetensors file
    (the weights without pickle; charrnn's commands read it back with -m), or one self-contained .html
    page that generates text in the browser, offline. ONNX and safetensors hold float32 weights,
    whatever precision the model was trained in. See docs/export.md and docs/webpage.md.

    \b
    charrnn export -m model.pt -o model.onnx
    charrnn export -m model.pt -o model.safetensors
    charrnn generate -m model.safetensors --prefix 'The '
    charrnn export -m model.pt -o model.html
    """
    from charrnn import console as con
    from charrnn.checkpoint import load_model
    from charrnn.outputs import check_output, write_atomic

    chosen = choose_format(output, fmt)
    options = {"weights": weights, "title": title}
    for name, value in options.items():
        if value is not None and name not in FORMATS[chosen].options:
            raise UsageError(f"--{name} applies to --format html, not {chosen}")
    check_output(output, [(model_path, "the model (-m)")])
    model, vocab, ckpt = load_model(model_path, "cpu")
    data = FORMATS[chosen].write(model, vocab, ckpt, **options)
    write_atomic(output, data)
    if as_json:
        json_out({"path": output, "format": chosen, "bytes": len(data)})
    else:
        con.info(con.make_console(), f"wrote {output}: {FORMATS[chosen].what}, {len(data):,} bytes")
