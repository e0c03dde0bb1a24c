"""Real-process tests of replica changes (issue 7, the replica-change part).

A `LocalCluster` runs 3 metarange replicas, 4 raftnodes (the first range on
nodes 1-3, node 4 empty) and a gateway on loopback.

* `test_add_and_remove_replica`: `Replica.ChangeReplicas` on the leaseholder
  adds node 4 as a learner and promotes it; node 4 creates the replica from
  the leader's heartbeat, gets a snapshot, reports the range in RangeInfo and
  serves inconsistent reads of the data; meta and every node agree on the new
  descriptor. Then a non-leaseholder replica is removed: its node destroys
  it, and the gateway keeps reading and writing.
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
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from raftnode_cluster import async_wait_for, free_ports
from test_splits import (
    admin_split,
    alive,
    check_data,
    get,
    kv_stubs,
    leaseholder,
    log_tails,
    meta_client,
    meta_layout,
    node_child,
    node_ids,
    put,
    range_infos,
    replica_call,
    run,
)

from rangekv.cli.cluster import LocalCluster
from rangekv.common import errors as E
from rangekv.common.descriptors import RangeDescriptor, ReplicaType
from rangekv.metarange.client import MetaClient
from rangekv.v1 import replica_pb2

pytestmark = pytest.mark.timeout(240)

NODE_ARGS = [
    "--txn-expiry",
    "1.0",
    "--split-check-interval",
    "0.5",
    "--registry-interval",
    "0.5",
    "--rebalance-interval",
    "0.5",
    "--dead-after",
    "2",
]
ENV = {"RANGEKV_LIVENESS_TTL": "2"}


@contextlib.asynccontextmanager
async def cluster_of_four(base: Path) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(
        base,
        n_nodes=4,
        first_range_nodes=3,
        gateway_ports=free_ports(1),
        extra_node_args=NODE_ARGS,
        env=ENV,
        say=lambda _line: None,
    )
    try:
        await cluster.start()
        yield cluster
    except BaseException:
        print(log_tails(cluster))
        raise
    finally:
        for child in cluster.children:
            child.signal(signal.SIGKILL)
        await cluster.stop()


async def change_replicas(
    cluster: LocalCluster,
    range_id: int,
    changes: list[tuple[int, int]],
    timeout: float = 60.0,
) -> RangeDescriptor:
    """ChangeReplicas on the leaseholder, retried while the lease moves."""
    last = "no attempt"

    async def attempt() -> RangeDescriptor | None:
        nonlocal last
        holder = await leaseholder(cluster, range_id)
        if holder is None:
            last = "no leaseholder"
            return None
        req = replica_pb2.ChangeReplicasRequest(
            range_id=range_id,
            changes=[replica_pb2.ReplicaChange(type=t, node_id=n) for t, n in changes],  # type: ignore[arg-type]
        )
        try:
            resp = await replica_call(
                cluster, node_child(cluster, holder).address, "ChangeReplicas", req, timeout=45.0
            )
        except grpc.aio.AioRpcError as exc:
            last = f"{exc.code().name}: {exc.details()}"
            return None
        assert isinstance(resp, replica_pb2.ChangeReplicasResponse)
        if resp.HasField("error"):
            last = str(E.from_replica_error(resp.error))
            return None
        return RangeDescriptor.from_proto(resp.descriptor)

    try:
        return await async_wait_for(attempt, timeout, f"replica change of range {range_id}")  # type: ignore[no-any-return]
    except TimeoutError as exc:
        raise TimeoutError(f"{exc} (last: {last})") from None


async def settled(cluster: LocalCluster, meta: MetaClient) -> list[RangeDescriptor] | None:
    """Meta's committed layout when it has no intents and every live node's
    replicas agree with it exactly (each node holds the ranges naming it)."""
    committed, n_intents = await meta_layout(meta)
    if n_intents:
        return None
    for nid, child in zip(node_ids(cluster), cluster.nodes, strict=True):
        if not alive(child):
            continue
        infos = await range_infos(cluster, child.address)
        if infos is None:
            return None
        held = sorted(
            (i.descriptor.range_id, i.descriptor.generation) for i in infos if i.applied_index
        )
        want = sorted((d.range_id, d.generation) for d in committed if d.replica_on(nid))
        if held != want:
            return None
    return committed


async def inconsistent_get(
    cluster: LocalCluster, address: str, range_id: int, key: bytes
) -> bytes | None:
    req = replica_pb2.ReplicaBatchRequest(
        range_id=range_id,
        inconsistent=True,
        ops=[replica_pb2.ReplicaOp(get=replica_pb2.GetOp(key=key))],
    )
    resp = await replica_call(cluster, address, "Batch", req)
    assert isinstance(resp, replica_pb2.ReplicaBatchResponse)
    if resp.HasField("error"):
        return None
    got = resp.results[0].get
    return got.kv.value if got.found else None


KEYS = [b"%c%02d" % (c, i) for c in b"bfkpu" for i in range(8)]


def test_add_and_remove_replica(tmp_path: Path) -> None:
    async def body() -> None:
        async with (
            cluster_of_four(tmp_path / "c") as cluster,
            kv_stubs(cluster) as (kv,),
            meta_client(cluster) as meta,
        ):
            data = {k: b"v-" + k for k in KEYS}
            for k, v in data.items():
                await put(kv, k, v)
            before = (await meta_layout(meta))[0][0]
            assert before.replica_on(4) is None

            # add node 4: learner, snapshot, promotion
            desc = await change_replicas(
                cluster,
                1,
                [
                    (replica_pb2.REPLICA_CHANGE_TYPE_ADD_LEARNER, 4),
                    (replica_pb2.REPLICA_CHANGE_TYPE_PROMOTE_VOTER, 4),
                ],
            )
            added = desc.replica_on(4)
            assert added is not None and added.type == ReplicaType.VOTER
            assert added.replica_id == before.next_replica_id
            assert desc.generation == before.generation + 2
            assert len(desc.voter_node_ids) == 4
            layout = await async_wait_for(lambda: settled(cluster, meta), 30, "meta and nodes")
            assert layout == [desc]
            n4 = node_child(cluster, 4).address
            infos = await range_infos(cluster, n4)
            assert infos is not None and [i.descriptor.range_id for i in infos] == [1]
            assert RangeDescriptor.from_proto(infos[0].descriptor) == desc

            async def n4_has_all() -> bool:
                for k, v in data.items():
                    if await inconsistent_get(cluster, n4, 1, k) != v:
                        return False
                return True

            await async_wait_for(n4_has_all, 20, "node 4 to serve the data")
            # node 4 takes part in raft: it can lead the range
            data[b"c-new"] = b"after-add"
            await put(kv, b"c-new", data[b"c-new"])
            await async_wait_for(n4_has_all, 20, "node 4 to apply a new write")

            # remove a replica that is not the leaseholder's
            holder = await async_wait_for(lambda: leaseholder(cluster, 1), 20, "a leaseholder")
            victim = next(n for n in (1, 2, 3, 4) if n != holder)
            desc = await change_replicas(
                cluster, 1, [(replica_pb2.REPLICA_CHANGE_TYPE_REMOVE, victim)]
            )
            assert desc.replica_on(victim) is None and len(desc.voter_node_ids) == 3
            layout = await async_wait_for(lambda: settled(cluster, meta), 30, "the removal")
            assert layout == [desc]

            async def victim_empty() -> bool:
                infos = await range_infos(cluster, node_child(cluster, victim).address)
                return infos == []

            await async_wait_for(victim_empty, 20, f"node {victim} to destroy its replica")
            # the old replica now answers RangeNotFound; the gateway keeps working
            resp = await replica_call(
                cluster,
                node_child(cluster, victim).address,
                "Batch",
                replica_pb2.ReplicaBatchRequest(
                    range_id=1, ops=[replica_pb2.ReplicaOp(get=replica_pb2.GetOp(key=b"b00"))]
                ),
            )
            assert isinstance(resp, replica_pb2.ReplicaBatchResponse) and resp.HasField("error")
            await check_data(kv, data)
            data[b"d-new"] = b"after-remove"
            await put(kv, b"d-new", data[b"d-new"])
            await check_data(kv, data)

    run(body)


def test_dead_node_is_replaced(tmp_path: Path) -> None:
    async def body() -> None:
        async with (
            cluster_of_four(tmp_path / "c") as cluster,
            kv_stubs(cluster) as (kv,),
            meta_client(cluster) as meta,
        ):
            for key in (b"p", b"g"):  # range 1 keeps the left-hand side
                await admin_split(cluster, 1, key)
            layout = await async_wait_for(lambda: settled(cluster, meta), 30, "the splits")
            assert len(layout) == 3 and all(len(d.voter_node_ids) == 3 for d in layout)

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
            child = node_child(cluster, victim)
            assert child.proc is not None
            child.signal(signal.SIGKILL)
            await child.proc.wait()
            n_before = len(acked)

            async def up_replicated() -> list[RangeDescriptor] | None:
                layout = await settled(cluster, meta)
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

    run(body)
