"""Faults: a process killed while saving, and argument validation under arbitrary values."""

from __future__ import annotations

import math
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charrnn.cli import cli

SAVER = r"""
import sys, torch
from charrnn.model import checkpoint
path = sys.argv[1]
i = 0
while True:
    i += 1
    # about 8 MB per save, so that a kill lands mid-write often
    checkpoint.save({"format": "charrnn", "version": 1, "model_config": {}, "vocab": {}, "step": i,
                     "weights": {"w": torch.full((2_000_000,), float(i))}}, path)
    print(i, flush=True)
"""


def test_sigkill_while_saving_never_leaves_a_truncated_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    rng = random.Random(0)
    last_step = 0
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        proc.stdout.readline()  # at least one complete save exists
        time.sleep(rng.uniform(0.0, 0.3))
        proc.kill()
        proc.wait()
        # must never raise: old or new file, never a partial one (a fake payload: read it raw)
        ckpt = torch.load(path, weights_only=True)
        step = ckpt["step"]
        assert ckpt["weights"]["w"][0].item() == step and ckpt["weights"]["w"][-1].item() == step
        assert step >= 1
        last_step = step
    assert last_step >= 1
    # leftovers of killed writes are temporary files beside it, never the checkpoint's own name
    assert all(p.name == "m.pt" or p.name.endswith(".tmp") for p in tmp_path.iterdir())


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("m")
    (d / "c.txt").write_text("abcabcabd hello world\n" * 40)
    r = CliRunner().invoke(cli, ["train", str(d / "c.txt"), "-o", str(d / "m.pt"), "--hidden", "8", "--layers", "1",
                                 "-b", "4", "-t", "8", "--max-steps", "2", "-q"])
    assert r.exit_code == 0, r.stderr
    return d / "m.pt"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(temperature=st.floats(allow_nan=True, allow_infinity=True, width=32),
       top_k=st.integers(min_value=-5, max_value=200), top_p=st.floats(min_value=-1, max_value=2, width=32),
       length=st.integers(min_value=-3, max_value=20))
def test_generate_argument_validation(model: Path, temperature: float, top_k: int, top_p: float, length: int) -> None:
    args = ["generate", "-m", str(model), "-n", str(length), "--seed", "1", "--temperature", repr(temperature),
            "--top-k", str(top_k), "--top-p", repr(top_p), "--prefix", "ab"]
    r = CliRunner().invoke(cli, args)
    valid = temperature > 0 and top_k >= 1 and 0 < top_p <= 1 and length >= 0
    if valid and math.isfinite(temperature):
        assert r.exit_code == 0, r.stderr
        assert len(r.stdout) == 2 + length + 1
    elif not valid:
        assert r.exit_code == 2, (args, r.stderr)
        assert r.stdout == "" and "Traceback" not in r.stderr and r.stderr.startswith("Error:")
