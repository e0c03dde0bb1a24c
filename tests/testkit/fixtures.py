"""The pytest glue of the kit: clusters that are always torn down, logs on failure.

A failed test against real processes is only debuggable with what those
processes logged: every cluster a test makes through the `clusters` fixture
is remembered on the test item, its log tails are attached to the failure
report (shown with the traceback), and it is killed at teardown whatever
happened. Registered for the whole suite by tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from testkit.cluster import Cluster, ClusterSpec

__all__ = ["ClusterFactory", "clusters"]

CLUSTERS = pytest.StashKey[list[Cluster]]()


class ClusterFactory:
    """Makes the clusters of one test, each in a folder of its own under `base`."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.made: list[Cluster] = []

    def create(self, spec: ClusterSpec | None = None, **fields: Any) -> Cluster:
        """A cluster that is not started yet; `fields` override `spec`'s (ClusterSpec)."""
        spec = replace(spec or ClusterSpec(), **fields)
        cluster = Cluster(self.base / f"cluster{len(self.made)}", spec)
        self.made.append(cluster)
        return cluster

    async def start(self, spec: ClusterSpec | None = None, **fields: Any) -> Cluster:
        """A started cluster: `await clusters.start(n_meta=0, n_gateways=0)`."""
        cluster = self.create(spec, **fields)
        await cluster.start()
        return cluster

    async def close(self) -> None:
        for cluster in self.made:
            await cluster.close()


@pytest.fixture
async def clusters(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[ClusterFactory]:
    """A factory of real-process clusters, all killed at the end of the test."""
    factory = ClusterFactory(tmp_path)
    request.node.stash[CLUSTERS] = factory.made
    try:
        yield factory
    finally:
        try:
            await factory.close()
        finally:
            for cluster in factory.made:
                cluster.kill_all_now()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for cluster in item.stash.get(CLUSTERS, []):
            report.sections.append(
                (f"cluster logs: {cluster.base.name} ({report.when})", cluster.log_tails())
            )
    return report
