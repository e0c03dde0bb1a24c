"""Pytest glue for real-process clusters: cleanup that always runs, logs on failure.

A failed integration test is only debuggable with what the nodes logged, and
the nodes are other processes: so every cluster a test creates is remembered
on the test item, its log tails are attached to the failure report (shown
with the traceback), and its processes are killed in the fixture's finalizer
whatever happened.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from raftnode_cluster import ClusterFactory, RaftnodeCluster

CLUSTERS = pytest.StashKey[list[RaftnodeCluster]]()


@pytest.fixture
def raftnode_cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ClusterFactory]:
    """A factory: `raftnode_cluster(n=3, args=[...], env={...})` -> a started cluster."""
    clusters: list[RaftnodeCluster] = []
    request.node.stash[CLUSTERS] = clusters

    def make(
        n: int = 3,
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        start: bool = True,
    ) -> RaftnodeCluster:
        cluster = RaftnodeCluster(tmp_path / f"cluster{len(clusters)}", n, args=args, env=env)
        clusters.append(cluster)
        if start:
            cluster.start()
        return cluster

    try:
        yield make
    finally:
        for cluster in clusters:
            cluster.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for cluster in item.stash.get(CLUSTERS, []):
            report.sections.append(
                (f"raftnode logs: {cluster.base_dir.name} ({report.when})", cluster.log_tails())
            )
    return report
