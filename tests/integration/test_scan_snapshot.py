"""Multi-range scans are snapshots, whatever the gateway's clock says.

Each test puts one interleaving in place with the in-process cluster (real
stores, schedulers and engines; a network and clocks the test controls) and
runs the gateway's real DistSender against it, so the outcome is deterministic:

* a write in flight on range A when the scan reads A, acknowledged before the
  same client's next write on range B, which the scan then reads: the scan must
  not hold the second write without the first;
* a gateway whose clock is behind (within the allowed offset), or steps back,
  must still see every write acknowledged before its scan began;
* a read timestamp far ahead of a node's clock is refused and counted, and the
  node's clock does not move;
* writes that arrive while a scan holds its fences wait, and land above the
  scan's timestamp -- and the `no_scan_fence` mutation, which lets them through,
  is caught by the same test.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from testkit.inproc import InProcCluster, InProcNodeClients, layout, meta_lookup_of, started

from rangekv.common import errors as E
from rangekv.domain.txn import TxnStatus
from rangekv.gateway.dist_sender import DistSender, NodeDirectory
from rangekv.gateway.range_cache import RangeCache
from rangekv.replication.mutations import Mutation
from rangekv.v1 import replica_pb2, types_pb2

MS = 1_000_000


def gateway(
    cluster: InProcCluster,
    node_id: int,
    gate: Callable[[int, int, replica_pb2.ReplicaBatchRequest], Awaitable[None]] | None = None,
) -> DistSender:
    """A gateway (DistSender) run by "process" `node_id` (whose FakeClock offset is
    its clock's; the gateway reads no clock for scans today, which is the point)."""

    async def push(*_: Any) -> TxnStatus:
        return TxnStatus.PENDING

    async def no_registry() -> Any:
        raise E.Unavailable("no registry in this test")

    cache = RangeCache(meta_lookup_of(cluster), push, lambda *_: None, prefetch=4)
    directory = NodeDirectory(no_registry)
    for n in cluster.node_ids:
        directory.set(n, f"node-{n}")
    return DistSender(
        cache,
        InProcNodeClients(cluster, gate),
        directory,
        timeout=10.0,
        rng=random.Random(7),
    )


async def scan_all(sender: DistSender, start: bytes = b"", end: bytes = b"") -> dict[bytes, bytes]:
    rows: dict[bytes, bytes] = {}
    chunks: AsyncIterator[tuple[list[types_pb2.KeyValue], types_pb2.Timestamp]]
    chunks = sender.scan(start, end, 0)
    async for kvs, _ts in chunks:
        for kv in kvs:
            rows[kv.key] = kv.value
    return rows


@pytest.fixture
async def two_ranges(tmp_path: Path) -> AsyncIterator[InProcCluster]:
    """Range 1 = [.., m) led by node 1, range 2 = [m, ..) led by node 2."""
    async with started(tmp_path, layout(b"m"), {1: 1, 2: 2}) as cluster:
        yield cluster


async def test_scan_never_holds_a_later_write_without_an_earlier_one(
    two_ranges: InProcCluster,
) -> None:
    """W_a (range 1) is in flight when the scan reads range 1; it is acknowledged,
    then W_b (range 2) is written and acknowledged; then the scan reads range 2.
    W_a finished before W_b began, so a snapshot holding W_b holds W_a."""
    cluster = two_ranges
    at_range_2 = asyncio.Event()
    go_on = asyncio.Event()

    async def gate(node: int, range_id: int, req: replica_pb2.ReplicaBatchRequest) -> None:
        if range_id == 2:
            at_range_2.set()
            await go_on.wait()

    # W_a is appended on node 1 but cannot commit: node 1's messages are held.
    cluster.router.hold_all_from(1)
    leader = cluster.replica(1, 1)
    last = leader.group.raw_node.last_index()
    write_a = asyncio.ensure_future(cluster.put(1, 1, b"a", b"W_a"))
    await cluster.until(
        lambda: leader.group.raw_node.last_index() > last, "W_a proposed", tick=False
    )

    scan = asyncio.ensure_future(scan_all(gateway(cluster, 10, gate)))
    await asyncio.wait_for(at_range_2.wait(), 10)  # the scan is past range 1

    cluster.router.release_all()
    await asyncio.wait_for(write_a, 10)
    await cluster.put(2, 2, b"n", b"W_b")  # the same client's next write
    go_on.set()
    rows = await asyncio.wait_for(scan, 10)
    if b"n" in rows:
        assert b"a" in rows, f"scan holds W_b but not W_a, which finished before W_b began: {rows}"


async def test_a_gateway_whose_clock_is_behind_sees_acknowledged_writes(
    two_ranges: InProcCluster,
) -> None:
    cluster = two_ranges
    cluster.clock.offsets_ns[11] = -200 * MS  # within the 500 ms bound
    on_time, behind = gateway(cluster, 10), gateway(cluster, 11)
    await scan_all(on_time)  # an earlier scan, as any workload has
    await cluster.put(1, 1, b"k", b"v")
    assert await cluster.get(1, 1, b"k") == b"v"
    rows = await scan_all(behind)
    assert rows.get(b"k") == b"v", "a scan that began after the put was acknowledged missed it"


async def test_a_gateway_clock_stepping_back_still_sees_acknowledged_writes(
    two_ranges: InProcCluster,
) -> None:
    cluster = two_ranges
    sender = gateway(cluster, 10)
    await scan_all(sender)
    await cluster.put(2, 2, b"q", b"v")
    cluster.clock.offsets_ns[10] = -1000 * MS  # the gateway's clock steps back one second
    rows = await scan_all(sender)
    assert rows.get(b"q") == b"v"


async def test_a_read_timestamp_far_ahead_is_refused_and_moves_no_clock(
    two_ranges: InProcCluster,
) -> None:
    cluster = two_ranges
    now = cluster.clock.wall_ns(1)
    ahead = types_pb2.Timestamp(wall_time=now + 10_000 * MS)
    op = replica_pb2.ReplicaOp(get=replica_pb2.GetOp(key=b"k"))
    with pytest.raises(E.RangeKVError) as refused:
        await cluster.batch(1, 1, [op], read_timestamp=ahead)
    assert "ahead" in str(refused.value)
    version = await cluster.put(1, 1, b"k", b"v")
    assert version.wall_time < now + 1000 * MS, "the far-ahead timestamp dragged the clock"


async def writes_during_a_scan(cluster: InProcCluster) -> dict[bytes, bytes]:
    """While a scan holds its fences (its releases are parked), W_y (key y) is
    written on range 2 and then W_b (key b) on range 1 -- each waited for as far as the store lets
    it finish. Node 2's clock runs ahead (within the bound), so the scan's
    timestamp comes from node 2, and node 1's writes would land below it; node 1
    hears nothing from node 2 meanwhile, so its clock does not learn of W_y."""
    cluster.clock.offsets_ns[2] = 100 * MS
    at_release = asyncio.Event()
    go_on = asyncio.Event()

    async def gate(node: int, range_id: int, req: replica_pb2.ReplicaBatchRequest) -> None:
        if req.ops[0].WhichOneof("op") == "fence" and req.HasField("read_timestamp"):
            at_release.set()
            await go_on.wait()

    scan = asyncio.ensure_future(scan_all(gateway(cluster, 10, gate)))
    await asyncio.wait_for(at_release.wait(), 10)  # every range is held
    # Node 1 hears nothing from node 2 for now, so its clock does not learn of W_y.
    cluster.router.hold(2, 1)
    writes = []
    for node, key in ((2, b"y"), (1, b"b")):
        leader = cluster.replica(node, node)
        write = asyncio.ensure_future(cluster.put(node, node, key, b"W_" + key))
        writes.append(write)
        # Let it finish if the store lets it; a held fence keeps it queued.
        await cluster.until(
            lambda w=write, r=leader: w.done() or bool(r.queued_writes),  # type: ignore[misc]
            f"{key!r} applied or held back",
            tick=False,
        )
    go_on.set()
    rows = await asyncio.wait_for(scan, 10)
    await asyncio.wait_for(asyncio.gather(*writes), 10)
    cluster.router.release(2, 1)
    return rows


async def test_writes_during_a_scan_wait_for_its_fences(two_ranges: InProcCluster) -> None:
    rows = await writes_during_a_scan(two_ranges)
    if b"b" in rows:
        assert b"y" in rows, f"scan holds W_b but not W_y, which finished first: {rows}"
    assert not rows, f"writes made while the scan held its fences are in it: {rows}"


async def test_the_no_scan_fence_mutation_is_caught(tmp_path: Path) -> None:
    async with started(
        tmp_path, layout(b"m"), {1: 1, 2: 2}, mutation=Mutation.NO_SCAN_FENCE
    ) as cluster:
        rows = await writes_during_a_scan(cluster)
    assert b"b" in rows and b"y" not in rows, f"the mutation went unnoticed: {rows}"


async def test_raft_traffic_from_a_clock_beyond_the_offset_is_refused(
    two_ranges: InProcCluster,
) -> None:
    """A peer whose clock is beyond the maximum offset is refused (and counted),
    never followed; one within the offset is absorbed."""
    store = two_ranges.stores[1]
    now = two_ranges.clock.wall_ns(1)
    assert not store.admit_clock(9, types_pb2.Timestamp(wall_time=now + 2_000 * MS))
    assert store.ctx.refusals.counts["clock_offset"] == 1  # type: ignore[attr-defined]
    assert store.hlc.now().wall_time < now + 1_000 * MS, "the refused clock was absorbed"
    assert store.admit_clock(9, types_pb2.Timestamp(wall_time=now + 300 * MS))
    assert store.hlc.now().wall_time >= now + 300 * MS
