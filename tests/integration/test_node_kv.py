"""The public KV API served by every storage node (its embedded gateway), through real processes.

A raftnode started by `rangekv raftnode` with --meta-addrs serves rangekv.v1.KV on
its own port: the batches of ranges it leads are handed to its Replica service in
process, the others go to their leaseholders over gRPC as a gateway sends them.
What these tests show:

* every call works through every node, and what one node wrote every other node
  and the standalone gateway read; bad input is INVALID_ARGUMENT with nothing
  written;
* the leaseholder serves its own batches in process, a follower forwards them
  (the nodes' `rangekv_node_kv_batches{to=local|remote}`), and after the lease
  moves the same node forwards what it served before;
* `--no-serve-kv` turns it off: the node answers UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from testkit.cluster import Cluster
from testkit.fixtures import ClusterFactory
from testkit.kv import CLIENT_TIMEOUT, rpc_error, scan_rows
from testkit.metrics import fetch_metrics, metric_value
from testkit.replicas import Replicas

from rangekv.v1 import kv_pb2, kv_pb2_grpc

pytestmark = pytest.mark.timeout(180)


async def node_batches(cluster: Cluster, node_id: int) -> tuple[float, float]:
    """(local, remote) node batches of node `node_id`'s KV API so far."""
    text = await asyncio.to_thread(fetch_metrics, cluster.node(node_id).metrics)
    return (
        metric_value(text, "rangekv_node_kv_batches", to="local"),
        metric_value(text, "rangekv_node_kv_batches", to="remote"),
    )


async def test_every_node_serves_the_kv_api(clusters: ClusterFactory) -> None:
    cluster = await clusters.start()
    opener = cluster.client_channels()
    t = CLIENT_TIMEOUT
    channels = {i: opener(cluster.node_address(i)) for i in cluster.node_ids}
    gateway = opener(cluster.gateways[0].address)
    try:
        kv = {i: kv_pb2_grpc.KVStub(ch) for i, ch in channels.items()}
        everyone = [*kv.values(), kv_pb2_grpc.KVStub(gateway)]
        for i in cluster.node_ids:
            await kv[i].Put(kv_pb2.PutRequest(key=b"n/%d" % i, value=b"v%d" % i), timeout=t)
        for stub in everyone:
            for i in cluster.node_ids:
                got = await stub.Get(kv_pb2.GetRequest(key=b"n/%d" % i), timeout=t)
                assert got.found and got.kv.value == b"v%d" % i
        cas = await kv[2].CompareAndSwap(
            kv_pb2.CompareAndSwapRequest(key=b"n/1", expected_value=b"v1", new_value=b"w"),
            timeout=t,
        )
        assert cas.succeeded
        assert (await kv[3].Delete(kv_pb2.DeleteRequest(key=b"n/2"), timeout=t)).deleted
        rows = await scan_rows(kv[1], b"n/", b"n0")
        assert rows == [(b"n/1", b"w"), (b"n/3", b"v3")]

        # Bad input: refused with a precise status, nothing written.
        huge_key = b"k" * (1 << 20)
        err = await rpc_error(kv[1].Put(kv_pb2.PutRequest(key=huge_key, value=b"x"), timeout=t))
        assert err is not None and err.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "key" in (err.details() or ""), err.details()
        err = await rpc_error(kv[2].Put(kv_pb2.PutRequest(key=b"", value=b"x"), timeout=t))
        assert err is not None and err.code() is grpc.StatusCode.INVALID_ARGUMENT
        rows = await scan_rows(kv[3], b"", b"")
        assert [key for key, _ in rows] == [b"n/1", b"n/3"]
    finally:
        for ch in [*channels.values(), gateway]:
            await ch.close()


async def test_the_leaseholder_serves_its_batches_in_process(clusters: ClusterFactory) -> None:
    cluster = await clusters.start(n_gateways=0)
    replicas = Replicas(cluster)
    holder = await replicas.wait_leaseholder(1)
    other = next(i for i in cluster.node_ids if i != holder)
    opener = cluster.client_channels()
    t = CLIENT_TIMEOUT
    async with (
        opener(cluster.node_address(holder)) as hc,
        opener(cluster.node_address(other)) as oc,
    ):
        at_holder, at_other = kv_pb2_grpc.KVStub(hc), kv_pb2_grpc.KVStub(oc)
        await at_holder.Put(kv_pb2.PutRequest(key=b"warm", value=b"0"), timeout=t)
        await at_other.Put(kv_pb2.PutRequest(key=b"warm", value=b"0"), timeout=t)
        h0, o0 = await node_batches(cluster, holder), await node_batches(cluster, other)
        for n in range(10):
            await at_holder.Put(kv_pb2.PutRequest(key=b"h%d" % n, value=b"x"), timeout=t)
            await at_other.Put(kv_pb2.PutRequest(key=b"o%d" % n, value=b"x"), timeout=t)
        h1, o1 = await node_batches(cluster, holder), await node_batches(cluster, other)
        # Every put at the leaseholder was served in process; every put at the other
        # node went to the leaseholder over gRPC.
        assert h1[0] - h0[0] >= 10 and h1[1] == h0[1], (h0, h1)
        assert o1[1] - o0[1] >= 10 and o1[0] == o0[0], (o0, o1)

        # The lease moves to `other`: the roles swap, nothing is lost.
        await replicas.transfer_lease(1, other)
        await at_holder.Put(kv_pb2.PutRequest(key=b"after", value=b"1"), timeout=t)
        await at_other.Put(kv_pb2.PutRequest(key=b"after2", value=b"2"), timeout=t)
        h2, o2 = await node_batches(cluster, holder), await node_batches(cluster, other)
        assert h2[1] > h1[1], (h1, h2)
        assert o2[0] > o1[0], (o1, o2)
        for key, value in [(b"after", b"1"), (b"after2", b"2"), (b"h9", b"x"), (b"o9", b"x")]:
            got = await at_holder.Get(kv_pb2.GetRequest(key=key), timeout=t)
            assert got.kv.value == value, key


async def test_serving_the_kv_api_can_be_turned_off(clusters: ClusterFactory) -> None:
    cluster = await clusters.start(n_gateways=0, node_args=("--no-serve-kv",))
    async with cluster.client_channels()(cluster.node_address(1)) as ch:
        err = await rpc_error(
            kv_pb2_grpc.KVStub(ch).Get(kv_pb2.GetRequest(key=b"k"), timeout=CLIENT_TIMEOUT)
        )
    assert err is not None and err.code() is grpc.StatusCode.UNIMPLEMENTED
