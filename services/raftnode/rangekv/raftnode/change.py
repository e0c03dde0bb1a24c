"""Replica changes: add (learner, snapshot, promote), remove, replace.

A replica change of a range runs on its leaseholder as a descriptor
transaction, like a split (`rangekv.raftnode.descriptor_txn` runs both), one
raft membership step per transaction (`rangekv.domain.descriptor_txn.plan_replica_change`):

  1. write the txn record PENDING on the range at its start key (raft), keep
     heartbeating it, and mark it active on this node: a push never aborts
     an active change (`push_local`), because its commit is a conf change;
  2. sweep: resolve other transactions' intents inside the span;
  3. write the lock: the intent meta(end) = the new descriptor (generation + 1),
     conditional on the committed descriptor this node holds;
  4. read the record (lease or read-index: everything before this leader's
     term is applied) - still PENDING - then propose the raft conf change
     (ADD_LEARNER | ADD_NODE | REMOVE_NODE) whose context carries the txn and
     the new descriptor. Its apply, on every replica alike, changes the
     membership, writes the descriptor and marks the record COMMITTED
     (`RangeStateMachine.apply_conf_change`); the store then records fresh raft
     snapshot metadata (so the leader's snapshot names a new learner) or
     destroys a removed replica;
  5. resolve the intent COMMITTED and forget the record's intent keys.

Why the record cannot be aborted while the conf change is in flight: an
aborting push is a raft command of some leader. On this node the change is
active, so this node's pushes do not abort it. Another leader's push is
either in this leader's log before its own term (applied before step 4 reads
the record) or after the conf change entry (log matching: a later leader that
holds the conf change appends after it; one that does not hold it overwrites
it, and the change never applies). A conf change that never applies is
noticed by a timeout: the coordinator aborts the record, and an ABORT that
lands after a surviving conf change answers COMMITTED (`txn.decide`), so the
intent is always resolved to what the range did.

Adding a replica on node N: ADD_LEARNER with replica id = next_replica_id
(the node creates the replica on demand from the leader's heartbeat and gets a
snapshot through the streaming path), wait until the learner's match index
reaches the leader's applied index, then PROMOTE (ADD_NODE). Removing: the
leaseholder's own replica cannot be removed (transfer the lease first).
Replacing a dead node's replica: add on a live node without one, then remove.
The policy deciding which of these to run is the rebalancer's (`rebalancer`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from rangekv.common import errors as E
from rangekv.common.clock import Clock
from rangekv.common.descriptors import RangeDescriptor, ReplicaDescriptor, ReplicaType
from rangekv.domain.descriptor_txn import DescriptorTxn, plan_replica_change, replicas_with
from rangekv.domain.txn import TxnStatus
from rangekv.raft import ConfChange, ConfChangeType
from rangekv.raftnode.descriptor_txn import DescriptorTxns
from rangekv.raftnode.replica import RangeReplica
from rangekv.replication.group import NotLeaderNow
from rangekv.v1 import raftcmd_pb2, replica_pb2

__all__ = [
    "ADD_LEARNER",
    "PROMOTE_VOTER",
    "REMOVE",
    "ReplicaChangeConfig",
    "ReplicaChanger",
    "changed_replicas",
]

log = logging.getLogger(__name__)

ADD_LEARNER = replica_pb2.REPLICA_CHANGE_TYPE_ADD_LEARNER
PROMOTE_VOTER = replica_pb2.REPLICA_CHANGE_TYPE_PROMOTE_VOTER
REMOVE = replica_pb2.REPLICA_CHANGE_TYPE_REMOVE


@dataclass(frozen=True)
class ReplicaChangeConfig:
    #: Voters every range should have.
    replication_factor: int = 3
    #: A node the registry reports not live for this long is dead: its replicas are replaced.
    dead_after: float = 60.0
    #: Seconds between rebalancer passes (0: no rebalancer, no replica GC).
    check_interval: float = 5.0
    #: Whether the passes run the policy (False: they only garbage-collect replicas).
    rebalance: bool = True
    #: Seconds a range whose replica or lease the spreading rules moved is left where
    #: it went (no further spreading move of it by this node; rebalancer.py).
    rebalance_cooldown: float = 30.0
    #: How long a new learner may take to catch up before the add gives up.
    catchup_timeout: float = 60.0
    #: How long a proposed conf change may take to apply.
    apply_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.replication_factor < 1 or self.dead_after <= 0 or self.check_interval < 0:
            raise ValueError("replication_factor >= 1, dead_after > 0, check_interval >= 0")
        if self.rebalance_cooldown < 0:
            raise ValueError("rebalance_cooldown must be >= 0")
        if self.catchup_timeout <= 0 or self.apply_timeout <= 0:
            raise ValueError("catchup_timeout and apply_timeout must be > 0")


def changed_replicas(
    original: RangeDescriptor, kind: int, node_id: int
) -> tuple[tuple[ReplicaDescriptor, ...], ConfChangeType, int]:
    """(the new replica set, the raft conf change, its replica id) for one step."""
    existing = original.replica_on(node_id)
    if kind == ADD_LEARNER:
        if existing is not None:
            raise E.InvalidArgument("node_id", f"node {node_id} already has a replica")
        replicas = replicas_with(original, node_id, ReplicaType.LEARNER)
        return replicas, ConfChangeType.ADD_LEARNER, original.next_replica_id
    if existing is None:
        raise E.InvalidArgument("node_id", f"node {node_id} has no replica of the range")
    if kind == PROMOTE_VOTER:
        if existing.type != ReplicaType.LEARNER:
            raise E.InvalidArgument("node_id", f"the replica on node {node_id} is no learner")
        replicas = tuple(
            ReplicaDescriptor(r.node_id, r.replica_id, ReplicaType.VOTER) if r is existing else r
            for r in original.replicas
        )
        return replicas, ConfChangeType.ADD_NODE, existing.replica_id
    if kind == REMOVE:
        replicas = tuple(r for r in original.replicas if r is not existing)
        if not any(r.type == ReplicaType.VOTER for r in replicas):
            raise E.InvalidArgument("node_id", "cannot remove the last voter")
        return replicas, ConfChangeType.REMOVE_NODE, existing.replica_id
    raise E.InvalidArgument("changes.type", f"unknown replica change type {kind}")


def _done_already(original: RangeDescriptor, kind: int, node_id: int) -> bool:
    """Whether the step is a no-op (a retry, or the rebalancer got there first)."""
    existing = original.replica_on(node_id)
    if kind == ADD_LEARNER:
        return existing is not None
    if kind == PROMOTE_VOTER:
        return existing is not None and existing.type == ReplicaType.VOTER
    return kind == REMOVE and existing is None


class ReplicaChanger:
    """Runs replica changes for the ranges this node leads."""

    def __init__(self, txns: DescriptorTxns, config: ReplicaChangeConfig, clock: Clock) -> None:
        self.txns = txns
        self.store = txns.store
        self.config = config
        self._clock = clock
        self.changes_done = 0
        #: Ranges with a multi-step change in progress here: the rebalancer skips them.
        self.busy: set[int] = set()

    # --- the public operations ---------------------------------------------------------------

    async def change(
        self, range_id: int, kind: int, node_id: int, expected_generation: int = 0
    ) -> RangeDescriptor:
        """One membership step (ADD_LEARNER | PROMOTE_VOTER | REMOVE) as a descriptor txn."""
        self.txns.require_meta()
        self.txns.leader_replica(range_id)
        async with self.txns.lock(range_id):
            replica = self.txns.leader_replica(range_id)
            original = replica.descriptor
            if expected_generation and original.generation != expected_generation:
                raise E.ConditionFailed(b"", original)
            if _done_already(original, kind, node_id):
                return original
            if kind == REMOVE and node_id == self.store.node_id:
                raise E.InvalidArgument(
                    "node_id", "the leaseholder's replica cannot be removed: transfer the lease"
                )
            replicas, cc_type, replica_id = changed_replicas(original, kind, node_id)
            plan = plan_replica_change(original, replicas, self.txns.new_txn_id())
            new = await self._run(replica, plan, cc_type, replica_id)
            self.changes_done += 1
            log.info(
                "range %d: replica change %s node %d done: generation %d, replicas %s",
                range_id,
                cc_type.name,
                node_id,
                new.generation,
                [(r.node_id, r.replica_id, r.type.name) for r in new.replicas],
            )
            return new

    async def add_replica(self, range_id: int, node_id: int) -> RangeDescriptor:
        """Add a voter on `node_id`: learner, catch-up (snapshot), promotion."""
        self.busy.add(range_id)
        try:
            return await self._add_replica(range_id, node_id)
        finally:
            self.busy.discard(range_id)

    async def move_replica(self, range_id: int, source: int, target: int) -> RangeDescriptor:
        """Move a voter from `source` to `target`: add there first, then remove, so
        the range never has fewer voters than before."""
        self.busy.add(range_id)
        try:
            await self._add_replica(range_id, target)
            return await self.change(range_id, REMOVE, source)
        finally:
            self.busy.discard(range_id)

    async def _add_replica(self, range_id: int, node_id: int) -> RangeDescriptor:
        replica = self.txns.leader_replica(range_id)
        existing = replica.descriptor.replica_on(node_id)
        if existing is None:
            await self.change(range_id, ADD_LEARNER, node_id)
        elif existing.type == ReplicaType.VOTER:
            return replica.descriptor
        return await self.promote(range_id, node_id)

    async def promote(self, range_id: int, node_id: int) -> RangeDescriptor:
        await self.wait_caught_up(range_id, node_id)
        return await self.change(range_id, PROMOTE_VOTER, node_id)

    async def wait_caught_up(self, range_id: int, node_id: int) -> None:
        """Until the replica on `node_id` has everything the leader had applied when asked."""
        replica = self.txns.leader_replica(range_id)
        target = replica.descriptor.replica_on(node_id)
        if target is None:
            raise E.InvalidArgument("node_id", f"node {node_id} has no replica of the range")
        goal = replica.applied_index
        deadline = self._clock.monotonic() + self.config.catchup_timeout
        while True:
            replica = self.txns.leader_replica(range_id)
            progress = replica.group.status().progress.get(target.replica_id)
            if progress is not None and progress.match >= goal:
                return
            if self._clock.monotonic() > deadline:
                raise E.Unavailable(
                    f"range {range_id}: the replica on node {node_id} did not catch up "
                    f"within {self.config.catchup_timeout}s"
                )
            await self._clock.sleep(0.05)  # polling the leader's progress of the learner

    async def replace(self, range_id: int, dead_node: int, new_node: int) -> RangeDescriptor:
        await self.add_replica(range_id, new_node)
        return await self.change(range_id, REMOVE, dead_node)

    # --- the transaction ----------------------------------------------------------------

    async def _run(
        self,
        replica: RangeReplica,
        plan: DescriptorTxn,
        cc_type: ConfChangeType,
        replica_id: int,
    ) -> RangeDescriptor:
        (new,) = plan.updates
        txn_pb = plan.txn.to_proto()

        async def commit() -> None:
            rec = await replica.read_txn_record(txn_pb)
            if rec is None or rec.status != TxnStatus.PENDING:
                raise E.Unavailable("replica change was aborted before its commit")
            if replica.descriptor != plan.original:
                raise E.Unavailable("the range changed under the replica change")
            context = raftcmd_pb2.ReplicaChangeContext(txn=txn_pb, descriptor=new.to_proto())
            applied = replica.wait_change_applied(plan.txn.id)
            try:
                await self._propose(
                    replica, ConfChange(cc_type, replica_id, context.SerializeToString())
                )
                await asyncio.wait_for(asyncio.shield(applied), self.config.apply_timeout)
            except TimeoutError:
                raise E.Unavailable(
                    f"range {replica.range_id}: the conf change did not apply in time",
                    outcome=E.WriteOutcome.UNKNOWN,
                ) from None
            finally:
                replica.forget_change_waiter(plan.txn.id)

        await self.txns.run(replica, plan, commit, what="replica change", active=True)
        return new

    async def _propose(self, replica: RangeReplica, cc: ConfChange) -> None:
        """Propose, retrying while the core refuses for now (a conf change still
        pending, or no entry of this term committed yet) as long as we lead."""
        deadline = self._clock.monotonic() + self.config.apply_timeout
        while True:
            if not replica.is_leader:
                raise replica.not_lease_holder()
            try:
                await replica.group.propose_conf_change(cc)
                return
            except NotLeaderNow as exc:
                if self._clock.monotonic() > deadline:
                    raise E.Unavailable(
                        f"range {replica.range_id}: conf change refused: {exc}"
                    ) from None
            await self._clock.sleep(0.05)  # the core refused for now; retry shortly
