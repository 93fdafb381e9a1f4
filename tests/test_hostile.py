"""The bad-input walk: hostile inputs, class by class (issue 9). Every case ends in success or in
one `Error: ...` line with the right exit code, and nothing of the user's is destroyed.

Classes: 1 outputs that are not ours, 2 faults while saving, 3 the process's surroundings,
4 checkpoints that lie, 5 numbers, 6 honest reports, 7 text and exit codes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charrnn.cli import cli
from charrnn.errors import CharrnnError, CheckpointError, UsageError
from charrnn.model import checkpoint
from charrnn.outputs import check_output, run_lock

TINY = ["--hidden", "16", "--layers", "1", "-b", "4", "-t", "16", "--val-every", "4", "-q"]
CHARRNN = [sys.executable, "-m", "charrnn"]


def text() -> str:
    words = "the time traveller smiled and we sat about the fire in the room while he spoke".split()
    return "\n".join(" ".join(words[(i * 5 + j) % len(words)] for j in range(8)) for i in range(40)) + "\n"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hostile")
    (d / "c.txt").write_text(text(), encoding="utf-8")
    r = CliRunner().invoke(cli, ["train", str(d / "c.txt"), "-o", str(d / "m.pt"), *TINY, "--max-steps", "8"])
    assert r.exit_code == 0, r.stderr
    return d


def run(*args: str, input: str | bytes | None = None) -> Any:
    return CliRunner().invoke(cli, [str(a) for a in args], input=input)


def one_line_error(r: Any, code: int, *needles: str) -> None:
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    assert r.stdout == "", r.stdout
    lines = r.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("Error: "), r.stderr
    assert "Traceback" not in r.stderr and "Usage:" not in r.stderr and "Try " not in r.stderr, r.stderr
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    for needle in needles:
        assert needle in lines[-1], lines[-1]


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def shell(cmd: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def charrnn_cmd(*args: str) -> str:
    return " ".join(shlex.quote(a) for a in [*CHARRNN, *args])


# 1. Never destroy what is not ours -----------------------------------------------------------------------

# A device is tested without a run (test_check_output_unit): if the check ever regressed, a run as
# root would replace /dev/null itself with a regular file.
OUTPUT_CASES = ["best-is-input", "output-is-input", "link-to-input", "dash", "fifo", "socket",
                "directory", "no-folder", "long-name", "best-is-fifo"]


@pytest.mark.parametrize("case", OUTPUT_CASES)
def test_outputs_that_are_not_ours_are_refused(tmp_path: Path, case: str) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text(text())
    before = digest(corpus)
    out, needle = tmp_path / "m.pt", ""
    if case == "best-is-input":
        corpus = corpus.rename(tmp_path / "m.best.pt")
        needle = "is an input corpus"
    elif case == "output-is-input":
        out, needle = corpus, "is an input corpus"
    elif case == "link-to-input":
        out.symlink_to(corpus)
        needle = "is an input corpus"
    elif case == "dash":
        out, needle = Path("-"), "not a stream"
    elif case in ("fifo", "best-is-fifo"):
        os.mkfifo(tmp_path / ("m.best.pt" if case == "best-is-fifo" else "m.pt"))
        needle = "device, FIFO or socket"
    elif case == "socket":
        s = socket.socket(socket.AF_UNIX)
        os.chdir(tmp_path)  # a socket path must be short
        s.bind("m.pt")
        needle = "device, FIFO or socket"
    elif case == "directory":
        out.mkdir()
        needle = "is a directory"
    elif case == "no-folder":
        out, needle = tmp_path / "no" / "m.pt", "does not exist"
    elif case == "long-name":
        out, needle = tmp_path / ("a" * 250 + ".pt"), "too long"
    r = run("train", corpus, "-o", out, *TINY, "--max-steps", "2")
    one_line_error(r, 2, needle)
    assert digest(corpus) == before
    if case in ("fifo", "best-is-fifo"):
        assert all(p.is_fifo() for p in tmp_path.iterdir() if p.name.startswith("m."))
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_a_link_as_output_is_followed_and_kept(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text(text())
    (tmp_path / "runs").mkdir()
    link = tmp_path / "latest.pt"
    link.symlink_to(tmp_path / "runs" / "r1.pt")
    r = run("train", tmp_path / "c.txt", "-o", link, *TINY, "--max-steps", "2")
    assert r.exit_code == 0, r.stderr
    assert link.is_symlink() and (tmp_path / "runs" / "r1.pt").is_file()
    assert checkpoint.load(link)["step"] == 2


def test_a_second_run_on_the_same_checkpoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text(text())
    out = tmp_path / "m.pt"
    with run_lock(out):
        r = run("train", tmp_path / "c.txt", "-o", out, *TINY, "--max-steps", "2")
        one_line_error(r, 2, "another charrnn run is writing")
        assert not out.exists()
    # released at the end (and the lock file removed), so the next run goes ahead
    r = run("train", tmp_path / "c.txt", "-o", out, *TINY, "--max-steps", "2")
    assert r.exit_code == 0, r.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".lock")] == []


def test_a_stale_lock_file_does_not_block(tmp_path: Path) -> None:
    (tmp_path / ".m.pt.lock").write_text("")  # left by a run that was killed: no process holds it
    (tmp_path / "c.txt").write_text(text())
    r = run("train", tmp_path / "c.txt", "-o", tmp_path / "m.pt", *TINY, "--max-steps", "2")
    assert r.exit_code == 0, r.stderr


def test_check_output_unit(tmp_path: Path) -> None:
    assert check_output(tmp_path / "new.pt") == tmp_path / "new.pt"
    with pytest.raises(UsageError, match="not a stream"):
        check_output("-")
    (tmp_path / "t.txt").write_text("x")
    with pytest.raises(UsageError, match="input corpus"):
        check_output(tmp_path / "t.txt", [(tmp_path / "t.txt", "an input corpus")])
    with pytest.raises(UsageError, match="device, FIFO or socket"):
        check_output(os.devnull)
    assert Path(os.devnull).is_char_device()


# 2. Faults while saving ----------------------------------------------------------------------------------

def test_file_size_limit_while_saving_keeps_the_previous_checkpoint(home: Path, tmp_path: Path) -> None:
    m = tmp_path / "m.pt"
    m.write_bytes((home / "m.pt").read_bytes())
    before = digest(m)
    limit = os.path.getsize(m) // 2

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([*CHARRNN, "train", str(home / "c.txt"), "-o", str(m), "--resume", str(m),
                           "--max-steps", "12", "-q"], capture_output=True, text=True, preexec_fn=cap, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("Error: could not write checkpoint")
    assert "File too large" in proc.stderr and "Traceback" not in proc.stderr
    assert digest(m) == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("fault", ["vanished-folder", "name-too-long", "disk-full"])
def test_save_faults_are_clean_errors(tmp_path: Path, fault: str, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = {"format": "charrnn", "w": torch.zeros(1000)}
    path = tmp_path / "sub" / "m.pt"
    path.parent.mkdir()
    checkpoint.save(payload, path)
    before = digest(path)
    if fault == "vanished-folder":
        path = tmp_path / "gone" / "m.pt"
        needle = "no longer exists"
    elif fault == "name-too-long":
        path = tmp_path / "sub" / ("n" * 250 + ".pt")
        needle = "too long"
    else:
        real_fdopen = os.fdopen

        class Full:
            def __init__(self, f: Any) -> None:
                self.f = f

            def write(self, data: Any) -> int:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            def __getattr__(self, name: str) -> Any:
                return getattr(self.f, name)

            def __enter__(self) -> Full:
                return self

            def __exit__(self, *exc: Any) -> None:
                self.f.close()

        monkeypatch.setattr(checkpoint.os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
        needle = "No space left on device"
    with pytest.raises(CheckpointError, match=needle) as info:
        checkpoint.save(payload, path)
    assert str(path.name)[:20] in str(info.value)
    assert digest(tmp_path / "sub" / "m.pt") == before
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name.endswith(".tmp")]


# 3. The process's surroundings ---------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["train", "-", "-o", "x.pt", "--max-steps", "1"],
                                  ["eval", "perplexity", "-m", "m.pt", "-"],
                                  ["generate", "-m", "m.pt", "--prefix-file", "-", "-n", "3"]],
                         ids=["train", "eval", "prefix-file"])
def test_closed_stdin_is_a_usage_error(home: Path, args: list[str]) -> None:
    p = shell(charrnn_cmd(*args) + " <&-", cwd=home)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip() == ("Error: standard input is closed: pipe text in (cat corpus.txt | charrnn ...) "
                                "or give a file")
    assert p.stdout == "" and not (home / "x.pt").exists()


def test_training_outlives_the_reader_of_its_stderr(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.pt"
    p = shell(charrnn_cmd("train", str(home / "c.txt"), "-o", str(out), "--hidden", "16", "--layers", "1", "-b", "4",
                          "-t", "16", "--max-steps", "60", "--val-every", "30")
              + " 2>&1 | head -2; echo \"rc=${PIPESTATUS[0]}\"", cwd=tmp_path)
    assert p.stdout.strip().endswith("rc=0"), p.stdout
    assert checkpoint.load(out)["step"] == 60 and (tmp_path / "p.best.pt").exists()


@pytest.mark.parametrize("command", ["eval", "generate"])
def test_eval_and_generate_stop_quietly_when_stdout_goes_away(home: Path, command: str) -> None:
    args = (["eval", "perplexity", "-m", "m.pt", "c.txt"] if command == "eval"
            else ["generate", "-m", "m.pt", "-n", "20000", "--seed", "1"])
    p = shell(charrnn_cmd(*args) + " | head -c 1 >/dev/null; echo \"rc=${PIPESTATUS[0]}\"", cwd=home)
    assert p.stdout.strip() == "rc=0" and p.stderr == "", p.stderr


def test_an_ascii_stdout_gets_escapes_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "u.txt").write_text("café naïve résumé\n" * 100, encoding="utf-8")
    r = run("train", tmp_path / "u.txt", "-o", tmp_path / "u.pt", *TINY, "--max-steps", "2")
    assert r.exit_code == 0, r.stderr
    env = {"PYTHONIOENCODING": "ascii"}
    p = shell(charrnn_cmd("generate", "-m", "u.pt", "--prefix", "café", "-n", "200", "--seed", "3"), tmp_path, env)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert p.stdout.startswith("caf\\xe9")  # a backslash escape, documented
    p = shell(charrnn_cmd("generate", "-m", "u.pt", "--prefix", "café", "-n", "200", "--seed", "3", "--json"),
              tmp_path, env)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["text"].startswith("café")  # JSON stays valid: \u escapes


def test_the_progress_line_fits_80_columns() -> None:
    from charrnn.display.console import status_line
    from charrnn.training.callbacks import Progress

    p = Progress(step=123_456, epoch=12, train_loss=1.23456, lr=3e-3, elapsed=4000.0, chars_per_second=35_123.4,
                 fraction=0.4242)
    for width in (40, 60, 80, 100, 200):
        line = status_line(p, "4.83", "1:23:45", width)
        assert len(line) < width
        for token in line.split():
            assert token in ("step", "123,456", "42%", "loss", "1.2346", "val", "ppl", "4.83", "35,123", "chars/s",
                             "ETA", "1:23:45", "3.44", "lr", "3.0e-03", "1:06:40") or set(token) <= set("━╺"), token
    assert "ETA 1:23:45" in status_line(p, "4.83", "1:23:45", 80)


# 4. Checkpoints that lie ---------------------------------------------------------------------------------

def _mutated(home: Path, tmp_path: Path, mutate: Any) -> Path:
    ckpt = torch.load(home / "m.pt", weights_only=True)
    mutate(ckpt)
    path = tmp_path / "lie.pt"
    torch.save(ckpt, path)
    return path


LIES = {
    "version-str": lambda c: c.update(version="1"),
    "version-bool": lambda c: c.update(version=True),
    "version-zero": lambda c: c.update(version=0),
    "hidden-20000": lambda c: c["model_config"].update(hidden=20000),
    "layers-100000": lambda c: c["model_config"].update(layers=100000),
    "vocab-size-lies": lambda c: c["model_config"].update(vocab_size=7),
    "cell-int": lambda c: c["model_config"].update(cell=5),
    "dropout-nan": lambda c: c["model_config"].update(dropout=float("nan")),
    "config-extra": lambda c: c["model_config"].update(evil=1),
    "vocab-dup": lambda c: c["vocab"].update(chars=[c["vocab"]["chars"][0]] * len(c["vocab"]["chars"])),
    "vocab-multichar": lambda c: c["vocab"]["chars"].__setitem__(0, "ab"),
    "vocab-unk-str": lambda c: c["vocab"].update(unk="yes"),
    "weights-shape": lambda c: c["weights"].update({"head.bias": torch.zeros(3)}),
    "weights-missing": lambda c: c["weights"].pop("head.bias"),
    "weights-int": lambda c: c["weights"].update({"head.bias": torch.zeros_like(c["weights"]["head.bias"],
                                                                                  dtype=torch.int64)}),
    "weights-list": lambda c: c.update(weights=[1, 2]),
}


@pytest.mark.parametrize("lie", list(LIES))
@pytest.mark.parametrize("command", ["eval", "generate", "info", "resume"])
def test_lying_checkpoints_are_refused(home: Path, tmp_path: Path, lie: str, command: str) -> None:
    path = _mutated(home, tmp_path, LIES[lie])
    args = {"eval": ["eval", "perplexity", "-m", path, home / "c.txt"],
            "generate": ["generate", "-m", path, "-n", "5", "--seed", "1"],
            "info": ["info", "-m", path],
            "resume": ["train", home / "c.txt", "-o", tmp_path / "r.pt", "--resume", path, "--max-steps", "9"]}[command]
    one_line_error(run(*args), 1, "lie.pt")


RESUME_LIES = {
    "step-negative": lambda c: c.update(step=-1),
    "step-str": lambda c: c.update(step="3"),
    "elapsed-nan": lambda c: c.update(elapsed=float("nan")),
    "rng-list": lambda c: c.update(rng={"torch": [1, 2, 3]}),
    "hidden-shape": lambda c: c.update(hidden=(torch.zeros(1, 4, 3), torch.zeros(1, 4, 3))),
    "batch-size-str": lambda c: c["train_config"].update(batch_size="32"),
    "lr-nan": lambda c: c["train_config"].update(lr=float("nan")),
    "train-config-extra": lambda c: c["train_config"].update(evil=1),
    "data-missing": lambda c: c.pop("data"),
}


@pytest.mark.parametrize("lie", list(RESUME_LIES))
def test_lying_training_state_is_refused_on_resume(home: Path, tmp_path: Path, lie: str) -> None:
    path = _mutated(home, tmp_path, RESUME_LIES[lie])
    r = run("train", home / "c.txt", "-o", tmp_path / "r.pt", "--resume", path, "--max-steps", "9")
    one_line_error(r, 1, "lie.pt", "cannot be resumed")
    assert run("info", "-m", path).exit_code == 0  # the model itself is fine: info still reads it


def test_non_finite_weights_are_refused_by_eval_and_generate(home: Path, tmp_path: Path) -> None:
    path = _mutated(home, tmp_path, lambda c: c["weights"]["head.bias"].__setitem__(0, float("nan")))
    one_line_error(run("eval", "perplexity", "-m", path, home / "c.txt"), 1, "non-finite weights")
    one_line_error(run("generate", "-m", path, "-n", "5"), 1, "non-finite weights")
    assert run("info", "-m", path).exit_code == 0


VALUES = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                   st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3),
                   st.lists(st.integers(min_value=-3, max_value=300), max_size=3),
                   st.builds(lambda *s: torch.zeros(*s), st.integers(0, 3), st.integers(0, 70)))


@settings(max_examples=60, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_property_mutated_checkpoints_load_or_fail_cleanly(home: Path, tmp_path: Path, data: st.DataObject) -> None:
    """Any field, at any depth of the plain-data part, set to any value: a load, model build and
    resume check either succeed or raise a domain error, quickly (the deadline is 5 s)."""
    ckpt = torch.load(home / "m.pt", weights_only=True)
    holders = {"": ckpt, "model_config": ckpt["model_config"], "vocab": ckpt["vocab"],
               "train_config": ckpt["train_config"], "weights": ckpt["weights"], "data": ckpt["data"]}
    where = data.draw(st.sampled_from(sorted(holders)))
    holder = holders[where]
    key = data.draw(st.sampled_from(sorted(holder)) | st.just("extra"))
    holder[key] = data.draw(VALUES)
    path = tmp_path / "prop.pt"
    torch.save(ckpt, path)
    try:
        model, vocab, loaded = checkpoint.load_model(path)
        assert model.config.vocab_size == vocab.size
        checkpoint.check_resume_fields(loaded, path)
    except CharrnnError as e:
        assert str(e) and "\n" not in str(e)


# 5. Numbers ----------------------------------------------------------------------------------------------

NUMBER_CASES = {
    "seed-negative": (["train", "--seed", "-1"], "--seed"),
    "seed-huge": (["train", "--seed", str(2**64)], "--seed"),
    "gen-seed-negative": (["generate", "--seed", "-5"], "--seed"),
    "weight-decay-nan": (["train", "--weight-decay", "nan"], "--weight-decay"),
    "clip-nan": (["train", "--clip", "nan"], "--clip"),
    "clip-inf": (["train", "--clip", "inf"], "--clip"),
    "lr-inf": (["train", "--lr", "inf"], "--lr"),
    "lr-zero": (["train", "--lr", "0"], "--lr"),
    "dropout-one": (["train", "--dropout", "1"], "--dropout"),
    "val-fraction-one": (["train", "--val-fraction", "1"], "--val-fraction"),
    "time-budget-nan": (["train", "--time-budget", "nan"], "--time-budget"),
    "hidden-huge": (["train", "--hidden", str(10**9)], "--hidden"),
    "layers-huge": (["train", "--layers", "100000"], "--layers"),
    "temperature-nan": (["generate", "--temperature", "nan"], "--temperature"),
    "top-p-zero": (["generate", "--top-p", "0"], "--top-p"),
    "top-p-nan": (["generate", "--top-p", "nan"], "--top-p"),
    "streams-zero": (["eval", "perplexity", "--streams", "0"], "--streams"),
}


@pytest.mark.parametrize("case", list(NUMBER_CASES))
def test_bad_numbers_are_usage_errors(home: Path, tmp_path: Path, case: str) -> None:
    args, needle = NUMBER_CASES[case]
    if args[0] == "train":
        args = [*args, str(home / "c.txt"), "-o", str(tmp_path / "n.pt"), "--max-steps", "1"]
    else:
        args = [*args, "-m", str(home / "m.pt")] + ([str(home / "c.txt")] if args[0] == "eval" else [])
    one_line_error(run(*args), 2, needle)
    assert not (tmp_path / "n.pt").exists()


def test_an_absurd_learning_rate_ends_as_the_non_finite_error(home: Path, tmp_path: Path) -> None:
    r = run("train", home / "c.txt", "-o", tmp_path / "n.pt", *TINY, "--max-steps", "6", "--lr", "1e30")
    one_line_error(r, 1, "non-finite or diverged", "--lr")
    assert not (tmp_path / "n.pt").exists()


def test_a_terrible_models_perplexity_overflows_to_inf(home: Path, tmp_path: Path) -> None:
    def terrible(c: dict) -> None:  # certain of one character, so every other costs ~2000 nats
        bias = c["weights"]["head.bias"]
        bias.zero_()
        bias[0] = 2000.0
    path = _mutated(home, tmp_path, terrible)
    r = run("eval", "perplexity", "-m", path, home / "c.txt")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines()[0] == "perplexity inf"
    r = run("eval", "perplexity", "-m", path, home / "c.txt", "--json")
    result = json.loads(r.stdout)
    assert result["perplexity"] is None and result["nats_per_char"] > 709


# 6. Honest reports ---------------------------------------------------------------------------------------

def test_resume_past_the_stopping_rule_writes_nothing(home: Path, tmp_path: Path) -> None:
    m = tmp_path / "m.pt"
    m.write_bytes((home / "m.pt").read_bytes())
    (tmp_path / "m.best.pt").write_bytes((home / "m.pt").read_bytes())
    before = {p.name: (digest(p), p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    r = run("train", home / "c.txt", "-o", m, "--resume", m, "--max-steps", "8")
    assert r.exit_code == 0, r.stderr
    assert "nothing to do" in r.stderr and "nothing saved" in r.stdout and "0 chars/s" not in r.stdout
    r = run("train", home / "c.txt", "-o", m, "--resume", m, "--max-steps", "8", "--json")
    result = json.loads(r.stdout)
    assert result["steps_this_run"] == 0 and result["chars_per_second"] is None
    assert result["checkpoint"] is None and result["best_checkpoint"] is None
    assert {p.name: (digest(p), p.stat().st_mtime_ns) for p in tmp_path.iterdir()} == before


def test_eval_warns_when_many_characters_are_unknown(home: Path, tmp_path: Path) -> None:
    (tmp_path / "mostly.txt").write_text("the time ZQXJ ZQXJ ZQXJ traveller\n" * 20)
    r = run("eval", "perplexity", "-m", home / "m.pt", tmp_path / "mostly.txt")
    assert r.exit_code == 0 and "unknown to the model" in r.stderr
    r = run("eval", "perplexity", "-m", home / "m.pt", home / "c.txt")
    assert r.exit_code == 0 and "unknown" not in r.stderr


def test_a_min_freq_that_leaves_nothing_names_the_option(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text("abcdefghij" * 3)
    one_line_error(run("train", tmp_path / "c.txt", "-o", tmp_path / "m.pt", "--min-freq", "1000", "--max-steps", "1"),
                   2, "--min-freq")


def test_the_non_finite_message_names_only_checkpoints_of_this_run(home: Path, tmp_path: Path) -> None:
    stale = tmp_path / "m.pt"
    stale.write_bytes(b"an older run's file")
    r = run("train", home / "c.txt", "-o", stale, *TINY, "--max-steps", "6", "--lr", "1e30")
    one_line_error(r, 1, "non-finite")
    assert "m.pt" not in r.stderr.splitlines()[-1]  # nothing good was saved by this run
    assert stale.read_bytes() == b"an older run's file"
    # a run that saved a good best checkpoint before diverging points at it
    r = run("train", home / "c.txt", "-o", tmp_path / "g.pt", *TINY, "--max-steps", "4", "--val-every", "2")
    assert r.exit_code == 0
    r = run("train", home / "c.txt", "-o", tmp_path / "g.pt", "--resume", tmp_path / "g.pt", "--max-steps", "12",
            "--lr", "1e30", "--val-every", "1")
    one_line_error(r, 1, "non-finite")


def test_a_cache_entry_with_changed_contents_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHARRNN_HOME", str(tmp_path / "home"))
    (tmp_path / "c.txt").write_text(text())
    args = ["train", tmp_path / "c.txt", "-o", tmp_path / "a.pt", *TINY, "--max-steps", "3", "--json"]
    first = run(*args)
    assert first.exit_code == 0, first.stderr
    [ids_file] = list((tmp_path / "home").rglob("ids-*.npy"))
    ids = np.load(ids_file, mmap_mode="r+")
    ids[:50] = ids[50:100].copy()  # same shape, same dtype, ids in range: only the contents differ
    ids.flush()
    del ids
    second = run(*args[:3], tmp_path / "b.pt", *args[4:])
    assert second.exit_code == 0, second.stderr
    assert json.loads(second.stdout)["train_loss"] == json.loads(first.stdout)["train_loss"]


# 7. Text and exit codes ----------------------------------------------------------------------------------

def test_a_nul_byte_far_into_the_text_is_refused(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_bytes(text().encode() * 300 + b"\x00tail\n")
    assert (tmp_path / "b.txt").stat().st_size > 65536
    one_line_error(run("train", tmp_path / "b.txt", "-o", tmp_path / "m.pt", "--max-steps", "1"), 1, "NUL")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32"])
def test_a_utf16_or_utf32_bom_names_the_encoding(tmp_path: Path, encoding: str) -> None:
    (tmp_path / "w.txt").write_bytes(text().encode(encoding))  # Python writes the BOM
    one_line_error(run("train", tmp_path / "w.txt", "-o", tmp_path / "m.pt", *TINY, "--max-steps", "1"), 1,
                   f"--encoding {encoding}")
    r = run("train", tmp_path / "w.txt", "-o", tmp_path / "m.pt", *TINY, "--max-steps", "1", "--encoding", encoding)
    assert r.exit_code == 0, r.stderr


CLICK_ERRORS = {
    "bad-int": ["generate", "-m", "{m}", "-n", "abc"],
    "missing-option": ["generate"],
    "dir-as-model": ["generate", "-m", "{d}"],
    "unknown-option": ["train", "{c}", "-o", "x.pt", "--no-such"],
    "bad-choice": ["train", "{c}", "-o", "x.pt", "--cell", "transformer"],
    "missing-checkpoint": ["eval", "perplexity", "-m", "{d}/nope.pt", "{c}"],
    "unknown-command": ["trian"],
    "extra-argument": ["info", "-m", "{m}", "surplus"],
}


@pytest.mark.parametrize("case", list(CLICK_ERRORS))
def test_usage_errors_are_one_line_exit_2(home: Path, case: str) -> None:
    args = [a.format(m=home / "m.pt", d=home, c=home / "c.txt") for a in CLICK_ERRORS[case]]
    r = run(*args)
    one_line_error(r, 2)
    assert len(r.stderr.strip().splitlines()) == 1


def test_usage_errors_are_one_line_in_a_real_process(home: Path) -> None:
    p = subprocess.run([*CHARRNN, "generate", "-m", str(home / "m.pt"), "-n", "x"], capture_output=True, text=True)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr == ("Error: Invalid value for '-n' / '--length': 'x' is not a valid integer. "
                        "(see 'charrnn generate --help')\n")


def test_a_pipe_as_corpus_is_read_once_and_trains(home: Path, tmp_path: Path) -> None:
    p = shell(charrnn_cmd("train", "<CORPUS>", "-o", "m.pt", *TINY, "--max-steps", "2").replace(
        "'<CORPUS>'", f"<(cat {shlex.quote(str(home / 'c.txt'))})"), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert checkpoint.load(tmp_path / "m.pt")["data"]["chars"] > 0


def test_a_fifo_as_checkpoint_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "m.pt")  # nobody writes it: opening it to read would block forever
    for args in (["info", "-m", tmp_path / "m.pt"], ["generate", "-m", tmp_path / "m.pt", "-n", "3"]):
        one_line_error(run(*args), 2, "not a regular file")


@pytest.mark.parametrize("command", ["score", "show", "corpus-list"])
def test_every_json_output_stays_valid_on_an_ascii_stdout(tmp_path: Path, command: str) -> None:
    (tmp_path / "u.txt").write_text("café naïve résumé\n" * 100, encoding="utf-8")
    r = run("train", tmp_path / "u.txt", "-o", tmp_path / "u.pt", *TINY, "--max-steps", "2")
    assert r.exit_code == 0, r.stderr
    args = {"score": ["eval", "score", "-m", "u.pt", "u.txt", "--json"],
            "show": ["eval", "show", "-m", "u.pt", "u.txt", "--json", "--max-chars", "40"],
            "corpus-list": ["corpus", "list", "--json"]}[command]
    p = shell(charrnn_cmd(*args), tmp_path, {"PYTHONIOENCODING": "ascii"})
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    values = [json.loads(line) for line in p.stdout.splitlines()]  # valid JSON, \u escapes
    assert values
    if command != "corpus-list":
        assert "é" in json.dumps(values, ensure_ascii=False)
