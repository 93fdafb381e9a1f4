"""The encoded-corpus cache and the chunked (bounded-memory) text pipeline."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from charrnn.cli import cli
from charrnn.data import cache, corpora
from charrnn.data import vocab as vocab_mod
from charrnn.data.cache import data_fingerprint, encode_corpus, encoded_dir
from charrnn.data.corpora import Part, decode_text, iter_decoded, training_parts
from charrnn.data.partition import split_train_val
from charrnn.data.vocab import Vocab, count_code_points
from charrnn.errors import DataError, UnknownCharacterError

TEXT = "the time traveller smiled.\nwe sat about the fire, née café 😀\n" * 50


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CHARRNN_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def test_second_run_reads_the_cache_without_decoding(tmp_path: Path, home: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    parts = [Part("'c.txt'", path=write(tmp_path / "c.txt", TEXT))]
    first = encode_corpus(parts)
    assert not first.counts_cached and not first.ids_cached and first.path is not None
    assert first.path.parent.parent == encoded_dir()
    expected = Vocab.build(TEXT)
    assert first.vocab == expected
    assert np.array_equal(first.ids, expected.encode(TEXT))

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("the text was decoded although it is cached")

    with monkeypatch.context() as mp:
        mp.setattr(corpora, "iter_decoded", no_decoding)
        mp.setattr(corpora.Part, "texts", no_decoding)
        second = encode_corpus(parts)
    assert second.counts_cached and second.ids_cached
    assert isinstance(second.ids, np.memmap) and not second.ids.flags.writeable
    assert second.vocab == first.vocab and np.array_equal(second.ids, first.ids)
    # Another --min-freq needs no decoding for the vocabulary, only for the new ids.
    third = encode_corpus(parts, min_freq=60)
    assert third.counts_cached and not third.ids_cached
    assert third.vocab == Vocab.build(TEXT, min_freq=60) and third.vocab.size < first.vocab.size


def test_changed_content_encoding_or_joining_gives_a_new_key(tmp_path: Path, home: Path) -> None:
    p = write(tmp_path / "c.txt", TEXT)
    key = cache.corpus_key([Part("c", path=p)], "utf-8")
    assert cache.corpus_key([Part("c", path=p)], "UTF-8") == key
    assert cache.corpus_key([Part("c", path=p)], "latin-1") != key
    assert cache.corpus_key([Part("c", path=p, newline_after=True)], "utf-8") != key
    assert cache.corpus_key([Part("c", path=p), Part("c", path=p)], "utf-8") != key
    assert cache.corpus_key([Part("c", text=TEXT)], "utf-8") != key  # a built-in text is not a file
    write(p, TEXT + "!")
    assert cache.corpus_key([Part("c", path=p)], "utf-8") != key
    assert np.array_equal(encode_corpus([Part("c", path=p)]).ids, Vocab.build(TEXT + "!").encode(TEXT + "!"))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong ids"])
def test_a_damaged_cache_file_is_rebuilt(tmp_path: Path, home: Path, damage: str) -> None:
    parts = [Part("c", path=write(tmp_path / "c.txt", TEXT))]
    path = encode_corpus(parts).path
    assert path is not None
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not numpy at all")
    else:
        np.save(path, np.full(len(TEXT), 250, dtype=np.uint8))  # ids beyond the vocabulary
    again = encode_corpus(parts)
    assert not again.ids_cached
    assert np.array_equal(again.ids, Vocab.build(TEXT).encode(TEXT))
    (path.parent / "counts.json").write_text("{broken", encoding="utf-8")
    assert not encode_corpus(parts).counts_cached


def test_unwritable_cache_falls_back_to_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "home"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("CHARRNN_HOME", str(blocker))
    enc = encode_corpus([Part("c", text=TEXT)])
    assert enc.path is None and not isinstance(enc.ids, np.memmap)
    assert np.array_equal(enc.ids, Vocab.build(TEXT).encode(TEXT))


def test_failed_encoding_leaves_nothing_behind(tmp_path: Path, home: Path) -> None:
    parts = [Part("c", path=write(tmp_path / "c.txt", TEXT))]
    small = Vocab.build("the time")
    with pytest.raises(UnknownCharacterError):
        encode_corpus(parts, vocab=small, unk="error")
    leftovers = [p.name for p in encoded_dir().rglob("*") if p.is_file()]
    assert leftovers == ["counts.json"]
    mapped = encode_corpus(parts, vocab=small, unk="map")
    assert np.array_equal(mapped.ids, small.encode(TEXT, unk="map"))


def test_no_cache_writes_nothing(tmp_path: Path, home: Path) -> None:
    enc = encode_corpus([Part("c", path=write(tmp_path / "c.txt", TEXT))], cache=False)
    assert enc.path is None and not home.exists()
    assert np.array_equal(enc.ids, Vocab.build(TEXT).encode(TEXT))


def test_chunked_counting_and_encoding_match_whole_text(monkeypatch: pytest.MonkeyPatch) -> None:
    whole = Vocab.build(TEXT)
    ids = whole.encode(TEXT)
    freq = count_code_points(TEXT)
    monkeypatch.setattr(vocab_mod, "CHUNK", 7)
    assert np.array_equal(count_code_points(TEXT), freq)
    assert Vocab.build(TEXT) == whole
    assert np.array_equal(whole.encode(TEXT), ids)
    with pytest.raises(UnknownCharacterError, match="'q'"):
        Vocab.build("abc").encode("abcabcabcq")  # the unknown character sits in a later chunk


@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet=st.sampled_from("ab\r\n\u00e9\u4e2d\U0001f600\ufeff"), max_size=60),
       cut=st.integers(1, 9), encoding=st.sampled_from(["utf-8", "utf-16", "utf-8-sig", "latin-1"]))
def test_streamed_decoding_equals_whole_decoding(text: str, cut: int, encoding: str) -> None:
    if encoding == "latin-1":
        text = text.encode("latin-1", "replace").decode("latin-1")
    data = text.encode(encoding)
    chunks = [data[i : i + cut] for i in range(0, len(data), cut)]
    assert "".join(iter_decoded(chunks, encoding)) == decode_text(data, encoding)
    assert decode_text(data, encoding) == text.removeprefix("\ufeff").replace("\r\n", "\n")


def test_decode_error_offset_counts_earlier_chunks() -> None:
    data = "é".encode() * 10 + b"\xff" + b"tail"
    chunks = [data[i : i + 3] for i in range(0, len(data), 3)]
    with pytest.raises(DataError, match="at byte 20 \\(byte 0xff\\)"):
        list(iter_decoded(chunks, "utf-8", "x"))
    with pytest.raises(DataError, match="at byte 4"):  # a character cut short by the end of the data
        list(iter_decoded([b"abcd", b"\xe4\xb8"], "utf-8", "x"))


def test_streamed_corpus_joins_files_and_rejects_empty_ones(tmp_path: Path, home: Path) -> None:
    a, b = write(tmp_path / "a.txt", "first"), write(tmp_path / "b.txt", "second\n")
    parts, valid = training_parts([str(a), str(b)])
    assert valid is None
    enc = encode_corpus(parts)
    assert enc.vocab.decode(enc.ids) == "first\nsecond\n"
    empty = write(tmp_path / "e.txt", "")
    with pytest.raises(DataError, match="e.txt' is empty"):
        encode_corpus(training_parts([str(a), str(empty)])[0])


def test_validation_cap_and_chunked_fingerprint() -> None:
    ids = np.arange(1000, dtype=np.int32) % 50
    train, val = split_train_val(ids, 0.1, max_chars=30)
    assert len(val) == 30 and len(train) == 970 and np.array_equal(val, ids[-30:])
    assert len(split_train_val(ids, 0.1, max_chars=None)[1]) == 100
    fp = data_fingerprint(ids, chunk=7)
    assert fp == {"chars": 1000, "sha256": hashlib.sha256(ids.tobytes()).hexdigest()}


def test_cli_train_uses_the_cache_the_second_time(tmp_path: Path, home: Path) -> None:
    corpus = write(tmp_path / "c.txt", TEXT * 4)
    args = ["train", str(corpus), "--hidden", "8", "--layers", "1", "-b", "4", "-t", "8", "--max-steps", "2"]
    first = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "a.pt")])
    assert first.exit_code == 0, first.stderr
    assert "encoded the corpus" in first.stderr and "into the cache" in first.stderr
    second = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "b.pt")])
    assert second.exit_code == 0, second.stderr
    assert "from the cache" in second.stderr
    # Same text, same ids: the two runs trained identically.
    assert first.stdout.split("saved")[0].split("in ")[0] == second.stdout.split("saved")[0].split("in ")[0]
    resumed = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "b.pt"), "--resume", str(tmp_path / "b.pt"),
                                       "--max-steps", "3"])
    assert resumed.exit_code == 0, resumed.stderr
    assert "from the cache" in resumed.stderr


def test_cli_no_cache_and_val_max_chars(tmp_path: Path, home: Path) -> None:
    corpus = write(tmp_path / "c.txt", TEXT * 4)
    r = CliRunner().invoke(cli, ["train", str(corpus), "-o", str(tmp_path / "m.pt"), "--hidden", "8", "--layers",
                                 "1", "-b", "4", "-t", "8", "--max-steps", "2", "--no-cache", "--val-max-chars", "100"])
    assert r.exit_code == 0, r.stderr
    assert not home.exists()
    assert "100 validation characters" in r.stderr.replace(",", "")
    bad = CliRunner().invoke(cli, ["train", str(corpus), "-o", str(tmp_path / "n.pt"), "--val-max-chars", "1"])
    assert bad.exit_code == 2 and "--val-max-chars" in bad.stderr and "x>=2" in bad.stderr


def test_large_vocabulary_end_to_end(tmp_path: Path, home: Path) -> None:
    rng = np.random.default_rng(0)
    cps = 0x4E00 + np.minimum(rng.zipf(1.2, 20_000), 3500) - 1
    cps[::30] = ord("\n")
    text = cps.astype("<u4").tobytes().decode("utf-32-le")
    corpus = write(tmp_path / "zh.txt", text)
    out = tmp_path / "zh.pt"
    tiny = ["--hidden", "16", "--layers", "1", "--embed-dim", "8", "-b", "4", "-t", "16", "--max-steps", "2"]
    r = CliRunner().invoke(cli, ["train", str(corpus), "-o", str(out), *tiny, "--json"])
    assert r.exit_code == 0, r.stderr
    enc = encode_corpus(training_parts([str(corpus)])[0])
    assert enc.ids_cached and enc.vocab.size > 1024 and enc.ids.dtype == np.uint16
    assert "warning" not in r.stderr
    r = CliRunner().invoke(cli, ["eval", "perplexity", "-m", str(out), str(corpus), "--json"])
    assert r.exit_code == 0, r.stderr
    assert 0 < json_value(r.stdout, "nats_per_char") < np.log(enc.vocab.size) + 1
    r = CliRunner().invoke(cli, ["generate", "-m", str(out), "--prefix", text[:5], "-n", "20", "--seed", "1"])
    assert r.exit_code == 0, r.stderr
    assert len(r.stdout.rstrip("\n")) >= 25
    r = CliRunner().invoke(cli, ["train", str(corpus), "-o", str(tmp_path / "oh.pt"), *tiny, "--input", "onehot"])
    assert r.exit_code == 0, r.stderr
    assert "warning: --input onehot" in r.stderr
    r = CliRunner().invoke(cli, ["train", str(corpus), "-o", str(tmp_path / "mf.pt"), *tiny, "--min-freq", "5",
                                 "--json"])
    assert r.exit_code == 0, r.stderr
    from charrnn.model.checkpoint import load

    rare_dropped = Vocab.from_dict(load(str(tmp_path / "mf.pt"))["vocab"])
    assert rare_dropped == Vocab.build(text, min_freq=5) and rare_dropped.size < enc.vocab.size


def json_value(stdout: str, key: str) -> float:
    import json

    return float(json.loads(stdout)[key])
