"""Labels of a label-conditioned model: records LABEL<TAB>TEXT, and the label set a checkpoint keeps.

`charrnn train --partition records --labels` reads each record as its label (what precedes the
first tab) and its text (the rest). The model trains on the texts, each with its label as an input
(charrnn.model.network: a learned embedding); the checkpoint keeps the labels' names and how many training
records each had (their counts give the prior of `eval classify`). This module imports no torch.
"""

from __future__ import annotations

import difflib
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from charrnn.errors import DataError, UsageError

if TYPE_CHECKING:
    import numpy as np

    from charrnn.data.vocab import Vocab

MAX_LABELS = 4096  # labels of one model
# How a label enters the recurrence (charrnn.model.network): added to the input at every step, or as the initial
# state. "add" was measured better (docs/poems.md#how-the-label-enters).
LABEL_MODES = ("add", "state")
DEFAULT_LABEL_MODE = "add"
MAX_LABEL_CHARS = 200  # a label is a name, not a text


@dataclass(frozen=True)
class LabelSet:
    names: tuple[str, ...]  # sorted; id of names[i] is i
    counts: tuple[int, ...]  # training records of each label

    def __post_init__(self) -> None:
        if not self.names or len(self.names) > MAX_LABELS or len(self.counts) != len(self.names):
            raise ValueError(f"a label set has 1 to {MAX_LABELS} labels, each with a count")
        if list(self.names) != sorted(set(self.names)) or not all(isinstance(n, str) and n for n in self.names):
            raise ValueError("label names must be distinct non-empty strings, sorted")
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in self.counts):
            raise ValueError("label counts must be non-negative integers")

    @classmethod
    def of(cls, labels: Iterable[str]) -> LabelSet:
        counted = Counter(labels)
        names = tuple(sorted(counted))
        return cls(names, tuple(counted[n] for n in names))

    def id_of(self, name: str, option: str = "--label") -> int:
        """The id of label `name`; an unknown one is a UsageError naming the closest labels."""
        try:
            return self.names.index(name)
        except ValueError:
            pass
        close = difflib.get_close_matches(name, self.names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else \
            f"the model's labels are {', '.join(repr(n) for n in self.names[:10])}" + \
            (f" and {len(self.names) - 10} more" if len(self.names) > 10 else "")
        raise UsageError(f"{option} {name!r} is not one of the model's labels: {hint}")

    def log_prior(self) -> list[float]:
        """log p(label) from the training counts, add-one smoothed (a label seen once is not -inf)."""
        total = sum(self.counts) + len(self.counts)
        return [math.log((c + 1) / total) for c in self.counts]

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "counts": list(self.counts)}

    @classmethod
    def from_dict(cls, d: Any) -> LabelSet:
        if not isinstance(d, dict) or not isinstance(d.get("names"), list) or not isinstance(d.get("counts"), list):
            raise ValueError("labels must be {'names': [...], 'counts': [...]}")
        return cls(tuple(d["names"]), tuple(d["counts"]))


def split_label(record: str, number: int) -> tuple[str, str]:
    """(label, text) of one record LABEL<TAB>TEXT; `number` (1-based) names it in the error."""
    label, tab, text = record.partition("\t")
    if not tab:
        shown = record if len(record) <= 40 else record[:40] + "..."
        raise DataError(f"record {number:,} has no tab: with --labels each record is LABEL<TAB>TEXT (got {shown!r})")
    if not label.strip():
        raise DataError(f"record {number:,} has an empty label (nothing before its tab)")
    if len(label) > MAX_LABEL_CHARS:
        raise DataError(f"record {number:,} has a label of {len(label):,} characters, more than {MAX_LABEL_CHARS} "
                        "(is the tab in the right place?)")
    return label, text


def labelled_records(text: str, delimiter: str) -> tuple[str, list[str]]:
    """The text of `text`'s labelled records without their labels, each followed by `delimiter`, and
    the label of each, in order. Empty records (two delimiters in a row) are skipped, as training
    skips them; more than MAX_LABELS distinct labels is a DataError."""
    records = text.split(delimiter)
    if records and records[-1] == "":
        records.pop()  # a trailing delimiter closes the last record
    texts, labels = [], []
    for number, record in enumerate(records, 1):
        if not record:
            continue
        label, body = split_label(record, number)
        texts.append(body)
        labels.append(label)
    if not labels:
        raise DataError("the training text has no labelled record")
    distinct = len(set(labels))
    if distinct > MAX_LABELS:
        raise DataError(f"the records have {distinct:,} distinct labels, more than the limit of {MAX_LABELS:,} "
                        "(is the label the first field, before the tab?)")
    return "".join(t + delimiter for t in texts), labels


@dataclass(frozen=True, eq=False)
class RecordLabels:
    """The labels of a training run's records: the set, and the label id of each record (empty ones
    included) of the training and the validation text, in order."""

    names: LabelSet
    train: np.ndarray  # (records of the training text,) int64
    val: np.ndarray  # (records of the validation text,) int64


@dataclass(frozen=True, eq=False)
class LabelledText:
    """A labelled corpus read for training: the records' texts encoded (each followed by the
    delimiter), the label set, and each record's label id."""

    vocab: Vocab
    ids: np.ndarray  # (n,) ids of the records' texts, labels removed
    names: LabelSet
    record_labels: np.ndarray  # (records,) int64


def read_labelled(text: str, delimiter: str, vocab: Vocab | None = None, min_freq: int = 1) -> LabelledText:
    """`text` of LABEL<TAB>TEXT records, ready to train on: the vocabulary is built from the texts
    alone (labels are not characters the model writes), or `vocab` (a resumed run's) reads them."""
    import numpy as np

    from charrnn.data.vocab import Vocab

    body, labels = labelled_records(text, delimiter)
    if vocab is None:
        vocab = Vocab.build(body, min_freq=min_freq)
    names = LabelSet.of(labels)
    index = {n: i for i, n in enumerate(names.names)}
    ids = vocab.encode(body, unk="map" if vocab.unk else "error", where="the training text")
    return LabelledText(vocab, ids, names, np.fromiter((index[n] for n in labels), dtype=np.int64, count=len(labels)))


def split_labels(record_labels: np.ndarray, train_ids: np.ndarray, delimiter_ids: np.ndarray,
                 names: LabelSet) -> RecordLabels:
    """The labels of the records of `train_ids` (the training text's first records) and of the rest."""
    from charrnn.data.partition import find_records

    n = len(find_records(train_ids, delimiter_ids)[0]) if len(train_ids) else 0
    return RecordLabels(names, record_labels[:n], record_labels[n:])
