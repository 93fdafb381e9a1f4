"""Checkpoint files: round trip, atomic writes, every kind of bad file is a CheckpointError."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from charrnn.data.vocab import Vocab
from charrnn.errors import CheckpointError, UsageError
from charrnn.model import checkpoint
from charrnn.model.network import CharRNN, ModelConfig
from charrnn.outputs import check_output


class Hostile:
    """Unpickling this object would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def make_payload(seed: int = 0, cell: str = "scratch-lstm") -> tuple[dict, CharRNN]:
    torch.manual_seed(seed)
    vocab = Vocab.build("hello world")
    config = ModelConfig(vocab_size=vocab.size, cell=cell, hidden=8, layers=2, embed_dim=4)
    model = CharRNN(config)
    payload = {
        "format": checkpoint.FORMAT, "version": checkpoint.VERSION, "model_config": config.to_dict(),
        "vocab": vocab.to_dict(), "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "step": 7, "best_val_loss": None, "hidden": None, "rng": {"torch": torch.get_rng_state()},
    }
    return payload, model


def test_round_trip(tmp_path: Path) -> None:
    payload, _ = make_payload()
    path = tmp_path / "m.pt"
    checkpoint.save(payload, path)
    loaded = checkpoint.load(path)
    assert set(loaded) == set(payload)
    assert loaded["step"] == 7 and loaded["best_val_loss"] is None and loaded["hidden"] is None
    assert loaded["model_config"] == payload["model_config"]
    assert loaded["vocab"] == payload["vocab"]
    assert torch.equal(loaded["rng"]["torch"], payload["rng"]["torch"])
    for k, v in payload["weights"].items():
        assert torch.equal(loaded["weights"][k], v)
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary files left
    mode = path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # an ordinary file, not mkstemp's 0600


def test_save_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    checkpoint.save(make_payload(0)[0], path)
    second, _ = make_payload(1)
    checkpoint.save(second, path)
    loaded = checkpoint.load(path)
    assert all(torch.equal(loaded["weights"][k], v) for k, v in second["weights"].items())


@pytest.mark.parametrize("error", [RuntimeError("boom"), OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failed_save_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    path = tmp_path / "m.pt"
    old, _ = make_payload(0)
    checkpoint.save(old, path)
    old_bytes = path.read_bytes()
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.write(b"half-written garbage")
        raise error

    monkeypatch.setattr(torch, "save", failing_save)
    expected = CheckpointError if isinstance(error, OSError) else type(error)
    with pytest.raises(expected) as info:
        checkpoint.save(make_payload(1)[0], path)
    if isinstance(error, OSError):
        assert "No space left" in str(info.value)
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
    loaded = checkpoint.load(path)
    assert all(torch.equal(loaded["weights"][k], v) for k, v in old["weights"].items())


def test_failed_first_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial")
        raise RuntimeError("mid-way")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(RuntimeError, match="mid-way"):
        checkpoint.save(make_payload()[0], tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []


def test_load_missing(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):  # a missing file is a usage error, exit 2
        checkpoint.load(tmp_path / "nope.pt")


def test_load_directory(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="directory"):
        checkpoint.load(tmp_path)


@pytest.mark.parametrize("content", [b"", b"hello world, just some text\n" * 20, b"PK\x03\x04 not really a zip"])
def test_load_not_a_checkpoint(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a charrnn checkpoint|damaged"):
        checkpoint.load(path)


def test_load_truncated(tmp_path: Path) -> None:
    """Regression: a checkpoint cut at half its length was reported as "not a charrnn checkpoint"
    (torch raises a bare OSError EINVAL for it), not as truncated."""
    path = tmp_path / "m.pt"
    checkpoint.save(make_payload()[0], path)
    data = path.read_bytes()
    for fraction in (0.5, 0.1, 0.25, 0.75, 0.9, 0.99):
        path.write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(CheckpointError, match="truncated or damaged"):
            checkpoint.load(path)
    path.write_bytes(data[:-1])
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        checkpoint.load(path)


@pytest.mark.parametrize("obj", [{"format": "other", "version": 1}, {"version": 1}, [1, 2, 3], torch.zeros(3)])
def test_load_wrong_format(tmp_path: Path, obj) -> None:
    path = tmp_path / "x.pt"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match="not a charrnn checkpoint"):
        checkpoint.load(path)


def test_load_newer_version(tmp_path: Path) -> None:
    payload, _ = make_payload()
    payload["version"] = checkpoint.VERSION + 1
    path = tmp_path / "m.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="newer") as info:
        checkpoint.load(path)
    assert "upgrade" in str(info.value)


def test_load_missing_keys(tmp_path: Path) -> None:
    payload, _ = make_payload()
    del payload["weights"]
    path = tmp_path / "m.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="missing weights"):
        checkpoint.load(path)


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_hostile_pickle_is_refused_without_running_code(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    payload, _ = make_payload()
    payload["evil"] = Hostile(marker)
    path = tmp_path / "evil.pt"
    if writer == "torch":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    assert not marker.exists()  # writing it ran nothing
    with pytest.raises(CheckpointError):
        checkpoint.load(path)
    with pytest.raises(CheckpointError):
        checkpoint.load_model(path)
    assert not marker.exists()
    # the test is meaningful: plain unpickling of this file does create the marker
    if writer == "pickle":
        with open(path, "rb") as f:
            pickle.load(f)
        assert marker.exists()


def test_check_output(tmp_path: Path) -> None:
    check_output(tmp_path / "new.pt")  # a new file in an existing folder is fine
    (tmp_path / "old.pt").write_bytes(b"x")
    check_output(tmp_path / "old.pt")
    with pytest.raises(UsageError, match="does not exist"):
        check_output(tmp_path / "no" / "such" / "m.pt")
    with pytest.raises(UsageError, match="is a directory"):
        check_output(tmp_path)


def test_check_output_relative_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    check_output("m.pt")
    checkpoint.save(make_payload()[0], "m.pt")
    assert (tmp_path / "m.pt").is_file()


def test_check_output_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # os.access stands in for a read-only folder (the tests may run as root, who can write anywhere)
    monkeypatch.setattr(checkpoint.os, "access", lambda path, mode: False)
    with pytest.raises(UsageError, match="permission denied"):
        check_output(tmp_path / "m.pt")


@pytest.mark.parametrize("cell", ["lstm", "scratch-gru"])
def test_load_model_reproduces_outputs(tmp_path: Path, cell: str) -> None:
    payload, model = make_payload(3, cell)
    path = tmp_path / "m.pt"
    checkpoint.save(payload, path)
    loaded, vocab, ckpt = checkpoint.load_model(path)
    assert not loaded.training
    assert loaded.config == model.config
    assert vocab == Vocab.build("hello world")
    assert ckpt["step"] == 7
    x = torch.from_numpy(vocab.encode("hello world").astype("int64"))[None]
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], model(x)[0])


def test_load_model_damaged_weights(tmp_path: Path) -> None:
    payload, _ = make_payload()
    payload["weights"] = {"head.weight": torch.zeros(2, 2)}
    path = tmp_path / "m.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="damaged"):
        checkpoint.load_model(path)
    payload, _ = make_payload()
    payload["model_config"] = {**payload["model_config"], "cell": None, "bogus": 1}
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="damaged"):
        checkpoint.load_model(path)


@pytest.mark.parametrize(("fields", "ok"), [
    ({}, True),  # older checkpoints and other partitions have none of the records fields
    ({"record_hashes": torch.tensor([1, 5], dtype=torch.int64), "record_hashes_complete": True}, True),
    ({"record_hashes": torch.tensor([1.0]), "record_hashes_complete": True}, False),
    ({"record_hashes": torch.zeros(2, 2, dtype=torch.int64), "record_hashes_complete": True}, False),
    ({"record_hashes": [1, 2], "record_hashes_complete": True}, False),
    ({"record_hashes": torch.tensor([1], dtype=torch.int64)}, False),
    ({"train_config": {"partition": "records", "delimiter": ""}}, False),
    ({"train_config": {"partition": "records", "delimiter": 3}}, False),
    ({"train_config": {"partition": "records", "delimiter": "\n"}}, True),
])
def test_records_fields_are_validated(tmp_path: Path, fields: dict, ok: bool) -> None:
    payload, _ = make_payload()
    payload.update(fields)
    path = tmp_path / "m.pt"
    checkpoint.save(payload, path)
    if ok:
        ckpt = checkpoint.load(path)
        expected = "\n" if fields.get("train_config", {}).get("partition") == "records" else None
        assert checkpoint.record_delimiter(ckpt) == expected
    else:
        with pytest.raises(CheckpointError, match="damaged"):
            checkpoint.load(path)
