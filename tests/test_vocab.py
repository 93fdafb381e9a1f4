"""Vocabulary: exact round trips, deterministic ids, dtype by size, <unk> handling, one-hot."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from charrnn.data.vocab import UNK_CHAR, Vocab, code_points, one_hot, smallest_dtype
from charrnn.errors import UnknownCharacterError

NO_SURROGATES = st.characters(blacklist_categories=("Cs",))


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=NO_SURROGATES, min_size=1))
def test_round_trip_property(text: str) -> None:
    vocab = Vocab.build(text)
    ids = vocab.encode(text)
    assert ids.shape == (len(text),)
    assert ids.dtype == vocab.dtype
    assert vocab.decode(ids) == text
    # ids are positions in the sorted character list
    assert [vocab.chars[i] for i in ids.tolist()] == list(text)


def test_round_trip_mixed_unicode() -> None:
    text = "héllo wörld\n\t日本語 😀👍🏽 \u0301e\u00a0Ω≈ç√∫˜µ≤≥÷ \U0010ffff\x00"
    vocab = Vocab.build(text)
    assert vocab.decode(vocab.encode(text)) == text
    assert vocab.decode(torch.as_tensor(vocab.encode(text).astype(np.int64))) == text
    assert vocab.decode(vocab.encode(text).tolist()) == text


def test_ids_sorted_by_code_point_and_deterministic() -> None:
    a = Vocab.build("banana bread")
    b = Vocab.build("derb ananab")  # same characters, other order and counts
    assert a.chars == (" ", "a", "b", "d", "e", "n", "r")
    assert a.chars == b.chars
    assert list(a.chars) == sorted(a.chars, key=ord)
    assert a.counts == (1, 4, 2, 1, 1, 2, 1)
    assert a.encode("bad").tolist() == [2, 1, 3]
    assert a.encode("bad").tolist() == b.encode("bad").tolist()


def test_unk_is_last_id() -> None:
    vocab = Vocab.build("abc")
    assert vocab.size == len(vocab) == 4
    assert vocab.unk_id == 3
    assert vocab.decode([0, 3, 2]) == "a" + UNK_CHAR + "c"
    no_unk = Vocab.build("abc", unk=False)
    assert no_unk.size == 3 and no_unk.unk_id is None


@pytest.mark.parametrize(
    ("size", "dtype"),
    [(1, np.uint8), (256, np.uint8), (257, np.uint16), (65536, np.uint16), (65537, np.int32)],
)
def test_smallest_dtype_boundaries(size: int, dtype: type) -> None:
    assert smallest_dtype(size) == np.dtype(dtype)


def test_dtype_selection_by_vocab_size() -> None:
    small = "".join(chr(c) for c in range(32, 32 + 200))
    assert Vocab.build(small).dtype == np.uint8  # 201 ids

    medium = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 300))  # 301 ids
    vm = Vocab.build(medium)
    assert vm.dtype == np.uint16
    ids = vm.encode(medium)
    assert ids.dtype == np.uint16 and ids.max() == 299
    assert vm.decode(ids) == medium

    # 70000 distinct code points (skipping the surrogate block) -> ids beyond uint16
    cps = [c for c in range(0x20, 0x30000) if not 0xD800 <= c <= 0xDFFF][:70000]
    large = "".join(map(chr, cps))
    vl = Vocab.build(large)
    assert vl.size == 70001
    assert vl.dtype == np.int32
    ids = vl.encode(large)
    assert ids.dtype == np.int32
    assert ids[-1] == 69999
    assert np.array_equal(ids, np.arange(70000))
    assert vl.decode(ids) == large


def test_encode_unknown_error_names_chars() -> None:
    vocab = Vocab.build("hello")
    with pytest.raises(UnknownCharacterError) as info:
        vocab.encode("help! zz", where="prefix")
    assert info.value.chars == [" ", "!", "p", "z"]
    message = str(info.value)
    assert "prefix" in message and "4 character(s)" in message
    for ch in ("' '", "'!'", "'p'", "'z'"):
        assert ch in message
    assert "--unk map" in message


def test_encode_unknown_beyond_table() -> None:
    # a code point far above every known one must not index past the lookup table
    vocab = Vocab.build("ab")
    assert vocab.encode("a😀b", unk="map").tolist() == [0, 2, 1]
    assert vocab.unknown_chars("a😀b€") == ["€", "😀"]


def test_encode_unknown_map_to_unk() -> None:
    vocab = Vocab.build("hello")
    ids = vocab.encode("hexlo?", unk="map")
    assert ids.tolist() == [1, 0, vocab.unk_id, 2, 3, vocab.unk_id]
    assert vocab.decode(ids) == "he" + UNK_CHAR + "lo" + UNK_CHAR


def test_map_without_unk_token_still_raises() -> None:
    vocab = Vocab.build("hello", unk=False)
    with pytest.raises(UnknownCharacterError):
        vocab.encode("x", unk="map")


def test_min_freq_maps_rare_chars_to_unk() -> None:
    text = "aaabbc"
    vocab = Vocab.build(text, min_freq=2)
    assert vocab.chars == ("a", "b")
    assert vocab.counts == (3, 2)
    assert vocab.unk_id == 2
    assert vocab.encode(text, unk="map").tolist() == [0, 0, 0, 1, 1, 2]
    with pytest.raises(UnknownCharacterError):
        vocab.encode(text)
    with pytest.raises(ValueError):
        Vocab.build(text, unk=False, min_freq=2)


def test_code_points() -> None:
    assert code_points("a😀").tolist() == [0x61, 0x1F600]
    assert code_points("").shape == (0,)


def test_one_hot_shape_and_values() -> None:
    ids = torch.tensor([[0, 2, 1], [3, 3, 0]])
    oh = one_hot(ids, 5)
    assert oh.shape == (2, 3, 5)
    assert oh.dtype == torch.float32
    assert torch.equal(oh.sum(-1), torch.ones(2, 3))
    assert torch.equal(oh.argmax(-1), ids)
    # accepts unsigned ids (what the encoder produces)
    u8 = torch.from_numpy(np.array([1, 4], dtype=np.uint8))
    assert torch.equal(one_hot(u8, 5).argmax(-1), torch.tensor([1, 4]))


def test_one_hot_matmul_equals_embedding_lookup() -> None:
    torch.manual_seed(0)
    v, d = 7, 4
    w = torch.randn(d, v)  # a linear layer's weight: (out, in)
    ids = torch.tensor([[0, 6, 3], [2, 2, 5]])
    via_matmul = one_hot(ids, v) @ w.T
    via_lookup = w.T[ids]
    assert via_matmul.shape == (2, 3, d)
    assert torch.allclose(via_matmul, via_lookup, atol=0, rtol=0)
    emb = torch.nn.functional.embedding(ids, w.T)
    assert torch.equal(via_lookup, emb)


def test_dict_round_trip() -> None:
    vocab = Vocab.build("the quick brown 🦊", min_freq=1)
    d = vocab.to_dict()
    assert d == {"chars": list(vocab.chars), "counts": list(vocab.counts), "unk": True}
    assert all(isinstance(c, str) for c in d["chars"]) and all(isinstance(n, int) for n in d["counts"])
    again = Vocab.from_dict(d)
    assert again == vocab
    assert again.encode("quick").tolist() == vocab.encode("quick").tolist()
    no_unk = Vocab.build("xy", unk=False)
    assert Vocab.from_dict(no_unk.to_dict()) == no_unk


def test_grow_adds_new_characters_in_order_with_unk_last() -> None:
    base = Vocab.build("abca")
    text = Vocab.build("cazz")
    grown = base.grow(text)
    assert grown.chars == ("a", "b", "c", "z") and grown.unk_id == 4
    assert grown.counts == (1, 0, 1, 2)  # counts of the new text
    assert base.added(grown) == ["z"]
    assert base.id_map(grown).tolist() == [0, 1, 2, 4]  # a, b, c, <unk>
    assert base.grow(Vocab.build("ab")).chars == base.chars


def test_id_map_needs_a_superset() -> None:
    import pytest

    with pytest.raises(ValueError):
        Vocab.build("abc").id_map(Vocab.build("ab"))


def test_unknown_character_hint_fits_the_vocabulary() -> None:
    # --unk map is suggested only where there is an <unk> to map to (eval show has no --unk at all).
    with pytest.raises(UnknownCharacterError, match="use --unk map"):
        Vocab.build("abc").encode("abz", unk="error")
    with pytest.raises(UnknownCharacterError, match="the model has no <unk> to read them as") as e:
        Vocab.build("abc", unk=False).encode("abz", unk="map")
    assert "--unk" not in str(e.value)


def test_max_chars_keeps_the_most_frequent_ties_to_the_lower_code_point() -> None:
    v = Vocab.build("aaaabbbcccdde", max_chars=3)  # b and c tie at 3: both kept; then d (2) is out
    assert v.chars == ("a", "b", "c") and v.counts == (4, 3, 3) and v.unk
    assert Vocab.build("ccbbaa", max_chars=2).chars == ("a", "b")  # a three-way tie: the lowest code points
    assert Vocab.build("aab", min_freq=2, max_chars=5).chars == ("a",)  # after --min-freq
    assert list(v.encode("abcde", unk="map")) == [0, 1, 2, 3, 3]
    with pytest.raises(ValueError, match="need the <unk> token"):
        Vocab.build("ab", unk=False, max_chars=1)
