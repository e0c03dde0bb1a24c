"""ReadIndex: read states after a quorum-confirmed heartbeat round."""

from __future__ import annotations

from raft_cluster import Cluster

from rangekv.raft import MessageType, ReadState

MT = MessageType


def test_leader_read_index_needs_a_heartbeat_quorum() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(1, b"x")
    c.stabilize()
    commit = c.node(1).raft.log.committed
    c.node(1).read_index(b"r1")
    rd = c.process_ready(1)
    assert rd is not None and rd.read_states == ()
    assert {m.type for m in rd.messages} == {MT.HEARTBEAT}
    c.stabilize()
    assert c.peers[1].read_states == [ReadState(commit, b"r1")]


def test_isolated_leader_never_confirms_reads() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.isolate(1)
    c.node(1).read_index(b"r")
    c.stabilize()
    c.tick(1, 5)
    c.stabilize()
    assert c.peers[1].read_states == []


def test_one_ack_plus_leader_is_a_quorum_of_three() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.isolate(3)
    c.node(1).read_index(b"r")
    c.stabilize()
    assert [r.request_ctx for r in c.peers[1].read_states] == [b"r"]


def test_read_waits_for_commit_of_leader_term() -> None:
    c = Cluster([1, 2, 3])
    c.node(1).campaign()
    for _ in range(4):  # won the election, but the no-op is not committed
        c.process_all()
        c.deliver(lambda m: m.type is not MT.APP)
    c.node(1).read_index(b"early")
    c.process_all()
    assert c.peers[1].read_states == []
    assert c.node(1).raft.pending_read_index
    c.stabilize()
    assert [r.request_ctx for r in c.peers[1].read_states] == [b"early"]
    assert c.peers[1].read_states[0].index == c.node(1).raft.log.committed


def test_follower_read_index_is_forwarded_to_leader() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(1, b"x")
    c.stabilize()
    c.node(3).read_index(b"f")
    c.stabilize()
    assert c.peers[3].read_states == [ReadState(c.node(1).raft.log.committed, b"f")]
    assert c.peers[1].read_states == []
    assert any(m.type is MT.READ_INDEX_RESP and m.to == 3 for m in c.delivered)


def test_follower_without_leader_drops_read() -> None:
    c = Cluster([1, 2, 3])
    c.node(2).read_index(b"x")
    c.stabilize()
    assert c.peers[2].read_states == []


def test_single_voter_answers_immediately() -> None:
    c = Cluster([1])
    c.elect(1)
    c.node(1).read_index(b"solo")
    rd = c.process_ready(1)
    assert rd is not None and rd.read_states == (ReadState(1, b"solo"),)


def test_reads_released_in_order() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    for ctx in (b"a", b"b", b"c"):
        c.node(1).read_index(ctx)
    c.stabilize()
    assert [r.request_ctx for r in c.peers[1].read_states] == [b"a", b"b", b"c"]


def test_pending_reads_die_with_leadership() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.isolate(1)
    c.node(1).read_index(b"r")
    c.tick(1, 20)
    c.stabilize()
    assert c.node(1).raft.read_only.pending() == 0
    c.heal()
    c.tick_all(30)
    assert c.peers[1].read_states == []
