"""A model as a .safetensors file: its weights and what a reader needs to use them, with no pickle.

The file holds every tensor of the model's state dict under its charrnn name (`embed.weight`,
`rnn.weight_ih_l0`, ..., `head.bias`), float32, and in the header's `__metadata__` (string values
only, as the format requires):

    format           "charrnn"
    version          "1", the layout of this metadata
    charrnn_version  the writing charrnn's version
    config           the model config as JSON (cell, vocab_size, hidden, layers, dropout, input, embed_dim,
                     weight_drop, embed_dropout)
    vocab            a JSON list: the character of each id, null for <unk> (the ONNX file's `vocab`)
    vocab_counts     a JSON list: how often each character occurred in the training text
    training         a JSON object: step, epoch, val_loss, best_val_loss, training_chars, init_from and
                     train_config (the training options, the record delimiter among them), for `info`

The file is written by charrnn.export.safetensors_write (no library needed) and read here with the safetensors library.
A file read back becomes the dict `charrnn.model.checkpoint.load` returns for a checkpoint, so that it goes
through the same checks (checkpoint.check_model_fields and the rest) and every command that takes a
model reads it. It is untrusted input: the header is parsed by the safetensors library (offsets,
sizes and overlaps checked, the header at most 100 MB), then every metadata field is type-checked
here, and the weights' names, shapes and dtypes are compared with the config before any weight is read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from charrnn.errors import CheckpointError, MissingDependency, UsageError
from charrnn.model.network import ModelConfig, parameter_shapes

SUFFIX = ".safetensors"
FORMAT = "charrnn"
VERSION = 1
TRAINING_KEYS = ("step", "epoch", "val_loss", "best_val_loss", "training_chars", "init_from", "train_config")
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


def _library() -> Any:
    try:
        import safetensors
        import safetensors.torch
    except ImportError:
        raise MissingDependency("reading a .safetensors model needs safetensors: pip install "
                                "'charrnn[export]' (or pip install safetensors)") from None
    return safetensors


def looks_like(path: Path, head: bytes) -> bool:
    """Whether a file is meant as safetensors: its name, or its first bytes (a little-endian 64-bit
    header length, then the header's opening brace)."""
    return path.suffix.lower() == SUFFIX or (head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 10**8)


def _json(meta: dict[str, str], key: str, where: str) -> Any:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not a JSON number")

    text = meta.get(key)
    if not isinstance(text, str):
        raise CheckpointError(f"{where} is damaged: its metadata lacks {key!r}")
    try:
        return json.loads(text, parse_constant=refuse)
    except (ValueError, RecursionError):
        raise CheckpointError(f"{where} is damaged: its metadata {key!r} is not valid JSON") from None


def _is_count(x: Any) -> bool:
    return x is None or isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**63


def _is_loss(x: Any) -> bool:
    return x is None or isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < float("inf")


def _training(meta: dict[str, str], where: str) -> dict[str, Any]:
    """The `training` metadata, every field type-checked (a file may hold anything)."""
    training = _json(meta, "training", where)
    if not isinstance(training, dict) or set(training) - set(TRAINING_KEYS):
        raise CheckpointError(f"{where} is damaged: its training metadata is not the one charrnn writes")
    training = {key: training.get(key) for key in TRAINING_KEYS}
    for key in ("step", "epoch", "training_chars"):
        if not _is_count(training[key]):
            raise CheckpointError(f"{where} is damaged: its {key.replace('_', ' ')} is not a count")
    for key in ("val_loss", "best_val_loss"):
        if not _is_loss(training[key]):
            raise CheckpointError(f"{where} is damaged: its {key.replace('_', ' ')} is not a non-negative number")
        training[key] = None if training[key] is None else float(training[key])
    config = training["train_config"]
    if config is not None and not (isinstance(config, dict) and all(
            isinstance(v, (str, int, float, bool, type(None))) for v in config.values())):
        raise CheckpointError(f"{where} is damaged: its training settings are not a table of plain values")
    return training


def _vocab(meta: dict[str, str], where: str) -> dict[str, Any]:
    """The vocabulary as a checkpoint holds it (chars, counts, unk); checkpoint.check_model_fields checks the rest."""
    entries, counts = _json(meta, "vocab", where), _json(meta, "vocab_counts", where)
    if not isinstance(entries, list) or not isinstance(counts, list):
        raise CheckpointError(f"{where} is damaged: its vocabulary is not a list")
    unk = bool(entries) and entries[-1] is None
    chars = entries[:-1] if unk else entries
    if any(c is None for c in chars):
        raise CheckpointError(f"{where} is damaged: its vocabulary has null (<unk>) other than as the last entry")
    return {"chars": chars, "counts": counts, "unk": unk}


def _header(handle: Any, where: str) -> tuple[dict[str, str], dict[str, Any]]:
    """(metadata, model config dict) of an open file, the format and version checked."""
    meta = handle.metadata() or {}
    return meta, check_header(meta, where)


def check_header(meta: dict[str, str], where: str) -> dict[str, Any]:
    """The model config dict of metadata as this module writes it, the format and version checked."""
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{where} is a safetensors file but not a charrnn model (its metadata has no "
                              "format 'charrnn')")
    version = meta.get("version")
    if not isinstance(version, str) or not version.isdigit() or int(version) < 1:
        raise CheckpointError(f"{where} is damaged: its format version {version!r} is not a positive integer")
    if int(version) > VERSION:
        raise CheckpointError(f"{where} has safetensors layout version {version}, newer than this charrnn "
                              f"understands ({VERSION}); upgrade charrnn")
    config = _json(meta, "config", where)
    if not isinstance(config, dict) or set(config) - set(ModelConfig.__dataclass_fields__):
        raise CheckpointError(f"{where} is damaged: its model config is not the one charrnn writes")
    return config


def check_tensors(handle: Any, config: dict[str, Any], where: str) -> None:
    """Names, shapes and dtypes of the stored tensors against the config, before any is read."""
    try:
        expected = parameter_shapes(ModelConfig.from_dict(config))
    except (UsageError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where} is damaged: {str(e).splitlines()[0]}") from None
    names = set(handle.keys())
    if names != set(expected):
        raise CheckpointError(f"{where} is damaged: its weights do not match its model config (different "
                              "parameter names)")
    for name, shape in expected.items():
        found = handle.get_slice(name)
        if tuple(found.get_shape()) != shape or found.get_dtype() not in FLOAT_DTYPES:
            raise CheckpointError(f"{where} is damaged: weight {name} has shape {tuple(found.get_shape())} "
                                  f"({found.get_dtype()}), but the model config needs {shape} (floating point)")


def read(path: str | os.PathLike) -> dict[str, Any]:
    """A .safetensors model as the dict checkpoint.load returns (format, version, model_config, vocab,
    weights and the training fields); every way the file can be wrong is a CheckpointError."""
    safetensors = _library()
    p = Path(path)
    where = repr(str(p))
    try:
        with safetensors.safe_open(str(p), framework="pt", device="cpu") as handle:
            meta, config = _header(handle, where)
            check_tensors(handle, config, where)
            weights = {name: handle.get_tensor(name) for name in handle.keys()}
    except CheckpointError:
        raise
    except Exception as e:  # the library reports a bad header or a short file as SafetensorError and others
        raise CheckpointError(f"{where} is truncated or damaged (not a readable safetensors file: "
                              f"{(str(e).splitlines() or [type(e).__name__])[0]})") from None
    return assemble(meta, config, weights, where, "safetensors")


def assemble(meta: dict[str, str], config: dict[str, Any], weights: dict[str, Any], where: str,
             exported_as: str) -> dict[str, Any]:
    """The checkpoint-shaped dict of checked metadata (as this module writes it), config and weights."""
    training = _training(meta, where)
    version = meta.get("charrnn_version")
    return {"format": "charrnn", "version": 1, "charrnn_version": version if isinstance(version, str) else None,
            "model_config": config, "vocab": _vocab(meta, where), "weights": weights,
            "step": training["step"], "epoch": training["epoch"], "val_loss": training["val_loss"],
            "best_val_loss": training["best_val_loss"], "train_config": training["train_config"],
            "data": {"chars": training["training_chars"]}, "init_from": training["init_from"],
            "exported_as": exported_as}
