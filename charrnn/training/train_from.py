"""Training from a checkpoint: how --resume and --init-from meet the options of `charrnn train` (prepare).

A resumed run keeps its checkpoint's training options unless the command line gives others (said
on stderr), and refuses those that would change its training text; a fine-tuned run takes its base
model's architecture and vocabulary, grown by the new text's characters or (--keep-vocab) not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from charrnn.errors import CheckpointError, UsageError


def check_architecture(opts: dict[str, Any], chosen: Any, names: list[str], saved: dict[str, Any], why: str) -> None:
    """Refuse an architecture option given on the command line (directly or by --preset) that differs
    from the checkpoint's `saved` model config; `why` ends the message."""
    from charrnn.model.network import ModelConfig

    # A field added after the checkpoint was written has its default there (weight_drop, embed_dropout).
    saved = {**{f.name: f.default for f in dataclasses.fields(ModelConfig)}, **saved}
    for name in names:
        if chosen(name) and opts[name] != saved.get(name):
            raise UsageError(f"--{name.replace('_', '-')} {opts[name]} differs from the checkpoint's "
                             f"{saved.get(name)}: {why}")


def check_softmax(softmax: str, given: bool, saved: dict[str, Any], why: str) -> None:
    """Refuse a --softmax given on the command line other than the checkpoint's output layer (a checkpoint
    older than the field has a full softmax); `why` ends the message."""
    had = saved.get("output", "full")
    if given and softmax not in ("auto", had):
        raise UsageError(f"--softmax {softmax} differs from the checkpoint's {had}: {why}")


def resume_options(ckpt: dict[str, Any], opts: dict[str, Any], given: Any, chosen: Any, train_names: list[str],
                   official: bool, val_fraction: float, val_max_chars: int | None) -> tuple[list[str], float, Any]:
    """The training options of a resumed run: those given on the command line override the checkpoint's
    (a list of the changes, for stderr), the others are the checkpoint's (set in `opts`); options that
    would change the training text are refused. Returns (changes, val_fraction, val_max_chars)."""
    from charrnn.config import TrainConfig

    # Options added after a checkpoint was written take their defaults (val_max_chars: None, no cap).
    saved_train = {**{f.name: f.default for f in dataclasses.fields(TrainConfig)}, **ckpt["train_config"]}
    # Records split the text by whole records, the others by characters: another split is another
    # training text, which resume refuses (say why here rather than blame the text).
    was_records = saved_train.get("partition") == "records"
    if given("partition") and (opts["partition"] == "records") != was_records:
        raise UsageError(f"--partition cannot change from {saved_train.get('partition')} to {opts['partition']} "
                         "on resume: records hold out whole records for validation, the others a tail of "
                         "characters, so the training text would change")
    if was_records and given("delimiter") and opts["delimiter"] != saved_train.get("delimiter"):
        raise UsageError("--delimiter cannot change on resume (it changes the records, hence the training text)")
    changes = []
    for name in train_names:
        if name in opts and chosen(name):
            if opts[name] != saved_train.get(name):
                changes.append(f"--{name.replace('_', '-')} {saved_train.get(name)} -> {opts[name]}")
        elif name in opts:
            opts[name] = saved_train.get(name)
    if not official and given("val_fraction") and val_fraction != saved_train["val_fraction"]:
        raise UsageError("--val-fraction cannot change on resume (it changes the training text)")
    if not official and given("val_max_chars") and val_max_chars != saved_train.get("val_max_chars"):
        raise UsageError("--val-max-chars cannot change on resume (it changes the training text)")
    return changes, saved_train["val_fraction"], saved_train.get("val_max_chars")  # None: older than the option


def fine_tune_vocab(base: dict[str, Any], base_path: str, encoded: Any, keep: bool, say: Callable[[str], None],
                    encode: Any) -> tuple[Any, Any, Any]:
    """(vocabulary, encoded text, model config) for fine-tuning `base` on the text counted in
    `encoded`; `encode(vocab)` encodes the text again under the chosen vocabulary; `say` is told what
    happens to the vocabulary."""
    from charrnn.data.vocab import Vocab
    from charrnn.model.network import ModelConfig, grown_config
    from charrnn.training.finetune import choose_vocab

    try:
        base_vocab = Vocab.from_dict(base["vocab"])
        base_config = ModelConfig.from_dict(base["model_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{base_path!r} is damaged: {e}") from None
    vocab, added = choose_vocab(base_vocab, encoded.vocab, keep)
    shown = ", ".join(repr(c) for c in added[:20]) + (f" and {len(added) - 20} more" if len(added) > 20 else "")
    if added and keep:
        say(f"warning: {len(added)} character(s) of the text are not in {base_path}'s vocabulary and "
                          f"are read as <unk> (--keep-vocab): {shown}")
    elif added:
        say(f"fine-tuning {base_path}: adding {len(added)} character(s) to its vocabulary of "
                          f"{base_vocab.size}: {shown}")
    else:
        say(f"fine-tuning {base_path}: its vocabulary covers the text")
    if vocab != encoded.vocab:
        encoded = encode(vocab)
    return vocab, encoded, grown_config(base_config, base_vocab.id_map(vocab).tolist(), vocab.size)
