"""A label-conditioned model as a classifier: each text's labels ranked by log p(text | label) + log p(label).

log p(text | label) is the text scored as a record (from the record-start state, its end boundary
included) by the model fixed to the label (model.LabelView); log p(label) is the prior of the
training records' labels (labels.LabelSet.log_prior). A record given as LABEL<TAB>TEXT is scored as
TEXT and told whether the best label is LABEL.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from charrnn.data.labels import LabelSet
from charrnn.data.vocab import Vocab
from charrnn.inference.score import Scorer, score_texts
from charrnn.model.network import CharRNN
from charrnn.threads import ThreadChooser


@dataclass(frozen=True)
class Classified:
    text: str
    scores: tuple[tuple[str, float], ...]  # (label, log p(text | label) + log prior), best first
    expected: str | None = None  # the label the record gave (LABEL<TAB>TEXT), if any

    @property
    def label(self) -> str:
        return self.scores[0][0]

    @property
    def correct(self) -> bool | None:
        return None if self.expected is None else self.label == self.expected

    def to_dict(self) -> dict:
        out: dict = {"text": self.text, "label": self.label, "scores": dict(self.scores)}
        if self.expected is not None:
            out.update(expected=self.expected, correct=self.correct)
        return out


def split_expected(record: str) -> tuple[str, str | None]:
    """(text, expected label) of a record: LABEL<TAB>TEXT gives its label, anything else none."""
    label, tab, text = record.partition("\t")
    return (text, label) if tab and label else (record, None)


def classify(model: CharRNN, vocab: Vocab, labels: LabelSet, boundary: str, records: list[str], *,
             end: bool = True, threads: ThreadChooser | None = None) -> list[Classified]:
    """Each record's labels ranked (records given as TEXT or LABEL<TAB>TEXT); characters the model
    does not know are skipped alike under every label (as `eval score` does). `end`: the boundary
    after the text is scored too (the text is a whole record); without it, the text may be the
    beginning of one."""
    split = [split_expected(r) for r in records]
    texts = [t for t, _ in split]
    prior = labels.log_prior()
    per_label = [score_texts(Scorer(model.for_label(k), vocab, boundary), texts, end=end, threads=threads)
                 for k in range(len(labels.names))]  # (labels, records)
    out = []
    for i, (text, expected) in enumerate(split):
        scores = sorted(((name, prior[k] - per_label[k][i].nats) for k, name in enumerate(labels.names)),
                        key=lambda pair: -pair[1])
        out.append(Classified(text, tuple(scores), expected))
    return out


def classify_stream(model: CharRNN, vocab: Vocab, labels: LabelSet, boundary: str,
                    record_lists: Iterable[list[str]], *, end: bool = True, window: int = 1024,
                    threads: ThreadChooser | None = None) -> Iterator[list[Classified]]:
    """classify() over the lists of records `records.split_records` yields, a list per window."""
    for records in record_lists:
        for i in range(0, len(records), window):
            yield classify(model, vocab, labels, boundary, records[i : i + window], end=end, threads=threads)
