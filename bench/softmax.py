"""Where the adaptive softmax starts to pay (issue 29, 1): the training step's time with the full and the
adaptive output layer, measured alternately in one process (one thread: the machine may be shared, and a
ratio of interleaved runs is what survives that), at several vocabulary sizes. The characters' frequencies are
a corpus's (--corpus: the V - 1 most frequent characters of it and <unk> for the rest, as --max-vocab gives;
the adaptive softmax's clusters follow them), or without one Zipf's (frequency of rank r ~ 1/r, flatter than
a real text's). Also one-step generation (the full distribution after each character) for both heads.

    nice python bench/softmax.py --corpus ../shared/corpora/tangshi.txt --sizes 512 1024 2048 4096 9590

Prints one JSON line per size: seconds per training step of each head (median of the rounds), the
ratio full / adaptive (above 1: the adaptive head is faster), and the same for a generation step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from charrnn.data.vocab import count_code_points
from charrnn.model.heads import adaptive_cutoffs, frequency_order
from charrnn.model.network import CharRNN, ModelConfig
from charrnn.model.stepper import Stepper
from charrnn.training.runconfig import make_optimizer


def frequencies(v: int, corpus: Path | None) -> np.ndarray:
    """Counts (v,) in decreasing order (id i has rank i): a corpus's top v - 1 and the rest as one, or Zipf's."""
    if corpus is None:
        return (1e6 / np.arange(1, v + 1)).astype(np.int64)
    counts = np.sort(count_code_points(corpus.read_text(encoding="utf-8")))[::-1]
    counts = counts[counts > 0]
    if len(counts) + 1 < v:
        raise SystemExit(f"{corpus} has {len(counts)} distinct characters: at most {len(counts) + 1} with <unk>")
    return np.sort(np.append(counts[: v - 1], counts[v - 1 :].sum()))[::-1]  # <unk>: the rest, maybe none


def draw_ids(counts: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator) -> torch.Tensor:
    return torch.as_tensor(rng.choice(len(counts), size=shape, p=counts / counts.sum()), dtype=torch.long)


def models(counts: np.ndarray, hidden: int, embed: int) -> dict[str, CharRNN]:
    v = len(counts)
    base = {"vocab_size": v, "hidden": hidden, "layers": 1, "embed_dim": embed}
    cut = adaptive_cutoffs(counts)
    torch.manual_seed(0)
    out = {"full": CharRNN(ModelConfig(**base))}
    if cut:
        out["adaptive"] = CharRNN(ModelConfig(**base, output="adaptive", cutoffs=cut,
                                              order=tuple(frequency_order(counts))))
    return out


def train_step(model: CharRNN, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    t0 = time.perf_counter()
    nats, _ = model(x, None, y)
    loss = nats.mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return time.perf_counter() - t0


@torch.inference_mode()
def generate_steps(step: Stepper, model: CharRNN, ids: torch.Tensor) -> float:
    """Seconds per character of one stream: the full distribution, then a draw."""
    state = model.begin_state(1)
    t0 = time.perf_counter()
    for t in range(ids.shape[0]):
        logp, state = step.log_probs(ids[t : t + 1], state)
        torch.multinomial(logp.exp(), 1)
    return (time.perf_counter() - t0) / ids.shape[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", type=int, default=[65, 256, 512, 1024, 2048, 4096, 9589])
    p.add_argument("--rounds", type=int, default=6, help="alternations of the two heads (median kept)")
    p.add_argument("--steps", type=int, default=2, help="training steps per head per round")
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--embed-dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--num-steps", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--corpus", type=Path, help="take the characters' frequencies from this text")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    for v in args.sizes:
        counts = frequencies(v, args.corpus)
        heads = models(counts, args.hidden, args.embed_dim)
        opts = {k: make_optimizer("adam", m.parameters(), 5e-3, 0.0, torch.device("cpu")) for k, m in heads.items()}
        steppers = {k: Stepper(m.eval()) for k, m in heads.items()}
        for m in heads.values():
            m.train()
        xy = draw_ids(counts, (args.batch, args.num_steps + 1), rng)
        x, y = xy[:, :-1], xy[:, 1:]
        gen_ids = draw_ids(counts, (200,), rng)
        times: dict[str, list[float]] = {k: [] for k in heads}
        gen: dict[str, list[float]] = {k: [] for k in heads}
        for name in heads:  # warm-up: allocator, oneDNN primitives
            train_step(heads[name], opts[name], x, y)
        for _ in range(args.rounds):
            for name in heads:
                times[name].append(statistics.median(train_step(heads[name], opts[name], x, y)
                                                      for _ in range(args.steps)))
                gen[name].append(generate_steps(steppers[name], heads[name], gen_ids))
        row = {"vocab": v, "hidden": args.hidden, "threads": args.threads,
               "frequencies": args.corpus.name if args.corpus else "zipf",
               "cutoffs": list(heads["adaptive"].config.cutoffs) if "adaptive" in heads else None}
        for name in heads:
            row[f"{name}_step_s"] = round(statistics.median(times[name]), 5)
            row[f"{name}_gen_ms"] = round(1000 * statistics.median(gen[name]), 4)
        if "adaptive" in heads:
            row["train_ratio"] = round(row["full_step_s"] / row["adaptive_step_s"], 3)
            row["gen_ratio"] = round(row["full_gen_ms"] / row["adaptive_gen_ms"], 3)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
