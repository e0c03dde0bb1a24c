"""Log compaction and snapshots: SNAP to laggards, report_snapshot, restore, Ready.snapshot."""

from __future__ import annotations

from raft_cluster import Cluster, encode_state

from rangekv.raft import (
    Config,
    ConfState,
    Entry,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    ProgressState,
    RawNode,
    Snapshot,
    SnapshotMetadata,
)

MT = MessageType


def lagging_cluster() -> Cluster:
    """Node 3 misses 10 entries that the leader then compacts away."""
    c = Cluster([1, 2, 3], auto_report_snapshot=False)
    c.elect(1)
    c.isolate(3)
    for i in range(10):
        c.propose(1, b"v%d" % i)
    c.stabilize()
    c.compact(1, c.peers[1].applied_index)
    c.heal()
    # The loss was silent: the first heartbeat answer after it only notes what is
    # unacknowledged; the next one finds it overdue (Progress.overdue_at_beat).
    c.tick(1)
    c.stabilize()
    assert not [m for m in c.delivered if m.type is MT.SNAP]
    return c


def test_follower_behind_compaction_gets_snapshot() -> None:
    c = lagging_cluster()
    c.tick(1)  # heartbeat -> response -> leader probes 3 -> needs compacted entries
    c.stabilize()
    snaps = [m for m in c.delivered if m.type is MT.SNAP]
    assert len(snaps) == 1 and snaps[0].to == 3
    assert snaps[0].snapshot is not None and snaps[0].snapshot.index == 11
    pr = c.node(1).raft.tracker.progress[3]
    # The follower answered, so the leader moved on even before the report.
    assert pr.match == 11
    assert c.peers[3].applied == [b"v%d" % i for i in range(10)]
    assert c.peers[3].storage.first_index() == 12


def test_ready_carries_snapshot_and_advance_marks_it_applied() -> None:
    snap = Snapshot(SnapshotMetadata(20, 4, ConfState((1, 2, 3))), encode_state([b"s"]))
    node = RawNode(Config(id=2), MemoryStorage(ConfState((1, 2, 3))))
    node.step(Message(MT.SNAP, 2, 1, term=4, snapshot=snap))
    rd = node.ready()
    assert rd.snapshot == snap
    assert rd.committed_entries == ()  # nothing may be applied before the snapshot
    assert rd.messages[0].type is MT.APP_RESP and rd.messages[0].index == 20
    node.raft.log.storage.apply_snapshot(snap)  # type: ignore[attr-defined]
    node.advance(rd)
    assert node.raft.log.applied == 20 and node.raft.log.committed == 20
    assert node.raft.tracker.voters == (1, 2, 3)
    assert not node.has_ready()


def test_stale_snapshot_is_ignored() -> None:
    st = MemoryStorage(ConfState((1, 2)))
    st.append([Entry(1, i) for i in range(1, 6)])
    st.set_hard_state(HardState(term=1, commit=5))
    node = RawNode(Config(id=2), st)
    snap = Snapshot(SnapshotMetadata(3, 1, ConfState((1, 2))))
    node.step(Message(MT.SNAP, 2, 1, term=1, snapshot=snap))
    rd = node.ready()
    assert rd.snapshot is None
    assert rd.messages[0].index == 5  # answered with our commit index


def test_snapshot_matching_log_only_fast_forwards_commit() -> None:
    st = MemoryStorage(ConfState((1, 2)))
    st.append([Entry(1, i) for i in range(1, 6)])
    st.set_hard_state(HardState(term=1, commit=2))
    node = RawNode(Config(id=2), st)
    node.step(Message(MT.SNAP, 2, 1, term=1, snapshot=Snapshot(SnapshotMetadata(4, 1))))
    assert node.raft.log.unstable.snapshot is None  # not a restore: conf lacks us
    node2 = RawNode(Config(id=2), st)
    snap = Snapshot(SnapshotMetadata(4, 1, ConfState((1, 2))))
    node2.step(Message(MT.SNAP, 2, 1, term=1, snapshot=snap))
    assert node2.raft.log.unstable.snapshot is None
    assert node2.raft.log.committed == 4


def test_snapshot_not_naming_us_is_refused() -> None:
    node = RawNode(Config(id=9), MemoryStorage(ConfState((1, 2, 3))))
    snap = Snapshot(SnapshotMetadata(20, 4, ConfState((1, 2, 3))))
    node.step(Message(MT.SNAP, 9, 1, term=4, snapshot=snap))
    assert node.ready().snapshot is None


def test_report_snapshot_failure_resumes_probe() -> None:
    c = lagging_cluster()
    c.drop_types.add(MT.SNAP)
    c.tick(1)
    c.stabilize()
    pr = c.node(1).raft.tracker.progress[3]
    assert pr.state is ProgressState.SNAPSHOT and pr.pending_snapshot == 11
    assert pr.is_paused()
    c.node(1).report_snapshot(3, failed=True)
    assert pr.state is ProgressState.PROBE and pr.pending_snapshot == 0
    assert pr.is_paused()  # waits for the next heartbeat response to probe again
    c.heal()
    c.tick(1)
    c.stabilize()
    assert c.peers[3].applied == c.peers[1].applied


def test_report_snapshot_success_moves_next_past_snapshot() -> None:
    c = lagging_cluster()
    c.drop_types.add(MT.SNAP)
    c.tick(1)
    c.stabilize()
    pr = c.node(1).raft.tracker.progress[3]
    c.node(1).report_snapshot(3, failed=False)
    assert pr.state is ProgressState.PROBE and pr.next == 12


def test_no_snapshot_to_inactive_peer() -> None:
    c = lagging_cluster()
    raft = c.node(1).raft
    pr = raft.tracker.progress[3]
    pr.become_probe()
    pr.next = 1  # needs compacted entries
    pr.recent_active = False  # CheckQuorum has not heard from it lately
    assert raft._send_append(3) is False
    assert pr.state is ProgressState.PROBE
    pr.recent_active = True
    assert raft._send_append(3) is True
    assert pr.state is ProgressState.SNAPSHOT


def test_compacted_log_still_serves_terms_and_entries() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    for i in range(5):
        c.propose(1, b"%d" % i)
    c.stabilize()
    c.compact(1, 4)
    log = c.node(1).raft.log
    assert log.first_index() == 5
    assert log.term(4) == 1
    assert [e.data for e in log.slice(5, log.last_index() + 1)] == [b"3", b"4"]
    c.propose(1, b"after")
    c.stabilize()
    assert c.peers[2].applied[-1] == b"after"
