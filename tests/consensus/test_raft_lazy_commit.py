"""Lazy commit (`Config.lazy_commit`): followers learn a moved commit index from
the next append or heartbeat, or at once when an entry proposed with
`publish=True` commits, never from an empty append of its own.

What must hold: the leader commits exactly as it would eagerly (nothing it
decides depends on what followers know of the commit index); a follower never
commits past what it holds; every follower learns the commit within one
heartbeat interval of an idle leader; membership changes are published at once.
"""

from __future__ import annotations

from raft_cluster import Cluster

from rangekv.raft import ConfChange, ConfChangeType, Message, MessageType

MT = MessageType


def _elected(lazy: bool, ids: tuple[int, ...] = (1, 2, 3)) -> Cluster:
    c = Cluster(ids, lazy_commit=lazy, heartbeat_tick=1)
    c.elect(1)
    c.stabilize()
    return c


def _messages_of_one_entry(lazy: bool) -> tuple[list[Message], Cluster]:
    c = _elected(lazy)
    c.delivered.clear()
    c.propose(1, b"x")
    c.stabilize()
    return list(c.delivered), c


def test_a_lone_entry_costs_half_the_messages() -> None:
    eager, _ = _messages_of_one_entry(lazy=False)
    lazy, _ = _messages_of_one_entry(lazy=True)
    # Eager: an append to each follower, its answer, then an empty append with
    # the new commit to each follower and its answer.
    assert [m.type for m in eager].count(MT.APP) == 4
    assert len(eager) == 8
    # Lazy: the appends with the entry and their answers, nothing else.
    assert [(m.type, len(m.entries)) for m in lazy if m.type is MT.APP] == [(MT.APP, 1)] * 2
    assert len(lazy) == 4


def test_the_leader_commits_at_once_and_followers_at_the_next_heartbeat() -> None:
    _, c = _messages_of_one_entry(lazy=True)
    index = c.node(1).raft.log.last_index()
    assert c.node(1).raft.log.committed == index
    assert c.peers[1].applied[-1] == b"x"
    for nid in (2, 3):
        # The follower holds the entry but has not heard that it committed.
        assert c.node(nid).raft.log.last_index() == index
        assert c.node(nid).raft.log.committed < index
    c.tick(1)  # one heartbeat interval (heartbeat_tick=1)
    c.stabilize()
    for nid in (2, 3):
        assert c.node(nid).raft.log.committed == index
        assert c.peers[nid].applied[-1] == b"x"
    c.assert_consistent()


def test_the_next_append_carries_the_commit() -> None:
    _, c = _messages_of_one_entry(lazy=True)
    first = c.node(1).raft.log.last_index()
    c.delivered.clear()
    c.propose(1, b"y")
    c.stabilize()
    carried = [m for m in c.delivered if m.type is MT.APP]
    assert carried and all(m.commit >= first for m in carried)
    for nid in (2, 3):
        assert c.node(nid).raft.log.committed >= first
        assert c.peers[nid].applied[: len(c.peers[1].applied) - 1] == c.peers[1].applied[:-1]


def test_a_follower_never_commits_past_what_it_holds() -> None:
    c = _elected(lazy=True)
    c.isolate(3)
    c.propose(1, b"a")
    c.stabilize()
    c.heal()
    # Node 3 missed the entry; the heartbeat's commit is capped at its match.
    c.delivered.clear()
    c.tick(1)
    c.process_all()
    beats = [m for m in c.queue if m.type is MT.HEARTBEAT and m.to == 3]
    assert beats and beats[0].commit < c.node(1).raft.log.last_index()
    c.stabilize()
    c.tick(1)
    c.stabilize()
    assert c.node(3).raft.log.committed == c.node(1).raft.log.committed
    c.assert_consistent()


def test_a_membership_change_is_published_at_once() -> None:
    c = _elected(lazy=True, ids=(1, 2, 3))
    c.add_node(4)
    c.node(1).propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    c.stabilize()
    index = c.node(1).raft.log.last_index()
    # Without a tick, every member already applied the change.
    for nid in (2, 3):
        assert c.node(nid).raft.log.committed == index
        assert 4 in c.peers[nid].conf_state.learners


def test_an_entry_proposed_with_publish_is_published_when_it_commits() -> None:
    c = _elected(lazy=True)
    c.node(1).propose_batch([b"plain"])
    c.stabilize()
    plain = c.node(1).raft.log.last_index()
    assert all(c.node(n).raft.log.committed < plain for n in (2, 3))
    c.node(1).propose_batch([b"split"], publish=True)
    c.stabilize()
    index = c.node(1).raft.log.last_index()
    # Without a tick, every follower learned the commit of the published entry
    # (and so of everything before it), and applied it.
    for nid in (2, 3):
        assert c.node(nid).raft.log.committed == index
        assert c.peers[nid].applied[-1] == b"split"
    # Only once: the next plain entry is lazy again.
    c.node(1).propose_batch([b"after"])
    c.stabilize()
    assert all(c.node(n).raft.log.committed == index for n in (2, 3))
