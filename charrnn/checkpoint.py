"""Checkpoint files: one self-contained file per model, written atomically, loaded safely.

A checkpoint is a dict of plain data and tensors saved with torch.save:

    format "charrnn", version, charrnn_version, model_config, train_config, vocab, weights,
    optimizer, step, epoch, batch_in_epoch, best_val_loss, val_loss, seed, elapsed, chars_seen,
    rng (torch CPU generator state), hidden (carried state or None), data (size and sha256 of
    the encoded training text).

It is loaded with torch.load(weights_only=True), which refuses any pickled object other than
tensors and plain containers, so a hostile file cannot run code.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from charrnn.errors import CheckpointError, UsageError
from charrnn.model import CharRNN, ModelConfig
from charrnn.vocab import Vocab

FORMAT = "charrnn"
VERSION = 1


def check_writable(path: str | os.PathLike) -> None:
    """Fail before any work when `path` cannot be written (no such folder, a folder, read-only)."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"output path {str(p)!r} is a directory; give a file name such as model.pt")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"cannot write {str(p)!r}: folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UsageError(f"cannot write {str(p)!r}: permission denied")


def save(payload: dict[str, Any], path: str | os.PathLike) -> None:
    """Write `payload` to `path` atomically: a temporary file in the same folder, fsync, rename.

    A crash at any moment leaves either the old file or the new one, never a truncated file.
    """
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent if str(p.parent) else ".")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a checkpoint is an ordinary file
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise CheckpointError(f"could not write checkpoint {str(p)!r}: {e.strerror or e}") from None
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(p.parent if str(p.parent) else ".", os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint; every way it can be wrong is a CheckpointError."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    if p.is_dir():
        raise CheckpointError(f"checkpoint {str(p)!r} is a directory")
    try:
        with open(p, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {str(p)!r}: {e.strerror or e}") from None
    # torch.save writes a zip archive; anything else would go down torch's legacy pickle path.
    if magic != b"PK\x03\x04":
        raise CheckpointError(f"{str(p)!r} is not a charrnn checkpoint")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Weights only" in str(e):
            raise CheckpointError(
                f"{str(p)!r} contains objects other than tensors and plain data; refusing to load it "
                "(a charrnn checkpoint never does)"
            ) from None
        raise CheckpointError(f"{str(p)!r} is not a charrnn checkpoint") from None
    except Exception as e:  # torch reports damaged archives with many exception types
        text = str(e)
        # It starts like a zip archive (checked above) but has no readable end record: cut short.
        # (torch reports some truncations as a bare OSError EINVAL.)
        if isinstance(e, (EOFError, zipfile.BadZipFile)) or "central directory" in text or "EOF" in text \
                or not zipfile.is_zipfile(p):
            raise CheckpointError(f"{str(p)!r} is truncated or damaged (not a complete checkpoint)") from None
        raise CheckpointError(f"{str(p)!r} is not a charrnn checkpoint") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{str(p)!r} is not a charrnn checkpoint")
    version = ckpt.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"{str(p)!r} has checkpoint format version {version}, newer than this charrnn "
            f"understands ({VERSION}); upgrade charrnn"
        )
    missing = [k for k in ("model_config", "vocab", "weights") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{str(p)!r} is damaged: missing {', '.join(missing)}")
    return ckpt


def load_model(
    path: str | os.PathLike, device: torch.device | str = "cpu"
) -> tuple[CharRNN, Vocab, dict[str, Any]]:
    """Model (in eval mode, on `device`), vocabulary and the raw checkpoint dict."""
    ckpt = load(path)
    try:
        vocab = Vocab.from_dict(ckpt["vocab"])
        model = CharRNN(ModelConfig.from_dict(ckpt["model_config"]))
        model.load_state_dict(ckpt["weights"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{str(path)!r} is damaged: {str(e).splitlines()[0]}") from None
    return model.to(device).eval(), vocab, ckpt
