"""The raft scheduler over real engines: group commit, apply, acknowledgement, replay.

Three "nodes" live in one event loop, each with its own RocksDB engines and
scheduler; messages are handed between them directly. This tests the runtime
(persist -> send -> apply -> advance) without gRPC; the real-process tests
cover the transport.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from rangekv.raft import (
    ConfChange,
    Config,
    ConfState,
    HardState,
    Message,
    RawNode,
    Snapshot,
    SnapshotMetadata,
)
from rangekv.replication.group import RaftGroup
from rangekv.replication.log_engine import RaftLogEngine
from rangekv.replication.scheduler import CountingMetrics, RaftScheduler
from rangekv.replication.state_engine import AppliedState, StateBatch, StateEngine
from rangekv.replication.state_machine import Span
from rangekv.replication.sync_mode import FsmSyncMode
from rangekv.replication.timing import RaftTiming

GROUPS = 20


class CounterState:
    """A state machine whose commands append to a per-group list kept in the state engine."""

    def __init__(self, group_id: int) -> None:
        self.group_id = group_id

    def apply_command(self, index: int, command: bytes, batch: StateBatch) -> Any:
        batch.put(b"\x03g%d-%08d" % (self.group_id, index), command)
        return index

    def apply_conf_change(self, index: int, cc: ConfChange, batch: StateBatch) -> None:
        return None

    def record_applied(self, index: int, term: int, batch: StateBatch) -> None:
        batch.set_applied_state(self.group_id, AppliedState(index, term))

    def snapshot_spans(self) -> list[Span]:
        return []

    def snapshot_installed(self, local: Mapping[bytes, bytes]) -> None:
        return None


class Node:
    def __init__(self, node_id: int, root: Path, cluster: dict[int, Node]) -> None:
        self.node_id = node_id
        self.cluster = cluster
        self.log = RaftLogEngine.open(root / f"n{node_id}" / "log")
        self.state = StateEngine.open(root / f"n{node_id}" / "state", FsmSyncMode.SYNC)
        self.metrics = CountingMetrics()
        self.scheduler = RaftScheduler(self.log, self.state, self.send, metrics=self.metrics)
        for gid in range(1, GROUPS + 1):
            self._group(gid)

    def _group(self, gid: int) -> None:
        storage = self.log.storage(gid)
        if storage.last_index() == 0:
            batch = self.log.new_batch()
            meta = SnapshotMetadata(10, 5, ConfState((1, 2, 3), ()))
            batch.apply_snapshot(gid, Snapshot(meta))
            batch.set_hard_state(gid, HardState(term=5, commit=10))
            self.log.commit(batch)
        applied_raw = self.state.get_local(gid, b"a")  # type: ignore[arg-type]
        applied = AppliedState.decode(applied_raw).index if applied_raw else 10
        node = RawNode(
            Config(
                id=self.node_id,
                applied=min(applied, storage.initial_state()[0].commit),
                rng_seed=gid,
            ),
            storage,
        )
        group = RaftGroup(
            gid,
            node,
            CounterState(gid),
            wake=self.scheduler.wake,
            incarnation=random.getrandbits(63) | 1,  # differs across restarts
            applied_index=applied,
        )
        self.scheduler.add_group(group)

    def send(self, group: RaftGroup, messages: Sequence[Message]) -> None:
        for msg in messages:
            peer = self.cluster.get(msg.to)
            if peer is not None:
                target = peer.scheduler.group(group.group_id)
                if target is not None:
                    target.deliver(msg)

    async def close(self) -> None:
        await self.scheduler.stop()
        self.log.close()
        self.state.close()


async def _until(cond: Any, what: str, ticks: Sequence[Node], limit: int = 2000) -> None:
    for i in range(limit):
        if cond():
            return
        for node in ticks:
            node.scheduler.tick_all(float(i))
        await asyncio.sleep(0.001)
    raise AssertionError(f"timed out waiting for {what}")


def _leaders(nodes: Sequence[Node]) -> dict[int, int]:
    out = {}
    for node in nodes:
        for gid, group in node.scheduler.groups.items():
            if group.raw_node.is_leader():
                out[gid] = node.node_id
    return out


async def test_group_commit_apply_and_replay(tmp_path: Path) -> None:
    cluster: dict[int, Node] = {}
    for i in (1, 2, 3):
        cluster[i] = Node(i, tmp_path, cluster)
    nodes = list(cluster.values())
    for node in nodes:
        node.scheduler.start()
    await _until(lambda: len(_leaders(nodes)) == GROUPS, "a leader in every group", nodes)

    # Concurrent proposals to every group: they must share log writes (group commit).
    before = {n.node_id: n.metrics.log_writes for n in nodes}
    entries_before = {n.node_id: n.metrics.entries for n in nodes}
    futures = []
    leaders = _leaders(nodes)
    for gid, lead in leaders.items():
        group = cluster[lead].scheduler.group(gid)
        assert group is not None
        for k in range(10):
            futures.append(group.propose(b"cmd-%d-%d" % (gid, k)))
    results = await asyncio.wait_for(asyncio.gather(*futures), 30)
    assert len(results) == GROUPS * 10

    def entries_written() -> int:
        return sum(n.metrics.entries - entries_before[n.node_id] for n in nodes)

    # A proposal completes once a quorum (2 of 3) has it, so the third replica
    # may still be writing it here: wait until every entry is on all 3 nodes.
    await _until(lambda: entries_written() >= 3 * GROUPS * 10, "every entry on 3 nodes", nodes)
    writes = sum(n.metrics.log_writes - before[n.node_id] for n in nodes)
    entries = entries_written()
    # Group commit keeps fsyncs far below entries.
    assert writes < entries / 5, (writes, entries)

    # Every node applies every command, atomically with its applied index.
    def applied_everywhere() -> bool:
        return all(
            len(list(n.state.iterate(b"\x03g%d-" % gid, b"\x03g%d." % gid))) == 10
            for n in nodes
            for gid in range(1, GROUPS + 1)
        )

    await _until(applied_everywhere, "every node to apply", nodes)
    # What a node applied is committed in its stored hard state as well: a
    # commit-only hard state is written (without fsync), so a restarted node
    # never resumes from a commit index below what it applied or truncated.
    for node in nodes:
        for gid in range(1, GROUPS + 1):
            group = node.scheduler.group(gid)
            assert group is not None
            assert node.log.storage(gid).hard_state.commit >= group.applied_index
    for node in nodes:
        await node.close()

    # Restart: the applied index came back with the effects; replay adds nothing twice.
    cluster2: dict[int, Node] = {}
    for i in (1, 2, 3):
        cluster2[i] = Node(i, tmp_path, cluster2)
    nodes2 = list(cluster2.values())
    for node in nodes2:
        node.scheduler.start()
    await _until(lambda: len(_leaders(nodes2)) == GROUPS, "leaders after restart", nodes2)
    for node in nodes2:
        for gid in range(1, GROUPS + 1):
            assert len(list(node.state.iterate(b"\x03g%d-" % gid, b"\x03g%d." % gid))) == 10
    for node in nodes2:
        await node.close()


def test_lease_derivation_leaves_room_for_drift() -> None:
    t = RaftTiming(tick_interval=0.1, election_ticks=10, max_clock_drift=0.05)
    assert t.lease_duration * (1 + t.max_clock_drift) < 9 * 0.1 * (1 - 0.05)
    assert t.lease_duration > t.heartbeat_ticks * t.tick_interval
    with pytest.raises(ValueError):
        RaftTiming(tick_interval=0.1, election_ticks=3, heartbeat_ticks=1, max_clock_drift=0.3)
