"""What recording the gradient norm costs a training step (issue 19, 5: under 1% of a step).

The trainer adds, per step, the global norm's bookkeeping (GradStats.add: three 0-d tensor ops) and,
for a run without clipping, the norm itself (total_norm; a clipping run gets it from
clip_grad_norm_ for free). This times each beside a whole optimizer step of the default model
(1x384 LSTM, batch 32 x 64, fp32), medians over repeated calls, on one thread.

    python bench/gradstats.py [--steps 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from measure import cpu_name

from charrnn.model.network import CharRNN, ModelConfig
from charrnn.training.gradstats import GradStats, total_norm


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=66, cell="lstm", layers=1, hidden=384, input="embedding", embed_dim=64))
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    x = torch.randint(0, 66, (32, 64))
    y = torch.randint(0, 66, (32, 64))

    def step() -> None:
        logits, _ = model(x)
        loss = F.cross_entropy(logits.reshape(-1, 66), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    step()
    step_s = median_seconds(step, args.steps)
    stats = GradStats()
    norm = torch.tensor(1.3)
    add_s = median_seconds(lambda: stats.add(norm, 1.0), 2000)
    norm_s = median_seconds(lambda: total_norm(model.parameters()), 200)
    print(f"machine: {cpu_name()}, torch {torch.__version__}, 1 thread")
    print(f"optimizer step (1x384 LSTM, 32 x 64):   {step_s * 1e3:8.2f} ms")
    print(f"GradStats.add per step:                 {add_s * 1e6:8.1f} us  ({add_s / step_s:.3%} of a step)")
    print(f"total_norm per step (runs without clip): {norm_s * 1e6:8.1f} us  ({norm_s / step_s:.3%} of a step)")


if __name__ == "__main__":
    main()
