"""Where text comes from: files, standard input, the built-in corpora and the catalog corpora.

A source is resolved in this order: "-" is standard input; an existing path is read as a file;
a built-in name (`pydoc`) is assembled in memory; a catalog name (charrnn/data/catalog.json, see
charrnn/data/catalog.py) is read from a verified local copy, fetched on first use.

Text handling, the same everywhere: bytes are decoded with the given encoding (UTF-8 by default)
and a leading byte-order mark is dropped; Windows line ends "\\r\\n" become "\\n" (a lone "\\r" is
kept), so a corpus reads the same whichever platform wrote it.
"""

from __future__ import annotations

import codecs
import dataclasses
import os
import sys
import sysconfig
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from charrnn.data.catalog import CatalogEntry, FetchCallbacks, fetch_file, load_catalog
from charrnn.errors import DataError, UsageError

BUILTIN = {
    "pydoc": "the Python reference documentation shipped inside the interpreter "
    "(pydoc_data.topics; about 0.46 MB of English prose and code, varies with the Python version)",
    "stdlib": "the source code of the running interpreter's standard library, concatenated "
    "(about 30 MB of Python, varies with the Python version)",
}


def builtin_text(name: str) -> str:
    """Text of the built-in corpus `name`, assembled deterministically."""
    if name == "pydoc":
        try:
            from pydoc_data.topics import topics
        except ImportError:
            raise DataError("this Python has no pydoc_data module, so the 'pydoc' corpus is missing") from None
        return "\n\n".join(topics[k].strip("\n") for k in sorted(topics)) + "\n"
    if name == "stdlib":
        return stdlib_text()
    raise UsageError(f"unknown built-in corpus {name!r}: choose one of {', '.join(BUILTIN)}")


def stdlib_text() -> str:
    """The running interpreter's standard library source: every .py file below the stdlib folder
    (site-packages excluded), in sorted order of relative path, each ending with a newline; files
    that are not UTF-8 text are skipped. Same Python, same text."""
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*.py")
                   if not {"site-packages", "dist-packages"} & set(p.relative_to(root).parts))
    parts = []
    for _, path in paths:
        try:
            text = decode_text(path.read_bytes(), "utf-8", str(path))
        except (DataError, OSError):
            continue
        parts.append(text if text.endswith("\n") else text + "\n")
    if not parts:
        raise DataError(f"no standard library source found under {root}")
    return "".join(parts)


CHUNK_BYTES = 1 << 24  # 16 MiB: how much of a file is held in memory at once while streaming it


def iter_decoded(chunks: Iterable[bytes], encoding: str = "utf-8", name: str = "input",
                 allow_nul: bool = False) -> Iterator[str]:
    """Decode a stream of byte chunks under the rules in the module docstring, one chunk at a time
    (memory bounded by the chunk size, whatever the length of the stream); clear errors for binary
    data, undecodable bytes (naming the byte offset in the whole stream) and non-text codecs.
    `allow_nul` accepts NUL characters (records separated by NUL, as `find -print0` writes them)."""
    try:
        info = codecs.lookup(encoding)
    except LookupError:
        raise UsageError(f"unknown encoding {encoding!r}") from None
    if not getattr(info, "_is_text_encoding", True):  # a codec, but not a text encoding (base64, rot13, zlib...)
        raise UsageError(f"{encoding!r} is not a text encoding")
    # UTF-16/32 text is full of NUL bytes; in any other encoding NUL means binary data.
    nul_means_binary = not allow_nul and not info.name.startswith(("utf-16", "utf-32"))
    decoder = info.incrementaldecoder()
    consumed = 0  # bytes fed to the decoder so far
    first, pending_cr, hint = True, "", ""

    def decode(data: bytes, final: bool) -> str:
        buffered = len(decoder.getstate()[0])  # bytes of an unfinished character from the last chunk
        try:
            return decoder.decode(data, final)
        except UnicodeDecodeError as e:
            offset = consumed - buffered + e.start
            raise DataError(f"{name} is not valid {encoding} at byte {offset} (byte 0x{e.object[e.start]:02x}); "
                            f"{hint or 'pass --encoding (for example --encoding latin-1)'}") from None
        except UnicodeError as e:  # not about one byte: "UTF-16 stream does not start with BOM"
            if "BOM" in str(e):
                raise DataError(f"{name} does not start with a byte-order mark, which --encoding {encoding} needs "
                                f"to tell the byte order: pass --encoding {info.name}-le or {info.name}-be") from None
            raise DataError(f"{name} cannot be read as {encoding}: {e}") from None

    for data in _with_end(chunks):
        final = data is None
        data = data or b""
        if consumed == 0:
            hint = _bom_hint(data, info.name)
            # In UTF-8 the bytes of another byte-order mark can never decode: say at once what to pass. In
            # other encodings (latin-1, cp1252) they are characters: the encoding the user gave wins.
            if hint and info.name == "utf-8":
                raise DataError(f"{name} {hint}")
        # memchr over every chunk: a NUL anywhere means binary, not only near the start
        if nul_means_binary and (at := data.find(b"\x00")) >= 0:
            raise DataError(f"{name} looks like a binary file (it contains a NUL byte at byte "
                            f"{consumed + at}), not {encoding} text" + (f"; it {hint}" if hint else ""))
        text = pending_cr + decode(data, final)
        consumed += len(data)
        if first and text:
            text, first = text.removeprefix("\ufeff"), False
        # A "\r" at the end of a chunk may be the first half of a "\r\n" split across chunks.
        pending_cr = "\r" if text.endswith("\r") and not final else ""
        if pending_cr:
            text = text[:-1]
        if text:
            yield text.replace("\r\n", "\n")


def _bom_hint(head: bytes, codec: str) -> str:
    """What a UTF-16 or UTF-32 byte-order mark at the start of the bytes says, when `codec` is another
    encoding ("" when there is none): "is UTF-16 text (...): pass --encoding utf-16"."""
    for bom, encoding in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                          (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if head.startswith(bom):
            if codec.startswith(encoding):
                return ""
            return (f"is {encoding.upper()} text (it starts with a {encoding.upper()} byte-order mark): "
                    f"pass --encoding {encoding}")
    return ""


def _with_end(chunks: Iterable[bytes]) -> Iterator[bytes | None]:
    yield from chunks
    yield None


def decode_text(data: bytes, encoding: str = "utf-8", name: str = "input") -> str:
    """Bytes -> text under the rules in the module docstring; clear errors for binary data."""
    return "".join(iter_decoded([data], encoding, name))


def file_chunks(path: Path, size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The bytes of `path` in chunks of `size`."""
    with open(path, "rb") as f:
        while chunk := f.read(size):
            yield chunk


def read_text(source: str, encoding: str = "utf-8", stdin: BinaryIO | None = None) -> str:
    """Text of a file path, or of standard input when `source` is "-" (may be empty)."""
    part = _stdin_part(stdin) if source == "-" else _file_part(source)
    return "".join(part.texts(encoding))


def catalog_entry(source: str, env: Mapping[str, str] | None = None) -> CatalogEntry | None:
    """The catalog entry `source` names, or None for "-", an existing path, a built-in or another name."""
    if source == "-" or "/" in source or os.sep in source or os.path.exists(source) or source in BUILTIN:
        return None
    # Only names that could be catalog names reach the catalog, so a bad CHARRNN_CATALOG never
    # gets in the way of reading plain files.
    entry = load_catalog(env).get(source)
    return None if entry is None or entry.builtin else entry


def load_part(source: str, part: str, encoding: str = "utf-8", env: Mapping[str, str] | None = None,
              callbacks: FetchCallbacks | None = None) -> str:
    """Text of the official `part` of catalog corpus `source` (see `part_of`)."""
    return join_parts([part_of(source, part, env, callbacks)], encoding)


def load_corpus(source: str, encoding: str = "utf-8", stdin: BinaryIO | None = None,
                env: Mapping[str, str] | None = None, callbacks: FetchCallbacks | None = None) -> str:
    """Text of one source (see `source_parts`), in memory."""
    return join_parts(source_parts(source, stdin, env, callbacks), encoding)


@dataclass(frozen=True)
class Part:
    """One piece of a corpus, not yet read: a file, the bytes of standard input, or the text of a
    built-in corpus. A corpus is a list of parts, read one after the other as a stream of text."""

    name: str  # for messages: "'notes.txt'", "standard input", "pydoc"
    path: Path | None = None
    data: bytes | None = None
    text: str | None = None
    newline_after: bool = False  # end with "\n" (one is added when the text lacks it)
    spaced: bool = False  # the file spells its text "a b _ c" (see catalog.CatalogEntry.format): read "ab c"
    nul: bool = False  # NUL is a character of the text (records delimited by '\0'), not a sign of binary data

    def raw_chunks(self) -> Iterator[bytes]:
        """The part's bytes as stored (built-in text as UTF-8): what the corpus cache key hashes."""
        if self.path is not None:
            yield from file_chunks(self.path)
        elif self.data is not None:
            for i in range(0, len(self.data), CHUNK_BYTES):
                yield self.data[i : i + CHUNK_BYTES]
        else:
            yield from (chunk.encode("utf-8", "surrogatepass") for chunk in self.texts())

    def texts(self, encoding: str = "utf-8") -> Iterator[str]:
        """The part's text in chunks (files are decoded as they are read)."""
        if self.text is not None:
            for i in range(0, len(self.text), CHUNK_BYTES):
                yield self.text[i : i + CHUNK_BYTES]
            return
        try:
            for chunk in iter_decoded(self.raw_chunks(), encoding, self.name, allow_nul=self.nul):
                # Every space separates and every "_" is a space, whatever the chunk boundaries.
                yield chunk.replace(" ", "").replace("_", " ") if self.spaced else chunk
        except OSError as e:
            raise DataError(f"cannot read {self.name}: {e.strerror or e}") from None


def stream_text(parts: list[Part], encoding: str = "utf-8") -> Iterator[str]:
    """The text of `parts` joined, in chunks; an empty part is a DataError naming it."""
    for part in parts:
        last = ""
        for chunk in part.texts(encoding):
            last = chunk[-1]
            yield chunk
        if not last:
            raise DataError(f"{part.name} is empty")
        if part.newline_after and last != "\n":
            yield "\n"


def join_parts(parts: list[Part], encoding: str = "utf-8") -> str:
    """The whole text of `parts` in memory (for small texts: prefixes, evaluation text)."""
    return "".join(stream_text(parts, encoding))


def _stdin_part(stdin: BinaryIO | None) -> Part:
    stream = stdin if stdin is not None else getattr(sys.stdin, "buffer", None)
    if stream is None:  # `<&-`: Python starts with sys.stdin = None
        raise UsageError("standard input is closed: pipe text in (cat corpus.txt | charrnn ...) or give a file")
    try:
        if stream.isatty():
            raise UsageError("standard input is a terminal: pipe text in (cat corpus.txt | charrnn ...) "
                             "or give a file")
        return Part("standard input", data=stream.read())
    except (OSError, ValueError) as e:  # a folder as stdin (EISDIR), a closed or unreadable descriptor
        raise UsageError(f"cannot read standard input: {getattr(e, 'strerror', None) or e}") from None


def _file_part(source: str) -> Part:
    p = Path(source)
    if not p.exists():
        raise UsageError(f"{source!r} does not exist")
    if p.is_dir():
        raise UsageError(f"{source!r} is a directory, not a text file")
    if not os.access(p, os.R_OK):
        raise DataError(f"cannot read {source!r}: permission denied")
    if not p.is_file():
        # A pipe (`<(cat a b)`, a FIFO, /dev/stdin) can be read only once, and a corpus is read
        # more than once (hashed, counted, encoded): take its bytes now, as for standard input.
        try:
            with open(p, "rb") as f:
                return Part(repr(source), data=f.read())
        except OSError as e:
            raise DataError(f"cannot read {source!r}: {e.strerror or e}") from None
    return Part(repr(source), path=p)


def _catalog_part(entry: CatalogEntry, role: str, env: Mapping[str, str] | None,
                  callbacks: FetchCallbacks | None) -> Part:
    file = entry.file(role)
    assert file is not None
    return Part(f"{entry.name} {role} ({file.path})", path=fetch_file(entry, file, env, callbacks),
                spaced=entry.format == "spaced")


def source_parts(source: str, stdin: BinaryIO | None = None, env: Mapping[str, str] | None = None,
                 callbacks: FetchCallbacks | None = None) -> list[Part]:
    """The parts of one source: "-", an existing path, a built-in corpus name or a catalog corpus
    name (an existing path wins). A corpus with official splits gives train, valid and test."""
    if source == "-":
        return [_stdin_part(stdin)]
    if not os.path.exists(source) and source in BUILTIN:
        return [Part(source, text=builtin_text(source))]
    if (entry := catalog_entry(source, env)) is not None:
        return [_catalog_part(entry, f.role, env, callbacks) for f in entry.files]
    if not os.path.exists(source) and "/" not in source and os.sep not in source:
        known = [*BUILTIN, *(n for n in load_catalog(env) if n not in BUILTIN)]
        raise UsageError(f"{source!r} does not exist, and it is not a corpus name either "
                         f"(known corpora: {', '.join(known)}; charrnn corpus list)")
    return [_file_part(source)]


def part_of(source: str, part: str, env: Mapping[str, str] | None = None,
            callbacks: FetchCallbacks | None = None) -> Part:
    """The official `part` ("train", "valid" or "test") of catalog corpus `source`; a UsageError
    when `source` is not a corpus with official splits or lacks that part."""
    entry = catalog_entry(source, env)
    if entry is None or not entry.has_splits:
        with_splits = [e.name for e in load_catalog(env).values() if e.has_splits]
        raise UsageError(f"{source!r} has no official {part} split: only catalog corpora with official splits "
                         f"({', '.join(with_splits) or 'none in this catalog'}) have one")
    if entry.file(part) is None:
        raise UsageError(f"{source} has no official {part} split")
    return _catalog_part(entry, part, env, callbacks)


def training_parts(sources: list[str], stdin: BinaryIO | None = None, env: Mapping[str, str] | None = None,
                   callbacks: FetchCallbacks | None = None) -> tuple[list[Part], list[Part] | None]:
    """(train parts, official validation parts or None) of the CORPUS arguments of `charrnn train`.

    One catalog corpus with official splits gives its train and valid parts. Anything else gives
    every source in the order given, folders expanded by `expand_sources`, each ending with a
    newline when there are several (so files never run into each other), and no validation part.
    """
    if sources.count("-") > 1:
        raise UsageError("standard input ('-') can be given only once")
    if len(sources) == 1 and (entry := catalog_entry(sources[0], env)) is not None and entry.has_splits:
        valid = [part_of(sources[0], "valid", env, callbacks)] if entry.file("valid") else None
        return [part_of(sources[0], "train", env, callbacks)], valid
    expanded = expand_sources(sources)
    parts = []
    for source in expanded:
        these = source_parts(source, stdin, env, callbacks)
        if len(expanded) > 1:
            these[-1] = dataclasses.replace(these[-1], newline_after=True)
        parts += these
    return parts, None



def expand_sources(sources: list[str]) -> list[str]:
    """Sources with every folder replaced by its files: all regular files below it, recursively,
    in sorted order of relative path, hidden files and folders (names starting with '.') left out."""
    expanded = []
    for source in sources:
        folder = Path(source)
        if source == "-" or not folder.is_dir():
            expanded.append(source)
            continue
        files = sorted((p for p in folder.rglob("*")
                        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)),
                       key=lambda p: p.relative_to(folder).as_posix())
        if not files:
            raise UsageError(f"folder {source!r} holds no files")
        expanded.extend(str(p) for p in files)
    return expanded
