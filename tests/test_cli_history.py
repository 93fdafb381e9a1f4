"""End-to-end: fine-tuning, --patience and stop_reason, the live log, `info` history, `plot` and `eval show`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from charrnn.cli import cli
from charrnn.data.vocab import Vocab
from charrnn.model import checkpoint

TINY = ["--hidden", "16", "--layers", "1", "--embed-dim", "8", "-b", "4", "-t", "16", "--val-every", "4", "-q"]
BASE_TEXT = "the time traveller smiled and we sat about the fire in the room while he spoke\n" * 12
NEW_TEXT = "Zebras quietly vex jumping wolves; 42 OK!\n" * 12


def run(*args: str, input: str | bytes | None = None):
    return CliRunner().invoke(cli, list(args), input=input)


def assert_clean_error(result, code: int, *needles: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == "" and "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("base")
    (d / "base.txt").write_text(BASE_TEXT)
    # --val-share 1: every --val-every step validates (a validation of these tiny steps costs more than 4 of them)
    r = run("train", str(d / "base.txt"), "-o", str(d / "base.pt"), *TINY, "--max-steps", "8", "--val-share", "1")
    assert r.exit_code == 0, r.stderr
    return d / "base.pt"


@pytest.fixture
def new_text(tmp_path: Path) -> Path:
    p = tmp_path / "new.txt"
    p.write_text(NEW_TEXT)
    return p


def test_train_writes_the_live_log_and_stop_reason(tmp_path: Path, new_text: Path) -> None:
    out = tmp_path / "m.pt"
    # --val-share 1: every --val-every steps, however long validation takes against these tiny steps
    r = run("train", str(new_text), "-o", str(out), *TINY, "--max-steps", "20", "--json", "--val-share", "1")
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["stop_reason"] == "steps"
    lines = [json.loads(x) for x in (tmp_path / "m.pt.log.jsonl").read_text().splitlines()]
    assert {x["kind"] for x in lines} == {"train", "val"}
    assert [x["step"] for x in lines if x["kind"] == "val"] == [4, 8, 12, 16, 20]
    assert lines[-1]["loss"] == summary["val_loss"]
    r = run("train", str(new_text), "-o", str(out), *TINY, "--max-steps", "4")
    assert "stopped: --max-steps reached" in r.stdout


def test_patience_stops_the_run_and_says_so(tmp_path: Path, new_text: Path) -> None:
    # A learning rate far too high: validation gets no better after the first, so patience 2 ends the run.
    r = run("train", str(new_text), "-o", str(tmp_path / "m.pt"), *TINY, "--max-steps", "400", "--val-every", "1",
            "--patience", "2", "--optimizer", "sgd", "--lr", "1e-30", "--json")
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["stop_reason"] == "patience" and summary["steps"] < 400
    assert (tmp_path / "m.best.pt").exists()


@pytest.mark.parametrize("value", ["0", "-1"])
def test_patience_must_be_positive(tmp_path: Path, new_text: Path, value: str) -> None:
    r = run("train", str(new_text), "-o", str(tmp_path / "m.pt"), *TINY, "--max-steps", "2", "--patience", value)
    assert_clean_error(r, 2, "--patience", "x>=1")


def test_fine_tune_adds_new_characters(tmp_path: Path, base: Path, new_text: Path) -> None:
    out = tmp_path / "ft.pt"
    r = CliRunner().invoke(cli, ["train", str(new_text), "-o", str(out), "--init-from", str(base), "-b", "4", "-t",
                                 "16", "--max-steps", "6", "--val-every", "3", "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["steps"] == 6  # a fresh step count
    assert "adding" in r.stderr and "'Z'" in r.stderr and "'4'" in r.stderr
    old, new = checkpoint.load(base), checkpoint.load(out)
    vocab = Vocab.from_dict(new["vocab"])
    assert set(vocab.chars) == set(BASE_TEXT) | set(NEW_TEXT)
    assert new["model_config"] == {**old["model_config"], "vocab_size": vocab.size}
    assert new["step"] == 6 and new["init_from"] == str(base)
    assert new["optimizer"]["state"][0]["step"].item() == 6  # a fresh optimizer
    info = run("info", "-m", str(out))
    assert f"fine-tuned from {base}" in info.stdout and "history: 6 steps" in info.stdout


def test_fine_tune_keeps_old_rows_at_the_start(tmp_path: Path, base: Path, new_text: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The model the trainer starts from holds the base's rows bit for bit (a snapshot taken as
    it is built, before the first step), and new rows that are not all zero."""
    from charrnn.training import train as train_module

    old = checkpoint.load(base)
    seen = {}
    real = train_module.start_model

    def spy(b, v):
        model = real(b, v)
        seen["state"] = {k: t.clone() for k, t in model.state_dict().items()}
        seen["vocab"] = v
        return model

    monkeypatch.setattr(train_module, "start_model", spy)
    r = run("train", str(new_text), "-o", str(tmp_path / "ft.pt"), "--init-from", str(base), "-b", "4", "-t", "16",
            "--max-steps", "1", "-q")
    assert r.exit_code == 0, r.stderr
    old_vocab = Vocab.from_dict(old["vocab"])
    idx = torch.from_numpy(old_vocab.id_map(seen["vocab"]))
    for name in ("embed.weight", "head.weight", "head.bias"):
        assert torch.equal(seen["state"][name][idx], old["weights"][name]), name
    new_rows = [i for i in range(seen["vocab"].size) if i not in set(idx.tolist())]
    assert new_rows and bool(seen["state"]["embed.weight"][new_rows].abs().sum() > 0)


def test_fine_tune_keep_vocab_warns_and_maps_to_unk(tmp_path: Path, base: Path, new_text: Path) -> None:
    out = tmp_path / "ft.pt"
    r = run("train", str(new_text), "-o", str(out), "--init-from", str(base), "--keep-vocab", "-b", "4", "-t", "16",
            "--max-steps", "2")
    assert r.exit_code == 0, r.stderr
    assert "warning:" in r.stderr and "<unk>" in r.stderr and "'Z'" in r.stderr
    assert checkpoint.load(out)["vocab"] == checkpoint.load(base)["vocab"]


def test_fine_tune_errors(tmp_path: Path, base: Path, new_text: Path) -> None:
    out = str(tmp_path / "ft.pt")
    assert_clean_error(run("train", str(new_text), "-o", out, "--init-from", str(new_text), "--max-steps", "2"), 1,
                       "not a charrnn checkpoint")
    assert_clean_error(run("train", str(new_text), "-o", out, "--init-from", str(tmp_path / "no.pt")), 2,
                       "does not exist")
    assert_clean_error(run("train", str(new_text), "-o", out, "--init-from", str(base), "--hidden", "64",
                           "--max-steps", "2"), 2, "--hidden 64 differs", "architecture")
    assert_clean_error(run("train", str(new_text), "-o", out, "--init-from", str(base), "--resume", str(base)), 2,
                       "give one")
    assert_clean_error(run("train", str(new_text), "-o", out, "--keep-vocab", "--max-steps", "2"), 2,
                       "--keep-vocab only applies with --init-from")
    assert_clean_error(run("train", str(new_text), "-o", str(base), "--init-from", str(base)), 2,
                       "is the base model (--init-from)")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    r = run("train", str(empty), "-o", out, "--init-from", str(base), "--max-steps", "2")
    assert r.exit_code == 1 and "empty" in r.stderr and "Traceback" not in r.stderr


def test_info_shows_the_history(base: Path) -> None:
    r = run("info", "-m", str(base))
    assert r.exit_code == 0
    assert "history: 8 steps" in r.stdout and "best validation" in r.stdout
    h = json.loads(run("info", "-m", str(base), "--json").stdout)["history"]
    assert h["steps"] == 8 and h["val_records"] == 2 and h["best_val_loss"] is not None


def test_plot_in_the_terminal_and_to_files(tmp_path: Path, base: Path) -> None:
    pytest.importorskip("plotext")
    pytest.importorskip("matplotlib")
    log = base.with_name("base.pt.log.jsonl")
    r = run("plot", str(base), str(log), "--width", "70", "--height", "18")
    assert r.exit_code == 0, r.stderr
    assert "base.pt train" in r.stdout and "base.pt.log.jsonl val" in r.stdout and "\x1b[" not in r.stdout
    assert len(r.stdout.splitlines()) == 18
    r = run("plot", str(base), "--x", "chars", "--color", "always", "--width", "60", "--height", "15")
    assert "\x1b[" in r.stdout and "characters trained on" in r.stdout
    for suffix, magic in ((".png", b"\x89PNG"), (".svg", b"<?xml")):
        out = tmp_path / f"c{suffix}"
        r = run("plot", str(base), "-o", str(out), "--x", "seconds")
        assert r.exit_code == 0 and r.stdout == "" and f"wrote {out}" in r.stderr
        assert out.read_bytes().startswith(magic)


def test_plot_errors(tmp_path: Path, base: Path) -> None:
    old = tmp_path / "old.pt"
    ckpt = checkpoint.load(base)
    del ckpt["history"]
    checkpoint.save(ckpt, old)
    assert_clean_error(run("plot", str(old)), 1, "no training history")
    text = tmp_path / "t.txt"
    text.write_text("hello\n")
    assert_clean_error(run("plot", str(text)), 1, "neither a charrnn checkpoint nor a training log")
    assert_clean_error(run("plot", str(tmp_path / "absent.pt")), 2, "does not exist")
    assert_clean_error(run("plot", str(base), "-o", str(tmp_path / "c.gif")), 2, ".png or .svg")
    assert_clean_error(run("plot"), 2, "Missing argument")
    assert_clean_error(run("plot", str(base), "--x", "minutes"), 2, "minutes")


def test_plot_without_the_libraries_says_what_to_install(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "plotext", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert_clean_error(run("plot", str(base)), 1, "needs plotext", "charrnn[plot]")
    assert_clean_error(run("plot", str(base), "-o", "x.png"), 1, "needs matplotlib")


def test_eval_show_json_lines(base: Path) -> None:
    r = run("eval", "show", "-m", str(base), "--json", "-", input="the fire\n")
    assert r.exit_code == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert "".join(x["char"] for x in lines) == "the fire\n"
    assert lines[0]["bits"] is None and all(x["bits"] > 0 for x in lines[1:])
    assert all(len(x["top"]) == 5 for x in lines[1:])


def test_eval_show_terminal_view(base: Path) -> None:
    r = run("eval", "show", "-m", str(base), "-", input="the fire\n")
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert lines[1:2] == ["the fire↵"] and "surprise (bits)" in lines[0] and len(lines) == 3
    assert lines[2].startswith("mean ") and lines[2].endswith(" bits/char over 8 scored characters")
    assert "no colours" in r.stderr
    r = run("eval", "show", "-m", str(base), "--color", "always", "-", input="the fire\n")
    assert "\x1b[" in r.stdout and "48;2;" in r.stdout and r.stderr == ""


def test_eval_show_html_escapes_script(tmp_path: Path, base: Path) -> None:
    page = tmp_path / "p.html"
    r = run("eval", "show", "-m", str(base), "--html", str(page), "-", input="<script>alert(1)</script>\n")
    assert r.exit_code == 0 and r.stdout == "" and "wrote" in r.stderr
    html = page.read_text()
    assert "<script" not in html and "&lt;script&gt;" not in html  # each character is its own span
    assert "&lt;</span>" in html and "default-src 'none'" in html


def test_eval_show_max_chars(base: Path) -> None:
    r = run("eval", "show", "-m", str(base), "--json", "--max-chars", "5", "-", input="the fire is warm\n")
    assert len(r.stdout.splitlines()) == 5 and "using the first 5 characters" in r.stderr
    r = run("eval", "show", "-m", str(base), "--json", "--max-chars", "50", "-", input="the fire\n")
    assert len(r.stdout.splitlines()) == 9 and "showing" not in r.stderr


def test_eval_show_errors(tmp_path: Path, base: Path) -> None:
    assert_clean_error(run("eval", "show", "-m", str(base), "-", input=""), 1, "empty")
    assert_clean_error(run("eval", "show", "-m", str(base), "--max-chars", "0", "-", input="a"), 2, "--max-chars")
    assert_clean_error(run("eval", "show", "-m", str(base), "--json", "--html", "x.html", "-", input="a"), 2,
                       "not both")
    assert_clean_error(run("eval", "show", "-m", str(tmp_path / "none.pt"), "-", input="a"), 2, "does not exist")
    assert_clean_error(run("eval", "show", "-m", str(base), "--html", str(tmp_path / "no" / "p.html"), "-",
                           input="a"), 2, "does not exist")


def test_eval_show_into_a_closed_pipe(base: Path) -> None:
    text = "the fire " * 2000
    p = subprocess.run(f"'{sys.executable}' -m charrnn eval show -m '{base}' --json - | head -n 3",
                       shell=True, capture_output=True, text=True, input=text, executable="/bin/bash", timeout=120)
    assert len(p.stdout.splitlines()) == 3 and "Traceback" not in p.stderr, p.stderr


def test_eval_show_html_is_bounded(tmp_path: Path, base: Path) -> None:
    page = tmp_path / "p.html"
    r = run("eval", "show", "-m", str(base), "--html", str(page), "--max-chars", "100001", "-", input="the fire\n")
    assert_clean_error(r, 2, "at most 100,000 characters", "--max-chars 100,001")
    assert not page.exists()
    r = run("eval", "show", "-m", str(base), "--json", "--max-chars", "1000000", "-", input="the fire\n")
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 9  # no bound without --html


def test_eval_show_streams_blocks(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import charrnn.inference.surprise

    text = "the fire burns\n" * 20
    args = ["eval", "show", "-m", str(base), "--json", "-"]
    whole = [json.loads(x) for x in run(*args, input=text).stdout.splitlines()]
    monkeypatch.setattr(charrnn.inference.surprise, "BLOCK", 7)
    blocks = [json.loads(x) for x in run(*args, input=text).stdout.splitlines()]
    assert [x["char"] for x in blocks] == list(text) and len(blocks) == len(whole)
    assert all(abs(a["bits"] - b["bits"]) < 1e-4 for a, b in zip(whole[1:], blocks[1:], strict=True))
    view = run("eval", "show", "-m", str(base), "-", input=text).stdout.splitlines()
    assert view[1:-1] == ["the fire burns↵"] * 20 and f"over {len(text) - 1} scored" in view[-1]


def test_eval_show_marks_characters_that_act(tmp_path: Path, base: Path) -> None:
    """C1 controls, line separators and bidi overrides reach neither the terminal nor the page raw."""
    text = "the \u202efire\x9b31m \x85burns\u2028\n"
    (tmp_path / "odd.txt").write_text(text, encoding="utf-8")
    p = subprocess.run([sys.executable, "-m", "charrnn", "eval", "show", "-m", str(base), str(tmp_path / "odd.txt"),
                        "--color", "always"], capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode("utf-8")
    for c in "\u202e\x9b\x85\u2028":
        assert c not in out
    assert "\u27e6U+202E\u27e7" in out and "\u27e6U+009B\u27e7" in out and "\u27e6U+2028\u27e7" in out
    page = tmp_path / "odd.html"
    assert run("eval", "show", "-m", str(base), str(tmp_path / "odd.txt"), "--html", str(page)).exit_code == 0
    html = page.read_text(encoding="utf-8")
    assert "\u202e" not in html and "\x85" not in html and "\u27e6U+202E\u27e7" in html
