"""Fine-tuning: a run that starts from another checkpoint's weights on a new text.

The base checkpoint gives the architecture and the weights, nothing else: the optimizer, the
schedule, the step count and the history start afresh. Characters of the new text that the base
vocabulary lacks are either added (the input table and the output layer grow by rows initialised
like a fresh model's, old rows unchanged: see model.grow_vocab) or kept out and read as <unk>.
"""

from __future__ import annotations

from typing import Any

from charrnn.data.vocab import Vocab
from charrnn.errors import DataError
from charrnn.model.checkpoint import build_model
from charrnn.model.network import CharRNN, grow_vocab


def choose_vocab(base: Vocab, text_vocab: Vocab, keep: bool) -> tuple[Vocab, list[str]]:
    """(the vocabulary to fine-tune with, the new text's characters that the base lacks).

    keep=False: the base grown by those characters; keep=True: the base itself, under which they
    become <unk> (an error when the base has no <unk> to map them to).
    """
    grown = base.grow(text_vocab)
    added = base.added(grown)
    if not keep:
        return grown, added
    if added and base.unk_id is None:
        raise DataError("the base model has no <unk> token, so --keep-vocab cannot map the new characters "
                        f"{', '.join(repr(c) for c in added[:10])}; leave --keep-vocab out to add them")
    return base, added


def start_model(base: dict[str, Any], vocab: Vocab, where: str = "the --init-from checkpoint") -> CharRNN:
    """The base checkpoint's model, grown to `vocab` (a superset of the base vocabulary) if needed.

    New rows are drawn from the global torch RNG: seed it first (the run's --seed) for a repeatable start.
    """
    model, base_vocab = build_model(base, where)
    id_map = base_vocab.id_map(vocab)
    if vocab.size == base_vocab.size and id_map.tolist() == list(range(vocab.size)):
        return model
    return grow_vocab(model, id_map.tolist(), vocab.size)
