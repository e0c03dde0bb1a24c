"""Real-process tests of replica changes (issue 7, the replica-change part).

A cluster of 3 metarange replicas, 4 raftnodes (the first range on nodes 1-3,
node 4 empty) and a gateway runs on loopback (the kit's, tests/testkit).

* `test_add_and_remove_replica`: `Replica.ChangeReplicas` on the leaseholder
  adds node 4 as a learner and promotes it; node 4 creates the replica from
  the leader's heartbeat, gets a snapshot, reports the range in RangeInfo and
  serves inconsistent reads of the data; meta and every node agree on the new
  descriptor. Then a non-leaseholder replica is removed: its node destroys
  it, and the gateway keeps reading and writing. (The rebalancing policy is off
  in this one, `--no-rebalance`: every change is the test's.)
* `test_a_voter_beyond_the_factor_is_removed_by_the_rebalancer`: a fourth voter
  added by hand is removed by the leaseholder's rebalancer, never the
  leaseholder's own replica.
* `test_dead_node_is_replaced`: after a few splits, a writer records every
  acknowledged write while one node is SIGKILLed for good. Within a bounded
  time the rebalancer (registry liveness TTL 2s, dead after 2s more) has
  up-replicated every range onto the remaining nodes (3 live voters each,
  meta settled), and every acknowledged write reads back through the gateway.

Waits poll cluster state with deadlines (`async_wait_for`); the only plain
sleep paces the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace

import grpc
import pytest
from testkit.cluster import SPARE_NODE
from testkit.fixtures import ClusterFactory
from testkit.kv import check_data, get, kv_stubs, meta_client, put
from testkit.meta import meta_layout
from testkit.ranges import settled
from testkit.replicas import ADD_LEARNER, PROMOTE, REMOVE, Replicas
from testkit.waiting import async_wait_for

from rangekv.common.descriptors import RangeDescriptor, ReplicaType
from rangekv.v1 import replica_pb2

pytestmark = pytest.mark.timeout(240)

KEYS = [b"%c%02d" % (c, i) for c in b"bfkpu" for i in range(8)]


#: SPARE_NODE with the rebalancing policy off: the test makes every change itself
#: (the policy would trim its 4 voters back to the factor in the middle); replica
#: GC still runs, and destroys the removed replica.
MANUAL = replace(SPARE_NODE, node_args=(*SPARE_NODE.node_args, "--no-rebalance"))


async def test_add_and_remove_replica(clusters: ClusterFactory) -> None:
    cluster = await clusters.start(MANUAL)
    replicas = Replicas(cluster)
    async with kv_stubs(cluster) as (kv,), meta_client(cluster) as meta:
        data = {k: b"v-" + k for k in KEYS}
        for k, v in data.items():
            await put(kv, k, v)
        before = (await meta_layout(meta))[0][0]
        assert before.replica_on(4) is None

        # add node 4: learner, snapshot, promotion
        desc = await replicas.change_replicas(1, [(ADD_LEARNER, 4), (PROMOTE, 4)])
        added = desc.replica_on(4)
        assert added is not None and added.type == ReplicaType.VOTER
        assert added.replica_id == before.next_replica_id
        assert desc.generation == before.generation + 2
        assert len(desc.voter_node_ids) == 4
        layout = await async_wait_for(lambda: settled(replicas, meta), 30, "meta and nodes")
        assert layout == [desc]
        infos = await replicas.infos(4)
        assert infos is not None and [i.descriptor.range_id for i in infos] == [1]
        assert RangeDescriptor.from_proto(infos[0].descriptor) == desc

        async def n4_has_all() -> bool:
            for k, v in data.items():
                if await replicas.inconsistent_get(4, 1, k) != v:
                    return False
            return True

        await async_wait_for(n4_has_all, 20, "node 4 to serve the data")
        # node 4 takes part in raft: it can lead the range
        data[b"c-new"] = b"after-add"
        await put(kv, b"c-new", data[b"c-new"])
        await async_wait_for(n4_has_all, 20, "node 4 to apply a new write")

        # remove a replica that is not the leaseholder's
        holder = await async_wait_for(
            lambda: replicas.leaseholder(1, valid_lease=False), 20, "a leaseholder"
        )
        victim = next(n for n in (1, 2, 3, 4) if n != holder)
        desc = await replicas.change_replicas(1, [(REMOVE, victim)])
        assert desc.replica_on(victim) is None and len(desc.voter_node_ids) == 3
        layout = await async_wait_for(lambda: settled(replicas, meta), 30, "the removal")
        assert layout == [desc]

        async def victim_empty() -> bool:
            return await replicas.infos(victim) == []

        await async_wait_for(victim_empty, 20, f"node {victim} to destroy its replica")
        # the old replica now answers RangeNotFound; the gateway keeps working
        resp = await replicas.call(
            victim,
            "Batch",
            replica_pb2.ReplicaBatchRequest(
                range_id=1, ops=[replica_pb2.ReplicaOp(get=replica_pb2.GetOp(key=b"b00"))]
            ),
        )
        assert resp.HasField("error")
        await check_data(kv, data)
        data[b"d-new"] = b"after-remove"
        await put(kv, b"d-new", data[b"d-new"])
        await check_data(kv, data)


async def test_a_voter_beyond_the_factor_is_removed_by_the_rebalancer(
    clusters: ClusterFactory,
) -> None:
    """A fourth voter (here added by hand; in the wild, a split made in the middle of
    a replica move copies the move's extra voter into the right-hand range) is
    removed by the leaseholder's rebalancer: back to 3 voters, the leaseholder's
    own replica kept, the data intact."""
    cluster = await clusters.start(SPARE_NODE)
    replicas = Replicas(cluster)
    async with kv_stubs(cluster) as (kv,), meta_client(cluster) as meta:
        data = {k: b"v-" + k for k in KEYS[:8]}
        for k, v in data.items():
            await put(kv, k, v)
        desc = await replicas.change_replicas(1, [(ADD_LEARNER, 4), (PROMOTE, 4)])
        assert len(desc.voter_node_ids) == 4

        async def back_to_three() -> list[RangeDescriptor] | None:
            layout = await settled(replicas, meta)
            if layout is None or len(layout[0].voter_node_ids) != 3:
                return None
            return layout

        layout = await async_wait_for(back_to_three, 30, "the rebalancer to remove a voter")
        trimmed = layout[0]
        assert trimmed.generation == desc.generation + 1
        assert all(r.type == ReplicaType.VOTER for r in trimmed.replicas)
        holder = await async_wait_for(
            lambda: replicas.leaseholder(1, valid_lease=False), 20, "a leaseholder"
        )
        assert trimmed.replica_on(holder) is not None
        await check_data(kv, data)


async def test_dead_node_is_replaced(clusters: ClusterFactory) -> None:
    cluster = await clusters.start(SPARE_NODE)
    replicas = Replicas(cluster)
    async with kv_stubs(cluster) as (kv,), meta_client(cluster) as meta:
        for key in (b"p", b"g"):  # range 1 keeps the left-hand side
            await replicas.admin_split(1, key)

        async def split_in_three() -> list[RangeDescriptor] | None:
            # The rebalancer (0.5 s here) may be moving replicas onto the spare node
            # 4 once the first split made it the emptiest: wait for a layout between
            # its moves, not whatever an instant shows. A split made while such a
            # move had its learner on node 4 gives the right-hand range a fourth
            # voter for a while, until its own rebalancer removes one.
            layout = await settled(replicas, meta)
            if layout is None or len(layout) != 3:
                return None
            for d in layout:
                if len(d.voter_node_ids) != 3 or len(d.replicas) != 3:
                    return None
            return layout

        await async_wait_for(split_in_three, 30, "the splits: 3 ranges of 3 voters")

        acked: dict[bytes, bytes] = {}
        stop = asyncio.Event()

        async def writer() -> None:
            i = 0
            while not stop.is_set():
                key = b"%c-%05d" % (b"bhq"[i % 3], i)
                value = b"v%d" % i
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await put(kv, key, value)
                    acked[key] = value
                i += 1
                await asyncio.sleep(0.01)  # pacing the workload

        task = asyncio.ensure_future(writer())
        await async_wait_for(lambda: len(acked) >= 30, 20, "writes before the kill")
        victim = 2
        await cluster.kill(cluster.node(victim))
        n_before = len(acked)

        async def up_replicated() -> list[RangeDescriptor] | None:
            layout = await settled(replicas, meta)
            if layout is None:
                return None
            for d in layout:
                if d.replica_on(victim) is not None or len(d.voter_node_ids) != 3:
                    return None
                if any(r.type != ReplicaType.VOTER for r in d.replicas):
                    return None
            return layout

        try:
            layout = await async_wait_for(up_replicated, 90, "up-replication")
        finally:
            stop.set()
            await task
        assert len(layout) == 3
        assert len(acked) > n_before, "no write was acknowledged after the kill"
        for key, value in acked.items():
            assert await get(kv, key) == value, f"acknowledged write {key!r} lost"
