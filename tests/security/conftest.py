"""The `secure_cluster` fixture: one started secure cluster per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from secure_cluster import LoopThread, SecureCluster

from rangekv.cli.dev import wait_until_serving


@pytest.fixture(scope="module")
def secure_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureCluster]:
    loop = LoopThread()
    cluster = SecureCluster(tmp_path_factory.mktemp("secure"), loop)
    try:
        loop.run(cluster.cluster.start())
        loop.run(wait_until_serving(cluster.gateway.address, cluster.lc.client_channels()))
        yield cluster
    finally:
        loop.run(cluster.cluster.close())
        loop.close()
