"""Quorum-ack leases: rounds, send-time stamping, the LeaseState reasons, clearing."""

from __future__ import annotations

import pytest
from raft_cluster import Cluster, fire_election_timer

from rangekv.raft import (
    CampaignRefused,
    ConfChange,
    ConfChangeType,
    Config,
    LeaseState,
    Message,
    MessageType,
    StateType,
)

MT = MessageType


def leased(**kw: object) -> Cluster:
    c = Cluster([1, 2, 3], lease_duration=5.0, **kw)
    c.elect(1)
    return c


def test_lease_valid_after_quorum_ack_and_expires() -> None:
    c = leased()
    c.tick(1, now=10.0)
    c.stabilize()
    ls = c.node(1).lease_status(12.0)
    assert ls.state is LeaseState.VALID
    assert (ls.lead, ls.term, ls.expires_at) == (1, c.node(1).raft.term, 15.0)
    assert ls.applied == c.node(1).raft.log.applied
    assert c.node(1).lease_status(15.0).state is LeaseState.EXPIRED


def test_lease_uses_send_time_of_round_not_ack_time() -> None:
    c = leased()
    c.tick(1, now=10.0)
    c.process_ready(1)  # heartbeats of the round stamped 10.0 are in flight
    # Before any ack of the new round, the lease still rests on the election round (t=0).
    assert c.node(1).lease_status(11.0).state is LeaseState.EXPIRED
    c.stabilize()  # acks arrive "later"; the lease still starts at the send time
    assert c.node(1).lease_status(14.9).expires_at == 15.0


def test_followers_report_not_leader() -> None:
    c = leased()
    ls = c.node(2).lease_status(0.0)
    assert ls.state is LeaseState.NOT_LEADER and ls.lead == 1


def test_no_lease_before_an_entry_of_the_term_is_applied() -> None:
    c = Cluster([1, 2, 3], lease_duration=5.0)
    c.node(1).campaign()
    for _ in range(4):
        c.process_all()
        c.deliver(lambda m: m.type is not MT.APP)
    assert c.node(1).raft.state is StateType.LEADER
    assert c.node(1).lease_status(0.0).state is LeaseState.NO_APPLIED_ENTRY_OF_TERM
    c.stabilize()
    assert c.node(1).lease_status(0.0).state is LeaseState.VALID


def test_lease_needs_a_quorum_of_voters_learners_do_not_count() -> None:
    c = Cluster([1, 2, 3], learners=[4], lease_duration=5.0)
    c.elect(1)
    c.isolate(2)
    c.isolate(3)
    c.tick(1, now=10.0)
    c.stabilize()
    assert c.node(1).lease_status(12.0).state is LeaseState.EXPIRED  # only learner 4 acked
    c.heal()
    c.isolate(3)
    c.tick(1, now=20.0)
    c.stabilize()
    assert c.node(1).lease_status(22.0).state is LeaseState.VALID  # 1 + 2 of 3 voters


def test_rejected_append_response_counts_as_ack() -> None:
    c = leased()
    c.drop_types.add(MT.HEARTBEAT)
    c.tick(1, now=10.0)
    c.stabilize()
    r = c.node(1).raft.acks.round
    term = c.node(1).raft.term
    assert c.node(1).lease_status(12.0).state is LeaseState.EXPIRED
    # A follower that rejected an APP of round r still accepted the leader's term.
    c.node(1).step(Message(MT.APP_RESP, 1, 2, term=term, index=1, reject=True, round=r))
    assert c.node(1).lease_status(12.0).expires_at == 15.0


def test_transfer_suspends_lease() -> None:
    c = leased()
    c.tick(1, now=10.0)
    c.stabilize()
    c.node(1).transfer_leadership(2)
    assert c.node(1).lease_status(11.0).state is LeaseState.TRANSFERRING


def test_a_lost_timeout_now_ends_the_term_and_the_leader_wins_the_next() -> None:
    c = leased()
    term = c.node(1).raft.term
    c.drop_types.add(MT.TIMEOUT_NOW)
    c.node(1).transfer_leadership(2)  # 2 is caught up: TIMEOUT_NOW leaves at once
    assert c.node(1).raft.timeout_now_sent
    # Until the transfer is abandoned, the TIMEOUT_NOW may still arrive: no lease.
    for _ in range(9):
        c.tick(1, now=1.0)
        c.stabilize()
        assert c.node(1).lease_status(1.0).state is LeaseState.TRANSFERRING
    c.tick(1, now=1.0)  # the election timeout: the transfer is abandoned
    c.stabilize()
    # The old leader ended its term itself (a forced election: its followers still
    # heard it) and leads the next one, with a lease again.
    assert c.leader() == 1
    assert c.node(1).raft.term == term + 1
    assert c.node(1).lease_status(1.0).state is LeaseState.VALID
    # The lost TIMEOUT_NOW, delivered late, belongs to a finished term: ignored.
    c.drop_types.clear()
    c.node(2).step(Message(MT.TIMEOUT_NOW, 2, 1, term=term))
    c.stabilize()
    assert c.leader() == 1
    assert c.node(1).raft.term == term + 1


def test_a_transfer_whose_target_is_removed_after_timeout_now_also_ends_the_term() -> None:
    c = Cluster([1, 2, 3, 4], lease_duration=5.0)
    c.elect(1)
    c.stabilize()
    term = c.node(1).raft.term
    c.drop_types.add(MT.TIMEOUT_NOW)
    # The removal is proposed first (no proposal is taken during a transfer); node 4
    # acks it, so TIMEOUT_NOW leaves, and then the removal applies.
    c.node(1).propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 4))
    c.node(1).transfer_leadership(4)
    c.stabilize()
    assert c.node(1).raft.timeout_now_sent
    assert c.node(1).raft.lead_transferee == 0  # cleared by the removal, not by a timeout
    assert c.node(1).raft.term == term
    c.tick(1, now=1.0)
    c.stabilize()
    assert c.leader() == 1
    assert c.node(1).raft.term == term + 1
    assert c.node(1).lease_status(1.0).state is LeaseState.VALID


def test_followers_grant_their_own_leaders_prevote_despite_stickiness() -> None:
    """A leader that stepped down and campaigns again is granted by the followers
    that still follow it (no lease rests on their promise to it), even before
    their election timeout; another candidate is still refused."""
    c = leased()
    term = c.node(1).raft.term
    for nid in (2, 3):
        assert c.node(nid).raft.lead == 1
        assert c.node(nid).raft.election_elapsed < c.node(nid).raft.election_timeout
    # Node 3 asks first: refused, its leader is alive.
    c.node(2).step(Message(MT.PRE_VOTE, 2, 3, term=term + 1, log_term=term, index=99))
    assert not [m for m in c.node(2).ready().messages if m.type is MT.PRE_VOTE_RESP]
    # Node 1 asks: granted.
    c.node(2).step(Message(MT.PRE_VOTE, 2, 1, term=term + 1, log_term=term, index=99))
    answers = [m for m in c.node(2).ready().messages if m.type is MT.PRE_VOTE_RESP]
    assert answers and not answers[0].reject


def test_acks_of_rounds_sent_before_transfer_never_revive_lease() -> None:
    c = leased()
    c.isolate(2)
    c.propose(1, b"x")  # 2 lags, so no TIMEOUT_NOW will be sent
    c.stabilize()
    c.tick(1, now=10.0)
    c.process_ready(1)
    c.deliver(lambda m: m.to == 3)
    c.process_ready(3)
    held = [m for m in c.queue if m.sender == 3]
    assert held and held[0].type is MT.HEARTBEAT_RESP
    c.queue = []
    c.node(1).transfer_leadership(2)
    for _ in range(10):  # no traffic at all until the transfer is abandoned
        c.tick(1, now=11.0)
        c.process_ready(1)
        c.queue = []
    assert c.node(1).raft.lead_transferee == 0 and c.node(1).raft.state is StateType.LEADER
    for m in held:
        c.node(1).step(m)  # a quorum ack of the round stamped 10.0, delivered late
    assert c.node(1).raft.acks.last_quorum_ack is None
    assert c.node(1).lease_status(12.0).state is LeaseState.EXPIRED


def test_step_down_clears_lease_evidence() -> None:
    c = leased()
    c.tick(1, now=10.0)
    c.stabilize()
    assert c.node(1).raft.acks.last_quorum_ack == 10.0
    c.isolate(1)
    for _ in range(20):
        c.tick(1, now=10.0)
        c.stabilize()
    assert c.node(1).raft.state is StateType.FOLLOWER  # CheckQuorum
    assert c.node(1).raft.acks.last_quorum_ack is None


def test_term_change_clears_lease_evidence() -> None:
    c = leased()
    c.tick(1, now=10.0)
    c.stabilize()
    term = c.node(1).raft.term
    c.node(1).step(Message(MT.APP_RESP, 1, 2, term=term + 1))  # a newer term exists
    assert c.node(1).raft.acks.last_quorum_ack is None


def test_evidence_from_previous_leadership_never_extends_new_lease() -> None:
    # White-box: with a clock that reads lower after re-election, only a
    # lease built from the new term's rounds may be reported.
    c = leased()
    c.tick(1, now=100.0)
    c.stabilize()
    c.tick(1, now=0.0)  # newer rounds are stamped 0.0 (their acks are dropped)
    c.process_ready(1)
    c.queue = []
    term = c.node(1).raft.term
    # Forced elections hand leadership to 2 and back to 1.
    c.node(2).step(Message(MT.TIMEOUT_NOW, 2, 1, term=term))
    c.stabilize()
    assert c.leader() == 2
    c.node(1).step(Message(MT.TIMEOUT_NOW, 1, 2, term=term + 1))
    c.stabilize()
    assert c.leader() == 1
    ls = c.node(1).lease_status(50.0)
    assert ls.state is LeaseState.EXPIRED and ls.expires_at == 5.0


def test_lease_disabled_by_default() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.tick(1, now=1.0)
    c.stabilize()
    assert c.node(1).lease_status(1.0).state is LeaseState.EXPIRED


def test_single_voter_lease_from_own_rounds() -> None:
    c = Cluster([1], lease_duration=5.0)
    c.elect(1)
    c.tick(1, now=3.0)
    c.stabilize()
    assert c.node(1).lease_status(4.0).expires_at == 8.0


def test_lease_requires_check_quorum() -> None:
    with pytest.raises(ValueError):
        Config(id=1, lease_duration=1.0, check_quorum=False)


def _beat(c: Cluster, now: float) -> list[Message]:
    """The leader's heartbeat tick at `now`: what it sends."""
    c.tick(1, now=now)
    before = len(c.queue)
    c.process_ready(1)
    return c.queue[before:]


def test_lazy_heartbeat_appends_carry_the_round_and_renew_the_lease() -> None:
    """`Config.lazy_heartbeat`: a replicating follower sent an APP since the previous
    beat gets no heartbeat; the next APP carries the new round, whose answer renews
    the lease from the round's send time. With no APP in between, the next beat
    heartbeats it; a follower that is not replicating always gets its heartbeat."""
    c = leased(lazy_heartbeat=True)
    c.stabilize()
    # A leadership's first beat heartbeats everyone, though both were sent the
    # election's APP: the election's round may carry an old send time.
    assert sorted((m.type, m.to) for m in _beat(c, 9.0)) == [
        (MT.HEARTBEAT, 2),
        (MT.HEARTBEAT, 3),
    ]
    c.stabilize()
    c.tick(1, now=10.0)
    c.stabilize()  # nothing since: a plain heartbeat round, the lease runs to 15.0
    assert c.node(1).lease_status(12.0).expires_at == 15.0
    c.propose(1, b"a")
    c.stabilize()
    assert _beat(c, 11.0) == []  # a's APPs went to both since the last beat
    c.propose(1, b"b")  # APPs after the beat: they carry the round stamped 11.0
    c.stabilize()
    assert c.node(1).lease_status(12.0).expires_at == 16.0
    assert c.peers[2].applied == c.peers[3].applied == [b"a", b"b"]
    assert _beat(c, 12.0) == []  # b's APPs
    c.stabilize()
    # Nothing since: both get a heartbeat, and the lease moves on with them.
    assert sorted((m.type, m.to) for m in _beat(c, 13.0)) == [
        (MT.HEARTBEAT, 2),
        (MT.HEARTBEAT, 3),
    ]
    c.stabilize()
    assert c.node(1).lease_status(14.0).expires_at == 18.0
    # 3 becomes unreachable (PROBE): it gets its heartbeat even after an APP.
    c.isolate(3)
    c.node(1).report_unreachable(3)
    c.propose(1, b"c")
    c.stabilize()
    assert [(m.type, m.to) for m in _beat(c, 14.0)] == [(MT.HEARTBEAT, 3)]


def test_without_lazy_heartbeat_every_follower_gets_every_heartbeat() -> None:
    c = leased()
    c.stabilize()
    c.propose(1, b"a")
    c.stabilize()
    assert sorted((m.type, m.to) for m in _beat(c, 11.0)) == [
        (MT.HEARTBEAT, 2),
        (MT.HEARTBEAT, 3),
    ]


def test_lazy_heartbeat_never_counts_a_skipped_follower_as_answering() -> None:
    """The APP that stands in for a skipped heartbeat is what renews the lease: if it
    is lost, nothing does (the round's evidence is never assumed)."""
    c = leased(lazy_heartbeat=True)
    c.stabilize()
    c.tick(1, now=10.0)
    c.stabilize()
    c.propose(1, b"a")
    c.stabilize()
    assert _beat(c, 11.0) == []  # skipped: a's APPs since the last beat
    c.propose(1, b"b")
    c.process_ready(1)
    c.queue = [m for m in c.queue if m.type is not MT.APP]  # the stand-ins are lost
    c.stabilize()
    assert c.node(1).lease_status(12.0).expires_at == 15.0  # still the beat at 10.0


def test_lazy_heartbeat_still_beats_a_follower_with_a_full_window() -> None:
    c = Cluster([1, 2, 3], lease_duration=5.0, lazy_heartbeat=True, max_inflight_msgs=1)
    c.elect(1)
    c.stabilize()
    c.propose(1, b"a")
    c.process_ready(1)  # the APPs fill both windows of one; they wait in the queue
    assert all(c.node(1).raft.tracker.progress[n].inflights.full() for n in (2, 3))
    sent = _beat(c, 1.0)
    assert sorted((m.type, m.to) for m in sent) == [(MT.HEARTBEAT, 2), (MT.HEARTBEAT, 3)]


@pytest.mark.parametrize("lazy", [False, True])
def test_a_stalled_append_lane_costs_neither_lease_nor_leadership(lazy: bool) -> None:
    """Appends and their answers travel on a lane that bulk traffic can back up;
    heartbeats have their own. With every APP and APP_RESP held back for three
    election timeouts while writes keep coming, the leader keeps its term and its
    lease: lazy heartbeats skip only followers whose answers keep coming."""
    c = Cluster([1, 2, 3], lease_duration=0.7, lazy_heartbeat=lazy)
    c.elect(1)
    c.stabilize()
    term = c.node(1).raft.term
    c.drop_types |= {MT.APP, MT.APP_RESP}
    for tick in range(1, 31):
        now = tick * 0.1
        for nid in (1, 2, 3):
            c.tick(nid, now=now)
        c.propose(1, b"w%d" % tick)
        c.stabilize()
        assert c.node(1).raft.state is StateType.LEADER and c.node(1).raft.term == term
        assert c.node(1).lease_status(now).state is LeaseState.VALID, f"tick {tick}"


def test_a_follower_backing_a_lease_refuses_a_drivers_campaign() -> None:
    # Found by the cluster simulator (5 nodes, seed 101401 of a 3,000-seed soak): a
    # follower acknowledged the leader's lease round, then a driver's campaign()
    # made it a candidate at once; a voter that had never heard from that leader
    # granted, and two nodes held VALID leases. A timeout-driven campaign cannot do
    # this (it waits an election timeout after the leader was last heard).
    c = Cluster([1, 2, 3], lease_duration=5.0)
    c.elect(1)
    c.isolate(3)
    c.restart(3)
    c.tick(3, 2 * c.node(3).raft.election_timeout)  # past its quiet period; no leader known
    c.stabilize()
    assert c.node(3).raft.lead == 0
    c.dropped -= {(2, 3), (3, 2)}  # 3 hears 2 but never 1
    c.tick(1, now=10.0)
    c.stabilize()
    assert c.node(1).lease_status(12.0).state is LeaseState.VALID  # on 2's ack of round @10
    c.dropped |= {(1, 2), (2, 1)}
    with pytest.raises(CampaignRefused, match="heard from leader 1"):
        c.node(2).campaign()
    # What the refusal prevents: the same election, started anyway, wins with 3.
    fire_election_timer(c.node(2))
    c.stabilize()
    c.tick(2, now=11.0)
    c.stabilize()
    assert c.node(2).raft.state is StateType.LEADER
    assert c.node(2).lease_status(12.0).state is LeaseState.VALID
    assert c.node(1).lease_status(12.0).state is LeaseState.VALID  # two leases
