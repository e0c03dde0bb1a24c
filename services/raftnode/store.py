"""The store: every range replica of one storage node.

A store is a `GroupHost` (engines, scheduler, ticker, log truncation, snapshot
streaming) whose groups are ranges. It creates replicas at bootstrap, at
restart (from the descriptors in the state engine) and on demand when a peer
sends raft traffic for a range this node has never seen (heartbeats and
snapshots carry the descriptor, so the node knows its replica id).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from rangekv.common.descriptors import RangeDescriptor
from rangekv.common.hlc import HybridClock
from rangekv.raft import ConfState, HardState, Message, MessageType, Snapshot, SnapshotMetadata
from rangekv.raftnode.keys import data_span
from rangekv.raftnode.replica import (
    RangeReplica,
    ReadOutcomeCounter,
    ReplicaContext,
    ReplicaLimits,
)
from rangekv.replication.group import RaftGroup
from rangekv.replication.host import GroupHost, HostConfig, SendRaft, Span
from rangekv.replication.scheduler import SchedulerMetrics
from rangekv.replication.state_engine import (
    DESCRIPTOR,
    LOCAL_PREFIX,
    AppliedState,
    range_local_span,
)
from rangekv.v1 import types_pb2

log = logging.getLogger(__name__)

_CARRY_DESCRIPTOR = frozenset({MessageType.HEARTBEAT, MessageType.SNAP})

#: The raft log of a bootstrapped range starts after this index (a synthetic
#: snapshot), so "index 0" never has to mean anything.
INITIAL_INDEX = 10
INITIAL_TERM = 5


@dataclass(frozen=True)
class StoreConfig:
    """Everything a store needs to know about itself."""

    host: HostConfig
    limits: ReplicaLimits = field(default_factory=ReplicaLimits)
    max_clock_offset_ns: int = 500_000_000
    gc_interval: float = 60.0


class Store(GroupHost):
    """The replicas of one node. Create, load or bootstrap, then `start()` in the loop."""

    def __init__(
        self,
        config: StoreConfig,
        *,
        resolve_address: Callable[[int], str],
        send_raft: SendRaft,
        scheduler_metrics: SchedulerMetrics | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        super().__init__(
            config.host,
            send_raft=send_raft,
            scheduler_metrics=scheduler_metrics,
            monotonic=monotonic,
        )
        self.config = config
        self.node_id = config.host.node_id
        self.hlc = HybridClock(wall_ns, config.max_clock_offset_ns)
        self.ctx = ReplicaContext(
            node_id=self.node_id,
            engine=self.state_engine,
            hlc=self.hlc,
            limits=config.limits,
            resolve_address=resolve_address,
            monotonic=monotonic,
            reads=ReadOutcomeCounter(),
        )

    # --- replicas --------------------------------------------------------------------

    def replica(self, range_id: int) -> RangeReplica | None:
        group = self.scheduler.group(range_id)
        return group if isinstance(group, RangeReplica) else None

    def replicas(self) -> list[RangeReplica]:
        return [g for g in self.scheduler.groups.values() if isinstance(g, RangeReplica)]

    def load_replicas(self) -> int:
        """Recreate every replica recorded in the state engine; returns how many."""
        count = 0
        for key, raw in self.state_engine.iterate(LOCAL_PREFIX, b"\x02"):
            if key[-1:] != DESCRIPTOR:
                continue
            desc = RangeDescriptor.from_proto(types_pb2.RangeDescriptor.FromString(raw))
            mine = desc.replica_on(self.node_id)
            if mine is None:
                continue
            self._add_replica(desc, mine.replica_id)
            count += 1
        return count

    def bootstrap(self, descriptor: RangeDescriptor) -> bool:
        """Create the first range on this node if the node holds no replica yet.

        Every initial node bootstraps the same descriptor at the same synthetic
        snapshot, so their raft groups start identical. Idempotent.
        """
        if self.replicas() or self.log_engine.group_ids():
            return False
        mine = descriptor.replica_on(self.node_id)
        if mine is None:
            raise ValueError(f"node {self.node_id} is not in {descriptor}")
        voters = tuple(sorted(r.replica_id for r in descriptor.replicas if r.type == 1))
        learners = tuple(sorted(r.replica_id for r in descriptor.replicas if r.type == 2))
        meta = SnapshotMetadata(INITIAL_INDEX, INITIAL_TERM, ConfState(voters, learners))
        batch = self.state_engine.new_batch()
        batch.put_local(descriptor.range_id, DESCRIPTOR, descriptor.to_proto().SerializeToString())
        batch.set_applied_state(descriptor.range_id, AppliedState(INITIAL_INDEX, INITIAL_TERM))
        self.state_engine.commit(batch, force_sync=True)
        log_batch = self.log_engine.new_batch()
        log_batch.apply_snapshot(descriptor.range_id, Snapshot(meta))
        # The term starts at the snapshot's: a log's terms never exceed the current term.
        log_batch.set_hard_state(
            descriptor.range_id, HardState(term=INITIAL_TERM, vote=0, commit=INITIAL_INDEX)
        )
        self.log_engine.commit(log_batch)
        self._add_replica(descriptor, mine.replica_id)
        log.info("bootstrapped range %d %s", descriptor.range_id, _span(descriptor))
        return True

    def _add_replica(self, desc: RangeDescriptor, replica_id: int) -> RangeReplica:
        applied = self.applied_state(desc.range_id)
        raw_node = self.new_raw_node(desc.range_id, replica_id, applied)
        replica = RangeReplica(
            self.ctx, desc, replica_id, raw_node, applied, wake=self.scheduler.wake
        )
        self.scheduler.add_group(replica)
        return replica

    def start(self) -> None:
        super().start()
        self._tasks.append(asyncio.get_running_loop().create_task(self._gc_loop(), name="mvcc-gc"))

    async def _gc_loop(self) -> None:
        """Every gc_interval, each range this node leads collects its old versions."""
        while True:
            await asyncio.sleep(self.config.gc_interval)
            for replica in self.replicas():
                fut = replica.propose_gc()
                if fut is not None:
                    fut.add_done_callback(_ignore_outcome)

    # --- raft traffic -------------------------------------------------------------------

    def route(
        self, group: RaftGroup, msg: Message
    ) -> tuple[int, types_pb2.RangeDescriptor | None] | None:
        assert isinstance(group, RangeReplica)
        target = group.descriptor.replica_by_id(msg.to)
        if target is None:
            return None  # a replica removed from the descriptor: nobody to send to
        # The descriptor lets a node create a replica it has never heard of. Only
        # heartbeats (periodic, small) and snapshots carry it: not every append.
        return target.node_id, group.descriptor_pb if msg.type in _CARRY_DESCRIPTOR else None

    def handle_raft(
        self, messages: Sequence[tuple[int, Message, types_pb2.RangeDescriptor | None]]
    ) -> None:
        """Deliver received raft messages to their replicas (never blocks)."""
        for group_id, msg, desc_pb in messages:
            replica = self.replica(group_id)
            if replica is None:
                replica = self._maybe_create_uninitialized(group_id, msg, desc_pb)
                if replica is None:
                    continue
            if msg.to != replica.replica_id:
                continue  # addressed to an older incarnation of this node's replica
            replica.deliver(msg)

    def _maybe_create_uninitialized(
        self, group_id: int, msg: Message, desc_pb: types_pb2.RangeDescriptor | None
    ) -> RangeReplica | None:
        """A peer talks to a replica this node has not created yet (a replica added
        by a replica change): create it empty; the leader will send a snapshot."""
        if desc_pb is None or desc_pb.range_id != group_id:
            return None
        desc = RangeDescriptor.from_proto(desc_pb)
        mine = desc.replica_on(self.node_id)
        if mine is None or mine.replica_id != msg.to:
            return None
        log.info("creating replica %d of range %d on demand", mine.replica_id, group_id)
        return self._add_replica(desc, mine.replica_id)

    # --- snapshots ------------------------------------------------------------------------

    def snapshot_spans(self, group: RaftGroup) -> list[Span]:
        assert isinstance(group, RangeReplica)
        return _range_spans(group.range_id, group.descriptor)

    async def handle_snapshot(
        self,
        group_id: int,
        message: Message,
        desc_pb: types_pb2.RangeDescriptor,
        chunks: AsyncIterator[bytes],
    ) -> bool:
        """Ingest a streamed snapshot, then hand the SNAP message to raft."""
        desc = RangeDescriptor.from_proto(desc_pb)
        mine = desc.replica_on(self.node_id)
        if mine is None or mine.replica_id != message.to:
            return False
        # Create the replica first (empty raft state), so that its core never
        # starts with an applied index its log does not know.
        replica = self.replica(group_id) or self._add_replica(desc, mine.replica_id)
        await self.ingest_snapshot(_range_spans(group_id, desc), chunks)
        applied = self.applied_state(group_id)
        replica.applied_index = max(replica.applied_index, applied.index)
        stored = self.state_engine.get_local(group_id, DESCRIPTOR)
        if stored:
            replica.descriptor = RangeDescriptor.from_proto(
                types_pb2.RangeDescriptor.FromString(stored)
            )
        replica.deliver(message)
        return True


def _range_spans(range_id: int, desc: RangeDescriptor) -> list[Span]:
    local_lo, local_hi = range_local_span(range_id)
    data_lo, data_hi = data_span(desc.start_key, desc.end_key)
    return [(local_lo, local_hi), (data_lo, data_hi)]


def _ignore_outcome(fut: asyncio.Future[object]) -> None:
    """GC proposals may be dropped (leadership moved): the next round retries."""
    if not fut.cancelled():
        fut.exception()


def _span(desc: RangeDescriptor) -> str:
    return f"[{desc.start_key!r}, {desc.end_key!r})"
