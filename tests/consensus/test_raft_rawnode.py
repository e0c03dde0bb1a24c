"""RawNode: Ready/advance contract, must_sync, restart from storage, status."""

from __future__ import annotations

import pytest
from raft_cluster import Cluster

from rangekv.raft import (
    Config,
    ConfState,
    Entry,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    RawNode,
    SoftState,
    StateType,
    StepLocalMessage,
)

MT = MessageType


def test_fresh_node_has_no_ready() -> None:
    node = RawNode(Config(id=1), MemoryStorage(ConfState((1, 2, 3))))
    assert not node.has_ready()


@pytest.mark.parametrize("mt", [t for t in MessageType if t.is_local()])
def test_stepping_local_messages_is_refused(mt: MessageType) -> None:
    node = RawNode(Config(id=1), MemoryStorage(ConfState((1,))))
    with pytest.raises(StepLocalMessage):
        node.step(Message(mt, 1, 2, term=1))


def test_ready_reports_changes_once_and_must_sync() -> None:
    node = RawNode(Config(id=1, pre_vote=False), MemoryStorage(ConfState((1, 2))))
    node.campaign()
    rd = node.ready()
    assert rd.soft_state == SoftState(0, StateType.CANDIDATE)
    assert rd.hard_state == HardState(1, 1, 0)
    assert rd.must_sync and [m.to for m in rd.messages] == [2]
    node.advance(rd)
    assert not node.has_ready()
    node.step(Message(MT.VOTE_RESP, 1, 2, term=1))
    rd = node.ready()
    assert rd.soft_state == SoftState(1, StateType.LEADER)
    assert rd.hard_state is None  # unchanged
    assert rd.entries == (Entry(1, 1),) and rd.must_sync
    node.raft.log.storage.append(rd.entries)  # type: ignore[attr-defined]
    node.advance(rd)
    node.step(Message(MT.APP_RESP, 1, 2, term=1, index=1))
    rd = node.ready()
    assert rd.hard_state == HardState(1, 1, 1)
    assert not rd.must_sync  # a commit index alone may be written lazily
    assert rd.committed_entries == (Entry(1, 1),)


def test_leader_counts_itself_only_after_persisting() -> None:
    node = RawNode(Config(id=1, pre_vote=False), MemoryStorage(ConfState((1, 2, 3))))
    node.campaign()
    node.step(Message(MT.VOTE_RESP, 1, 2, term=1))
    node.step(Message(MT.APP_RESP, 1, 2, term=1, index=1))
    # One follower has entry 1, but the leader has not persisted it yet.
    assert node.raft.log.committed == 0
    rd = node.ready()
    node.raft.log.storage.append(rd.entries)  # type: ignore[attr-defined]
    node.advance(rd)
    assert node.raft.log.committed == 1


def test_restart_recovers_hard_state_and_replays_committed() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(1, b"a", b"b")
    c.stabilize()
    node = c.restart(2)
    assert node.raft.term == c.node(1).raft.term
    assert node.raft.log.committed == 3 and node.raft.log.applied == 0
    rd = node.ready()
    assert [e.data for e in rd.committed_entries] == [b"", b"a", b"b"]
    # With Config.applied the driver skips what its state machine already has.
    st = c.peers[2].storage
    node2 = RawNode(Config(id=2, applied=2), st)
    assert [e.data for e in node2.ready().committed_entries] == [b"b"]


def test_bad_hard_state_commit_is_rejected() -> None:
    st = MemoryStorage(ConfState((1,)))
    st.append([Entry(1, 1)])
    st.set_hard_state(HardState(1, 0, 5))
    with pytest.raises(Exception, match="commit"):
        RawNode(Config(id=1), st)


def test_status_has_progress_only_on_leader() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    st = c.node(1).status()
    assert st.state is StateType.LEADER and sorted(st.progress) == [1, 2, 3]
    assert st.progress[2].match == st.commit
    assert c.node(2).status().progress == {}
    assert c.node(2).status().lead == 1


def test_misaddressed_message_is_ignored() -> None:
    node = RawNode(Config(id=1), MemoryStorage(ConfState((1, 2))))
    node.step(Message(MT.HEARTBEAT, 2, 3, term=5))
    assert node.raft.term == 0


def test_messages_to_unknown_peers_are_ignored_by_leader() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    term = c.node(1).raft.term
    c.node(1).step(Message(MT.APP_RESP, 1, 9, term=term, index=1))
    c.node(1).step(Message(MT.HEARTBEAT_RESP, 1, 9, term=term))
    assert 9 not in c.node(1).status().progress


def _leader_of_three(**config: int | bool) -> RawNode:
    """Node 1 leading (1, 2, 3) at term 1, everything persisted and advanced."""
    node = RawNode(Config(id=1, pre_vote=False, **config), MemoryStorage(ConfState((1, 2, 3))))  # type: ignore[arg-type]
    node.campaign()
    node.advance(node.ready())
    node.step(Message(MT.VOTE_RESP, 1, 2, term=1))
    rd = node.ready()
    node.raft.log.storage.append(rd.entries)  # type: ignore[attr-defined]
    node.advance(rd)
    assert node.raft.state is StateType.LEADER and not node.has_ready()
    return node


def test_a_role_change_alone_is_a_ready() -> None:
    # CheckQuorum steps the leader down on a tick that sends nothing (no heartbeat
    # is due) and changes no hard state: only the soft state says so, and the driver
    # must hear it (it fails the proposals it holds on a lost leadership).
    node = _leader_of_three(election_tick=10, heartbeat_tick=3)
    seen = []
    for _ in range(30):  # the first check finds everyone active since the election
        node.tick()
        if node.has_ready():
            rd = node.ready()
            seen.append((rd.soft_state, rd.hard_state, len(rd.messages)))
            node.advance(rd)
    assert node.raft.state is StateType.FOLLOWER
    assert seen[-1] == (SoftState(0, StateType.FOLLOWER), None, 0)


def test_a_new_term_alone_is_a_ready() -> None:
    # A stray answer from a later term moves a follower that knows no leader to that
    # term: no message out, no role or leader change, only the hard state. The new
    # term must be persisted (it bounds the votes the node may still cast).
    node = RawNode(Config(id=1), MemoryStorage(ConfState((1, 2, 3))))
    node.step(Message(MT.APP_RESP, 1, 2, term=5, index=0, reject=True))
    assert node.has_ready()
    rd = node.ready()
    assert rd.hard_state == HardState(5, 0, 0) and rd.soft_state is None
    assert rd.must_sync and not rd.messages
