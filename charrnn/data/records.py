"""Records: text cut at a delimiter (a line by default), read as a stream, and their hashes.

A record is the text between two delimiters; the delimiter belongs to neither record. A trailing
delimiter at the end of the input ends the last record (it does not start an empty one), so
"a\\nb\\n" and "a\\nb" are both the records "a" and "b", as `wc -l`-style tools see lines. Two
delimiters in a row make an empty record.

Delimiters and stop strings are given on the command line with backslash escapes (`\\0`, `\\n`,
`\\t`, `\\\\`, `\\xHH`, `\\uHHHH`...), decoded by `unescape`.

Record hashes: the first 8 bytes of BLAKE2b over the record's UTF-8 bytes, as a signed 64-bit
integer (so they fit an int64 tensor in a checkpoint). With 2^20 hashes stored (8 MiB, the cap),
the chance that a random new record collides with one of them is about 2^20 / 2^64 = 6e-14.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

import numpy as np

from charrnn.data.vocab import Vocab
from charrnn.errors import DataError, UnknownCharacterError, UsageError

MAX_RECORD_HASHES = 1 << 20  # 8 MiB of int64 in a checkpoint

_SIMPLE = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", "a": "\a", "b": "\b", "f": "\f",
           "v": "\v", "e": "\x1b", "'": "'", '"': '"'}
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.?)", re.DOTALL)


def unescape(text: str, option: str = "--delimiter") -> str:
    """Decode backslash escapes: \\n \\t \\r \\0 \\\\ \\a \\b \\f \\v \\e \\' \\" \\xHH \\uHHHH \\UHHHHHHHH.

    Anything else after a backslash (or a lone trailing backslash) is a UsageError naming `option`;
    so is an empty result (an empty delimiter or stop string matches everywhere). charrnn reads every
    text with Windows line ends "\r\n" as "\n", so "\r\n" here means "\n" too: `--delimiter '\r\n'`
    splits a CRLF file into its lines, `'\r\n\r\n'` into its paragraphs.
    """

    def one(m: re.Match) -> str:
        code = m.group(1)
        if code[:1] in ("x", "u", "U") and len(code) > 1:
            value = int(code[1:], 16)
            if value > 0x10FFFF or 0xD800 <= value <= 0xDFFF:
                raise UsageError(f"{option} {as_typed(text)}: \\{code} is not a Unicode character")
            return chr(value)
        if code in _SIMPLE:
            return _SIMPLE[code]
        shown = f"\\{as_typed(code)[1:-1]}" if code else "a lone backslash at the end"
        raise UsageError(f"{option} {as_typed(text)}: unknown escape {shown} "
                         "(use \\n, \\t, \\0, \\\\, \\xHH or \\uHHHH)")

    out = _ESCAPE.sub(one, text).replace("\r\n", "\n")
    if not out:
        raise UsageError(f"{option} must not be empty")
    return out


def as_typed(text: str) -> str:
    """`text` as the user typed it, in single quotes, for a message: a backslash stays one backslash
    (repr would double it), and only characters that cannot be shown on one line (controls, line
    and paragraph separators, bidi overrides) become \\xHH / \\uHHHH."""
    return "'" + "".join(c if c.isprintable() else repr(c)[1:-1] for c in text) + "'"


# Characters other than controls that change how the rest is laid out: the line and paragraph
# separators, and the bidi marks, embeddings, overrides and isolates (U+202E reverses what follows).
ACTING = frozenset([0x2028, 0x2029, 0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)])
# What escape() writes as \xHH or \uHHHH: the controls (C0 but those with a letter, DEL, C1) and ACTING.
_HIDDEN = re.compile("[\x01-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f" + "".join(chr(c) for c in sorted(ACTING)) + "]")


def escape(text: str) -> str:
    """The inverse of `unescape` for display: one line, readable (`\\n`, `\\t`, `\\0`, `\\\\`), and no
    character that would act on a terminal instead of being seen (ESC, BEL, U+0085, U+202E: `\\x1b`...)."""
    out = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    out = out.replace("\0", "\\0")
    return _HIDDEN.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", out)


def split_records(chunks: Iterable[str], delimiter: str,
                  on_end: Callable[[int], None] | None = None) -> Iterator[list[str]]:
    """Records of the text given as `chunks`, streamed: for each chunk, the list of records it
    completed (possibly empty), in order; at the end, the last record if text follows the last
    delimiter, and `on_end(number of delimiters found)`. Memory: one chunk plus the unfinished
    record, kept as a list of its chunks until a delimiter ends it (so a record of many chunks is
    joined once, not copied again at every chunk; a delimiter may straddle chunks)."""
    if not delimiter:
        raise UsageError("the delimiter must not be empty")
    pending: list[str] = []  # the unfinished record, in pieces
    tail = ""  # its last len(delimiter) - 1 characters: where a straddling delimiter begins
    keep = len(delimiter) - 1
    found = 0
    for chunk in chunks:
        if not chunk:
            continue
        if delimiter not in tail + chunk:
            pending.append(chunk)
            tail = (tail + chunk)[-keep:] if keep else ""
            yield []
            continue
        pending.append(chunk)
        text = "".join(pending)
        pending.clear()
        pieces = text.split(delimiter)
        del text
        last = pieces.pop()  # the unfinished record (or "" right after a delimiter)
        pending = [last] if last else []
        tail = last[-keep:] if keep else ""
        found += len(pieces)
        yield pieces
    if pending:
        yield ["".join(pending)]
    if on_end is not None:
        on_end(found)


def byte_chunks(stream: BinaryIO, name: str = "input", size: int = 1 << 20) -> Iterator[bytes]:
    """The bytes of `stream` as they arrive: `read1` returns what is available (up to `size`)
    without waiting for more, so records from a slow pipe are handled as soon as they are complete.
    A read error (a folder as stdin, a failing disk) is a DataError naming `name`."""
    read = getattr(stream, "read1", stream.read)
    while True:
        try:
            chunk = read(size)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read {name}: {getattr(e, 'strerror', None) or e}") from None
        if not chunk:
            return
        yield chunk


def record_hash(text: str) -> int:
    """64-bit hash of a record (signed, for int64 storage)."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


class RecordHashes:
    """A bounded set of record hashes: keeps the first `cap` distinct ones and remembers whether
    any had to be left out (then membership can say "new" for a record that is not)."""

    def __init__(self, cap: int = MAX_RECORD_HASHES) -> None:
        self.cap = cap
        self.seen: set[int] = set()
        self.complete = True

    def add(self, records: Iterable[str]) -> None:
        for record in records:
            if not record:
                continue
            h = record_hash(record)
            if h in self.seen:
                continue
            if len(self.seen) >= self.cap:
                self.complete = False
                continue
            self.seen.add(h)

    def to_array(self) -> np.ndarray:
        """Sorted int64 array of the kept hashes, shape (k,)."""
        return np.array(sorted(self.seen), dtype=np.int64)


def contains(sorted_hashes: np.ndarray, text: str) -> bool:
    """Whether the hash of `text` is in the sorted int64 array `sorted_hashes`."""
    h = record_hash(text)
    i = int(np.searchsorted(sorted_hashes, h))
    return i < len(sorted_hashes) and int(sorted_hashes[i]) == h


def delimiter_ids(vocab: Vocab, delimiter: str) -> np.ndarray:
    """Ids of the record delimiter; a DataError when the training text never contains it."""
    try:
        return vocab.encode(delimiter, unk="error").astype(np.int64)
    except UnknownCharacterError:
        raise DataError(f"the delimiter {delimiter!r} never occurs in the training text: no records to train on "
                        "(choose another --delimiter)") from None


def training_record_hashes(ids: np.ndarray, vocab: Vocab, delimiter: str,
                           chunk: int = 1 << 22) -> tuple[np.ndarray, bool]:
    """What `--novel` needs: the sorted 64-bit hashes of the distinct non-empty records of the
    training ids (at most MAX_RECORD_HASHES, 8 MiB), and whether that is all of them."""
    hashes = RecordHashes()
    texts = (vocab.decode(np.asarray(ids[i : i + chunk])) for i in range(0, len(ids), chunk))
    for records in split_records(texts, delimiter):
        hashes.add(records)
        if not hashes.complete:
            break
    return hashes.to_array(), hashes.complete
