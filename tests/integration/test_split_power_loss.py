"""A power cut right after a split loses nothing, in FSM sync mode `nosync`.

In `nosync` the state engine is not fsynced per apply: the raft log (always
synced) is what survives, and replay rebuilds the rest. A split writes the
right-hand range's descriptor and applied index into the state engine (in the
apply batch) and its raft state into the log engine (synced, right after). If
a power cut then keeps the log but loses the state, the node holds a raft group
with no state under it: a peer's heartbeat recreates the replica at applied
index 0 over the surviving log, and it replays entries against a state that
may lack what they depend on.

The invariant the tests check: after any power cut, every raft group a node's
log holds a snapshot of (it was initialized) has its state -- descriptor and
applied index -- in the state engine. The in-process cluster's power-cut engines
lose exactly what was not synced (kill -9 never loses the OS page cache, so no
process kill can show this); the chaos suite does the same to real processes
with RANGEKV_TEST_POWER_LOSS.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from testkit.inproc import layout, started

from rangekv.raftnode.store import INITIAL_INDEX, Store
from rangekv.replication.state_engine import DESCRIPTOR
from rangekv.replication.sync_mode import FsmSyncMode
from rangekv.v1 import replica_pb2


def groups_without_state(store: Store) -> list[int]:
    """Groups whose raft log is initialized while their state is missing."""
    missing = []
    for gid in store.log_engine.group_ids():
        if store.log_engine.storage(gid).snapshot().index < INITIAL_INDEX:
            continue  # never initialized (an uninitialized replica's votes only)
        if (
            store.state_engine.get_local(gid, DESCRIPTOR) is None
            or not store.applied_state(gid).index
        ):
            missing.append(gid)
    return missing


#: On disk (power-cut engines over RocksDB) and on the engines' in-memory twins.
ENGINES = pytest.mark.parametrize("engines", ["rocksdb", "memory"])


@ENGINES
async def test_a_power_cut_right_after_a_split_leaves_no_log_without_state(
    tmp_path: Path, engines: str
) -> None:
    async with started(
        tmp_path,
        layout(),
        {1: 1},
        sync_mode=FsmSyncMode.NOSYNC,
        power_cuts=True,
        engines=engines,
    ) as cluster:
        await cluster.put(1, 1, b"n", b"1")
        right = await cluster.split(1, b"m", 2)
        await cluster.until(
            lambda: cluster.stores[3].replica(right.range_id) is not None,
            "node 3 to create the right-hand range",
            tick=False,
        )
        # One more write that node 3 applies (unsynced) before its power fails; it
        # learns the commit from the leader's next heartbeat (lazy commit).
        await cluster.put(1, 1, b"a", b"1")
        applied = cluster.replica(1, 1).applied_index
        await cluster.until(
            lambda: cluster.replica(3, 1).applied_index >= applied, "node 3 to apply it"
        )
        cluster.router.hold_all_to(3)
        assert await cluster.power_cut(3) > 0, "nothing unsynced to lose: the test shows nothing"
        seen: list[int] = []
        await cluster.restart_node(3, before_start=lambda s: seen.extend(groups_without_state(s)))
        assert seen == [], f"raft groups with no state after the power cut: {seen}"


@ENGINES
async def test_after_a_power_cut_the_right_hand_side_converges(
    tmp_path: Path, engines: str
) -> None:
    """End to end: a compare-and-swap on the right-hand side that depends on a
    write made before the split reads back right on the node that lost power."""
    async with started(
        tmp_path,
        layout(),
        {1: 1},
        sync_mode=FsmSyncMode.NOSYNC,
        power_cuts=True,
        engines=engines,
    ) as cluster:
        await cluster.put(1, 1, b"n", b"1")
        right = await cluster.split(1, b"m", 2)
        await cluster.until(lambda: cluster.leaseholder(2) == 1, "range 2 led by node 1")
        cas = replica_pb2.ReplicaOp(
            compare_and_swap=replica_pb2.CompareAndSwapOp(
                key=b"n", expected_value=b"1", new_value=b"2"
            )
        )
        resp = await cluster.batch(1, right.range_id, [cas])
        assert resp.results[0].compare_and_swap.succeeded
        want = {rid: cluster.replica(1, rid).applied_index for rid in (1, 2)}
        await cluster.until(
            lambda: all(cluster.replica(3, rid).applied_index >= want[rid] for rid in want),
            "node 3 to apply everything",
        )
        router = cluster.router
        router.hold_all_to(3)
        await cluster.power_cut(3)
        # The right-hand range may have gone quiet (quiesced) once node 3 had it all:
        # a write wakes it, so that its heartbeats head for node 3 again.
        await cluster.put(1, right.range_id, b"o", b"x")
        await cluster.until(
            lambda: any(gid == right.range_id for gid, _m, d in router.link(1, 3).queue if d),
            "a heartbeat of the right-hand range on its way to node 3",
        )

        def right_hand_first(store: Store) -> None:
            held = router.take_held(1, 3) + router.take_held(2, 3)
            store.handle_raft([m for m in held if m[0] == right.range_id])
            store.handle_raft([m for m in held if m[0] != right.range_id])

        await cluster.restart_node(3, before_start=right_hand_first)
        router.release_all()
        await cluster.until(
            lambda: all(
                cluster.stores[3].replica(rid) is not None
                and cluster.replica(3, rid).applied_index >= want[rid]
                for rid in want
            ),
            "node 3 to catch up after the power cut",
        )
        await cluster.make_leaseholder(right.range_id, 3)
        assert await cluster.get(3, right.range_id, b"n") == b"2", "node 3's copy diverged"
