"""Unit tests of the value types, MemoryStorage, RaftLog/Unstable and Progress."""

from __future__ import annotations

import pytest

from rangekv.raft import (
    Compacted,
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    InvariantViolation,
    MemoryStorage,
    MessageType,
    ProgressState,
    SnapshotOutOfDate,
    Unavailable,
)
from rangekv.raft.log import RaftLog
from rangekv.raft.progress import Progress
from rangekv.raft.storage import limit_size
from rangekv.raft.tracker import ProgressTracker, VoteResult, quorum_value


def ents(*terms: int, start: int = 1) -> list[Entry]:
    return [Entry(t, start + k) for k, t in enumerate(terms)]


@pytest.mark.parametrize(
    "kw",
    [
        {"id": 0},
        {"id": 1, "election_tick": 1, "heartbeat_tick": 1},
        {"id": 1, "heartbeat_tick": 0},
        {"id": 1, "max_inflight_msgs": 0},
        {"id": 1, "max_size_per_msg": -1},
        {"id": 1, "lease_duration": -1.0},
        {"id": 1, "applied": -1},
    ],
)
def test_config_validation(kw: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        Config(**kw)  # type: ignore[arg-type]


def test_conf_change_roundtrip_and_local_types() -> None:
    cc = ConfChange(ConfChangeType.ADD_LEARNER, 2**40 + 3, b"ctx")
    assert ConfChange.decode(cc.encode()) == cc
    assert MessageType.HUP.is_local() and MessageType.CHECK_QUORUM.is_local()
    assert not MessageType.APP.is_local() and not MessageType.READ_INDEX.is_local()


def test_memory_storage_append_truncate_compact_snapshot() -> None:
    st = MemoryStorage(ConfState((1,)))
    st.append(ents(1, 1, 2))
    assert (st.first_index(), st.last_index()) == (1, 3)
    st.append([Entry(3, 2)])  # conflicting suffix replaced
    assert [st.term(i) for i in (1, 2)] == [1, 3] and st.last_index() == 2
    with pytest.raises(InvariantViolation):
        st.append([Entry(3, 9)])  # gap
    st.append(ents(3, 3, 3, start=3))
    assert st.entries(2, 6, 1 << 30) == [Entry(3, i) for i in range(2, 6)]
    snap = st.create_snapshot(3, ConfState((1,)), b"state")
    assert (snap.index, snap.term) == (3, 3)
    st.compact(3)
    assert st.first_index() == 4 and st.term(3) == 3
    with pytest.raises(Compacted):
        st.entries(3, 5, 100)
    with pytest.raises(Compacted):
        st.term(2)
    with pytest.raises(Unavailable):
        st.term(9)
    with pytest.raises(Unavailable):
        st.entries(4, 9, 100)
    with pytest.raises(SnapshotOutOfDate):
        st.apply_snapshot(snap)
    st.append(ents(1, 1, 1))  # fully covered by the snapshot: ignored
    assert st.last_index() == 5


def test_limit_size_keeps_at_least_one_entry() -> None:
    big = [Entry(1, i, data=bytes(10)) for i in range(1, 6)]
    assert len(limit_size(big, 0)) == 1
    assert len(limit_size(big, 25)) == 2
    assert len(limit_size(big, 50)) == 5


def make_log(stored: list[Entry], unstable: list[Entry] = ()) -> RaftLog:  # type: ignore[assignment]
    st = MemoryStorage()
    st.append(stored)
    log = RaftLog(st)
    if unstable:
        log.append(unstable)
    return log


def test_log_maybe_append_detects_conflicts() -> None:
    log = make_log(ents(1, 2, 3))
    assert log.maybe_append(3, 2, 0, []) is None  # term mismatch at 3
    assert log.maybe_append(1, 1, 2, [Entry(2, 2), Entry(4, 3), Entry(4, 4)]) == 4
    assert [log.term(i) for i in range(1, 5)] == [1, 2, 4, 4]
    assert log.committed == 2
    with pytest.raises(InvariantViolation):
        log.maybe_append(1, 1, 2, [Entry(9, 2)])  # would rewrite committed 2


def test_log_find_conflict() -> None:
    log = make_log(ents(1, 2, 3))
    assert log.find_conflict(ents(1, 2, 3)) == 0
    assert log.find_conflict(ents(1, 2, 3, 4)) == 4
    assert log.find_conflict([Entry(3, 3), Entry(9, 4)]) == 4
    assert log.find_conflict([Entry(2, 3), Entry(9, 4)]) == 3
    assert log.find_conflict([Entry(5, 2)]) == 2
    assert log.find_conflict([Entry(7, 10)]) == 10


def test_log_is_up_to_date() -> None:
    log = make_log(ents(1, 2, 3))
    assert log.is_up_to_date(3, 3) and log.is_up_to_date(9, 3) and log.is_up_to_date(1, 4)
    assert not log.is_up_to_date(2, 3) and not log.is_up_to_date(99, 2)


def test_log_commit_apply_and_stable_bookkeeping() -> None:
    log = make_log(ents(1, 1), ents(2, 2, start=3))
    assert log.stable_last_index() == 2 and log.last_index() == 4
    log.commit_to(4)
    assert [e.index for e in log.next_committed_entries()] == [1, 2, 3, 4]
    with pytest.raises(InvariantViolation):
        log.commit_to(5)
    log.applied_to(2)
    with pytest.raises(InvariantViolation):
        log.applied_to(1)
    log.stable_to(3, 9)  # wrong term: that entry was replaced, not persisted
    assert log.stable_last_index() == 2
    log.stable_to(3, 2)
    assert log.stable_last_index() == 3 and log.unstable.offset == 4
    assert not log.maybe_commit(4, 3)  # entry 4 is of term 2, not 3


def test_unstable_truncate_below_offset() -> None:
    log = make_log(ents(1, 1, 1), ents(1, 1, start=4))
    log.append([Entry(2, 2)])
    assert log.unstable.offset == 2 and log.last_index() == 2 and log.term(2) == 2


def test_slice_across_storage_and_unstable_respects_size() -> None:
    stored = [Entry(1, i, data=bytes(10)) for i in range(1, 4)]
    log = make_log(stored, [Entry(1, i, data=bytes(10)) for i in range(4, 7)])
    assert [e.index for e in log.slice(2, 7)] == [2, 3, 4, 5, 6]
    assert [e.index for e in log.slice(2, 7, 25)] == [2, 3]
    assert [e.index for e in log.slice(2, 7, 35)] == [2, 3, 4]
    with pytest.raises(Unavailable):
        log.slice(2, 9)


def test_progress_flow_control() -> None:
    pr = Progress(next_index=5, max_inflight=2)
    assert pr.state is ProgressState.PROBE and not pr.is_paused()
    pr.sent_entries(3, 7)
    assert pr.is_paused() and pr.next == 5  # probes do not advance next optimistically
    assert not pr.maybe_decr_to(2, 0)  # stale rejection (not for next-1)
    assert pr.maybe_decr_to(4, 1)
    assert pr.next == 2 and not pr.is_paused()
    assert pr.maybe_update(3)
    pr.become_replicate()
    pr.sent_entries(2, 5)
    pr.sent_entries(1, 6)
    assert pr.next == 7 and pr.is_paused()  # window of 2 full
    pr.inflights.free_le(5)
    assert not pr.is_paused()
    assert not pr.maybe_decr_to(3, 3)  # rejection at or below match is stale
    assert pr.maybe_decr_to(5, 3)
    assert pr.next == 4
    pr.become_snapshot(20)
    assert pr.is_paused()
    pr.become_probe()
    assert pr.next == 21


def test_quorum_arithmetic() -> None:
    assert quorum_value([5, 1, 3]) == 3
    assert quorum_value([5, 1, 3, 4]) == 3
    assert quorum_value([7]) == 7
    tr = ProgressTracker(4)
    tr.reset_membership(ConfState((1, 2, 3, 4, 5), (6,)), 1)
    for nid in (1, 2):
        tr.record_vote(nid, True)
    tr.record_vote(6, True)  # learners do not vote
    assert tr.tally_votes()[2] is VoteResult.PENDING
    tr.record_vote(3, False)
    tr.record_vote(4, False)
    tr.record_vote(5, False)
    assert tr.tally_votes()[2] is VoteResult.LOST
    tr.progress[6].match = 100
    assert tr.committed() == 0
