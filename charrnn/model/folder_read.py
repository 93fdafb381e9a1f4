"""A model as a folder, the layout people know from model hubs (`charrnn export --format folder`):

    config.json        the model config at the top level (cell, vocab_size, hidden, layers, ...) beside
                       "model_type": "charrnn", and under "charrnn" the layout's format and version, the
                       writing charrnn's version and the training fields (as the .safetensors export's
                       `training` metadata: step, epoch, val_loss, best_val_loss, training_chars,
                       init_from, train_config)
    vocab.json         {"chars": the character of each id (null for <unk>), "counts": their training counts}
    model.safetensors  the weights under their charrnn names, float32, written by the safetensors library
    README.md          a model card: architecture, parameters, training, validation figures, a sample

The folder is written by charrnn.export.folder_write. Every command's -m reads the folder
(charrnn.model.checkpoint.load): it becomes the dict a checkpoint loads as, through the checks of
charrnn.model.safetensors_read (the same metadata, parsed from the JSON files instead of a header) and then
those of every checkpoint. The round trip is exact: the weights are the checkpoint's float32 ones, bit
for bit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from charrnn.errors import CheckpointError
from charrnn.model.network import ModelConfig
from charrnn.model.safetensors_read import assemble, check_header, check_tensors

CONFIG, VOCAB, WEIGHTS, CARD = "config.json", "vocab.json", "model.safetensors", "README.md"


def is_model_folder(path: Path) -> bool:
    """Whether `path` is a folder holding a model's config.json and model.safetensors."""
    return path.is_dir() and (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


def _library() -> Any:
    from charrnn.model.safetensors_read import _library as library

    library()
    import safetensors.torch

    return safetensors


def _json_file(path: Path, where: str) -> Any:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not a JSON number")

    try:
        return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)
    except OSError as e:
        raise CheckpointError(f"cannot read {str(path)!r}: {e.strerror or e}") from None
    except (ValueError, RecursionError):
        raise CheckpointError(f"{where} is damaged: {path.name} is not valid JSON") from None


def read(path: str | os.PathLike) -> dict[str, Any]:
    """A model folder as the dict checkpoint.load returns; every way it can be wrong is a CheckpointError."""
    safetensors = _library()
    p = Path(path)
    where = repr(str(p))
    config = _json_file(p / CONFIG, where)
    vocab = _json_file(p / VOCAB, where) if (p / VOCAB).is_file() else None
    if not isinstance(config, dict) or config.get("model_type") != "charrnn" or not isinstance(config.get("charrnn"),
                                                                                                 dict):
        raise CheckpointError(f"{where} is a folder with a config.json, but not a charrnn model folder (no "
                              '"model_type": "charrnn")')
    if not isinstance(vocab, dict) or set(vocab) != {"chars", "counts"}:
        raise CheckpointError(f"{where} is damaged: its vocab.json is missing or not the one charrnn writes")
    own = config["charrnn"]
    model_config = {k: v for k, v in config.items() if k in ModelConfig.__dataclass_fields__}
    if set(config) - set(model_config) - {"model_type", "architectures", "charrnn"}:
        raise CheckpointError(f"{where} is damaged: its config.json has fields charrnn does not write")
    version = own.get("version")
    meta = {"format": own.get("format"), "version": str(version) if isinstance(version, int) else repr(version),
            "config": json.dumps(model_config), "vocab": json.dumps(vocab["chars"]),
            "vocab_counts": json.dumps(vocab["counts"]), "training": json.dumps(own.get("training"))}
    if isinstance(own.get("charrnn_version"), str):
        meta["charrnn_version"] = own["charrnn_version"]
    checked = check_header(meta, where)  # type: ignore[arg-type]
    try:
        with safetensors.safe_open(str(p / WEIGHTS), framework="pt", device="cpu") as handle:
            check_tensors(handle, checked, where)
            weights = {name: handle.get_tensor(name) for name in handle.keys()}
    except CheckpointError:
        raise
    except Exception as e:  # the library reports a bad header or a short file as SafetensorError and others
        raise CheckpointError(f"{where} is damaged: its {WEIGHTS} is not a readable safetensors file "
                              f"({(str(e).splitlines() or [type(e).__name__])[0]})") from None
    return assemble(meta, checked, weights, where, "folder")  # type: ignore[arg-type]
