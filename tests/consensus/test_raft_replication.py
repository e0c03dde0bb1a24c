"""Log replication: commit rule, conflicts, fast backtracking, flow control, back-pressure."""

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
    ProgressState,
    ProposalDropped,
    RawNode,
    StateType,
)

MT = MessageType


def storage_with(terms: list[int], term: int, voters: tuple[int, ...] = (1, 2, 3)) -> MemoryStorage:
    st = MemoryStorage(ConfState(voters))
    st.append([Entry(t, i + 1) for i, t in enumerate(terms)])
    st.set_hard_state(HardState(term=term))
    return st


def log_terms(c: Cluster, nid: int) -> list[int]:
    log = c.node(nid).raft.log
    return [e.term for e in log.slice(log.first_index(), log.last_index() + 1)]


def test_leader_does_not_count_replicas_of_older_term_entry() -> None:
    # Leader of term 3 whose log ends with an entry of term 2: a quorum
    # holding that entry is not enough to commit it (Raft §5.4.2).
    node = RawNode(Config(id=1, pre_vote=False), storage_with([1, 2], term=2))
    fire_election_timer(node)  # (a driver's campaign() waits out the restart's quiet period)
    node.step(Message(MT.VOTE_RESP, 1, 2, term=3))
    assert node.raft.state is StateType.LEADER
    rd = node.ready()
    node.raft.log.storage.append(rd.entries)  # type: ignore[attr-defined]
    node.advance(rd)  # leader persisted its no-op 3/3: its own match is 3
    node.step(Message(MT.APP_RESP, 1, 2, term=3, index=2))
    assert node.raft.log.committed == 0
    node.step(Message(MT.APP_RESP, 1, 2, term=3, index=3))
    assert node.raft.log.committed == 3  # the term-3 entry commits, and 2 with it


def _deliver_filtered(c: Cluster, drop: object) -> None:
    """Stabilize, discarding messages for which `drop(m)` is true."""
    for _ in range(1000):
        did = c.process_all()
        c.queue = [m for m in c.queue if not drop(m)]  # type: ignore[operator]
        if c.queue:
            c.deliver()
            did = True
        if not did:
            return


def test_figure_8_old_term_entry_is_not_committed_by_counting() -> None:
    c = Cluster([1, 2, 3, 4, 5], pre_vote=False, check_quorum=False, max_size_per_msg=0)
    c.elect(1)  # term 1, index 1
    # (a) S1 replicates 'a' at index 2 to S2 only.
    c.partition([1, 2], [3, 4, 5])
    c.propose(1, b"a")
    c.stabilize()
    # (b) S5 wins term 2 with S3, S4; its no-op 2/2 reaches nobody.
    c.node(5).campaign()
    _deliver_filtered(c, lambda m: m.sender == 5 and m.type is MT.APP)
    assert c.node(5).raft.state is StateType.LEADER
    assert log_terms(c, 5) == [1, 2]
    # (c) S1 restarts and wins term 3 with S3, S4, and copies 1/2 to them,
    # but "crashes" before its own term-3 entry reaches anyone.
    c.heal()
    c.isolate(5)
    c.dropped |= {(1, 2), (2, 1)}
    c.restart(1)

    def would_accept_term3(m: Message) -> bool:
        if m.sender != 1 or not any(e.term == 3 for e in m.entries):
            return False
        return c.node(m.to).raft.log.match_term(m.index, m.log_term)

    while c.node(1).raft.state is not StateType.LEADER:
        c.node(1).campaign()
        _deliver_filtered(c, would_accept_term3)
    assert c.node(1).raft.term == 3
    assert log_terms(c, 3)[:2] == [1, 1]
    # index 2 (term 1) is on S1, S2, S3, S4 yet must not be committed.
    assert c.node(1).raft.log.committed == 1
    assert c.peers[1].applied == []
    # (d) S1 is gone; S5 can win and overwrite index 2 with its term-2 entry.
    c.heal()
    c.isolate(1)
    c.restart(5)
    while c.node(5).raft.state is not StateType.LEADER:
        c.node(5).campaign()
        c.stabilize()
    c.propose(5, b"b")
    c.stabilize()
    assert c.peers[2].applied == [b"b"]
    c.assert_consistent()


def test_follower_conflicting_tail_is_replaced() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.isolate(1)
    for d in (b"lost1", b"lost2"):
        c.propose(1, d)  # never reaches a quorum
    c.stabilize()
    c.tick_all(40)
    new = c.leader()
    assert new in (2, 3)
    c.propose(new, b"kept")
    c.stabilize()
    c.heal()
    c.tick_all(5)
    assert c.node(1).raft.state is StateType.FOLLOWER
    assert log_terms(c, 1) == log_terms(c, new)
    assert c.peers[1].applied == [b"kept"]
    c.assert_consistent()


def test_fast_backtracking_skips_a_whole_term_per_round_trip() -> None:
    st1 = storage_with([1] + [3] * 10, term=3)
    st2 = storage_with([1] + [2] * 50, term=2)
    st3 = storage_with([1] + [3] * 10, term=3)
    nodes = {
        1: RawNode(Config(id=1, pre_vote=False, check_quorum=False), st1),
        2: RawNode(Config(id=2, pre_vote=False, check_quorum=False), st2),
        3: RawNode(Config(id=3, pre_vote=False, check_quorum=False), st3),
    }
    stores = {1: st1, 2: st2, 3: st3}
    nodes[1].campaign()
    rejects = 0
    for _ in range(100):
        queue = []
        for nid, n in nodes.items():
            if n.has_ready():
                rd = n.ready()
                stores[nid].append(rd.entries)
                if rd.hard_state:
                    stores[nid].set_hard_state(rd.hard_state)
                queue.extend(rd.messages)
                n.advance(rd)
        if not queue:
            break
        for m in queue:
            rejects += m.type is MT.APP_RESP and m.reject and m.sender == 2
            nodes[m.to].step(m)
    assert nodes[1].raft.state is StateType.LEADER
    assert rejects <= 2  # one entry at a time would need ~50
    assert nodes[2].raft.log.last_index() == nodes[1].raft.log.last_index()
    assert nodes[2].raft.log.term(nodes[2].raft.log.last_index()) == 4


def test_find_conflict_by_term_hint() -> None:
    st = storage_with([1, 1, 2, 2, 2, 5], term=5)
    node = RawNode(Config(id=2), st)
    log = node.raft.log
    assert log.find_conflict_by_term(6, 4) == 5
    assert log.find_conflict_by_term(6, 2) == 5
    assert log.find_conflict_by_term(4, 1) == 2
    assert log.find_conflict_by_term(4, 0) == 0
    assert log.find_conflict_by_term(10, 1) == 10  # beyond our log: unchanged


def test_inflight_window_limits_unacked_appends() -> None:
    c = Cluster([1, 2], max_inflight_msgs=2, max_size_per_msg=0)
    c.elect(1)
    pr = c.node(1).raft.tracker.progress[2]
    assert pr.state is ProgressState.REPLICATE
    for i in range(5):
        c.propose(1, b"e%d" % i)
    c.process_ready(1)
    apps = [m for m in c.queue if m.type is MT.APP and m.to == 2]
    assert len(apps) == 2 and all(len(m.entries) == 1 for m in apps)
    assert pr.is_paused()
    # Each ack frees a slot and lets the leader stream on.
    c.stabilize()
    assert c.node(2).raft.log.committed == c.node(1).raft.log.last_index()
    assert c.peers[2].applied == [b"e%d" % i for i in range(5)]


def test_max_size_per_msg_bounds_app_payload() -> None:
    c = Cluster([1, 2], max_size_per_msg=250)
    c.elect(1)
    c.propose(1, *[bytes(100) for _ in range(7)])
    c.stabilize()
    sizes = [
        sum(len(e.data) for e in m.entries)
        for m in c.delivered
        if m.type is MT.APP and m.entries and m.entries[0].data
    ]
    assert sizes and max(sizes) <= 250
    assert sum(sizes) == 700
    # An entry larger than the limit still travels, alone.
    c.propose(1, bytes(1000))
    c.stabilize()
    assert len(c.peers[2].applied) == 8


def test_max_uncommitted_size_drops_proposals_until_applied() -> None:
    c = Cluster([1, 2, 3], max_uncommitted_entries_size=100)
    c.elect(1)
    c.propose(1, bytes(60))
    with pytest.raises(ProposalDropped):
        c.propose(1, bytes(60))
    c.stabilize()  # commit and apply release the budget
    c.propose(1, bytes(60))
    # A single oversized proposal is allowed when nothing is outstanding.
    c.stabilize()
    c.propose(1, bytes(500))
    c.stabilize()
    assert len(c.peers[3].applied) == 3


def test_follower_and_candidate_refuse_proposals() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    with pytest.raises(ProposalDropped):
        c.propose(2, b"x")
    c.node(3).raft.become_candidate()
    with pytest.raises(ProposalDropped):
        c.propose(3, b"x")


def test_heartbeat_does_not_commit_beyond_follower_match() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.dropped.add((1, 3))
    c.propose(1, b"a")
    c.stabilize()
    c.heal()
    c.drop_types.add(MT.APP)
    c.tick(1)  # heartbeat round
    c.stabilize()
    # 3 does not hold entry 2 yet: the heartbeat told it commit <= its match.
    assert c.node(3).raft.log.committed <= c.node(3).raft.log.last_index()
    assert c.node(3).raft.log.committed == 1


def test_probe_state_sends_one_append_per_heartbeat() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.isolate(3)
    c.node(1).report_unreachable(3)
    pr = c.node(1).raft.tracker.progress[3]
    assert pr.state is ProgressState.PROBE
    c.propose(1, b"a")
    c.propose(1, b"b")
    c.process_ready(1)
    assert len([m for m in c.queue if m.to == 3 and m.type is MT.APP]) == 1
    c.stabilize()
    c.heal()
    c.tick_all(3)
    assert pr.state is ProgressState.REPLICATE
    assert c.peers[3].applied == [b"a", b"b"]


def _heartbeat_round(c: Cluster, leader: int) -> list[Message]:
    """One heartbeat interval in which only the heartbeats and their answers move;
    returns what the leader sent after hearing the answers."""
    c.tick(leader)
    c.process_ready(leader)
    c.deliver(lambda m: m.type is MT.HEARTBEAT)
    for nid in c.peers:
        if nid != leader:
            c.process_ready(nid)
    c.deliver(lambda m: m.type is MT.HEARTBEAT_RESP)
    before = len(c.queue)
    c.process_ready(leader)
    return c.queue[before:]


def test_a_heartbeat_answer_does_not_resend_what_is_merely_in_flight() -> None:
    """An entry on its way when a heartbeat answer arrives gets no second (empty)
    APP: its own answer is coming. Entries still unanswered at the NEXT heartbeat
    answer, an interval later, are overdue (lost, or stuck): the leader resends
    them at once from what the follower holds, and they arrive."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.stabilize()
    c.propose(1, b"a")
    c.process_ready(1)
    in_flight = [m for m in c.queue if m.type is MT.APP]
    assert [m.to for m in in_flight] == [2, 3] and all(m.entries for m in in_flight)
    c.queue = [m for m in c.queue if m not in in_flight]  # lost on the way, silently
    # The first answers only note what is unacknowledged.
    assert _heartbeat_round(c, 1) == []
    pr = c.node(1).raft.tracker.progress[2]
    assert pr.state is ProgressState.REPLICATE and pr.match < c.node(1).raft.log.last_index()
    # An interval later it is overdue: one APP each, carrying the entry again.
    resent = _heartbeat_round(c, 1)
    assert sorted((m.to, m.type) for m in resent) == [(2, MT.APP), (3, MT.APP)]
    assert all([e.data for e in m.entries] == [b"a"] for m in resent)
    c.stabilize()
    assert c.peers[2].applied == c.peers[3].applied == [b"a"]


def test_a_heartbeat_answer_still_serves_a_full_window_and_a_probe() -> None:
    """What a heartbeat answer always did for a follower that cannot move on its
    own stays: it frees a slot of a full inflight window and re-probes a follower
    in PROBE state, at the first answer."""
    c = Cluster([1, 2, 3], max_inflight_msgs=1)
    c.elect(1)
    c.stabilize()
    c.propose(1, b"a")
    c.process_ready(1)
    c.queue = [m for m in c.queue if m.type is not MT.APP]
    c.propose(1, b"b")
    c.process_ready(1)
    pr = c.node(1).raft.tracker.progress[2]
    assert pr.inflights.full()
    sent = _heartbeat_round(c, 1)
    assert sorted(m.to for m in sent if m.type is MT.APP) == [2, 3]
    c.stabilize()
    assert c.peers[2].applied == [b"a", b"b"]
    c.node(1).report_unreachable(3)
    assert c.node(1).raft.tracker.progress[3].state is ProgressState.PROBE
    c.propose(1, b"c")
    c.process_ready(1)
    c.queue = [m for m in c.queue if not (m.type is MT.APP and m.to == 3)]
    sent = _heartbeat_round(c, 1)
    # (2's window of one is full again with c: it gets its APP too.)
    assert sorted(m.to for m in sent if m.type is MT.APP) == [2, 3]
    c.stabilize()
    assert c.peers[3].applied == [b"a", b"b", b"c"]
