"""The simulated driver's quiescence: liveness heartbeats, lapses, quiescing idle leaders.

With `SimConfig.quiesce` on, every node incarnation keeps a `LivenessTable` and,
after each of its ticks, this module:

1. sends every peer node a liveness heartbeat each `heartbeat_tick` ticks;
2. declares unreachable the peers it has not heard for an election timeout
   (a new session toward each) and wakes a quiesced follower led by one -- the
   only way a driver may wake a follower (rangekv/raft/quiesce.py);
3. asks an idle leader to quiesce (with probability `quiesce_rate`, so runs
   cross both quiesced and awake idle periods).

Arriving heartbeats are answered in the receiver's session toward the sender;
a heartbeat from a new incarnation of the sender starts a new session (and
wakes a follower led by it) as a lapse does. An answer reporting a new session
wakes a quiesced leader with a replica on the answering node (its followers
there were just woken and would otherwise campaign).

`SimConfig.unsafe_quiesced_follower_ticks` is the deliberate bug the
simulator must catch: the driver wakes quiesced followers on its own, so they
tick, time out and vote while their leader still counts their liveness answers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rangekv.raft import StateType
from rangekv.raft.liveness_table import (
    SESSION_SPACING,
    LivenessAnswer,
    LivenessBeat,
    LivenessTable,
)
from rangekv.raft.simulation.events import LIVENESS

if TYPE_CHECKING:
    from rangekv.raft.simulation.cluster import Cluster
    from rangekv.raft.simulation.node import SimNode


def new_liveness(c: Cluster, node: SimNode) -> LivenessTable | None:
    """A fresh table for a node (re)starting now; None with quiescence off."""
    if not c.cfg.quiesce:
        return None
    base = c.rng.randrange(1, 1 << 24) * SESSION_SPACING
    return LivenessTable(node.id, base, node.local_now(c.now))


def on_tick(c: Cluster, node: SimNode) -> None:
    """After one tick of a live node (steps 1-3 of the module docstring)."""
    live = node.liveness
    if live is None:
        return
    cfg = c.cfg
    raw = node.node()
    local = node.local_now(c.now)
    peers = [nid for nid, n in sorted(c.nodes.items()) if nid != node.id and not n.removed]
    if node.ticks % cfg.heartbeat_tick == 0:
        for peer in peers:
            _send(c, live.beat(peer, local, node.incarnation))
    for peer in live.lapse(peers, local, cfg.election_tick * cfg.tick_interval):
        c.log(f"n{node.id} liveness: n{peer} unreachable (new session)")
        _wake_follower_of(c, node, peer)
    r = raw.raft
    if cfg.unsafe_quiesced_follower_ticks and r.quiesced and r.state is not StateType.LEADER:
        raw.unquiesce()  # the deliberate bug: no lapse, no new session
        c.counters["unsafe_follower_wakes"] += 1
    if (
        r.state is StateType.LEADER
        and raw.can_quiesce()
        and c.rng.random() < cfg.quiesce_rate
        and raw.quiesce()
    ):
        c.log(f"n{node.id} quiesce t{r.term} @{r.log.committed}")
        c.counters["quiesced"] += 1


def on_deliver(c: Cluster, msg: LivenessBeat | LivenessAnswer) -> None:
    node = c.nodes.get(msg.to)
    if node is None or not node.alive or node.removed or node.liveness is None:
        return
    if not c.network.link_up(msg.sender, msg.to):
        return
    if isinstance(msg, LivenessBeat):
        answer, restarted = node.liveness.on_beat(msg, node.local_now(c.now))
        if restarted:
            c.log(f"n{node.id} liveness: n{msg.sender} restarted (new session)")
            _wake_follower_of(c, node, msg.sender)
        _send(c, answer)
    elif node.liveness.on_answer(msg):
        _wake_leader_followed_on(c, node, msg.sender)


def _send(c: Cluster, msg: LivenessBeat | LivenessAnswer) -> None:
    for at in c.network.send(msg.sender, msg.to, c.now):
        c.schedule(at, LIVENESS, msg)


def _wake_leader_followed_on(c: Cluster, node: SimNode, peer: int) -> None:
    """`peer` began a new session toward `node` (it woke its followers of `node`'s
    leader): wake the leader so it heartbeats them before they campaign."""
    raw = node.node()
    r = raw.raft
    if r.quiesced and r.state is StateType.LEADER and peer in r.tracker.progress:
        raw.unquiesce()
        c.log(f"n{node.id} unquiesce (n{peer} began a new session)")
        c.counters["leader_wakes"] += 1
        c.mark_dirty(node)


def _wake_follower_of(c: Cluster, node: SimNode, peer: int) -> None:
    raw = node.node()
    r = raw.raft
    if r.quiesced and r.state is not StateType.LEADER and r.lead == peer:
        raw.unquiesce()
        c.log(f"n{node.id} unquiesce (leader n{peer} unreachable)")
        c.counters["follower_wakes"] += 1
        c.mark_dirty(node)
