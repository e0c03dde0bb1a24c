"""MVCC on a real state engine, checked against an in-memory model."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rangekv.common.hlc import Timestamp
from rangekv.domain.keys import KeyDecodeError, decode_user_key, encode_user_key
from rangekv.raftnode import mvcc
from rangekv.raftnode.keys import (
    data_span,
    decode_version_key,
    txn_record_key,
    txn_record_span,
    version_key,
)
from rangekv.replication.state_engine import AppliedState, StateEngine
from rangekv.replication.sync_mode import FsmSyncMode

# Keys drawn from the bytes that break naive encodings.
tricky_keys = st.lists(st.sampled_from([0x00, 0x01, 0x02, 0x7F, 0xFE, 0xFF]), max_size=4).map(bytes)
any_keys = st.one_of(tricky_keys, st.binary(max_size=8))
timestamps = st.builds(Timestamp, st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 32) - 1))
small_ts = st.builds(Timestamp, st.integers(0, 12), st.integers(0, 2))

FUNC = [HealthCheck.function_scoped_fixture]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[StateEngine]:
    eng = StateEngine.open(tmp_path / "state", FsmSyncMode.NOSYNC)
    yield eng
    eng.close()


# -- key encoding ------------------------------------------------------------------


@given(any_keys, any_keys)
def test_encoding_preserves_order(a: bytes, b: bytes) -> None:
    assert (a < b) == (encode_user_key(a) < encode_user_key(b))
    assert (a == b) == (encode_user_key(a) == encode_user_key(b))


@given(any_keys, timestamps)
def test_version_key_roundtrip(k: bytes, ts: Timestamp) -> None:
    assert decode_version_key(version_key(k, ts)) == (k, ts)
    assert decode_user_key(encode_user_key(k)) == (k, len(encode_user_key(k)))


@given(any_keys, any_keys, timestamps, timestamps)
def test_versions_never_interleave_and_sort_newest_first(
    a: bytes, b: bytes, t1: Timestamp, t2: Timestamp
) -> None:
    if a < b:
        # every version of a sorts before every version of b
        assert version_key(a, t1) < version_key(b, t2)
        assert version_key(a, Timestamp.MIN) < version_key(b, Timestamp.MAX)
    if a == b and t1 != t2:
        assert (t1 < t2) == (version_key(a, t1) > version_key(a, t2))


@given(any_keys, any_keys, any_keys, timestamps)
def test_data_span_contains_exactly_the_keys_in_range(
    start: bytes, end: bytes, k: bytes, ts: Timestamp
) -> None:
    lo, hi = data_span(start, end)
    inside = start <= k and (not end or k < end)
    assert (lo <= version_key(k, ts) < hi) == inside


@given(any_keys, any_keys, any_keys)
def test_txn_records_of_a_range_form_one_span(start: bytes, end: bytes, anchor: bytes) -> None:
    lo, hi = txn_record_span(start, end)
    inside = start <= anchor and (not end or anchor < end)
    for txn_id in (b"\x00" * 16, b"\xff" * 16):
        assert (lo <= txn_record_key(anchor, txn_id) < hi) == inside


def test_decode_rejects_malformed_keys() -> None:
    with pytest.raises(KeyDecodeError):
        decode_user_key(b"abc")
    with pytest.raises(KeyDecodeError):
        decode_user_key(b"a\x00\x05\x00\x01")
    with pytest.raises(KeyDecodeError):
        decode_version_key(b"\x03a\x00\x01short")
    with pytest.raises(KeyDecodeError):
        decode_version_key(b"\x02a\x00\x01" + b"\x00" * 12)
    with pytest.raises(ValueError):
        txn_record_key(b"a", b"short")


# -- the model ----------------------------------------------------------------------


class Model:
    """Versions per key: (key, ts) -> value or None (tombstone)."""

    def __init__(self) -> None:
        self.versions: dict[tuple[bytes, Timestamp], bytes | None] = {}

    def write(self, key: bytes, ts: Timestamp, value: bytes | None) -> None:
        self.versions[(key, ts)] = value

    def get(self, key: bytes, read_ts: Timestamp) -> tuple[bytes | None, Timestamp | None]:
        best = max((t for (k, t) in self.versions if k == key and t <= read_ts), default=None)
        return (None, None) if best is None else (self.versions[(key, best)], best)

    def user_keys(self) -> set[bytes]:
        return {k for k, _ in self.versions}

    def scan(
        self, start: bytes, end: bytes, read_ts: Timestamp, limit: int
    ) -> list[tuple[bytes, bytes]]:
        out = []
        for k in sorted(self.user_keys()):
            if k < start or (end and k >= end):
                continue
            v, _ = self.get(k, read_ts)
            if v is not None:
                out.append((k, v))
        return out[:limit]


write_ops = st.lists(
    st.tuples(tricky_keys, small_ts, st.one_of(st.none(), st.binary(max_size=3))),
    min_size=1,
    max_size=40,
)


def _apply(
    eng: StateEngine, model: Model, ops: list[tuple[bytes, Timestamp, bytes | None]], batches: int
) -> None:
    """Apply ops in `batches` batches, checking read-your-writes inside each batch."""
    size = max(1, len(ops) // batches)
    for n, i in enumerate(range(0, len(ops), size)):
        batch = eng.new_batch()
        for key, ts, value in ops[i : i + size]:
            if value is None:
                mvcc.delete(batch, key, ts)
            else:
                mvcc.put(batch, key, value, ts)
            model.write(key, ts, value)
            assert mvcc.get(batch.reader(), key, ts) == (value, ts)
        batch.set_applied_state(1, AppliedState(n + 1, 1))
        eng.commit(batch)


@settings(max_examples=60, deadline=None, suppress_health_check=FUNC)
@given(
    ops=write_ops,
    batches=st.integers(1, 4),
    reads=st.lists(st.tuples(tricky_keys, small_ts), max_size=20),
)
def test_reads_at_any_timestamp_match_model(
    tmp_path_factory: pytest.TempPathFactory,
    ops: list[tuple[bytes, Timestamp, bytes | None]],
    batches: int,
    reads: list[tuple[bytes, Timestamp]],
) -> None:
    eng = StateEngine.open(tmp_path_factory.mktemp("m"), FsmSyncMode.NOSYNC)
    try:
        model = Model()
        _apply(eng, model, ops, batches)
        probes = (
            reads + [(k, t) for k, t, _ in ops] + [(k, Timestamp.MAX) for k in model.user_keys()]
        )
        for key, ts in probes:
            assert mvcc.get(eng, key, ts) == model.get(key, ts)
        for key in model.user_keys():
            assert mvcc.latest_commit_ts(eng, key) == max(
                t for (k, t) in model.versions if k == key
            )
        with eng.snapshot() as snap:
            for key, ts in probes:
                assert mvcc.get(snap, key, ts) == model.get(key, ts)
    finally:
        eng.close()


@settings(max_examples=60, deadline=None, suppress_health_check=FUNC)
@given(
    ops=write_ops,
    scans=st.lists(
        st.tuples(tricky_keys, tricky_keys, small_ts, st.integers(1, 6)), min_size=1, max_size=8
    ),
)
def test_scan_matches_model(
    tmp_path_factory: pytest.TempPathFactory,
    ops: list[tuple[bytes, Timestamp, bytes | None]],
    scans: list[tuple[bytes, bytes, Timestamp, int]],
) -> None:
    eng = StateEngine.open(tmp_path_factory.mktemp("m"), FsmSyncMode.NOSYNC)
    try:
        model = Model()
        _apply(eng, model, ops, 2)
        for start, end, ts, limit in [*scans, (b"", b"", Timestamp.MAX, 1000)]:
            assert mvcc.scan(eng, start, end, ts, limit) == model.scan(start, end, ts, limit)
    finally:
        eng.close()


@settings(max_examples=60, deadline=None, suppress_health_check=FUNC)
@given(ops=write_ops, before=small_ts)
def test_gc_preserves_every_read_at_or_above_threshold(
    tmp_path_factory: pytest.TempPathFactory,
    ops: list[tuple[bytes, Timestamp, bytes | None]],
    before: Timestamp,
) -> None:
    eng = StateEngine.open(tmp_path_factory.mktemp("m"), FsmSyncMode.NOSYNC)
    try:
        model = Model()
        _apply(eng, model, ops, 1)
        batch = eng.new_batch()
        stats = mvcc.gc(eng, batch, before)
        eng.commit(batch)
        assert stats.keys_examined == len(model.user_keys())
        # what must remain: versions above the threshold, plus the newest at or
        # below it when that one is a live value
        keep: set[tuple[bytes, Timestamp]] = set()
        for key in model.user_keys():
            mine = sorted((t for (k, t) in model.versions if k == key), reverse=True)
            keep |= {(key, t) for t in mine if t > before}
            at = next((t for t in mine if t <= before), None)
            if at is not None and model.versions[(key, at)] is not None:
                keep.add((key, at))
        stored = {(k, t) for k, t in (_decode(s) for s, _ in eng.iterate(b"\x03", b"\x04"))}
        assert stored == keep
        assert stats.versions_removed == len(model.versions) - len(keep)
        probe_ts = sorted({before, Timestamp.MAX, *(t for _, t, _ in ops if t >= before)})
        for key in model.user_keys():
            for ts in probe_ts:
                got_value, _ = mvcc.get(eng, key, ts)
                assert got_value == model.get(key, ts)[0]
    finally:
        eng.close()


def _decode(stored: bytes) -> tuple[bytes, Timestamp]:
    return decode_version_key(stored)


# -- smaller behaviours ---------------------------------------------------------------


def test_delete_is_a_tombstone_visible_only_from_its_timestamp(engine: StateEngine) -> None:
    b = engine.new_batch()
    mvcc.put(b, b"k", b"v1", Timestamp(10))
    mvcc.delete(b, b"k", Timestamp(20))
    mvcc.put(b, b"k", b"v3", Timestamp(30))
    engine.commit(b)
    assert mvcc.get(engine, b"k", Timestamp(5)) == (None, None)
    assert mvcc.get(engine, b"k", Timestamp(15)) == (b"v1", Timestamp(10))
    assert mvcc.get(engine, b"k", Timestamp(25)) == (None, Timestamp(20))
    assert mvcc.get(engine, b"k", Timestamp(30)) == (b"v3", Timestamp(30))
    assert mvcc.scan(engine, b"", b"", Timestamp(25), 10) == []
    assert mvcc.latest_commit_ts(engine, b"k") == Timestamp(30)
    assert mvcc.latest_commit_ts(engine, b"other") is None


def test_evaluate_cas(engine: StateEngine) -> None:
    b = engine.new_batch()
    assert mvcc.evaluate_cas(b.reader(), b"k", None, Timestamp(1)).succeeded
    mvcc.put(b, b"k", b"v", Timestamp(10))
    engine.commit(b)
    r = mvcc.evaluate_cas(engine, b"k", b"v", Timestamp(10))
    assert (r.succeeded, r.actual, r.actual_ts) == (True, b"v", Timestamp(10))
    r = mvcc.evaluate_cas(engine, b"k", None, Timestamp(10))
    assert (r.succeeded, r.actual) == (False, b"v")
    assert mvcc.evaluate_cas(engine, b"k", None, Timestamp(9)).succeeded
    b = engine.new_batch()
    mvcc.delete(b, b"k", Timestamp(20))
    engine.commit(b)
    assert mvcc.evaluate_cas(engine, b"k", None, Timestamp(20)).succeeded


def test_cas_sees_earlier_write_in_the_same_batch(engine: StateEngine) -> None:
    b = engine.new_batch()
    mvcc.put(b, b"k", b"first", Timestamp(5))
    r = mvcc.evaluate_cas(b.reader(), b"k", b"first", Timestamp(6))
    assert r.succeeded


def test_replaying_a_batch_is_idempotent(engine: StateEngine) -> None:
    def apply_entries() -> None:
        b = engine.new_batch()
        for i in range(20):
            mvcc.put(b, b"k%d" % (i % 7), b"v%d" % i, Timestamp(100 + i))
            if i % 5 == 4:
                mvcc.delete(b, b"k%d" % (i % 3), Timestamp(100 + i))
        b.set_applied_state(9, AppliedState(20, 2))
        engine.commit(b)

    apply_entries()
    first = list(engine.iterate(b"", None))
    apply_entries()
    assert list(engine.iterate(b"", None)) == first


def test_scan_limit_and_unbounded_end_with_many_versions(engine: StateEngine) -> None:
    rng = random.Random(7)
    b = engine.new_batch()
    for i in range(50):
        for v in range(rng.randint(1, 5)):
            mvcc.put(b, b"key%02d" % i, b"%d" % v, Timestamp(10 + v))
    engine.commit(b)
    rows = mvcc.scan(engine, b"key10", b"", Timestamp(10), 5)
    assert [k for k, _ in rows] == [b"key%02d" % i for i in range(10, 15)]
    assert all(v == b"0" for _, v in rows)
    with pytest.raises(ValueError):
        mvcc.scan(engine, b"", b"", Timestamp(1), 0)


def test_gc_threshold_from_config() -> None:
    cfg = mvcc.MvccConfig(gc_ttl_ns=1_000)
    assert mvcc.gc_threshold(Timestamp(5_000, 3), cfg) == Timestamp(4_000, 0)
    assert mvcc.gc_threshold(Timestamp(500, 0), cfg) == Timestamp(0, 0)
    with pytest.raises(ValueError):
        mvcc.MvccConfig(gc_ttl_ns=-1)


def test_corrupt_value_is_reported(engine: StateEngine) -> None:
    b = engine.new_batch()
    b.put(version_key(b"k", Timestamp(1)), b"\x07junk")
    engine.commit(b)
    with pytest.raises(mvcc.VersionValueError):
        mvcc.get(engine, b"k", Timestamp(1))
