"""The version ceiling through real stores: bootstrap, writes, a split, a restart, a snapshot.

A range's ceiling (`rangekv.raftnode.range_state`) bounds the timestamps of
its MVCC versions, so that a put above it skips reading its key. It is
replicated state: every replica must hold the same one at the same applied
index (the replica checksums compare range-local keys too, and are compared
here), and it must stay a bound wherever a replica's state comes from: a
split, a restart, a snapshot, a power cut that loses unsynced applies (nosync)
and the replay after it. In-process cluster, RocksDB.
"""

from __future__ import annotations

from pathlib import Path

from testkit.inproc import InProcCluster, layout, started

from rangekv.common.hlc import Timestamp
from rangekv.raftnode.consistency import replica_checksum
from rangekv.raftnode.range_state import ts_from_proto
from rangekv.raftnode.store import INITIAL_INDEX
from rangekv.replication.sync_mode import FsmSyncMode


def ceilings(cluster: InProcCluster, range_id: int) -> dict[int, Timestamp | None]:
    return {
        n: cluster.replica(n, range_id).state.version_ceiling
        for n in cluster.node_ids
        if n not in cluster.stopped
    }


def assert_replicas_agree(cluster: InProcCluster, range_id: int) -> None:
    """Every live replica of `range_id` at one applied index, with one state digest."""
    sums = {
        n: replica_checksum(cluster.stores[n].state_engine, range_id)
        for n in cluster.node_ids
        if n not in cluster.stopped
    }
    held = [(c.applied_index, c.digest) for c in sums.values() if c is not None]
    assert len(held) == len(sums) and len(set(held)) == 1, sums


async def test_every_replica_holds_the_same_ceiling_wherever_its_state_came_from(
    tmp_path: Path,
) -> None:
    # Logs truncated to nothing when asked: a replica that missed entries needs a snapshot.
    async with started(tmp_path, layout(), {1: 2}, log_retain_entries=0) as cluster:
        assert ceilings(cluster, 1) == dict.fromkeys(cluster.node_ids, Timestamp.MIN)

        first = ts_from_proto(await cluster.put(2, 1, b"k", b"v"))
        right_key = ts_from_proto(await cluster.put(2, 1, b"x", b"v"))
        await cluster.until_applied_everywhere(1, cluster.replica(2, 1).applied_index)
        assert ceilings(cluster, 1) == dict.fromkeys(cluster.node_ids, right_key)
        assert right_key > first

        # A split: the right-hand side's versions were the left's, so is its ceiling.
        right = await cluster.split(1, b"m", 2)
        await cluster.until_applied_everywhere(right.range_id, INITIAL_INDEX)
        assert ceilings(cluster, right.range_id) == dict.fromkeys(cluster.node_ids, right_key)

        # A restart reloads it from the engine.
        await cluster.stop_node(3)
        await cluster.restart_node(3)
        assert ceilings(cluster, 1)[3] == right_key

        # A snapshot brings the sender's: node 3 misses writes, and the leader's log
        # no longer holds them.
        router = cluster.router
        router.cut(1, 3)
        router.cut(2, 3)
        latest = right_key
        for i in range(5):
            latest = ts_from_proto(await cluster.put(2, 1, b"k%d" % i, b"v"))
        assert cluster.replica(2, 1).state.version_ceiling == latest
        await cluster.stores[2].truncate_logs()
        router.heal(1, 3)
        router.heal(2, 3)
        await cluster.until_applied_everywhere(1, cluster.replica(2, 1).applied_index)
        assert len(router.snapshot_results) >= 1, "node 3 caught up without a snapshot"
        assert ceilings(cluster, 1) == dict.fromkeys(cluster.node_ids, latest)
        assert_replicas_agree(cluster, 1)
        assert_replicas_agree(cluster, right.range_id)


async def test_a_power_cut_replays_the_same_ceiling(tmp_path: Path) -> None:
    """Nosync: a follower loses the applies it had not synced and replays them from
    its log; it must end with the ceiling (and state) of the others."""
    async with started(
        tmp_path, layout(), {1: 1}, sync_mode=FsmSyncMode.NOSYNC, power_cuts=True
    ) as cluster:
        for i in range(5):
            await cluster.put(1, 1, b"k%d" % i, b"v")
        await cluster.until_applied_everywhere(1, cluster.replica(1, 1).applied_index)
        before = ceilings(cluster, 1)
        assert len(set(before.values())) == 1 and None not in before.values(), before
        cluster.router.hold_all_to(3)
        assert await cluster.power_cut(3) > 0, "nothing unsynced to lose: the test shows nothing"
        await cluster.restart_node(3)
        cluster.router.release_all()
        latest = ts_from_proto(await cluster.put(1, 1, b"after", b"v"))
        await cluster.until_applied_everywhere(1, cluster.replica(1, 1).applied_index)
        assert ceilings(cluster, 1) == dict.fromkeys(cluster.node_ids, latest)
        assert_replicas_agree(cluster, 1)
