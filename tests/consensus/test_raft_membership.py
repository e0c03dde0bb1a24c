"""Membership changes: add/remove voters, learners, promotion, one change at a time."""

from __future__ import annotations

import pytest
from raft_cluster import Cluster

from rangekv.raft import (
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    MemoryStorage,
    MessageType,
    ProposalDropped,
    RawNode,
    StateType,
)

MT = MessageType
ADD, LEARNER, REMOVE = (
    ConfChangeType.ADD_NODE,
    ConfChangeType.ADD_LEARNER,
    ConfChangeType.REMOVE_NODE,
)


def change(c: Cluster, leader: int, kind: ConfChangeType, nid: int) -> None:
    c.node(leader).propose_conf_change(ConfChange(kind, nid))
    c.stabilize()


def join(c: Cluster, leader: int, kind: ConfChangeType, nid: int) -> None:
    """Add a brand-new node: it starts empty and catches up from a snapshot."""
    c.add_node(nid, ConfState())
    c.isolate(nid)
    change(c, leader, kind, nid)
    # The snapshot must name the newcomer, so take it after the change applied.
    c.compact(leader, c.peers[leader].applied_index)
    c.heal()
    c.tick(leader)
    c.stabilize()


def test_add_voter_joins_and_counts_in_quorum() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(1, b"before")
    c.stabilize()
    join(c, 1, ADD, 4)
    assert c.node(1).raft.tracker.voters == (1, 2, 3, 4)
    assert c.peers[4].applied == [b"before"]
    assert c.node(4).raft.tracker.voters == (1, 2, 3, 4)
    # Quorum is now 3 of 4: with 3 and 4 cut off nothing commits.
    c.isolate(3)
    c.isolate(4)
    c.propose(1, b"stuck")
    c.stabilize()
    assert c.peers[1].applied == [b"before"]
    c.heal()
    c.tick(1)  # the first answer notes what 3 and 4 lack, the next finds it overdue
    c.stabilize()
    c.tick(1)
    c.stabilize()
    assert c.peers[1].applied == [b"before", b"stuck"]


def test_remove_voter_shrinks_quorum() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    change(c, 1, REMOVE, 3)
    assert c.node(1).raft.tracker.voters == (1, 2)
    c.isolate(3)
    c.propose(1, b"x")
    c.stabilize()
    assert c.peers[2].applied == [b"x"]
    assert 3 not in c.node(1).status().progress


def test_removed_node_cannot_campaign() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    change(c, 1, REMOVE, 3)
    assert not c.node(3).raft.promotable()
    c.tick(3, 50)
    assert c.node(3).raft.state is StateType.FOLLOWER


def test_removing_the_leader_makes_it_step_down() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    change(c, 1, REMOVE, 1)
    assert c.node(1).raft.state is StateType.FOLLOWER
    assert c.node(2).raft.tracker.voters == (2, 3)
    for _ in range(40):
        c.tick_all(1)
        if c.leader() in (2, 3):
            break
    new = c.leader()
    assert new in (2, 3)
    c.propose(new, b"after")
    c.stabilize()
    assert c.peers[2].applied == [b"after"] == c.peers[3].applied


def test_learner_receives_log_but_does_not_vote_or_count() -> None:
    c = Cluster([1, 2], learners=[3])
    c.elect(1)
    c.propose(1, b"a")
    c.stabilize()
    assert c.peers[3].applied == [b"a"]
    assert c.node(1).status().progress[3].is_learner
    # Commit needs voter 2; the learner's ack does not help.
    c.isolate(2)
    c.propose(1, b"b")
    c.stabilize()
    assert c.peers[1].applied == [b"a"]
    assert c.node(3).raft.log.last_index() == c.node(1).raft.log.last_index()
    # A learner never campaigns.
    c.tick(3, 100)
    assert c.node(3).raft.state is StateType.FOLLOWER
    c.node(3).campaign()
    assert not any(m.type in (MT.VOTE, MT.PRE_VOTE) for m in c.node(3).ready().messages)


def test_add_learner_then_promote() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    join(c, 1, LEARNER, 4)
    assert c.node(1).raft.tracker.learners == (4,)
    assert not c.node(4).raft.promotable()
    change(c, 1, ADD, 4)
    assert c.node(1).raft.tracker.voters == (1, 2, 3, 4)
    assert c.node(1).raft.tracker.learners == ()
    assert c.node(4).raft.promotable()
    assert not c.node(1).status().progress[4].is_learner


def test_demote_voter_to_learner() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    change(c, 1, LEARNER, 3)
    assert c.node(1).raft.tracker.conf_state() == ConfState((1, 2), (3,))
    assert c.node(3).raft.tracker.conf_state() == ConfState((1, 2), (3,))


def test_one_conf_change_at_a_time() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.node(1).propose_conf_change(ConfChange(REMOVE, 3))
    with pytest.raises(ProposalDropped):
        c.node(1).propose_conf_change(ConfChange(REMOVE, 2))
    c.stabilize()  # applied: the next one may go
    c.node(1).propose_conf_change(ConfChange(ADD, 3))
    c.stabilize()
    assert c.node(1).raft.tracker.voters == (1, 2, 3)


def test_no_conf_change_before_leader_commits_its_term() -> None:
    c = Cluster([1, 2, 3])
    c.node(1).campaign()
    # Deliver only up to the election result: the no-op is not committed yet.
    for _ in range(4):
        c.process_all()
        c.deliver(lambda m: m.type is not MT.APP)
    assert c.node(1).raft.state is StateType.LEADER
    with pytest.raises(ProposalDropped):
        c.node(1).propose_conf_change(ConfChange(ADD, 4))
    c.stabilize()
    c.node(1).propose_conf_change(ConfChange(ADD, 4))


def test_follower_refuses_conf_change() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    with pytest.raises(ProposalDropped):
        c.node(2).propose_conf_change(ConfChange(ADD, 4))


def test_node_does_not_campaign_with_unapplied_conf_change() -> None:
    st = MemoryStorage(ConfState((1, 2, 3)))
    cc = ConfChange(REMOVE, 3).encode()
    st.append([Entry(1, 1), Entry(1, 2, EntryType.CONF_CHANGE, cc)])
    st.set_hard_state(HardState(term=1, commit=2))
    node = RawNode(Config(id=2, check_quorum=False), st)
    node.campaign()
    assert node.raft.state is StateType.FOLLOWER  # membership about to change
    rd = node.ready()
    assert [e.index for e in rd.committed_entries] == [1, 2]
    node.apply_conf_change(ConfChange.decode(rd.committed_entries[1].data))
    node.advance(rd)
    node.campaign()
    assert node.raft.state is StateType.PRE_CANDIDATE
