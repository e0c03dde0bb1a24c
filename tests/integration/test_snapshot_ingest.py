"""A snapshot older than what a replica holds never overwrites it.

The interleaving (in-process cluster, so it is exact): node 1 leads and starts
streaming a snapshot to a lagging follower (node 3); the stream stalls; the
lease moves to node 2, which catches node 3 up from its log, and a new write
(k2) is acknowledged and applied on node 3; then the stale stream from node 1
finishes. If node 3 ingested it, k2 would be gone from node 3 for good: its
applied index stays ahead of the data, so nothing is ever re-applied. The
`stale_snapshot_ingest` mutation (the old unchecked ingest) must lose k2.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from testkit.inproc import InProcCluster, layout, started

from rangekv.replication.mutations import Mutation
from rangekv.replication.sync_mode import FsmSyncMode

MODES = pytest.mark.parametrize("mode", [FsmSyncMode.SYNC, FsmSyncMode.NOSYNC], ids=str)
#: On RocksDB and on the engines' in-memory twins.
ENGINES = pytest.mark.parametrize("engines", ["rocksdb", "memory"])


def single_range(
    tmp_path: Path, mode: FsmSyncMode, engines: str, mutation: Mutation = Mutation.NONE
) -> contextlib.AbstractAsyncContextManager[InProcCluster]:
    """Range 1 led by node 1; logs truncated at once (a lagging replica needs a snapshot)."""
    return started(
        tmp_path,
        layout(),
        {1: 1},
        sync_mode=mode,
        log_retain_entries=0,
        mutation=mutation,
        engines=engines,
    )


async def stale_stream_after_catch_up(cluster: InProcCluster) -> bytes | None:
    """Run the interleaving; returns what node 3 answers for k2 as leaseholder."""
    router = cluster.router
    # Node 3 falls behind: nothing from the leader reaches it.
    router.cut(1, 3)
    router.cut(2, 3)
    await cluster.put(1, 1, b"k1", b"v1")
    # Node 1 truncates its log, so node 3 can only catch up from a snapshot.
    await cluster.stores[1].truncate_logs()
    gate = router.hold_snapshots(1, 3)
    router.heal(1, 3)
    await cluster.until(
        lambda: router.streams_in_flight == 1, "node 1 to start streaming a snapshot to node 3"
    )
    # The lease moves to node 2, which catches node 3 up from its own log.
    router.cut(1, 3)
    router.heal(2, 3)
    await cluster.make_leaseholder(1, 2)
    await cluster.put(2, 1, b"k2", b"v2")
    applied = cluster.replica(2, 1).applied_index
    await cluster.until(
        lambda: cluster.replica(3, 1).applied_index >= applied, "node 3 to apply k2"
    )
    # The stale stream from node 1 completes now.
    gate.set()
    await cluster.until(lambda: len(router.snapshot_results) >= 1, "the stale stream to end")
    router.heal(1, 3)
    await cluster.make_leaseholder(1, 3)
    assert await cluster.get(3, 1, b"k1") == b"v1"
    return await cluster.get(3, 1, b"k2")


@MODES
@ENGINES
async def test_a_stale_snapshot_does_not_overwrite_newer_state(
    tmp_path: Path, mode: FsmSyncMode, engines: str
) -> None:
    async with single_range(tmp_path, mode, engines) as cluster:
        assert await stale_stream_after_catch_up(cluster) == b"v2", "an acknowledged write was lost"
        assert cluster.router.snapshot_results[0][:2] == (1, 3)


@MODES
@ENGINES
async def test_the_stale_snapshot_mutation_is_caught(
    tmp_path: Path, mode: FsmSyncMode, engines: str
) -> None:
    async with single_range(tmp_path, mode, engines, Mutation.STALE_SNAPSHOT_INGEST) as cluster:
        assert await stale_stream_after_catch_up(cluster) is None, "the mutation went unnoticed"


async def test_a_stream_to_a_node_that_stops_breaks_and_the_node_catches_up(
    tmp_path: Path,
) -> None:
    """The receiver of a stalled snapshot stream loses power: the stream breaks (as
    its gRPC stream would), the sender hears the snapshot failed, and once the node
    is back it is caught up. (A stream that kept waiting on the dead receiver left
    the leader waiting on that snapshot for good.)"""
    async with single_range(tmp_path, FsmSyncMode.SYNC, "memory") as cluster:
        router = cluster.router
        router.cut(1, 3)
        router.cut(2, 3)
        await cluster.put(1, 1, b"k1", b"v1")
        await cluster.stores[1].truncate_logs()
        gate = router.hold_snapshots(1, 3)
        router.heal(1, 3)
        await cluster.until(lambda: router.streams_in_flight == 1, "a stream from node 1 to 3")
        await cluster.power_cut(3)
        await cluster.until(
            lambda: router.streams_in_flight == 0, "the stream to break", tick=False
        )
        assert router.snapshot_results == [(1, 3, 1, False)]
        gate.set()
        router.heal(2, 3)
        await cluster.restart_node(3)
        await cluster.put(1, 1, b"k2", b"v2")
        applied = cluster.replica(1, 1).applied_index
        await cluster.until(
            lambda: cluster.replica(3, 1).applied_index >= applied, "node 3 to catch up"
        )
        await cluster.make_leaseholder(1, 3)
        assert await cluster.get(3, 1, b"k2") == b"v2"
