"""Deterministic reproductions of core bugs the cluster simulator found.

Each test drives :class:`rangekv.raft.simulation.Cluster` by hand into the
situation a failing seed stumbled on, so the scenario stays covered even
when seeds drift as the core or the simulator change.  Tests for bugs that
are still open are marked ``xfail(strict=True)``.
"""

from __future__ import annotations

from dataclasses import replace

from rangekv.raft import MessageType
from rangekv.raft.simulation import Cluster, Faults, SimConfig
from rangekv.raft.simulation.events import DELIVER


def test_stale_timeout_now_after_aborted_transfer_keeps_leases_disjoint() -> None:
    """Found by seeds 226, 481 and 773 (lease safety) against a core revision in
    which an aborted transfer let the old leader's lease become VALID again.

    The leader starts a transfer and sends TIMEOUT_NOW over a congested link;
    the transfer times out (election_tick ticks) and is abandoned; then the
    stale TIMEOUT_NOW arrives and the target wins a *forced* election, which
    ignores the followers' leader stickiness that the old leader's lease
    relies on. The old leader now ends its term itself when it abandons the
    transfer (a forced election at term + 1); here that election is lost too
    (the old leader is cut off just before it abandons), so the stale
    TIMEOUT_NOW still wins. The old leader must never hold a VALID lease
    meanwhile (the core reports TRANSFERRING for the rest of a term in which
    TIMEOUT_NOW left, and a candidate holds none).
    """
    # Reordering on: the stale TIMEOUT_NOW must not hold back later messages on
    # its link (with per-link FIFO the target would starve and campaign itself).
    c = Cluster(3, SimConfig(nodes=3, faults=replace(Faults.none(), reorder=True)))

    def lease_held() -> bool:
        lead = c.leader()
        return lead is not None and lead.lease_valid(c.now)

    assert c.run_until(100.0, stop=lease_held)
    old = c.leader()
    assert old is not None
    target, other = (n for n in sorted(c.nodes) if n != old.id)
    term = old.role()[0]

    c.network.slow[(old.id, target)] = 30.0
    old.node().transfer_leadership(target)
    c.mark_dirty(old)
    c.run_until(c.now + 1.0)
    arrivals = [
        at
        for at, _, kind, payload in c.queue
        if kind == DELIVER and payload.type is MessageType.TIMEOUT_NOW
    ]
    assert arrivals, "the leader did not send TIMEOUT_NOW (target not caught up?)"
    c.network.slow.clear()

    # Just before the transfer is abandoned (long before TIMEOUT_NOW arrives),
    # the old leader is cut off both ways: its own forced election is lost.
    core = old.node().raft
    c.run_until(
        min(arrivals) - 0.5,
        stop=lambda: core.election_elapsed >= core.election_timeout - 1,
    )
    assert (core.state.name, core.term, core.lead_transferee) == ("LEADER", term, target)
    c.network.blocked |= {(target, old.id), (other, old.id), (old.id, target), (old.id, other)}
    c.run_until(min(arrivals) - 0.5)
    assert core.lead_transferee == 0 and core.term == term + 1, "the old leader kept its term"
    assert core.state.name != "LEADER"
    c.run_until(min(arrivals) + 30.0)  # raises InvariantViolation on two VALID leases
    assert any(t > term and n == target for t, n in c.checker.leaders.items()), (
        "the stale TIMEOUT_NOW did not make the target leader; the scenario did not happen"
    )
