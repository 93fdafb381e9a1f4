"""The training loop: the loss, a real (short) run, config validation, schedule, failures, exact resume."""

from __future__ import annotations

import math
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch

from charrnn.config import TrainConfig
from charrnn.data.corpora import builtin_text
from charrnn.data.partition import Batch, partition, random_batches, split_train_val
from charrnn.data.vocab import Vocab
from charrnn.errors import DataError, Interrupted, Terminated, TrainingError, UsageError
from charrnn.inference.evaluate import EvalResult
from charrnn.model import checkpoint
from charrnn.model.network import CharRNN, ModelConfig
from charrnn.outputs import best_path
from charrnn.training import train as train_module
from charrnn.training import validation
from charrnn.training.callbacks import Callbacks, Progress
from charrnn.training.runconfig import lr_factor
from charrnn.training.train import batch_loss, train


@pytest.fixture(scope="module")
def small() -> tuple[Vocab, np.ndarray]:
    """A few hundred characters of real text: enough for a handful of tiny minibatches per epoch."""
    text = builtin_text("pydoc")[:400]
    vocab = Vocab.build(text)
    return vocab, vocab.encode(text)


def tiny_model_config(vocab: Vocab, cell: str = "lstm", **kw) -> ModelConfig:
    args = {"hidden": 16, "layers": 2, "embed_dim": 8, **kw}
    return ModelConfig(vocab_size=vocab.size, cell=cell, **args)


def tiny_config(**kw) -> TrainConfig:
    args = {"batch_size": 4, "num_steps": 8, "max_steps": 12, "log_every": 1, **kw}
    return TrainConfig(**args)


class Recorder(Callbacks):
    def __init__(self, interrupt_at: int | None = None, exc: type[BaseException] = KeyboardInterrupt) -> None:
        self.steps: list[Progress] = []
        self.validations: list[tuple[int, EvalResult, bool]] = []
        self.saves: list[tuple[str, str]] = []
        self.info: dict | None = None
        self.interrupt_at, self.exc = interrupt_at, exc

    def on_start(self, info: dict) -> None:
        self.info = info

    def on_step(self, progress: Progress) -> None:
        self.steps.append(progress)
        if progress.step == self.interrupt_at:
            raise self.exc()

    def on_validate(self, step: int, result: EvalResult, improved: bool) -> None:
        self.validations.append((step, result, improved))

    def on_save(self, path: str, reason: str) -> None:
        self.saves.append((Path(path).name, reason))


def weights(path: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(path)["weights"]


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---- the loss ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("cell", "warmup"), [("lstm", 0), ("scratch-gru", 3), ("rnn", 2)])
def test_minibatch_gradient_is_mean_of_per_sample_gradients(cell: str, warmup: int) -> None:
    torch.manual_seed(0)
    v, b = 10, 5
    model = CharRNN(ModelConfig(vocab_size=v, cell=cell, hidden=12, layers=2, input="onehot"))
    ids = np.random.default_rng(0).integers(0, v, 400)
    batch = next(random_batches(ids, b, 7, np.random.default_rng(1), warmup))
    device = torch.device("cpu")

    model.zero_grad()
    loss, _ = batch_loss(model, batch, None, device)
    loss.backward()
    full = {n: p.grad.clone() for n, p in model.named_parameters()}

    mean = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    losses = []
    for r in range(b):
        model.zero_grad()
        row = Batch(x=batch.x[r : r + 1], y=batch.y[r : r + 1], warmup=batch.warmup, carry_state=False)
        row_loss, _ = batch_loss(model, row, None, device)
        row_loss.backward()
        losses.append(row_loss.item())
        for n, p in model.named_parameters():
            mean[n] += p.grad / b
    assert loss.item() == pytest.approx(np.mean(losses), abs=1e-6)
    for n in full:
        assert torch.allclose(full[n], mean[n], atol=1e-6), n
    assert any(full[n].abs().sum() > 0 for n in full)


def test_batch_loss_carries_state() -> None:
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=6, cell="gru", hidden=8, layers=1))
    x = np.random.default_rng(0).integers(0, 6, (2, 9))
    whole = Batch(x=x[:, :8], y=x[:, 1:], warmup=0, carry_state=True)
    first = Batch(x=x[:, :4], y=x[:, 1:5], warmup=0, carry_state=True)
    second = Batch(x=x[:, 4:8], y=x[:, 5:], warmup=0, carry_state=True)
    cpu = torch.device("cpu")
    with torch.no_grad():
        loss, state = batch_loss(model, whole, None, cpu)
        l1, s1 = batch_loss(model, first, None, cpu)
        l2, s2 = batch_loss(model, second, s1, cpu)
    assert loss.item() == pytest.approx((l1.item() + l2.item()) / 2, abs=1e-6)
    assert torch.allclose(state, s2, atol=1e-6)


# ---- a real run ----------------------------------------------------------------------------------

def test_short_training_run_learns(tmp_path: Path) -> None:
    text = builtin_text("pydoc")[:20_000]
    vocab = Vocab.build(text)
    train_ids, val_ids = split_train_val(vocab.encode(text), 0.1)
    out = tmp_path / "m.pt"
    rec = Recorder()
    config = TrainConfig(batch_size=16, num_steps=32, lr=1e-2, max_steps=150, val_every=50, log_every=25)
    result = train(train_ids, val_ids, vocab, ModelConfig(vocab_size=vocab.size, cell="lstm", hidden=64, layers=1),
                   config, out, callbacks=rec)
    ln_v = math.log(vocab.size)
    assert result.steps == 150
    assert result.train_loss < 0.75 * ln_v
    assert result.val_loss is not None and result.val_loss < 0.75 * ln_v
    assert result.val_perplexity == pytest.approx(math.exp(result.val_loss))
    assert result.val_bits_per_char == pytest.approx(result.val_loss / math.log(2))
    assert result.checkpoint == str(out) and result.best_checkpoint == str(tmp_path / "m.best.pt")
    assert out.is_file() and (tmp_path / "m.best.pt").is_file()
    # progress reports: every 25 steps, the loss falling from about ln V
    assert [p.step for p in rec.steps] == [25, 50, 75, 100, 125, 150]
    assert rec.steps[0].train_loss > rec.steps[-1].train_loss
    assert rec.steps[-1].fraction == pytest.approx(1.0)
    assert rec.info is not None and rec.info["vocab_size"] == vocab.size and rec.info["resumed_at"] is None
    # validation every 50 steps; the best checkpoint holds the best of them
    assert [s for s, _, _ in rec.validations] == [50, 100, 150]
    best_val = min(r.nats_per_char for _, r, _ in rec.validations)
    assert result.val_loss == rec.validations[-1][1].nats_per_char
    last = checkpoint.load(out)
    best = checkpoint.load(tmp_path / "m.best.pt")
    assert last["step"] == 150 and last["best_val_loss"] == pytest.approx(best_val)
    assert best["val_loss"] == pytest.approx(best_val)
    assert ("m.pt", "final") in rec.saves and ("m.best.pt", "best") in rec.saves
    model, loaded_vocab, _ = checkpoint.load_model(out)
    assert loaded_vocab == vocab and not model.training


def test_no_validation_without_val_text(tmp_path: Path, small) -> None:
    vocab, ids = small
    rec = Recorder()
    result = train(ids, ids[:0], vocab, tiny_model_config(vocab), tiny_config(max_steps=3, val_every=1),
                   tmp_path / "m.pt", callbacks=rec)
    assert result.val_loss is None and result.val_perplexity is None and result.best_checkpoint is None
    assert rec.validations == []
    assert not best_path(tmp_path / "m.pt").exists()


@pytest.mark.parametrize(("n", "partition_name", "warmup"), [(327, "sequential", 0), (400, "sequential", 0),
                                                             (328, "random", 1), (400, "random", 1)])
@pytest.mark.parametrize("epochs", [1, 2])
def test_epochs_stopping_rule_makes_full_passes(tmp_path: Path, n: int, partition_name: str, warmup: int,
                                                epochs: int) -> None:
    """Regression: the run stopped as soon as the final epoch reached batches_per_epoch (the count
    at the worst starting offset), dropping that epoch's last minibatch when its offset gave one more."""
    text = builtin_text("pydoc")[:n]
    vocab = Vocab.build(text)
    ids = vocab.encode(text)
    config = tiny_config(max_steps=None, epochs=epochs, partition=partition_name, warmup=warmup)
    result = train(ids, ids[:0], vocab, tiny_model_config(vocab, hidden=8, layers=1), config, tmp_path / "m.pt")
    strategy = partition(partition_name)
    per_epoch = [len(list(strategy(ids, 4, 8, np.random.default_rng([0, e]), warmup))) for e in range(epochs)]
    assert result.steps == sum(per_epoch)
    ckpt = checkpoint.load(tmp_path / "m.pt")
    assert (ckpt["epoch"], ckpt["batch_in_epoch"]) == (epochs - 1, per_epoch[-1])


def test_best_path() -> None:
    assert best_path("runs/model.pt") == Path("runs/model.best.pt")
    assert best_path("model") == Path("model.best.pt")
    assert best_path("a.b.ckpt") == Path("a.b.best.ckpt")


# ---- configuration and schedule --------------------------------------------------------------------

@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_steps": None},  # no stopping rule
        {"warmup": 3},  # warm-up with sequential partitioning
        {"lr": 0.0},
        {"lr": -1e-3},
        {"lr": math.inf},
        {"lr": math.nan},
        {"partition": "nope"},
        {"optimizer": "rmsprop"},
        {"schedule": "linear"},
        {"batch_size": 0},
        {"num_steps": 0},
        {"max_steps": 0},
        {"epochs": 0},
        {"time_budget": -1.0},
        {"clip": -1.0},
        {"weight_decay": -0.1},
        {"partition": "random", "warmup": -1},
        {"log_every": 0},
    ],
)
def test_train_config_validation(kwargs: dict) -> None:
    args = {"max_steps": 10, **kwargs}
    with pytest.raises(UsageError):
        TrainConfig(**args)


def test_train_config_accepts_any_single_stopping_rule() -> None:
    assert TrainConfig(epochs=1).epochs == 1
    assert TrainConfig(time_budget=0.5).time_budget == 0.5
    assert TrainConfig(max_steps=1, partition="random", warmup=4).warmup == 4


def test_lr_factor() -> None:
    assert lr_factor("cosine", 0.0) == pytest.approx(1.0)
    assert lr_factor("cosine", 0.5) == pytest.approx(0.55)
    assert lr_factor("cosine", 1.0) == pytest.approx(0.1)
    assert lr_factor("cosine", -1.0) == pytest.approx(1.0)  # clamped
    assert lr_factor("cosine", 2.0) == pytest.approx(0.1)
    values = [lr_factor("cosine", f) for f in np.linspace(0, 1, 21)]
    assert all(a > b for a, b in pairwise(values))
    assert lr_factor("constant", 0.0) == lr_factor("constant", 0.7) == 1.0


def test_lr_follows_schedule_during_training(tmp_path: Path, small) -> None:
    vocab, ids = small
    rec = Recorder()
    train(ids, ids[:0], vocab, tiny_model_config(vocab), tiny_config(lr=0.01, max_steps=10), tmp_path / "m.pt",
          callbacks=rec)
    # the lr of step s (1-based) is set from the fraction done before it, (s - 1) / 10
    assert [p.lr for p in rec.steps] == pytest.approx([0.01 * lr_factor("cosine", s / 10) for s in range(10)])


# ---- failures ---------------------------------------------------------------------------------------

def test_text_too_small(tmp_path: Path, small) -> None:
    vocab, ids = small
    with pytest.raises(DataError, match="too few"):
        train(ids[:30], ids[:0], vocab, tiny_model_config(vocab), tiny_config(), tmp_path / "m.pt")


def test_output_folder_missing(tmp_path: Path, small) -> None:
    vocab, ids = small
    with pytest.raises(UsageError, match="does not exist"):
        train(ids, ids[:0], vocab, tiny_model_config(vocab), tiny_config(), tmp_path / "no" / "m.pt")


def test_non_finite_loss_names_the_step(tmp_path: Path, small, monkeypatch: pytest.MonkeyPatch) -> None:
    vocab, ids = small
    real = train_module.batch_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss, state = real(*args, **kwargs)
        return (loss * math.nan if calls["n"] == 3 else loss), state

    monkeypatch.setattr(train_module, "batch_loss", poisoned)
    out = tmp_path / "m.pt"
    with pytest.raises(TrainingError) as info:
        train(ids, ids[:0], vocab, tiny_model_config(vocab), tiny_config(save_every=1), out)
    message = str(info.value)
    assert "non-finite" in message and "at step 3" in message
    assert "--lr 0.0003" in message  # a tenth of the default
    assert str(out) in message  # the last good checkpoint is named
    assert checkpoint.load(out)["step"] == 2


def test_absurd_learning_rate_is_a_training_error(tmp_path: Path, small) -> None:
    """Regression: Adam's bias-corrected step lr / (1 - beta1) overflowed float32 inside
    optimizer.step() and escaped as a bare RuntimeError."""
    vocab, ids = small
    for optimizer, lr in (("adam", 1e38), ("adamw", 1e38), ("sgd", 1e300)):
        out = tmp_path / f"{optimizer}.pt"
        # The update overflows at step 1: the unfused optimizers raise inside step(), the fused one
        # leaves infinite weights that the next loss (or the save after step 1) reveals.
        with pytest.raises(TrainingError, match="non-finite .* at step [12]"):
            train(ids, ids[:0], vocab, tiny_model_config(vocab),
                  tiny_config(optimizer=optimizer, lr=lr, save_every=1), out)
        assert not out.exists()  # no checkpoint with non-finite weights was written


@pytest.mark.parametrize(("exc", "code", "word"), [(KeyboardInterrupt, 130, "interrupted"),
                                                   (Terminated, 143, "terminated")])
def test_interrupt_saves_resumable_checkpoint(tmp_path: Path, small, exc, code: int, word: str) -> None:
    vocab, ids = small
    out = tmp_path / "m.pt"
    rec = Recorder(interrupt_at=3, exc=exc)
    with pytest.raises(Interrupted) as info:
        train(ids, ids[:0], vocab, tiny_model_config(vocab), tiny_config(), out, callbacks=rec)
    assert info.value.exit_code == code
    assert f"{word} at step 3" in str(info.value) and "--resume" in str(info.value)
    assert rec.saves == [("m.pt", "interrupted")]
    ckpt = checkpoint.load(out)
    assert ckpt["step"] == 3 and ckpt["batch_in_epoch"] == 3 and ckpt["epoch"] == 0
    assert ckpt["hidden"] is not None  # sequential partitioning carries the state
    rec2 = Recorder()
    result = train(ids, ids[:0], vocab, tiny_model_config(vocab), tiny_config(), out, resume=ckpt, callbacks=rec2)
    assert result.steps == 12
    assert rec2.info is not None and rec2.info["resumed_at"] == 3
    assert [p.step for p in rec2.steps] == list(range(4, 13))


def test_resume_needs_same_text(tmp_path: Path, small) -> None:
    vocab, ids = small
    out = tmp_path / "m.pt"
    train(ids, ids[:0], vocab, tiny_model_config(vocab), tiny_config(max_steps=2), out)
    with pytest.raises(DataError, match="differs"):
        train(ids[:-1], ids[:0], vocab, tiny_model_config(vocab), tiny_config(), out, resume=checkpoint.load(out))


# ---- exact resume -------------------------------------------------------------------------------------

RESUME_CASES = [("sequential", 0, "lstm"), ("random", 2, "lstm"), ("sequential", 0, "scratch-gru"),
                ("records", 0, "lstm")]


def run_pair(tmp_path: Path, small, partition_name: str, warmup: int, cell: str, interrupt) -> dict:
    """An uninterrupted run of 12 steps vs one stopped by `interrupt` and resumed: same weights."""
    vocab, ids = small
    train_ids, val_ids = ids[:300], ids[300:]
    mc = tiny_model_config(vocab, cell, dropout=0.1)
    config = tiny_config(partition=partition_name, warmup=warmup, schedule="cosine", max_steps=12, val_every=4)
    full = train(train_ids, val_ids, vocab, mc, config, tmp_path / "full.pt")
    out = tmp_path / "int.pt"
    with pytest.raises(Interrupted):
        interrupt(lambda cb=None: train(train_ids, val_ids, vocab, mc, config, out, callbacks=cb))
    ckpt = checkpoint.load(out)
    assert 0 < ckpt["step"] < 12
    resumed = train(train_ids, val_ids, vocab, mc, config, out, resume=ckpt)
    assert resumed.steps == full.steps == 12
    assert_bit_identical(weights(tmp_path / "full.pt"), weights(out))
    assert resumed.val_loss == full.val_loss
    assert checkpoint.load(out)["optimizer"]["state"].keys() == checkpoint.load(tmp_path / "full.pt")["optimizer"][
        "state"].keys()
    return ckpt


@pytest.mark.parametrize(("partition_name", "warmup", "cell"), RESUME_CASES)
@pytest.mark.parametrize("k", [5, 9])  # 300 ids give 9 minibatches per epoch: 9 stops at the epoch's end
def test_exact_resume_after_interrupt_between_steps(tmp_path: Path, small, partition_name: str, warmup: int,
                                                    cell: str, k: int) -> None:
    def interrupt(run) -> None:
        run(Recorder(interrupt_at=k))

    ckpt = run_pair(tmp_path, small, partition_name, warmup, cell, interrupt)
    assert (ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]) == (k, 0, k)


@pytest.mark.parametrize(("partition_name", "warmup", "cell"), RESUME_CASES)
def test_exact_resume_after_interrupt_mid_step(tmp_path: Path, small, monkeypatch: pytest.MonkeyPatch,
                                               partition_name: str, warmup: int, cell: str) -> None:
    """Regression: Ctrl-C during a step's forward pass (after its dropout masks were drawn) saved
    the torch RNG as advanced by that unfinished step, so the resumed run drew other masks."""
    real = train_module.batch_loss

    def interrupt(run) -> None:
        calls = {"n": 0}

        def interrupted_loss(*args, **kwargs):
            calls["n"] += 1
            result = real(*args, **kwargs)  # draws this step's dropout masks
            if calls["n"] == 6:
                raise KeyboardInterrupt
            return result

        monkeypatch.setattr(train_module, "batch_loss", interrupted_loss)
        try:
            run()
        finally:
            monkeypatch.setattr(train_module, "batch_loss", real)

    run_pair(tmp_path, small, partition_name, warmup, cell, interrupt)


def test_resume_with_new_stopping_rule_continues(tmp_path: Path, small) -> None:
    vocab, ids = small
    out = tmp_path / "m.pt"
    train(ids, ids[:0], vocab, tiny_model_config(vocab), tiny_config(max_steps=4), out)
    result = train(ids, ids[:0], vocab, tiny_model_config(vocab), tiny_config(max_steps=6), out,
                   resume=checkpoint.load(out))
    assert result.steps == 6
    assert checkpoint.load(out)["step"] == 6


def test_adam_uses_the_fused_kernel_on_cpu() -> None:
    from charrnn.training.runconfig import make_optimizer

    params = [torch.nn.Parameter(torch.ones(3))]
    assert make_optimizer("adam", params, 1e-3, 0.0, torch.device("cpu")).defaults["fused"] is True
    assert make_optimizer("adamw", params, 1e-3, 0.0, torch.device("cpu")).defaults["fused"] is True
    assert not make_optimizer("adam", params, 1e-3, 0.0).defaults.get("fused")  # no device: the default path


# ---- history, patience, stop reasons, fine-tuning -------------------------------------------------------


def test_history_is_kept_in_the_checkpoint_and_the_live_log(tmp_path: Path, small) -> None:
    import json

    from charrnn.model.history import History

    vocab, ids = small
    out = tmp_path / "m.pt"
    result = train(ids[:300], ids[300:], vocab, tiny_model_config(vocab), tiny_config(log_every=2, val_every=4), out)
    assert result.stop_reason == "steps"
    h = History.from_checkpoint(checkpoint.load(out)["history"])
    assert [r["step"] for r in h.train] == [2, 4, 6, 8, 10, 12] and [r["step"] for r in h.val] == [4, 8, 12]
    assert h.val[-1]["loss"] == result.val_loss and h.train[-1]["chars"] == 12 * 4 * 8
    assert all(a["elapsed"] <= b["elapsed"] for a, b in pairwise(h.train))
    lines = [json.loads(x) for x in (tmp_path / "m.pt.log.jsonl").read_text().splitlines()]
    assert [(x["kind"], x["step"]) for x in lines][:3] == [("train", 2), ("train", 4), ("val", 4)]
    assert len(lines) == 9
    # the best checkpoint holds the history up to its validation
    assert History.from_checkpoint(checkpoint.load(best_path(out))["history"]).val[-1]["step"] <= 12


def test_resumed_run_continues_the_history(tmp_path: Path, small) -> None:
    from charrnn.model.history import History, read_log

    vocab, ids = small
    config = tiny_config(val_every=4, log_every=2)
    full = tmp_path / "full.pt"
    train(ids[:300], ids[300:], vocab, tiny_model_config(vocab), config, full)
    out = tmp_path / "int.pt"
    with pytest.raises(Interrupted) as info:
        train(ids[:300], ids[300:], vocab, tiny_model_config(vocab), config, out, callbacks=Recorder(interrupt_at=6))
    assert info.value.result.stop_reason == "interrupted" and info.value.result.steps == 6
    # a crash could have left lines the checkpoint never saw: the resumed run's log drops them
    with open(tmp_path / "int.pt.log.jsonl", "a") as f:
        f.write('{"kind": "train", "step": 7, "epoch": 0, "loss": 9.0, "lr": 1, "chars_per_second": 1, '
                '"elapsed": 1, "chars": 1}\n')
    train(ids[:300], ids[300:], vocab, tiny_model_config(vocab), config, out, resume=checkpoint.load(out))
    a = History.from_checkpoint(checkpoint.load(full)["history"])
    b = History.from_checkpoint(checkpoint.load(out)["history"])
    assert [r["step"] for r in b.train] == [r["step"] for r in a.train]
    assert [r["loss"] for r in b.val] == [r["loss"] for r in a.val]
    assert read_log(tmp_path / "int.pt.log.jsonl") == b


def test_old_checkpoint_without_history_resumes(tmp_path: Path, small) -> None:
    vocab, ids = small
    out = tmp_path / "m.pt"
    train(ids, ids[:0], vocab, tiny_model_config(vocab), tiny_config(max_steps=4), out)
    ckpt = checkpoint.load(out)
    for key in ("history", "stale_validations", "init_from"):
        del ckpt[key]
    checkpoint.save(ckpt, out)
    result = train(ids, ids[:0], vocab, tiny_model_config(vocab), tiny_config(max_steps=6), out,
                   resume=checkpoint.load(out))
    assert result.steps == 6
    assert checkpoint.load(out)["history"]["train"]["step"].tolist() == [5.0, 6.0]  # from the resume on


@pytest.mark.parametrize(("key", "value"), [("history", {"train": 1}), ("stale_validations", -1),
                                            ("stale_validations", "3"), ("init_from", 5)])
def test_damaged_new_fields_are_refused(tmp_path: Path, small, key: str, value) -> None:
    from charrnn.errors import CheckpointError

    vocab, ids = small
    out = tmp_path / "m.pt"
    train(ids, ids[:0], vocab, tiny_model_config(vocab), tiny_config(max_steps=2), out)
    ckpt = checkpoint.load(out)
    ckpt[key] = value
    checkpoint.save(ckpt, out)
    with pytest.raises(CheckpointError, match="damaged"):
        checkpoint.load(out)


def test_patience_stops_after_n_validations_without_improvement(tmp_path: Path, small,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    vocab, ids = small
    losses = iter([3.0, 2.0, 2.5, 2.1, 2.2, 2.3, 1.0])  # best at the 2nd; the 3rd to 5th do not improve

    def fake_evaluate(*args, **kwargs) -> EvalResult:
        return EvalResult(nats_per_char=next(losses), chars=10, unknown=0)

    monkeypatch.setattr(validation, "evaluate", fake_evaluate)
    out = tmp_path / "m.pt"
    rec = Recorder()
    result = train(ids[:300], ids[300:], vocab, tiny_model_config(vocab),
                   tiny_config(max_steps=100, val_every=2, patience=3), out, callbacks=rec)
    assert result.stop_reason == "patience" and result.steps == 10
    assert [v[0] for v in rec.validations] == [2, 4, 6, 8, 10]
    assert checkpoint.load(best_path(out))["best_val_loss"] == 2.0
    assert checkpoint.load(out)["step"] == 10 and checkpoint.load(out)["stale_validations"] == 3


def test_stop_reasons(tmp_path: Path, small) -> None:
    vocab, ids = small
    mc = tiny_model_config(vocab)
    assert train(ids, ids[:0], vocab, mc, tiny_config(max_steps=2), tmp_path / "a.pt").stop_reason == "steps"
    assert train(ids, ids[:0], vocab, mc, tiny_config(max_steps=None, epochs=1), tmp_path / "b.pt"
                 ).stop_reason == "epochs"
    assert train(ids, ids[:0], vocab, mc, tiny_config(max_steps=None, time_budget=1e-6), tmp_path / "c.pt"
                 ).stop_reason == "budget"


def test_patience_must_be_positive() -> None:
    with pytest.raises(UsageError, match="--patience must be >= 1"):
        tiny_config(patience=0)


def test_init_from_grows_the_vocabulary_and_starts_afresh(tmp_path: Path, small) -> None:
    from charrnn.training.finetune import choose_vocab

    vocab, ids = small
    base_out = tmp_path / "base.pt"
    train(ids, ids[:0], vocab, tiny_model_config(vocab), tiny_config(max_steps=6), base_out)
    base = checkpoint.load(base_out)
    new_text = "zebra quartz Ω " * 30
    grown, added = choose_vocab(vocab, Vocab.build(new_text), keep=False)
    assert "Ω" in added and grown.size == vocab.size + len(added)
    new_ids = grown.encode(new_text)
    out = tmp_path / "ft.pt"
    rec = Recorder()
    result = train(new_ids, new_ids[:0], grown, tiny_model_config(vocab), tiny_config(max_steps=3), out,
                   init_from=base, init_from_path=str(base_out), callbacks=rec)
    assert result.steps == 3 and rec.info["resumed_at"] is None
    ckpt = checkpoint.load(out)
    assert ckpt["step"] == 3 and ckpt["init_from"] == str(base_out) and ckpt["model_config"]["vocab_size"] == grown.size
    assert ckpt["history"]["train"]["step"].tolist() == [1.0, 2.0, 3.0]  # a fresh history and step count


def test_init_from_start_model_keeps_old_rows(small) -> None:
    from charrnn.training.finetune import choose_vocab, start_model

    vocab, _ = small
    torch.manual_seed(0)
    model = CharRNN(tiny_model_config(vocab))
    base = {"vocab": vocab.to_dict(), "model_config": model.config.to_dict(), "weights": model.state_dict()}
    grown, added = choose_vocab(vocab, Vocab.build("\u00e9\u00e8 abc"), keep=False)
    tuned = start_model(base, grown)
    idx = torch.from_numpy(vocab.id_map(grown))
    assert torch.equal(tuned.state_dict()["embed.weight"][idx], model.state_dict()["embed.weight"])
    assert torch.equal(tuned.state_dict()["head.weight"][idx], model.state_dict()["head.weight"])
    kept, missing = choose_vocab(vocab, Vocab.build("\u00e9 abc"), keep=True)
    assert kept == vocab and missing == ["\u00e9"]
    assert start_model(base, kept) is not None
    no_unk = Vocab(chars=vocab.chars, counts=vocab.counts, unk=False)
    with pytest.raises(DataError, match="no <unk>"):
        choose_vocab(no_unk, Vocab.build("\u00e9"), keep=True)


def test_resume_and_init_from_exclude_each_other(tmp_path: Path, small) -> None:
    vocab, ids = small
    out = tmp_path / "m.pt"
    train(ids, ids[:0], vocab, tiny_model_config(vocab), tiny_config(max_steps=2), out)
    ckpt = checkpoint.load(out)
    with pytest.raises(UsageError, match="give one"):
        train(ids, ids[:0], vocab, tiny_model_config(vocab), tiny_config(), out, resume=ckpt, init_from=ckpt)



# ---- records --------------------------------------------------------------------------------------------

RECORDS_TEXT = "anna\nbob\ncarol\ndave\neve\nfrank\ngrace\nheidi\nivan\njudy\nmallory\noscar\npeggy\n"


def test_records_loss_is_the_mean_over_real_targets() -> None:
    """Padding is ignored and every row starts from the record-start state: the loss of a
    minibatch equals the per-record scores' total over their scored characters."""
    from charrnn.inference.score import score_rows

    vocab = Vocab.build(RECORDS_TEXT)
    ids = vocab.encode(RECORDS_TEXT)
    d = vocab.encode("\n").astype(np.int64)
    torch.manual_seed(0)
    model = CharRNN(tiny_model_config(vocab)).eval()
    strategy = partition("records", d)
    for batch in strategy(ids, 5, 64, np.random.default_rng(0)):  # T = 64: one minibatch per group
        assert batch.reset
        loss, _ = batch_loss(model, batch, None, torch.device("cpu"))
        rows = [batch.x[i][1 : 1 + int((batch.y[i] != -100).sum()) - 1] for i in range(len(batch.x))]
        scores = score_rows(model, [np.asarray(r) for r in rows], d)
        total = sum(sc.nats for sc in scores) / sum(sc.chars for sc in scores)
        assert float(loss.detach()) == pytest.approx(total, rel=1e-5)


def test_records_training_checkpoint_keeps_delimiter_and_hashes(tmp_path: Path) -> None:
    from charrnn.data.partition import split_records_train_val
    from charrnn.data.records import contains

    vocab = Vocab.build(RECORDS_TEXT)
    ids = vocab.encode(RECORDS_TEXT)
    train_ids, val_ids = split_records_train_val(ids, vocab.encode("\n").astype(np.int64), 0.2)
    rec = Recorder()
    result = train(train_ids, val_ids, vocab, tiny_model_config(vocab), tiny_config(partition="records", val_every=4),
                   tmp_path / "m.pt", callbacks=rec)
    assert result.val_loss is not None and math.isfinite(result.val_loss)
    ckpt = checkpoint.load(tmp_path / "m.pt")
    assert checkpoint.record_delimiter(ckpt) == "\n"
    hashes = ckpt["record_hashes"].numpy()
    assert ckpt["record_hashes_complete"] is True
    train_records = vocab.decode(train_ids).split("\n")[:-1]
    assert len(hashes) == len(train_records)
    assert all(contains(hashes, r) for r in train_records)
    held_out = vocab.decode(val_ids).split("\n")[:-1]
    assert held_out and not any(contains(hashes, r) for r in held_out)  # whole records held out
    assert rec.validations[-1][1].chars == len(val_ids)  # every held-out character and end scored


def test_records_delimiter_must_occur(tmp_path: Path) -> None:
    vocab = Vocab.build(RECORDS_TEXT)
    ids = vocab.encode(RECORDS_TEXT)
    with pytest.raises(DataError, match="never occurs"):
        train(ids, ids[:0], vocab, tiny_model_config(vocab), tiny_config(partition="records", delimiter="|"),
              tmp_path / "m.pt")
    with pytest.raises(DataError, match="never occurs"):
        train(ids, ids[:0], vocab, tiny_model_config(vocab), tiny_config(partition="records", delimiter="\n\n"),
              tmp_path / "m.pt")
    with pytest.raises(UsageError, match="--delimiter"):
        tiny_config(partition="records", delimiter="")


def test_bf16_training_curve_agrees_with_fp32(tmp_path: Path) -> None:
    """bfloat16 autocast follows the fp32 curve within the noise of training itself.

    The noise is measured, not guessed: two fp32 runs that differ only in the seed. bf16 keeps 8 bits of
    mantissa (relative rounding 2^-9 per product), so its trajectory drifts away from fp32's the way
    another seed's does; it must stay as close to fp32 at equal steps as another fp32 seed is, with 0.02
    nats of slack (the runs are deterministic on CPU, so this is a fixed comparison, not a flaky one).
    """
    text = builtin_text("pydoc")[:30_000]
    vocab = Vocab.build(text)
    train_ids, val_ids = split_train_val(vocab.encode(text), 0.1)
    mc = ModelConfig(vocab_size=vocab.size, cell="lstm", hidden=64, layers=1)

    def curve(precision: str, seed: int) -> tuple[np.ndarray, float]:
        rec = Recorder()
        config = TrainConfig(batch_size=16, num_steps=32, lr=1e-2, max_steps=200, val_every=200, log_every=25,
                             precision=precision, seed=seed)
        torch.manual_seed(seed)
        result = train(train_ids, val_ids, vocab, mc, config, tmp_path / f"{precision}{seed}.pt", callbacks=rec)
        return np.array([p.train_loss for p in rec.steps]), float(result.val_loss)

    fp32, val_fp32 = curve("fp32", 0)
    other, val_other = curve("fp32", 1)
    bf16, val_bf16 = curve("bf16", 0)
    assert len(bf16) == len(fp32) == 8
    noise = np.abs(other - fp32)
    # the run learns (the comparison is not between two flat lines), and both curves fall alike
    assert fp32[-1] < 0.75 * fp32[0] and bf16[-1] < 0.75 * bf16[0]
    assert np.all(np.abs(bf16 - fp32) <= noise + 0.02), (fp32, bf16, other)
    assert abs(val_bf16 - val_fp32) <= abs(val_other - val_fp32) + 0.02, (val_fp32, val_bf16, val_other)


class FakeClock:
    """Seconds that pass only when a test says so: each step, validation and save costs what it is given."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, step: float = 1.0, validate: float = 0.0, save: float = 0.0,
                 jitter: float = 0.0) -> None:
        self.now, self.rng = 0.0, np.random.default_rng(0)
        monkeypatch.setattr(train_module.Trainer, "clock", staticmethod(lambda: self.now))
        for name, cost in (("step", step), ("score_held_out", validate), ("save", save)):
            real = getattr(train_module.Trainer, name)

            def timed(trainer, *args, _real=real, _cost=cost):
                self.now += _cost * (1 + jitter * self.rng.uniform(-1, 1))
                return _real(trainer, *args)

            monkeypatch.setattr(train_module.Trainer, name, timed)


def test_validation_waits_its_gap_in_steps_decided_from_sizes(tmp_path: Path, small) -> None:
    """The gap between validations is the estimated cost of one, in steps, scaled by the share: 100 held-out
    characters at a third of a training character each, over 4 x 8 characters a step: 1.04 steps; with a
    20% share, 4.2 -> 5 steps, so after one at step 4 the validation due at step 8 waits for step 12."""
    vocab, ids = small
    trainer = train_module.Trainer(ids[:300], ids[300:], vocab, tiny_model_config(vocab),
                                   tiny_config(val_every=4, val_share=0.2, precision="fp32"), tmp_path / "m.pt")
    assert validation.cost_in_steps(trainer) == pytest.approx(100 / 3 / 32) and trainer.val_gap == 5
    trainer.state.step = 4
    assert validation.due(trainer, 0.3, 0.35)  # the first validation waits for nothing
    trainer.last_val_step = 4
    trainer.state.step = 8
    assert not validation.due(trainer, 0.6, 0.65)  # 4 steps after the last one
    trainer.state.step = 12
    assert validation.due(trainer, 0.9, 1.0)
    trainer.state.step = 13  # not a multiple of --val-every
    assert not validation.due(trainer, 0.9, 1.0)
    with pytest.raises(UsageError, match="--val-share"):
        tiny_config(val_share=0.0)


def test_without_val_every_a_run_validates_at_each_tenth(tmp_path: Path, small) -> None:
    vocab, ids = small
    rec = Recorder()
    train(ids[:300], ids[300:], vocab, tiny_model_config(vocab), tiny_config(max_steps=30), tmp_path / "m.pt",
          callbacks=rec)
    assert [s for s, _, _ in rec.validations] == list(range(3, 31, 3))
    rec = Recorder()
    train(ids[:300], ids[300:], vocab, tiny_model_config(vocab), tiny_config(max_steps=30, val_every=20),
          tmp_path / "e.pt", callbacks=rec)
    assert [s for s, _, _ in rec.validations] == [20, 30]  # --val-every given: its multiples and the end


def test_the_clock_never_decides_which_steps_validate(tmp_path: Path, small, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same command, same seed: same model, however long validation takes against the steps (it once
    decided, by the clock, which steps validated, and so where --patience stopped)."""
    vocab, ids = small
    runs = []
    for i, (validate, jitter) in enumerate([(0.0, 0.0), (50.0, 0.9)]):
        FakeClock(monkeypatch, step=1.0, validate=validate, jitter=jitter)
        rec = Recorder()
        result = train(ids[:300], ids[300:], vocab, tiny_model_config(vocab),
                       tiny_config(max_steps=60, val_every=2, val_share=0.1, patience=3, lr=0.3, precision="fp32"),
                       tmp_path / f"m{i}.pt", callbacks=rec)
        runs.append(([s for s, _, _ in rec.validations], result.steps, weights(tmp_path / f"m{i}.pt")))
    assert runs[0][:2] == runs[1][:2]
    assert_bit_identical(runs[0][2], runs[1][2])


def test_the_time_budget_covers_the_final_validation_and_save(tmp_path: Path, small,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps of 1 s, a validation of 5 s and saves of 2 s (a fake clock): a 40 s budget ends at 40 s at most,
    the final validation and save included, and not much sooner."""
    vocab, ids = small
    clock = FakeClock(monkeypatch, step=1.0, validate=5.0, save=2.0)
    rec = Recorder()
    result = train(ids[:300], ids[300:], vocab, tiny_model_config(vocab),
                   tiny_config(max_steps=None, time_budget=40.0, val_every=10, val_share=1.0), tmp_path / "m.pt",
                   callbacks=rec)
    assert result.stop_reason == "budget" and result.seconds == clock.now <= 40.0
    assert result.seconds >= 40.0 - 1.0 - 5.0 - 2.0  # it stopped when one more step would not have fitted
    assert rec.validations[-1][0] == result.steps and rec.saves[-1][1] == "final"
