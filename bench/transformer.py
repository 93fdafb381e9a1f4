"""A transformer baseline: a small causal GPT trained on the same 90% of a text for the same wall-clock budget as
`charrnn train`, and scored on the same last 10%.

    python bench/transformer.py [TEXT] [--config NAME | --all] [--seconds 150] [--seed 0] [--threads N] [--json]

TEXT defaults to ../shared/corpora/tinyshakespeare.txt. The split is charrnn's: the vocabulary of the whole text
(charrnn.data.vocab.Vocab.build, <unk> included), the last 10% held out (charrnn.data.partition.split_train_val with
`charrnn train`'s defaults). The model (written here, not a library's): token and learned position embeddings,
pre-norm blocks (LayerNorm, causal self-attention through F.scaled_dot_product_attention(is_causal=True), LayerNorm,
a GELU MLP 4x wide), a final LayerNorm and a head tied to the token embedding, GPT-2's initialisation. AdamW with
betas (0.9, 0.99) and weight decay 0.1 on the matrices of the blocks only (not on biases, norms or embeddings),
linear warm-up over the first steps then cosine decay to a tenth of the rate over the wall-clock budget, gradient
clipping at 1.0, in the precision `charrnn train --precision auto` picks (bf16 autocast on a CPU with native
bfloat16, else fp32). The budget counts the training steps only (batch sampling included); scoring comes after.

Scoring: every character of the held-out part after its first is predicted exactly once, in fp32, from up to
`block` characters of context: windows of `block` characters slide by `stride` (a quarter block by default),
the first window scores all its characters and each later one only the `stride` it adds, so that every character
but the first block's sees at least block - stride characters of context. charrnn's validation scores the same
characters (its first is context only too).

--all trains every configuration in turn and names the best; bench/run.py trains the best known one
(BEST) by default and all of them with --full.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from charrnn.config import DEFAULT_VAL_MAX_CHARS  # noqa: E402
from charrnn.data.partition import split_train_val  # noqa: E402
from charrnn.data.vocab import Vocab  # noqa: E402
from charrnn.model.network import resolve_precision  # noqa: E402

VAL_FRACTION = 0.1  # `charrnn train`'s default


@dataclass(frozen=True)
class GPTConfig:
    name: str
    n_layer: int
    n_head: int
    n_embd: int
    block: int  # characters of context, the training windows' length
    batch: int  # windows per step
    lr: float  # peak learning rate
    warmup: int = 100  # steps of linear warm-up
    dropout: float = 0.0
    weight_decay: float = 0.1


# nanoGPT's CPU recipe for shakespeare_char, then three that give bf16 matmuls larger shapes (twice the block, 2,048
# characters a step) at a higher rate: the recipe's model (0.8M parameters), and more width or depth (about 1.2M).
CONFIGS = {c.name: c for c in (
    GPTConfig("nanogpt-cpu", n_layer=4, n_head=4, n_embd=128, block=64, batch=12, lr=1e-3),
    GPTConfig("long", n_layer=4, n_head=4, n_embd=128, block=128, batch=16, lr=2e-3),
    GPTConfig("wide", n_layer=4, n_head=4, n_embd=160, block=128, batch=16, lr=2e-3),
    GPTConfig("deep", n_layer=6, n_head=4, n_embd=128, block=128, batch=16, lr=2e-3),
)}
BEST = "nanogpt-cpu"  # what bench/run.py trains by default: the best of `--all` at 150 s (AMD EPYC, 2026-12-01)


# ---- the model ----------------------------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        if c.n_embd % c.n_head:
            raise ValueError(f"n_embd {c.n_embd} is not a multiple of n_head {c.n_head}")
        self.n_head, self.dropout = c.n_head, c.dropout
        self.qkv = nn.Linear(c.n_embd, 3 * c.n_embd)
        self.proj = nn.Linear(c.n_embd, c.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        # (B, T, 3D) -> three (B, H, T, D/H)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in self.qkv(x).split(d, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(c.n_embd), nn.LayerNorm(c.n_embd)
        self.attn = CausalSelfAttention(c)
        self.mlp = nn.Sequential(nn.Linear(c.n_embd, 4 * c.n_embd), nn.GELU(), nn.Linear(4 * c.n_embd, c.n_embd))
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.mlp(self.ln2(x)))


class GPT(nn.Module):
    def __init__(self, c: GPTConfig, vocab_size: int) -> None:
        super().__init__()
        self.config = c
        self.tok = nn.Embedding(vocab_size, c.n_embd)
        self.pos = nn.Embedding(c.block, c.n_embd)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd)
        self.head = nn.Linear(c.n_embd, vocab_size, bias=False)
        self.head.weight = self.tok.weight  # tied
        for name, p in self.named_parameters():
            if p.dim() == 2:  # GPT-2: N(0, 0.02), the residual branches' outputs scaled by 1/sqrt(2 * layers)
                std = 0.02 / math.sqrt(2 * c.n_layer) if name.endswith(("attn.proj.weight", "mlp.2.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T) ids with T <= block -> logits (B, T, V); position t sees x[:, :t + 1] only."""
        t = x.shape[1]
        if t > self.config.block:
            raise ValueError(f"{t} characters of input, more than the block size {self.config.block}")
        h = self.drop(self.tok(x) + self.pos(torch.arange(t, device=x.device)))  # (B, T, D)
        for blk in self.blocks:
            h = blk(h)
        return self.head(self.ln_f(h))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # the tied matrix once


def make_optimizer(model: GPT) -> torch.optim.AdamW:
    """AdamW, weight decay on the blocks' matrices only: not on biases, LayerNorms, or the (tied) embeddings."""
    c = model.config
    decay = [p for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2]
    ids = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in ids]
    groups = [{"params": decay, "weight_decay": c.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=c.lr, betas=(0.9, 0.99), fused=True)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel on this device or torch
        return torch.optim.AdamW(groups, lr=c.lr, betas=(0.9, 0.99))


def lr_at(c: GPTConfig, step: int, fraction: float) -> float:
    """Linear warm-up over the first c.warmup steps, then cosine from c.lr to c.lr / 10 as `fraction` (of the
    budget spent) goes from 0 to 1."""
    if step < c.warmup:
        return c.lr * (step + 1) / c.warmup
    return c.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(max(fraction, 0.0), 1.0))))


# ---- training -----------------------------------------------------------------------------------------------


def train_for(model: GPT, ids: np.ndarray, *, seconds: float | None = None, max_steps: int | None = None,
              precision: str = "fp32", seed: int = 0, on_log=None) -> dict:
    """Train on random windows of `ids` until `seconds` of wall clock or `max_steps` steps, whichever comes first;
    the cosine follows the larger of the two fractions. Returns steps, seconds and the last steps' mean loss."""
    if seconds is None and max_steps is None:
        raise ValueError("give seconds or max_steps")
    c, device = model.config, next(model.parameters()).device
    if len(ids) < c.block + 2:
        raise ValueError(f"{len(ids)} training characters, fewer than a block ({c.block}) + 2")
    rng = np.random.default_rng(seed)
    offsets = np.arange(c.block + 1)[None, :]  # (1, block + 1)
    opt = make_optimizer(model)
    model.train()
    losses: list[float] = []
    step, start = 0, time.perf_counter()
    while True:
        elapsed = time.perf_counter() - start
        parts = [elapsed / seconds if seconds else 0.0, step / max_steps if max_steps else 0.0]
        if max(parts) >= 1.0:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(c, step, max(parts))
        rows = rng.integers(0, len(ids) - c.block, size=c.batch)[:, None] + offsets  # (B, block + 1)
        xy = torch.from_numpy(ids[rows].astype(np.int64)).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(xy[:, :-1])  # (B, block, V)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), xy[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        losses.append(loss.item())
        if on_log is not None and step % 100 == 0:
            on_log(step, elapsed, float(np.mean(losses[-100:])))
    wall = time.perf_counter() - start
    return {"steps": step, "seconds": round(wall, 1), "chars_per_s": round(step * c.batch * c.block / wall),
            "train_loss": round(float(np.mean(losses[-100:])), 4) if losses else math.nan}


# ---- scoring ------------------------------------------------------------------------------------------------


def windows(n_pairs: int, block: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """The windows that score `n_pairs` (input, target) pairs, each exactly once: (starts, first), both (W,).
    Window w feeds inputs [starts[w], starts[w] + L) with L = min(block, n_pairs) and scores its positions from
    first[w] on (target pair index starts[w] + j for position j). The first window scores all of its L; each
    later one ends `stride` further (the last one at n_pairs) and scores only the pairs the previous one did not."""
    if n_pairs < 1 or block < 1 or stride < 1:
        raise ValueError(f"need n_pairs, block and stride >= 1, got {n_pairs}, {block}, {stride}")
    length = min(block, n_pairs)
    stride = min(stride, length)  # a longer stride would skip pairs
    ends = np.arange(length, n_pairs + stride, stride)
    ends = np.minimum(ends, n_pairs)
    ends = ends[np.concatenate(([True], ends[1:] > ends[:-1]))]  # the last window only once
    starts = ends - length
    first = np.zeros_like(ends)
    first[1:] = length - (ends[1:] - ends[:-1])
    return starts, first


@torch.inference_mode()
def score(model: GPT, ids: np.ndarray, *, stride: int | None = None, batch: int = 64,
          unk_id: int | None = None) -> tuple[float, int]:
    """(mean nats per character, characters scored) of `model` on ids[1:] given what precedes each within `ids`,
    in fp32, through `windows` (stride: a quarter block by default). Targets that are `unk_id` are skipped, as
    charrnn's evaluate skips them."""
    c = model.config
    n_pairs = len(ids) - 1
    stride = stride or max(1, c.block // 4)
    starts, first = windows(n_pairs, c.block, stride)
    length = min(c.block, n_pairs)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    pos = np.arange(length)[None, :]  # (1, L)
    try:
        for i in range(0, len(starts), batch):
            s, f = starts[i:i + batch, None], first[i:i + batch, None]  # (W', 1)
            x = torch.from_numpy(ids[s + pos].astype(np.int64)).to(device)  # (W', L)
            y = torch.from_numpy(ids[s + pos + 1].astype(np.int64)).to(device)
            keep = torch.from_numpy(pos >= f).to(device)  # (W', L): the pairs this window scores
            if unk_id is not None:
                keep &= y != unk_id
            nll = F.cross_entropy(model(x).float().transpose(1, 2), y, reduction="none")  # (W', L)
            total += float(nll[keep].double().sum())
            count += int(keep.sum())
    finally:
        model.train(was_training)
    return total / max(count, 1), count


# ---- one configuration, and the command ---------------------------------------------------------------------


def load_split(path: Path) -> tuple[np.ndarray, np.ndarray, Vocab]:
    """`charrnn train PATH`'s vocabulary and split: (train ids, validation ids, vocabulary)."""
    text = path.read_text(encoding="utf-8")
    vocab = Vocab.build(text)
    ids = vocab.encode(text)
    train_ids, val_ids = split_train_val(ids, VAL_FRACTION, max_chars=DEFAULT_VAL_MAX_CHARS)
    return np.asarray(train_ids), np.asarray(val_ids), vocab


def run_config(c: GPTConfig, path: Path, seconds: float, *, seed: int = 0, device: str = "cpu",
               stride: int | None = None, log=None) -> dict:
    """Train `c` on PATH's first 90% for `seconds`, score it on the last 10%: one result row."""
    train_ids, val_ids, vocab = load_split(path)
    dev = torch.device(device)
    precision = resolve_precision("auto", dev)
    torch.manual_seed(seed)
    model = GPT(c, vocab.size).to(dev)
    if log:
        log(f"{c.name}: {model.num_parameters():,} parameters, {precision}, {seconds:g} s")
    on_log = (lambda s, t, loss: log(f"{c.name}: step {s}, {t:.0f} s, train {loss:.4f}")) if log else None
    stats = train_for(model, train_ids, seconds=seconds, precision=precision, seed=seed, on_log=on_log)
    t = time.perf_counter()
    val, scored = score(model, val_ids, stride=stride, unk_id=vocab.unk_id)
    return {**asdict(c), "tied": True, "parameters": model.num_parameters(), "precision": precision, "seed": seed,
            "budget_s": seconds, **stats, "val_nats_per_char": round(val, 4), "val_chars": scored,
            "stride": stride or max(1, c.block // 4), "score_s": round(time.perf_counter() - t, 1)}


def best_of(rows: list[dict]) -> dict:
    return min(rows, key=lambda r: r["val_nats_per_char"])


def describe(r: dict) -> str:
    return (f"{r['name']}: {r['n_layer']}x{r['n_embd']}, {r['n_head']} heads, block {r['block']}, batch {r['batch']}, "
            f"lr {r['lr']:g}, {r['parameters']:,} parameters, {r['steps']} steps in {r['seconds']:g} s, "
            f"{r['chars_per_s']:,} chars/s ({r['precision']}), train {r['train_loss']:.4f}, "
            f"validation {r['val_nats_per_char']:.4f} nats/char")


# ---- the benchmark's row group (bench/run.py) ---------------------------------------------------------------


def bench_baseline(text: Path, seconds: float, every: bool, device: str = "cpu", tiny: bool = False) -> dict:
    """This script in a fresh process, as charrnn's quality run is one: BEST (or with `every`, all CONFIGS) for
    `seconds` each on TEXT. {"seconds", "configs": [row, ...], "best": row}."""
    cmd = [sys.executable, str(Path(__file__).resolve()), str(text), "--seconds", f"{seconds:g}", "--device", device,
           "--json", *(["--all"] if every else ["--config", BEST]), *(["--tiny"] if tiny else [])]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()[-2000:]}")
    lines = [json.loads(x) for x in p.stdout.splitlines() if x.strip()]
    return {"seconds": seconds, "configs": lines[:-1], "best": lines[-1]}


def baseline_markdown(b: dict, quality: dict | None) -> list[str]:
    """The row group: charrnn's validation after the same budget, the baseline's best, their difference, and with
    more than one configuration each configuration's own row."""
    best, n = b["best"], len(b["configs"])
    lines = [f"| tinyshakespeare, {b['seconds']:g} s of training, last 10% held out | parameters | steps | chars/s "
             "| validation, nats/char |", "| --- | ---: | ---: | ---: | ---: |"]
    if quality is not None:
        n_params = f"{quality['parameters']:,}" if "parameters" in quality else ""
        lines.append(f"| charrnn, `charrnn train` with its defaults | {n_params} | {quality['steps']} | "
                     f"{quality['chars_per_s']:,} | {quality['val_nats_per_char']:.4f} |")

    def row(r: dict, label: str) -> str:
        return (f"| {label}: {r['name']} ({r['n_layer']}x{r['n_embd']}, {r['n_head']} heads, block "
                f"{r['block']}, batch {r['batch']}, lr {r['lr']:g}, {r['precision']}) | {r['parameters']:,} | "
                f"{r['steps']} | {r['chars_per_s']:,} | {r['val_nats_per_char']:.4f} |")

    lines.append(row(best, f"transformer baseline (best of {n} configuration{'s' * (n > 1)})"))
    if quality is not None:
        diff = best["val_nats_per_char"] - quality["val_nats_per_char"]
        lines.append(f"| difference, baseline minus charrnn (positive: charrnn is better) | | | | {diff:+.4f} |")
    if n > 1:
        lines += [row(r, "configuration") for r in b["configs"]]
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("text", nargs="?", default=str(ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt"))
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--config", choices=sorted(CONFIGS), default=BEST)
    which.add_argument("--all", action="store_true", help="every configuration in turn, then the best")
    ap.add_argument("--seconds", type=float, default=150.0, help="wall-clock training budget per configuration")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--stride", type=int, default=None, help="scoring stride (default: a quarter block)")
    ap.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # checks the script: a 1x32 model
    ap.add_argument("--json", action="store_true", help="one JSON object per configuration, then the best's")
    args = ap.parse_args(argv)
    if args.seconds <= 0:
        ap.error(f"--seconds must be > 0, got {args.seconds}")
    if args.stride is not None and args.stride < 1:
        ap.error(f"--stride must be >= 1, got {args.stride}")
    if args.threads is not None:
        if args.threads < 1:
            ap.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    names = sorted(CONFIGS) if args.all else [args.config]

    def log(msg: str) -> None:
        print(f"[transformer {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    rows = []
    for name in names:
        c = CONFIGS[name]
        if args.tiny:
            c = replace(c, n_layer=1, n_head=2, n_embd=32, block=min(c.block, 32), batch=4, warmup=2)
        r = run_config(c, Path(args.text), args.seconds, seed=args.seed, device=args.device, stride=args.stride,
                       log=log)
        rows.append(r)
        print(json.dumps(r) if args.json else describe(r), flush=True)
    best = best_of(rows)
    print(json.dumps({"best": best["name"], **best}) if args.json else f"best: {describe(best)}", flush=True)


if __name__ == "__main__":
    main()
