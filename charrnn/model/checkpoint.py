"""Checkpoint files: one self-contained file per model, written atomically, loaded safely.

A checkpoint is a dict of plain data and tensors saved with torch.save:

    format "charrnn", version, charrnn_version, model_config, train_config, vocab, weights,
    optimizer, step, epoch, batch_in_epoch, best_val_loss, val_loss, seed, elapsed, chars_seen,
    rng (torch CPU generator state), hidden (carried state or None), data (size and sha256 of
    the encoded training text), history (the loss curve: charrnn.model.history), stale_validations
    (validations since the best, for --patience), init_from (the checkpoint a fine-tuned run
    started from, or None), weights_from ("raw", or "ema"/"tail" when `weights` holds the averaged weights
    of --average), average (the running average's state, charrnn.training.averaging, or None) and, when weights_from
    is not "raw", training_weights (the raw weights a resumed run goes on training). The last six are absent
    from older checkpoints. With
    `--partition records` also record_hashes (sorted int64 hashes of the training records, see
    charrnn.data.records) and record_hashes_complete.

It is loaded with torch.load(weights_only=True), which refuses any pickled object other than
tensors and plain containers, so a hostile file cannot run code. `load` also reads a model exported
as .safetensors (charrnn.model.safetensors_read), into a dict of the same shape holding the model fields and
a training summary.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from charrnn.config import AVERAGES, TrainConfig, check_settings
from charrnn.data.labels import LabelSet
from charrnn.data.vocab import Vocab
from charrnn.errors import CheckpointError, UsageError
from charrnn.model.history import History
from charrnn.model.network import CharRNN, ModelConfig, parameter_shapes
from charrnn.outputs import temp_beside

FORMAT = "charrnn"
VERSION = 1


class _WriteRecorder:
    """A file wrapper that remembers the OSError a write raised: torch.save reports a failed write as
    a RuntimeError without its cause (disk full, file too large), and the user needs the cause."""

    def __init__(self, f: Any) -> None:
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def _cause(e: BaseException, folder: Path) -> str:
    if isinstance(e, FileNotFoundError) and not folder.is_dir():
        return f"its folder {str(folder)!r} no longer exists"
    if isinstance(e, OSError):
        return e.strerror or str(e)
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def save(payload: dict[str, Any], path: str | os.PathLike) -> None:
    """Write `payload` to `path` atomically: a temporary file in the same folder, fsync, rename.

    A crash at any moment leaves either the old file or the new one, never a truncated file. A
    failure (disk full, a file-size limit, a vanished folder) is a CheckpointError naming the path
    and the cause; the previous file is untouched and no temporary file is left behind.
    """
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    try:
        fd, tmp = temp_beside(p)
    except OSError as e:
        raise CheckpointError(f"could not write checkpoint {str(p)!r}: {_cause(e, folder)}") from None
    recorder = None
    try:
        with os.fdopen(fd, "wb") as f:
            recorder = _WriteRecorder(f)
            torch.save(payload, recorder)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        cause = recorder.error if recorder is not None and recorder.error is not None else e
        if isinstance(cause, OSError):  # a RuntimeError of torch.save with no write error behind it is a bug
            raise CheckpointError(f"could not write checkpoint {str(p)!r}: {_cause(cause, folder)}; "
                                  "the previous file, if any, is untouched") from None
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint, or a model exported as .safetensors or as a model folder
    (charrnn.model.safetensors_read, charrnn.model.folder_read read them into the same dict, checked the same way);
    every way it can be wrong is a CheckpointError."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"checkpoint {str(p)!r} does not exist")
    if p.is_dir():
        from charrnn.model import folder_read as folder_read

        if not folder_read.is_model_folder(p):
            raise UsageError(f"checkpoint {str(p)!r} is a directory, not a checkpoint file nor a model folder "
                             f"(which holds {folder_read.CONFIG} and {folder_read.WEIGHTS})")
        return _checked(folder_read.read(p), p)
    if not p.is_file():  # a FIFO or device would block or stream: torch.load needs a seekable file
        raise UsageError(f"checkpoint {str(p)!r} is not a regular file (a pipe or device); save it to a file first")
    try:
        with open(p, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {str(p)!r}: {e.strerror or e}") from None
    # torch.save writes a zip archive; anything else would go down torch's legacy pickle path.
    if head[:4] == b"PK\x03\x04":
        ckpt = _torch_load(p, map_location)
        if isinstance(ckpt, dict):  # the mark of a file read by safetensors_read, which a checkpoint cannot claim
            ckpt.pop("exported_as", None)
    else:
        from charrnn.model import safetensors_read as safetensors_read

        if not safetensors_read.looks_like(p, head):
            raise CheckpointError(f"{str(p)!r} is not a charrnn checkpoint")
        ckpt = safetensors_read.read(p)
    return _checked(ckpt, p)


def _checked(ckpt: Any, p: Path) -> dict[str, Any]:
    """A loaded checkpoint dict (from any of the formats) after every check of its fields."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{str(p)!r} is not a charrnn checkpoint")
    version = ckpt.get("version")
    if not _is_int(version) or version < 1:
        raise CheckpointError(f"{str(p)!r} is damaged: its format version {version!r} is not a positive integer")
    if version > VERSION:
        raise CheckpointError(
            f"{str(p)!r} has checkpoint format version {version}, newer than this charrnn "
            f"understands ({VERSION}); upgrade charrnn"
        )
    missing = [k for k in ("model_config", "vocab", "weights") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{str(p)!r} is damaged: missing {', '.join(missing)}")
    try:
        check_model_fields(ckpt)
    except (CheckpointError, UsageError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{str(p)!r} is damaged: {_first_line(e)}") from None
    _check_run_fields(ckpt, repr(str(p)))
    _check_records(ckpt, p)
    _check_labels(ckpt, p)
    return ckpt


def _torch_load(p: Path, map_location: str | torch.device) -> Any:
    """torch.load(weights_only=True) of a file that starts like a zip archive, its failures as CheckpointErrors."""
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
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


def _check_run_fields(ckpt: dict[str, Any], where: str) -> None:
    """The fields of training history and fine-tuning; checkpoints older than them lack them."""
    History.from_checkpoint(ckpt.get("history"), where=where)
    stale = ckpt.get("stale_validations", 0)
    if not _is_int(stale) or stale < 0:
        raise CheckpointError(f"{where} is damaged: stale_validations is not a count")
    if not isinstance(ckpt.get("init_from"), (str, type(None))):
        raise CheckpointError(f"{where} is damaged: init_from is not a path")
    _check_average(ckpt, where)


def _check_average(ckpt: dict[str, Any], where: str) -> None:
    """The fields of weight averaging (absent from checkpoints older than it): which weights `weights`
    holds, the raw ones beside them when those are the average, and the average's state."""
    shapes = parameter_shapes(ModelConfig.from_dict(ckpt["model_config"]))
    weights_from = ckpt.get("weights_from", "raw")
    try:
        if weights_from not in ("raw", *AVERAGES[1:]):
            raise CheckpointError(f"weights_from {weights_from!r} is not raw, ema or tail")
        if "training_weights" in ckpt:
            check_weights(ckpt["training_weights"], shapes, "its training weights")
        if ckpt.get("average") is not None:
            check_state(ckpt["average"], shapes)
        if weights_from != "raw" and not ("training_weights" in ckpt and isinstance(ckpt.get("average"), dict)
                                          and ckpt["average"]["kind"] == weights_from):
            raise CheckpointError(f"it holds {weights_from} weights without the training weights and the "
                                  "average behind them")
    except CheckpointError as e:
        raise CheckpointError(f"{where} is damaged: {e}") from None


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _first_line(e: BaseException) -> str:
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return (text.splitlines() or [type(e).__name__])[0]


def check_model_fields(ckpt: dict[str, Any]) -> None:
    """Check what every command uses (architecture, vocabulary, weights) before anything is built
    from it: types and ranges of the config, one character per vocabulary entry in code-point
    order, and every weight's name and shape against the config. The expected shapes are computed
    from the config (model.parameter_shapes: nothing is built or allocated), so a config claiming
    hidden 20000 or 100000 layers is refused at once."""
    config_dict = ckpt["model_config"]
    if not isinstance(config_dict, dict) or set(config_dict) - set(ModelConfig.__dataclass_fields__):
        raise CheckpointError("its model config is not the one charrnn writes")
    config = ModelConfig.from_dict(config_dict)
    vocab = ckpt["vocab"]
    if not isinstance(vocab, dict) or not isinstance(vocab.get("chars"), list) or \
            not isinstance(vocab.get("unk"), bool) or not isinstance(vocab.get("counts"), list):
        raise CheckpointError("its vocabulary is not the one charrnn writes")
    chars, counts = vocab["chars"], vocab["counts"]
    if not all(isinstance(c, str) and len(c) == 1 for c in chars):
        raise CheckpointError("its vocabulary holds an entry that is not one character")
    points = [ord(c) for c in chars]
    if any(a >= b for a, b in zip(points, points[1:], strict=False)):
        raise CheckpointError("its vocabulary is not in code-point order or repeats a character")
    if len(counts) != len(chars) or not all(_is_int(n) and n >= 0 for n in counts):
        raise CheckpointError("its vocabulary counts do not match its characters")
    if len(chars) + vocab["unk"] != config.vocab_size:
        raise CheckpointError(f"its vocabulary has {len(chars) + vocab['unk']} entries but the model "
                              f"expects {config.vocab_size}")
    weights = ckpt["weights"]
    if not isinstance(weights, dict) or not all(isinstance(t, torch.Tensor) for t in weights.values()):
        raise CheckpointError("its weights are not a table of tensors")
    expected = parameter_shapes(config)
    if set(weights) != set(expected):
        raise CheckpointError("its weights do not match its model config (different parameter names)")
    for name, shape in expected.items():
        t = weights[name]
        if tuple(t.shape) != shape or not t.is_floating_point():
            raise CheckpointError(f"weight {name} has shape {tuple(t.shape)} ({t.dtype}), but the model "
                                  f"config needs {shape} (floating point)")


def saved_processes(resume: dict[str, Any]) -> tuple[int, list[dict[str, torch.Tensor]]]:
    """How many processes wrote a checkpoint (1 when it predates the field) and the dropout
    generators of each, checked: a checkpoint is untrusted input."""
    processes = resume.get("processes", 1)
    rngs = resume.get("rng_ranks") if processes != 1 else [resume.get("rng")]
    if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1 \
            or not isinstance(rngs, list) or len(rngs) != processes \
            or not all(isinstance(r, dict) and isinstance(r.get("torch"), torch.Tensor)
                       and r["torch"].dtype == torch.uint8 for r in rngs):
        raise CheckpointError("the checkpoint is damaged: its process count or random generator states are invalid")
    return processes, rngs


def check_finite(ckpt: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse weights holding NaN or infinity: they would score and sample garbage with exit 0."""
    bad = [name for name, t in ckpt["weights"].items() if not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"{str(path)!r} has non-finite weights ({', '.join(bad[:3])}"
                              f"{' ...' if len(bad) > 3 else ''}): the run that wrote it diverged; "
                              "use an earlier checkpoint")


def check_resume_fields(ckpt: dict[str, Any], path: str | os.PathLike) -> None:
    """Check what a resumed run reads beyond the model: position, losses, RNG, carried state."""
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{str(path)!r} is damaged: {what}; it cannot be resumed")

    if ckpt.get("exported_as"):
        raise CheckpointError(f"{str(path)!r} is an exported model ({ckpt['exported_as']}): it holds no optimizer "
                              "or position, so it cannot be resumed; resume from its checkpoint, or start a new "
                              "run from its weights with --init-from")
    for key in ("train_config", "optimizer", "rng", "data"):
        if not isinstance(ckpt.get(key), dict):
            raise bad(f"its {key.replace('_', ' ')} is missing or not a table")
    for key in ("step", "epoch", "batch_in_epoch", "chars_seen", "seed"):
        if not _is_int(ckpt.get(key)) or ckpt[key] < 0 or ckpt[key] >= 2**63:
            raise bad(f"its {key.replace('_', ' ')} is not a non-negative integer")
    elapsed = ckpt.get("elapsed")
    if not isinstance(elapsed, (int, float)) or isinstance(elapsed, bool) or not 0 <= elapsed < float("inf"):
        raise bad("its elapsed time is not a finite number of seconds")
    for key in ("best_val_loss", "val_loss"):
        value = ckpt.get(key)
        if value is not None and (not isinstance(value, float) or not value == value or value < 0):
            raise bad(f"its {key.replace('_', ' ')} is not a non-negative number")
    rng = ckpt["rng"]
    if not isinstance(rng.get("torch"), torch.Tensor) or rng["torch"].dtype != torch.uint8:
        raise bad("its random generator state is not a byte tensor")
    data = ckpt["data"]
    if not _is_int(data.get("chars")) or not isinstance(data.get("sha256"), str):
        raise bad("its training-text fingerprint is not the one charrnn writes")
    config = ModelConfig.from_dict(ckpt["model_config"])
    hidden = ckpt.get("hidden")
    if hidden is not None:
        parts = list(hidden) if isinstance(hidden, (list, tuple)) else [hidden]
        lstm = config.base_cell == "lstm"
        if len(parts) != (2 if lstm else 1) or not all(isinstance(t, torch.Tensor) and t.dim() == 3
                                                       and t.shape[0] == config.layers
                                                       and t.shape[2] == config.hidden for t in parts):
            raise bad("its carried hidden state does not fit the model")
    saved = ckpt["train_config"]
    try:  # processes and rng_ranks: data-parallel runs (absent in older checkpoints)
        saved_processes(ckpt)
    except CheckpointError:
        raise bad("its process count or per-process random generator states are invalid") from None

    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for key, value in saved.items():
        field = fields.get(key)
        if field is None:
            raise bad(f"its training settings hold an unknown field {key!r}")
        default = field.default
        if value is None or default is None and isinstance(value, (int, float, str)):
            continue
        ok = isinstance(value, type(default)) and not (isinstance(value, bool) and not isinstance(default, bool))
        if isinstance(default, float) and _is_int(value):
            ok = True
        if not ok:
            raise bad(f"its training setting {key} is {value!r}, not a {type(default).__name__}")
    try:
        TrainConfig(**{**saved, "epochs": None, "max_steps": 1, "time_budget": None})
    except (UsageError, TypeError, ValueError) as e:
        raise bad(f"its training settings are out of range ({_first_line(e)})") from None


def _check_records(ckpt: dict[str, Any], p: Path) -> None:
    """The fields of `--partition records` (absent from other and older checkpoints): the delimiter
    (a non-empty string) and the training-record hashes (a 1-D int64 tensor within the cap)."""
    from charrnn.data.records import MAX_RECORD_HASHES

    config = ckpt.get("train_config")
    if isinstance(config, dict) and config.get("partition") == "records":
        delimiter = config.get("delimiter")
        if not isinstance(delimiter, str) or not delimiter:
            raise CheckpointError(f"{str(p)!r} is damaged: a records model without a valid delimiter")
    hashes = ckpt.get("record_hashes")
    if hashes is not None and not (isinstance(hashes, torch.Tensor) and hashes.dtype == torch.int64
                                   and hashes.dim() == 1 and hashes.numel() <= MAX_RECORD_HASHES
                                   and isinstance(ckpt.get("record_hashes_complete"), bool)):
        raise CheckpointError(f"{str(p)!r} is damaged: invalid record_hashes")


def _check_labels(ckpt: dict[str, Any], p: Path) -> None:
    """A label-conditioned model's labels (absent from other and older checkpoints): as many names,
    distinct and sorted, with their counts, as the model has label embeddings."""
    wanted = ckpt["model_config"].get("labels", 0)
    if not wanted and "labels" not in ckpt:
        return
    try:
        names = LabelSet.from_dict(ckpt.get("labels"))
    except ValueError as e:
        raise CheckpointError(f"{str(p)!r} is damaged: invalid labels ({e})") from None
    if len(names.names) != wanted:
        raise CheckpointError(f"{str(p)!r} is damaged: {len(names.names)} label names for a model of {wanted} labels")


def label_set(ckpt: dict[str, Any]) -> LabelSet | None:
    """The labels of a label-conditioned model (trained with --labels), else None."""
    return LabelSet.from_dict(ckpt["labels"]) if ckpt.get("labels") is not None else None


def record_delimiter(ckpt: dict[str, Any]) -> str | None:
    """The delimiter of a model trained with `--partition records`, else None."""
    config = ckpt.get("train_config") or {}
    return config.get("delimiter") if config.get("partition") == "records" else None


def load_model(
    path: str | os.PathLike, device: torch.device | str = "cpu"
) -> tuple[CharRNN, Vocab, dict[str, Any]]:
    """Model (in eval mode, on `device`), vocabulary and the raw checkpoint dict."""
    ckpt = load(path)
    check_finite(ckpt, path)
    model, vocab = build_model(ckpt, repr(str(path)))
    return model.to(device).eval(), vocab, ckpt


def build_model(ckpt: dict[str, Any], where: str) -> tuple[CharRNN, Vocab]:
    """The model (on the CPU, in training mode) and vocabulary of a loaded checkpoint; `where` names
    it in the error if its weights still do not fit."""
    try:
        vocab = Vocab.from_dict(ckpt["vocab"])
        model = CharRNN(ModelConfig.from_dict(ckpt["model_config"]))
        model.load_state_dict(ckpt["weights"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{where} is damaged: {str(e).splitlines()[0]}") from None
    return model, vocab


def check_state(saved: Any, shapes: dict[str, tuple[int, ...]]) -> None:
    """CheckpointError unless `saved` is an average's state whose weights fit `shapes` (name -> shape)."""
    if not isinstance(saved, dict) or set(saved) != {"kind", "decay", "tail", "count", "weights"}:
        raise CheckpointError("its weight average is not the one charrnn writes")
    try:
        check_settings(saved["kind"], saved["decay"], saved["tail"])
    except UsageError as e:
        raise CheckpointError(f"its weight average is invalid ({e})") from None
    count, weights = saved["count"], saved["weights"]
    if saved["kind"] == "none" or not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise CheckpointError("its weight average is invalid (kind or count)")
    if weights is None:
        if count:
            raise CheckpointError("its weight average counts updates but holds no weights")
        return
    check_weights(weights, shapes, "its averaged weights")
    if not count:
        raise CheckpointError("its weight average holds weights but counts no update")


def check_weights(weights: Any, shapes: dict[str, tuple[int, ...]], what: str) -> None:
    """CheckpointError unless `weights` maps exactly the names of `shapes` to floating tensors of those shapes."""
    if not isinstance(weights, dict) or set(weights) != set(shapes) or not all(
            isinstance(t, torch.Tensor) and t.is_floating_point() and tuple(t.shape) == shapes[n]
            for n, t in weights.items()):
        raise CheckpointError(f"{what} do not match its model config")
