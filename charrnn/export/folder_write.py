"""Write a model folder (`charrnn export --format folder`; the layout is described in charrnn.model.folder_read,
which reads it back), with its model card.

The folder is written whole into a temporary folder beside it and renamed into place: a failure
leaves no half-written folder, and an existing model folder is replaced only once the new one is
complete. A folder that exists and is not a charrnn model folder (nor empty) is refused.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from charrnn.config import CHARRNN_VERSION
from charrnn.data.vocab import Vocab
from charrnn.errors import DataError, UsageError
from charrnn.export.safetensors_write import metadata
from charrnn.model.folder_read import CARD, CONFIG, VOCAB, WEIGHTS, _library, is_model_folder
from charrnn.model.safetensors_read import FORMAT, VERSION

SAMPLE_CHARS = 300


def write(output: str | os.PathLike, model: Any, vocab: Vocab, ckpt: dict[str, Any]) -> int:
    """Write the model folder `output` (see the module docstring); returns the bytes written."""
    safetensors = _library()
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise UsageError(f"output {str(out)!r} is a file: --format folder writes a folder")
    if out.is_dir() and any(out.iterdir()) and not is_model_folder(out):
        raise UsageError(f"output {str(out)!r} is a folder that holds other files: give a new or empty folder, "
                         "or a model folder to replace")
    if not out.parent.is_dir():
        raise UsageError(f"output {str(out)!r}: its folder {str(out.parent)!r} does not exist")
    meta = metadata(ckpt)
    config = {"model_type": "charrnn", "architectures": ["CharRNN"], **ckpt["model_config"],
              "charrnn": {"format": FORMAT, "version": VERSION, "charrnn_version": CHARRNN_VERSION,
                          "training": json.loads(meta["training"])}}
    files = {CONFIG: (json.dumps(config, indent=2) + "\n").encode("utf-8"),
             VOCAB: (json.dumps({"chars": json.loads(meta["vocab"]), "counts": json.loads(meta["vocab_counts"])})
                     + "\n").encode("ascii"),
             CARD: model_card(model, vocab, ckpt).encode("utf-8")}
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise DataError(f"cannot write {str(out)!r}: {e.strerror or e}") from None
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        weights = {name: t.detach().to("cpu").float().contiguous() for name, t in ckpt["weights"].items()}
        safetensors.torch.save_file(weights, str(tmp / WEIGHTS), metadata={"format": "pt"})
        size = sum(f.stat().st_size for f in tmp.iterdir())
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"cannot write {str(out)!r}: {e.strerror or e}") from None
    return size


def _figure(nats: Any) -> str:
    if not isinstance(nats, (int, float)) or not math.isfinite(nats):
        return "not recorded"
    return f"{nats:.4f} nats/char ({nats / math.log(2):.4f} bits/char, perplexity {math.exp(nats):.3f})"


def model_card(model: Any, vocab: Vocab, ckpt: dict[str, Any]) -> str:
    """The folder's README.md: what the model is, how it was trained, how well it did, what it writes."""
    from charrnn.inference.generate import Sampling, generate

    cfg = model.config
    train = ckpt.get("train_config") or {}
    data = ckpt.get("data") or {}
    prefix = vocab.encode("\n") if "\n" in vocab.chars else np.zeros(0, dtype=np.int64)
    sample = "".join(c[0] for c in generate(model, vocab, prefix, SAMPLE_CHARS, Sampling(temperature=0.8), seed=0))
    shape = f"{cfg.layers} x {cfg.hidden} {cfg.cell.upper()}"
    rows = [("cell", cfg.cell), ("layers x hidden units", f"{cfg.layers} x {cfg.hidden}"),
            ("input", f"embedding of {cfg.embed_dim}" if cfg.input == "embedding" else "one-hot"),
            ("vocabulary", f"{vocab.size} characters" + (" (with <unk>)" if vocab.unk_id is not None else "")),
            ("parameters", f"{model.num_parameters():,}")]
    training = [("steps", ckpt.get("step")), ("epochs", ckpt.get("epoch")),
                ("training text", f"{data['chars']:,} characters (SHA-256 of its ids {data['sha256'][:16]}...)"
                 if isinstance(data.get("chars"), int) and isinstance(data.get("sha256"), str) else "not recorded"),
                ("partition", train.get("partition")), ("validation fraction", train.get("val_fraction")),
                ("batch x steps", f"{train.get('batch_size')} x {train.get('num_steps')}" if train else None),
                ("optimizer, learning rate", f"{train.get('optimizer')}, {train.get('lr')}" if train else None),
                ("precision", train.get("precision")), ("fine-tuned from", ckpt.get("init_from"))]
    lines = [f"# charrnn model: {shape}", "",
             f"A character-level language model trained with [charrnn](https://pypi.org/project/charrnn/) "
             f"{CHARRNN_VERSION if ckpt.get('charrnn_version') is None else ckpt['charrnn_version']}. "
             "`charrnn generate -m THIS_FOLDER` (and every command's `-m`) reads this folder.", "",
             "## Architecture", "", "| | |", "| --- | --- |", *[f"| {k} | {v} |" for k, v in rows], "",
             "## Training", "", "| | |", "| --- | --- |",
             *[f"| {k} | {v} |" for k, v in training if v is not None], "",
             "## Validation", "", f"- last validation: {_figure(ckpt.get('val_loss'))}",
             f"- best validation: {_figure(ckpt.get('best_val_loss'))}", "",
             f"## A sample ({SAMPLE_CHARS} characters, temperature 0.8, seed 0)", "", "```text",
             sample.replace("```", "'''"), "```", "",
             "## Files", "", "`config.json` (the model config; `charrnn` holds the training record), `vocab.json` "
             "(the character of each id, `null` for <unk>, and its training count), `model.safetensors` "
             "(float32 weights under charrnn's parameter names), this card.", ""]
    return "\n".join(lines)
