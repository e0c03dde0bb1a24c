"""The rebalancer: which replica changes and lease moves a leaseholder makes on its own.

The policy (`plan_action`, pure) keeps each range at the replication factor: a
voter on a node the registry has not seen for `dead_after` is replaced,
missing voters are added on live nodes, leftover learners are promoted (or
removed if their node is dead), and voters beyond the factor are removed (a
move or an add cut short, or a split made in the middle of a move: the
right-hand range copies the move's extra voter, and the move's removal only
reaches the left-hand one). A decommissioning node takes no new replica and
no lease; each of its voters is replaced (the new one added first, then the
old one removed by a leaseholder elsewhere), and a leaseholder on it hands its
lease to a voter that stays. When no range needs a change, a leaseholder evens the load
out one step per pass: it moves one of its ranges' replicas from a node
holding at least two more than the emptiest node to that node (so a new node
gets its share, `plan_replica_move`), or else hands one lease to a voter
leading clearly fewer ranges (`plan_lease_move`). Both rules need a gap of
two, so counts within one of each other never move. That hysteresis is enough
while counts hold still, not while faults change them between passes (a kill,
an operator's replica change): a soak saw one leaseholder move a range's
replica from node 1 to node 2 and, 5 s later, back. So a range whose replica or
lease this node moved to spread the load rests for `rebalance_cooldown`: no
further spreading move of it from here (`MoveCooldown`). Moves that keep the
factor (dead, draining, missing and surplus voters) never wait for it.

`Rebalancer` runs the policy on every leaseholder, every `check_interval`,
through the replica changer (`change`), unless `rebalance` is off (every
change is then an operator's). The same pass garbage-collects
replicas that were removed while their node was away (meta's committed
descriptor no longer names them: the leader stops talking to removed peers,
so such a replica may never apply its own removal).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from rangekv.common import errors as E
from rangekv.common.clock import Clock
from rangekv.common.descriptors import RangeDescriptor, ReplicaType
from rangekv.common.tasks import Periodic
from rangekv.metarange.client import MetaApi
from rangekv.raftnode.change import REMOVE, ReplicaChangeConfig, ReplicaChanger
from rangekv.raftnode.replica import RangeReplica
from rangekv.raftnode.store import INITIAL_INDEX
from rangekv.raftnode.txn_push import Peers
from rangekv.v1 import meta_pb2, replica_pb2

__all__ = [
    "Action",
    "MoveCooldown",
    "NodeHealth",
    "Rebalancer",
    "node_health",
    "plan_action",
    "plan_lease_move",
    "plan_replica_move",
]

log = logging.getLogger(__name__)


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
    - more staying voters than the factor: remove one (one not live first);
    - the leaseholder itself draining, and a staying voter to take over (after the
      adds that can be made): hand the lease to it.
    Never removes the leaseholder's own replica, nor a voter that would leave fewer
    staying voters than the factor.
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
    surplus = [n for n in staying if n != leader_node]
    if len(staying) > replication_factor and surplus:
        down = [n for n in surplus if not health.get(n, NodeHealth(False, False)).live]
        pick = down or surplus
        return Action("remove", pick[desc.range_id % len(pick)])
    if draining(leader_node) and staying:
        return Action("transfer", staying[desc.range_id % len(staying)])
    return None


def plan_lease_move(
    led: list[tuple[int, tuple[int, ...]]],
    counts: dict[int, int],
    me: int,
    resting: frozenset[int] = frozenset(),
) -> tuple[int, int] | None:
    """Which lease to hand away, if this node leads clearly more ranges than a voter.

    `led`: (range id, voter node ids) of the ranges this node leads; `counts`:
    leases per live node (this node included). Moves one lease at a time, to
    the live voter holding the fewest leases, and only when this node holds at
    least two more than it: every move then narrows the spread, so leases never
    ping-pong, and a new node with no lease gets one from a node with two
    (a rule against the mean would leave it empty when the mean is about one).
    Ranges in `resting` (moved lately, see `MoveCooldown`) are not candidates.
    """
    if len(counts) < 2 or me not in counts:
        return None
    for range_id, voters in sorted(led):
        if range_id in resting:
            continue
        candidates = [n for n in voters if n != me and n in counts]
        if not candidates:
            continue
        target = min(candidates, key=lambda n: (counts[n], n))
        if counts[me] - counts[target] >= 2:
            return range_id, target
    return None


def plan_replica_move(
    led: list[tuple[int, tuple[int, ...]]],
    counts: dict[int, int],
    me: int,
    resting: frozenset[int] = frozenset(),
) -> tuple[int, int, int] | None:
    """Which replica to move so that replica counts even out: (range id, from, to).

    `led`: (range id, voter node ids) of the ranges this node leads; `counts`:
    replicas per live, staying node (this node included). The target is the
    node holding the fewest; a move is planned only from a voter holding at
    least two more (hysteresis: counts within one of each other never move),
    never from this node (a leaseholder does not remove itself), one at a time,
    and never of a range in `resting` (moved lately, see `MoveCooldown`).
    """
    if len(counts) < 2:
        return None
    target = min(counts, key=lambda n: (counts[n], n))
    for range_id, voters in sorted(led):
        if target in voters or range_id in resting:
            continue
        sources = [n for n in voters if n != me and n in counts]
        if not sources:
            continue
        source = max(sources, key=lambda n: (counts[n], -n))
        if counts[source] - counts[target] >= 2:
            return range_id, source, target
    return None


class MoveCooldown:
    """The ranges this node moved (a replica or the lease) to spread the load, and
    when: each rests for `seconds` after its move. Bounded by the ranges moved
    within one cool-down (at most one per rebalancer pass); older ones are dropped
    whenever `resting` is asked. Times are the caller's monotonic clock."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._moved_at: dict[int, float] = {}

    def moved(self, range_id: int, now: float) -> None:
        if self.seconds > 0:
            self._moved_at[range_id] = now

    def resting(self, now: float) -> frozenset[int]:
        """The ranges still in their cool-down at `now`."""
        self._moved_at = {r: t for r, t in self._moved_at.items() if now - t < self.seconds}
        return frozenset(self._moved_at)


#: Replica GC asks meta about every follower once in this many passes (5 minutes at
#: the default interval); in the other
#: passes only about followers that know no leader. A follower that hears its leader
#: (or is quiesced under it) is in the leader's configuration, so meta's answer would
#: keep it; a removed replica stops hearing its leader and soon knows none. One
#: consistent meta lookup per follower per pass was most of an idle cluster's CPU
#: at 1,000 ranges (the meta leader answered 400 a second).
FULL_GC_EVERY = 60


class Rebalancer:
    """Runs the policy on this node's leaseholders, and replica GC (module docstring)."""

    def __init__(
        self,
        changes: ReplicaChanger,
        meta: MetaApi | None,
        peers: Peers,
        config: ReplicaChangeConfig,
        clock: Clock,
    ) -> None:
        self.changes = changes
        self.store = changes.store
        self.meta = meta
        self.peers = peers
        self.config = config
        self.clock = clock
        self._loop = Periodic("rebalancer", config.check_interval, self.rebalance_once, clock, log)
        self._passes = 0
        self.cooldown = MoveCooldown(config.rebalance_cooldown)

    def start(self) -> None:
        if self.config.check_interval and self.meta is not None:
            self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def rebalance_once(self) -> int:
        """One pass over this node's replicas; returns how many actions ran."""
        assert self.meta is not None
        nodes = await self.meta.list_nodes()
        health = node_health(nodes, self.store.hlc.physical_now(), self.config.dead_after)
        done = 0
        busy = self.changes.busy
        self._passes += 1
        every_follower = self._passes % FULL_GC_EVERY == 1
        for replica in list(self.store.replicas()):
            if replica.removed or replica.applied_index < INITIAL_INDEX or replica.range_id in busy:
                continue
            try:
                if replica.is_leader:
                    if self.config.rebalance:
                        done += await self._rebalance_range(replica, health)
                elif every_follower or not replica.group.leader():
                    await self._maybe_gc(replica)
            except E.RangeKVError as exc:
                log.info("range %d: rebalancer: %s", replica.range_id, exc)
        if done == 0 and self.config.rebalance:
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
        led = [r for r in mine if r.is_leader and r.range_id not in self.changes.busy]
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
                info = await self.peers.stub_at(st.node.address).RangeInfo(
                    replica_pb2.RangeInfoRequest(counts_only=True), timeout=2
                )
            except grpc.aio.AioRpcError:
                continue  # unreachable now: not a candidate this round
            if info.draining:
                continue  # shutting down: it would only have to hand back what it got
            leases[node_id] = info.lease_count
            replicas[node_id] = info.replica_count
        voters = [(r.range_id, r.descriptor.voter_node_ids) for r in led]
        resting = self.cooldown.resting(self.clock.monotonic())
        move = plan_replica_move(voters, replicas, me, resting)
        if move is not None:
            range_id, source, target = move
            log.info(
                "range %d: rebalancer: moving a replica from node %d to node %d",
                range_id,
                source,
                target,
            )
            try:
                await self.changes.move_replica(range_id, source, target)
            finally:
                # From the end of the move (a learner's catch-up can take longer than
                # the cool-down), and after a failed move too.
                self.cooldown.moved(range_id, self.clock.monotonic())
            return 1
        if len(led) < 2:
            return 0
        plan = plan_lease_move(voters, leases, me, resting)
        if plan is None:
            return 0
        range_id, target = plan
        replica = self.store.replica(range_id)
        target_replica = replica.descriptor.replica_on(target) if replica else None
        if replica is None or target_replica is None:
            return 0
        log.info("range %d: rebalancer: moving the lease to node %d", range_id, target)
        self.cooldown.moved(range_id, self.clock.monotonic())
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
            await self.changes.add_replica(replica.range_id, action.node_id)
        elif action.kind == "promote":
            await self.changes.promote(replica.range_id, action.node_id)
        else:
            await self.changes.change(replica.range_id, REMOVE, action.node_id)
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
