"""`charrnn export`: a model in a format other programs read (ONNX, safetensors, a web page)."""

from __future__ import annotations

import click

from charrnn.cli.common import json_option, json_out, model_option
from charrnn.export.exporting import FORMATS


@click.command(name="export")
@model_option
@click.option("-o", "--output", required=True, type=click.Path(),
              help="The file to write; its ending chooses the format (.onnx, .safetensors, .html) unless --format "
                   "does; with --format folder, the folder.")
@click.option("--format", "fmt", type=click.Choice(list(FORMATS)),
              help="The format, whatever the output's name: onnx (a graph for onnxruntime), safetensors "
                   "(the weights, readable back by charrnn), html (a page that generates in the browser) or "
                   "folder (config.json, vocab.json, model.safetensors and a README.md model card).")
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
    charrnn export -m model.pt -o my-model --format folder
    """
    from charrnn.display import console as con
    from charrnn.export.exporting import export

    given = {name: value for name, value in {"weights": weights, "title": title}.items() if value is not None}
    written = export(model_path, output, fmt, **given)
    if as_json:
        json_out(written)
    else:
        con.info(con.make_console(), f"wrote {output}: {FORMATS[written['format']].what}, {written['bytes']:,} bytes")
