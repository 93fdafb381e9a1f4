"""The part of a text that a model's training used or held out (`charrnn eval ... --split train|valid`).

Training cut the text it read into a training part and a validation tail (charrnn.data.partition:
split_train_val, or split_records_train_val under `--partition records`) by the settings it records
in the checkpoint's `train_config` (val_fraction, val_max_chars, partition, delimiter), and it records
the length and SHA-256 of the training part's ids (`data`, what a resume checks the text against).
Here the same cut is made again on the given text, encoded with the model's vocabulary, and kept only
when the training part's fingerprint is the recorded one: then the parts are exactly those of the
training run. Any other text, or a model that does not record what the cut needs, is a one-line
error, never a guess.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from charrnn.data.vocab import Vocab
from charrnn.errors import DataError, UsageError

NAMED = ("train", "valid")


def split_bounds(ids: np.ndarray, vocab: Vocab, ckpt: dict[str, Any], which: str, where: str) -> tuple[int, int]:
    """(start, end) of part `which` ("train" or "valid") of `ids` (the whole text, encoded with the
    model's vocabulary) as the model's training cut it; `where` names the text in errors."""
    from charrnn.data.cache import data_fingerprint
    from charrnn.data.partition import split_records_train_val, split_train_val
    from charrnn.data.records import delimiter_ids

    if which not in NAMED:
        raise UsageError(f"--split {which}: a model's own split has the parts train and valid")
    train = ckpt.get("train_config") if isinstance(ckpt.get("train_config"), dict) else {}
    data = ckpt.get("data") if isinstance(ckpt.get("data"), dict) else {}
    fraction, max_chars = train.get("val_fraction"), train.get("val_max_chars")
    if not isinstance(fraction, float | int) or not isinstance(data.get("sha256"), str):
        raise UsageError("--split: the model does not record how its training split the text (an export keeps "
                         "only the training text's length): use the checkpoint that `charrnn train` wrote")
    if which == "valid" and fraction == 0:
        raise UsageError("--split valid: the model held nothing out (it was trained with --val-fraction 0, or on "
                         "the train part of a corpus with official splits: score that corpus's valid part)")
    if len(ids) < int(data.get("chars") or 0):
        raise DataError(f"{where} is not the text the model was trained on: it has {len(ids):,} characters, fewer "
                        f"than the {data['chars']:,} of the training part alone")
    try:
        if train.get("partition") == "records":
            part, _ = split_records_train_val(ids, delimiter_ids(vocab, train.get("delimiter") or "\n"), fraction,
                                              max_chars=max_chars)
        else:
            part, _ = split_train_val(ids, fraction, max_chars=max_chars)
    except (DataError, UsageError):
        part = ids[:0]  # the cut cannot be made on this text: it is not the training text
    if data_fingerprint(part) != {"chars": data.get("chars"), "sha256": data["sha256"]}:
        raise DataError(f"{where} is not the text the model was trained on (its training part's SHA-256 is not the "
                        "one the model records), so its split is not known: give the training text")
    cut = len(part)
    return (0, cut) if which == "train" else (cut, len(ids))
