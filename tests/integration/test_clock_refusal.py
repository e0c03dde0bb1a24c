"""A node whose clock runs beyond the maximum offset is cut off by its peers, over
real processes: its raft traffic is refused and counted, never absorbed.

The in-process test (test_scan_snapshot.py) shows the refusal logic; this one
shows the real path carries it: the sender's clock on every raft stream batch,
the receiving transport's check, the counter an operator sees, and the healthy
nodes' clocks left where they were.
"""

from __future__ import annotations

import time

from testkit.cluster import NODES_ONLY
from testkit.fixtures import ClusterFactory
from testkit.metrics import metric_value
from testkit.replica_client import ReplicaClient
from testkit.waiting import async_wait_for

from rangekv.common.clock import ENV_VAR as CLOCK_ENV

#: 2.5 times the default maximum clock offset (0.5 s).
AHEAD_MS = 1250


async def test_peers_refuse_a_node_whose_clock_is_beyond_the_bound(
    clusters: ClusterFactory,
) -> None:
    cluster = await clusters.start(NODES_ONLY, node_env={3: {CLOCK_ENV: str(AHEAD_MS)}})

    async def refused() -> int:
        total = 0
        for node_id in (1, 2):
            text = await cluster.metrics(cluster.node(node_id))
            total += int(metric_value(text, "rangekv_node_refused_total", reason="clock_offset"))
        return total

    await async_wait_for(refused, 30, "nodes 1 and 2 to refuse node 3's raft traffic")
    # The healthy nodes still serve, and their clocks did not follow node 3's.
    async with ReplicaClient.of(cluster) as client:
        leader = await client.leaseholder((1, 2))
        result = await client.put(b"k", b"v", via=leader)
    ahead_of_now_ms = (result.version.wall_time - time.time_ns()) / 1e6
    assert ahead_of_now_ms < AHEAD_MS / 2, f"a write was versioned {ahead_of_now_ms:.0f} ms ahead"
