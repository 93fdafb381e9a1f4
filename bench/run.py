"""charrnn benchmarks: the machine's matmul limit, training throughput against a textbook reference loop and
as model FLOP utilisation, evaluation speed and memory, generation speed and latency, quality per CPU-minute,
and a table of targets met or not.

    python bench/run.py [--quick | --full] [--device cpu] [--out bench/results] [--no-scale]

About 12 minutes on a 2-core CPU by default, 2 with --quick; the default and --full (about 25 minutes)
time every configuration twice, interleaved (charrnn, reference, reference, charrnn), --full longer.
The transformer baseline (bench/transformer.py) adds the training of its best known configuration for the quality
run's budget, then its scoring: about 3 minutes by default, 1 with --quick; --full trains every configuration in
turn (about 12 minutes).
Writes results.json and results.md into --out and prints the markdown. Corpora come from --shared
(../shared/corpora): tinyshakespeare when present (the quality run is skipped without it), else the
built-in pydoc corpus. With tangshi.txt there too, the large-vocabulary row (bench/bigvocab.py) trains the same
command on both for the quality run's budget; `--only tangshi` runs that row alone (results-tangshi.json/.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
if str(BENCH) not in sys.path:
    sys.path.insert(1, str(BENCH))

from bigvocab import bench_tangshi, tangshi_markdown, tangshi_targets  # noqa: E402
from flops import input_width, matmul_limit, sync, train_flops_per_char  # noqa: E402
from measure import run_measured  # noqa: E402
from reference import reference_throughput  # noqa: E402
from transformer import baseline_markdown, bench_baseline  # noqa: E402

from charrnn.config import SMALL_BF16, TrainConfig  # noqa: E402
from charrnn.data.partition import split_train_val  # noqa: E402
from charrnn.data.vocab import Vocab  # noqa: E402
from charrnn.inference.evaluate import evaluate  # noqa: E402
from charrnn.inference.generate import Sampling, generate  # noqa: E402
from charrnn.model.checkpoint import load_model  # noqa: E402
from charrnn.model.network import ModelConfig  # noqa: E402
from charrnn.training.callbacks import Callbacks  # noqa: E402
from charrnn.training.prepare import resolved  # noqa: E402
from charrnn.training.train import train  # noqa: E402

BATCH, STEPS, LAYERS = 32, 64, 2
FUSED = ("lstm", "gru", "rnn")
CELLS = ("lstm", "gru", "rnn", "scratch-rnn")


@dataclass(frozen=True)
class Plan:
    """How long and how much each measurement gets in one mode."""

    train_seconds: float  # timed training per configuration and round, for charrnn and for the reference each
    rounds: int  # 1: charrnn then reference; 2: charrnn, reference, reference, charrnn
    configs: list[tuple[str, int, str]]  # (cell, hidden, input)
    matmul_seconds: float  # per GEMM shape
    eval_chars: int  # in-process evaluate() call
    eval_sizes: list[int] = field(default_factory=list)  # texts for the `charrnn eval perplexity` subprocess
    gen_lengths: tuple[int, int] = (2000, 500)  # characters per stream with 1 and with 64 streams
    quality_seconds: float = 150
    text_chars: int | None = None  # cut the corpus (smoke tests)
    curve_steps: int = 300  # steps of the default model in fp32 and in bf16 from the same start
    ptb_seconds: float | None = None  # the PTB-char run (--full only: 20 minutes)
    baseline_all: bool = False  # the transformer baseline: every configuration (--full), else the best known


def plan_for(mode: str) -> Plan:
    every = [(c, h, i) for h in (256, 512) for c in CELLS for i in ("embedding", "onehot")]
    short = [(c, h, "embedding") for h in (256, 512) for c in FUSED] + [("scratch-rnn", 256, "embedding")]
    if mode == "full":
        return Plan(15, 2, every, 1.0, 1_000_000, [1_000_000, 10_000_000], (5000, 1000), 150, ptb_seconds=1200,
                    baseline_all=True)
    if mode == "quick":
        return Plan(3, 1, short, 0.15, 200_000, [100_000, 1_000_000], (500, 200), 30, curve_steps=60)
    if mode == "smoke":  # every code path in about a minute: numbers mean nothing
        return Plan(0.7, 1, short + [("lstm", 256, "onehot")], 0.02, 30_000, [20_000, 60_000], (100, 40), 3,
                    text_chars=120_000, curve_steps=4, ptb_seconds=3 if os.environ.get("BENCH_SMOKE_PTB") else None)
    return Plan(4, 2, every, 0.4, 1_000_000, [1_000_000, 10_000_000], (2000, 500), 150)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def machine(device: torch.device) -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def corpus(shared: Path) -> tuple[str, str]:
    p = shared / "tinyshakespeare.txt"
    if p.exists():
        return p.read_text(encoding="utf-8"), "tinyshakespeare"
    from charrnn.data.corpora import builtin_text

    return builtin_text("pydoc"), "pydoc"


def repeat_text(text: str, n: int) -> str:
    """The first n characters of text repeated as often as needed."""
    return (text * (n // len(text) + 1))[:n]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "charrnn", *args]


# ---- training ---------------------------------------------------------------------------------------------


class StepClock(Callbacks):
    """Wall clock at the start of every step (train() asks stop_requested() before each one), synchronized
    on a GPU: the difference between the last and the first is the time of all the steps but the last
    check, the same definition as the reference loop's wall clock."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.times = device, []

    def stop_requested(self) -> int | None:
        sync(self.device)
        self.times.append(time.perf_counter())
        return None


def charrnn_throughput(ids: np.ndarray, vocab: Vocab, mc: ModelConfig, seconds: float, device: torch.device,
                       tmp: Path, precision: str = "fp32") -> dict:
    # the reference's settings, spelled out so that a change of charrnn's defaults does not change the comparison;
    # the precision is what `--precision auto` picks on this device (the reference is always fp32)
    quiet = {"val_every": 10**9, "log_every": 10**9, "save_every": 10**9, "val_fraction": 0.0,
             "partition": "sequential", "batch_size": BATCH, "num_steps": STEPS, "optimizer": "adam", "lr": 2e-3,
             "clip": 1.0, "precision": precision}
    # a short discarded run first: allocator, thread pool and oneDNN primitives warm up
    train(ids, ids[:0], vocab, mc, TrainConfig(max_steps=2, **quiet), tmp / "b.pt", device=device)
    clock = StepClock(device)
    r = train(ids, ids[:0], vocab, mc, TrainConfig(time_budget=seconds, **quiet), tmp / "b.pt", device=device,
              callbacks=clock)
    steps = len(clock.times) - 1
    wall = clock.times[-1] - clock.times[0]
    return {"steps": steps, "seconds": wall, "chars_per_s": steps * BATCH * STEPS / wall,
            "reported_chars_per_s": r.chars_per_second}


def bench_train_config(ids: np.ndarray, vocab: Vocab, mc: ModelConfig, plan: Plan, limits: dict[int, dict],
                       device: torch.device, tmp: Path, precision: str = "fp32") -> dict:
    """charrnn (in `precision`) and the fp32 reference at the same model and batch, back to back (ABBA with two
    rounds); `limits` are the matmul limits of that precision (MFU divides by them)."""
    ours: list[dict] = []
    refs: list[dict] = []
    ref_cell = mc.cell.removeprefix("scratch-")

    def run_ours() -> None:
        ours.append(charrnn_throughput(ids, vocab, mc, plan.train_seconds, device, tmp, precision))

    def run_ref() -> None:
        refs.append(reference_throughput(ids, vocab.size, ref_cell, mc.hidden, mc.input, seconds=plan.train_seconds,
                                         layers=mc.layers, embed_dim=mc.embed_dim, batch_size=BATCH,
                                         num_steps=STEPS, device=device))

    order = [run_ours, run_ref] + [run_ref, run_ours] * (plan.rounds > 1)
    for f in order:
        f()
    # The best round of each: another process on a small machine only ever slows a run down, so the
    # fastest round is the closest to what the loop itself costs.
    cps = max(r["chars_per_s"] for r in ours)
    ref_cps = max(r["chars_per_s"] for r in refs)
    flops = train_flops_per_char(mc.cell, mc.hidden, mc.layers, mc.vocab_size,
                                 input_width(mc.input, mc.vocab_size, mc.embed_dim))
    limit = limits[mc.hidden]["best_gflops"]
    achieved = cps * flops / 1e9
    return {"cell": mc.cell, "hidden": mc.hidden, "layers": mc.layers, "input": mc.input, "embed_dim": mc.embed_dim,
            "precision": precision, "steps": sum(r["steps"] for r in ours), "chars_per_s": round(cps),
            "reported_chars_per_s": round(max(r["reported_chars_per_s"] for r in ours)),
            "reference": ref_cell, "reference_chars_per_s": round(ref_cps), "ratio": round(cps / ref_cps, 3),
            "train_flops_per_char": flops, "gflops": round(achieved, 2), "limit_gflops": limit,
            "mfu": round(achieved / limit, 4)}


# ---- subprocesses: wall time and peak memory ---------------------------------------------------------------


def make_checkpoint(text_file: Path, device: str, tmp: Path) -> Path:
    """A default-architecture model (the CLI's defaults, whatever they are) after two training steps."""
    path = tmp / "eval.pt"
    run_measured(cli("train", str(text_file), "-o", str(path), "--max-steps", "2", "--val-fraction", "0", "--json",
                     "-q", "--device", device), tmp)
    return path


def bench_eval_memory(ckpt: Path, text: str, sizes: list[int], device: str, tmp: Path) -> dict:
    base = run_measured([sys.executable, "-c", "import torch, charrnn.cli"], tmp)
    rows = []
    for n in sizes:
        f = tmp / f"eval-{n}.txt"
        f.write_text(repeat_text(text, n), encoding="utf-8")
        r = run_measured(cli("eval", "perplexity", "-m", str(ckpt), str(f), "--json", "--device", device), tmp)
        chars = json.loads(r["stdout"])["chars"]
        rows.append({"text_chars": n, "chars": chars, "wall_s": round(r["wall_s"], 2),
                     "chars_per_s_whole_command": round(chars / r["wall_s"]), "max_rss_mb": r["max_rss_mb"]})
        f.unlink()
    return {"baseline": {"command": "python -c 'import torch, charrnn.cli'", "wall_s": round(base["wall_s"], 2),
                         "max_rss_mb": base["max_rss_mb"]}, "runs": rows}


def bench_eval_inprocess(model: torch.nn.Module, vocab: Vocab, text: str, device: torch.device) -> dict:
    ids = vocab.encode(text, unk="map")
    evaluate(model, ids[:20_000], unk_id=vocab.unk_id)  # warm-up
    sync(device)
    t = time.perf_counter()
    r = evaluate(model, ids, unk_id=vocab.unk_id)
    sync(device)
    dt = time.perf_counter() - t
    return {"chars": r.chars, "seconds": round(dt, 2), "chars_per_s": round(r.chars / dt)}


def bench_generate(model: torch.nn.Module, vocab: Vocab, n: int, samples: int) -> dict:
    prefix = vocab.encode("The ", unk="map")
    for _ in generate(model, vocab, prefix, 5, Sampling(), seed=0, num_samples=samples):  # warm-up
        pass
    best = float("inf")
    for _ in range(3):  # best of 3: another process on a 2-core machine can halve one run
        t = time.perf_counter()
        for _ in generate(model, vocab, prefix, n, Sampling(), seed=0, num_samples=samples):
            pass
        best = min(best, time.perf_counter() - t)
    return {"streams": samples, "chars": n * samples, "chars_per_s": round(n * samples / best)}


def bench_first_char(ckpt: Path, device: str, tries: int = 3) -> dict:
    """Seconds from starting `charrnn generate` until the first generated byte reaches the pipe. With
    PYTHONUNBUFFERED=1, as on a terminal: into a plain pipe the CLI writes its text out a line at a time."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = cli("generate", "-m", str(ckpt), "--prefix", "The ", "-n", "200", "--no-echo", "--seed", "0",
              "--device", device)
    times = []
    for _ in range(tries):
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0, env=env)
        assert p.stdout is not None
        first = os.read(p.stdout.fileno(), 1)
        dt = time.perf_counter() - t
        p.stdout.read()
        if p.wait() != 0 or not first:
            raise RuntimeError(f"{' '.join(cmd)} failed (exit {p.returncode})")
        times.append(dt)
    return {"best_s": round(min(times), 3), "all_s": [round(x, 3) for x in times]}


def bench_cli_help() -> float:
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        subprocess.run(cli("--help"), check=True, capture_output=True)
        best = min(best, time.perf_counter() - t)
    return round(best, 3)


def bench_quality(corpus_file: Path, budget: float, device: str, tmp: Path) -> dict:
    """`charrnn train` with the CLI's defaults for `budget` seconds; the last 10% (default) held out. Then
    `eval perplexity --dynamic` of its best checkpoint on that held-out text: static and dynamic side by side."""
    r = run_measured(cli("train", str(corpus_file), "-o", str(tmp / "q.pt"), "--time-budget", f"{budget:g}",
                         "--json", "-q", "--device", device), tmp)
    s = json.loads(r["stdout"].strip().splitlines()[-1])
    model, vocab, ckpt = load_model(tmp / "q.pt", torch.device("cpu"))
    text = corpus_file.read_text(encoding="utf-8")
    config = ckpt["train_config"]
    _, held_out = split_train_val(vocab.encode(text), config["val_fraction"], max_chars=config["val_max_chars"])
    (tmp / "held_out.txt").write_text(vocab.decode(held_out), encoding="utf-8")
    best = tmp / "q.best.pt"
    return {"seconds": budget, "steps": s["steps"], "parameters": model.num_parameters(),
            "val_nats_per_char": round(s["val_loss"], 4), "val_bits_per_char": round(s["val_bits_per_char"], 4),
            "chars_per_s": round(s["chars_per_second"]), "weights_from": s.get("weights_from", "raw"),
            "raw_val_nats_per_char": s.get("raw_val_loss"), "average_val_nats_per_char": s.get("average_val_loss"),
            "dynamic": bench_dynamic(best if best.exists() else tmp / "q.pt", [str(tmp / "held_out.txt")], device,
                                     tmp)}


def bench_dynamic(model: Path, text: list[str], device: str, tmp: Path, env: dict | None = None) -> dict:
    """`charrnn eval perplexity --dynamic` with its defaults: the static and the dynamic figure, and the time."""
    r = run_measured(cli("eval", "perplexity", "-m", str(model), *text, "--dynamic", "--json", "--device", device),
                     tmp, env=env)
    e = json.loads(r["stdout"])
    return {"static_nats_per_char": round(e["nats_per_char"], 4), "dynamic_nats_per_char":
            round(e["dynamic"]["nats_per_char"], 4), "static_bits_per_char": round(e["bits_per_char"], 4),
            "dynamic_bits_per_char": round(e["dynamic"]["bits_per_char"], 4), "chars": e["chars"],
            "seconds": round(r["wall_s"], 1)}


def bench_precision_curves(corpus_file: Path, steps: int, device: str, tmp: Path) -> dict:
    """`charrnn train` with its (fp32) defaults for `steps` steps from the same start in fp32 and in bf16 (the last
    10% held out): the validation losses at equal steps, and each precision's training speed. The same model in
    both: the options that bf16 changes (runconfig.SMALL_BF16) are given their fp32 values."""
    fp32 = resolved({"precision": "fp32"})  # the options of `charrnn train --precision fp32`
    same_model = [a for k in SMALL_BF16 for a in (f"--{k.replace('_', '-')}", str(fp32[k]))]
    rows = {}
    for precision in ("fp32", "bf16"):
        r = run_measured(cli("train", str(corpus_file), "-o", str(tmp / f"curve-{precision}.pt"), "--max-steps",
                             str(steps), "--precision", precision, "--seed", "0", "--json", "-q", "--device", device,
                             *same_model), tmp)
        s = json.loads(r["stdout"].strip().splitlines()[-1])
        rows[precision] = {"val_nats_per_char": round(s["val_loss"], 4), "train_loss": round(s["train_loss"], 4),
                           "chars_per_s": round(s["chars_per_second"])}
    diff = rows["bf16"]["val_nats_per_char"] - rows["fp32"]["val_nats_per_char"]
    return {"steps": steps, **rows, "val_difference": round(diff, 4)}


def bench_ptb(shared: Path, seconds: float, device: str, tmp: Path) -> dict:
    """`charrnn train ptb-char` with its defaults for `seconds`, then test bits/char of the best checkpoint."""
    env = {**os.environ, "CHARRNN_CORPORA": str(shared)}
    out = tmp / "ptb.pt"
    r = run_measured(cli("train", "ptb-char", "-o", str(out), "--time-budget", f"{seconds:g}", "--json", "-q",
                         "--device", device), tmp, env=env)
    s = json.loads(r["stdout"].strip().splitlines()[-1])
    best = out.with_name("ptb.best.pt")
    e = run_measured(cli("eval", "perplexity", "-m", str(best if best.exists() else out), "ptb-char", "--split", "test",
                         "--json", "--device", device), tmp, env=env)
    t = json.loads(e["stdout"])
    return {"seconds": seconds, "steps": s["steps"], "epochs": round(s["epochs"], 2),
            "valid_bits_per_char": round(s["val_bits_per_char"], 4), "test_bits_per_char": round(t["bits_per_char"], 4),
            "test_chars": t["chars"], "chars_per_s": round(s["chars_per_second"]),
            "weights_from": s.get("weights_from", "raw"),
            "dynamic": bench_dynamic(best if best.exists() else out, ["ptb-char", "--split", "test"], device, tmp,
                                     env=env)}


def bench_finetune(shared: Path, tmp: Path, plan: Plan, device: str) -> dict | None:
    """bench/finetune.py: 30 s of fine-tuning a tinyshakespeare model on timemachine vs 30 s from scratch.
    The quality run's model (tinyshakespeare, plan.quality_seconds of the defaults) is the base when there is one."""
    from finetune import run_finetune

    quality_model = tmp / "q.pt"
    smoke = plan.text_chars is not None
    base = quality_model if quality_model.exists() and not smoke else None
    log("fine-tuning: " + (f"{quality_model} " if base else "a new tinyshakespeare model ") + "on timemachine, "
        "vs timemachine from scratch")
    try:
        return run_finetune(shared, tmp, 3 if smoke else 30, 4 if smoke else plan.quality_seconds, base, device, smoke,
                            base_note=f"the quality run's ({plan.quality_seconds:g} s of the defaults)")
    except Exception as e:  # a failure there (a missing corpus) must not lose the rest of the run
        log(f"fine-tuning benchmark skipped: {type(e).__name__}: {e}")
        return {"error": f"{type(e).__name__}: {e}"}


def run_baseline(text: Path, plan: Plan, device: str) -> dict:
    """bench/transformer.py on the quality run's text and budget (a tiny model in smoke tests)."""
    log(f"transformer baseline: {'every configuration' if plan.baseline_all else 'the best known configuration'}, "
        f"{plan.quality_seconds:g} s each")
    try:
        return bench_baseline(text, plan.quality_seconds, plan.baseline_all, device, tiny=plan.text_chars is not None)
    except Exception as e:  # a failure there must not lose the rest of the run
        log(f"transformer baseline skipped: {type(e).__name__}: {e}")
        return {"error": f"{type(e).__name__}: {e}"}


def run_tangshi(shared: Path, plan: Plan, device: str, tmp: Path) -> dict | None:
    """The large-vocabulary row (bench/bigvocab.py) for the quality run's budget."""
    return bench_tangshi(shared, plan.quality_seconds, device, tmp, cli(), run_measured, log,
                         baseline=lambda text, seconds: bench_baseline(text, seconds, False, device,
                                                                       tiny=plan.text_chars is not None))


def only_tangshi(shared: Path, plan: Plan, device: str, out: Path, mode: str) -> None:
    """`--only tangshi`: the row alone, written to results-tangshi.json and .md beside the full run's."""
    with tempfile.TemporaryDirectory(prefix="charrnn-bench-") as tmp_name:
        row = run_tangshi(shared, plan, device, Path(tmp_name))
    if row is None:
        raise SystemExit(f"error: --only tangshi needs tangshi.txt and tinyshakespeare.txt in {shared}")
    results = {"machine": machine(torch.device(device)), "device": device, "mode": mode, "tangshi": row}
    results["targets"] = [{"target": n, "value": v, "shown": s, "met": m} for n, v, s, m in tangshi_targets(row)]
    (out / "results-tangshi.json").write_text(json.dumps(results, indent=2) + "\n")
    m = results["machine"]
    md = "\n".join([f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['threads']} threads), "
                    f"device {device}, mode {mode}.", "", *tangshi_markdown(row), "", "| target | measured | |",
                    "| --- | ---: | --- |", *(f"| {t['target']} | {t['shown']} | {_fmt_met(t['met'])} |"
                                             for t in results["targets"])]) + "\n"
    (out / "results-tangshi.md").write_text(md)
    print(md)


def bench_scale(quick: bool, tmp: Path) -> dict | None:
    try:
        from scale import run_scale
    except ImportError as e:
        log(f"scale benchmark skipped: {e}")
        return None
    try:
        return run_scale(quick, tmp)
    except Exception as e:  # a failure there must not lose the rest of the run
        traceback.print_exc()
        return {"error": f"{type(e).__name__}: {e}", "rows": [], "markdown": f"Scale benchmark failed: {e}\n"}


# ---- main ---------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="about 2 minutes")
    mode.add_argument("--full", action="store_true", help="longer timing per configuration, two rounds")
    mode.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # checks the script, ~1 minute
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "corpora"))
    ap.add_argument("--no-scale", action="store_true", help="skip bench/scale.py")
    ap.add_argument("--no-finetune", action="store_true", help="skip bench/finetune.py")
    ap.add_argument("--only", choices=["tangshi"], help="run only this row: tangshi, the large-vocabulary row")
    args = ap.parse_args()
    mode_name = "quick" if args.quick else "full" if args.full else "smoke" if args.smoke else "default"
    plan = plan_for(mode_name)
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.only == "tangshi":
        only_tangshi(Path(args.shared), plan, args.device, out, mode_name)
        return
    text, name = corpus(Path(args.shared))
    full_text = text
    if plan.text_chars:
        text = text[: plan.text_chars]
    vocab = Vocab.build(full_text)
    ids = vocab.encode(text)
    precision = resolved({}, device=device)["precision"]  # what `charrnn train` uses here by default
    results: dict = {"machine": machine(device), "device": str(device), "corpus": name, "mode": mode_name,
                     "batch": [BATCH, STEPS], "precision": precision}
    started = time.perf_counter()

    def save() -> None:
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    with tempfile.TemporaryDirectory(prefix="charrnn-bench-") as tmp_name:
        tmp = Path(tmp_name)
        corpus_file = tmp / "corpus.txt"  # the text the benchmark uses (cut short in smoke tests)
        corpus_file.write_text(text, encoding="utf-8")

        # 1. the machine's limit at the models' GEMM shapes, in fp32 and in bf16; MFU divides by the limit of
        # the precision training uses
        limits: dict[str, dict[int, dict]] = {"fp32": {}, "bf16": {}}
        results["matmul"], results["matmul_bf16"] = [], []

        def measure_limits(h: int) -> None:
            log(f"matmul limit, hidden {h}, fp32 and bf16")
            for key, dtype, where in (("fp32", torch.float32, "matmul"), ("bf16", torch.bfloat16, "matmul_bf16")):
                limits[key][h] = matmul_limit(h, batch=BATCH, steps=STEPS, vocab=vocab.size, device=device,
                                              min_seconds=plan.matmul_seconds, dtype=dtype)
                results[where].append(limits[key][h])

        for h in sorted({h for _, h, _ in plan.configs}):
            measure_limits(h)

        # 2-3. training: charrnn and the reference, back to back per configuration
        results["train"] = []
        for cell, hidden, input_ in plan.configs:
            log(f"training {cell} {LAYERS}x{hidden} {input_}: charrnn and reference")
            mc = ModelConfig(vocab.size, cell=cell, hidden=hidden, layers=LAYERS, input=input_, dropout=0.0)
            results["train"].append(bench_train_config(ids, vocab, mc, plan, limits[precision], device, tmp,
                                                       precision))
            save()

        # 4. evaluation: a default-architecture checkpoint from the CLI
        log("checkpoint of the CLI's default model (2 steps)")
        ckpt = make_checkpoint(corpus_file, args.device, tmp)
        model, ck_vocab, raw = load_model(ckpt, device)
        mc = ModelConfig.from_dict(raw["model_config"])
        default_row = next((r for r in results["train"]
                            if (r["cell"], r["hidden"], r["layers"], r["input"], r["embed_dim"])
                            == (mc.cell, mc.hidden, mc.layers, mc.input, mc.embed_dim)), None)
        if default_row is None:  # the CLI's default model is not among the configurations: measure it too
            log(f"training the default model {mc.cell} {mc.layers}x{mc.hidden} {mc.input}")
            if mc.hidden not in limits["fp32"]:
                measure_limits(mc.hidden)
            default_row = bench_train_config(ids, vocab, ModelConfig(vocab.size, **{
                k: v for k, v in mc.to_dict().items() if k != "vocab_size"}), plan, limits[precision], device, tmp,
                precision)
            results["train"].append(default_row)
        results["default_model"] = {**mc.to_dict(), "train_chars_per_s": default_row["chars_per_s"]}
        log(f"eval in process, {plan.eval_chars:,} chars")
        results["eval"] = bench_eval_inprocess(model, ck_vocab, repeat_text(text, plan.eval_chars), device)
        log(f"eval subprocesses, {', '.join(f'{n:,}' for n in plan.eval_sizes)} chars")
        results["eval_cli"] = bench_eval_memory(ckpt, text, plan.eval_sizes, args.device, tmp)
        save()

        # 5. generation
        log("generation")
        n1, n64 = plan.gen_lengths
        results["generate"] = [bench_generate(model, ck_vocab, n1, 1), bench_generate(model, ck_vocab, n64, 64)]
        results["first_char"] = bench_first_char(ckpt, args.device)
        results["help_seconds"] = bench_cli_help()
        save()

        # 6. quality per CPU-minute
        shakespeare = Path(args.shared) / "tinyshakespeare.txt"
        if shakespeare.exists():
            log(f"quality: {plan.quality_seconds:g} s of default training")
            results["quality"] = bench_quality(corpus_file if plan.text_chars else shakespeare, plan.quality_seconds,
                                               args.device, tmp)
            results["baseline"] = run_baseline(corpus_file if plan.text_chars else shakespeare, plan, args.device)
        else:
            log("quality and transformer baseline skipped: no tinyshakespeare in --shared")
        tangshi = run_tangshi(Path(args.shared), plan, args.device, tmp)
        if tangshi is not None:
            results["tangshi"] = tangshi
        log(f"precision: {plan.curve_steps} steps of the defaults in fp32 and in bf16")
        results["precision_curves"] = bench_precision_curves(corpus_file, plan.curve_steps, args.device, tmp)
        save()
        if plan.ptb_seconds:
            if (Path(args.shared) / "ptb-char").is_dir():
                log(f"PTB-char: {plan.ptb_seconds:g} s of default training, then the test split")
                results["ptb"] = bench_ptb(Path(args.shared), plan.ptb_seconds, args.device, tmp)
                save()
            else:
                log("PTB-char skipped: no ptb-char in --shared")
        if not args.no_finetune:
            results["finetune"] = bench_finetune(Path(args.shared), tmp, plan, args.device)
            save()

        # 7-8. targets, then the scale benchmark
        results["targets"] = targets(results)
        save()
        if not args.no_scale:
            log("scale benchmark (bench/scale.py)")
            scale = bench_scale(args.quick or args.smoke, tmp)
            if scale is not None:
                results["scale"] = scale
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    save()
    md = to_markdown(results)
    (out / "results.md").write_text(md)
    print(md)


# ---- targets and markdown ------------------------------------------------------------------------------------


def targets(r: dict) -> list[dict]:
    rows: list[dict] = []

    def add(name: str, value: float | None, shown: str, met: bool | None) -> None:
        rows.append({"target": name, "value": value, "shown": shown, "met": met})

    precision = r.get("precision", "fp32")
    row = next((t for t in r["train"] if (t["cell"], t["hidden"], t["layers"], t["input"])
                == ("lstm", 256, 2, "embedding")), None)
    if row:
        goal = 1.8 if precision == "bf16" else 1.0  # bf16 where the hardware has it, against the fp32 reference
        add(f"training lstm 2x256 in {precision} >= {goal:.1f}x the fp32 reference chars/s", row["ratio"],
            f"{row['ratio']:.2f}x", row["ratio"] >= goal)
    for cell in FUSED:
        mine = [t for t in r["train"] if t["cell"] == cell]
        if mine:
            worst = min(mine, key=lambda t: t["ratio"])
            add(f"training {cell} >= 1.0x reference chars/s (worst of {len(mine)} configurations, {precision})",
            worst["ratio"],
                f"{worst['ratio']:.3f}x ({LAYERS}x{worst['hidden']} {worst['input']})", worst["ratio"] >= 1.0)
    for cell, goal in (("lstm", 0.75), ("gru", 0.60), ("rnn", 0.60)):
        row = next((t for t in r["train"] if t["cell"] == cell and t["hidden"] == 512 and t["input"] == "embedding"),
                   None)
        if row:
            add(f"MFU {cell} 2x512 (embedding) >= {goal:.0%}", row["mfu"], f"{row['mfu']:.1%}", row["mfu"] >= goal)
    if "eval" in r and "default_model" in r:
        ratio = r["eval"]["chars_per_s"] / r["default_model"]["train_chars_per_s"]
        add("eval >= 3x training chars/s of the default model", ratio,
            f"{ratio:.1f}x ({r['eval']['chars_per_s']:,} vs {r['default_model']['train_chars_per_s']:,})", ratio >= 3)
    for g in r.get("generate", []):
        goal = 5_000 if g["streams"] == 1 else 60_000
        add(f"generation, {g['streams']} stream(s) >= {goal:,} chars/s", g["chars_per_s"], f"{g['chars_per_s']:,}",
            g["chars_per_s"] >= goal)
    if "first_char" in r:
        v = r["first_char"]["best_s"]
        add("`charrnn generate` first character <= 1.0 s", v, f"{v:.2f} s", v <= 1.0)
    if "help_seconds" in r:
        v = r["help_seconds"]
        add("`charrnn --help` <= 0.3 s", v, f"{v:.2f} s", v <= 0.3)
    if "quality" in r:
        q = r["quality"]
        v = q["val_nats_per_char"]
        goal = 1.44 if precision == "bf16" else 1.46  # what a CPU with native bf16 buys, and one without
        add(f"validation <= {goal} nats/char after 150 s of default training ({precision})", v,
            f"{v:.4f} after {q['seconds']:g} s", v <= goal if q["seconds"] == 150 else None)
        if "dynamic" in q:
            d = q["dynamic"]
            gain = d["static_nats_per_char"] - d["dynamic_nats_per_char"]
            add("dynamic evaluation of that model on the held-out 10% (report)", d["dynamic_nats_per_char"],
                f"{d['dynamic_nats_per_char']:.4f} (static {d['static_nats_per_char']:.4f}, gain {gain:+.4f}, "
                f"{d['seconds']:.0f} s)", None)
    b = r.get("baseline", {})
    if "quality" in r and "best" in b:
        diff = b["best"]["val_nats_per_char"] - r["quality"]["val_nats_per_char"]
        add(f"charrnn >= 0.15 nats/char better than the transformer baseline's best ({b['best']['name']}), same budget",
            diff, f"{diff:+.4f}", diff >= 0.15 if b["seconds"] == 150 else None)
    if "precision_curves" in r:
        c = r["precision_curves"]
        add(f"bf16 validation within 0.02 nats/char of fp32 at equal steps ({c['steps']} steps)", c["val_difference"],
            f"{c['val_difference']:+.4f}", abs(c["val_difference"]) <= 0.02)
    if "tangshi" in r:
        for name, value, shown, met in tangshi_targets(r["tangshi"]):
            add(name, value, shown, met)
    if "ptb" in r:
        p = r["ptb"]
        add("PTB-char test <= 1.43 bits/char after 20 minutes of default training", p["test_bits_per_char"],
            f"{p['test_bits_per_char']:.4f} after {p['seconds']:g} s", p["test_bits_per_char"] <= 1.43
            if p["seconds"] >= 1200 else None)
        if "dynamic" in p:
            d = p["dynamic"]
            add("PTB-char test with `--dynamic` (report)", d["dynamic_bits_per_char"],
                f"{d['dynamic_bits_per_char']:.4f} bits/char (static {d['static_bits_per_char']:.4f}, "
                f"{d['seconds']:.0f} s)", None)
    return rows


def _fmt_met(met: bool | None) -> str:
    return "n/a" if met is None else "met" if met else "**not met**"


def to_markdown(r: dict) -> str:
    m = r["machine"]
    gpu = f", GPU {m['gpu']}" if "gpu" in m else ""
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['threads']} threads), "
             f"Python {m['python']}{gpu}, device {r['device']}, corpus {r['corpus']}, mode {r['mode']}.", ""]

    mm = r["matmul"]
    lines += ["| fp32 matmul at the models' shapes (B=32, T=64), GFLOP/s | "
              + " | ".join(f"H={x['hidden']}" for x in mm) + " |",
              "| --- |" + " ---: |" * len(mm)]
    for i, s in enumerate(mm[0]["shapes"]):
        lines.append(f"| {s['shape']} | " + " | ".join(f"{x['shapes'][i]['gflops']:,.1f}" for x in mm) + " |")
    precision = r.get("precision", "fp32")
    bf = r.get("matmul_bf16", [])
    lines += ["| **fp32 limit** (best of the shapes" + ("; MFU divides by this" if precision == "fp32" else "") + ") | "
              + " | ".join(f"**{x['best_gflops']:,.1f}**" for x in mm) + " |"]
    if bf:
        lines += ["| **bf16 limit** (best of the same shapes in bfloat16" + ("; MFU divides by this"
                  if precision == "bf16" else "") + ") | " + " | ".join(f"**{x['best_gflops']:,.1f}**" for x in bf)
                  + " |"]
    lines += [
              "| LSTM training mix (total FLOPs / total time of its GEMMs) | "
              + " | ".join(f"{x['mix_gflops']:,.1f}" for x in mm) + " |", ""]

    lines += [f"charrnn trains in {precision} here (what `--precision auto` picks on this device); the reference "
              "is the fp32 textbook loop.", ""]
    lines += ["| training, 2 layers, batch 32 x 64 | hidden | input | charrnn chars/s | reference chars/s | ratio "
              "| MFLOP/char [1] | GFLOP/s | MFU [2] |",
              "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for t in r["train"]:
        lines.append(f"| {t['cell']} | {t['hidden']} | {t['input']} | {t['chars_per_s']:,} | "
                     f"{t['reference_chars_per_s']:,} ({t['reference']}) | {t['ratio']:.2f} | "
                     f"{t['train_flops_per_char'] / 1e6:.2f} | {t['gflops']:,.1f} | {t['mfu']:.1%} |")
    lines += ["",
              "[1] Training FLOPs per character = 3 x forward matmul FLOPs (forward + 2 x backward): per layer "
              "2·g·H·(in + H) with g = 1 (rnn), 3 (gru), 4 (lstm), plus the head 2·H·V. For one-hot input the first "
              "layer's `in` is the vocabulary size V, counted as the dense (B·T, V) @ (V, g·H) product; charrnn "
              "does compute it densely (a float one-hot tensor into the fused module), though a lookup would give "
              "the same result. Element-wise work, softmax, clipping and Adam are not counted, and the first layer's "
              "input gradient is counted though nobody needs it.",
              "[2] MFU = charrnn chars/s x FLOPs/char over the matmul limit measured above for that hidden size "
              "(at the LSTM's shapes, for every cell). "
              "Throughput is wall-clock time per training step (synchronized on a GPU) after a discarded warm-up "
              "run; the reference (bench/reference.py: nn.RNN/GRU/LSTM, Linear head, Adam, clip_grad_norm_, "
              "loss.item() each step) is timed interleaved with charrnn on the same configuration (charrnn, "
              "reference, reference, charrnn), and each side's best round is reported; scratch-rnn is compared "
              "with nn.RNN.", ""]

    e, ec = r["eval"], r["eval_cli"]
    dm = r["default_model"]
    lines += [f"| evaluation, default model ({dm['cell']} {dm['layers']}x{dm['hidden']}, {dm['input']}) | chars "
              "| seconds | chars/s | max RSS, MB |", "| --- | ---: | ---: | ---: | ---: |",
              f"| `evaluate()` in process (64 streams x 256 steps) | {e['chars']:,} | {e['seconds']} | "
              f"{e['chars_per_s']:,} | |",
              f"| baseline subprocess `{ec['baseline']['command']}` | | {ec['baseline']['wall_s']} | | "
              f"{ec['baseline']['max_rss_mb']:,.0f} |"]
    for x in ec["runs"]:
        lines.append(f"| `charrnn eval perplexity` subprocess, {x['text_chars'] / 1e6:g} M chars (whole command) | "
                     f"{x['chars']:,} | {x['wall_s']} | {x['chars_per_s_whole_command']:,} | {x['max_rss_mb']:,.0f} |")
    lines += ["", "| generation and start-up, default model | value |", "| --- | ---: |"]
    lines += [f"| generate, chars/s, {g['streams']} stream(s) (in process, `Stepper` + sampling, best of 3) | "
              f"{g['chars_per_s']:,} |" for g in r["generate"]]
    lines += [f"| `charrnn generate` time to first character, best of 3, s | {r['first_char']['best_s']} |",
              f"| `charrnn --help`, best of 5, s | {r['help_seconds']} |"]
    if "quality" in r:
        q = r["quality"]
        lines += [f"| validation after {q['seconds']:g} s of `charrnn train` with its defaults (tinyshakespeare, "
                  f"last 10% held out), nats/char (bits/char), {q['steps']} steps | {q['val_nats_per_char']} "
                  f"({q['val_bits_per_char']}) |"]
        if "dynamic" in q:
            d = q["dynamic"]
            lines += [f"| that model's best checkpoint on the held-out 10%, static / `--dynamic`, nats/char "
                      f"({d['seconds']:.0f} s) | {d['static_nats_per_char']} / {d['dynamic_nats_per_char']} |"]
    if "precision_curves" in r:
        c = r["precision_curves"]
        lines += [f"| validation after {c['steps']} steps of the defaults from the same start, fp32 / bf16, nats/char "
                  f"| {c['fp32']['val_nats_per_char']} / {c['bf16']['val_nats_per_char']} |",
                  f"| training speed of those runs, fp32 / bf16, chars/s | {c['fp32']['chars_per_s']:,} / "
                  f"{c['bf16']['chars_per_s']:,} |"]
    if "ptb" in r:
        p = r["ptb"]
        lines += [f"| PTB-char after {p['seconds']:g} s of `charrnn train ptb-char` ({p['steps']} steps, "
                  f"{p['epochs']} epochs): valid / test bits/char | {p['valid_bits_per_char']} / "
                  f"{p['test_bits_per_char']} |"]
        if "dynamic" in p:
            d = p["dynamic"]
            lines += [f"| PTB-char test with `--dynamic`, bits/char ({d['seconds']:.0f} s) | "
                      f"{d['dynamic_bits_per_char']} |"]

    if "best" in r.get("baseline", {}):
        lines += ["", *baseline_markdown(r["baseline"], r.get("quality"))]
    if "tangshi" in r:
        lines += ["", *tangshi_markdown(r["tangshi"])]
    elif "baseline" in r:
        lines += ["", f"Transformer baseline failed: {r['baseline']['error']}"]
    lines += ["", "| target | measured | |", "| --- | ---: | --- |"]
    lines += [f"| {t['target']} | {t['shown']} | {_fmt_met(t['met'])} |" for t in r["targets"]]
    if r.get("finetune", {}).get("markdown"):
        lines += ["", r["finetune"]["markdown"].rstrip()]
    if "scale" in r and r["scale"].get("markdown"):
        lines += ["", r["scale"]["markdown"].rstrip()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
