"""`charrnn export`: a model in a format other programs read (ONNX, safetensors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import click

from charrnn.cli.common import json_option, json_out, model_option
from charrnn.errors import UsageError


class Format(NamedTuple):
    suffix: str  # the file name ending that chooses this format
    write: Any  # (model, vocab, checkpoint dict) -> the file's bytes; imports its library when called
    what: str  # for the summary line


def _onnx(model: Any, vocab: Any, ckpt: dict) -> bytes:
    from charrnn.onnx_export import to_onnx

    return to_onnx(model, vocab)


def _safetensors(model: Any, vocab: Any, ckpt: dict) -> bytes:
    from charrnn.safetensors_io import to_safetensors

    return to_safetensors(ckpt)


# Every format `export` writes, by its --format name. A new format is one entry here.
FORMATS: dict[str, Format] = {
    "onnx": Format(".onnx", _onnx, "ONNX graph"),
    "safetensors": Format(".safetensors", _safetensors, "safetensors weights"),
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
              help="The file to write; its ending chooses the format (.onnx, .safetensors) unless --format does.")
@click.option("--format", "fmt", type=click.Choice(list(FORMATS)),
              help="The format, whatever the output's name: onnx (a graph for onnxruntime) or safetensors "
                   "(the weights, readable back by charrnn).")
@json_option
def export_cmd(model_path: str, output: str, fmt: str | None, as_json: bool) -> None:
    """Write the model (-m) in a format other programs read: an ONNX graph (runs in onnxruntime, with the
    vocabulary and config in its metadata; needs `pip install 'charrnn[export]'`) or a .safetensors file
    (the weights without pickle; charrnn's commands read it back with -m). Both hold float32 weights,
    whatever precision the model was trained in. See docs/export.md.

    \b
    charrnn export -m model.pt -o model.onnx
    charrnn export -m model.pt -o model.safetensors
    charrnn generate -m model.safetensors --prefix 'The '
    """
    from charrnn import console as con
    from charrnn.checkpoint import load_model
    from charrnn.outputs import check_output, write_atomic

    chosen = choose_format(output, fmt)
    check_output(output, [(model_path, "the model (-m)")])
    model, vocab, ckpt = load_model(model_path, "cpu")
    data = FORMATS[chosen].write(model, vocab, ckpt)
    write_atomic(output, data)
    if as_json:
        json_out({"path": output, "format": chosen, "bytes": len(data)})
    else:
        con.info(con.make_console(), f"wrote {output}: {FORMATS[chosen].what}, {len(data):,} bytes")
