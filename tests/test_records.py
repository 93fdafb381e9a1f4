"""Records: backslash escapes, streamed splitting at a delimiter (across chunk boundaries), hashes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from charrnn.data.records import RecordHashes, contains, escape, record_hash, split_records, unescape
from charrnn.errors import UsageError


@pytest.mark.parametrize(("given_", "expected"), [
    ("\\n", "\n"), ("\\0", "\0"), ("\\n\\n", "\n\n"), ("\\t", "\t"), ("\\\\", "\\"), ("a\\x41", "aA"),
    ("\\u00e9", "é"), ("\\U0001F600", "\U0001F600"), ("|", "|"), ("\\r\\n", "\n"), ("--", "--"),
])
def test_unescape(given_: str, expected: str) -> None:
    assert unescape(given_) == expected


@pytest.mark.parametrize("bad", ["", "\\q", "abc\\", "\\x4", "\\uD800"])
def test_unescape_rejects(bad: str) -> None:
    with pytest.raises(UsageError, match="--stop"):
        unescape(bad, "--stop")


@given(st.text())
def test_escape_round_trips(text: str) -> None:
    if text:
        assert unescape(escape(text)) == text
    assert "\n" not in escape(text) and "\t" not in escape(text)


def records_of(text: str, delimiter: str, chunk: int) -> list[str]:
    chunks = [text[i : i + chunk] for i in range(0, len(text), chunk)]
    return [r for part in split_records(chunks, delimiter) for r in part]


def test_split_lines() -> None:
    assert records_of("a\nbb\n\nccc\n", "\n", 3) == ["a", "bb", "", "ccc"]
    assert records_of("a\nbb", "\n", 1) == ["a", "bb"]  # no trailing delimiter
    assert records_of("", "\n", 4) == []
    assert records_of("\n", "\n", 4) == [""]
    assert records_of("no delimiter here", "\0", 5) == ["no delimiter here"]


@given(st.lists(st.text(alphabet="ab\n", max_size=6), max_size=8), st.sampled_from(["\n", "\n\n", "ab", "\0"]),
       st.integers(1, 7))
def test_split_matches_str_split(records: list[str], delimiter: str, chunk: int) -> None:
    text = delimiter.join(records)
    expected = text.split(delimiter)
    if expected and expected[-1] == "":
        expected.pop()
    assert records_of(text, delimiter, chunk) == expected


def test_split_yields_per_chunk() -> None:
    parts = list(split_records(["a\nb", "\nc\n", "d"], "\n"))
    assert parts == [["a"], ["b", "c"], [], ["d"]]  # per chunk, the records it completed; then the rest


def test_hashes() -> None:
    assert record_hash("abc") == record_hash("abc") != record_hash("abd")
    assert -(1 << 63) <= record_hash("x") < 1 << 63
    hashes = RecordHashes(cap=2)
    hashes.add(["a", "b", "a", ""])
    assert hashes.complete
    hashes.add(["c"])
    assert not hashes.complete and len(hashes.seen) == 2
    array = hashes.to_array()
    assert array.dtype == np.int64 and list(array) == sorted(array)
    assert contains(array, "a") and contains(array, "b") and not contains(array, "c")
    assert not contains(np.zeros(0, dtype=np.int64), "a")


@pytest.mark.parametrize(("typed", "message"), [
    ("\\q", "--delimiter '\\q': unknown escape \\q (use"),
    ("ab\\", "--delimiter 'ab\\': unknown escape a lone backslash at the end"),
    ("\\uD800", "--delimiter '\\uD800': \\uD800 is not a Unicode character"),
    ("x\u202e\\q", "--delimiter 'x\\u202e\\q': unknown escape \\q"),  # a bidi override is shown, not obeyed
])
def test_unescape_errors_show_the_text_as_typed(typed: str, message: str) -> None:
    """The message quotes what the user typed: one backslash stays one (repr would print '\\\\q')."""
    with pytest.raises(UsageError) as info:
        unescape(typed)
    assert str(info.value).startswith(message), str(info.value)
    assert "\\\\" not in str(info.value).split(" (use")[0]
