"""Write a model as a .safetensors file (the layout and its metadata are described in
charrnn.model.safetensors_read, which reads it back): written here rather than by the safetensors library, so that
no library is needed and the same model gives the same bytes."""

from __future__ import annotations

import json
from typing import Any

import torch

from charrnn.config import CHARRNN_VERSION
from charrnn.data.vocab import Vocab
from charrnn.model.safetensors_read import FORMAT, VERSION


def metadata(ckpt: dict[str, Any]) -> dict[str, str]:
    """The header metadata of a loaded (validated) checkpoint. JSON is ASCII with \\u escapes, so a
    vocabulary holding any code point (a lone surrogate too) survives every reader."""
    vocab = Vocab.from_dict(ckpt["vocab"])
    training = {"step": ckpt.get("step"), "epoch": ckpt.get("epoch"), "val_loss": ckpt.get("val_loss"),
                "best_val_loss": ckpt.get("best_val_loss"), "training_chars": (ckpt.get("data") or {}).get("chars"),
                "init_from": ckpt.get("init_from"), "train_config": ckpt.get("train_config")}
    return {"format": FORMAT, "version": str(VERSION), "charrnn_version": CHARRNN_VERSION,
            "config": json.dumps(ckpt["model_config"]),
            "vocab": json.dumps(vocab.id_chars()),
            "vocab_counts": json.dumps(list(vocab.counts)),
            "training": json.dumps(training, allow_nan=False)}


def to_safetensors(ckpt: dict[str, Any]) -> bytes:
    """The bytes of a .safetensors file of a loaded (validated) checkpoint, weights in float32.

    Written here rather than by the safetensors library, whose header lists the metadata in a random
    order (a hash map): the same model gives the same bytes, so a file can be checked by its digest.
    The layout is the format's: the header's length (8 bytes, little-endian), the header (JSON, padded
    with spaces to a multiple of 8 bytes), then each tensor's bytes in turn, little-endian and row-major.
    """
    header: dict[str, Any] = {"__metadata__": metadata(ckpt)}
    blobs, offset = [], 0
    for name, t in ckpt["weights"].items():
        blob = t.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4", copy=False).tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode("ascii")
    text += b" " * (-len(text) % 8)
    return b"".join([len(text).to_bytes(8, "little"), text, *blobs])
