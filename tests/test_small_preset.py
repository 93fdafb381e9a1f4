"""The small model (the default) follows the precision: in bf16 the options of runconfig.SMALL_BF16 unless
given, said on stderr; fp32, other presets, a resume and a fine-tune are left alone. The bf16 path runs on
every machine (bf16 is emulated where the CPU lacks it: slower, not different)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from charrnn.config import PRESETS, SMALL_BF16
from charrnn.data.corpora import builtin_text
from charrnn.model import checkpoint


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "charrnn", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("small")
    (home / "c.txt").write_text(builtin_text("pydoc")[:4000])
    return home


def trained(home: Path, name: str, *args: str) -> tuple[dict, str]:
    r = run_cli("train", "c.txt", "-o", name, "--max-steps", "1", "--val-every", "1", *args, cwd=home)
    assert r.returncode == 0, r.stderr
    ckpt = checkpoint.load(home / name)
    return {**ckpt["model_config"], **ckpt["train_config"]}, r.stderr


def test_bf16_takes_the_bf16_small_model_and_says_so(home: Path) -> None:
    config, stderr = trained(home, "b.pt", "--precision", "bf16")
    assert {k: config[k] for k in SMALL_BF16} == SMALL_BF16
    assert "the small model for bf16: --hidden 512, --dropout 0.1, --optimizer adamw" in stderr
    assert stderr.count("the small model for bf16") == 1


def test_fp32_keeps_the_fp32_small_model(home: Path) -> None:
    config, stderr = trained(home, "f.pt", "--precision", "fp32")
    assert config["hidden"] == PRESETS["small"]["hidden"] == 384 and config["dropout"] == 0.0
    assert (config["optimizer"], config["weight_decay"], config["average"]) == ("adam", 0.0, "none")
    assert "small model for bf16" not in stderr


def test_given_options_win_and_only_the_rest_are_said(home: Path) -> None:
    config, stderr = trained(home, "g.pt", "--precision", "bf16", "--hidden", "32", "--average", "none",
                             "--preset", "small")
    assert (config["hidden"], config["average"], config["optimizer"]) == (32, "none", "adamw")
    line = next(x for x in stderr.splitlines() if "small model for bf16" in x)
    assert "--hidden" not in line and "--average" not in line and "--weight-decay 0.1" in line


def test_other_presets_resume_and_fine_tune_are_left_alone(home: Path) -> None:
    config, stderr = trained(home, "t.pt", "--precision", "bf16", "--preset", "tiny")
    assert config["hidden"] == 128 and config["optimizer"] == "adam" and "small model" not in stderr
    trained(home, "r.pt", "--precision", "fp32", "--hidden", "16")
    r = run_cli("train", "c.txt", "-o", "r.pt", "--resume", "r.pt", "--max-steps", "2", "--precision", "bf16",
                cwd=home)
    assert r.returncode == 0, r.stderr
    ckpt = checkpoint.load(home / "r.pt")
    assert ckpt["model_config"]["hidden"] == 16 and ckpt["train_config"]["optimizer"] == "adam"
    assert "small model" not in r.stderr
    config, stderr = trained(home, "ft.pt", "--precision", "bf16", "--init-from", "r.pt")
    assert config["hidden"] == 16 and "small model" not in stderr
