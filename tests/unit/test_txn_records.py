"""The transaction-record state machine (`rangekv.raftnode.txn.decide`).

Every transition of the module's table, the idempotence of commit and abort,
and the refusals: a commit after an abort (or a push that aborted), an abort
after a commit, a split commit whose descriptor no longer matches.
"""

from __future__ import annotations

import pytest

from rangekv.common.descriptors import RangeDescriptor, ReplicaDescriptor
from rangekv.domain.txn import TxnStatus
from rangekv.raftnode import txn as T
from rangekv.v1 import raftcmd_pb2, types_pb2

SEC = 1_000_000_000
META = types_pb2.TxnMeta(id=b"\x01" * 16, record_key=b"a", kind="split")
REPLICAS = (ReplicaDescriptor(1, 1), ReplicaDescriptor(2, 2), ReplicaDescriptor(3, 3))
ORIGINAL = RangeDescriptor(1, b"a", b"z", REPLICAS, generation=4, next_replica_id=4)
LEFT = RangeDescriptor(1, b"a", b"m", REPLICAS, generation=5, next_replica_id=4)
RIGHT = RangeDescriptor(7, b"m", b"z", REPLICAS, generation=5, next_replica_id=4)


def op(kind: int, *, expired_before: int = 0, split: bool = False) -> raftcmd_pb2.TxnOp:
    o = raftcmd_pb2.TxnOp(kind=kind, txn=META)  # type: ignore[arg-type]
    o.expired_before.wall_time = expired_before
    o.intent_keys.append(b"\x02")
    if split:
        o.split_left.CopyFrom(LEFT.to_proto())
        o.split_right.CopyFrom(RIGHT.to_proto())
    return o


class Record:
    """One stored record, driven by ops the way apply drives it."""

    def __init__(self) -> None:
        self.stored: types_pb2.TxnRecord | None = None
        self.splits = 0

    def apply(self, o: raftcmd_pb2.TxnOp, now: int, split_ok: bool = True) -> int | None:
        d = T.decide(o, self.stored, now, split_ok=split_ok)
        if d.write:
            assert d.record is not None
            self.stored = d.record
        else:
            assert d.record is self.stored  # nothing written means nothing changed
        self.splits += d.split
        return d.record.status if d.record is not None else None


def pending(at: int = 10 * SEC) -> Record:
    r = Record()
    assert r.apply(op(T.CREATE), at) == TxnStatus.PENDING
    return r


def test_create_is_pending_with_heartbeat_and_intent_keys() -> None:
    r = pending(10 * SEC)
    assert r.stored is not None
    assert r.stored.last_heartbeat.wall_time == 10 * SEC
    assert list(r.stored.intent_keys) == [b"\x02"]
    assert r.stored.meta == META
    # creating again (a retried proposal) keeps it pending and refreshes the heartbeat
    assert r.apply(op(T.CREATE), 11 * SEC) == TxnStatus.PENDING
    assert r.stored.last_heartbeat.wall_time == 11 * SEC


def test_heartbeat_only_moves_forward() -> None:
    r = pending(10 * SEC)
    assert r.apply(op(T.HEARTBEAT), 12 * SEC) == TxnStatus.PENDING
    assert r.apply(op(T.HEARTBEAT), 11 * SEC) == TxnStatus.PENDING
    assert r.stored is not None and r.stored.last_heartbeat.wall_time == 12 * SEC
    assert Record().apply(op(T.HEARTBEAT), SEC) is None  # no record: nothing to heartbeat


def test_push_of_unexpired_pending_changes_nothing() -> None:
    r = pending(10 * SEC)
    # expired_before = pusher's now - expiry; the heartbeat is newer: still live
    assert r.apply(op(T.PUSH, expired_before=9 * SEC), 14 * SEC) == TxnStatus.PENDING
    assert r.apply(op(T.PUSH, expired_before=10 * SEC), 15 * SEC) == TxnStatus.PENDING


def test_push_of_expired_pending_aborts_and_then_commit_is_refused() -> None:
    r = pending(10 * SEC)
    assert r.apply(op(T.PUSH, expired_before=10 * SEC + 1), 20 * SEC) == TxnStatus.ABORTED
    assert r.apply(op(T.COMMIT, split=True), 21 * SEC) == TxnStatus.ABORTED
    assert r.splits == 0
    assert r.apply(op(T.HEARTBEAT), 22 * SEC) == TxnStatus.ABORTED
    assert r.apply(op(T.CREATE), 22 * SEC) == TxnStatus.ABORTED


def test_push_of_missing_record_writes_aborted() -> None:
    r = Record()
    assert r.apply(op(T.PUSH, expired_before=0), 5 * SEC) == TxnStatus.ABORTED
    assert r.stored is not None and r.stored.status == TxnStatus.ABORTED
    # a late coordinator can neither create nor commit it any more
    assert r.apply(op(T.CREATE), 6 * SEC) == TxnStatus.ABORTED
    assert r.apply(op(T.COMMIT, split=True), 6 * SEC) == TxnStatus.ABORTED
    assert r.splits == 0


@pytest.mark.parametrize("kind", [T.COMMIT, T.ABORT])
def test_end_of_missing_record_is_aborted(kind: int) -> None:
    assert Record().apply(op(kind), SEC) == TxnStatus.ABORTED


def test_commit_is_idempotent_and_splits_once() -> None:
    r = pending()
    assert r.apply(op(T.COMMIT, split=True), 11 * SEC) == TxnStatus.COMMITTED
    assert r.apply(op(T.COMMIT, split=True), 12 * SEC) == TxnStatus.COMMITTED
    assert r.splits == 1
    # pushes and aborts after a commit answer COMMITTED and change nothing
    assert r.apply(op(T.PUSH, expired_before=100 * SEC), 100 * SEC) == TxnStatus.COMMITTED
    assert r.apply(op(T.ABORT), 100 * SEC) == TxnStatus.COMMITTED


def test_abort_is_idempotent() -> None:
    r = pending()
    assert r.apply(op(T.ABORT), 11 * SEC) == TxnStatus.ABORTED
    assert r.apply(op(T.ABORT), 12 * SEC) == TxnStatus.ABORTED
    assert r.apply(op(T.COMMIT), 13 * SEC) == TxnStatus.ABORTED


def test_split_commit_against_a_changed_descriptor_aborts() -> None:
    r = pending()
    assert r.apply(op(T.COMMIT, split=True), 11 * SEC, split_ok=False) == TxnStatus.ABORTED
    assert r.splits == 0


def test_clear_intents_only_on_final_records() -> None:
    r = pending()
    assert r.apply(op(T.CLEAR_INTENTS), 11 * SEC) == TxnStatus.PENDING
    assert r.stored is not None and list(r.stored.intent_keys) == [b"\x02"]
    r.apply(op(T.COMMIT), 12 * SEC)
    assert r.apply(op(T.CLEAR_INTENTS), 13 * SEC) == TxnStatus.COMMITTED
    assert not r.stored.intent_keys


def test_split_matches() -> None:
    assert T.split_matches(ORIGINAL, LEFT, RIGHT)
    newer = RangeDescriptor(1, b"a", b"z", REPLICAS, generation=5, next_replica_id=4)
    assert not T.split_matches(newer, LEFT, RIGHT)  # the range changed since it was read
    narrower = RangeDescriptor(1, b"a", b"q", REPLICAS, generation=4, next_replica_id=4)
    assert not T.split_matches(narrower, LEFT, RIGHT)
    other_replicas = RangeDescriptor(1, b"a", b"z", REPLICAS[:2], generation=4, next_replica_id=4)
    assert not T.split_matches(other_replicas, LEFT, RIGHT)
    same_id = RangeDescriptor(1, b"m", b"z", REPLICAS, generation=5, next_replica_id=4)
    assert not T.split_matches(ORIGINAL, LEFT, same_id)
