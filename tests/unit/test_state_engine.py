"""StateEngine on real RocksDB: batches, sync modes, batch read views, snapshots."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rangekv.replication.state_engine import (
    APPLIED_STATE,
    DESCRIPTOR,
    LEASE,
    AppliedState,
    BatchAlreadyCommittedError,
    CorruptValueError,
    StateEngine,
    StateEngineClosedError,
    prefix_end,
    range_local_key,
    range_local_span,
)
from rangekv.replication.sync_mode import FsmSyncMode


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[StateEngine]:
    eng = StateEngine.open(tmp_path / "state", FsmSyncMode.SYNC)
    yield eng
    eng.close()


def _commit(eng: StateEngine, items: dict[bytes, bytes]) -> None:
    batch = eng.new_batch()
    for k, v in items.items():
        batch.put(k, v)
    eng.commit(batch)


@pytest.mark.parametrize("mode", list(FsmSyncMode))
def test_commit_and_reopen_in_both_modes(tmp_path: Path, mode: FsmSyncMode) -> None:
    eng = StateEngine.open(tmp_path / "s", mode)
    batch = eng.new_batch()
    batch.put(b"\x03k", b"v")
    batch.set_applied_state(7, AppliedState(index=42, term=3))
    eng.commit(batch)
    assert eng.commits == 1
    assert eng.synced_commits == (1 if mode is FsmSyncMode.SYNC else 0)
    eng.close()
    eng = StateEngine.open(tmp_path / "s", mode)
    assert eng.get(b"\x03k") == b"v"
    assert eng.applied_state(7) == AppliedState(42, 3)
    assert eng.applied_state(8) is None
    eng.close()


def test_force_sync_and_explicit_sync_in_nosync_mode(tmp_path: Path) -> None:
    eng = StateEngine.open(tmp_path / "s", FsmSyncMode.NOSYNC)
    b1 = eng.new_batch()
    b1.put(b"a", b"1")
    eng.commit(b1)
    b2 = eng.new_batch()
    b2.put(b"b", b"2")
    eng.commit(b2, force_sync=True)
    eng.sync()
    assert (eng.commits, eng.synced_commits, eng.wal_syncs) == (2, 1, 1)
    eng.close()


def test_batch_cannot_be_reused_or_crossed(tmp_path: Path, engine: StateEngine) -> None:
    batch = engine.new_batch()
    batch.put(b"a", b"1")
    engine.commit(batch)
    with pytest.raises(BatchAlreadyCommittedError):
        batch.put(b"b", b"2")
    with pytest.raises(BatchAlreadyCommittedError):
        engine.commit(batch)
    other = StateEngine.open(tmp_path / "other", FsmSyncMode.SYNC)
    try:
        with pytest.raises(ValueError):
            engine.commit(other.new_batch())
    finally:
        other.close()


def test_closed_engine_raises(tmp_path: Path) -> None:
    eng = StateEngine.open(tmp_path / "s", FsmSyncMode.SYNC)
    eng.close()
    with pytest.raises(StateEngineClosedError):
        eng.get(b"a")
    eng.close()  # idempotent


def test_range_local_keys_are_per_range_and_span_covers_them() -> None:
    start, end = range_local_span(5)
    for kind in (APPLIED_STATE, DESCRIPTOR, LEASE):
        assert start <= range_local_key(5, kind) < end
        assert not start <= range_local_key(6, kind) < end
        assert not start <= range_local_key(4, kind) < end
    assert prefix_end(b"a\xff\xff") == b"b"
    assert prefix_end(b"\xff") is None


def test_applied_state_decode_rejects_garbage() -> None:
    with pytest.raises(CorruptValueError):
        AppliedState.decode(b"\x02" + b"\x00" * 16)


def test_clear_range_local_leaves_other_ranges(engine: StateEngine) -> None:
    batch = engine.new_batch()
    for rid in (1, 2, 3):
        batch.set_applied_state(rid, AppliedState(rid, 1))
        batch.put_local(rid, DESCRIPTOR, b"desc%d" % rid)
    engine.commit(batch)
    batch = engine.new_batch()
    batch.clear_range_local(2)
    engine.commit(batch)
    assert engine.applied_state(2) is None
    assert engine.get_local(2, DESCRIPTOR) is None
    assert engine.get_local(1, DESCRIPTOR) == b"desc1"
    assert engine.applied_state(3) == AppliedState(3, 1)


# -- batch read view: a model test ---------------------------------------------------

small_keys = st.binary(min_size=0, max_size=3)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), small_keys, st.binary(max_size=4)),
        st.tuples(st.just("del"), small_keys, st.just(b"")),
        st.tuples(st.just("range"), small_keys, small_keys),
    ),
    max_size=25,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    base=st.dictionaries(small_keys, st.binary(max_size=4), max_size=12),
    ops=ops,
    bounds=st.tuples(small_keys, st.one_of(st.none(), small_keys)),
)
def test_batch_reader_matches_model_and_commit_matches_reader(
    tmp_path_factory: pytest.TempPathFactory,
    base: dict[bytes, bytes],
    ops: list[tuple[str, bytes, bytes]],
    bounds: tuple[bytes, bytes | None],
) -> None:
    eng = StateEngine.open(tmp_path_factory.mktemp("s"), FsmSyncMode.NOSYNC)
    try:
        _commit(eng, base)
        model = dict(base)
        batch = eng.new_batch()
        for op, a, b in ops:
            if op == "put":
                batch.put(a, b)
                model[a] = b
            elif op == "del":
                batch.delete(a)
                model.pop(a, None)
            else:
                batch.delete_range(a, b)
                for k in [k for k in model if a <= k < b]:
                    del model[k]
        reader = batch.reader()
        start, end = bounds
        expect = sorted((k, v) for k, v in model.items() if k >= start and (end is None or k < end))
        assert list(reader.iterate(start, end)) == expect
        for k in {*base, *model, *(a for _, a, _ in ops)}:
            assert reader.get(k) == model.get(k)
        # the engine itself is untouched until commit, then equals the view
        assert dict(eng.iterate(b"", None)) == base
        eng.commit(batch)
        assert dict(eng.iterate(b"", None)) == model
    finally:
        eng.close()


# -- snapshots -----------------------------------------------------------------------


def test_snapshot_is_point_in_time_for_gets_and_iteration(engine: StateEngine) -> None:
    _commit(engine, {b"a": b"1", b"b": b"2", b"c": b"3", b"d": b"4"})
    batch = engine.new_batch()
    batch.set_applied_state(1, AppliedState(10, 2))
    engine.commit(batch)
    with engine.snapshot() as snap:
        later = engine.new_batch()
        later.put(b"a", b"changed")
        later.put(b"bb", b"new")
        later.delete(b"d")
        later.delete_range(b"b", b"c")
        later.set_applied_state(1, AppliedState(11, 2))
        engine.commit(later)
        engine.sync()
        assert snap.get(b"a") == b"1"
        assert snap.get(b"bb") is None
        assert engine.applied_state(1, snap) == AppliedState(10, 2)
        assert engine.applied_state(1) == AppliedState(11, 2)
        assert list(snap.iterate(b"a", b"e")) == [
            (b"a", b"1"),
            (b"b", b"2"),
            (b"c", b"3"),
            (b"d", b"4"),
        ]
        assert list(engine.iterate(b"a", b"e")) == [
            (b"a", b"changed"),
            (b"c", b"3"),
        ]  # the range delete came after the put of b"bb" in the same batch


def test_snapshot_interleaved_iterations_and_gets(engine: StateEngine) -> None:
    _commit(engine, {bytes([i]): bytes([i]) * 2 for i in range(20, 40)})
    with engine.snapshot() as snap:
        it1 = snap.iterate(bytes([20]), bytes([30]))
        it2 = snap.iterate(bytes([25]), None)
        out1: list[bytes] = []
        out2: list[bytes] = []
        for _ in range(5):
            out1.append(next(it1)[0])
            out2.append(next(it2)[0])
            assert snap.get(bytes([39])) == bytes([39]) * 2
        out1 += [k for k, _ in it1]
        out2 += [k for k, _ in it2]
        assert out1 == [bytes([i]) for i in range(20, 30)]
        assert out2 == [bytes([i]) for i in range(25, 40)]


def test_snapshot_streams_in_chunks_that_reassemble_the_span(engine: StateEngine) -> None:
    data = {b"k%03d" % i: b"v" * (i % 7) for i in range(200)}
    _commit(engine, data)
    with engine.snapshot() as snap:
        _commit(engine, {b"k050": b"late", b"k0505": b"late"})
        got: list[tuple[bytes, bytes]] = []
        start: bytes | None = b"k"
        chunks = 0
        while start is not None:
            chunk = snap.scan_chunk(start, b"l", max_bytes=100)
            assert chunk.items
            assert chunk.size_bytes <= 100 or len(chunk.items) == 1
            got.extend(chunk.items)
            start = chunk.resume_key
            chunks += 1
        assert got == sorted(data.items())
        assert chunks > 5
    with pytest.raises(StateEngineClosedError):
        snap.get(b"k001")


def test_scan_chunk_rejects_nonpositive_limits(engine: StateEngine) -> None:
    with engine.snapshot() as snap, pytest.raises(ValueError):
        snap.scan_chunk(b"", None, max_bytes=0)
