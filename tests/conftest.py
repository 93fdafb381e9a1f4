"""Every test runs with its own CHARRNN_HOME, so that no test reads or fills the user's cache, and
Hypothesis draws the same examples on every run (a deterministic suite)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import settings

settings.register_profile("deterministic", derandomize=True, print_blob=True)
settings.load_profile("deterministic")


@pytest.fixture(scope="session", autouse=True)
def charrnn_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHARRNN_HOME", str(tmp_path_factory.mktemp("charrnn-home")))
        yield
