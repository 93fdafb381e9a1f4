"""Where text comes from: decoding rules, files, standard input, the built-in corpus."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from charrnn.data.corpora import BUILTIN, builtin_text, decode_text, load_corpus, read_text
from charrnn.errors import DataError, UsageError


class FakeTty(io.BytesIO):
    def isatty(self) -> bool:
        return True


def test_crlf_becomes_lf_lone_cr_kept() -> None:
    assert decode_text(b"a\r\nb\rc\n\r\n") == "a\nb\rc\n\n"
    assert decode_text(b"\r\r\n") == "\r\n"


def test_bom_stripped_once() -> None:
    assert decode_text("\ufeffhello".encode()) == "hello"
    assert decode_text(b"\xef\xbb\xbfhi\r\n") == "hi\n"
    assert decode_text("x\ufeffy".encode()) == "x\ufeffy"  # only a leading BOM is dropped


def test_unicode_kept() -> None:
    text = "naïve café — 日本語 😀\n"
    assert decode_text(text.encode()) == text


def test_invalid_utf8_names_offset_and_suggests_encoding() -> None:
    with pytest.raises(DataError) as info:
        decode_text(b"hello \xff world", name="'corpus.txt'")
    message = str(info.value)
    assert "'corpus.txt'" in message
    assert "byte 6" in message and "0xff" in message
    assert "--encoding" in message


def test_nul_bytes_mean_binary() -> None:
    with pytest.raises(DataError, match="binary"):
        decode_text(b"text\x00more")
    with pytest.raises(DataError, match="binary"):
        decode_text(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", encoding="latin-1")


def test_latin1() -> None:
    data = "café ÿ\r\n".encode("latin-1")
    with pytest.raises(DataError):
        decode_text(data)
    assert decode_text(data, encoding="latin-1") == "café ÿ\n"
    assert decode_text(data, encoding="ISO-8859-1") == "café ÿ\n"


@pytest.mark.parametrize("encoding", ["utf-16", "UTF-16", "utf16", "utf_16", "U16", "utf-16-le", "utf-32", "utf_32"])
def test_utf16_and_utf32_under_any_alias(encoding: str) -> None:
    """Regression: NUL bytes are normal in UTF-16/32, but aliases such as utf_16 were called binary."""
    text = "héllo\r\nwörld 😀\n"
    codec = {"utf-16-le": "utf-16-le"}.get(encoding.lower(), "utf-32" if "32" in encoding else "utf-16")
    data = text.encode(codec)
    if codec == "utf-16-le":
        data = "\ufeff".encode(codec) + data  # a BOM the codec itself keeps
    assert decode_text(data, encoding=encoding) == "héllo\nwörld 😀\n"


def test_unknown_encoding() -> None:
    with pytest.raises(UsageError, match="klingon"):
        decode_text(b"abc", encoding="klingon")


@pytest.mark.parametrize("encoding", ["base64", "hex", "zlib", "rot13"])
def test_non_text_codec_is_a_usage_error(encoding: str) -> None:
    """Regression: codecs that are not text encodings escaped as a bare LookupError."""
    with pytest.raises(UsageError, match=encoding):
        decode_text(b"aGVsbG8=", encoding=encoding)


def test_read_text_stdin() -> None:
    assert read_text("-", stdin=io.BytesIO(b"\xef\xbb\xbfpiped\r\ntext")) == "piped\ntext"
    assert read_text("-", encoding="latin-1", stdin=io.BytesIO(b"caf\xe9")) == "café"
    with pytest.raises(DataError, match="standard input"):
        read_text("-", stdin=io.BytesIO(b"\xff"))


def test_read_text_tty_stdin() -> None:
    with pytest.raises(UsageError, match="terminal"):
        read_text("-", stdin=FakeTty(b"never read"))


def test_read_text_file(tmp_path: Path) -> None:
    p = tmp_path / "c.txt"
    p.write_bytes(b"line one\r\nline two\n")
    assert read_text(str(p)) == "line one\nline two\n"
    p.write_bytes(b"\x00\x01\x02")
    with pytest.raises(DataError, match="binary"):
        read_text(str(p))


def test_read_text_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        read_text(str(tmp_path / "missing.txt"))
    with pytest.raises(UsageError, match="directory"):
        read_text(str(tmp_path))


def test_load_corpus_pydoc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no file called "pydoc" here
    text = load_corpus("pydoc")
    assert len(text) > 100_000
    assert text == load_corpus("pydoc") == builtin_text("pydoc")
    assert text.endswith("\n") and "\r\n" not in text
    assert "pydoc" in BUILTIN


def test_existing_path_wins_over_builtin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("pydoc").write_text("my own file\n")
    assert load_corpus("pydoc") == "my own file\n"


def test_unknown_builtin() -> None:
    with pytest.raises(UsageError, match="unknown built-in corpus"):
        builtin_text("shakespeare")


def test_load_corpus_empty(tmp_path: Path) -> None:
    p = tmp_path / "empty.txt"
    p.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        load_corpus(str(p))
    p.write_bytes(b"\xef\xbb\xbf")  # only a BOM: empty once decoded
    with pytest.raises(DataError, match="empty"):
        load_corpus(str(p))
    with pytest.raises(DataError, match="standard input is empty"):
        load_corpus("-", stdin=io.BytesIO(b""))


def test_load_corpus_stdin_and_missing(tmp_path: Path) -> None:
    assert load_corpus("-", stdin=io.BytesIO(b"abc")) == "abc"
    with pytest.raises(UsageError):
        load_corpus(str(tmp_path / "nope.txt"))


def test_stdlib_corpus_is_large_deterministic_python_source() -> None:
    from charrnn.data.corpora import load_corpus

    text = load_corpus("stdlib")
    assert len(text) > 5_000_000
    assert "def " in text and "import " in text and "\r\n" not in text
    assert load_corpus("stdlib") == text
