"""Weight averaging (--average ema / tail): the average itself, the trainer's choice between it and the
raw weights, what the checkpoint holds, exact resume, damaged fields and the CLI's options; and the CLI
of the two regularisers beside it (--weight-drop, --embed-dropout; their arithmetic is in test_model)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from charrnn.config import TrainConfig, check_settings
from charrnn.data.corpora import builtin_text
from charrnn.data.vocab import Vocab
from charrnn.errors import CheckpointError, Interrupted, UsageError
from charrnn.inference.evaluate import EvalResult
from charrnn.model import checkpoint
from charrnn.model.checkpoint import check_state
from charrnn.model.network import CharRNN, ModelConfig, parameter_shapes
from charrnn.training import train as train_module
from charrnn.training.averaging import WeightAverage
from charrnn.training.train import train


@pytest.fixture(scope="module")
def small() -> tuple[Vocab, np.ndarray]:
    text = builtin_text("pydoc")[:400]
    vocab = Vocab.build(text)
    return vocab, vocab.encode(text)


def model_config(vocab: Vocab) -> ModelConfig:
    return ModelConfig(vocab_size=vocab.size, hidden=16, layers=2, embed_dim=8, dropout=0.1)


def config(**kw) -> TrainConfig:
    return TrainConfig(**{"batch_size": 4, "num_steps": 8, "max_steps": 12, "log_every": 1, "val_every": 4,
                          "average": "ema", "ema_decay": 0.8, **kw})


def tiny_model() -> CharRNN:
    torch.manual_seed(0)
    return CharRNN(ModelConfig(vocab_size=5, hidden=4, embed_dim=3))


def params(model: CharRNN) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ---- the average ------------------------------------------------------------------------------------

def test_ema_follows_its_formula_with_the_warm_up() -> None:
    model, avg = tiny_model(), WeightAverage("ema", decay=0.9)
    seen = []
    for k in range(6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * (k + 1))
        seen.append(params(model))
        avg.update(model, fraction=k / 6)
    expected = dict(seen[0])
    for n, w in enumerate(seen[1:], start=1):
        d = min(0.9, (1 + n) / (10 + n))
        expected = {k: d * expected[k] + (1 - d) * w[k] for k in expected}
    assert avg.count == 6
    for k, v in expected.items():
        torch.testing.assert_close(avg.weights[k], v)


def test_tail_is_the_plain_mean_of_the_last_part() -> None:
    model, avg = tiny_model(), WeightAverage("tail", tail=0.5)
    kept = []
    for k in range(10):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(float(k))
        fraction = (k + 1) / 10
        avg.update(model, fraction)
        assert avg.ready == (fraction >= 0.5)
        if fraction >= 0.5:
            kept.append(params(model))
    assert avg.count == len(kept) == 6
    for name in kept[0]:
        torch.testing.assert_close(avg.weights[name], torch.stack([w[name] for w in kept]).mean(0))


def test_applied_swaps_in_the_average_and_restores_the_raw_weights_exactly() -> None:
    model, avg = tiny_model(), WeightAverage("ema")
    avg.update(model, 0.0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    raw = params(model)
    with avg.applied(model):
        for n, p in model.named_parameters():
            assert torch.equal(p, avg.weights[n])
    for n, p in model.named_parameters():
        assert torch.equal(p, raw[n])
    with pytest.raises(RuntimeError), WeightAverage("ema").applied(model):
        pass  # no average yet


@pytest.mark.parametrize(("kind", "decay", "tail"), [("mean", 0.9, 0.5), ("ema", 1.0, 0.5), ("ema", 0.0, 0.5),
                                                     ("ema", math.nan, 0.5), ("tail", 0.9, 0.0),
                                                     ("tail", 0.9, 1.5), ("ema", True, 0.5)])
def test_bad_settings_are_usage_errors(kind: str, decay: float, tail: float) -> None:
    with pytest.raises(UsageError):
        check_settings(kind, decay, tail)
    with pytest.raises(UsageError):
        TrainConfig(max_steps=1, average=kind, ema_decay=decay, average_tail=tail)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(["kind", "decay", "tail", "count", "weights", "extra"]),
                       st.one_of(st.none(), st.integers(-3, 3), st.floats(allow_nan=True), st.text(max_size=4),
                                 st.sampled_from(["ema", "tail", "none"]))))
def test_a_damaged_average_state_is_refused(state: dict) -> None:
    shapes = parameter_shapes(ModelConfig(vocab_size=5, hidden=4, embed_dim=3))
    with pytest.raises(CheckpointError):
        check_state(state, shapes)  # weights is never a table of tensors here: always refused


def test_a_saved_state_is_accepted_and_loads_back() -> None:
    model, avg = tiny_model(), WeightAverage("ema")
    avg.update(model, 0.0)
    avg.update(model, 0.1)
    saved = avg.state()
    check_state(saved, parameter_shapes(model.config))
    again = WeightAverage("ema")
    again.load(saved, torch.device("cpu"))
    assert again.count == 2 and all(torch.equal(again.weights[k], avg.weights[k]) for k in avg.weights)


# ---- the trainer's choice ---------------------------------------------------------------------------

def test_a_run_validates_both_and_records_both(tmp_path: Path, small) -> None:
    vocab, ids = small
    result = train(ids[:300], ids[300:], vocab, model_config(vocab), config(), tmp_path / "m.pt")
    ckpt = checkpoint.load(tmp_path / "m.pt")
    val = ckpt["history"]["val"]
    raw, avg, kept = val["raw_loss"], val["average_loss"], val["loss"]
    assert len(kept) == 3 and bool(torch.isfinite(raw).all()) and bool(torch.isfinite(avg).all())
    assert torch.equal(kept, torch.minimum(raw, avg))
    assert result.raw_val_loss == raw[-1].item() and result.average_val_loss == avg[-1].item()
    assert result.weights_from == ckpt["weights_from"] == ("ema" if avg[-1] < raw[-1] else "raw")
    assert ckpt["average"]["kind"] == "ema" and ckpt["average"]["count"] == 12


def test_without_averaging_nothing_changes(tmp_path: Path, small) -> None:
    vocab, ids = small
    result = train(ids[:300], ids[300:], vocab, model_config(vocab), config(average="none"), tmp_path / "m.pt")
    ckpt = checkpoint.load(tmp_path / "m.pt")
    assert ckpt["weights_from"] == "raw" and ckpt["average"] is None and "training_weights" not in ckpt
    assert result.raw_val_loss is None and result.average_val_loss is None
    assert bool(torch.isnan(ckpt["history"]["val"]["average_loss"]).all())


@pytest.fixture
def average_wins(monkeypatch: pytest.MonkeyPatch):
    """The averaged weights validate at 1.0 and the raw ones at 2.0, whatever they are."""
    applied = {"on": False}
    real = WeightAverage.applied

    def flagged(self, model):
        import contextlib

        @contextlib.contextmanager
        def inner():
            with real(self, model):
                applied["on"] = True
                try:
                    yield
                finally:
                    applied["on"] = False
        return inner()

    monkeypatch.setattr(WeightAverage, "applied", flagged)
    monkeypatch.setattr(train_module.Trainer, "score_held_out",
                        lambda self: EvalResult(1.0 if applied["on"] else 2.0, 10, 0))


def test_the_better_average_is_what_the_checkpoints_hold(tmp_path: Path, small, average_wins) -> None:
    vocab, ids = small
    result = train(ids[:300], ids[300:], vocab, model_config(vocab), config(), tmp_path / "m.pt")
    assert (result.weights_from, result.val_loss) == ("ema", 1.0)
    assert (result.raw_val_loss, result.average_val_loss) == (2.0, 1.0)
    for name in ("m.pt", "m.best.pt"):
        ckpt = checkpoint.load(tmp_path / name)
        assert ckpt["weights_from"] == "ema"
        for k, v in ckpt["average"]["weights"].items():
            assert torch.equal(ckpt["weights"][k], v)
        assert any(not torch.equal(ckpt["weights"][k], ckpt["training_weights"][k]) for k in ckpt["weights"])
    # every command reads the averaged weights
    model, _, ckpt = checkpoint.load_model(tmp_path / "m.pt")
    assert all(torch.equal(p, ckpt["average"]["weights"][n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("kind", ["ema", "tail"])
def test_exact_resume_with_an_average(tmp_path: Path, small, kind: str) -> None:
    vocab, ids = small
    mc, cfg = model_config(vocab), config(average=kind, average_tail=0.75, precision="fp32")
    train_ids, val_ids = ids[:300], ids[300:]
    full = train(train_ids, val_ids, vocab, mc, cfg, tmp_path / "full.pt")

    class StopAt7(train_module.Callbacks):
        def on_step(self, progress) -> None:
            if progress.step == 7:
                raise KeyboardInterrupt

    out = tmp_path / "int.pt"
    with pytest.raises(Interrupted):
        train(train_ids, val_ids, vocab, mc, cfg, out, callbacks=StopAt7())
    resumed = train(train_ids, val_ids, vocab, mc, cfg, out, resume=checkpoint.load(out))
    a, b = checkpoint.load(tmp_path / "full.pt"), checkpoint.load(out)
    assert resumed.val_loss == full.val_loss and a["weights_from"] == b["weights_from"]
    assert a["average"]["count"] == b["average"]["count"] > 0
    for table in ("weights", ):
        assert all(torch.equal(a[table][k], b[table][k]) for k in a[table])
    assert all(torch.equal(a["average"]["weights"][k], b["average"]["weights"][k]) for k in a["weights"])


def test_resume_from_averaged_weights_trains_the_raw_ones(tmp_path: Path, small, average_wins) -> None:
    vocab, ids = small
    mc = model_config(vocab)
    train(ids[:300], ids[300:], vocab, mc, config(max_steps=6), tmp_path / "m.pt")
    ckpt = checkpoint.load(tmp_path / "m.pt")
    trainer = train_module.Trainer(ids[:300], ids[300:], vocab, mc, config(max_steps=8), tmp_path / "m.pt",
                                   resume=ckpt)
    assert all(torch.equal(p.detach(), ckpt["training_weights"][n]) for n, p in trainer.model.named_parameters())
    assert trainer.average.count == 6 and trainer.state.weights_from == "ema"
    # resumed without averaging: the raw weights, and no average
    plain = train_module.Trainer(ids[:300], ids[300:], vocab, mc, config(max_steps=8, average="none"),
                                 tmp_path / "m.pt", resume=ckpt)
    assert plain.average is None and plain.state.weights_from == "raw"
    assert all(torch.equal(p.detach(), ckpt["training_weights"][n]) for n, p in plain.model.named_parameters())


# ---- damaged checkpoints and the CLI ----------------------------------------------------------------

def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "charrnn", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def averaged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("avg")
    (home / "c.txt").write_text(builtin_text("pydoc")[:3000])
    r = run_cli("train", "c.txt", "-o", "m.pt", "--hidden", "16", "--max-steps", "20", "--val-every", "5",
                "--average", "ema", "--ema-decay", "0.5", "--precision", "fp32", "--json", "-q", cwd=home)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["weights_from"] in ("raw", "ema") and summary["average_val_loss"] is not None
    return home


@pytest.mark.parametrize(("field", "value", "says"), [
    ("weights_from", "swa", "weights_from"),
    ("weights_from", "ema", "without the training weights"),
    ("average", {"kind": "ema"}, "weight average"),
    ("average", "ema", "weight average"),
    ("training_weights", {"rnn.weight": torch.zeros(2)}, "training weights"),
])
def test_damaged_average_fields_are_one_line_errors(averaged: Path, tmp_path: Path, field: str, value,
                                                    says: str) -> None:
    ckpt = torch.load(averaged / "m.pt", weights_only=True)
    if field == "weights_from" and value == "ema":
        ckpt.pop("training_weights", None)
    ckpt[field] = value
    torch.save(ckpt, tmp_path / "bad.pt")
    r = run_cli("eval", "perplexity", "-m", str(tmp_path / "bad.pt"), str(averaged / "c.txt"), cwd=tmp_path)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("Error: ") and says in r.stderr and "damaged" in r.stderr


@pytest.mark.parametrize(("args", "says"), [(["--average", "mean"], "--average"),
                                            (["--ema-decay", "1"], "--ema-decay"),
                                            (["--ema-decay", "nan"], "--ema-decay"),
                                            (["--average-tail", "0"], "--average-tail"),
                                            (["--weight-drop", "1"], "--weight-drop"),
                                            (["--embed-dropout", "-0.1"], "--embed-dropout")])
def test_bad_options_are_usage_errors(averaged: Path, args: list[str], says: str) -> None:
    r = run_cli("train", "c.txt", "-o", "x.pt", "--max-steps", "1", *args, cwd=averaged)
    assert r.returncode == 2 and r.stdout == "" and not (averaged / "x.pt").exists()
    assert r.stderr.count("\n") == 1 and says in r.stderr


def test_progress_names_the_kept_weights(averaged: Path) -> None:
    r = run_cli("train", "c.txt", "-o", "p.pt", "--hidden", "16", "--max-steps", "10", "--val-every", "5",
                "--average", "tail", "--average-tail", "0.3", "--precision", "fp32", cwd=averaged)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if "validation loss" in line]
    assert "average" not in lines[0] and "tail average" in lines[1] and "kept" in lines[1]  # the tail starts at 70%
    assert "saved p.pt" in r.stdout


def test_info_says_the_weights_are_averaged(tmp_path: Path, small, average_wins) -> None:
    vocab, ids = small
    train(ids[:300], ids[300:], vocab, model_config(vocab), config(), tmp_path / "m.pt")
    r = run_cli("info", "-m", "m.pt", cwd=tmp_path)
    assert r.returncode == 0 and "weights: the ema average" in r.stdout
    r = run_cli("info", "-m", "m.pt", "--json", cwd=tmp_path)
    assert json.loads(r.stdout)["weights_from"] == "ema"


def test_weight_drop_and_embed_dropout_train_and_are_kept(averaged: Path) -> None:
    r = run_cli("train", "c.txt", "-o", "r.pt", "--hidden", "16", "--max-steps", "6", "--weight-drop", "0.3",
                "--embed-dropout", "0.1", "--precision", "fp32", "-q", cwd=averaged)
    assert r.returncode == 0, r.stderr
    config = checkpoint.load(averaged / "r.pt")["model_config"]
    assert (config["weight_drop"], config["embed_dropout"]) == (0.3, 0.1)
    r = run_cli("train", "c.txt", "-o", "r.pt", "--resume", "r.pt", "--max-steps", "8", "--weight-drop", "0.2",
                cwd=averaged)
    assert r.returncode == 2 and "--weight-drop 0.2 differs from the checkpoint's 0.3" in r.stderr
