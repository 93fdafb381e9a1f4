"""FLOP counting for the char-RNN models, and the machine's measured matrix-multiply limit (fp32 and bf16).

Counting convention (the usual one for model FLOP utilisation): only matrix multiplies count, a
multiply-add is 2 FLOPs, and a training step costs 3x the forward matmuls (forward, plus the
gradients with respect to the inputs and to the weights). Element-wise gate arithmetic, softmax,
clipping and the optimizer are left out.

Per character (one time step of one sequence), layer k with g gate blocks (rnn 1, gru 3, lstm 4),
hidden width H and input width `in` (the previous layer's H, or the embedding width, or the
vocabulary size V for one-hot input) costs 2*g*H*(in + H) forward: W_ih x and W_hh h. The linear
head adds 2*H*V.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def base_cell(cell: str) -> str:
    """rnn, gru or lstm for a fused or scratch cell name."""
    return cell.removeprefix("scratch-")


def input_width(input_: str, vocab: int, embed_dim: int) -> int:
    """Width of the first recurrent layer's input: V for one-hot (counted as a dense product), else the embedding."""
    return vocab if input_ == "onehot" else embed_dim


def forward_flops_per_char(cell: str, hidden: int, layers: int, vocab: int, first_in: int) -> int:
    """Forward matmul FLOPs to process one character: the recurrent layers and the head."""
    g = GATES[base_cell(cell)]
    total = 0
    size_in = first_in
    for _ in range(layers):
        total += 2 * g * hidden * (size_in + hidden)
        size_in = hidden
    return total + 2 * hidden * vocab


def train_flops_per_char(cell: str, hidden: int, layers: int, vocab: int, first_in: int) -> int:
    """Training FLOPs per character: 3x the forward matmuls (forward + 2x backward)."""
    return 3 * forward_flops_per_char(cell, hidden, layers, vocab, first_in)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_op(fn: Callable[[], object], device: torch.device, min_seconds: float, warmup: int = 3) -> float:
    """Best seconds per call of `fn`: `warmup` discarded calls, then rounds of calls until `min_seconds` are used.

    Each round times a batch of calls with time.perf_counter (synchronizing a GPU around it), sized so a
    round lasts about a tenth of the budget; the best round wins (the least disturbed by other work).
    """
    for _ in range(warmup):
        fn()
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    one = max(time.perf_counter() - t, 1e-7)
    reps = max(1, int(min_seconds / 10 / one))
    best = float("inf")
    spent = 0.0
    while spent < min_seconds or best == float("inf"):
        sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        sync(device)
        dt = time.perf_counter() - t
        spent += dt
        best = min(best, dt / reps)
    return best


def lstm_gemm_shapes(batch: int, steps: int, hidden: int, vocab: int, embed_dim: int,
                     gates: int = 4) -> list[tuple[str, int, int, int]]:
    """(name, M, K, N) of the matrix products (M, K) @ (K, N) that a 2-layer model of width `hidden` runs.

    Forward: the per-step recurrent product (B, H) @ (H, gH), the batched input projections (B*T, in) @
    (in, gH) of both layers, the head (B*T, H) @ (H, V). Backward of Y = X W: dX = dY W^T and dW = X^T dY
    (the weight gradient of the recurrence summed over all T steps in one product).
    """
    b, bt, h, g = batch, batch * steps, hidden, gates * hidden
    return [
        ("fwd recurrent (B,H)@(H,gH)", b, h, g),
        ("fwd input proj. layer 1 (BT,E)@(E,gH)", bt, embed_dim, g),
        ("fwd input proj. layer 2 (BT,H)@(H,gH)", bt, h, g),
        ("fwd head (BT,H)@(H,V)", bt, h, vocab),
        ("bwd recurrent dX (B,gH)@(gH,H)", b, g, h),
        ("bwd input dX (BT,gH)@(gH,H)", bt, g, h),
        ("bwd weights dW (H,BT)@(BT,gH)", h, bt, g),
        ("bwd head dW (H,BT)@(BT,V)", h, bt, vocab),
    ]


def measure_matmul(m: int, k: int, n: int, device: torch.device, min_seconds: float,
                   dtype: torch.dtype = torch.float32) -> dict:
    """GFLOP/s of (m, k) @ (k, n) in `dtype` into a preallocated output."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(device, dtype)
    b = torch.randn(k, n, generator=gen).to(device, dtype)
    out = torch.empty(m, n, device=device, dtype=dtype)
    seconds = time_op(lambda: torch.mm(a, b, out=out), device, min_seconds)
    return {"m": m, "k": k, "n": n, "seconds": seconds, "gflops": 2 * m * k * n / seconds / 1e9}


def matmul_limit(hidden: int, *, batch: int = 32, steps: int = 64, vocab: int = 65, embed_dim: int = 64,
                 device: torch.device | str = "cpu", min_seconds: float = 0.3,
                 dtype: torch.dtype = torch.float32) -> dict:
    """Measured matmul throughput in `dtype` at the shapes a 2-layer LSTM of width `hidden` uses.

    Returns every shape's GFLOP/s, `best` (the machine's limit at these shapes: what MFU divides by)
    and `mix` (the rate the LSTM's training matmuls would run at if each ran at its measured speed:
    their total FLOPs over their total time, each shape weighted by how often a training step runs it).
    """
    device = torch.device(device)
    rows = []
    for name, m, k, n in lstm_gemm_shapes(batch, steps, hidden, vocab, embed_dim):
        r = measure_matmul(m, k, n, device, min_seconds, dtype)
        rows.append({"shape": name, **r, "gflops": round(r["gflops"], 1)})
    # Times a training step runs each shape (approximate: the layer-1 weight gradient and the head's
    # input gradient have shapes of their own and are left out of the mix).
    count = {"fwd recurrent (B,H)@(H,gH)": 2 * steps, "bwd recurrent dX (B,gH)@(gH,H)": 2 * steps,
             "bwd weights dW (H,BT)@(BT,gH)": 3}  # W_hh of 2 layers and W_ih of layer 2
    flops = seconds = 0.0
    for r in rows:
        c = count.get(r["shape"], 1)
        flops += c * 2 * r["m"] * r["k"] * r["n"]
        seconds += c * r["seconds"]
    best = max(r["gflops"] for r in rows)
    for r in rows:
        r["microseconds"] = round(r.pop("seconds") * 1e6, 2)
    return {"hidden": hidden, "dtype": str(dtype).removeprefix("torch."), "batch": batch, "steps": steps,
            "best_gflops": best,
            "mix_gflops": round(flops / seconds / 1e9, 1), "shapes": rows}
