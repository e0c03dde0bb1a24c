"""The store: every range replica of one storage node.

A store composes a `GroupHost` (engines, scheduler, ticker, log truncation,
snapshot streaming) with what is a storage node's own: it routes a range's
raft messages to the nodes its descriptor names (the host's `Router`), and it
creates replicas at bootstrap, at restart (from the descriptors in the state
engine) and on demand when a peer sends raft traffic for a range this node has
never seen (heartbeats and snapshots carry the descriptor, so the node knows
its replica id). It is the node's `RaftEndpoint` (rangekv.replication.raft_network).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from rangekv.common.descriptors import RangeDescriptor, ReplicaType
from rangekv.common.hlc import ClockOffsetError, HybridClock, Timestamp
from rangekv.common.tasks import retrieve_outcome
from rangekv.raft import ConfState, HardState, Message, MessageType, Snapshot, SnapshotMetadata
from rangekv.raftnode.context import ReadOutcomeCounter, ReplicaContext
from rangekv.raftnode.range_state import encode_ceiling, range_spans
from rangekv.raftnode.replica import RangeReplica
from rangekv.raftnode.requests import ReplicaLimits
from rangekv.replication.host import GroupHost, HostConfig, HostSeams, Route
from rangekv.replication.liveness import LIVENESS_GROUP
from rangekv.replication.log_engine import RaftLogEngine
from rangekv.replication.raft_network import Inbound
from rangekv.replication.scheduler import RaftScheduler
from rangekv.replication.state_engine import (
    DESCRIPTOR,
    GC_THRESHOLD,
    LOCAL_PREFIX,
    VERSION_CEILING,
    AppliedState,
    StateBatch,
    StateEngine,
    range_local_key,
)
from rangekv.replication.sync_mode import FsmSyncMode
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


class Store:
    """The replicas of one node. Create, load or bootstrap, then `start()` in the loop."""

    def __init__(
        self, config: StoreConfig, seams: HostSeams, *, resolve_address: Callable[[int], str]
    ) -> None:
        self.config = config
        self.node_id = config.host.node_id
        self.host = GroupHost(config.host, self, seams)
        if config.host.quiesce_after_ticks:
            self.host.enable_liveness(self.peer_nodes)
        self.clock = seams.clock
        self.hlc = HybridClock(self.clock.wall_ns, config.max_clock_offset_ns)
        self.ctx = ReplicaContext(
            node_id=self.node_id,
            host=self.host,
            hlc=self.hlc,
            limits=config.limits,
            resolve_address=resolve_address,
            clock=self.clock,
            reads=ReadOutcomeCounter(),
            on_split=self._on_split,
            descriptor_for_key=self._descriptor_for_key,
            on_replica_change=self._on_replica_change,
        )
        self._replicas: dict[int, RangeReplica] = {}
        #: Shutting down or decommissioning: peers hand this node no lease (RangeInfo).
        self.draining = False
        #: When a clock-offset refusal was last logged, per sender (rate limit).
        self._offset_logged: dict[int, float] = {}
        #: Replicas being destroyed (range id): a destroy runs once.
        self._destroying: set[int] = set()
        self.replicas_destroyed = 0

    # --- the host's parts ------------------------------------------------------------

    @property
    def scheduler(self) -> RaftScheduler:
        return self.host.scheduler

    @property
    def state_engine(self) -> StateEngine:
        return self.host.state_engine

    @property
    def log_engine(self) -> RaftLogEngine:
        return self.host.log_engine

    def applied_state(self, range_id: int) -> AppliedState:
        return self.host.applied_state(range_id)

    async def truncate_logs(self) -> int:
        return await self.host.truncate_logs()

    # --- replicas --------------------------------------------------------------------

    def replica(self, range_id: int) -> RangeReplica | None:
        return self._replicas.get(range_id)

    def replicas(self) -> list[RangeReplica]:
        return list(self._replicas.values())

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
            if self.applied_state(desc.range_id) == AppliedState(INITIAL_INDEX, INITIAL_TERM):
                # A split's right-hand side whose raft state may not have been
                # written before a crash (it is written after the split's batch).
                self._write_initial_raft_state(desc, keep_existing=True)
            self._repair_conf_state(desc)
            self._add_replica(desc, mine.replica_id)
            count += 1
        return count

    def _repair_conf_state(self, desc: RangeDescriptor) -> None:
        """At load: make the raft log's snapshot metadata name the membership of
        the stored descriptor. A replica change writes the descriptor atomically
        with its apply, and the snapshot metadata right after (`after_apply`); a
        crash in between would restart the core with the old membership while
        its applied index is past the change (entries up to it are not replayed)."""
        gid = desc.range_id
        storage = self.log_engine.storage(gid)
        hs, conf = storage.initial_state()
        want = _conf_state(desc)
        if conf == want:
            return
        index = min(self.applied_state(gid).index, hs.commit, storage.last_index())
        if index <= storage.snapshot().index:
            return
        batch = self.log_engine.new_batch()
        batch.create_snapshot(gid, index, want)
        self.log_engine.commit(batch)
        log.info("range %d: raft snapshot metadata repaired to %s at %d", gid, want, index)

    def bootstrap(self, descriptor: RangeDescriptor) -> bool:
        """Create the first range on this node if the node holds no replica yet.

        Every initial node bootstraps the same descriptor at the same synthetic
        snapshot, so their raft groups start identical. Idempotent.
        """
        return self.bootstrap_ranges((descriptor,))

    def bootstrap_ranges(self, descriptors: Sequence[RangeDescriptor]) -> bool:
        """Create an initial layout of several ranges (tests and tools that start
        a cluster pre-split); the same rules as `bootstrap`, for each range that
        names this node. Idempotent: a node that holds any replica does nothing."""
        if self._replicas or self.log_engine.group_ids():
            return False
        mine = [(d, d.replica_on(self.node_id)) for d in descriptors]
        if all(r is None for _d, r in mine):
            raise ValueError(f"node {self.node_id} is in none of {list(descriptors)}")
        batch = self.state_engine.new_batch()
        for descriptor, replica in mine:
            if replica is None:
                continue
            batch.put_local(
                descriptor.range_id, DESCRIPTOR, descriptor.to_proto().SerializeToString()
            )
            batch.set_applied_state(descriptor.range_id, AppliedState(INITIAL_INDEX, INITIAL_TERM))
            # No versions yet: every put above zero may skip reading (range_state).
            batch.put_local(descriptor.range_id, VERSION_CEILING, encode_ceiling(INITIAL_INDEX))
        self.state_engine.commit(batch, force_sync=True)
        for descriptor, replica in mine:
            if replica is None:
                continue
            self._write_initial_raft_state(descriptor, keep_existing=False)
            self._add_replica(descriptor, replica.replica_id)
            log.info("bootstrapped range %d %s", descriptor.range_id, _span(descriptor))
        return True

    def _write_initial_raft_state(
        self, descriptor: RangeDescriptor, *, keep_existing: bool
    ) -> None:
        """The synthetic initial snapshot (INITIAL_INDEX, INITIAL_TERM) of a new
        range's raft log. With `keep_existing`, a log that already holds a
        snapshot is left alone, and a hard state (the term and vote of an
        uninitialized replica that took part in an election) is kept."""
        gid = descriptor.range_id
        storage = self.log_engine.storage(gid)
        hs, _conf = storage.initial_state()
        if keep_existing and storage.snapshot().index >= INITIAL_INDEX:
            return
        meta = SnapshotMetadata(INITIAL_INDEX, INITIAL_TERM, _conf_state(descriptor))
        log_batch = self.log_engine.new_batch()
        log_batch.apply_snapshot(gid, Snapshot(meta))
        # The term starts at the snapshot's: a log's terms never exceed the current term.
        if keep_existing and hs.term > INITIAL_TERM:
            hard = HardState(term=hs.term, vote=hs.vote, commit=max(hs.commit, INITIAL_INDEX))
        else:
            hard = HardState(term=INITIAL_TERM, vote=0, commit=INITIAL_INDEX)
        log_batch.set_hard_state(gid, hard)
        self.log_engine.commit(log_batch)

    def _add_replica(self, desc: RangeDescriptor, replica_id: int) -> RangeReplica:
        replica = RangeReplica(self.ctx, desc, replica_id)
        self._replicas[desc.range_id] = replica
        return replica

    def _drop_replica(self, range_id: int) -> None:
        self._replicas.pop(range_id, None)
        self.scheduler.remove_group(range_id)

    # --- splits ---------------------------------------------------------------------------

    def _on_split(
        self,
        lhs: RangeReplica,
        left: RangeDescriptor,
        right: RangeDescriptor,
        batch: StateBatch,
    ) -> None:
        """Split trigger, inside the apply of the LHS's commit (every replica alike).

        The right-hand side's MVCC data and txn records are already in this
        engine (keyed by user key): only its range-local state is written, at
        the synthetic initial index, unless the RHS is already initialized
        here (a replayed split). Its raft group is created once the batch is
        durable (`after_apply`): the log-engine writes must not run beside the
        scheduler's own log commit.
        """
        reader = batch.reader()
        rid = right.range_id
        if reader.get(range_local_key(rid, DESCRIPTOR)) is None:
            batch.put_local(rid, DESCRIPTOR, right.to_proto().SerializeToString())
            batch.set_applied_state(rid, AppliedState(INITIAL_INDEX, INITIAL_TERM))
            gc = reader.get(range_local_key(lhs.range_id, GC_THRESHOLD))
            if gc is not None:
                batch.put_local(rid, GC_THRESHOLD, gc)
            # The RHS's versions were the LHS's: its ceiling bounds them too.
            ceiling = lhs.state.split_ceiling(INITIAL_INDEX)
            if ceiling is not None:
                batch.put_local(rid, VERSION_CEILING, ceiling)
        log.info(
            "split range %d into %s r%d and %s r%d",
            lhs.range_id,
            _span(left),
            left.range_id,
            _span(right),
            rid,
        )
        campaign = lhs.is_leader
        self.scheduler.after_apply(lambda: self._create_split_rhs(right, campaign))

    def _create_split_rhs(self, right: RangeDescriptor, campaign: bool) -> None:
        """Create the RHS raft group (in the scheduler's section, after the split is durable)."""
        mine = right.replica_on(self.node_id)
        if mine is None:
            return
        rid = right.range_id
        existing = self.replica(rid)
        if existing is not None:
            if existing.applied_index >= INITIAL_INDEX:
                return  # already initialized (a snapshot, or a replayed split)
            # An uninitialized replica created from a heartbeat: it holds no state.
            self._drop_replica(rid)
        if self.applied_state(rid).index < INITIAL_INDEX:
            return  # our split batch did not initialize it: nothing to create from
        stored = self.state_engine.get_local(rid, DESCRIPTOR)
        desc = (
            RangeDescriptor.from_proto(types_pb2.RangeDescriptor.FromString(stored))
            if stored
            else right
        )
        if self.state_engine.sync_mode == FsmSyncMode.NOSYNC:
            # The right-hand side's state (descriptor, applied index: in the split's
            # unsynced apply batch) must be durable before its raft state is: a log
            # that survives a power cut without its state would be recreated empty
            # and replayed against data its entries do not belong to.
            self.state_engine.sync()
        self._write_initial_raft_state(desc, keep_existing=True)
        replica = self._add_replica(desc, mine.replica_id)
        if campaign:
            # The left-hand leader's node starts the right-hand election at once,
            # FORCED: the new group's replicas start in the boot quiet period
            # (their raft state has a term), which would refuse a normal campaign
            # for a whole election timeout. Forcing is safe here and only here:
            # the group never had a leader, so no lease can be broken, and this
            # node applied the split, so its left-hand side no longer serves the
            # right-hand keys. Every other replica still waits out the quiet
            # period, which keeps a right-hand leader from appearing elsewhere
            # while a left-hand leaseholder that has not applied the split yet
            # could still serve those keys.
            replica.group.force_campaign(self.config.host.timing.election_ticks)

    # --- replica changes -------------------------------------------------------------------

    def _on_replica_change(self, replica: RangeReplica, new: RangeDescriptor) -> None:
        """Inside the apply of a replica change (every replica alike): once the
        batch is durable, record fresh raft snapshot metadata at the change (a
        follower only restores a snapshot whose membership names it, and the
        leader sends the metadata of its last snapshot), or destroy this
        replica if the change removed it."""
        mine = new.replica_on(self.node_id)
        if mine is None or mine.replica_id != replica.replica_id:
            log.info(
                "range %d: replica %d removed from this node", new.range_id, replica.replica_id
            )
            self.scheduler.after_apply(lambda: self._destroy_now(replica, new))
            return
        self.scheduler.after_apply(lambda: self._snapshot_conf_state(replica))

    def _snapshot_conf_state(self, replica: RangeReplica) -> None:
        """In the scheduler's section: snapshot metadata at the last applied conf change."""
        if replica.removed:
            return
        gid = replica.range_id
        storage = self.log_engine.storage(gid)
        index = replica.group.last_conf_index
        if index <= storage.snapshot().index or index > storage.last_index():
            return
        if self.state_engine.sync_mode == FsmSyncMode.NOSYNC:
            # The core restarts at the snapshot index: its effects must be durable.
            self.state_engine.sync()
        batch = self.log_engine.new_batch()
        batch.create_snapshot(gid, index, replica.group.conf_state())
        self.log_engine.commit(batch)

    def destroy_replica(self, replica: RangeReplica, why: str) -> None:
        """Destroy a replica this node no longer holds (from outside the scheduler)."""
        log.info("range %d: destroying replica %d: %s", replica.range_id, replica.replica_id, why)
        self.scheduler.after_apply(lambda: self._destroy_now(replica, replica.descriptor))

    def _destroy_now(self, replica: RangeReplica, desc: RangeDescriptor) -> None:
        """In the scheduler's section: drop the group, its raft log and its state."""
        gid = replica.range_id
        if self.replica(gid) is not replica or gid in self._destroying:
            return
        self._destroying.add(gid)
        try:
            self._drop_replica(gid)
            self.log_engine.destroy(gid)
            batch = self.state_engine.new_batch()
            for lo, hi in range_spans(gid, desc):
                if hi is not None:
                    batch.delete_range(lo, hi)
            self.state_engine.commit(batch, force_sync=True)
        finally:
            self._destroying.discard(gid)
        self.replicas_destroyed += 1

    # --- other nodes' clocks -----------------------------------------------------------

    def clock_now(self) -> types_pb2.Timestamp:
        """This node's hybrid clock, for stamping outgoing raft batches."""
        now = self.hlc.now()
        return types_pb2.Timestamp(wall_time=now.wall_time, logical=now.logical)

    def admit_clock(self, sender: int, clock: types_pb2.Timestamp) -> bool:
        """Whether raft traffic stamped with `clock` by node `sender` is taken.

        A sender whose clock is more than the maximum offset ahead of ours is
        refused and counted: followed, its timestamps (committed through raft,
        then absorbed by every replica at apply) would drag every clock of the
        cluster ahead. Cut off, it cannot lead nor ack, and the cluster goes on
        without it. Otherwise its clock is absorbed (bounded by that check)."""
        remote = Timestamp(clock.wall_time, clock.logical)
        try:
            self.hlc.update(remote)
        except ClockOffsetError as exc:
            self.ctx.refusals.add("clock_offset")
            now = self.clock.monotonic()
            if now - self._offset_logged.get(sender, -1e9) > 10.0:
                self._offset_logged[sender] = now
                log.error("refusing raft traffic from node %d: %s", sender, exc)
            return False
        return True

    def _descriptor_for_key(self, key: bytes) -> RangeDescriptor | None:
        replica = self.initialized_replica_for(key)
        return replica.descriptor if replica is not None else None

    def initialized_replica_for(self, key: bytes) -> RangeReplica | None:
        """This node's initialized replica whose range holds `key`, if any."""
        for replica in self._replicas.values():
            if replica.applied_index >= INITIAL_INDEX and replica.descriptor.contains_key(key):
                return replica
        return None

    # --- background -----------------------------------------------------------------------

    def start(self) -> None:
        self.host.start()
        self.host.spawn(self._gc_loop(), "mvcc-gc")

    async def stop(self) -> None:
        await self.host.stop()

    async def _gc_loop(self) -> None:
        """Every gc_interval, each range this node leads collects its old versions."""
        while True:
            await self.clock.sleep(self.config.gc_interval)
            for replica in self.replicas():
                fut = replica.propose_gc()
                if fut is not None:
                    # A GC proposal may be dropped (leadership moved): the next round retries.
                    fut.add_done_callback(retrieve_outcome)

    # --- raft traffic (Router and RaftEndpoint) ---------------------------------------------

    def route(self, group_id: int, msg: Message) -> Route | None:
        replica = self._replicas.get(group_id)
        if replica is None:
            return None
        target = replica.descriptor.replica_by_id(msg.to)
        if target is None:
            return None  # a replica removed from the descriptor: nobody to send to
        # The descriptor lets a node create a replica it has never heard of. Only
        # heartbeats (periodic, small) and snapshots carry it: not every append.
        carried = replica.state.descriptor_pb if msg.type in _CARRY_DESCRIPTOR else None
        return target.node_id, carried

    def peer_nodes(self) -> set[int]:
        """The nodes holding a replica of any range this node holds (liveness peers)."""
        return {r.node_id for rep in self._replicas.values() for r in rep.descriptor.replicas}

    def handle_raft(self, messages: Sequence[Inbound]) -> None:
        """Deliver received raft messages to their replicas (never blocks)."""
        for group_id, msg, desc_pb in messages:
            if group_id == LIVENESS_GROUP:
                self.host.handle_liveness(msg)
                continue
            replica = self.replica(group_id)
            if replica is None:
                replica = self._maybe_create_uninitialized(group_id, msg, desc_pb)
                if replica is None:
                    continue
            if msg.to != replica.replica_id:
                if msg.to > replica.replica_id and _names(desc_pb, self.node_id, msg.to):
                    # This node's replica was removed and the range re-added here
                    # under a new replica id: the old incarnation goes.
                    self.destroy_replica(replica, f"superseded by replica {msg.to}")
                continue  # addressed to another incarnation of this node's replica
            replica.group.deliver(msg)

    def report_unreachable(self, node_id: int, group_id: int, replica_id: int) -> None:
        self.host.report_unreachable(node_id, group_id, replica_id)

    def report_snapshot(self, node_id: int, group_id: int, replica_id: int, failed: bool) -> None:
        self.host.report_snapshot(node_id, group_id, replica_id, failed)

    def snapshot_source(self, group_id: int, message: Message) -> AsyncIterator[bytes]:
        return self.host.snapshot_source(group_id, message)

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
        if self.log_engine.storage(group_id).snapshot().index >= INITIAL_INDEX:
            # An initialized raft log with no state under it (only a lost state
            # write can leave that): replaying it over an empty state machine would
            # apply its entries to data they do not belong to. Wait for the split
            # that creates it to be re-applied, or for a snapshot.
            log.warning(
                "range %d: raft log without state on this node; not recreating it from "
                "a peer's message",
                group_id,
            )
            return None
        log.info("creating replica %d of range %d on demand", mine.replica_id, group_id)
        return self._add_replica(desc, mine.replica_id)

    async def handle_snapshot(
        self,
        group_id: int,
        message: Message,
        desc_pb: types_pb2.RangeDescriptor | None,
        chunks: AsyncIterator[bytes],
    ) -> bool:
        """Ingest a streamed snapshot, then hand the SNAP message to raft."""
        if desc_pb is None:
            return False  # a range's snapshot always names its descriptor
        desc = RangeDescriptor.from_proto(desc_pb)
        mine = desc.replica_on(self.node_id)
        if mine is None or mine.replica_id != message.to:
            return False
        snap = message.snapshot
        if snap is not None:
            cs = snap.metadata.conf_state
            if message.to not in cs.voters and message.to not in cs.learners:
                # Raft would refuse it: do not overwrite the state it would not adopt.
                log.debug("refusing snapshot of range %d: its membership lacks us", group_id)
                return False
        existing = self.replica(group_id)
        if existing is not None and existing.replica_id != message.to:
            return False  # an older incarnation of this node's replica is still here
        for other in self._replicas.values():
            if (
                other.range_id != group_id
                and other.applied_index >= INITIAL_INDEX
                and other.descriptor.overlaps(desc.start_key, desc.end_key)
            ):
                # The right-hand side of a split this node has not applied yet: its
                # keys still belong to the local left-hand side, which will create
                # it when it applies the split. Refused; the leader retries later.
                log.debug(
                    "refusing snapshot of range %d: overlaps range %d", group_id, other.range_id
                )
                return False
        # Create the replica first (empty raft state), so that its core never
        # starts with an applied index its log does not know.
        replica = existing or self._add_replica(desc, mine.replica_id)
        return await self.host.install_snapshot(
            replica.group, message, range_spans(group_id, desc), chunks
        )


def _names(desc_pb: types_pb2.RangeDescriptor | None, node_id: int, replica_id: int) -> bool:
    return desc_pb is not None and any(
        r.node_id == node_id and r.replica_id == replica_id for r in desc_pb.replicas
    )


def _conf_state(desc: RangeDescriptor) -> ConfState:
    voters = tuple(sorted(r.replica_id for r in desc.replicas if r.type == ReplicaType.VOTER))
    learners = tuple(sorted(r.replica_id for r in desc.replicas if r.type == ReplicaType.LEARNER))
    return ConfState(voters, learners)


def _span(desc: RangeDescriptor) -> str:
    return f"[{desc.start_key!r}, {desc.end_key!r})"
