"""Transaction records: the authoritative outcome of a descriptor transaction.

A descriptor transaction (a split) keeps its record on the range holding
``txn.record_key`` (for a split of [A, C): A, which stays on the left-hand
side, so the pre- and post-split descriptors both route there). The record is
state-engine data of that range, stored at ``0x02 | enc(record_key) | txn_id``
(`rangekv.raftnode.keys.txn_record_key`), and every change to it is a raft
command (`RaftCommand.txn_op`), so every replica holds the same record.

The state machine (`decide`) sees only the stored record and the command:

    op \\ record   none          PENDING                       COMMITTED   ABORTED
    CREATE        PENDING(hb)   hb = max(hb, ts)              unchanged   unchanged
    HEARTBEAT     none          hb = max(hb, ts)              unchanged   unchanged
    PUSH          ABORTED       ABORTED if hb < expired_before unchanged  unchanged
    COMMIT        ABORTED       COMMITTED (+ split trigger)   unchanged   unchanged
    ABORT         ABORTED       ABORTED                       unchanged   unchanged

Design decisions:

- A PUSH of a missing record writes ABORTED. A coordinator writes its record
  before any intent, so a pusher that met an intent and finds no record is
  looking at a transaction whose record is gone or was never written; writing
  ABORTED makes that answer final: a late coordinator's COMMIT then finds
  ABORTED and fails (COMMIT of a missing record likewise aborts it).
- Final states never change: COMMIT after ABORTED answers ABORTED and ABORT
  after COMMITTED answers COMMITTED; repeating COMMIT or ABORT is idempotent
  (and a repeated split COMMIT does not apply the trigger twice).
- A split COMMIT is only applied while the range's descriptor is the one the
  split read (same range id, span, generation, replicas); otherwise the
  record becomes ABORTED, so the intents the transaction wrote get aborted.
- Expiry is judged by the pusher's leaseholder at proposal (``expired_before``
  = its clock - expiry) and applied deterministically against the stored
  heartbeat, which is the HLC wall time of the command that wrote it.
"""

from __future__ import annotations

from dataclasses import dataclass

from rangekv.common.descriptors import RangeDescriptor
from rangekv.domain.txn import TxnStatus
from rangekv.v1 import raftcmd_pb2, types_pb2

CREATE = raftcmd_pb2.TXN_OP_KIND_CREATE
HEARTBEAT = raftcmd_pb2.TXN_OP_KIND_HEARTBEAT
PUSH = raftcmd_pb2.TXN_OP_KIND_PUSH
COMMIT = raftcmd_pb2.TXN_OP_KIND_COMMIT
ABORT = raftcmd_pb2.TXN_OP_KIND_ABORT
CLEAR_INTENTS = raftcmd_pb2.TXN_OP_KIND_CLEAR_INTENTS

__all__ = [
    "ABORT",
    "CLEAR_INTENTS",
    "COMMIT",
    "CREATE",
    "HEARTBEAT",
    "PUSH",
    "Decision",
    "decide",
    "record_status",
    "split_matches",
]


@dataclass(frozen=True, slots=True)
class Decision:
    """What applying one TxnOp does: the record afterwards (None: still none),
    whether to write it, and whether to apply the split trigger."""

    record: types_pb2.TxnRecord | None
    write: bool = False
    split: bool = False


def record_status(rec: types_pb2.TxnRecord | None) -> TxnStatus:
    """The status a record stands for; no record at all is as good as ABORTED (a
    push of a missing record writes ABORTED: see the module docstring)."""
    if rec is None:
        return TxnStatus.ABORTED
    return TxnStatus(rec.status)


def _record(
    txn: types_pb2.TxnMeta,
    status: TxnStatus,
    heartbeat: int,
    intent_keys: list[bytes] | None = None,
) -> types_pb2.TxnRecord:
    rec = types_pb2.TxnRecord(status=int(status))  # type: ignore[arg-type]
    rec.meta.CopyFrom(txn)
    rec.last_heartbeat.wall_time = heartbeat
    if intent_keys:
        rec.intent_keys.extend(intent_keys)
    return rec


def decide(
    op: raftcmd_pb2.TxnOp,
    existing: types_pb2.TxnRecord | None,
    now_wall: int,
    *,
    split_ok: bool = True,
) -> Decision:
    """The effect of `op` on the stored record `existing` (see the module table).

    `now_wall` is the command's HLC wall time; `split_ok` says whether the
    range's descriptor is the one a split COMMIT expects.
    """
    if existing is None:
        return _decide_missing(op, now_wall)
    if existing.status != TxnStatus.PENDING:
        return _decide_final(op, existing)
    return _decide_pending(op, existing, now_wall, split_ok)


def _decide_missing(op: raftcmd_pb2.TxnOp, now_wall: int) -> Decision:
    """No record yet: CREATE writes it PENDING; PUSH, COMMIT and ABORT make ABORTED final."""
    if op.kind == CREATE:
        pending = _record(op.txn, TxnStatus.PENDING, now_wall, list(op.intent_keys))
        return Decision(pending, write=True)
    if op.kind in (PUSH, COMMIT, ABORT):
        return Decision(_record(op.txn, TxnStatus.ABORTED, now_wall), write=True)
    return Decision(None)


def _decide_final(op: raftcmd_pb2.TxnOp, existing: types_pb2.TxnRecord) -> Decision:
    """A final record never changes status; CLEAR_INTENTS only forgets its intent keys."""
    if op.kind == CLEAR_INTENTS and existing.intent_keys:
        rec = types_pb2.TxnRecord()
        rec.CopyFrom(existing)
        del rec.intent_keys[:]
        return Decision(rec, write=True)
    return Decision(existing)


def _decide_pending(
    op: raftcmd_pb2.TxnOp, existing: types_pb2.TxnRecord, now_wall: int, split_ok: bool
) -> Decision:
    kind = op.kind
    if kind in (CREATE, HEARTBEAT):
        if now_wall <= existing.last_heartbeat.wall_time:
            return Decision(existing)
        rec = types_pb2.TxnRecord()
        rec.CopyFrom(existing)
        rec.last_heartbeat.wall_time = now_wall
        return Decision(rec, write=True)
    if kind == PUSH:
        if existing.last_heartbeat.wall_time >= op.expired_before.wall_time:
            return Decision(existing)
        return Decision(_final(existing, TxnStatus.ABORTED), write=True)
    if kind == COMMIT:
        is_split = op.HasField("split_left")
        if is_split and not split_ok:
            return Decision(_final(existing, TxnStatus.ABORTED), write=True)
        return Decision(_final(existing, TxnStatus.COMMITTED), write=True, split=is_split)
    if kind == ABORT:
        return Decision(_final(existing, TxnStatus.ABORTED), write=True)
    return Decision(existing)


def _final(existing: types_pb2.TxnRecord, status: TxnStatus) -> types_pb2.TxnRecord:
    rec = types_pb2.TxnRecord()
    rec.CopyFrom(existing)
    rec.status = int(status)  # type: ignore[assignment]
    return rec


def split_matches(current: RangeDescriptor, left: RangeDescriptor, right: RangeDescriptor) -> bool:
    """Whether `left` + `right` is a split of exactly `current` (the split trigger's check)."""
    return (
        left.range_id == current.range_id
        and right.range_id not in (0, current.range_id)
        and left.start_key == current.start_key
        and right.end_key == current.end_key
        and left.end_key == right.start_key
        and current.contains_key(right.start_key)
        and right.start_key != current.start_key
        and left.generation == right.generation == current.generation + 1
        and left.replicas == current.replicas == right.replicas
    )
