"""Exporting a model: every format `charrnn export` (and Model.export) writes, and the choice among them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from charrnn.errors import UsageError


class Format(NamedTuple):
    suffix: str | None  # the file name ending that chooses this format (None: only --format does)
    write: Any  # (model, vocab, checkpoint dict, **options) -> the file's bytes; imports its library when called
    what: str  # for the summary line
    options: tuple[str, ...] = ()  # the options of this format alone


def _onnx(model: Any, vocab: Any, ckpt: dict, **_: Any) -> bytes:
    from charrnn.export.onnx_export import to_onnx

    return to_onnx(model, vocab)


def _safetensors(model: Any, vocab: Any, ckpt: dict, **_: Any) -> bytes:
    from charrnn.export.safetensors_write import to_safetensors

    return to_safetensors(ckpt)


def _html(model: Any, vocab: Any, ckpt: dict, *, weights: str | None, title: str | None, **_: Any) -> bytes:
    from charrnn.export.webpage import page_html

    return page_html(model, vocab, ckpt, weights=weights or "auto", title=title).encode("utf-8")


def _folder(model: Any, vocab: Any, ckpt: dict, *, output: str, **_: Any) -> int:
    from charrnn.export.folder_write import write

    return write(output, model, vocab, ckpt)


# Every format `export` writes, by its --format name. A new format is one entry here. The folder's writer
# writes it itself (several files, renamed into place together) and returns the bytes written.
FORMATS: dict[str, Format] = {
    "onnx": Format(".onnx", _onnx, "ONNX graph"),
    "safetensors": Format(".safetensors", _safetensors, "safetensors weights"),
    "html": Format(".html", _html, "web page", ("weights", "title")),
    "folder": Format(None, _folder, "model folder (config.json, vocab.json, model.safetensors, README.md)"),
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
        *others, last = [f.suffix for f in FORMATS.values() if f.suffix is not None]
        endings = f"{', '.join(others)} or {last}" if others else last
        raise UsageError(f"cannot tell which format to write to {output!r}: use a name ending in {endings}, "
                         f"or give --format {'|'.join(FORMATS)} (a folder: --format folder)")
    return by_name


def export(model_path: str, output: str, fmt: str | None = None, **options: Any) -> dict:
    """Write the model of `model_path` to `output` in format `fmt` (else chosen by the name's ending):
    {"path", "format", "bytes"}. `options` are the chosen format's own (html: weights, title)."""
    from charrnn.model.checkpoint import load_model
    from charrnn.outputs import check_output, write_atomic

    if fmt is not None and fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    chosen = choose_format(output, fmt)
    for name in options:
        if name not in FORMATS[chosen].options:
            raise UsageError(f"--{name} applies to --format html, not {chosen}")
    if chosen == "folder":
        if Path(output).resolve() == Path(model_path).resolve():
            raise UsageError(f"output {output!r} is the model (-m); choose another output path")
        model, vocab, ckpt = load_model(model_path, "cpu")
        return {"path": output, "format": chosen, "bytes": _folder(model, vocab, ckpt, output=output)}
    check_output(output, [(model_path, "the model (-m)")])
    model, vocab, ckpt = load_model(model_path, "cpu")
    if model.config.labels:
        raise UsageError(f"{model_path!r} is conditioned on labels (--labels), which export does not carry yet: "
                         "use the checkpoint itself")
    data = FORMATS[chosen].write(model, vocab, ckpt, **{name: options.get(name) for name in FORMATS[chosen].options})
    write_atomic(output, data)
    return {"path": output, "format": chosen, "bytes": len(data)}
