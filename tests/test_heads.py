"""The output layers (charrnn.model.heads): the adaptive softmax gives exact, normalised probabilities equal to
torch's AdaptiveLogSoftmaxWithLoss, its loss equals the log-probabilities it gives, every consumer reads
them through the model's log_probs and nll, and the fields it adds to the model config are validated."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from cjk import cjk_text

from charrnn.data.vocab import Vocab
from charrnn.errors import UsageError
from charrnn.model.heads import AdaptiveHead, adaptive_cutoffs, frequency_order
from charrnn.model.network import CharRNN, ModelConfig, grow_vocab, parameter_shapes

TEXT = cjk_text(4000, 300, seed=1)
VOCAB = Vocab.build(TEXT)


def adaptive_config(cell: str = "lstm", **kw: object) -> ModelConfig:
    return ModelConfig(vocab_size=VOCAB.size, cell=cell, hidden=16, layers=1, embed_dim=8, output="adaptive",
                       cutoffs=adaptive_cutoffs([*VOCAB.counts, 0]), order=tuple(frequency_order([*VOCAB.counts, 0])),
                       **kw)


def model(output: str = "adaptive", cell: str = "lstm", seed: int = 0) -> CharRNN:
    torch.manual_seed(seed)
    config = adaptive_config(cell) if output == "adaptive" else ModelConfig(VOCAB.size, cell=cell, hidden=16,
                                                                              layers=1, embed_dim=8)
    return CharRNN(config).eval()


def test_cutoffs_cover_the_text_and_the_order_is_by_frequency() -> None:
    counts = [*VOCAB.counts, 0]
    cuts = adaptive_cutoffs(counts)
    assert len(cuts) == 2 and 0 < cuts[0] < cuts[1] < VOCAB.size  # 304 ids: a shortlist, two clusters
    order = frequency_order(counts)
    assert sorted(order) == list(range(VOCAB.size)) and order[-1] == VOCAB.unk_id  # <unk>, count 0, is last
    assert [counts[i] for i in order] == sorted(counts, reverse=True)
    assert adaptive_cutoffs([5]) == () and adaptive_cutoffs([3, 1]) == (1,)


@pytest.mark.parametrize("cell", ["lstm", "gru", "scratch-rnn"])
def test_log_probs_are_normalised_and_match_the_loss(cell: str) -> None:
    m = model("adaptive", cell)
    x = torch.as_tensor(VOCAB.encode(TEXT[:81]), dtype=torch.long)[None]
    logp, _ = m.log_probs(x[:, :-1])  # (1, 80, V)
    assert logp.shape == (1, 80, VOCAB.size)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(1, 80), atol=1e-5)
    nats, _ = m.nll(x[:, :-1], x[:, 1:])
    assert torch.allclose(nats, -logp.gather(2, x[:, 1:, None])[..., 0], atol=1e-5)
    logits, _ = m(x[:, :-1])  # forward: values whose softmax is the distribution
    assert torch.allclose(torch.softmax(logits, -1), logp.exp(), atol=1e-6)


def test_equals_torch_adaptive_log_softmax() -> None:
    """The same parameters in torch's module give the same log-probabilities (in frequency-rank order)."""
    m = model("adaptive")
    head: AdaptiveHead = m.head
    c = m.config
    ref = torch.nn.AdaptiveLogSoftmaxWithLoss(c.hidden, c.vocab_size, list(c.cutoffs), div_value=4.0,
                                              head_bias=True)
    ref.load_state_dict(head.state_dict())
    h = torch.randn(7, c.hidden)
    mine = head.log_probs(h)
    assert torch.allclose(mine[:, list(c.order)], ref.log_prob(h), atol=1e-5)
    y = torch.randint(0, c.vocab_size, (7,))
    assert torch.allclose(head.nll(h, y), -ref(h, head.rank[y]).output, atol=1e-5)


def test_ignored_targets_cost_nothing_and_every_cluster_gets_a_gradient() -> None:
    m = model("adaptive").train()
    x = torch.as_tensor(VOCAB.encode(TEXT[:33]), dtype=torch.long)[None]
    y = torch.full((1, 32), -100)
    y[0, 0] = int(frequency_order([*VOCAB.counts, 0])[0])  # one target, in the shortlist
    nats, _ = m.nll(x[:, :-1], y)
    assert (nats[0, 1:] == 0).all() and nats[0, 0] > 0
    nats.sum().backward()
    assert all(p.grad is not None for p in m.parameters())  # even the clusters no target fell in


def test_full_and_adaptive_agree_where_they_should() -> None:
    """Both heads give distributions; the model's other outputs (state) do not depend on the head."""
    x = torch.as_tensor(VOCAB.encode(TEXT[:40]), dtype=torch.long)[None]
    full, adaptive = model("full"), model("adaptive")
    adaptive.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("head.")}, strict=False)
    lf, sf = full.log_probs(x)
    la, sa = adaptive.log_probs(x)
    assert all(torch.equal(a, b) for a, b in zip(sf, sa, strict=True))
    for logp in (lf, la):
        assert torch.allclose(logp.exp().sum(-1), torch.ones(1, 40), atol=1e-5)


def test_parameter_shapes_and_cost() -> None:
    m = model("adaptive")
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == parameter_shapes(m.config)
    full = model("full")
    head = sum(p.numel() for n, p in m.named_parameters() if n.startswith("head."))
    assert head < full.head.weight.numel()  # fewer head parameters than hidden x V


@pytest.mark.parametrize(("fields", "message"), [
    ({"output": "softmax"}, "unknown output layer"),
    ({"cutoffs": (0,)}, "cutoffs must increase"),
    ({"cutoffs": (10, 10)}, "cutoffs must increase"),
    ({"cutoffs": (VOCAB.size,)}, "cutoffs must increase"),
    ({"order": tuple(range(VOCAB.size - 1))}, "order must list"),
    ({"order": (0,) * VOCAB.size}, "order must list"),
    ({"order": "abc"}, "lists of integers"),
])
def test_bad_adaptive_fields_are_usage_errors(fields: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        ModelConfig(**{**adaptive_config().to_dict(), **fields})


def test_a_full_head_has_no_cutoffs_and_lists_become_tuples() -> None:
    with pytest.raises(UsageError, match="no cutoffs"):
        ModelConfig(vocab_size=10, cutoffs=(3,))
    c = adaptive_config()
    again = ModelConfig.from_dict({**c.to_dict(), "cutoffs": list(c.cutoffs), "order": list(c.order)})
    assert again == c and hash(again) == hash(c)


def test_grow_vocab_keeps_the_old_distribution_shape() -> None:
    """Fine-tuning with new characters: they take the last ranks; the old ids keep their rows."""
    m = model("adaptive")
    v = VOCAB.size
    id_map = list(range(v - 1)) + [v + 2]  # three new characters before <unk>
    grown = grow_vocab(m, id_map, v + 3).eval()
    assert grown.config.cutoffs == m.config.cutoffs and sorted(grown.config.order) == list(range(v + 3))
    x = torch.as_tensor(VOCAB.encode(TEXT[:20]), dtype=torch.long)[None]
    with torch.no_grad():
        old, _ = m.log_probs(x)
        new, _ = grown.log_probs(x)
    assert torch.allclose(new.exp().sum(-1), torch.ones(1, 20), atol=1e-5)
    # The new characters only take probability from the last cluster: the shortlist's are unchanged.
    short = list(m.config.order[: m.config.cutoffs[0]])
    assert torch.allclose(new[..., short], old[..., short], atol=1e-6)
    assert math.isfinite(float(new.min()))


def test_stepper_log_probs_equal_the_model() -> None:
    from charrnn.model.stepper import Stepper

    m = model("adaptive", "gru")
    ids = torch.as_tensor(VOCAB.encode(TEXT[:12]), dtype=torch.long)
    want, _ = m.log_probs(ids[None], dtype=torch.float64)
    # A banned token (<unk>) gets nothing: the others are renormalised, as a full head's -inf bias does.
    want_banned = torch.log_softmax(want.index_fill(2, torch.tensor([VOCAB.unk_id]), -math.inf), dim=-1)
    step, state = Stepper(m, banned=(VOCAB.unk_id,)), m.begin_state(1)
    plain, plain_state = Stepper(m), m.begin_state(1)
    keep = np.arange(VOCAB.size) != VOCAB.unk_id
    for t in range(12):
        logp, state = step.log_probs(ids[t : t + 1], state, torch.float64)
        assert logp[0, VOCAB.unk_id] == -math.inf
        assert torch.allclose(logp[0, keep], want_banned[0, t, keep], atol=1e-5)
        logits, plain_state = plain(ids[t : t + 1], plain_state)  # the sampler's values: their softmax
        assert torch.allclose(torch.log_softmax(logits.double(), -1)[0], want[0, t], atol=1e-5)


NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="no node on PATH: the web page's model.js is not run")
@pytest.mark.parametrize("output", ["adaptive", "full"])
def test_web_page_model_gives_the_same_probabilities(tmp_path: Path, output: str) -> None:
    """charrnn/web/model.js (the page's model), run in Node: the adaptive head's probabilities equal torch's."""
    from charrnn.export.webpage import asset, pack_weights

    m = model(output, "lstm")
    table, data = pack_weights(m.state_dict(), "float32")
    meta = {"config": m.config.to_dict(), "dtype": "float32", "tensors": table}
    ids = VOCAB.encode(TEXT[:6]).tolist()
    (tmp_path / "meta.json").write_text(json.dumps({"meta": meta, "data": data, "ids": ids}), encoding="utf-8")
    script = asset("model.js") + """
const fs = require("fs");
const { meta, data, ids } = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const model = new globalThis.charrnnModel.Model(meta, data);
const state = model.begin();
const rows = ids.map((id) => Array.from(globalThis.charrnnModel.softmax(model.step(id, state))));
process.stdout.write(JSON.stringify(rows));
"""
    (tmp_path / "run.js").write_text(script, encoding="utf-8")
    done = subprocess.run([NODE, str(tmp_path / "run.js"), str(tmp_path / "meta.json")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    got = np.array(json.loads(done.stdout))  # (6, V)
    with torch.no_grad():
        want, _ = m.log_probs(torch.tensor(ids)[None], dtype=torch.float64)
    assert np.allclose(got.sum(-1), 1.0, atol=1e-9)
    assert np.abs(got - want[0].exp().numpy()).max() < 1e-5


def _payload(config: ModelConfig, model: CharRNN) -> dict:
    from charrnn.model import checkpoint

    return {"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "model_config": config.to_dict(),
            "vocab": VOCAB.to_dict(), "weights": {k: v.detach().clone() for k, v in model.state_dict().items()}}


def test_checkpoints_older_than_the_field_load_as_a_full_softmax(tmp_path: Path) -> None:
    from charrnn.model import checkpoint

    m = model("full")
    payload = _payload(m.config, m)
    for name in ("output", "cutoffs", "order"):  # as a checkpoint written before the adaptive softmax
        del payload["model_config"][name]
    checkpoint.save(payload, tmp_path / "old.pt")
    loaded, _, ckpt = checkpoint.load_model(tmp_path / "old.pt")
    assert ckpt["version"] == checkpoint.VERSION == 1 and loaded.config.output == "full"
    x = torch.as_tensor(VOCAB.encode(TEXT[:10]), dtype=torch.long)[None]
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], m(x)[0])


@pytest.mark.parametrize(("change", "message"), [
    ({"order": list(range(VOCAB.size - 1)) + [0]}, "order must list"),
    ({"cutoffs": [5, 3]}, "cutoffs must increase"),
    ({"output": "hierarchical"}, "unknown output layer"),
    ({"output": "full"}, "no cutoffs"),
    ({"cutoffs": "150"}, "lists of integers"),
    ({"order": [str(i) for i in range(VOCAB.size)]}, "order must list"),
])
def test_bad_output_fields_are_a_damaged_checkpoint(tmp_path: Path, change: dict, message: str) -> None:
    from charrnn.errors import CheckpointError
    from charrnn.model import checkpoint

    m = model("adaptive")
    payload = _payload(m.config, m)
    payload["model_config"].update(change)
    checkpoint.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="is damaged: .*" + message):
        checkpoint.load(tmp_path / "bad.pt")


def test_weights_of_the_other_head_are_refused(tmp_path: Path) -> None:
    from charrnn.errors import CheckpointError
    from charrnn.model import checkpoint

    full, adaptive = model("full"), model("adaptive")
    payload = _payload(adaptive.config, full)  # claims adaptive, holds a full head
    checkpoint.save(payload, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match="different parameter names"):
        checkpoint.load(tmp_path / "mixed.pt")
