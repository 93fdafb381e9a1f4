"""Where text comes from: files, standard input, the built-in corpora and the catalog corpora.

A source is resolved in this order: "-" is standard input; an existing path is read as a file;
a built-in name (`pydoc`) is assembled in memory; a catalog name (charrnn/catalog.json, see
charrnn/catalog.py) is read from a verified local copy, fetched on first use.

Text handling, the same everywhere: bytes are decoded with the given encoding (UTF-8 by default)
and a leading byte-order mark is dropped; Windows line ends "\\r\\n" become "\\n" (a lone "\\r" is
kept), so a corpus reads the same whichever platform wrote it.
"""

from __future__ import annotations

import codecs
import os
import sys
import sysconfig
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from charrnn.catalog import CatalogEntry, FetchCallbacks, fetch_file, load_catalog
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


def decode_text(data: bytes, encoding: str = "utf-8", name: str = "input") -> str:
    """Bytes -> text under the rules in the module docstring; clear errors for binary data."""
    try:
        canonical = codecs.lookup(encoding).name  # every alias (utf_16, U16...) -> "utf-16"
    except LookupError:
        raise UsageError(f"unknown encoding {encoding!r}") from None
    if b"\x00" in data[:65536] and not canonical.startswith(("utf-16", "utf-32")):
        raise DataError(f"{name} looks like a binary file (it contains NUL bytes), not text")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        raise DataError(
            f"{name} is not valid {encoding} at byte {e.start} (byte 0x{data[e.start]:02x}); "
            "pass --encoding (for example --encoding latin-1)"
        ) from None
    except LookupError:  # a codec, but not a text encoding (base64, rot13, zlib...)
        raise UsageError(f"{encoding!r} is not a text encoding") from None
    return text.removeprefix("\ufeff").replace("\r\n", "\n")


def read_text(source: str, encoding: str = "utf-8", stdin: BinaryIO | None = None) -> str:
    """Text of a file path, or of standard input when `source` is "-"."""
    if source == "-":
        stream = stdin if stdin is not None else sys.stdin.buffer
        if stream.isatty():
            raise UsageError("standard input is a terminal: pipe text in (cat corpus.txt | charrnn ...) or give a file")
        return decode_text(stream.read(), encoding, "standard input")
    p = Path(source)
    if not p.exists():
        raise UsageError(f"{source!r} does not exist")
    if p.is_dir():
        raise UsageError(f"{source!r} is a directory, not a text file")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {source!r}: {e.strerror or e}") from None
    return decode_text(data, encoding, repr(source))


def catalog_entry(source: str, env: Mapping[str, str] | None = None) -> CatalogEntry | None:
    """The catalog entry `source` names, or None for "-", an existing path, a built-in or another name."""
    if source == "-" or "/" in source or os.sep in source or os.path.exists(source) or source in BUILTIN:
        return None
    # Only names that could be catalog names reach the catalog, so a bad CHARRNN_CATALOG never
    # gets in the way of reading plain files.
    entry = load_catalog(env).get(source)
    return None if entry is None or entry.builtin else entry


def _read_catalog_file(entry: CatalogEntry, role: str, encoding: str, env: Mapping[str, str] | None,
                       callbacks: FetchCallbacks | None) -> str:
    file = entry.file(role)
    assert file is not None
    path = fetch_file(entry, file, env, callbacks)
    text = read_text(str(path), encoding)
    if not text:
        raise DataError(f"{path} ({entry.name} {role}) is empty")
    return text


def load_part(source: str, part: str, encoding: str = "utf-8", env: Mapping[str, str] | None = None,
              callbacks: FetchCallbacks | None = None) -> str:
    """Text of the official `part` ("train", "valid" or "test") of catalog corpus `source`;
    a UsageError when `source` is not a corpus with official splits or lacks that part."""
    entry = catalog_entry(source, env)
    if entry is None or not entry.has_splits:
        with_splits = [e.name for e in load_catalog(env).values() if e.has_splits]
        raise UsageError(f"{source!r} has no official {part} split: only catalog corpora with official splits "
                         f"({', '.join(with_splits) or 'none in this catalog'}) have one")
    if entry.file(part) is None:
        raise UsageError(f"{source} has no official {part} split")
    return _read_catalog_file(entry, part, encoding, env, callbacks)


def load_splits(source: str, encoding: str = "utf-8", stdin: BinaryIO | None = None,
                env: Mapping[str, str] | None = None,
                callbacks: FetchCallbacks | None = None) -> tuple[str, str | None, str | None]:
    """(train, valid, test) texts of `source`: the official parts of a catalog corpus with splits
    (valid/test None where the corpus has none), or (whole text, None, None) for anything else."""
    entry = catalog_entry(source, env)
    if entry is None or not entry.has_splits:
        return load_corpus(source, encoding, stdin, env, callbacks), None, None
    train, valid, test = (load_part(source, part, encoding, env, callbacks) if entry.file(part) else None
                          for part in ("train", "valid", "test"))
    assert train is not None  # has_splits means there is a train file
    return train, valid, test


def load_corpus(source: str, encoding: str = "utf-8", stdin: BinaryIO | None = None,
                env: Mapping[str, str] | None = None, callbacks: FetchCallbacks | None = None) -> str:
    """Text of `source`: "-", an existing path, a built-in corpus name or a catalog corpus name
    (an existing path wins). A corpus with official splits gives train, valid and test joined."""
    if source != "-" and not os.path.exists(source) and source in BUILTIN:
        text = builtin_text(source)
    elif (entry := catalog_entry(source, env)) is not None:
        text = "".join(_read_catalog_file(entry, f.role, encoding, env, callbacks) for f in entry.files)
    elif source != "-" and not os.path.exists(source) and "/" not in source and os.sep not in source:
        known = [*BUILTIN, *(n for n in load_catalog(env) if n not in BUILTIN)]
        raise UsageError(f"{source!r} does not exist, and it is not a corpus name either "
                         f"(known corpora: {', '.join(known)}; charrnn corpus list)")
    else:
        text = read_text(source, encoding, stdin)
    if not text:
        raise DataError(f"{'standard input' if source == '-' else repr(source)} is empty")
    return text


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


def load_sources(sources: list[str], encoding: str = "utf-8", stdin: BinaryIO | None = None) -> str:
    """Text of several sources (files, folders, "-", corpus names) joined in the order given,
    folders expanded by `expand_sources`; a newline is added after a text that lacks one, so
    that files never run into each other."""
    if sources.count("-") > 1:
        raise UsageError("standard input ('-') can be given only once")
    texts = [load_corpus(s, encoding, stdin) for s in expand_sources(sources)]
    return "".join(t if t.endswith("\n") else t + "\n" for t in texts) if len(texts) > 1 else texts[0]
