"""Every test runs with its own CHARRNN_HOME, so that no test reads or fills the user's cache, and
Hypothesis draws the same examples on every run (a deterministic suite).

`--precision auto` picks bf16 on a CPU with native bfloat16 and fp32 elsewhere. Tests that compare
runs exactly pin fp32; to run the suite as each kind of CPU would, force the detection with the
environment variable that charrnn.model.network.native_bf16 reads (subprocesses inherit it):

    CHARRNN_NATIVE_BF16=1 pytest ...    # auto picks bf16 (emulated where the CPU lacks it)
    CHARRNN_NATIVE_BF16=0 pytest ...    # auto picks fp32
The header of every run says which way auto goes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

settings.register_profile("deterministic", derandomize=True, print_blob=True)
settings.load_profile("deterministic")


def pytest_report_header(config: pytest.Config) -> str:
    import torch

    from charrnn.model.network import NATIVE_BF16_ENV, resolve_precision

    forced = os.environ.get(NATIVE_BF16_ENV)
    how = f"forced by {NATIVE_BF16_ENV}={forced}" if forced else f"from the CPU flags; {NATIVE_BF16_ENV} unset"
    return f"charrnn: --precision auto picks {resolve_precision('auto', torch.device('cpu'))} on this CPU ({how})"


@pytest.fixture(scope="session", autouse=True)
def charrnn_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHARRNN_HOME", str(tmp_path_factory.mktemp("charrnn-home")))
        yield
