"""Frame gathering through real processes: a busy gateway's node streams, and a
busy node's answers, wait a few event-loop turns for more reads before a frame
(`--frame-gather-turns` on both; `rangekv.common.frames`), and writes never wait.
The same holds one level up, on KV/Stream: `rangekv.client`'s requests
(`ClientConfig.frame_gather_turns`) and the gateway's answers to them.

One cluster per case (3 metarange replicas, 3 raftnodes, 1 gateway, insecure),
the keyspace split into RANGES ranges so that concurrent reads of one node go to
many ranges (one batch each) and can share a frame:

- writes alone, however concurrent, never gather, on the gateway or the nodes;
- concurrent reads over the ranges gather on both sides with the flag at 16,
  never with 0; every read returns what was written either way;
- then the same through `rangekv.client` (KV/Stream, one connection): its writer
  and the gateway's stream writer never gather for writes, and gather for reads
  at 16, never at 0.
"""

from __future__ import annotations

import asyncio

import pytest
from testkit.cluster import Cluster, ClusterSpec
from testkit.fixtures import ClusterFactory
from testkit.kv import get, kv_stubs, put
from testkit.metrics import metric_value

from rangekv.cli.dev import wait_until_serving
from rangekv.client import Client, ClientConfig, connect
from rangekv.client.gateway import GatewayTransport
from rangekv.v1 import admin_pb2, admin_pb2_grpc, kv_pb2_grpc

pytestmark = pytest.mark.timeout(240)

RANGES = 8
KEYS = [b"fg/%03d" % i for i in range(0, 1000, 1000 // 64)]
CALLERS = 64
#: Rounds of concurrent reads before the flag at 16 must have gathered on both sides
#: (gathering needs a frame's reads to pile up while the last one is written, which
#: concurrent callers make likely in each round, not certain).
MAX_READ_ROUNDS = 20

GATEWAY_TURNS = "rangekv_gateway_frame_gather_turns"
NODE_TURNS = "rangekv_node_frame_gather_turns_total"
STREAM_TURNS = "rangekv_gateway_stream_gather_turns"


async def gather_turns(cluster: Cluster) -> tuple[float, float]:
    """(the gateway's turns, the nodes' turns summed)."""
    gateway = await cluster.metrics(cluster.gateways[0])
    nodes = [await cluster.metrics(cluster.node(n)) for n in cluster.node_ids]
    assert GATEWAY_TURNS in gateway
    assert all(NODE_TURNS in text for text in nodes)
    return metric_value(gateway, GATEWAY_TURNS), sum(metric_value(t, NODE_TURNS) for t in nodes)


async def split_and_spread(cluster: Cluster) -> None:
    """RANGES ranges over the test keys, their leases round-robin over the nodes."""
    async with cluster.client_channels()(cluster.gateways[0].address) as ch:
        admin = admin_pb2_grpc.AdminStub(ch)
        for i in range(1, RANGES):
            key = b"fg/%03d" % (i * 1000 // RANGES)
            await admin.SplitRange(admin_pb2.AdminSplitRangeRequest(split_key=key), timeout=60)
        listed = await admin.ListRanges(
            admin_pb2.AdminListRangesRequest(start_key=b"fg/", limit=100), timeout=60
        )
        ours = [r.descriptor for r in listed.ranges if r.descriptor.start_key < b"fg0"]
        assert len(ours) >= RANGES
        for i, desc in enumerate(ours):
            target = cluster.node_ids[i % len(cluster.node_ids)]
            await admin.TransferLease(
                admin_pb2.AdminTransferLeaseRequest(range_id=desc.range_id, target_node_id=target),
                timeout=60,
            )


async def concurrently(kv: kv_pb2_grpc.KVStub, calls: int, read: bool) -> None:
    """CALLERS callers, `calls` calls each, over KEYS; reads check the value."""

    async def caller(c: int) -> None:
        for i in range(calls):
            key = KEYS[(c * calls + i) % len(KEYS)]
            if read:
                assert await get(kv, key) == b"v:" + key
            else:
                await put(kv, key, b"v:" + key)

    await asyncio.gather(*(caller(c) for c in range(CALLERS)))


async def stream_gather_turns(cluster: Cluster, client: Client) -> tuple[float, float]:
    """(the client connection's turns, the gateway's KV/Stream writers' turns)."""
    assert isinstance(client.transport, GatewayTransport)
    gateway = await cluster.metrics(cluster.gateways[0])
    assert STREAM_TURNS in gateway
    return client.transport.connections[0].gather_turns, metric_value(gateway, STREAM_TURNS)


async def through_the_client(client: Client, calls: int, read: bool) -> None:
    """`concurrently`, through rangekv.client."""

    async def caller(c: int) -> None:
        for i in range(calls):
            key = KEYS[(c * calls + i) % len(KEYS)]
            if read:
                found = await client.get(key)
                assert found is not None and found.value == b"v:" + key
            else:
                await client.put(key, b"v:" + key)

    await asyncio.gather(*(caller(c) for c in range(CALLERS)))


async def check_kv_streams(cluster: Cluster, turns: int) -> None:
    config = ClientConfig(addr=cluster.gateways[0].address, frame_gather_turns=turns)
    client = await connect(config, channels=cluster.client_channels(), ready_timeout=30)
    async with client:
        before = await stream_gather_turns(cluster, client)
        assert before == (0, 0)
        await through_the_client(client, 4, read=False)
        assert await stream_gather_turns(cluster, client) == before, "a message of writes waited"
        rounds = 0
        while True:
            await through_the_client(client, 4, read=True)
            rounds += 1
            ours, gateway = await stream_gather_turns(cluster, client)
            if not turns or (ours > 0 and gateway > 0):
                break
            assert rounds < MAX_READ_ROUNDS, (
                f"no KV/Stream gathering in {rounds} rounds of reads: client {ours}, "
                f"gateway {gateway}"
            )
    if not turns:
        assert (ours, gateway) == (0, 0)


@pytest.mark.parametrize("turns", [16, 0])
async def test_busy_streams_gather_reads_and_never_writes(
    clusters: ClusterFactory, turns: int
) -> None:
    flag = ("--frame-gather-turns", str(turns))
    cluster = await clusters.start(ClusterSpec(insecure=True, node_args=flag, gateway_args=flag))
    await wait_until_serving(cluster.gateways[0].address, cluster.client_channels())
    await split_and_spread(cluster)
    async with kv_stubs(cluster) as (kv,):
        before = await gather_turns(cluster)
        await concurrently(kv, 4, read=False)
        assert await gather_turns(cluster) == before, "a frame of writes waited"

        rounds = 0
        while True:
            await concurrently(kv, 4, read=True)
            rounds += 1
            gateway, nodes = await gather_turns(cluster)
            if not turns or (gateway > before[0] and nodes > before[1]):
                break
            assert rounds < MAX_READ_ROUNDS, (
                f"no gathering in {rounds} rounds of reads: gateway {gateway}, nodes {nodes}"
            )
    if turns:
        assert gateway > before[0] and nodes > before[1]
    else:
        assert (gateway, nodes) == (0, 0)
    await check_kv_streams(cluster, turns)
