"""Fixtures of the integration tests that drive `rangekv dev` as a user does.

Real-process clusters of the other tests come from the suite-wide `clusters`
fixture (tests/testkit, registered in tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dev_process import DevCluster


@pytest.fixture(scope="module")
def dev_cluster(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[DevCluster]:
    """`rangekv dev` started once for the module that asks for it (each module its
    own), stopped with Ctrl-C at the end and nothing left running."""
    name = request.module.__name__.removeprefix("test_")
    cluster = DevCluster(tmp_path_factory.mktemp(name) / "data")
    try:
        yield cluster.start()
    finally:
        cluster.close()
