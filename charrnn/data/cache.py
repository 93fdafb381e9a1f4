"""The encoded-corpus cache: decode and count a corpus once, then read its ids from disk.

A corpus (a list of `Part`s) is keyed by the SHA-256 of its bytes as stored, the encoding and the
joining rules, so the key is known without decoding anything. Under `<cache root>/encoded/<key>/`:

    counts.json            every distinct character with its count, the length in characters, and
                           the SHA-256 of those fields
    ids-<vocab key>.npy    the ids under one vocabulary (uint8/uint16/int32 by vocabulary size)
    ids-<vocab key>.sha256 the SHA-256 of those ids (the training-data fingerprint)

A second run on the same corpus reads counts.json (no decoding, no counting), builds the vocabulary
from it (any --min-freq) and opens the ids with numpy's memmap: the text is never in memory, and
the ids occupy one to four bytes per character of page cache, shared with other runs. A first run
streams the text twice in chunks (count, then encode into the memmapped file), so peak memory is
the ids plus a fixed few hundred MB of chunk buffers, whatever the size of the corpus.

Files are written to a temporary name and renamed into place, so an interrupted run leaves nothing
half written; a damaged file is detected (shape, dtype, id range, and a checksum, so that even
changed contents of the right shape are caught) and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from charrnn.data.catalog import cache_root
from charrnn.data.corpora import Part, stream_text
from charrnn.data.vocab import UnkPolicy, Vocab, count_code_points
from charrnn.errors import DataError
from charrnn.outputs import temp_beside

FORMAT = 2  # bump when the layout or the text rules change: old entries are then never looked at


@dataclass(frozen=True)
class Encoded:
    vocab: Vocab
    ids: np.ndarray  # (n,) ids, a read-only memmap when cached
    counts_cached: bool  # counts.json was there: the text was not decoded to build the vocabulary
    ids_cached: bool  # the ids were there: the text was not decoded at all
    path: Path | None  # the ids file, when cached
    sha256: str | None = None  # of the ids' bytes, when cached (verified on every read)


def encoded_dir(env: Mapping[str, str] | None = None) -> Path:
    """`<cache root>/encoded` (see charrnn.data.catalog.cache_root: $CHARRNN_HOME, XDG, ~/.cache)."""
    return cache_root(env) / "encoded"


def corpus_key(parts: list[Part], encoding: str) -> str:
    """SHA-256 of everything that decides the text: the parts' bytes, the encoding, the joining rules."""
    h = hashlib.sha256(f"charrnn-encoded-{FORMAT}\0{encoding.lower()}\0{len(parts)}\0".encode())
    for part in parts:
        kind = "text" if part.text is not None else "bytes"
        h.update(f"\0part\0{kind}\0{int(part.newline_after)}\0".encode())
        if part.spaced:  # the same bytes spell another text (keys of plain parts are unchanged)
            h.update(b"\0spaced\0")
        if part.nul:  # accepted here, an error elsewhere: a cached count must not skip that check
            h.update(b"\0nul\0")
        size = 0
        for chunk in part.raw_chunks():
            h.update(chunk)
            size += len(chunk)
        h.update(f"\0{size}\0".encode())
    return h.hexdigest()


def vocab_key(vocab: Vocab, unk: UnkPolicy) -> str:
    chars = json.dumps([list(vocab.chars), vocab.unk, unk], ensure_ascii=True)
    return hashlib.sha256(chars.encode()).hexdigest()[:20]


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp_path) and rename the result to `path`; nothing is left behind on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_beside(path)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _counts_digest(length: int, chars: list[str], counts: list[int]) -> str:
    return hashlib.sha256(json.dumps([length, chars, counts], ensure_ascii=True).encode()).hexdigest()


def ids_digest(ids: np.ndarray, chunk: int = 1 << 24) -> str:
    """SHA-256 of the ids' bytes, hashed in chunks (no copy of a memmapped corpus)."""
    h = hashlib.sha256()
    for i in range(0, len(ids), chunk):
        h.update(np.ascontiguousarray(ids[i : i + chunk]).data)
    return h.hexdigest()


def data_fingerprint(ids: np.ndarray, chunk: int = 1 << 24) -> dict[str, Any]:
    """Length and SHA-256 of the training ids (what a resume checks the text against)."""
    return {"chars": int(len(ids)), "sha256": ids_digest(ids, chunk)}


def _read_counts(path: Path) -> tuple[np.ndarray, int] | None:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        if d.get("sha256") != _counts_digest(d["length"], d["chars"], d["counts"]):
            return None
        cps = np.array([ord(c) for c in d["chars"]], dtype=np.int64)
        freq = np.zeros(int(cps.max()) + 1 if cps.size else 0, dtype=np.int64)
        freq[cps] = np.array(d["counts"], dtype=np.int64)
        n = int(d["length"])
        if int(freq.sum()) != n or n < 1:
            return None
        return freq, n
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _count(parts: list[Part], encoding: str) -> tuple[np.ndarray, int]:
    """(occurrences of every code point, length in characters): the first pass over the text."""
    freq, n = np.zeros(0, dtype=np.int64), 0
    for chunk in stream_text(parts, encoding):
        freq = count_code_points(chunk, into=freq)
        n += len(chunk)
    return freq, n


def _encode_into(out: np.ndarray, parts: list[Part], encoding: str, vocab: Vocab, unk: UnkPolicy,
                 where: str) -> None:
    """The second pass: write the ids of the text into `out` (shape (n,)), chunk by chunk."""
    pos = 0
    for chunk in stream_text(parts, encoding):
        if pos + len(chunk) > len(out):
            break
        vocab.encode(chunk, unk=unk, where=where, out=out[pos : pos + len(chunk)])
        pos += len(chunk)
    else:
        if pos == len(out):
            return
    raise DataError(f"{where} changed while it was being read; run again")  # between the two passes


def _digest_path(ids_path: Path) -> Path:
    return ids_path.with_suffix(".sha256")


def _open_ids(path: Path, n: int, vocab: Vocab) -> tuple[np.ndarray, str] | None:
    """(the cached ids, their SHA-256), or None when the file is missing, does not fit or does not
    match its checksum (then it is rebuilt)."""
    try:
        ids = np.load(path, mmap_mode="r")
        expected = _digest_path(path).read_text(encoding="ascii").strip()
    except (OSError, ValueError, EOFError, UnicodeDecodeError):
        return None
    if ids.shape != (n,) or ids.dtype != vocab.dtype or (n and int(ids.max()) >= vocab.size):
        return None
    digest = ids_digest(ids)
    return (ids, digest) if digest == expected else None


def encode_corpus(
    parts: list[Part],
    encoding: str = "utf-8",
    *,
    vocab: Vocab | None = None,
    min_freq: int = 1,
    max_chars: int | None = None,
    unk: UnkPolicy = "map",
    where: str = "the corpus",
    cache: bool = True,
    env: Mapping[str, str] | None = None,
) -> Encoded:
    """The ids of the text of `parts`, under `vocab` (built from the text with `min_freq` and `max_chars`
    when None: Vocab.from_counts).

    With `cache`, counts and ids are read from and written to `encoded_dir(env)`; a cache folder
    that cannot be written is not an error (the ids are then built in memory).
    """
    # Hashing reads every byte: only worth it when there is a cache entry to find.
    folder = encoded_dir(env) / corpus_key(parts, encoding)[:32] if cache else None
    counted = _read_counts(folder / "counts.json") if folder is not None else None
    counts_cached = counted is not None
    if counted is None:
        counted = _count(parts, encoding)
        if folder is not None:
            freq_, n_ = counted
            kept = np.flatnonzero(freq_)
            chars, counts = [chr(c) for c in kept.tolist()], freq_[kept].tolist()
            text = json.dumps({"format": FORMAT, "length": n_, "chars": chars, "counts": counts,
                               "sha256": _counts_digest(n_, chars, counts)}, ensure_ascii=True)
            try:
                _write_atomic(folder / "counts.json", lambda p: p.write_text(text, encoding="utf-8"))
            except OSError:
                folder = None
    freq, n = counted
    if vocab is None:
        vocab = Vocab.from_counts(freq, unk=True, min_freq=min_freq, max_chars=max_chars)
    if folder is not None:
        path = folder / f"ids-{vocab_key(vocab, unk)}.npy"
        opened = _open_ids(path, n, vocab)
        if opened is not None:
            return Encoded(vocab, opened[0], counts_cached, True, path, opened[1])

        def write(tmp: Path) -> None:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=vocab.dtype, shape=(n,))
            try:
                _encode_into(out, parts, encoding, vocab, unk, where)
                out.flush()
            finally:
                del out

        try:
            _digest_path(path).unlink(missing_ok=True)  # no checksum may vouch for ids being rewritten
            _write_atomic(path, write)
            built = np.load(path, mmap_mode="r")
            digest = ids_digest(built)
            _write_atomic(_digest_path(path), lambda p: p.write_text(digest + "\n", encoding="ascii"))
            opened = _open_ids(path, n, vocab)
            if opened is not None:
                return Encoded(vocab, opened[0], counts_cached, False, path, opened[1])
        except (OSError, ValueError):
            pass  # an unwritable or full cache folder: fall back to memory
    ids = np.empty(n, dtype=vocab.dtype)
    _encode_into(ids, parts, encoding, vocab, unk, where)
    return Encoded(vocab, ids, counts_cached, False, None, None)
