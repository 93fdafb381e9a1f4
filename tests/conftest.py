"""Every test runs with its own CHARRNN_HOME, so that no test reads or fills the user's cache."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def charrnn_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHARRNN_HOME", str(tmp_path_factory.mktemp("charrnn-home")))
        yield
