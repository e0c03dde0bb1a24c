"""The real gateway process against scripted peers: routing that never spins or sticks.

Each test starts one gateway process (`rangekv gateway`) whose meta range and
storage nodes are scripted in-test gRPC servers (scripted_peers.py) that count
every meta lookup and node request, scripts one partial failure, and checks
both the client's answer and what the gateway paid for it:

* `test_an_unusable_lease_hint_moves_on_to_the_next_replica` -- a replica
  names a leaseholder the cache cannot route to (a node in no descriptor it
  holds, with the same descriptor, none, or a newer one that lacks it): the
  next replica is asked at once, and the one that served is asked first next.
* `test_two_replicas_naming_each_other_at_one_lease_sequence_do_not_hold_the_request`
  -- a hint whose lease sequence is not higher than one already followed does
  not send the request back to a replica it asked; the others are asked.
* `test_a_lagging_leaseholder_is_asked_a_bounded_number_of_times` -- the
  cached leaseholder keeps answering NotLeaseHolder with an OLDER descriptor:
  asked a bounded number of times, then the other replicas, with no lookup
  and no eviction.
* `test_a_mismatch_that_says_nothing_new_backs_off_and_rereads_meta_at_its_leader`
  and `test_a_mismatch_that_never_changes_is_bounded_until_the_deadline` --
  a RangeKeyMismatch carrying exactly the descriptor routed with.
* `test_range_not_found_everywhere_rereads_meta_consistently` -- every
  replica of the descriptor meta's followers still name has lost the range.
* `test_concurrent_misses_in_one_range_cost_one_lookup_in_any_order` -- the
  coalescing of lookups does not depend on arrival order.

Waits are on observable conditions with deadlines (`async_wait_for`).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

import grpc
import pytest
from scripted_peers import ScriptedCluster, ScriptedNode, descriptor, scripted_cluster
from testkit.metrics import metric_value
from testkit.waiting import async_wait_for

from rangekv.common import errors as E
from rangekv.common.descriptors import RangeDescriptor, ReplicaDescriptor
from rangekv.v1 import kv_pb2, replica_pb2

pytestmark = pytest.mark.timeout(120)

#: The gateway's own deadline per request; the client waits longer, so the gateway answers.
REQUEST_TIMEOUT = 3.0
CLIENT_TIMEOUT = 10.0
# Reads never move on for slowness here (a loaded machine must not change the counts).
GATEWAY_ARGS = ["--request-timeout", str(REQUEST_TIMEOUT), "--read-attempt-timeout", "10"]

N4 = ReplicaDescriptor(4, 4)
WHOLE = descriptor(1, b"", b"", 2)  # range 1, every key, nodes 1-3, generation 2


async def get(cluster: ScriptedCluster, key: bytes) -> kv_pb2.GetResponse:
    return await cluster.kv().Get(kv_pb2.GetRequest(key=key), timeout=CLIENT_TIMEOUT)


async def metric(cluster: ScriptedCluster, name: str, **labels: str) -> float:
    return metric_value(await asyncio.to_thread(cluster.metrics), name, **labels)


def not_lease_holder(
    holder: ReplicaDescriptor | None,
    seq: int,
    desc: RangeDescriptor | None,
    address: str = "127.0.0.1:9",  # nobody listens there (node 4 exists nowhere)
) -> Callable[[replica_pb2.ReplicaBatchRequest], E.RangeKVError]:
    return lambda _req: E.NotLeaseHolder(1, holder, address if holder else "", seq, desc)


# ----------------------------------------------------------------------------- hints


@pytest.mark.parametrize(
    "hint_descriptor",
    ["same-generation", "none", "newer-without-the-hinted-node"],
)
async def test_an_unusable_lease_hint_moves_on_to_the_next_replica(hint_descriptor: str) -> None:
    carried = {
        "same-generation": WHOLE,
        "none": None,
        "newer-without-the-hinted-node": descriptor(1, b"", b"", 3),
    }[hint_descriptor]
    async with scripted_cluster([WHOLE], gateway_args=GATEWAY_ARGS) as cluster:
        cluster.nodes[1].script = not_lease_holder(N4, 3, carried)
        if carried is not None:
            cluster.nodes[2].descriptor = carried
        cluster.nodes[2].lease_sequence = 4
        got = await get(cluster, b"b")
        assert not got.found
        assert cluster.nodes[1].count() == 1, cluster.node_counts()
        assert cluster.nodes[2].count() == 1, cluster.node_counts()
        # The replica that served holds the lease: later requests go there first.
        for _ in range(5):
            await get(cluster, b"c")
        assert cluster.node_counts() == {1: 1, 2: 6, 3: 0}
        assert cluster.meta.count() == 1
        assert await metric(cluster, "rangekv_gateway_retries", reason="unusable_hint") == 1


async def test_a_lagging_leaseholder_is_asked_a_bounded_number_of_times() -> None:
    async with scripted_cluster([WHOLE], gateway_args=GATEWAY_ARGS) as cluster:
        n1, n2 = cluster.nodes[1], cluster.nodes[2]
        # n1 redirects to n2, which serves: the cache learns the lease (n2, seq 5).
        n1.script = not_lease_holder(ReplicaDescriptor(2, 2), 5, WHOLE, n2.address)
        n2.lease_sequence = 5
        await get(cluster, b"b")
        assert cluster.node_counts() == {1: 1, 2: 1, 3: 0}
        # n2 now lags: it answers with an older descriptor (naming n4); n1 serves.
        older = descriptor(1, b"", b"", 1, (2, 3, 4))
        n2.script = not_lease_holder(N4, 6, older)
        n1.script = n1.serve
        before = cluster.node_counts()
        got = await get(cluster, b"b")
        assert not got.found
        after = cluster.node_counts()
        assert 1 <= after[2] - before[2] <= 3, (before, after)
        assert after[1] - before[1] == 1, (before, after)
        assert cluster.meta.count() == 1, "a lagging replica is no reason to look up"
        assert await metric(cluster, "rangekv_gateway_cache_evictions_total") == 0
        assert await metric(cluster, "rangekv_gateway_retries", reason="lagging_replica") >= 1


async def test_two_replicas_naming_each_other_at_one_lease_sequence_do_not_hold_the_request() -> (
    None
):
    """n1 and n2 each say the other holds the lease, at the same sequence (a lease in
    limbo, or two replicas each behind the other): following the second hint back to
    n1 gains nothing, so the pass goes on to n3, which serves."""
    async with scripted_cluster([WHOLE], gateway_args=GATEWAY_ARGS) as cluster:
        n1, n2, n3 = (cluster.nodes[n] for n in (1, 2, 3))
        n1.script = not_lease_holder(ReplicaDescriptor(2, 2), 5, WHOLE, n2.address)
        n2.script = not_lease_holder(ReplicaDescriptor(1, 1), 5, WHOLE, n1.address)
        n3.lease_sequence = 6
        got = await get(cluster, b"b")
        assert not got.found
        assert cluster.node_counts() == {1: 1, 2: 1, 3: 1}
        assert await metric(cluster, "rangekv_gateway_retries", reason="lease_not_newer") == 1
        assert await metric(cluster, "rangekv_gateway_backoffs") == 0


# ----------------------------------------------------------------------------- mismatches


def range_1_mismatches(
    node: ScriptedNode, stale: RangeDescriptor, req: replica_pb2.ReplicaBatchRequest
) -> replica_pb2.ReplicaBatchResponse | E.RangeKVError:
    """Range 1 answers RangeKeyMismatch carrying `stale`; other ranges are served."""
    return E.RangeKeyMismatch(1, (stale,)) if req.range_id == 1 else node.serve(req)


async def test_a_mismatch_that_says_nothing_new_backs_off_and_rereads_meta_at_its_leader() -> None:
    """Meta's followers still hold the pre-split ["", +inf) g1; range 1 answers every
    request with RangeKeyMismatch carrying exactly that descriptor; meta's leader
    knows the split ([m, +inf) is range 2, which the nodes serve)."""
    stale = descriptor(1, b"", b"", 1)
    left, right = descriptor(1, b"", b"m", 2), descriptor(2, b"m", b"", 2)
    async with scripted_cluster([left, right], gateway_args=GATEWAY_ARGS) as cluster:
        cluster.meta.lagging = [stale]
        for node in cluster.nodes.values():
            node.descriptor = right
            node.script = functools.partial(range_1_mismatches, node, stale)
        got = await get(cluster, b"x")
        assert not got.found
        total = sum(cluster.node_counts().values())
        assert total <= 5, cluster.node_counts()
        assert cluster.meta.leader_reads() == 1, cluster.meta.lookups
        assert cluster.meta.count(consistent=False) == 2, cluster.meta.lookups
        assert (
            await metric(
                cluster, "rangekv_gateway_cache_evictions_total", reason="mismatch_unchanged"
            )
            >= 1
        )


async def test_a_mismatch_that_never_changes_is_bounded_until_the_deadline() -> None:
    """Every replica answers RangeKeyMismatch with the routed descriptor and meta (even
    its leader) agrees with it: nothing can make progress, so the gateway backs off
    until its deadline and answers UNAVAILABLE, having sent a handful of requests."""
    async with scripted_cluster([WHOLE], gateway_args=GATEWAY_ARGS) as cluster:
        for node in cluster.nodes.values():
            node.script = lambda _req: E.RangeKeyMismatch(1, (WHOLE,))
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await get(cluster, b"b")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        elapsed = loop.time() - began
        assert elapsed < REQUEST_TIMEOUT + 2.0
        total = sum(cluster.node_counts().values())
        backoffs = await metric(cluster, "rangekv_gateway_backoffs")
        print(
            f"unchanged mismatch: {total} node requests, {cluster.meta.count()} lookups "
            f"({cluster.meta.leader_reads()} at the leader), {backoffs:.0f} backoffs "
            f"in {elapsed:.1f}s"
        )
        assert total <= 40, f"{total} node requests in {REQUEST_TIMEOUT}s"
        assert cluster.meta.count() <= 40, f"{cluster.meta.count()} lookups"
        assert backoffs >= 1


# ----------------------------------------------------------------------------- meta


async def test_range_not_found_everywhere_rereads_meta_consistently() -> None:
    """The range moved from nodes 1-3 to nodes 4-6 (generation 2); meta's followers
    still say nodes 1-3 (generation 1), which answer RangeNotFound."""
    moved = descriptor(1, b"", b"", 2, (4, 5, 6))
    old = descriptor(1, b"", b"", 1, (1, 2, 3))
    async with scripted_cluster(
        [moved], node_ids=(1, 2, 3, 4, 5, 6), gateway_args=GATEWAY_ARGS
    ) as cluster:
        cluster.meta.lagging = [old]
        for nid in (1, 2, 3):
            cluster.nodes[nid].script = lambda _req, n=nid: E.RangeNotFound(1, n)
        got = await get(cluster, b"b")
        assert not got.found
        counts = cluster.node_counts()
        assert sum(counts[n] for n in (1, 2, 3)) == 3, counts
        assert counts[4] == 1, counts
        assert cluster.meta.leader_reads() == 1, cluster.meta.lookups
        assert cluster.meta.count(consistent=False) == 2, cluster.meta.lookups


# ----------------------------------------------------------------------------- coalescing


@pytest.mark.parametrize("order", ["key-order", "reverse-order"])
async def test_concurrent_misses_in_one_range_cost_one_lookup_in_any_order(order: str) -> None:
    """After a split at "an", three Gets for an0, an1, an2 miss together (meta holds
    the lookups until all three have missed): one lookup, whatever the order."""
    layout = [descriptor(1, b"", b"an", 2), descriptor(2, b"an", b"", 2)]
    keys = [b"an0", b"an1", b"an2"]
    if order == "reverse-order":
        keys.reverse()
    async with scripted_cluster(layout, gateway_args=GATEWAY_ARGS) as cluster:
        hold = cluster.meta.hold = asyncio.Event()
        calls = []
        for i, key in enumerate(keys):
            calls.append(asyncio.ensure_future(get(cluster, key)))
            await async_wait_for(
                lambda n=i + 1: _at_least(cluster, "rangekv_gateway_cache_misses_total", n),
                10,
                f"{i + 1} cache misses",
            )
        hold.set()
        await asyncio.gather(*calls)
        assert cluster.meta.count() == 1, cluster.meta.lookups


async def _at_least(cluster: ScriptedCluster, name: str, n: int) -> bool:
    return await metric(cluster, name) >= n


# ----------------------------------------------------------------------------- framing


async def test_a_node_without_batch_frames_is_served_over_batch_stream() -> None:
    """A node that predates Replica.BatchFrames answers it UNIMPLEMENTED before serving
    anything: that attempt counts as not applied, the gateway speaks BatchStream to
    that node from then on, and the write is applied exactly once, there."""
    async with scripted_cluster(
        [WHOLE], gateway_args=GATEWAY_ARGS, nodes_without_frames=[1]
    ) as cluster:
        old, n2, n3 = cluster.nodes[1], cluster.nodes[2], cluster.nodes[3]
        old.lease_sequence = 5
        n1 = ReplicaDescriptor(1, 1)
        n2.script = not_lease_holder(n1, 5, WHOLE, old.address)
        n3.script = not_lease_holder(n1, 5, WHOLE, old.address)
        await cluster.kv().Put(kv_pb2.PutRequest(key=b"k", value=b"v"), timeout=CLIENT_TIMEOUT)
        assert cluster.node_counts()[1] == 1, cluster.node_counts()
        assert old.requests[0].ops[0].put.key == b"k"
        for _ in range(3):
            assert (await get(cluster, b"k")).found
        assert cluster.node_counts()[1] == 4, cluster.node_counts()
