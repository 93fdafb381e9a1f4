"""Where text comes from: files, standard input, and the built-in corpora.

Text handling, the same everywhere: bytes are decoded with the given encoding (UTF-8 by default)
and a leading byte-order mark is dropped; Windows line ends "\\r\\n" become "\\n" (a lone "\\r" is
kept), so a corpus reads the same whichever platform wrote it.
"""

from __future__ import annotations

import codecs
import os
import sys
from pathlib import Path
from typing import BinaryIO

from charrnn.errors import DataError, UsageError

BUILTIN = {
    "pydoc": "the Python reference documentation shipped inside the interpreter "
    "(pydoc_data.topics; about 0.46 MB of English prose and code, varies with the Python version)",
}


def builtin_text(name: str) -> str:
    """Text of the built-in corpus `name`, assembled deterministically."""
    if name == "pydoc":
        try:
            from pydoc_data.topics import topics
        except ImportError:
            raise DataError("this Python has no pydoc_data module, so the 'pydoc' corpus is missing") from None
        return "\n\n".join(topics[k].strip("\n") for k in sorted(topics)) + "\n"
    raise UsageError(f"unknown built-in corpus {name!r}: choose one of {', '.join(BUILTIN)}")


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


def load_corpus(source: str, encoding: str = "utf-8", stdin: BinaryIO | None = None) -> str:
    """Text of `source`: "-", an existing path, or a built-in corpus name (an existing path wins)."""
    if source != "-" and not os.path.exists(source) and source in BUILTIN:
        text = builtin_text(source)
    else:
        text = read_text(source, encoding, stdin)
    if not text:
        raise DataError(f"{'standard input' if source == '-' else repr(source)} is empty")
    return text
