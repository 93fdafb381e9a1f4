"""The network: the worked RNN example, scratch cells vs torch's modules, state handling, devices."""

from __future__ import annotations

import pathlib
from dataclasses import replace

import pytest
import torch
from torch import nn

from charrnn.config import CELLS, INPUTS
from charrnn.data.vocab import one_hot
from charrnn.errors import UsageError
from charrnn.model.network import CharRNN, ModelConfig, ScratchRNN, detach_state, resolve_device

TORCH_MODULES = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


def tiny(cell: str, input: str = "onehot", vocab: int = 11, hidden: int = 8, layers: int = 2, **kw) -> CharRNN:
    return CharRNN(ModelConfig(vocab_size=vocab, cell=cell, hidden=hidden, layers=layers, input=input,
                               embed_dim=5, **kw)).eval()


def random_ids(batch: int, steps: int, vocab: int = 11, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, steps), generator=torch.Generator().manual_seed(seed))


def as_tuple(state) -> tuple[torch.Tensor, ...]:
    return state if isinstance(state, tuple) else (state,)


def test_worked_example_rnn_cell() -> None:
    """h_1 = tanh(W_ih one_hot('h') + b_ih + W_hh h_0 + b_hh) over the vocabulary (h, e, l, o)."""
    rnn = ScratchRNN("rnn", 4, 3, 1, 0.0)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(torch.tensor([[0.1, -0.2, 0.3, 0.4], [-0.5, 0.6, 0.7, -0.8], [0.9, -1.0, 0.2, 0.3]]))
        rnn.weight_hh_l0.copy_(torch.tensor([[0.5, -0.1, 0.2], [0.3, 0.4, -0.6], [-0.2, 0.7, 0.1]]))
        rnn.bias_ih_l0.copy_(torch.tensor([0.1, -0.2, 0.3]))
        rnn.bias_hh_l0.zero_()
    x = one_hot(torch.tensor([[0]]), 4)  # 'h' has id 0
    assert x.shape == (1, 1, 4)
    out, h1 = rnn(x, torch.zeros(1, 1, 3))
    expected_pre = torch.tensor([0.2, -0.7, 1.2])
    assert torch.allclose(torch.atanh(h1[0, 0]), expected_pre, atol=1e-5)
    assert [round(v, 3) for v in h1[0, 0].tolist()] == [0.197, -0.604, 0.834]
    assert torch.equal(out[0, 0], h1[0, 0])
    # second step from h_1 with input 'e' (id 1): the recurrent term now matters
    out2, h2 = rnn(one_hot(torch.tensor([[1]]), 4), h1)
    w_ih, w_hh = rnn.weight_ih_l0.detach(), rnn.weight_hh_l0.detach()
    manual = torch.tanh(w_ih[:, 1] + rnn.bias_ih_l0.detach() + w_hh @ h1[0, 0])
    assert torch.allclose(h2[0, 0], manual, atol=1e-6)


@pytest.mark.parametrize("base", ["rnn", "gru", "lstm"])
def test_scratch_matches_torch_module(base: str) -> None:
    torch.manual_seed(0)
    size_in, hidden, layers, b, t = 5, 7, 2, 3, 6
    ref = TORCH_MODULES[base](size_in, hidden, layers, batch_first=True)
    ours = ScratchRNN(base, size_in, hidden, layers, 0.0)
    ours.load_state_dict(ref.state_dict())  # same parameter names and layouts
    x = torch.randn(b, t, size_in)
    h0 = torch.randn(layers, b, hidden) * 0.5
    state = (h0, torch.randn(layers, b, hidden) * 0.5) if base == "lstm" else h0
    out_ref, state_ref = ref(x, state)
    out_ours, state_ours = ours(x, state)
    assert out_ours.shape == out_ref.shape == (b, t, hidden)
    assert torch.allclose(out_ours, out_ref, atol=1e-5)
    assert len(as_tuple(state_ours)) == len(as_tuple(state_ref)) == (2 if base == "lstm" else 1)
    for s_ours, s_ref in zip(as_tuple(state_ours), as_tuple(state_ref), strict=True):
        assert s_ours.shape == (layers, b, hidden)
        assert torch.allclose(s_ours, s_ref, atol=1e-5)
    # gradients: the same loss through both
    probe = torch.randn(b, t, hidden)

    def loss(out, st):
        return (out * probe).sum() + sum(s.pow(2).sum() for s in as_tuple(st))

    loss(out_ref, state_ref).backward()
    loss(out_ours, state_ours).backward()
    grads_ref = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        assert p.grad is not None
        assert torch.allclose(p.grad, grads_ref[name].grad, atol=1e-5), name


@pytest.mark.parametrize("base", ["rnn", "gru", "lstm"])
def test_fused_and_scratch_charrnn_interchangeable(base: str) -> None:
    torch.manual_seed(1)
    fused = tiny(base, "embedding")
    scratch = tiny(f"scratch-{base}", "embedding")
    scratch.load_state_dict(fused.state_dict())
    x = random_ids(2, 9)
    logits_f, _ = fused(x)
    logits_s, _ = scratch(x)
    assert torch.allclose(logits_f, logits_s, atol=1e-5)


@pytest.mark.parametrize("input", INPUTS)
@pytest.mark.parametrize("cell", CELLS)
def test_forward_shapes(cell: str, input: str) -> None:
    torch.manual_seed(0)
    model = tiny(cell, input, vocab=13, hidden=8, layers=2)
    x = random_ids(3, 7, vocab=13)
    logits, state = model(x)
    assert logits.shape == (3, 7, 13)
    assert logits.dtype == torch.float32
    parts = as_tuple(state)
    assert len(parts) == (2 if cell.endswith("lstm") else 1)
    assert all(s.shape == (2, 3, 8) for s in parts)
    # uint8 ids, as the encoder produces them, work too
    logits_u8, _ = model(x.to(torch.uint8))
    assert torch.equal(logits_u8, logits)


@pytest.mark.parametrize("input", INPUTS)
@pytest.mark.parametrize("cell", CELLS)
def test_forward_returns_new_state_and_chains(cell: str, input: str) -> None:
    torch.manual_seed(0)
    model = tiny(cell, input)
    x = random_ids(2, 10)
    s0 = model.begin_state(2)
    full, s_full = model(x, s0)
    for s in as_tuple(s0):
        assert torch.count_nonzero(s) == 0  # the incoming state is not modified in place
    first, s_mid = model(x[:, :4], s0)
    assert not all(torch.equal(a, b) for a, b in zip(as_tuple(s_mid), as_tuple(s0), strict=True))
    second, s_end = model(x[:, 4:], s_mid)
    assert torch.allclose(torch.cat([first, second], dim=1), full, atol=1e-6)
    for a, b in zip(as_tuple(s_end), as_tuple(s_full), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    # the returned state is the one after the last step: the head applied to the top layer's h
    # gives the last logits
    assert torch.allclose(model.head(as_tuple(s_full)[0][-1]), full[:, -1], atol=1e-6)


@pytest.mark.parametrize("input", INPUTS)
@pytest.mark.parametrize("cell", CELLS)
def test_step_matches_forward(cell: str, input: str) -> None:
    torch.manual_seed(0)
    model = tiny(cell, input)
    x = random_ids(3, 8)
    logits, state_full = model(x)
    state = model.begin_state(3)
    with torch.no_grad():
        for t in range(x.shape[1]):
            step_logits, state = model.step(x[:, t], state)
            assert step_logits.shape == (3, 11)
            assert torch.allclose(step_logits, logits[:, t], atol=1e-5), t
    for a, b in zip(as_tuple(state), as_tuple(state_full), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_detach_state() -> None:
    h = torch.randn(2, 3, 4, requires_grad=True) * 2
    c = torch.randn(2, 3, 4, requires_grad=True) * 2
    pair = detach_state((h, c))
    assert isinstance(pair, tuple) and len(pair) == 2
    assert torch.equal(pair[0], h) and torch.equal(pair[1], c)
    assert not pair[0].requires_grad and not pair[1].requires_grad
    assert pair[0].grad_fn is None and pair[1].grad_fn is None
    single = detach_state(h)
    assert isinstance(single, torch.Tensor) and torch.equal(single, h) and not single.requires_grad


@pytest.mark.parametrize("cell", CELLS)
def test_begin_state(cell: str) -> None:
    model = tiny(cell, layers=3, hidden=6)
    state = model.begin_state(5)
    parts = as_tuple(state)
    assert isinstance(state, tuple) == cell.endswith("lstm")
    for s in parts:
        assert s.shape == (3, 5, 6)
        assert s.device.type == "cpu"
        assert torch.count_nonzero(s) == 0


def test_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    model = tiny("scratch-lstm", dropout=0.5)
    no_drop = tiny("scratch-lstm")
    no_drop.load_state_dict(model.state_dict())
    x = random_ids(2, 6)
    assert torch.allclose(model(x)[0], no_drop(x)[0], atol=1e-6)  # eval mode: dropout is off
    model.train()
    a, b = model(x)[0], model(x)[0]
    assert not torch.allclose(a, b)


def test_one_hot_and_embedding_inputs() -> None:
    model = tiny("rnn", "onehot")
    assert model.embed is None
    assert model.rnn.weight_ih_l0.shape == (8, 11)
    emb = tiny("rnn", "embedding")
    assert emb.embed is not None and emb.embed.weight.shape == (11, 5)
    assert emb.rnn.weight_ih_l0.shape == (8, 5)
    x = random_ids(2, 3)
    assert torch.equal(model.encode(x), one_hot(x, 11))
    assert torch.equal(emb.encode(x), emb.embed.weight[x])


def test_num_parameters() -> None:
    model = tiny("scratch-gru", "onehot", vocab=10, hidden=4, layers=1)
    # GRU: 3 gates of (4x10 + 4x4 + 4 + 4), head: 4x10 + 10
    assert model.num_parameters() == 3 * (40 + 16 + 8) + 50


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(UsageError, match="bogus"):
        resolve_device("bogus")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_resolve_device_cuda_without_gpu(spec: str) -> None:
    with pytest.raises(UsageError, match="CUDA"):
        resolve_device(spec)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cell": "transformer"},
        {"input": "bytes"},
        {"hidden": 0},
        {"layers": 0},
        {"embed_dim": 0},
        {"vocab_size": 0},
        {"dropout": 1.0},
        {"dropout": -0.1},
    ],
)
def test_model_config_validation(kwargs: dict) -> None:
    args = {"vocab_size": 10, **kwargs}
    with pytest.raises(UsageError):
        ModelConfig(**args)


def test_model_config_dict_round_trip() -> None:
    config = ModelConfig(vocab_size=42, cell="scratch-gru", hidden=12, layers=3, dropout=0.25, input="onehot")
    assert config.base_cell == "gru"
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert ModelConfig(vocab_size=3, cell="lstm").base_cell == "lstm"


@pytest.mark.parametrize(("flags", "native"), [("fpu avx512f avx512_bf16 avx512_vnni", True),
                                               ("fpu amx_bf16 amx_tile", True), ("fpu avx512f avx512bw", False)])
def test_native_bf16_reads_the_cpu_flags(tmp_path: pathlib.Path, flags: str, native: bool) -> None:
    from charrnn.model.network import native_bf16

    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: X\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    # env={}: the flags alone, whatever CHARRNN_NATIVE_BF16 this run was given
    assert native_bf16(torch.device("cpu"), str(info), env={}) is native
    assert native_bf16(torch.device("cpu"), str(tmp_path / "absent"), env={}) is False


def test_native_bf16_can_be_forced_by_the_environment(tmp_path: pathlib.Path) -> None:
    from charrnn.model.network import native_bf16, resolve_precision

    cpu, info = torch.device("cpu"), tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n")
    assert native_bf16(cpu, str(info), env={"CHARRNN_NATIVE_BF16": "0"}) is False  # the flags lie
    assert native_bf16(cpu, str(tmp_path / "absent"), env={"CHARRNN_NATIVE_BF16": "1"}) is True
    assert native_bf16(cpu, str(info), env={"CHARRNN_NATIVE_BF16": ""}) is True  # empty: read the flags
    with pytest.raises(UsageError, match="CHARRNN_NATIVE_BF16='yes'"):
        native_bf16(cpu, str(info), env={"CHARRNN_NATIVE_BF16": "yes"})
    for forced, picked in (("0", "fp32"), ("1", "bf16")):  # auto follows the variable of this process
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("CHARRNN_NATIVE_BF16", forced)
            assert resolve_precision("auto", cpu) == picked


def test_resolve_precision() -> None:
    from charrnn.model.network import native_bf16, resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    assert resolve_precision("auto", cpu) == ("bf16" if native_bf16(cpu) else "fp32")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("input_", INPUTS)
@pytest.mark.parametrize("layers", [1, 3])
def test_parameter_shapes_match_the_built_model(cell: str, input_: str, layers: int) -> None:
    from charrnn.model.network import parameter_shapes

    config = ModelConfig(vocab_size=11, cell=cell, hidden=6, layers=layers, input=input_, embed_dim=5)
    assert parameter_shapes(config) == {k: tuple(v.shape) for k, v in CharRNN(config).state_dict().items()}


@pytest.mark.parametrize("input_", ["embedding", "onehot"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "scratch-rnn"])
def test_grow_vocab_keeps_old_rows_bit_identical(cell: str, input_: str) -> None:
    from charrnn.model.network import grow_vocab

    torch.manual_seed(0)
    old = CharRNN(ModelConfig(vocab_size=4, cell=cell, hidden=8, layers=2, input=input_, embed_dim=6))
    id_map = [0, 2, 3, 5]  # old ids -> new ids; new ids 1, 4 are new tokens
    torch.manual_seed(1)
    grown = grow_vocab(old, id_map, 6)
    assert grown.config.vocab_size == 6
    before, after = old.state_dict(), grown.state_dict()
    idx = torch.tensor(id_map)
    assert torch.equal(after["head.weight"][idx], before["head.weight"])
    assert torch.equal(after["head.bias"][idx], before["head.bias"])
    if input_ == "embedding":
        assert torch.equal(after["embed.weight"][idx], before["embed.weight"])
    else:
        assert torch.equal(after["rnn.weight_ih_l0"][:, idx], before["rnn.weight_ih_l0"])
    for name, value in before.items():
        if name not in ("head.weight", "head.bias", "embed.weight") and not (
                input_ == "onehot" and name == "rnn.weight_ih_l0"):
            assert torch.equal(after[name], value), name
    # New rows are drawn like a fresh model's: the same values a fresh model seeded alike has there.
    torch.manual_seed(1)
    fresh = CharRNN(ModelConfig(vocab_size=6, cell=cell, hidden=8, layers=2, input=input_, embed_dim=6))
    new = torch.tensor([1, 4])
    assert torch.equal(after["head.weight"][new], fresh.state_dict()["head.weight"][new])
    # Old tokens' predictions among themselves are unchanged: logits at the mapped positions agree.
    x = torch.tensor([[0, 1, 2, 3, 1]])
    with torch.no_grad():
        a, _ = old.eval()(x)
        b, _ = grown.eval()(idx[x])
    assert torch.allclose(b[..., idx], a, atol=1e-6)


def test_grow_vocab_rejects_bad_maps() -> None:
    from charrnn.model.network import grow_vocab

    model = CharRNN(ModelConfig(vocab_size=3, hidden=4, layers=1))
    for bad, size in (([0, 1], 4), ([0, 0, 1], 4), ([0, 1, 4], 4), ([0, 1, 2], 2)):
        with pytest.raises(ValueError):
            grow_vocab(model, bad, size)


# ---- weight drop and embedding dropout ----------------------------------------------------------------

@pytest.mark.parametrize("cell", ["lstm", "gru", "scratch-lstm"])
def test_weight_drop_is_dropconnect_on_the_recurrent_matrices(cell: str) -> None:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=7, cell=cell, hidden=6, layers=2, embed_dim=4, weight_drop=0.5)
    model = CharRNN(config).train()
    x = torch.randint(0, 7, (3, 5))
    torch.manual_seed(1)
    logits, _ = model(x)
    # the same masks drawn by hand: dropout of each W_hh in layer order, from the same generator state
    plain = CharRNN(replace(config, weight_drop=0.0)).train()
    plain.load_state_dict(model.state_dict())
    torch.manual_seed(1)
    with torch.no_grad():
        for k in range(2):
            w = getattr(plain.rnn, f"weight_hh_l{k}")
            w.copy_(torch.nn.functional.dropout(w, 0.5))
    torch.testing.assert_close(logits, plain(x)[0])
    logits.sum().backward()
    grad = model.rnn.weight_hh_l0.grad
    dropped = plain.rnn.weight_hh_l0 == 0
    assert bool((grad[dropped] == 0).all()) and bool((grad[~dropped] != 0).any())
    # in eval mode it is the plain model
    model.eval()
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(x)[0], plain.eval()(x)[0])


@pytest.mark.parametrize("input_", ["embedding", "onehot"])
def test_embed_dropout_drops_whole_characters(input_: str) -> None:
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=5, hidden=4, embed_dim=3, input=input_, embed_dropout=0.5)).train()
    seen = {}
    model.rnn.register_forward_hook(lambda m, args, out: seen.update(inputs=args[0]))
    x = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4] * 4])
    model(x)
    plain = model.encode(x)  # (1, T, I)
    ratio = seen["inputs"] / plain.where(plain != 0, torch.ones_like(plain))
    for c in range(5):
        where = x[0] == c
        values = seen["inputs"][0, where]
        kept = bool((values != 0).any())
        # a character is dropped everywhere or kept (scaled by 2) everywhere
        assert bool((values == 0).all()) or bool(torch.allclose(ratio[0, where][plain[0, where] != 0],
                                                                  torch.tensor(2.0)))
        assert kept or bool((values == 0).all())
    model.eval()
    model(x)
    assert torch.equal(seen["inputs"], plain)


def test_regularisers_are_checked() -> None:
    for name in ("weight_drop", "embed_dropout"):
        for bad in (1.0, -0.1, True, "0.1"):
            with pytest.raises(UsageError, match=name.replace("_", "-")):
                ModelConfig(vocab_size=3, **{name: bad})
