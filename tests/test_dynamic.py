"""Dynamic evaluation: the update rule by hand, causality, lr 0 = static, the model left alone, the CLI."""

from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from charrnn.cli import cli
from charrnn.config import CELLS
from charrnn.errors import DataError, UsageError
from charrnn.inference.dynamic import (
    DEFAULT_DECAY,
    DEFAULT_EPS,
    DEFAULT_LR,
    DEFAULT_SEGMENT,
    DynamicConfig,
    GradStats,
    collect_stats,
    dynamic_evaluate,
    dynamic_losses,
    rms_update,
)
from charrnn.inference.evaluate import evaluate
from charrnn.model.network import CharRNN, ModelConfig

TINY = ["--hidden", "16", "--layers", "1", "-b", "4", "-t", "16", "--max-steps", "6", "--val-every", "3", "-q"]


def tiny_model(cell: str = "lstm", v: int = 5, seed: int = 0, **kw) -> CharRNN:
    torch.manual_seed(seed)
    return CharRNN(ModelConfig(vocab_size=v, cell=cell, hidden=kw.pop("hidden", 6), layers=kw.pop("layers", 1),
                               embed_dim=4, **kw)).eval()


def random_ids(n: int, v: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, v, n).astype(np.int64)


def test_update_rule_by_hand() -> None:
    p, t = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])
    g, r = torch.tensor([0.5, -1.0]), torch.tensor([0.5, 2.0])
    # mean rms 1.25; step -lr g / rms = (-0.1, 0.05); rates (0.4, 1.6); pull 0.5 * rate * (t - p) = (-0.2, -1.6)
    rms_update([p], [g], [t], [r], DynamicConfig(lr=0.1, decay=0.5, eps=1e-30))
    assert p.tolist() == pytest.approx([0.7, 0.45])
    # decay 0.8 clips the rates at 1 / 0.8 = 1.25: pull 0.8 * (0.4 * -1, 1.25 * -2) = (-0.32, -2.0)
    p = torch.tensor([1.0, 2.0])
    rms_update([p], [g], [t], [r], DynamicConfig(lr=0.1, decay=0.8, eps=1e-30))
    assert p.tolist() == pytest.approx([0.58, 0.05])


def test_mean_rms_is_over_tensors() -> None:
    # two tensors of different sizes: mean_rms is the mean of the per-tensor means (1 and 3), 2
    p, q = torch.zeros(1), torch.zeros(3)
    rms_update([p, q], [torch.zeros(1), torch.zeros(3)], [torch.ones(1), torch.ones(3)],
               [torch.tensor([1.0]), torch.tensor([3.0, 3.0, 3.0])], DynamicConfig(lr=0.0, decay=0.1, eps=1.0))
    assert p.item() == pytest.approx(0.1 * 0.5) and q.tolist() == pytest.approx([0.1 * 1.5] * 3)


def hand_dynamic(model: CharRNN, ids: np.ndarray, lr: float, decay: float, eps: float, segment: int) -> list[float]:
    """The per-target losses of dynamic evaluation with causal statistics, written out plainly."""
    work = copy.deepcopy(model)
    params = list(work.parameters())
    trained = [p.detach().clone() for p in params]
    sq = [torch.zeros_like(p) for p in params]
    state, out, k = work.begin_state(1), [], 0
    for start in range(0, len(ids) - 1, segment):
        x = torch.tensor(ids[start:start + segment + 1])
        logits, state = work(x[None, :-1], state)
        losses = F.cross_entropy(logits[0], x[1:], reduction="none")
        out += losses.tolist()
        state = tuple(s.detach() for s in state)
        grads = torch.autograd.grad(losses.mean(), params)
        k += 1
        with torch.no_grad():
            rms = []
            for s, gr in zip(sq, grads, strict=True):
                s += gr * gr
                rms.append((s / k).sqrt())
            mean = sum(r.mean() for r in rms) / len(rms)
            for p, gr, t, r in zip(params, grads, trained, rms, strict=True):
                new = p - lr * gr / (r + eps) + decay * torch.clamp(r / mean, max=1 / decay) * (t - p)
                p.copy_(new)
    return out


def test_losses_match_a_hand_computation() -> None:
    model, ids = tiny_model(), random_ids(23)
    config = DynamicConfig(lr=0.05, decay=0.1, eps=1e-4, segment=5)
    got = np.concatenate([losses for losses, _ in dynamic_losses(model, ids, config=config)])
    want = hand_dynamic(model, ids, 0.05, 0.1, 1e-4, 5)
    assert len(got) == 22 and got == pytest.approx(want, rel=1e-4, abs=1e-5)
    static = evaluate(model, ids, streams=1).nats_per_char
    assert got[:5].tolist() == pytest.approx(hand_dynamic(model, ids[:6], 0, 0.1, 1e-4, 5))  # first: static weights
    assert abs(float(got.mean()) - static) > 1e-3  # the steps did change the later scores


@settings(max_examples=25, deadline=None)
@given(n=st.integers(4, 40), cut=st.integers(1, 39), segment=st.integers(1, 7), seed=st.integers(0, 1000),
       fixed=st.booleans())
def test_a_score_never_depends_on_later_text(n: int, cut: int, segment: int, seed: int, fixed: bool) -> None:
    """Target k (ids[k + 1] from ids[:k + 1]) scores the same whatever follows ids[k + 1]."""
    cut = min(cut, n - 2)  # targets 0..cut-1 must not change; ids[cut + 1:] are redrawn
    model = tiny_model("gru", seed=1)
    a = random_ids(n, seed=seed)
    b = a.copy()
    b[cut + 1:] = random_ids(n - cut - 1, seed=seed + 1)
    config = DynamicConfig(lr=0.05, decay=0.01, segment=segment)
    stats = collect_stats(model, random_ids(30, seed=7), segment=segment) if fixed else None

    def losses(ids):
        return np.concatenate([x for x, _ in dynamic_losses(model, ids, config=config, stats=copy.deepcopy(stats))])

    assert losses(a)[:cut] == pytest.approx(losses(b)[:cut], rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("cell", CELLS)
def test_lr_zero_is_the_static_single_pass(cell: str) -> None:
    model, ids = tiny_model(cell, layers=2), random_ids(57)
    static = evaluate(model, ids, streams=1).nats_per_char
    for decay in (0.0, 0.5):
        result = dynamic_evaluate(model, ids, config=DynamicConfig(lr=0.0, decay=decay, segment=4))
        assert result.nats_per_char == pytest.approx(static, rel=1e-5)
        assert result.chars == 56


@pytest.mark.parametrize("cell", CELLS)
def test_adapting_helps_on_repetitive_text_for_every_cell(cell: str) -> None:
    model = tiny_model(cell, seed=3)
    ids = np.tile(np.array([0, 1, 2, 3, 4, 0, 0, 1], dtype=np.int64), 30)
    static = evaluate(model, ids, streams=1).nats_per_char
    dynamic = dynamic_evaluate(model, ids, config=DynamicConfig(lr=3e-2, decay=0.0, segment=8)).nats_per_char
    assert math.isfinite(dynamic) and dynamic < static - 0.1


def test_the_model_is_left_unchanged() -> None:
    model, ids = tiny_model(), random_ids(40)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dynamic_evaluate(model, ids, config=DynamicConfig(lr=0.1, segment=3))
    collect_stats(model, ids, segment=3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())


def test_unknown_targets_are_skipped_not_scored() -> None:
    model = tiny_model(v=5)
    ids = np.array([0, 1, 4, 2, 4, 4, 3, 1, 0], dtype=np.int64)  # id 4 plays <unk>
    result = dynamic_evaluate(model, ids, config=DynamicConfig(lr=0.01, segment=2), unk_id=4)
    assert (result.chars, result.unknown) == (5, 3)
    with pytest.raises(DataError, match="every target is unknown"):
        dynamic_evaluate(model, np.array([4, 4, 4]), unk_id=4)
    with pytest.raises(DataError, match="every one is unknown"):
        collect_stats(model, np.array([0, 4, 4]), unk_id=4)
    with pytest.raises(DataError, match="at least 2"):
        dynamic_evaluate(model, np.array([1]))


def test_fixed_statistics() -> None:
    model, ids = tiny_model(), random_ids(60)
    stats = collect_stats(model, random_ids(200, seed=5), segment=5)
    assert isinstance(stats, GradStats) and stats.count == 40
    config = DynamicConfig(lr=0.02, segment=5)
    fixed = dynamic_evaluate(model, ids, config=config, stats=stats).nats_per_char
    causal = dynamic_evaluate(model, ids, config=config).nats_per_char
    assert math.isfinite(fixed) and fixed != causal


@pytest.mark.parametrize("bad", [dict(lr=-1e-3), dict(lr=math.nan), dict(decay=math.inf), dict(decay=1.5),
                                 dict(segment=0), dict(eps=0.0), dict(segment=2.5)])
def test_config_refuses_bad_values(bad: dict) -> None:
    with pytest.raises(UsageError):
        DynamicConfig(**bad)


def test_defaults() -> None:
    assert DynamicConfig() == DynamicConfig(DEFAULT_LR, DEFAULT_DECAY, DEFAULT_SEGMENT, DEFAULT_EPS)


# --- the command line ---------------------------------------------------------------------------------------

TEXT = "".join("the cat sat on the mat and the dog ran to the cat\n" for _ in range(12))


def train(folder: Path, *extra: str) -> Path:
    (folder / "c.txt").write_text(TEXT, encoding="utf-8")
    r = CliRunner().invoke(cli, ["train", str(folder / "c.txt"), "-o", str(folder / "m.pt"), *TINY, *extra])
    assert r.exit_code == 0, r.stderr
    return folder / "m.pt"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(tmp_path_factory.mktemp("dyn"))


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(cli, list(args), input=input)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_text_output_and_model_file_unchanged(model_path: Path, tmp_path: Path) -> None:
    held = tmp_path / "held.txt"
    held.write_text(TEXT[:300], encoding="utf-8")
    before = digest(model_path)
    r = run("eval", "perplexity", "-m", str(model_path), str(held), "--dynamic", "--dynamic-lr", "1e-3")
    assert r.exit_code == 0, r.stderr
    assert digest(model_path) == before
    lines = r.stdout.splitlines()
    assert [line.rsplit(" ", 1)[0] for line in lines] == [
        "perplexity", "nats/char", "bits/char", "chars", "unknown",
        "dynamic perplexity", "dynamic nats/char", "dynamic bits/char"]
    assert "dynamic evaluation" in r.stderr
    # the static figure beside it is the single pass (--streams 1), as without --dynamic
    single = run("eval", "perplexity", "-m", str(model_path), str(held), "--streams", "1")
    assert single.stdout == "\n".join(lines[:5]) + "\n"


def test_cli_json_keeps_static_and_adds_dynamic(model_path: Path, tmp_path: Path) -> None:
    held = tmp_path / "held.txt"
    held.write_text(TEXT[:200], encoding="utf-8")
    r = run("eval", "perplexity", "-m", str(model_path), str(held), "--dynamic", "--json", "--dynamic-segment", "7")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) == {"perplexity", "nats_per_char", "bits_per_char", "chars", "unknown", "threads", "dynamic"}
    dyn = out["dynamic"]
    assert set(dyn) == {"perplexity", "nats_per_char", "bits_per_char", "chars", "unknown", "lr", "decay",
                        "segment", "eps", "stats"}
    assert (dyn["segment"], dyn["lr"], dyn["decay"], dyn["stats"]) == (7, DEFAULT_LR, DEFAULT_DECAY, "causal")
    assert dyn["chars"] == out["chars"] == 199
    zero = run("eval", "perplexity", "-m", str(model_path), str(held), "--dynamic", "--json", "--dynamic-lr", "0")
    z = json.loads(zero.stdout)
    assert z["dynamic"]["nats_per_char"] == pytest.approx(z["nats_per_char"], rel=1e-5)
    plain = json.loads(run("eval", "perplexity", "-m", str(model_path), str(held), "--json").stdout)
    assert set(plain) == set(out) - {"dynamic"}


def test_cli_stats_file(model_path: Path, tmp_path: Path) -> None:
    held = tmp_path / "held.txt"
    held.write_text(TEXT[:200], encoding="utf-8")
    stats = tmp_path / "train.txt"
    stats.write_text(TEXT, encoding="utf-8")
    r = run("eval", "perplexity", "-m", str(model_path), str(held), "--dynamic", "--json",
            "--dynamic-stats", str(stats))
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["dynamic"]["stats"] == str(stats)


def test_cli_records_model(tmp_path: Path) -> None:
    path = train(tmp_path, "--partition", "records")
    r = run("eval", "perplexity", "-m", str(path), str(tmp_path / "c.txt"), "--dynamic", "--json")
    assert r.exit_code == 0, r.stderr
    assert math.isfinite(json.loads(r.stdout)["dynamic"]["nats_per_char"])


def test_cli_bf16_trained_model(tmp_path: Path) -> None:
    path = train(tmp_path, "--precision", "bf16")
    before = digest(path)
    r = run("eval", "perplexity", "-m", str(path), str(tmp_path / "c.txt"), "--dynamic", "--json")
    assert r.exit_code == 0, r.stderr
    assert math.isfinite(json.loads(r.stdout)["dynamic"]["nats_per_char"]) and digest(path) == before


def assert_clean_error(r, code: int, needle: str) -> None:
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    assert r.stdout == "" and "Traceback" not in r.stderr and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize("text, needle", [("", "is empty"), ("\u4e2d\u6587\u4e2d\u6587\u4e2d", "unknown")])
def test_cli_bad_texts(model_path: Path, tmp_path: Path, text: str, needle: str) -> None:
    held = tmp_path / "held.txt"
    held.write_text(text, encoding="utf-8")
    r = run("eval", "perplexity", "-m", str(model_path), str(held), "--dynamic")
    assert r.exit_code == 1 and r.stdout == "" and "Traceback" not in r.stderr and needle in r.stderr, r.stderr


@pytest.mark.parametrize("args, needle", [
    (["--dynamic-lr", "1e-3"], "add --dynamic"),
    (["--dynamic-segment", "5"], "add --dynamic"),
    (["--dynamic-stats", "x.txt"], "add --dynamic"),
    (["--dynamic", "--dynamic-lr", "-1"], "--dynamic-lr"),
    (["--dynamic", "--dynamic-lr", "nan"], "--dynamic-lr"),
    (["--dynamic", "--dynamic-lr", "inf"], "--dynamic-lr"),
    (["--dynamic", "--dynamic-decay", "-0.1"], "--dynamic-decay"),
    (["--dynamic", "--dynamic-decay", "2"], "--dynamic-decay"),
    (["--dynamic", "--dynamic-segment", "0"], "--dynamic-segment"),
    (["--dynamic", "--dynamic-eps", "0"], "--dynamic-eps"),
    (["--dynamic", "--dynamic-stats", "-"], "not standard input"),
    (["--dynamic", "--dynamic-stats", "no/such.txt"], "does not exist"),
])
def test_cli_usage_errors(model_path: Path, tmp_path: Path, args: list[str], needle: str) -> None:
    held = tmp_path / "held.txt"
    held.write_text(TEXT[:100], encoding="utf-8")
    r = run("eval", "perplexity", "-m", str(model_path), str(held), *args)
    assert r.exit_code == 2 and r.stdout == "" and needle in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("content, needle", [("", "is empty"), ("\u4e2d\u6587\u4e2d", "unknown")])
def test_cli_bad_stats_file(model_path: Path, tmp_path: Path, content: str, needle: str) -> None:
    held, stats = tmp_path / "held.txt", tmp_path / "stats.txt"
    held.write_text(TEXT[:100], encoding="utf-8")
    stats.write_text(content, encoding="utf-8")
    r = run("eval", "perplexity", "-m", str(model_path), str(held), "--dynamic", "--dynamic-stats", str(stats))
    assert r.exit_code == 1 and r.stdout == "" and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
