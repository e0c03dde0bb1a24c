"""RaftLogEngine on real RocksDB: Storage conformance with MemoryStorage, group commit."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rangekv.raft import (
    Compacted,
    ConfState,
    Entry,
    EntryType,
    HardState,
    InvariantViolation,
    MemoryStorage,
    Snapshot,
    SnapshotMetadata,
    SnapshotOutOfDate,
    Unavailable,
)
from rangekv.replication.log_engine import (
    ConcurrentBatchError,
    GroupStorage,
    LogEngineClosedError,
    RaftLogEngine,
    _GroupState,
)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[RaftLogEngine]:
    eng = RaftLogEngine.open(tmp_path / "log", statistics=True)
    yield eng
    eng.close()


def _ents(lo: int, hi: int, term: int, size: int = 3) -> list[Entry]:
    return [Entry(term, i, data=bytes([i % 251]) * size) for i in range(lo, hi)]


def _outcome(f: Callable[..., object], *args: object) -> object:
    """A call's result, or its exception type (for comparing two implementations)."""
    try:
        return f(*args)
    except (Compacted, Unavailable, SnapshotOutOfDate, InvariantViolation) as exc:
        return type(exc)


def assert_same(mem: MemoryStorage, disk: GroupStorage, rng: random.Random) -> None:
    assert disk.first_index() == mem.first_index()
    assert disk.last_index() == mem.last_index()
    assert disk.initial_state() == mem.initial_state()
    assert disk.snapshot().metadata == mem.snapshot().metadata
    first, last = mem.first_index(), mem.last_index()
    for i in range(max(0, first - 3), last + 3):
        assert _outcome(disk.term, i) == _outcome(mem.term, i), i
    for _ in range(6):
        lo = rng.randint(max(0, first - 2), last + 2)
        hi = rng.randint(lo, last + 3)
        max_size = rng.choice([0, 1, 5, 10, 1 << 30])
        got = _outcome(disk.entries, lo, hi, max_size)
        assert got == _outcome(mem.entries, lo, hi, max_size), (lo, hi, max_size)


OPS = ["append", "append", "append", "hs", "compact", "snap", "create", "commit", "reopen"]


def run_sequence(path: Path, ops: list[str], groups: int, rng: random.Random) -> None:
    """Drive MemoryStorage and the engine with the same ops; compare after each commit."""
    eng = RaftLogEngine.open(path)
    mems = {g: MemoryStorage() for g in range(1, groups + 1)}
    batch = eng.new_batch()
    term = 1
    try:
        for op in ops:
            gid = rng.randint(1, groups)
            mem = mems[gid]
            first, last = mem.first_index(), mem.last_index()
            if op == "append":
                term += rng.randint(0, 1)
                # mostly a conflict or a plain append; sometimes stale or leaving a gap
                lo = max(0, last + 1 - rng.choice([0, 0, 1, 2, 3, 5, -1, last + 2]))
                ents = _ents(lo, lo + rng.choice([0, 1, 1, 2, 3, 6]), term, rng.randint(0, 4))
                assert _outcome(batch.append, gid, ents) == _outcome(mem.append, ents)
            elif op == "hs":
                hs = HardState(term, rng.randint(0, 3), rng.randint(0, last))
                batch.set_hard_state(gid, hs)
                mem.set_hard_state(hs)
            elif op == "snap":
                lo = max(0, mem.snapshot().index - 1)
                idx = rng.randint(lo, max(lo, last + 5))
                snap = Snapshot(SnapshotMetadata(idx, term, ConfState((1, 2, 3), (4,))))
                got = _outcome(batch.apply_snapshot, gid, snap)
                assert got == _outcome(mem.apply_snapshot, snap)
            elif op == "create":
                lo = max(0, mem.snapshot().index - 1)
                idx = rng.randint(lo, max(lo, last + 1))
                cs = ConfState((rng.randint(1, 5),))
                got = _outcome(batch.create_snapshot, gid, idx, cs)
                want = _outcome(mem.create_snapshot, idx, cs, b"")
                assert got == (want.metadata if isinstance(want, Snapshot) else want)
            elif op == "compact":
                eng.commit(batch)  # compaction is its own write: flush the batch first
                batch = eng.new_batch()
                idx = rng.randint(max(0, first - 2), last + 1)
                assert _outcome(eng.compact, gid, idx) == _outcome(mem.compact, idx)
            else:
                eng.commit(batch)
                for g, m in mems.items():
                    assert_same(m, eng.storage(g), rng)
                if op == "reopen":  # the disk, not only the cache, must hold the same log
                    eng.close()
                    eng = RaftLogEngine.open(path)
                    for g, m in mems.items():
                        assert_same(m, eng.storage(g), rng)
                batch = eng.new_batch()
        eng.commit(batch)
        eng.close()
        eng = RaftLogEngine.open(path)
        for g, m in mems.items():
            assert_same(m, eng.storage(g), rng)
        assert eng.group_ids() == sorted(
            g
            for g, m in mems.items()
            if m.last_index() or m.hard_state != HardState() or m.snapshot().index
        )
    finally:
        eng.close()


@pytest.mark.parametrize("seed", range(16))
def test_storage_conforms_on_random_sequences(tmp_path: Path, seed: int) -> None:
    """Long uniformly random sequences: these reliably reach deep states."""
    rng = random.Random(seed)
    ops = [rng.choice(OPS) for _ in range(50)]
    run_sequence(tmp_path / "log", ops, 1 + seed % 3, rng)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ops=st.lists(st.sampled_from(OPS), min_size=1, max_size=30),
    groups=st.integers(1, 3),
    rng=st.randoms(use_true_random=False),
)
def test_storage_conforms_to_memory_storage(
    tmp_path_factory: pytest.TempPathFactory, ops: list[str], groups: int, rng: random.Random
) -> None:
    """Hypothesis explores (and shrinks) short edge-case sequences."""
    run_sequence(tmp_path_factory.mktemp("log"), ops, groups, rng)


def test_reopen_returns_same_state(tmp_path: Path) -> None:
    eng = RaftLogEngine.open(tmp_path / "log")
    b = eng.new_batch()
    ents = [
        Entry(1, 1, EntryType.NORMAL, b""),
        Entry(1, 2, EntryType.CONF_CHANGE, b"\x00\x01cc"),
        Entry(2, 3, EntryType.NORMAL, b"\xff" * 1000),
    ]
    b.append(7, ents)
    b.set_hard_state(7, HardState(2, 3, 2))
    eng.commit(b)
    eng.close()
    eng = RaftLogEngine.open(tmp_path / "log")
    s = eng.storage(7)
    assert s.initial_state() == (HardState(2, 3, 2), ConfState())
    assert s.entries(1, 4, 1 << 30) == ents
    assert (s.first_index(), s.last_index(), s.term(3)) == (1, 3, 2)
    assert eng.group_ids() == [7]
    eng.close()
    with pytest.raises(LogEngineClosedError):
        s.entries(1, 2, 10)


def test_one_commit_for_50_groups_is_one_synced_write(engine: RaftLogEngine) -> None:
    before = engine.rocksdb_wal_syncs()
    b = engine.new_batch()
    for g in range(1, 51):
        b.append(g, _ents(1, 4, 1))
        b.set_hard_state(g, HardState(1, g, 3))
    assert b.group_count == 50
    engine.commit(b)
    assert engine.synced_writes == 1
    assert engine.entries_written == 150
    # RocksDB's own statistics agree: one WAL fsync for the whole batch
    assert engine.rocksdb_wal_syncs() - before == 1
    for g in range(1, 51):
        assert engine.storage(g).last_index() == 3
        assert engine.storage(g).hard_state == HardState(1, g, 3)


def test_empty_batch_costs_nothing(engine: RaftLogEngine) -> None:
    engine.commit(engine.new_batch())
    assert engine.synced_writes == 0


def test_conflicting_suffix_is_truncated_on_disk(tmp_path: Path) -> None:
    eng = RaftLogEngine.open(tmp_path / "log")
    b = eng.new_batch()
    b.append(1, _ents(1, 11, 1))
    eng.commit(b)
    b = eng.new_batch()
    b.append(1, _ents(5, 7, 2))  # replaces 5..10 by 5..6 of term 2
    eng.commit(b)
    eng.close()
    eng = RaftLogEngine.open(tmp_path / "log")
    s = eng.storage(1)
    assert s.last_index() == 6
    assert [e.term for e in s.entries(1, 7, 1 << 30)] == [1, 1, 1, 1, 2, 2]
    with pytest.raises(Unavailable):
        s.entries(1, 8, 1 << 30)
    eng.close()


def test_compact_then_reopen(tmp_path: Path) -> None:
    eng = RaftLogEngine.open(tmp_path / "log")
    b = eng.new_batch()
    b.append(3, _ents(1, 21, 4))
    eng.commit(b)
    eng.compact(3, 15)
    eng.close()
    eng = RaftLogEngine.open(tmp_path / "log")
    s = eng.storage(3)
    assert (s.first_index(), s.last_index(), s.term(15)) == (16, 20, 4)
    with pytest.raises(Compacted):
        s.term(14)
    with pytest.raises(Compacted):
        s.entries(15, 17, 100)
    eng.close()


def test_batches_built_concurrently_on_one_group_conflict(engine: RaftLogEngine) -> None:
    b1 = engine.new_batch()
    b2 = engine.new_batch()
    b1.append(1, _ents(1, 3, 1))
    b2.append(1, _ents(1, 5, 1))
    engine.commit(b1)
    with pytest.raises(ConcurrentBatchError):
        engine.commit(b2)
    assert engine.storage(1).last_index() == 2


def test_destroy_removes_only_that_group(tmp_path: Path) -> None:
    eng = RaftLogEngine.open(tmp_path / "log")
    b = eng.new_batch()
    for g in (1, 2, 3):
        b.append(g, _ents(1, 5, 1))
        b.set_hard_state(g, HardState(1, 1, 4))
    eng.commit(b)
    eng.destroy(2)
    assert eng.storage(2).last_index() == 0
    assert eng.storage(2).initial_state() == (HardState(), ConfState())
    eng.close()
    eng = RaftLogEngine.open(tmp_path / "log")
    assert eng.group_ids() == [1, 3]
    assert eng.storage(2).last_index() == 0
    assert eng.storage(3).entries(1, 5, 1 << 30) == _ents(1, 5, 1)
    eng.close()


def test_committed_batch_cannot_be_reused(engine: RaftLogEngine) -> None:
    b = engine.new_batch()
    b.append(1, _ents(1, 2, 1))
    engine.commit(b)
    with pytest.raises(RuntimeError):
        b.append(1, _ents(2, 3, 1))


def test_compaction_while_a_batch_is_pending_is_kept(tmp_path: Path) -> None:
    """The scheduler may commit a batch built before a truncation ran."""
    eng = RaftLogEngine.open(tmp_path / "log")
    b = eng.new_batch()
    b.append(1, _ents(1, 11, 1))
    eng.commit(b)
    pending = eng.new_batch()
    pending.append(1, _ents(11, 13, 1))
    pending.set_hard_state(1, HardState(1, 1, 12))
    eng.compact(1, 5)
    eng.commit(pending)
    s = eng.storage(1)
    assert (s.first_index(), s.last_index(), s.hard_state.commit) == (6, 12, 12)
    eng.close()
    eng = RaftLogEngine.open(tmp_path / "log")
    s = eng.storage(1)
    assert (s.first_index(), s.last_index()) == (6, 12)
    assert s.entries(6, 13, 1 << 30) == _ents(6, 13, 1)
    eng.close()


def test_pending_snapshot_older_than_a_concurrent_compaction_is_refused(
    engine: RaftLogEngine,
) -> None:
    b = engine.new_batch()
    b.append(1, _ents(1, 11, 1))
    engine.commit(b)
    pending = engine.new_batch()
    pending.apply_snapshot(1, Snapshot(SnapshotMetadata(3, 1, ConfState((1,)))))
    engine.compact(1, 8)
    with pytest.raises(ConcurrentBatchError):
        engine.commit(pending)
    assert engine.storage(1).first_index() == 9


def test_create_snapshot_commit_does_not_conflict_with_a_pending_append(
    engine: RaftLogEngine,
) -> None:
    """Truncation (create_snapshot) may commit while the scheduler's batch is in flight."""
    b = engine.new_batch()
    b.append(1, _ents(1, 11, 1))
    engine.commit(b)
    pending = engine.new_batch()
    pending.append(1, _ents(11, 12, 2))
    pending.set_hard_state(1, HardState(2, 1, 11))
    snap_batch = engine.new_batch()
    meta = snap_batch.create_snapshot(1, 8, ConfState((1, 2, 3)))
    engine.commit(snap_batch)
    engine.compact(1, 8)
    engine.commit(pending)
    s = engine.storage(1)
    assert s.snapshot().metadata == meta == SnapshotMetadata(8, 1, ConfState((1, 2, 3)))
    assert (s.first_index(), s.last_index(), s.term(11), s.hard_state.commit) == (9, 11, 2, 11)


def test_restart_after_truncation_above_a_stale_commit_index(tmp_path: Path) -> None:
    """Found by the 30-minute chaos soak: a commit-only hard state is written without
    fsync (or, before the fix, not at all) while log truncation writes its snapshot
    record synced, so the stored commit index can lie below the snapshot. A node
    restarted from that state died in the core ("applied 44 outside [..., committed
    42]") on every start. A snapshot covers only committed entries: the storage
    reports its index as the commit floor, and a RawNode starts over it."""
    from rangekv.raft import Config, RawNode

    eng = RaftLogEngine.open(tmp_path / "log")
    b = eng.new_batch()
    b.append(5, _ents(1, 45, 2))
    b.set_hard_state(5, HardState(2, 1, 42))
    eng.commit(b)
    b = eng.new_batch()
    b.create_snapshot(5, 44, ConfState(voters=(1, 2, 3)))
    eng.commit(b)
    eng.close()

    eng = RaftLogEngine.open(tmp_path / "log")
    storage = eng.storage(5)
    hs, _ = storage.initial_state()
    assert hs == HardState(2, 1, 44)
    node = RawNode(Config(id=1, election_tick=10, heartbeat_tick=1, applied=44), storage)
    assert node.raft.log.committed == 44
    eng.close()


def test_group_state_after_round_carries_every_other_field() -> None:
    # after_round names every field (it is faster than dataclasses.replace): a
    # field added later and left out would silently reset.
    base = _GroupState(
        hard_state=HardState(3, 2, 1),
        snapshot=SnapshotMetadata(4, 2, ConfState((1, 2))),
        truncated_index=4,
        truncated_term=2,
        last_index=9,
        last_term=3,
        log_version=5,
        hs_version=6,
        snap_version=7,
    )
    hs = HardState(4, 1, 8)
    got = base.after_round(hs, 10, 4, 11, 12)
    changed = {
        "hard_state": hs,
        "last_index": 10,
        "last_term": 4,
        "log_version": 11,
        "hs_version": 12,
    }
    for f in fields(_GroupState):
        assert getattr(got, f.name) == changed.get(f.name, getattr(base, f.name)), f.name
