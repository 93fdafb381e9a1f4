"""End-to-end tests of the command line: train -> eval -> generate, stdout/stderr contract, exit codes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from charrnn.cli import cli

TINY = ["--hidden", "16", "--layers", "1", "-b", "4", "-t", "16", "--max-steps", "8", "--val-every", "4", "-q"]
CELLS = ["rnn", "gru", "lstm", "scratch-rnn", "scratch-gru", "scratch-lstm"]


def corpus_text() -> str:
    words = "the time traveller smiled and we sat about the fire in the room while he spoke".split()
    lines = [" ".join(words[(i * 7 + j) % len(words)] for j in range(9)) for i in range(40)]
    return "\n".join(lines) + "\n"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    p = tmp_path / "corpus.txt"
    p.write_text(corpus_text(), encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("model")
    (d / "corpus.txt").write_text(corpus_text(), encoding="utf-8")
    result = CliRunner().invoke(cli, ["train", str(d / "corpus.txt"), "-o", str(d / "m.pt"), *TINY])
    assert result.exit_code == 0, result.stderr
    return d / "m.pt"


def run(*args: str, input: str | bytes | None = None):
    return CliRunner().invoke(cli, list(args), input=input)


def assert_clean_error(result, code: int, *needles: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
    for needle in needles:
        assert needle in result.stderr, result.stderr


@pytest.mark.parametrize("partition", ["sequential", "random"])
@pytest.mark.parametrize("cell", CELLS)
def test_train_eval_generate(tmp_path: Path, corpus: Path, cell: str, partition: str) -> None:
    out = tmp_path / "m.pt"
    extra = ["--warmup", "3"] if partition == "random" else []
    r = run("train", str(corpus), "-o", str(out), "--cell", cell, "--partition", partition, *extra, *TINY[:-1])
    assert r.exit_code == 0, r.stderr
    assert r.stdout.count("\n") == 1 and r.stdout.startswith("trained 8 steps")
    assert "validation loss" in r.stderr and "training:" in r.stderr
    assert out.exists() and (tmp_path / "m.best.pt").exists()

    r = run("eval", "perplexity", "-m", str(out), str(corpus), "--json")
    assert r.exit_code == 0, r.stderr
    result = json.loads(r.stdout)
    assert set(result) >= {"perplexity", "nats_per_char", "bits_per_char", "chars", "unknown"}
    assert result["chars"] == len(corpus_text()) - 1 and result["unknown"] == 0
    assert 1.0 < result["perplexity"] < 40

    r = run("generate", "-m", str(out), "--prefix", "the ", "-n", "40", "--seed", "3")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("the ") and len(r.stdout) == 4 + 40 + 1
    assert run("generate", "-m", str(out), "--prefix", "the ", "-n", "40", "--seed", "3").stdout == r.stdout


def test_train_json_and_summary_keys(tmp_path: Path, corpus: Path) -> None:
    r = run("train", str(corpus), "-o", str(tmp_path / "m.pt"), *TINY, "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    for key in ("steps", "seconds", "chars_per_second", "train_loss", "val_loss", "val_perplexity",
                "val_bits_per_char", "checkpoint"):
        assert key in d
    assert d["steps"] == 8 and d["checkpoint"] == str(tmp_path / "m.pt")
    assert d["val_perplexity"] == pytest.approx(2.718281828 ** d["val_loss"])


def test_train_from_stdin(tmp_path: Path) -> None:
    r = run("train", "-", "-o", str(tmp_path / "m.pt"), *TINY, input=corpus_text())
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])  # pinned: each is deterministic, whatever auto picks
def test_same_seed_same_model(tmp_path: Path, corpus: Path, precision: str) -> None:
    for name in ("a.pt", "b.pt"):
        r = run("train", str(corpus), "-o", str(tmp_path / name), *TINY, "--dropout", "0.2", "--precision", precision)
        assert r.exit_code == 0, r.stderr
    r1 = run("eval", "perplexity", "-m", str(tmp_path / "a.pt"), str(corpus), "--json")
    r2 = run("eval", "perplexity", "-m", str(tmp_path / "b.pt"), str(corpus), "--json")
    assert r1.stdout == r2.stdout


def test_eval_text_output_and_stdin(trained: Path) -> None:
    r = run("eval", "perplexity", "-m", str(trained), input="the time traveller\n")
    assert r.exit_code == 0, r.stderr
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    assert set(lines) == {"perplexity", "nats/char", "bits/char", "chars", "unknown"}
    assert lines["chars"] == "18" and lines["unknown"] == "0"


def test_eval_unknown_characters(trained: Path) -> None:
    r = run("eval", "perplexity", "-m", str(trained), "--json", input="the Zoo\n")
    assert r.exit_code == 0
    d = json.loads(r.stdout)
    assert d["unknown"] == 1 and d["chars"] == 6  # 7 targets, the 'Z' is skipped
    assert_clean_error(run("eval", "perplexity", "-m", str(trained), "--unk", "error", input="the Zoo\n"),
                       1, "'Z'", "--unk map")


def test_generate_unknown_prefix(trained: Path) -> None:
    assert_clean_error(run("generate", "-m", str(trained), "--prefix", "Zé the"), 1, "'Z'", "'é'")
    r = run("generate", "-m", str(trained), "--prefix", "Zé the", "--unk", "map", "-n", "5", "--seed", "1")
    assert r.exit_code == 0 and r.stdout.startswith("Zé the")


def test_generate_options(trained: Path) -> None:
    r = run("generate", "-m", str(trained), "--prefix", "the", "--no-echo", "-n", "30", "--greedy")
    assert r.exit_code == 0 and len(r.stdout) == 31 and not r.stdout.startswith("the")
    assert run("generate", "-m", str(trained), "--prefix", "the", "-n", "30", "--greedy", "--seed", "9").stdout[3:] \
        == r.stdout
    r = run("generate", "-m", str(trained), "-n", "20", "--num-samples", "3", "--seed", "1", "--json",
            "--top-k", "5", "--top-p", "0.9", "--temperature", "0.7")
    d = json.loads(r.stdout)
    assert d["seed"] == 1 and len(d["samples"]) == 3 and all(len(s) == 20 for s in d["samples"])
    r = run("generate", "-m", str(trained), "--prefix-file", "-", "-n", "10", "--seed", "1", input="the time")
    assert r.exit_code == 0 and r.stdout.startswith("the time") and len(r.stdout) == 8 + 10 + 1
    r = run("generate", "-m", str(trained), "-n", "10")
    assert r.exit_code == 0 and r.stderr.startswith("seed ")
    seed = r.stderr.split()[1]
    assert run("generate", "-m", str(trained), "-n", "10", "--seed", seed).stdout == r.stdout


def test_info(trained: Path) -> None:
    r = run("info", "-m", str(trained), "--json")
    d = json.loads(r.stdout)
    assert d["model"]["cell"] == "lstm" and d["step"] == 8 and d["model"]["hidden"] == 16
    assert run("info", "-m", str(trained)).stdout.startswith("lstm 1x16")


def test_resume_continues_and_refuses_architecture_change(tmp_path: Path, corpus: Path) -> None:
    out = tmp_path / "m.pt"
    assert run("train", str(corpus), "-o", str(out), *TINY).exit_code == 0
    r = run("train", str(corpus), "-o", str(out), "--resume", str(out), "--max-steps", "12", "--lr", "0.001", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["steps"] == 12
    assert "resuming from" in r.stderr and "--lr 0.005 -> 0.001" in r.stderr
    assert_clean_error(run("train", str(corpus), "-o", str(out), "--resume", str(out), "--hidden", "32"),
                       2, "architecture cannot change")
    other = tmp_path / "other.txt"
    other.write_text(corpus_text().upper() + corpus_text())
    assert_clean_error(run("train", str(other), "-o", str(out), "--resume", str(out), "--max-steps", "20"),
                       1, "differs")


BAD_UTF8 = b"hello \xff\xfe world " * 100


@pytest.mark.parametrize("case", [
    "missing", "directory", "empty", "one-char", "too-small", "not-utf8", "binary", "out-is-in", "out-dir",
    "out-in-folder",
    "temperature", "top-k", "top-p", "length", "num-samples", "device", "cuda", "not-a-checkpoint",
    "truncated", "missing-model", "both-prefixes", "warmup-sequential", "bad-lr", "tty-stdin",
    "unk-prefix", "unk-eval", "newer-version", "zero-num-steps", "zero-batch", "zero-time-budget",
    "eval-one-char", "bad-encoding", "eval-directory", "two-stdin",
])
def test_bad_input(tmp_path: Path, corpus: Path, trained: Path, case: str) -> None:
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "one.txt").write_text("a")
    (tmp_path / "bad.txt").write_bytes(BAD_UTF8)
    (tmp_path / "bin.dat").write_bytes(bytes(range(256)) * 10)
    (tmp_path / "junk.pt").write_text("this is not a checkpoint")
    data = trained.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    import torch

    newer = torch.load(trained, weights_only=True)
    newer["version"] = 99
    torch.save(newer, tmp_path / "newer.pt")
    out = str(tmp_path / "new.pt")
    m = str(trained)
    cases = {
        "missing": (["train", str(tmp_path / "nope.txt"), "-o", out], 2, "does not exist"),
        "directory": (["train", str(tmp_path / "emptydir"), "-o", out], 2, "holds no files"),
        "eval-directory": (["eval", "perplexity", "-m", m, str(tmp_path)], 2, "directory"),
        "two-stdin": (["train", "-", "-", "-o", out], 2, "only once"),
        "empty": (["train", str(tmp_path / "empty.txt"), "-o", out], 1, "empty"),
        "one-char": (["train", str(tmp_path / "one.txt"), "-o", out], 1, "characters"),
        "too-small": (["train", str(corpus), "-o", out, "-b", "64", "-t", "64"], 1, "too few"),
        "not-utf8": (["train", str(tmp_path / "bad.txt"), "-o", out], 1, "byte 6"),
        "binary": (["train", str(tmp_path / "bin.dat"), "-o", out], 1, "binary"),
        "out-is-in": (["train", str(corpus), "-o", str(corpus)], 2, "input corpus"),
        "out-in-folder": (["train", str(corpus.parent), "-o", str(corpus)], 2, "input corpus"),
        "out-dir": (["train", str(corpus), "-o", str(tmp_path / "missing" / "m.pt")], 2, "does not exist"),
        "temperature": (["generate", "-m", m, "--temperature", "0"], 2, "--temperature"),
        "top-k": (["generate", "-m", m, "--top-k", "0"], 2, "--top-k"),
        "top-p": (["generate", "-m", m, "--top-p", "1.5"], 2, "--top-p"),
        "length": (["generate", "-m", m, "-n", "-1"], 2, "--length"),
        "num-samples": (["generate", "-m", m, "--num-samples", "0"], 2, "--num-samples"),
        "device": (["generate", "-m", m, "--device", "tpu"], 2, "device"),
        "cuda": (["eval", "perplexity", "-m", m, str(corpus), "--device", "cuda"], 2, "cuda"),
        "not-a-checkpoint": (["eval", "perplexity", "-m", str(tmp_path / "junk.pt"), str(corpus)], 1, "not a charrnn"),
        "truncated": (["generate", "-m", str(tmp_path / "trunc.pt")], 1, "truncated"),
        "missing-model": (["generate", "-m", str(tmp_path / "nope.pt")], 2, "does not exist"),
        "both-prefixes": (["generate", "-m", m, "--prefix", "a", "--prefix-file", str(corpus)], 2, "not both"),
        "warmup-sequential": (["train", str(corpus), "-o", out, "--warmup", "4", *TINY], 2, "--warmup"),
        "bad-lr": (["train", str(corpus), "-o", out, "--lr", "-1", *TINY], 2, "--lr"),
        "unk-prefix": (["generate", "-m", m, "--prefix", "Q"], 1, "'Q'"),
        "unk-eval": (["eval", "perplexity", "-m", m, "--unk", "error", str(tmp_path / "bad.txt"), "--encoding",
                      "latin-1"], 1, "not in the model's vocabulary"),
        "newer-version": (["info", "-m", str(tmp_path / "newer.pt")], 1, "version 99"),
        "zero-num-steps": (["train", str(corpus), "-o", out, "-t", "0"], 2, "--num-steps"),
        "zero-batch": (["train", str(corpus), "-o", out, "-b", "0"], 2, "--batch-size"),
        "zero-time-budget": (["train", str(corpus), "-o", out, "--time-budget", "0"], 2, "--time-budget"),
        "eval-one-char": (["eval", "perplexity", "-m", m, str(tmp_path / "one.txt")], 1, "at least 2"),
        "bad-encoding": (["train", str(corpus), "-o", out, "--encoding", "klingon"], 2, "unknown encoding"),
    }
    if case == "tty-stdin":
        import charrnn.cli.common as cli_module

        class Tty:
            def isatty(self) -> bool:
                return True

        mp = pytest.MonkeyPatch()
        mp.setattr(cli_module, "stdin", lambda: Tty())
        try:
            result = run("train", "-", "-o", out)
        finally:
            mp.undo()
        assert_clean_error(result, 2, "terminal")
        assert not Path(out).exists()
        return
    if case == "cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    before = sorted(tmp_path.rglob("*"))
    args, code, needle = cases[case]
    assert_clean_error(run(*args), code, needle)
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_generate_into_closed_pipe_is_quiet(trained: Path) -> None:
    p = subprocess.run(f"'{sys.executable}' -m charrnn generate -m '{trained}' -n 100000 --seed 1 | head -c 100",
                       shell=True, capture_output=True, text=True, executable="/bin/bash", timeout=120)
    assert len(p.stdout) == 100
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr


def train_until_first_save(tmp_path: Path, corpus: Path) -> tuple[subprocess.Popen, Path]:
    """A training process that saves after every step, once its first checkpoint exists."""
    out = tmp_path / "m.pt"
    proc = subprocess.Popen([sys.executable, "-m", "charrnn", "train", str(corpus), "-o", str(out), "--hidden", "256",
                             "-b", "4", "-t", "16", "--time-budget", "120", "--save-every", "1", "--val-every", "1000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert out.exists(), "training never saved"
    return proc, out


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)] * 2)
def test_signal_saves_resumable_checkpoint(tmp_path: Path, corpus: Path, sig: int, code: int) -> None:
    proc, out = train_until_first_save(tmp_path, corpus)
    # A checkpoint is saved after every step, so the signal often lands in the middle of a save:
    # that must not break the save or the exit.
    time.sleep(0.37)
    os.kill(proc.pid, sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert "resumable checkpoint saved" in stderr and "Traceback" not in stderr
    # the summary of what was done says why the run stopped
    assert stdout.startswith("trained ") and "stopped: interrupted" in stdout and stdout.count("\n") == 1
    r = run("info", "-m", str(out), "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["step"] >= 1


def test_second_signal_quits_at_once_and_keeps_the_checkpoint(tmp_path: Path, corpus: Path) -> None:
    proc, out = train_until_first_save(tmp_path, corpus)
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGINT)
    os.kill(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    # Two signals sent back to back may be delivered as one: then the run stops normally and prints
    # its summary (stop_reason interrupted); otherwise it quits at once and prints nothing.
    assert proc.returncode == 130 and "Traceback" not in stderr
    assert stdout == "" or "stopped: interrupted" in stdout
    assert json.loads(run("info", "-m", str(out), "--json").stdout)["step"] >= 1


def test_text_is_data_only(trained: Path) -> None:
    prefix = "{0} %s $(echo hi) `id` {__import__}"
    r = run("generate", "-m", str(trained), "--prefix", prefix, "--unk", "map", "-n", "3", "--seed", "1")
    assert r.exit_code == 0 and r.stdout.startswith(prefix)


def test_resume_with_another_batch_shape(tmp_path: Path, corpus: Path) -> None:
    out = tmp_path / "m.pt"
    assert run("train", str(corpus), "-o", str(out), *TINY).exit_code == 0
    r = run("train", str(corpus), "-o", str(out), "--resume", str(out), "-b", "6", "-t", "8", "--max-steps", "12",
            "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["steps"] == 12 and "--batch-size 4 -> 6" in r.stderr


def test_train_on_several_files_and_a_folder(tmp_path: Path) -> None:
    d = tmp_path / "texts"
    (d / "sub").mkdir(parents=True)
    (d / "b.txt").write_text("the time traveller " * 60)  # no final newline: one is added
    (d / "sub" / "a.txt").write_text("smiled and we sat\n" * 60)
    (d / ".hidden").write_text("Q" * 1000)  # hidden files are left out
    extra = tmp_path / "extra.txt"
    extra.write_text("about the fire\n" * 60)
    r = run("train", str(d), str(extra), "-o", str(tmp_path / "m.pt"), *TINY, "--json")
    assert r.exit_code == 0, r.stderr
    info = json.loads(run("info", "-m", str(tmp_path / "m.pt"), "--json").stdout)
    assert "Q" not in "".join(torch_vocab(tmp_path / "m.pt"))
    expected = ("the time traveller " * 60) + "\n" + ("smiled and we sat\n" * 60) + ("about the fire\n" * 60)
    assert info["training_chars"] == round(len(expected) * 0.9)


def torch_vocab(path: Path) -> list[str]:
    import torch

    return torch.load(path, weights_only=True)["vocab"]["chars"]


def test_presets_match_the_cli_and_explicit_options_win(tmp_path: Path, corpus: Path) -> None:
    from charrnn.cli import ARCH_DEFAULTS
    from charrnn.config import PRESETS
    from charrnn.model.checkpoint import load

    defaults = {p.name: p.default for p in cli.commands["train"].params}
    small = PRESETS["small"]
    assert {k: small[k] for k in ARCH_DEFAULTS if k in small} == {k: ARCH_DEFAULTS[k] for k in ARCH_DEFAULTS
                                                                  if k in small}
    assert (small["batch_size"], small["num_steps"], small["lr"]) == (defaults["batch_size"],
                                                                      defaults["num_steps"], defaults["lr"])
    out = tmp_path / "m.pt"
    small_batch = ["-b", "4", "-t", "16", "--max-steps", "2", "-q"]
    r = run("train", str(corpus), "-o", str(out), "--preset", "tiny", "--hidden", "24", *small_batch)
    assert r.exit_code == 0, r.stderr
    ckpt = load(str(out))
    assert (ckpt["model_config"]["layers"], ckpt["model_config"]["hidden"]) == (1, 24)  # preset, then --hidden
    assert ckpt["train_config"]["lr"] == PRESETS["tiny"]["lr"] and ckpt["train_config"]["batch_size"] == 4
    r = run("train", str(corpus), "-o", str(out), "--resume", str(out), "--preset", "medium", *small_batch)
    assert_clean_error(r, 2, "cannot change on resume")


def test_bf16_precision_trains_and_resumes(tmp_path: Path, corpus: Path) -> None:
    import torch

    from charrnn.model.checkpoint import load

    out = tmp_path / "m.pt"
    r = run("train", str(corpus), "-o", str(out), "--precision", "bf16", *TINY)
    assert r.exit_code == 0, r.stderr
    ckpt = load(str(out))
    assert ckpt["train_config"]["precision"] == "bf16"
    assert all(t.dtype == torch.float32 for t in ckpt["hidden"])  # the carried state is saved as float32
    assert all(t.dtype == torch.float32 for t in ckpt["weights"].values())
    # The bf16-trained checkpoint evaluates (in fp32), better than a uniform guess over its vocabulary.
    r = run("eval", "perplexity", "-m", str(out), str(corpus), "--json")
    assert r.exit_code == 0, r.stderr
    assert 0 < json.loads(r.stdout)["nats_per_char"] < math.log(len(ckpt["vocab"]["chars"]))
    r = run("train", str(corpus), "-o", str(out), "--resume", str(out), "--precision", "fp32", "--max-steps", "10",
            "-q")
    assert r.exit_code == 0, r.stderr
    bad = run("train", str(corpus), "-o", str(out), "--precision", "fp8", *TINY)
    assert_clean_error(bad, 2, "fp8")


def test_resume_a_checkpoint_written_before_precision_and_val_max_chars(tmp_path: Path, corpus: Path) -> None:
    from charrnn.model import checkpoint

    out = tmp_path / "m.pt"
    assert run("train", str(corpus), "-o", str(out), *TINY).exit_code == 0
    old = checkpoint.load(str(out))
    for key in ("precision", "val_max_chars"):  # options added after the first checkpoints were written
        del old["train_config"][key]
    checkpoint.save(old, out)
    r = run("train", str(corpus), "-o", str(out), "--resume", str(out), "--max-steps", "10", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["steps"] == 10
    resumed = checkpoint.load(str(out))["train_config"]
    assert resumed["precision"] == "fp32" and resumed["val_max_chars"] is None
