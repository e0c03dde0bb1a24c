"""Replica changes: add (learner, snapshot, promote), remove, replace; the rebalancer.

A replica change of a range runs on its leaseholder as a descriptor
transaction, like a split (`rangekv.raftnode.split`), one raft membership
step per transaction (`rangekv.metarange.protocol.plan_replica_change`):

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
     (`RangeReplica.apply_conf_change`); the store then records fresh raft
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

The rebalancer (`plan_action`, run by `ReplicaChanger`'s queue on every
leaseholder) keeps each range at the replication factor: a voter on a node the
registry has not seen for `dead_after` is replaced, missing voters are added on
live nodes, leftover learners are promoted (or removed if their node is dead).
Live voters are never removed by it, except on a decommissioning node: such a
node takes no new replica and no lease; each of its voters is replaced (the
new one added first, then the old one removed by a leaseholder elsewhere), and
a leaseholder on it hands its lease to a voter that stays. Once nothing needs
fixing, a leaseholder evens the load out one step per pass: it moves one of its
ranges' replicas from a node holding at least two more than the emptiest node
to that node (so a new node gets its share), or else hands one lease to a
voter leading clearly fewer ranges (`plan_replica_move`, `plan_lease_move`). The same queue garbage-collects replicas
that were removed while their node was away (meta's committed descriptor no
longer names them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from rangekv.common import errors as E
from rangekv.common.descriptors import RangeDescriptor, ReplicaDescriptor, ReplicaType
from rangekv.common.tasks import cancel_and_wait
from rangekv.metarange.client import MetaClient
from rangekv.metarange.protocol import DescriptorTxn, plan_replica_change, replicas_with
from rangekv.metarange.records import TxnStatus
from rangekv.raft import ConfChange, ConfChangeType
from rangekv.raftnode import txn as T
from rangekv.raftnode.replica import RangeReplica
from rangekv.raftnode.split import SplitCoordinator, _write_request
from rangekv.raftnode.store import INITIAL_INDEX, Store
from rangekv.replication.group import NotLeaderNow
from rangekv.v1 import meta_pb2, raftcmd_pb2, replica_pb2

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
    #: Seconds between rebalancer passes (0: no rebalancer).
    check_interval: float = 5.0
    #: How long a new learner may take to catch up before the add gives up.
    catchup_timeout: float = 60.0
    #: How long a proposed conf change may take to apply.
    apply_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.replication_factor < 1 or self.dead_after <= 0 or self.check_interval < 0:
            raise ValueError("replication_factor >= 1, dead_after > 0, check_interval >= 0")
        if self.catchup_timeout <= 0 or self.apply_timeout <= 0:
            raise ValueError("catchup_timeout and apply_timeout must be > 0")


# ----------------------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True)
class NodeHealth:
    """A registry entry as the rebalancer judges it."""

    live: bool
    dead: bool
    #: Decommissioning (or decommissioned): its replicas and leases must go elsewhere.
    draining: bool = False


@dataclass(frozen=True, slots=True)
class Action:
    """One step of the rebalancer: add (learner + promote) | promote | remove |
    transfer (hand the lease to the voter on `node_id`)."""

    kind: str
    node_id: int


_LEAVING_STATES = (meta_pb2.NODE_STATE_DECOMMISSIONING, meta_pb2.NODE_STATE_DECOMMISSIONED)


def node_health(
    nodes: meta_pb2.ListNodesResponse, now_wall_ns: int, dead_after: float
) -> dict[int, NodeHealth]:
    """Live as the registry says; dead when not live and unheard of for `dead_after`;
    draining when decommissioning."""
    out = {}
    for st in nodes.nodes:
        silent = (now_wall_ns - st.last_heartbeat_wall_time) / 1e9
        out[st.node.node_id] = NodeHealth(
            st.live, not st.live and silent >= dead_after, st.state in _LEAVING_STATES
        )
    return out


def plan_action(
    desc: RangeDescriptor,
    leader_node: int,
    health: Mapping[int, NodeHealth],
    replication_factor: int,
) -> Action | None:
    """What the leaseholder of `desc` should do next to keep it at the replication
    factor (None: nothing). Pure: the unit tests drive it.

    - a learner (a crashed add's leftover): promote it, or remove it if its node is
      dead or draining;
    - fewer voters on staying nodes (neither dead nor draining) than the factor and a
      staying live node without a replica: add there (spread by range id);
    - a dead voter once enough live voters exist (the replacement joined): remove it;
    - a draining voter once enough staying voters exist: remove it;
    - the leaseholder itself draining, and a staying voter to take over (after the
      adds that can be made): hand the lease to it.
    Never removes a live voter of a staying node, nor the leaseholder's own replica.
    """

    def dead(node_id: int) -> bool:
        h = health.get(node_id)
        return node_id != leader_node and h is not None and h.dead

    def draining(node_id: int) -> bool:
        h = health.get(node_id)
        return h is not None and h.draining

    for r in desc.replicas:
        if r.type == ReplicaType.LEARNER:
            gone = dead(r.node_id) or draining(r.node_id)
            return Action("remove" if gone else "promote", r.node_id)
    voters = desc.voter_node_ids
    live_voters = [n for n in voters if not dead(n)]
    dead_voters = [n for n in voters if dead(n)]
    staying = [n for n in live_voters if not draining(n)]
    leaving = [n for n in live_voters if draining(n) and n != leader_node]
    candidates = sorted(
        n
        for n, h in health.items()
        if h.live and not h.dead and not h.draining and desc.replica_on(n) is None
    )
    if len(staying) < replication_factor and candidates:
        return Action("add", candidates[desc.range_id % len(candidates)])
    if dead_voters and len(live_voters) >= replication_factor:
        return Action("remove", dead_voters[0])  # its replacement has joined
    if leaving and len(staying) >= replication_factor:
        return Action("remove", leaving[0])
    if draining(leader_node) and staying:
        return Action("transfer", staying[desc.range_id % len(staying)])
    return None


def plan_lease_move(
    led: list[tuple[int, tuple[int, ...]]], counts: dict[int, int], me: int
) -> tuple[int, int] | None:
    """Which lease to hand away, if this node leads clearly more ranges than a voter.

    `led`: (range id, voter node ids) of the ranges this node leads; `counts`:
    leases per live node (this node included). Moves one lease at a time, to
    the live voter holding the fewest leases, and only when this node holds at
    least two more than it: every move then narrows the spread, so leases never
    ping-pong, and a new node with no lease gets one from a node with two
    (a rule against the mean would leave it empty when the mean is about one).
    """
    if len(counts) < 2 or me not in counts:
        return None
    for range_id, voters in sorted(led):
        candidates = [n for n in voters if n != me and n in counts]
        if not candidates:
            continue
        target = min(candidates, key=lambda n: (counts[n], n))
        if counts[me] - counts[target] >= 2:
            return range_id, target
    return None


def plan_replica_move(
    led: list[tuple[int, tuple[int, ...]]], counts: dict[int, int], me: int
) -> tuple[int, int, int] | None:
    """Which replica to move so that replica counts even out: (range id, from, to).

    `led`: (range id, voter node ids) of the ranges this node leads; `counts`:
    replicas per live, staying node (this node included). The target is the
    node holding the fewest; a move is planned only from a voter holding at
    least two more (hysteresis: counts within one of each other never move),
    never from this node (a leaseholder does not remove itself), one at a time.
    """
    if len(counts) < 2:
        return None
    target = min(counts, key=lambda n: (counts[n], n))
    for range_id, voters in sorted(led):
        if target in voters:
            continue
        sources = [n for n in voters if n != me and n in counts]
        if not sources:
            continue
        source = max(sources, key=lambda n: (counts[n], -n))
        if counts[source] - counts[target] >= 2:
            return range_id, source, target
    return None


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


# ----------------------------------------------------------------------------- coordinator


class ReplicaChanger:
    """Runs replica changes for the ranges this node leads, and the rebalancer."""

    def __init__(
        self,
        store: Store,
        meta: MetaClient | None,
        splits: SplitCoordinator,
        config: ReplicaChangeConfig,
    ) -> None:
        self.store = store
        self.meta = meta
        self.splits = splits
        self.config = config
        self._tasks: list[asyncio.Task[None]] = []
        self.changes_done = 0
        #: Ranges with a multi-step change in progress here: the rebalancer skips them.
        self.busy: set[int] = set()

    def _leader_replica(self, range_id: int) -> RangeReplica:
        replica = self.store.replica(range_id)
        if replica is None or replica.applied_index < INITIAL_INDEX:
            raise E.RangeNotFound(range_id, self.store.node_id)
        if not replica.raw_node.is_leader():
            raise replica.not_lease_holder()
        return replica

    # --- the public operations ---------------------------------------------------------------

    async def change(
        self, range_id: int, kind: int, node_id: int, expected_generation: int = 0
    ) -> RangeDescriptor:
        """One membership step (ADD_LEARNER | PROMOTE_VOTER | REMOVE) as a descriptor txn."""
        if self.meta is None:
            raise E.Unavailable("this node has no meta range address (--meta-addrs)")
        self._leader_replica(range_id)
        async with self.splits._locks[range_id]:
            replica = self._leader_replica(range_id)
            original = replica.descriptor
            if expected_generation and original.generation != expected_generation:
                raise E.ConditionFailed(b"", original)
            existing = original.replica_on(node_id)
            done_already = (
                (kind == ADD_LEARNER and existing is not None)
                or (
                    kind == PROMOTE_VOTER
                    and existing is not None
                    and existing.type == ReplicaType.VOTER
                )
                or (kind == REMOVE and existing is None)
            )
            if done_already:
                return original  # idempotent: a retry, or the rebalancer got there first
            if kind == REMOVE and node_id == self.store.node_id:
                raise E.InvalidArgument(
                    "node_id", "the leaseholder's replica cannot be removed: transfer the lease"
                )
            replicas, cc_type, replica_id = changed_replicas(original, kind, node_id)
            plan = plan_replica_change(original, replicas, os.urandom(16))
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

    async def _add_replica(self, range_id: int, node_id: int) -> RangeDescriptor:
        replica = self._leader_replica(range_id)
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
        replica = self._leader_replica(range_id)
        target = replica.descriptor.replica_on(node_id)
        if target is None:
            raise E.InvalidArgument("node_id", f"node {node_id} has no replica of the range")
        goal = replica.applied_index
        deadline = time.monotonic() + self.config.catchup_timeout
        while True:
            replica = self._leader_replica(range_id)
            progress = replica.raw_node.status().progress.get(target.replica_id)
            if progress is not None and progress.match >= goal:
                return
            if time.monotonic() > deadline:
                raise E.Unavailable(
                    f"range {range_id}: the replica on node {node_id} did not catch up "
                    f"within {self.config.catchup_timeout}s"
                )
            await asyncio.sleep(0.05)  # polling the leader's progress of the learner

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
        assert self.meta is not None
        meta = self.meta
        txn_pb = plan.txn.to_proto()
        (new,) = plan.updates
        active = replica.ctx.active_txns
        active.add(plan.txn.id)
        try:
            create = raftcmd_pb2.TxnOp(kind=T.CREATE, txn=txn_pb)
            create.intent_keys.extend(w.meta_key for w in plan.writes())
            rec = await replica.propose_txn_op(create)
            if rec is None or rec.status != T.PENDING:
                raise E.Unavailable("replica change record could not be created")
            heartbeat = asyncio.ensure_future(self.splits._heartbeat(replica, txn_pb))
            committed = False
            try:
                await self.splits._sweep(plan)
                for write in plan.writes():
                    await meta.write_intent(_write_request(write))
                rec = await replica.read_txn_record(txn_pb)
                if rec is None or rec.status != T.PENDING:
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
                committed = True
            except BaseException:
                heartbeat.cancel()
                if not committed:
                    await self.splits._give_up(replica, plan)
                raise
            heartbeat.cancel()
        finally:
            active.discard(plan.txn.id)
        for res in plan.resolutions(TxnStatus.COMMITTED):
            with contextlib.suppress(E.RangeKVError):
                await meta.resolve_intent(res.meta_key, res.txn_id, int(TxnStatus.COMMITTED))
        with contextlib.suppress(E.RangeKVError):
            await replica.propose_txn_op(raftcmd_pb2.TxnOp(kind=T.CLEAR_INTENTS, txn=txn_pb))
        return new

    async def _propose(self, replica: RangeReplica, cc: ConfChange) -> None:
        """Propose, retrying while the core refuses for now (a conf change still
        pending, or no entry of this term committed yet) as long as we lead."""
        deadline = time.monotonic() + self.config.apply_timeout
        while True:
            if not replica.raw_node.is_leader():
                raise replica.not_lease_holder()
            try:
                await replica.propose_conf_change(cc)
                return
            except NotLeaderNow as exc:
                if time.monotonic() > deadline:
                    raise E.Unavailable(
                        f"range {replica.range_id}: conf change refused: {exc}"
                    ) from None
            await asyncio.sleep(0.05)  # the core refused for now; retry shortly

    # --- the rebalancer and replica GC ---------------------------------------------------------

    def start(self) -> None:
        if self.config.check_interval and self.meta is not None:
            loop = asyncio.get_running_loop()
            self._tasks.append(loop.create_task(self._queue_loop(), name="replicate-queue"))

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks.clear()

    async def _queue_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.check_interval)
            try:
                await self.rebalance_once()
            except E.RangeKVError as exc:
                log.info("rebalancer: %s", exc)
            except Exception:
                log.exception("rebalancer pass failed")

    async def rebalance_once(self) -> int:
        """One pass over this node's replicas; returns how many actions ran."""
        assert self.meta is not None
        nodes = await self.meta.list_nodes()
        health = node_health(nodes, self.store.hlc.physical_now(), self.config.dead_after)
        done = 0
        for replica in list(self.store.replicas()):
            if (
                replica.removed
                or replica.applied_index < INITIAL_INDEX
                or replica.range_id in self.busy
            ):
                continue
            try:
                if replica.raw_node.is_leader():
                    done += await self._rebalance_range(replica, health)
                else:
                    await self._maybe_gc(replica)
            except E.RangeKVError as exc:
                log.info("range %d: rebalancer: %s", replica.range_id, exc)
        if done == 0:
            done += await self._maybe_spread_leases(nodes, health)
        return done

    async def _maybe_spread_leases(
        self, nodes: meta_pb2.ListNodesResponse, health: dict[int, NodeHealth]
    ) -> int:
        """Balance the cluster one step: move a replica of a range this node leads
        to a node holding clearly fewer replicas (a new node gets its share this
        way), else hand one lease to a less loaded voter."""
        me = self.store.node_id
        if self.store.draining or health.get(me, NodeHealth(True, False)).draining:
            return 0  # a leaving node hands leases away (plan_action), it does not spread them
        mine = [r for r in self.store.replicas() if not r.removed and r.applied_index]
        led = [r for r in mine if r.raw_node.is_leader() and r.range_id not in self.busy]
        if not led:
            return 0
        leases = {me: len(led)}
        replicas = {me: len(mine)}
        for st in nodes.nodes:
            node_id = st.node.node_id
            h = health.get(node_id, NodeHealth(False, False))
            if node_id == me or not h.live or h.draining:
                continue
            try:
                info = await self.splits.peers.stub_at(st.node.address).RangeInfo(
                    replica_pb2.RangeInfoRequest(), timeout=2
                )
            except grpc.aio.AioRpcError:
                continue  # unreachable now: not a candidate this round
            if info.draining:
                continue  # shutting down: it would only have to hand back what it got
            leases[node_id] = sum(1 for i in info.replicas if i.is_leader)
            replicas[node_id] = len(info.replicas)
        voters = [(r.range_id, r.descriptor.voter_node_ids) for r in led]
        move = plan_replica_move(voters, replicas, me)
        if move is not None:
            range_id, source, target = move
            log.info(
                "range %d: rebalancer: moving a replica from node %d to node %d",
                range_id,
                source,
                target,
            )
            self.busy.add(range_id)
            try:
                await self._add_replica(range_id, target)
                await self.change(range_id, REMOVE, source)
            finally:
                self.busy.discard(range_id)
            return 1
        if len(led) < 2:
            return 0
        plan = plan_lease_move(voters, leases, me)
        if plan is None:
            return 0
        range_id, target = plan
        replica = self.store.replica(range_id)
        target_replica = replica.descriptor.replica_on(target) if replica else None
        if replica is None or target_replica is None:
            return 0
        log.info("range %d: rebalancer: moving the lease to node %d", range_id, target)
        replica.transfer_leadership(target_replica.replica_id)
        return 1

    async def _rebalance_range(self, replica: RangeReplica, health: dict[int, NodeHealth]) -> int:
        action = plan_action(
            replica.descriptor, self.store.node_id, health, self.config.replication_factor
        )
        if action is None:
            return 0
        log.info("range %d: rebalancer: %s node %d", replica.range_id, action.kind, action.node_id)
        if action.kind == "transfer":
            target = replica.descriptor.replica_on(action.node_id)
            if target is not None:
                replica.transfer_leadership(target.replica_id)
        elif action.kind == "add":
            await self.add_replica(replica.range_id, action.node_id)
        elif action.kind == "promote":
            await self.promote(replica.range_id, action.node_id)
        else:
            await self.change(replica.range_id, REMOVE, action.node_id)
        return 1

    async def _maybe_gc(self, replica: RangeReplica) -> None:
        """Destroy a replica meta says was removed from this node (it may never
        have applied its removal: the leader stops talking to removed peers)."""
        assert self.meta is not None
        desc = replica.descriptor
        resp = await self.meta.lookup_range(desc.start_key, prefetch=0, consistent=True)
        for pb in resp.descriptors:
            truth = RangeDescriptor.from_proto(pb)
            if truth.range_id != desc.range_id or truth.generation <= desc.generation:
                continue
            mine = truth.replica_on(self.store.node_id)
            if mine is None or mine.replica_id != replica.replica_id:
                self.store.destroy_replica(
                    replica, f"meta's generation {truth.generation} lacks it"
                )
            return
