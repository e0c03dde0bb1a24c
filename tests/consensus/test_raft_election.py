"""Leader election: timeouts, votes, PreVote, CheckQuorum, stickiness, boot quiet period."""

from __future__ import annotations

import pytest
from raft_cluster import Cluster, fire_election_timer

from rangekv.raft import (
    Config,
    ConfState,
    Entry,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    RawNode,
    StateType,
)

MT = MessageType


def fresh_node(nid: int = 1, voters: tuple[int, ...] = (1, 2, 3), **kw: object) -> RawNode:
    return RawNode(Config(id=nid, **kw), MemoryStorage(ConfState(voters)))  # type: ignore[arg-type]


def drain(node: RawNode) -> list[Message]:
    rd = node.ready()
    node.advance(rd)
    return list(rd.messages)


def test_follower_campaigns_after_randomized_timeout() -> None:
    node = fresh_node(pre_vote=False)
    timeout = node.raft.randomized_election_timeout
    assert 10 <= timeout < 20
    for _ in range(timeout - 1):
        node.tick()
    assert node.raft.state is StateType.FOLLOWER
    node.tick()
    assert node.raft.state is StateType.CANDIDATE
    assert node.raft.term == 1 and node.raft.vote == 1
    msgs = drain(node)
    assert sorted((m.type, m.to) for m in msgs) == [(MT.VOTE, 2), (MT.VOTE, 3)]


def test_randomized_timeouts_differ_across_nodes_with_same_seed() -> None:
    # The rng mixes in the id, so a cluster configured with one seed still
    # spreads its timeouts instead of livelocking in split votes.
    timeouts = set()
    for nid in range(1, 8):
        node = fresh_node(nid, voters=tuple(range(1, 8)))
        node.raft.become_follower(1, 0)  # re-draws the timeout
        timeouts.add(node.raft.randomized_election_timeout)
    assert len(timeouts) > 1
    assert all(10 <= t < 20 for t in timeouts)


def test_same_inputs_same_outputs() -> None:
    def run() -> list[str]:
        c = Cluster([1, 2, 3, 4, 5], rng_seed=42)
        c.tick_all(40)
        c.propose(c.leader(), b"a", b"b")
        c.stabilize()
        return [repr(m) for m in c.delivered]

    assert run() == run()


def test_election_elects_exactly_one_leader_by_ticking() -> None:
    c = Cluster([1, 2, 3, 4, 5])
    c.tick_all(40)
    leaders = [n for n, p in c.peers.items() if p.node.raft.state is StateType.LEADER]
    assert len(leaders) == 1
    lead = leaders[0]
    assert all(p.node.raft.lead == lead for p in c.peers.values())


def test_single_node_becomes_leader_immediately() -> None:
    c = Cluster([1])
    c.elect(1)
    c.propose(1, b"x")
    c.stabilize()
    assert c.peers[1].applied == [b"x"]


def test_vote_granted_at_most_once_per_term() -> None:
    node = fresh_node(1, pre_vote=False, check_quorum=False)
    node.step(Message(MT.VOTE, 1, 2, term=1, log_term=0, index=0))
    node.step(Message(MT.VOTE, 1, 3, term=1, log_term=0, index=0))
    msgs = drain(node)
    assert [(m.to, m.reject) for m in msgs] == [(2, False), (3, True)]
    assert node.raft.vote == 2
    # The vote is in the HardState handed out with the response.
    node.step(Message(MT.VOTE, 1, 2, term=1, log_term=0, index=0))
    rd = node.ready()
    assert rd.messages[0].reject is False  # re-granting to the same candidate is fine


def test_vote_hard_state_precedes_response() -> None:
    node = fresh_node(1, pre_vote=False, check_quorum=False)
    node.step(Message(MT.VOTE, 1, 2, term=3, log_term=0, index=0))
    rd = node.ready()
    assert rd.hard_state == HardState(term=3, vote=2, commit=0)
    assert rd.must_sync
    assert rd.messages[0].type is MT.VOTE_RESP and not rd.messages[0].reject


@pytest.mark.parametrize(
    ("cand_last_term", "cand_last_index", "granted"),
    [
        (1, 1, False),  # older last term
        (2, 1, False),  # same term, shorter log
        (2, 2, True),  # identical
        (2, 5, True),  # same term, longer
        (3, 1, True),  # newer last term wins regardless of length
    ],
)
def test_vote_requires_candidate_log_up_to_date(
    cand_last_term: int, cand_last_index: int, granted: bool
) -> None:
    storage = MemoryStorage(ConfState((1, 2, 3)))
    storage.append([Entry(1, 1), Entry(2, 2)])
    storage.set_hard_state(HardState(term=2, vote=0, commit=0))
    node = RawNode(Config(id=1, pre_vote=False, check_quorum=False), storage)
    node.step(Message(MT.VOTE, 1, 2, term=3, log_term=cand_last_term, index=cand_last_index))
    resp = [m for m in drain(node) if m.type is MT.VOTE_RESP]
    assert [m.reject for m in resp] == [not granted]


def test_candidate_with_stale_log_cannot_win() -> None:
    c = Cluster([1, 2, 3], pre_vote=False)
    c.elect(1)
    c.isolate(3)
    c.propose(1, b"a")
    c.stabilize()
    c.heal()
    # 3 missed an entry committed by 1 and 2: it must not be elected.
    fire_election_timer(c.node(3))
    c.stabilize()
    assert c.node(3).raft.state is not StateType.LEADER
    assert c.leader() in (1, 2)
    c.assert_consistent()


def test_prevote_does_not_change_terms() -> None:
    node = fresh_node(1)
    node.campaign()
    assert node.raft.state is StateType.PRE_CANDIDATE
    assert node.raft.term == 0
    msgs = drain(node)
    assert {m.type for m in msgs} == {MT.PRE_VOTE}
    assert all(m.term == 1 for m in msgs)
    # A voter answering a pre-vote keeps its term and records no vote.
    voter = fresh_node(2)
    voter.step(Message(MT.PRE_VOTE, 2, 1, term=1, log_term=0, index=0))
    (resp,) = drain(voter)
    assert resp.type is MT.PRE_VOTE_RESP and not resp.reject and resp.term == 1
    assert voter.raft.term == 0 and voter.raft.vote == 0


def test_prevote_keeps_partitioned_node_from_disrupting() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    term = c.node(1).raft.term
    c.isolate(3)
    for _ in range(60):
        c.tick(3)
        c.stabilize()
    # Without PreVote it would have bumped its term on every timeout.
    assert c.node(3).raft.term == term
    assert c.node(3).raft.state is StateType.PRE_CANDIDATE
    c.heal()
    c.tick_all(3)
    assert c.leader() == 1 and c.node(1).raft.term == term


def test_without_prevote_partitioned_node_inflates_term() -> None:
    # The counterpart of the test above: shows the test can tell the difference.
    c = Cluster([1, 2, 3], pre_vote=False)
    c.elect(1)
    c.isolate(3)
    for _ in range(60):
        c.tick(3)
        c.stabilize()
    assert c.node(3).raft.term > c.node(1).raft.term


def test_check_quorum_leader_steps_down_when_isolated() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.isolate(1)
    for _ in range(10):  # the first check after election finds everyone "recently active"
        c.tick(1)
        c.stabilize()
    assert c.node(1).raft.state is StateType.LEADER
    for _ in range(10):
        c.tick(1)
        c.stabilize()
    assert c.node(1).raft.state is StateType.FOLLOWER
    assert c.node(1).raft.lead == 0


def test_check_quorum_leader_stays_with_quorum() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.isolate(3)
    c.tick_all(50)
    assert c.leader() == 1


def test_leader_stickiness_ignores_votes_while_leader_is_heard() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    term = c.node(1).raft.term
    # Node 3 asks for a vote at a higher term without PreVote-free forcing.
    c.node(2).step(Message(MT.VOTE, 2, 3, term=term + 1, log_term=term, index=99))
    assert c.node(2).raft.term == term
    assert not c.node(2).has_ready()  # ignored: no response at all
    c.node(2).step(Message(MT.PRE_VOTE, 2, 3, term=term + 1, log_term=term, index=99))
    assert not c.node(2).has_ready()
    # Once an election timeout passes without the leader, votes are considered.
    c.tick(2, 10)
    c.node(2).step(Message(MT.PRE_VOTE, 2, 3, term=term + 1, log_term=term, index=99))
    (resp,) = c.node(2).ready().messages
    assert resp.type is MT.PRE_VOTE_RESP and not resp.reject


def test_forced_vote_skips_stickiness() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    term = c.node(1).raft.term
    forced = Message(
        MT.VOTE, 2, 3, term=term + 1, log_term=term, index=99, context=b"rangekv/transfer"
    )
    c.node(2).step(forced)
    assert c.node(2).raft.term == term + 1 and c.node(2).raft.vote == 3


def test_restarted_node_refuses_votes_for_first_election_tick() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(1, b"x")
    c.stabilize()
    term = c.node(1).raft.term
    node = c.restart(2)
    vote = Message(MT.PRE_VOTE, 2, 3, term=term + 1, log_term=term, index=99)
    for _ in range(9):
        node.step(vote)
        assert not node.ready().messages, "refused while booting"
        node.tick()
    node.tick()  # the 10th tick ends the quiet period
    node.step(vote)
    (resp,) = node.ready().messages
    assert resp.type is MT.PRE_VOTE_RESP and not resp.reject


def test_restarted_node_accepts_forced_vote_while_booting() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    term = c.node(1).raft.term
    node = c.restart(2)
    node.step(
        Message(MT.VOTE, 2, 3, term=term + 1, log_term=term, index=99, context=b"rangekv/transfer")
    )
    (resp,) = node.ready().messages
    assert resp.type is MT.VOTE_RESP and not resp.reject


def test_stale_leader_is_told_the_newer_term() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    term = c.node(1).raft.term
    follower = c.node(2)
    follower.raft.become_follower(term + 2, 0)
    follower.ready()
    # A heartbeat from the (now stale) leader gets an answer carrying our term.
    follower.step(Message(MT.HEARTBEAT, 2, 1, term=term))
    (resp,) = follower.ready().messages
    assert resp.type is MT.APP_RESP and resp.term == term + 2
    # ... which makes the stale leader step down.
    c.node(1).step(resp)
    assert c.node(1).raft.state is StateType.FOLLOWER
    assert c.node(1).raft.term == term + 2


def test_candidate_steps_down_when_majority_rejects() -> None:
    node = fresh_node(1, pre_vote=False)
    node.campaign()
    term = node.raft.term
    node.step(Message(MT.VOTE_RESP, 1, 2, term=term, reject=True))
    assert node.raft.state is StateType.CANDIDATE  # 1 for, 1 against, 1 pending
    node.step(Message(MT.VOTE_RESP, 1, 3, term=term, reject=True))
    assert node.raft.state is StateType.FOLLOWER


def test_duplicate_vote_responses_do_not_count_twice() -> None:
    node = fresh_node(1, voters=(1, 2, 3, 4, 5), pre_vote=False)
    node.campaign()
    term = node.raft.term
    for _ in range(3):
        node.step(Message(MT.VOTE_RESP, 1, 2, term=term))
    assert node.raft.state is StateType.CANDIDATE
    node.step(Message(MT.VOTE_RESP, 1, 3, term=term))
    assert node.raft.state is StateType.LEADER
