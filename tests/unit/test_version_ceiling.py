"""The version ceiling lets a put skip reading its key's newest version, and changes nothing else.

A range's ceiling (`rangekv.raftnode.range_state`) is a timestamp at or above
every MVCC version it holds; a put versioned above it cannot meet a newer
version, so apply skips the read. These tests run the real state machine over
RocksDB:

* the differential test applies one seeded stream of commands (puts, deletes,
  compare-and-swaps, timestamps that sometimes go backwards, restarts of the
  state machine over the same engine) to a range that has a ceiling and to one
  that has none (so it reads for every put) and requires the same answers and
  the same MVCC data. A ceiling that is not a true bound (not raised, not
  reloaded after a restart) lets a put land below a newer version: the answers
  differ;
* a put above the ceiling reads nothing, one at or below it reads, also at
  exactly a version a delete or a compare-and-swap was moved up to;
* a stored ceiling counts only while current at the applied index: one that a
  build without ceilings left behind is unknown, not stale;
* a snapshot's ceiling replaces the replica's, and a split's right-hand side
  gets the ceiling as of the split, writes earlier in the same batch included.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from rangekv.common.descriptors import RangeDescriptor, ReplicaDescriptor
from rangekv.common.hlc import Timestamp
from rangekv.raftnode import range_state
from rangekv.raftnode.range_state import RangeStateMachine, encode_ceiling, ts_to_proto
from rangekv.replication.state_engine import (
    APPLIED_STATE,
    DATA_PREFIX,
    VERSION_CEILING,
    AppliedState,
    StateEngine,
    range_local_key,
)
from rangekv.replication.sync_mode import FsmSyncMode
from rangekv.v1 import raftcmd_pb2, replica_pb2

DESC = RangeDescriptor(1, b"", b"", (ReplicaDescriptor(1, 1),), generation=1)
KEYS = [b"a", b"b", b"c"]


class _NoEvents:
    def split_applied(self, left: object, right: object, batch: object) -> None:
        raise AssertionError("no split in these tests")

    def replica_change_applied(self, new: object, txn_id: bytes) -> None:
        raise AssertionError("no replica change in these tests")


class Range:
    """One range's state machine over its own RocksDB, restartable."""

    def __init__(self, path: Path, *, ceiling: bool) -> None:
        self.engine = StateEngine.open(path, FsmSyncMode.NOSYNC)
        self.index = 10
        batch = self.engine.new_batch()
        batch.set_applied_state(DESC.range_id, AppliedState(self.index, 1))
        if ceiling:  # as a bootstrapped range starts (rangekv.raftnode.store)
            batch.put_local(DESC.range_id, VERSION_CEILING, encode_ceiling(self.index))
        self.engine.commit(batch)
        self.sm = self._open()

    def _open(self) -> RangeStateMachine:
        return RangeStateMachine(DESC, self.engine, _NoEvents(), lambda ts: None)

    def restart(self) -> None:
        self.sm = self._open()

    def apply(self, base: Timestamp, ops: list[replica_pb2.ReplicaOp]) -> list[str]:
        cmd = raftcmd_pb2.RaftCommand(timestamp=ts_to_proto(base), writes=ops)
        batch = self.engine.new_batch()
        self.index += 1
        results = self.sm.apply_command(self.index, cmd.SerializeToString(), batch)
        self.sm.record_applied(self.index, 1, batch)
        self.engine.commit(batch)
        assert isinstance(results, list)
        return [str(r) for r in results]

    def data(self) -> list[tuple[bytes, bytes]]:
        return list(self.engine.iterate(DATA_PREFIX, bytes([DATA_PREFIX[0] + 1])))

    def close(self) -> None:
        self.engine.close()


@pytest.fixture
def ranges(tmp_path: Path) -> Iterator[tuple[Range, Range]]:
    with_ceiling = Range(tmp_path / "with", ceiling=True)
    without = Range(tmp_path / "without", ceiling=False)
    yield with_ceiling, without
    with_ceiling.close()
    without.close()


def put(key: bytes, value: bytes) -> replica_pb2.ReplicaOp:
    return replica_pb2.ReplicaOp(put=replica_pb2.PutOp(key=key, value=value))


def random_op(rng: random.Random, n: int) -> replica_pb2.ReplicaOp:
    key = rng.choice(KEYS)
    kind = rng.random()
    if kind < 0.6:
        return put(key, b"v%d" % n)
    if kind < 0.8:
        return replica_pb2.ReplicaOp(delete=replica_pb2.DeleteOp(key=key))
    return replica_pb2.ReplicaOp(
        compare_and_swap=replica_pb2.CompareAndSwapOp(
            key=key,
            expect_absent=rng.random() < 0.3,
            expected_value=b"v%d" % rng.randrange(max(1, n)),
            new_value=b"c%d" % n,
        )
    )


@pytest.mark.parametrize("seed", range(20))
def test_a_ceiling_changes_no_answer_and_no_version(ranges: tuple[Range, Range], seed: int) -> None:
    with_ceiling, without = ranges
    rng = random.Random(seed)
    wall = 1_000
    for n in range(300):
        # Mostly forward, sometimes backwards (a command proposed below a version
        # that applied first): the case the read exists for. Steps this small make
        # commands land on (or just above) existing versions' exact timestamps.
        wall = max(1, wall + rng.choice([1, 0, 1, -1, 2, -3]))
        ops = [random_op(rng, n) for _ in range(rng.randint(1, 4))]
        base = Timestamp(wall, rng.randrange(3))
        got, want = with_ceiling.apply(base, ops), without.apply(base, ops)
        assert got == want, f"seed {seed}, command {n} at {base}"
        if rng.random() < 0.05:
            with_ceiling.restart()
            without.restart()
    assert with_ceiling.data() == without.data()
    assert with_ceiling.sm.version_ceiling is not None
    assert without.sm.version_ceiling is None  # none written: it stays unknown


def test_a_put_above_the_ceiling_reads_nothing(
    ranges: tuple[Range, Range], monkeypatch: pytest.MonkeyPatch
) -> None:
    with_ceiling, _ = ranges
    reads: list[bytes] = []
    real_get = range_state.mvcc.get

    def counting_get(reader: object, key: bytes, read_ts: Timestamp) -> object:
        reads.append(key)
        return real_get(reader, key, read_ts)  # type: ignore[arg-type]

    monkeypatch.setattr(range_state.mvcc, "get", counting_get)
    with_ceiling.apply(Timestamp(100, 0), [put(b"a", b"1"), put(b"b", b"2")])
    assert reads == []
    assert with_ceiling.sm.version_ceiling == Timestamp(100, 1)
    # Below the ceiling: the put reads, finds the newer version, lands above it.
    got = with_ceiling.apply(Timestamp(50, 0), [put(b"a", b"3")])
    assert reads == [b"a"]
    assert "wall_time: 100" in got[0] and "logical: 1" in got[0], got
    assert with_ceiling.sm.version_ceiling == Timestamp(100, 1)


def test_the_ceiling_survives_a_restart(ranges: tuple[Range, Range]) -> None:
    with_ceiling, _ = ranges
    with_ceiling.apply(Timestamp(100, 0), [put(b"a", b"1")])
    with_ceiling.restart()
    assert with_ceiling.sm.version_ceiling == Timestamp(100, 0)
    got = with_ceiling.apply(Timestamp(60, 0), [put(b"a", b"2")])
    assert "wall_time: 100" in got[0] and "logical: 1" in got[0], got


def test_a_put_at_exactly_a_version_reads_and_lands_above_it(
    ranges: tuple[Range, Range],
) -> None:
    with_ceiling, _ = ranges
    with_ceiling.apply(Timestamp(100, 0), [put(b"a", b"1")])
    got = with_ceiling.apply(Timestamp(100, 0), [put(b"a", b"2")])
    assert "wall_time: 100" in got[0] and "logical: 1" in got[0], got
    # A delete moved above a newer version (to 100.2), then a put at exactly 100.2.
    got = with_ceiling.apply(
        Timestamp(90, 0), [replica_pb2.ReplicaOp(delete=replica_pb2.DeleteOp(key=b"a"))]
    )
    assert "wall_time: 100" in got[0] and "logical: 2" in got[0], got
    got = with_ceiling.apply(Timestamp(100, 2), [put(b"a", b"3")])
    assert "wall_time: 100" in got[0] and "logical: 3" in got[0], got
    assert with_ceiling.sm.version_ceiling == Timestamp(100, 3)


def test_a_ceiling_left_behind_by_an_older_build_is_unknown(ranges: tuple[Range, Range]) -> None:
    with_ceiling, _ = ranges
    with_ceiling.apply(Timestamp(100, 0), [put(b"a", b"1")])
    # A build without ceilings applies more: it moves the applied state only.
    batch = with_ceiling.engine.new_batch()
    batch.set_applied_state(DESC.range_id, AppliedState(with_ceiling.index + 1, 1))
    with_ceiling.engine.commit(batch)
    with_ceiling.restart()
    assert with_ceiling.sm.version_ceiling is None


def test_a_snapshot_brings_its_ceiling(ranges: tuple[Range, Range]) -> None:
    with_ceiling, _ = ranges
    key = range_local_key(DESC.range_id, VERSION_CEILING)
    applied = range_local_key(DESC.range_id, APPLIED_STATE)
    at_50 = AppliedState(50, 3).encode()
    with_ceiling.sm.snapshot_installed({key: encode_ceiling(50, Timestamp(500, 2)), applied: at_50})
    assert with_ceiling.sm.version_ceiling == Timestamp(500, 2)
    with_ceiling.sm.snapshot_installed({key: encode_ceiling(49, Timestamp(500, 2)), applied: at_50})
    assert with_ceiling.sm.version_ceiling is None
    with_ceiling.sm.snapshot_installed({applied: at_50})
    assert with_ceiling.sm.version_ceiling is None


def test_a_split_takes_the_ceiling_of_writes_earlier_in_its_batch(
    ranges: tuple[Range, Range],
) -> None:
    with_ceiling, _ = ranges
    sm, engine = with_ceiling.sm, with_ceiling.engine
    batch = engine.new_batch()
    cmd = raftcmd_pb2.RaftCommand(
        timestamp=ts_to_proto(Timestamp(300, 0)), writes=[put(b"z", b"1")]
    )
    sm.apply_command(11, cmd.SerializeToString(), batch)
    # Not committed yet: the stored ceiling is still the bootstrap's.
    value = sm.split_ceiling(10)
    assert value == encode_ceiling(10, Timestamp(300, 0))
    engine.commit(batch)
