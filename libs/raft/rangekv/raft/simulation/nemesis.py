"""The nemesis: faults injected into a running cluster at random moments.

Message-level faults (loss, delay, duplication, reordering) live in the
network; this module does the rest: partitions and their healing, crashes
and restarts, membership changes, leadership transfers, forced campaigns
and clock-rate changes.  Each action is drawn from the run's RNG only among
the enabled fault families, so switching one family off keeps a seed
meaningful for bisection (though the exact schedule then differs).

The nemesis keeps the cluster *able* to make progress most of the time
(crashes are usually limited to a minority, voters stay between
``min_voters`` and ``max_voters``),
because a cluster that is always down tests nothing.  Safety must of course
hold regardless.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rangekv.raft import ConfChange, ConfChangeType, MemoryStorage, RaftError
from rangekv.raft.simulation.events import HEAL, NEMESIS, RESTART, SHUTDOWN

if TYPE_CHECKING:
    from rangekv.raft.simulation.cluster import Cluster

MAX_EXTRA_NODES = 3
"""How many node ids beyond the initial ones conf changes may create."""


def schedule_nemesis(c: Cluster) -> None:
    """Queue the next nemesis action (exponential inter-arrival times)."""
    c.schedule(c.now + c.rng.expovariate(1.0 / c.cfg.nemesis_interval), NEMESIS, None)


def handle_fault_event(c: Cluster, kind: int, payload: Any) -> None:
    """Dispatch the fault-related event kinds of the cluster's queue."""
    if kind == NEMESIS:
        if c.faulty:
            _act(c)
            schedule_nemesis(c)
    elif kind == HEAL:
        if payload == c.partition_seq:
            c.network.heal()
            c.log("heal")
    elif kind == RESTART:
        node = c.nodes[payload]
        if not node.alive and not node.removed:
            c.start_node(node)
    elif kind == SHUTDOWN:
        node = c.nodes[payload]
        if not node.removed:
            if node.alive:
                c.crash_node(node, "removed from the cluster")
            node.removed = True
            c.log(f"n{node.id} shut down for good")
    else:  # pragma: no cover - the cluster only routes the kinds above here
        raise ValueError(f"unknown event kind {kind}")


def _act(c: Cluster) -> None:
    f = c.cfg.faults
    menu: list[str] = []
    if f.partition:
        menu += ["partition"] * 3
    if f.crash:
        menu += ["crash"] * 2
    if f.conf_change:
        menu += ["conf"] * 2
    if f.transfer:
        menu += ["transfer", "transfer", "campaign"]
    if f.clock_drift:
        menu.append("clock")
    if not menu:
        return
    action = c.rng.choice(menu)
    if action == "partition":
        _partition(c)
    elif action == "crash":
        _crash(c)
    elif action == "conf":
        _conf_change(c)
    elif action == "transfer":
        _transfer(c)
    elif action == "campaign":
        _campaign(c)
    else:
        node = c.rng.choice(c.live() or list(c.nodes.values()))
        c.set_clock_rate(node, c.new_clock_rate())


def _partition(c: Cluster) -> None:
    if c.network.disturbed:
        return  # one partition at a time; its HEAL is already scheduled
    ids = [nid for nid, n in sorted(c.nodes.items()) if not n.removed]
    lead = c.leader()
    victim = lead.id if lead is not None and c.rng.random() < 0.6 else None
    c.log(c.network.partition(ids, victim))
    c.counters["partitions"] += 1
    c.partition_seq += 1
    c.schedule(c.now + c.rng.uniform(2.0, 30.0), HEAL, c.partition_seq)


def _crash(c: Cluster) -> None:
    members = [n for _, n in sorted(c.nodes.items()) if not n.removed]
    live = [n for n in members if n.alive]
    down = len(members) - len(live)
    voters = len(c.membership().voters) or c.cfg.nodes
    limit = (voters - 1) // 2
    if not live or (down >= max(limit, 1) and c.rng.random() > 0.1):
        return
    lead = c.leader()
    # Leaders are the interesting victims (leases, in-flight proposals, transfers).
    node = lead if lead is not None and c.rng.random() < 0.4 else c.rng.choice(live)
    c.crash_node(node, "nemesis")
    c.schedule(c.now + c.rng.uniform(1.0, 20.0), RESTART, node.id)


def _conf_change(c: Cluster) -> None:
    lead = c.leader()
    if lead is None:
        return
    cs = lead.conf_state
    voters, learners = list(cs.voters), list(cs.learners)
    options: list[str] = []
    if learners:
        options += ["promote", "promote", "remove_learner"]
    if len(voters) + len(learners) < c.cfg.max_voters + 1:
        options.append("add")
    if len(voters) > c.cfg.min_voters:
        options += ["remove_voter", "demote"]
    if not options:
        return
    what = c.rng.choice(options)
    if what == "promote":
        cc = ConfChange(ConfChangeType.ADD_NODE, c.rng.choice(learners))
    elif what == "remove_learner":
        cc = ConfChange(ConfChangeType.REMOVE_NODE, c.rng.choice(learners))
    elif what in ("remove_voter", "demote"):
        # Mostly a follower; sometimes the leader itself, which must step down
        # once it applies the change.
        others = [v for v in voters if v != lead.id]
        target = lead.id if not others or c.rng.random() < 0.2 else c.rng.choice(others)
        kind = ConfChangeType.REMOVE_NODE if what == "remove_voter" else ConfChangeType.ADD_LEARNER
        cc = ConfChange(kind, target)
    else:
        nid = _joiner(c, set(voters) | set(learners))
        if nid is None:
            return
        cc = ConfChange(ConfChangeType.ADD_LEARNER, nid)
    try:
        lead.node().propose_conf_change(cc)
    except RaftError as exc:
        c.log(f"n{lead.id} conf change {cc.type.name} {cc.node_id} refused: {exc}")
        return
    c.log(f"n{lead.id} propose conf {cc.type.name} {cc.node_id}")
    c.mark_dirty(lead)


def _joiner(c: Cluster, members: set[int]) -> int | None:
    """A node to add as learner: an idle, never-removed non-member, or a brand new one."""
    for nid, node in sorted(c.nodes.items()):
        if nid not in members and not node.removed and nid not in c.removal_applied:
            if not node.alive:
                c.start_node(node)
            return nid
    if c.next_node_id > c.cfg.nodes + MAX_EXTRA_NODES:
        return None
    nid = c.next_node_id
    c.next_node_id += 1
    c.create_node(nid, MemoryStorage())
    return nid


def _transfer(c: Cluster) -> None:
    lead = c.leader()
    if lead is None:
        return
    targets = [v for v in lead.conf_state.voters if v != lead.id]
    if not targets:
        return
    to = c.rng.choice(targets)
    try:
        lead.node().transfer_leadership(to)
    except RaftError as exc:
        c.log(f"n{lead.id} transfer to {to} refused: {exc}")
        return
    c.log(f"n{lead.id} transfer leadership to {to}")
    c.counters["transfers"] += 1
    c.mark_dirty(lead)


def _campaign(c: Cluster) -> None:
    live = [n for n in c.live() if not n.removed]
    if not live:
        return
    node = c.rng.choice(live)
    try:
        node.node().campaign()
    except RaftError as exc:
        c.log(f"n{node.id} campaign refused: {exc}")
        return
    c.log(f"n{node.id} campaign")
    c.mark_dirty(node)
