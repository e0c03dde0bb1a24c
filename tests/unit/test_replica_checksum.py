"""Replica checksums (`rangekv.replication.checksum`, `rangekv.raftnode.consistency`)
on real RocksDB engines, and the ledger that compares them.

What the chaos suite's divergence check relies on: equal range state gives
equal digests whatever else the engine holds, any difference in the range's
keys or values changes the digest, and the applied index reported is the one
the digested view holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import rocksdict

from rangekv.common import errors as E
from rangekv.common.descriptors import RangeDescriptor
from rangekv.common.hlc import Timestamp
from rangekv.metarange.keys import META_GROUP_ID, META_PREFIX
from rangekv.metarange.state import meta_spans
from rangekv.raftnode.consistency import replica_checksum
from rangekv.raftnode.keys import txn_record_key, version_key
from rangekv.raftnode.service import ReplicaService
from rangekv.replication.checksum import (
    MAX_CHECKSUMS_PER_REQUEST,
    ChecksumLedger,
    checksum_off_loop,
    state_checksum,
)
from rangekv.replication.state_engine import DESCRIPTOR, AppliedState, StateEngine
from rangekv.replication.sync_mode import FsmSyncMode
from rangekv.v1 import replica_pb2, types_pb2

LEFT = RangeDescriptor(range_id=1, start_key=b"", end_key=b"m")
RIGHT = RangeDescriptor(range_id=2, start_key=b"m", end_key=b"")


def fill(engine: StateEngine, applied: int, data: dict[bytes, bytes]) -> None:
    """Both ranges initialized at `applied`, user keys written at one timestamp."""
    batch = engine.new_batch()
    for desc in (LEFT, RIGHT):
        batch.put_local(desc.range_id, DESCRIPTOR, desc.to_proto().SerializeToString())
        batch.set_applied_state(desc.range_id, AppliedState(applied, 3))
    for key, value in data.items():
        batch.put(version_key(key, Timestamp(100, 0)), value)
    batch.put(txn_record_key(b"a", b"t" * 16), b"record")
    engine.commit(batch)


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[tuple[StateEngine, StateEngine]]:
    a = StateEngine.open(tmp_path / "a", FsmSyncMode.NOSYNC)
    b = StateEngine.open(tmp_path / "b", FsmSyncMode.NOSYNC)
    yield a, b
    a.close()
    b.close()


def test_equal_state_gives_equal_digests_whatever_other_ranges_hold(
    engines: tuple[StateEngine, StateEngine],
) -> None:
    a, b = engines
    fill(a, 10, {b"apple": b"1", b"kiwi": b"2", b"pear": b"3"})
    fill(b, 10, {b"apple": b"1", b"kiwi": b"2", b"pear": b"other"})  # differs in RIGHT only
    left_a, left_b = replica_checksum(a, 1), replica_checksum(b, 1)
    assert left_a is not None and left_a == left_b
    assert left_a.applied_index == 10
    assert replica_checksum(a, 2) != replica_checksum(b, 2)


@pytest.mark.parametrize(
    "change",
    ["value", "missing key", "extra version", "applied index", "txn record"],
)
def test_any_difference_in_the_range_changes_its_digest(
    engines: tuple[StateEngine, StateEngine], change: str
) -> None:
    a, b = engines
    data = {b"apple": b"1", b"kiwi": b"2"}
    fill(a, 10, data)
    fill(b, 10, data)
    batch = b.new_batch()
    if change == "value":
        batch.put(version_key(b"kiwi", Timestamp(100, 0)), b"3")
    elif change == "missing key":
        batch.delete(version_key(b"apple", Timestamp(100, 0)))
    elif change == "extra version":
        batch.put(version_key(b"apple", Timestamp(101, 0)), b"1")
    elif change == "applied index":
        batch.set_applied_state(1, AppliedState(11, 3))
    else:
        batch.put(txn_record_key(b"b", b"u" * 16), b"record")
    b.commit(batch)
    mine, theirs = replica_checksum(a, 1), replica_checksum(b, 1)
    assert mine is not None and theirs is not None
    assert mine.digest != theirs.digest


def test_an_uninitialized_replica_has_no_checksum(
    engines: tuple[StateEngine, StateEngine],
) -> None:
    a, _ = engines
    assert replica_checksum(a, 1) is None
    fill(a, 10, {})
    assert replica_checksum(a, 3) is None  # no replica of range 3 at all


def test_the_ledger_names_a_divergence_whenever_the_reports_came() -> None:
    ledger = ChecksumLedger()
    ledger.record(1, 1, types_pb2.StateChecksum(applied_index=10, digest="aa"))
    ledger.record(1, 2, types_pb2.StateChecksum(applied_index=11, digest="bb"))
    assert ledger.divergences() == []
    assert not ledger.compared(1, [1, 2])  # never seen at one index
    assert ledger.comparisons() == 0
    ledger.record(1, 2, types_pb2.StateChecksum(applied_index=10, digest="aa"))
    assert ledger.compared(1, [1, 2]) and not ledger.compared(1, [1, 2, 3])
    assert ledger.comparisons() == 1
    ledger.record(1, 3, types_pb2.StateChecksum(applied_index=10, digest="cc"))
    assert ledger.divergences("range") == [
        "range 1 at applied index 10: node(s) 1, 2 hold aa; node(s) 3 hold cc"
    ]
    assert not ledger.compared(2, [])  # nothing to compare is not a pass


def test_the_meta_range_checksum_covers_its_records(
    engines: tuple[StateEngine, StateEngine],
) -> None:
    a, b = engines
    for engine in (a, b):
        batch = engine.new_batch()
        batch.set_applied_state(META_GROUP_ID, AppliedState(7, 2))
        batch.put(META_PREFIX + b"\x01", b"bootstrapped")
        engine.commit(batch)
    mine = state_checksum(a, META_GROUP_ID, lambda _: meta_spans())
    assert mine is not None and mine == state_checksum(b, META_GROUP_ID, lambda _: meta_spans())
    batch = b.new_batch()
    batch.put(META_PREFIX + b"\x7fother", b"x")
    b.commit(batch)
    theirs = state_checksum(b, META_GROUP_ID, lambda _: meta_spans())
    assert theirs is not None and theirs.applied_index == 7 and theirs.digest != mine.digest


async def test_an_engine_closed_under_a_checksum_is_unavailable(tmp_path: Path) -> None:
    """A checksum asked for while the node stops (its engine closes) answers
    UNAVAILABLE, which callers retry, not an internal error."""
    engine = StateEngine.open(tmp_path / "closed", FsmSyncMode.NOSYNC)
    fill(engine, 10, {b"apple": b"1"})
    assert await checksum_off_loop(lambda: replica_checksum(engine, 1)) is not None
    engine.close()
    with pytest.raises(E.Unavailable, match="stopping"):
        await checksum_off_loop(lambda: replica_checksum(engine, 1))

    def closed_under_the_read() -> None:  # rocksdict's own error: closed between calls
        raise rocksdict.DbClosedError("DB instance already closed")

    with pytest.raises(E.Unavailable, match="stopping"):
        await checksum_off_loop(closed_under_the_read)


async def test_one_range_info_request_computes_a_bounded_number_of_checksums() -> None:
    """Each checksum reads a whole range: a request that selects more than
    MAX_CHECKSUMS_PER_REQUEST replicas is refused before any is read, saying how
    to ask instead; naming the ranges in range_ids stays within the bound."""
    many = [SimpleNamespace(range_id=i) for i in range(1, MAX_CHECKSUMS_PER_REQUEST + 2)]
    store = SimpleNamespace(clock=None, replicas=lambda: many)
    service = ReplicaService(
        store,  # type: ignore[arg-type]
        splits=SimpleNamespace(txns=SimpleNamespace(pusher=SimpleNamespace(expiry=1.0))),  # type: ignore[arg-type]
        changes=None,  # type: ignore[arg-type]
    )
    with pytest.raises(E.InvalidArgument, match=r"at most 64 replicas .* selects 65"):
        await service.RangeInfo(
            replica_pb2.RangeInfoRequest(checksums=True),
            None,  # type: ignore[arg-type]
        )
