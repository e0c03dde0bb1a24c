"""The test kit's own promises, through real processes (tests/testkit).

A developer's shell must not change what a test runs: a cluster's processes
get the RANGEKV_ variables the test gives them and none of the caller's.
"""

from __future__ import annotations

import pytest
from testkit.cluster import NODES_ONLY
from testkit.fixtures import ClusterFactory
from testkit.metrics import metric_value


async def test_processes_do_not_inherit_the_callers_rangekv_variables(
    clusters: ClusterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANGEKV_FSM_SYNC_MODE", "sync")  # as if set in the shell
    cluster = await clusters.start(NODES_ONLY, node_env={3: {"RANGEKV_FSM_SYNC_MODE": "sync"}})
    modes = {}
    for node_id in cluster.node_ids:
        text = await cluster.metrics(cluster.node(node_id))
        modes[node_id] = [
            m
            for m in ("sync", "nosync")
            if metric_value(text, "rangekv_fsm_apply_sync_mode", mode=m)
        ]
    # Nodes 1 and 2 run the default; node 3 was given the variable by the test.
    assert modes == {1: ["nosync"], 2: ["nosync"], 3: ["sync"]}
