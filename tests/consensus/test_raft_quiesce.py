"""Quiescence in the raft core (rangekv/raft/quiesce.py), one interleaving at a time.

The whole-cluster runs under faults are in test_simulation_quiesce.py; these
pin the rules: who quiesces, what wakes whom, what a quiesced leader's lease
rests on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from raft_cluster import Cluster

from rangekv.raft import (
    QUIESCE_CONTEXT,
    CampaignRefused,
    LeaseState,
    LivenessAck,
    LivenessStamp,
    Message,
    MessageType,
    StateType,
)

MT = MessageType
LEASE = 5.0


@dataclass
class LivenessTable:
    """The leader node's liveness table, set by the test."""

    stamps: dict[int, LivenessStamp] = field(default_factory=dict)
    acks: dict[int, LivenessAck] = field(default_factory=dict)

    def stamp(self, peer: int) -> LivenessStamp | None:
        return self.stamps.get(peer)

    def acked(self, peer: int) -> LivenessAck | None:
        return self.acks.get(peer)


def quiesced_cluster(now: float = 10.0) -> tuple[Cluster, LivenessTable]:
    """Three nodes, 1 leads with a lease, and all three quiesce at `now`."""
    c = Cluster([1, 2, 3], lease_duration=LEASE, election_tick=10)
    c.elect(1)
    table = LivenessTable(stamps={2: LivenessStamp(7, 100), 3: LivenessStamp(7, 100)})
    c.node(1).raft.liveness = table
    c.tick(1, now=now)  # the quiesce round is stamped with the latest tick's time
    c.stabilize()
    assert c.node(1).quiesce()
    c.stabilize()
    assert all(c.node(n).quiesced for n in (1, 2, 3))
    return c, table


def test_idle_group_quiesces_and_stands_still() -> None:
    c, _table = quiesced_cluster()
    before = len(c.delivered)
    for _ in range(50):
        c.tick_all(now=12.0)
    assert len(c.delivered) == before, "a quiesced group sent messages"
    assert c.node(1).raft.state is StateType.LEADER
    assert all(c.node(n).raft.lead == 1 for n in (2, 3))


def test_a_busy_or_lagging_group_does_not_quiesce() -> None:
    c = Cluster([1, 2, 3], lease_duration=LEASE)
    c.elect(1)
    c.dropped.add((1, 3))
    c.propose(1, b"x")
    c.stabilize()
    assert not c.node(1).can_quiesce()  # 3 lacks the entry
    c.heal()
    c.tick(1, n=2)
    c.stabilize()
    assert c.node(1).can_quiesce()
    follower = Cluster([1, 2, 3])
    follower.elect(1)
    assert not follower.node(2).quiesce(), "only a leader quiesces"


def test_quiesced_lease_rests_on_liveness_answers_of_the_same_session() -> None:
    c, table = quiesced_cluster(now=10.0)
    leader = c.node(1)
    assert leader.lease_status(14.0).state is LeaseState.VALID  # the quiesce round itself
    assert leader.lease_status(15.0).state is LeaseState.EXPIRED
    table.acks = {2: LivenessAck(7, 100, 20.0), 3: LivenessAck(7, 99, 30.0)}
    ls = leader.lease_status(24.0)
    assert (ls.state, ls.expires_at) == (LeaseState.VALID, 25.0)
    # A heartbeat numbered before the quiesce answer arrived proves nothing (3's 99).
    assert leader.lease_status(25.0).state is LeaseState.EXPIRED
    # Another session: the follower's node declared the leader unreachable since.
    table.acks = {2: LivenessAck(8, 120, 40.0), 3: LivenessAck(8, 120, 40.0)}
    assert leader.lease_status(41.0).state is LeaseState.EXPIRED
    table.acks = {2: LivenessAck(8, 120, 40.0), 3: LivenessAck(7, 130, 42.0)}
    assert leader.lease_status(44.0).state is LeaseState.VALID  # leader + 3 are a quorum


def test_a_proposal_wakes_the_group_and_keeps_the_lease() -> None:
    c, table = quiesced_cluster(now=10.0)
    table.acks = {2: LivenessAck(7, 100, 20.0), 3: LivenessAck(7, 100, 20.0)}
    c.propose(1, b"w")  # no tick since 10.0: the wake round is stamped 10.0 too
    assert not c.node(1).quiesced
    assert c.node(1).lease_status(24.0).state is LeaseState.VALID  # folded in at waking
    c.stabilize()
    assert not c.node(2).quiesced and not c.node(3).quiesced
    assert c.peers[2].applied[-1] == b"w"


def test_a_quiesced_follower_neither_campaigns_nor_votes() -> None:
    c, _table = quiesced_cluster()
    with pytest.raises(CampaignRefused):  # it heard from its leader: the lease may rest on it
        c.node(2).campaign()
    c.node(2).campaign(force=True)
    c.stabilize()
    assert c.node(2).raft.state is StateType.FOLLOWER and c.node(2).quiesced
    term = c.node(2).raft.term
    for kind in (MT.PRE_VOTE, MT.VOTE):  # from 3, with a longer log
        c.node(2).step(Message(kind, 2, 3, term + 1, term, 100))
    assert c.node(2).raft.vote != 3 and c.node(2).raft.term == term
    answers = c.node(2).ready().messages if c.node(2).has_ready() else ()
    assert not any(m.type in (MT.PRE_VOTE_RESP, MT.VOTE_RESP) for m in answers)
    assert c.node(2).quiesced


def test_a_message_sent_before_quiescing_does_not_wake_a_follower() -> None:
    c = Cluster([1, 2, 3], lease_duration=LEASE)
    c.elect(1)
    c.tick(1, n=2)  # a plain heartbeat round
    c.process_ready(1)
    late = [m for m in c.queue if m.type is MT.HEARTBEAT and m.to == 2]
    c.queue = [m for m in c.queue if m not in late]
    c.stabilize()
    assert c.node(1).quiesce()
    c.stabilize()
    assert c.node(2).quiesced
    for m in late:
        c.deliver_one(m)
    assert c.node(2).quiesced, "a heartbeat from before the quiesce woke the follower"


def test_the_quiesce_heartbeat_carries_the_context_and_is_answered_with_it() -> None:
    c = Cluster([1, 2, 3], lease_duration=LEASE)
    c.elect(1)
    assert c.node(1).quiesce()
    c.process_ready(1)
    beats = [m for m in c.queue if m.type is MT.HEARTBEAT]
    assert len(beats) == 2 and all(m.context == QUIESCE_CONTEXT for m in beats)
    c.deliver()
    c.process_all()
    answers = [m for m in c.queue if m.type is MT.HEARTBEAT_RESP]
    assert len(answers) == 2 and all(m.context == QUIESCE_CONTEXT for m in answers)


def test_a_follower_woken_by_its_node_waits_an_election_timeout() -> None:
    c, _table = quiesced_cluster()
    c.node(2).unquiesce()  # its node declared node 1 unreachable
    assert not c.node(2).quiesced
    c.isolate(1)
    c.tick(2, n=9)
    c.stabilize()
    assert c.node(2).raft.state is StateType.FOLLOWER
    assert not any(m.type in (MT.PRE_VOTE, MT.VOTE) for m in c.delivered if m.sender == 2)
    c.tick(2, n=20)
    c.stabilize()
    assert any(m.type is MT.PRE_VOTE for m in c.delivered if m.sender == 2)
