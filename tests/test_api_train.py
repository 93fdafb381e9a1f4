"""charrnn.train: the same run as `charrnn train` (the same weights, the same result fields), its events
on a callback, nothing printed, and domain errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

import charrnn
from charrnn.cli import cli

TEXT = "the time traveller smiled and we sat about the fire\n" * 40
TINY = dict(hidden=16, embed_dim=8, batch_size=4, num_steps=16, max_steps=5, val_every=2, precision="fp32",
            threads=1, seed=3, no_cache=True, val_share=1.0)


def as_args(options: dict) -> list[str]:
    args = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        args += [flag] if value is True else [flag, str(value)]
    return args


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["weights"]


def test_train_writes_what_the_command_writes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    r = CliRunner().invoke(cli, ["train", str(corpus), "-o", str(tmp_path / "cli.pt"), "--json", "-q", *as_args(TINY)])
    assert r.exit_code == 0, r.stderr
    events: list[charrnn.CallbackEvent] = []
    result = charrnn.train(corpus, tmp_path / "api.pt", callback=events.append, **TINY)
    assert capsys.readouterr() == ("", "")  # the library prints nothing
    a, b = weights(tmp_path / "cli.pt"), weights(tmp_path / "api.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    printed = json.loads(r.stdout)
    assert printed.keys() == result.to_dict().keys()
    same = ("steps", "epochs", "train_loss", "val_loss", "precision", "stop_reason", "threads", "weights_from")
    assert {k: printed[k] for k in same} == {k: result.to_dict()[k] for k in same}
    assert result.checkpoint == str(tmp_path / "api.pt")
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds.count("validate") == 3 and "save" in kinds
    assert [e.step for e in events if e.kind == "validate"] == [2, 4, 5]
    assert all(e.progress is not None for e in events if e.kind == "step")


def test_resume_and_the_bf16_small_model_follow_the_command_rules(tmp_path: Path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    said: list[str] = []
    charrnn.train(corpus, tmp_path / "m.pt", callback=lambda e: said.append(e.text or ""),
                  **{**TINY, "precision": "bf16", "max_steps": 2})
    saved = torch.load(tmp_path / "m.pt", map_location="cpu", weights_only=True)
    assert saved["train_config"]["optimizer"] == "adamw" and saved["train_config"]["average"] == "ema"
    assert saved["model_config"]["hidden"] == 16  # given: the preset's 512 does not override it
    assert any("the small model for bf16" in s for s in said)
    result = charrnn.train(corpus, tmp_path / "m.pt", resume=tmp_path / "m.pt", max_steps=4, threads=1)
    assert result.steps == 4 and result.precision == "bf16"


def test_errors_are_domain_exceptions(tmp_path: Path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    with pytest.raises(charrnn.UsageError, match="unknown training option 'hiden'"):
        charrnn.train(corpus, tmp_path / "m.pt", hiden=3)
    with pytest.raises(charrnn.UsageError, match="give one"):
        charrnn.train(corpus, tmp_path / "m.pt", resume="a.pt", init_from="b.pt")
    with pytest.raises(charrnn.UsageError):
        charrnn.train(corpus, tmp_path / "m.pt", max_steps=0, **{k: v for k, v in TINY.items() if k != "max_steps"})
    with pytest.raises(charrnn.CharrnnError):
        charrnn.train(tmp_path / "missing.txt", tmp_path / "m.pt", **TINY)


def test_the_command_and_the_library_have_the_same_defaults() -> None:
    """`charrnn train`'s options default to what charrnn.train takes when an option is left out."""
    from charrnn.cli.train_cmd import train as command
    from charrnn.training.prepare import OPTION_DEFAULTS

    def default(p: Any) -> Any:
        value = p.default
        if value is None or type(value).__name__ == "Sentinel":  # click's "no default"
            return False if getattr(p, "is_flag", False) else None
        return value

    defaults = {("input" if p.name == "input_" else p.name): default(p) for p in command.params}
    library = {**OPTION_DEFAULTS, "delimiter": OPTION_DEFAULTS["delimiter"].encode("unicode_escape").decode()}
    assert {k: defaults[k] for k in OPTION_DEFAULTS} == library
    assert set(defaults) - set(OPTION_DEFAULTS) == {"corpus", "output", "as_json", "quiet", "nproc"}
