"""MVCC garbage collection through the real path: old versions go, reads below the
threshold are refused (they could otherwise see a half-collected history)."""

from __future__ import annotations

from testkit.cluster import NODES_ONLY
from testkit.fixtures import ClusterFactory
from testkit.replica_client import ReplicaClient, get_op
from testkit.waiting import async_wait_for

from rangekv.v1 import replica_pb2, types_pb2


async def test_versions_older_than_the_ttl_are_collected(clusters: ClusterFactory) -> None:
    cluster = await clusters.start(
        NODES_ONLY, node_args=("--gc-ttl", "0.5", "--gc-interval", "0.2")
    )
    async with ReplicaClient.of(cluster) as client:
        leader = await client.leaseholder()
        first = await client.put(b"k", b"v1", via=leader)
        await client.put(b"k", b"v2", via=leader)
        old_ts = types_pb2.Timestamp(
            wall_time=first.version.wall_time, logical=first.version.logical
        )

        async def refused_below_threshold() -> bool:
            # An inconsistent read may name its timestamp (a consistent one
            # needs a scan fence): refused once v1's timestamp is below GC.
            req = replica_pb2.ReplicaBatchRequest(
                range_id=1, ops=[get_op(b"k")], read_timestamp=old_ts, inconsistent=True
            )
            resp = await client.stub(leader).Batch(req, timeout=5)
            return "GC threshold" in resp.error.invalid_argument.message

        await async_wait_for(refused_below_threshold, 20, "the GC threshold to pass v1")
        assert await client.get(b"k", via=leader) == b"v2"
        # Every replica applied the same collection: the latest value is intact everywhere.
        for node in cluster.running_node_ids():
            resp = await client.batch(node, [get_op(b"k")], inconsistent=True)
            assert resp.results[0].get.kv.value == b"v2"
