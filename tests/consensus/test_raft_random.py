"""Randomised runs under loss, reordering, duplication, partitions, restarts, compaction.

Each seed drives a 5-node cluster in lock-step ticks (time advances 1.0 per
round; random compactions make laggards catch up by snapshot) and checks
after every delivery batch:

* election safety: at most one leader per term, ever;
* state machine safety: applied sequences agree on their common prefix, and
  an index once committed anywhere keeps its term everywhere;
* lease safety: while a node's lease is VALID at time t, no node is leader
  of a newer term at t. With lock-step clocks a follower that heard round r
  during round k refuses votes until tick k + election_tick, so
  lease_duration = election_tick is the exact bound here (real drivers,
  whose ticks are not aligned, lose one tick: see OVERVIEW.md "Leases").

Lost SNAP messages are reported to the leader as failed, as a transport would.
"""

from __future__ import annotations

import random

import pytest
from raft_cluster import Cluster

from rangekv.raft import LeaseState, ProposalDropped, StateType

ELECTION_TICK = 6


def run(seed: int, rounds: int = 300) -> Cluster:
    rng = random.Random(seed)
    c = Cluster(
        [1, 2, 3, 4, 5],
        election_tick=ELECTION_TICK,
        lease_duration=float(ELECTION_TICK),
        rng_seed=seed,
    )
    leaders: dict[int, int] = {}
    committed_terms: dict[int, int] = {}
    proposals = 0
    for now in range(1, rounds + 1):
        if rng.random() < 0.05:
            c.heal()
            if rng.random() < 0.6:
                ids = list(c.peers)
                rng.shuffle(ids)
                cut = rng.randint(1, 2)
                c.partition(ids[:cut], ids[cut:])
        if rng.random() < 0.02:
            c.restart(rng.choice(list(c.peers)))
        if rng.random() < 0.05:
            nid = rng.choice(list(c.peers))
            upto = c.peers[nid].applied_index - 3
            if upto > c.peers[nid].storage.first_index():
                c.compact(nid, upto)  # laggards will need a snapshot
        for nid in sorted(c.peers):
            c.peers[nid].node.tick(float(now))
        lead = c.leader()
        if lead and rng.random() < 0.5:
            try:
                c.propose(lead, *(b"%d" % (proposals + k) for k in range(rng.randint(1, 3))))
                proposals += 3
            except ProposalDropped:
                pass
        if lead and rng.random() < 0.03:
            target = rng.choice([n for n in c.peers if n != lead])
            c.node(lead).transfer_leadership(target)
        for _ in range(rng.randint(1, 4)):
            c.process_all()
            batch, c.queue = c.queue, []
            rng.shuffle(batch)
            for m in batch:
                r = rng.random()
                if r < 0.1:
                    c.report_lost(m)
                    continue  # lost
                if r < 0.25:
                    c.queue.append(m)  # delayed to a later delivery
                    continue
                if r < 0.28:
                    c.queue.append(m)  # duplicated
                c.deliver_one(m)
            check(c, now, leaders, committed_terms)
    return c


def check(c: Cluster, now: int, leaders: dict[int, int], committed: dict[int, int]) -> None:
    for nid, p in c.peers.items():
        r = p.node.raft
        if r.state is StateType.LEADER:
            assert leaders.setdefault(r.term, nid) == nid, f"two leaders in term {r.term}"
        log = r.log
        lo = max(log.first_index(), log.committed - 20)
        for e in log.slice(lo, log.committed + 1):
            assert committed.setdefault(e.index, e.term) == e.term, "committed entry changed"
    c.assert_consistent()
    for p in c.peers.values():
        ls = p.node.lease_status(float(now))
        if ls.state is not LeaseState.VALID:
            continue
        for q in c.peers.values():
            rq = q.node.raft
            assert not (rq.state is StateType.LEADER and rq.term > ls.term), (
                f"node {p.node.id} holds a lease of term {ls.term} while {q.node.id} "
                f"leads term {rq.term} at t={now}"
            )


@pytest.mark.parametrize("seed", range(40))
def test_random_cluster_stays_safe(seed: int) -> None:
    c = run(seed)
    c.heal()
    for _ in range(60):
        c.tick_all(1)
        if c.leader():
            break
    lead = c.leader()
    assert lead, "no leader after healing"
    # Liveness after healing: a fresh proposal commits everywhere.
    c.tick_all(3)
    lead = c.leader()
    c.propose(lead, b"final")
    c.tick_all(3)
    assert all(p.applied and p.applied[-1] == b"final" for p in c.peers.values())
