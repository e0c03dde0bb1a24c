"""Leadership transfer: TRANSFER_LEADER / TIMEOUT_NOW, catch-up, abort, dropped proposals."""

from __future__ import annotations

import pytest
from raft_cluster import Cluster

from rangekv.raft import MessageType, ProposalDropped, StateType

MT = MessageType


def test_transfer_to_up_to_date_follower() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    term = c.node(1).raft.term
    c.node(1).transfer_leadership(2)
    c.stabilize()
    assert c.leader() == 2
    assert c.node(2).raft.term == term + 1
    assert c.node(1).raft.state is StateType.FOLLOWER and c.node(1).raft.lead == 2
    # The forced election needs no PreVote round and beats leader stickiness.
    assert any(m.type is MT.TIMEOUT_NOW and m.to == 2 for m in c.delivered)
    votes = [m for m in c.delivered if m.type is MT.VOTE and m.sender == 2]
    assert votes and all(m.context for m in votes)
    assert not any(m.type is MT.PRE_VOTE and m.sender == 2 for m in c.delivered)


def test_transfer_catches_target_up_first() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.isolate(3)
    for i in range(3):
        c.propose(1, b"%d" % i)
    c.stabilize()
    c.heal()
    c.node(1).transfer_leadership(3)
    c.process_ready(1)
    assert not any(m.type is MT.TIMEOUT_NOW for m in c.queue)  # 3 lags: append first
    c.stabilize()
    assert c.leader() == 3
    assert c.peers[3].applied == [b"0", b"1", b"2"]


def test_proposals_dropped_while_transferring() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.isolate(2)
    c.node(1).transfer_leadership(2)
    with pytest.raises(ProposalDropped):
        c.propose(1, b"x")


def test_transfer_aborted_after_election_timeout() -> None:
    """The target never catches up (so TIMEOUT_NOW never left): the leader abandons
    the transfer and leads on in the same term. (When TIMEOUT_NOW did leave, it
    ends the term itself and leads the next: test_raft_lease.py.)"""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.isolate(2)
    c.propose(1, b"w")  # 2 lags behind this entry
    c.stabilize()
    c.node(1).transfer_leadership(2)
    assert c.node(1).raft.lead_transferee == 2
    for _ in range(10):
        c.tick(1)
        c.stabilize()
    assert c.node(1).raft.lead_transferee == 0
    assert c.leader() == 1
    assert not any(m.type is MT.TIMEOUT_NOW for m in c.delivered)
    c.propose(1, b"x")  # accepted again
    c.stabilize()
    assert c.peers[3].applied == [b"w", b"x"]


def test_transfer_to_self_learner_or_stranger_is_ignored() -> None:
    c = Cluster([1, 2], learners=[3])
    c.elect(1)
    for target in (1, 3, 9):
        c.node(1).transfer_leadership(target)
        assert c.node(1).raft.lead_transferee == 0


def test_transfer_requested_on_follower_is_forwarded() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.node(3).transfer_leadership(3)
    c.stabilize()
    assert c.leader() == 3


def test_second_transfer_to_same_target_is_idempotent_other_target_replaces() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.isolate(2)
    c.isolate(3)
    c.node(1).transfer_leadership(2)
    elapsed = c.node(1).raft.election_elapsed
    c.tick(1, 3)
    c.node(1).transfer_leadership(2)
    assert c.node(1).raft.election_elapsed == elapsed + 3  # not restarted
    c.node(1).transfer_leadership(3)
    assert c.node(1).raft.lead_transferee == 3


def test_removed_transferee_aborts_transfer() -> None:
    from rangekv.raft import ConfChange, ConfChangeType

    c = Cluster([1, 2, 3])
    c.elect(1)
    c.node(1).propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 3))
    c.isolate(3)
    c.node(1).transfer_leadership(3)
    c.stabilize()
    assert c.node(1).raft.lead_transferee == 0
    assert c.leader() == 1
