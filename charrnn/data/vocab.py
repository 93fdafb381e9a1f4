"""Character vocabulary and the one-hot encoder.

One token per Unicode code point, in code-point order, id = position; an optional `<unk>` token
takes the last id. Encoding works on whole numpy arrays of code points (no Python loop per
character), so a 100 MB text encodes in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
import torch

UnkPolicy = Literal["error", "map"]

UNK_TOKEN = "<unk>"
# What `decode` writes for the <unk> id: one character, so decoded length == number of ids.
UNK_CHAR = "\ufffd"
# Characters handled per numpy pass: bounds the temporaries (4 to 8 bytes per character) of
# counting and encoding, whatever the length of the text.
CHUNK = 1 << 22


def code_points(text: str) -> np.ndarray:
    """Code points of `text` as a uint32 array of shape (len(text),)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


def count_code_points(text: str, into: np.ndarray | None = None) -> np.ndarray:
    """Occurrences of every code point in `text`, as an int64 array indexed by code point (added to
    `into` when given, for counting a text chunk by chunk)."""
    freq = into if into is not None else np.zeros(0, dtype=np.int64)
    for i in range(0, len(text), CHUNK):
        counts = np.bincount(code_points(text[i : i + CHUNK]))
        if counts.size > freq.size:
            counts[: freq.size] += freq
            freq = counts
        else:
            freq[: counts.size] += counts
    return freq


def smallest_dtype(size: int) -> np.dtype:
    """The smallest unsigned integer dtype that holds ids 0..size-1."""
    if size <= 1 << 8:
        return np.dtype(np.uint8)
    if size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


@dataclass(frozen=True)
class Vocab:
    chars: tuple[str, ...]  # sorted by code point; id of chars[i] is i
    counts: tuple[int, ...]  # how often each char occurs in the text it was built from
    unk: bool = True  # <unk> has id len(chars) when present

    @classmethod
    def build(cls, text: str, unk: bool = True, min_freq: int = 1, max_chars: int | None = None) -> Vocab:
        """Vocabulary of `text`; characters seen fewer than `min_freq` times, or beyond the `max_chars`
        most frequent, map to <unk>."""
        return cls.from_counts(count_code_points(text), unk=unk, min_freq=min_freq, max_chars=max_chars)

    @classmethod
    def from_counts(cls, freq: np.ndarray, unk: bool = True, min_freq: int = 1,
                    max_chars: int | None = None) -> Vocab:
        """Vocabulary from `freq[c]` = occurrences of code point c (see `count_code_points`): the characters
        seen at least `min_freq` times and, when `max_chars` is given, only the `max_chars` most frequent of
        them (ties go to the lower code point); <unk> is not counted in `max_chars`."""
        if (min_freq > 1 or max_chars is not None) and not unk:
            raise ValueError("min_freq > 1 and max_chars need the <unk> token")
        kept = np.flatnonzero(freq >= max(min_freq, 1))
        if max_chars is not None and kept.size > max_chars:
            best = np.lexsort((kept, -freq[kept]))[:max_chars]  # by count, then code point
            kept = np.sort(kept[best])
        return cls(
            chars=tuple(chr(c) for c in kept.tolist()),
            counts=tuple(int(n) for n in freq[kept].tolist()),
            unk=unk,
        )

    @property
    def size(self) -> int:
        return len(self.chars) + int(self.unk)

    def __len__(self) -> int:
        return self.size

    @property
    def unk_id(self) -> int | None:
        return len(self.chars) if self.unk else None

    @property
    def dtype(self) -> np.dtype:
        return smallest_dtype(self.size)

    def _table(self) -> np.ndarray:
        """code point -> id, -1 for characters outside the vocabulary; shape (max code point + 1,)."""
        known = np.array([ord(c) for c in self.chars], dtype=np.int64)
        table = np.full(int(known.max()) + 1 if known.size else 1, -1, dtype=np.int32)
        table[known] = np.arange(known.size, dtype=np.int32)
        return table

    @staticmethod
    def _lookup(table: np.ndarray, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(code points, ids) of `text`, both of shape (len(text),); id -1 marks unknown characters."""
        cps = code_points(text)
        inside = cps < table.size
        ids = np.full(cps.shape, -1, dtype=np.int32)
        ids[inside] = table[cps[inside]]
        return cps, ids

    def unknown_chars(self, text: str) -> list[str]:
        """Distinct characters of `text` not in the vocabulary, in code-point order."""
        table, unknown = self._table(), set()
        for i in range(0, len(text), CHUNK):
            cps, ids = self._lookup(table, text[i : i + CHUNK])
            unknown.update(np.unique(cps[ids < 0]).tolist())
        return [chr(c) for c in sorted(unknown)]

    def encode(self, text: str, unk: UnkPolicy = "error", where: str = "text",
               out: np.ndarray | None = None) -> np.ndarray:
        """Ids of `text`, shape (len(text),), dtype `self.dtype` (written into `out` when given).

        Unknown characters raise UnknownCharacterError under unk="error" and become <unk>
        under unk="map" (an error too when the vocabulary has no <unk>).
        """
        from charrnn.errors import UnknownCharacterError

        if out is None:
            out = np.empty(len(text), dtype=self.dtype)
        table = self._table()
        for i in range(0, len(text), CHUNK):
            cps, ids = self._lookup(table, text[i : i + CHUNK])
            missing = ids < 0
            if missing.any():
                if unk == "error" or self.unk_id is None:
                    raise UnknownCharacterError(self.unknown_chars(text), where, can_map=self.unk_id is not None)
                ids[missing] = self.unk_id
            out[i : i + len(ids)] = ids
        return out

    def decode(self, ids: np.ndarray | list[int] | torch.Tensor) -> str:
        """Text of `ids`; <unk> decodes to U+FFFD so that len(decode(ids)) == len(ids)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.cpu().numpy()
        return "".join(self._decode_table[np.asarray(ids, dtype=np.int64)].tolist())

    @cached_property
    def _decode_table(self) -> np.ndarray:
        """Id -> character, as an object array (built once: the sampler decodes a character at a time)."""
        return np.array(list(self.chars) + ([UNK_CHAR] if self.unk else []), dtype=object)

    def grow(self, text_vocab: Vocab) -> Vocab:
        """This vocabulary plus the characters of `text_vocab` it lacks, for fine-tuning on a new text.

        The union is kept in code-point order with <unk> last, so an old character may get a new id
        (`id_map` says which); the counts are those of the new text (0 for characters it lacks), as
        they describe what the model is now trained on.
        """
        new_counts = dict(zip(text_vocab.chars, text_vocab.counts, strict=True))
        chars = tuple(sorted(set(self.chars) | set(text_vocab.chars)))
        return Vocab(chars=chars, counts=tuple(new_counts.get(c, 0) for c in chars), unk=self.unk)

    def added(self, grown: Vocab) -> list[str]:
        """The characters of `grown` that this vocabulary lacks, in code-point order."""
        known = set(self.chars)
        return [c for c in grown.chars if c not in known]

    def id_map(self, grown: Vocab) -> np.ndarray:
        """For each id of this vocabulary, the id of the same token in `grown` (a superset): shape (size,)."""
        index = {c: i for i, c in enumerate(grown.chars)}
        missing = [c for c in self.chars if c not in index]
        if missing or (self.unk and not grown.unk):
            raise ValueError("the grown vocabulary must hold every token of the old one")
        ids = [index[c] for c in self.chars] + ([grown.unk_id] if self.unk else [])
        return np.array(ids, dtype=np.int64)

    def id_chars(self) -> list[str | None]:
        """The character of each id, None for <unk>: the vocabulary as exported files hold it (JSON null)."""
        return [*self.chars, *([None] if self.unk else [])]

    def to_dict(self) -> dict:
        """Plain data for the checkpoint (strings and ints only: safe under weights_only)."""
        return {"chars": list(self.chars), "counts": list(self.counts), "unk": self.unk}

    @classmethod
    def from_dict(cls, d: dict) -> Vocab:
        return cls(chars=tuple(d["chars"]), counts=tuple(int(n) for n in d["counts"]), unk=bool(d["unk"]))


def one_hot(ids: torch.Tensor, vocab_size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One-hot encoding: integer ids of shape (...) -> tensor of shape (..., vocab_size), float32 unless
    `dtype` says otherwise (a model's inputs take its weights' dtype: a float64 copy reads float64)."""
    return torch.nn.functional.one_hot(ids.long(), vocab_size).to(dtype)
