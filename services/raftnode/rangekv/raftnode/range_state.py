"""The state machine of one range: what its committed raft commands do.

Every replica of a range applies the same commands in the same order into the
scheduler's shared batch, and must end in the same state. So this module is
deterministic: no clock, no asyncio, no randomness, and every read goes
through the batch (a command sees the effects of the ones before it in the
same batch) or, for GC, through the engine as of the last durable apply.

What a command can do:

* MVCC writes (put, delete, compare-and-swap), versioned at the command's
  timestamp + their position (`mvcc`); CompareAndSwap is decided here, at
  apply, so it is atomic with respect to every other write of the range;
* a transaction-record operation (`txn.decide`), and, for a split's COMMIT,
  the split trigger: this range becomes the left-hand side, and the store is
  told to create the right-hand side (`RangeEvents.split_applied`);
* raise the GC threshold and drop the versions no read at or above it can see;
* keep the range's version ceiling (`VERSION_CEILING`, below);
* a replica change: its conf change entry carries the transaction and the new
  descriptor, installed here with the record marked COMMITTED.

The version ceiling: a write is versioned above every existing version of its
key (a put that would land at or below one is moved just above it), so apply
must know the key's newest version. A CompareAndSwap or a delete reads it
anyway (they need the current value); a put needs only the bound, and reading
it costs a RocksDB seek per put, the largest part of applying one. So every
range keeps a ceiling: a timestamp at or above every MVCC version it holds,
raised by every write. A put above the ceiling cannot meet a newer version and
skips the read. It is replicated state, in the range's range-local keys
(`VERSION_CEILING`), stored with the applied index it is current at and
written beside the applied state in every apply batch (`record_applied`). It
is trusted only when that index is the range's applied index: anything that
advanced the applied state without keeping the ceiling (a build that has none,
run on this data directory) leaves it unknown, never stale. Every replica
holds the same ceiling at the same index (it depends only on the commands), a
snapshot carries it, a split's right-hand side starts from the left-hand
side's (its versions were the left's; `split_ceiling`), a bootstrapped range
starts at zero (`encode_ceiling`'s default), and GC only removes versions below it. A
range whose ceiling is unknown reads for every put, as before.

Refusals are values: writes proposed before a split took their keys away
answer `OUTSIDE_RANGE` (none of them is applied: all or nothing), a txn
operation outside the range answers `TxnApplied(None, outside=True)`.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from rangekv.common.descriptors import RangeDescriptor
from rangekv.common.hlc import ENCODED_TIMESTAMP_LEN, Timestamp
from rangekv.domain.txn import TXN_ID_LEN, TxnStatus
from rangekv.raft import ConfChange
from rangekv.raftnode import mvcc, txn
from rangekv.raftnode.keys import data_span, txn_record_key, txn_record_span
from rangekv.replication.state_engine import (
    APPLIED_STATE,
    DESCRIPTOR,
    GC_THRESHOLD,
    VERSION_CEILING,
    AppliedState,
    Reader,
    StateBatch,
    range_local_key,
    range_local_span,
)
from rangekv.replication.state_machine import Span
from rangekv.v1 import raftcmd_pb2, replica_pb2, types_pb2

__all__ = [
    "OUTSIDE_RANGE",
    "VERSION_OVERHEAD",
    "RangeEvents",
    "RangeStateMachine",
    "TxnApplied",
    "encode_ceiling",
    "range_spans",
    "ts_from_proto",
    "ts_to_proto",
]

log = logging.getLogger(__name__)

#: What a command's writes answer when the range no longer holds their keys.
OUTSIDE_RANGE: Final = object()
#: Bytes a stored MVCC version adds to its user key and value (prefix, escaping, timestamp).
VERSION_OVERHEAD: Final = 16


@dataclass(frozen=True, slots=True)
class TxnApplied:
    """What a txn-record command answers its proposer."""

    record: types_pb2.TxnRecord | None
    outside: bool = False


class RangeEvents(Protocol):
    """What the rest of the node learns from an apply (called inside it)."""

    def split_applied(
        self, left: RangeDescriptor, right: RangeDescriptor, batch: StateBatch
    ) -> None:
        """This range became `left`; `right`'s initial state goes into `batch`."""
        ...

    def replica_change_applied(self, new: RangeDescriptor, txn_id: bytes) -> None:
        """A replica change installed `new` (transaction `txn_id`)."""
        ...


def ts_to_proto(ts: Timestamp) -> types_pb2.Timestamp:
    return types_pb2.Timestamp(wall_time=ts.wall_time, logical=ts.logical)


def ts_from_proto(pb: types_pb2.Timestamp) -> Timestamp:
    return Timestamp(pb.wall_time, pb.logical)


def _ts_pb(ts: Timestamp | None) -> types_pb2.Timestamp:
    return ts_to_proto(ts) if ts is not None else types_pb2.Timestamp()


_CEILING_INDEX: Final = struct.Struct(">Q")


def encode_ceiling(index: int, ceiling: Timestamp = Timestamp.MIN) -> bytes:
    """A `VERSION_CEILING` value: the applied index it is current at, then the
    timestamp (the default, zero: a range with no versions yet, as bootstrapped)."""
    return _CEILING_INDEX.pack(index) + ceiling.encode()


def _stored_ceiling(local: Callable[[bytes], bytes | None], range_id: int) -> Timestamp | None:
    """The range's stored ceiling if it is current at the range's applied index, else
    None (unknown: see the module docstring). `local` reads a key of the state."""
    raw = local(range_local_key(range_id, VERSION_CEILING))
    applied = local(range_local_key(range_id, APPLIED_STATE))
    if raw is None or applied is None:
        return None
    if len(raw) != _CEILING_INDEX.size + ENCODED_TIMESTAMP_LEN:
        log.error("range %d: a stored version ceiling of %d bytes; ignored", range_id, len(raw))
        return None
    (index,) = _CEILING_INDEX.unpack_from(raw)
    if index != AppliedState.decode(applied).index:
        return None
    return Timestamp.decode(raw[_CEILING_INDEX.size :])


def range_spans(range_id: int, desc: RangeDescriptor) -> list[Span]:
    """The state-engine spans of a range: its range-local keys, txn records and data."""
    local_lo, local_hi = range_local_span(range_id)
    txn_lo, txn_hi = txn_record_span(desc.start_key, desc.end_key)
    data_lo, data_hi = data_span(desc.start_key, desc.end_key)
    return [(local_lo, local_hi), (txn_lo, txn_hi), (data_lo, data_hi)]


class RangeStateMachine:
    """One range's replicated state (see the module docstring)."""

    def __init__(
        self,
        descriptor: RangeDescriptor,
        engine: Reader,
        events: RangeEvents,
        versioned: Callable[[Timestamp], None],
        *,
        skips_writes: Callable[[], bool] | None = None,
    ) -> None:
        """`engine`: the live state engine (GC scans what is durable, not the batch);
        `versioned(ts)`: a write was versioned at `ts` (the node's hybrid clock is
        moved past it: it must never stamp a later write below an applied one).
        `skips_writes`: TEST ONLY, None in every real process (the mutation
        follower_skips_writes): while it answers True, commands' MVCC writes are
        dropped and only the applied index moves."""
        self.range_id = descriptor.range_id
        self._skips_writes = skips_writes
        self._engine = engine
        self._events = events
        self._versioned = versioned
        self._descriptor = descriptor
        self.descriptor_pb = descriptor.to_proto()
        raw_gc = engine.get(range_local_key(descriptor.range_id, GC_THRESHOLD))
        #: Reads below this timestamp are refused: their versions may be gone.
        self.gc_threshold = Timestamp.decode(raw_gc) if raw_gc else Timestamp.MIN
        #: At or above every MVCC version of the range (module docstring); None: unknown.
        self.version_ceiling = _stored_ceiling(engine.get, descriptor.range_id)
        #: Approximate bytes of the range's MVCC keys and values: None until the
        #: size estimator scanned it; then raised by every applied write.
        self.approx_size: int | None = None
        #: The newest MVCC write this process applied here (None: unknown, e.g.
        #: since a restart or a split). GC skips a range none of whose writes is
        #: newer than its GC threshold: the last GC collected all it ever could.
        self.newest_write: Timestamp | None = None

    @property
    def descriptor(self) -> RangeDescriptor:
        return self._descriptor

    @descriptor.setter
    def descriptor(self, value: RangeDescriptor) -> None:
        self._descriptor = value
        self.descriptor_pb = value.to_proto()

    # --- the StateMachine protocol ---------------------------------------------------

    def apply_command(self, index: int, command: bytes, batch: StateBatch) -> object:
        cmd = raftcmd_pb2.RaftCommand.FromString(command)
        reader = batch.reader()
        base = ts_from_proto(cmd.timestamp)
        if cmd.HasField("gc_threshold"):
            self._apply_gc(ts_from_proto(cmd.gc_threshold), batch)
        if cmd.HasField("txn_op"):
            return self._apply_txn_op(cmd.txn_op, base, reader, batch)
        desc = self.descriptor
        if not all(desc.contains_key(getattr(op, op.WhichOneof("op")).key) for op in cmd.writes):  # type: ignore[arg-type]
            # Proposed before a split that applied first: keys of another range now.
            return [OUTSIDE_RANGE] * len(cmd.writes)
        if cmd.writes and self._skips_writes is not None and self._skips_writes():
            return []  # TEST ONLY: a replica that loses effects (see __init__)
        if not cmd.writes:
            return []
        last = Timestamp(base.wall_time, base.logical + len(cmd.writes) - 1)
        if self.newest_write is None or last > self.newest_write:
            self.newest_write = last
        return [
            self._apply_write(op, Timestamp(base.wall_time, base.logical + i), reader, batch)
            for i, op in enumerate(cmd.writes)
        ]

    def apply_conf_change(self, index: int, cc: ConfChange, batch: StateBatch) -> None:
        """A replica change commits (every replica alike): the entry's context
        carries the transaction and the new descriptor; the record becomes
        COMMITTED and the descriptor is installed in the same batch. The raft
        core has already changed its membership."""
        if not cc.context:
            return
        try:
            ctx = raftcmd_pb2.ReplicaChangeContext.FromString(cc.context)
            new = RangeDescriptor.from_proto(ctx.descriptor)
        except Exception:  # malformed context: never proposed by us; apply never raises
            log.error("range %d: conf change at %d with a bad context", self.range_id, index)
            return
        if new.range_id != self.range_id or new.generation <= self.descriptor.generation:
            return
        meta = ctx.txn
        if len(meta.id) == TXN_ID_LEN and self.descriptor.contains_key(meta.record_key):
            self._commit_change_record(meta, batch)
        self.descriptor = new
        self.save_descriptor(batch)
        self._events.replica_change_applied(new, bytes(meta.id))

    def _commit_change_record(self, meta: types_pb2.TxnMeta, batch: StateBatch) -> None:
        key = txn_record_key(meta.record_key, meta.id)
        raw = batch.reader().get(key)
        rec = types_pb2.TxnRecord.FromString(raw) if raw is not None else None
        if rec is not None and rec.status == TxnStatus.PENDING:
            done = types_pb2.TxnRecord()
            done.CopyFrom(rec)
            done.status = int(TxnStatus.COMMITTED)  # type: ignore[assignment]
            batch.put(key, done.SerializeToString())
        elif rec is None or rec.status != TxnStatus.COMMITTED:
            # Cannot happen while pushes never abort a running change (see
            # rangekv.raftnode.change); the membership changed regardless, so
            # the descriptor must follow it.
            log.error(
                "range %d: replica change %s applied over a record that is not PENDING",
                self.range_id,
                meta.id.hex(),
            )

    def record_applied(self, index: int, term: int, batch: StateBatch) -> None:
        batch.set_applied_state(self.range_id, AppliedState(index, term))
        if self.version_ceiling is not None:
            # Beside the applied state, always: current at `index` (module docstring).
            batch.put_local(
                self.range_id, VERSION_CEILING, encode_ceiling(index, self.version_ceiling)
            )

    def split_ceiling(self, index: int) -> bytes | None:
        """The `VERSION_CEILING` value for the right-hand side of a split this range
        is applying now, created at applied index `index`: this range's ceiling as
        of the commands applied so far, in this batch too (the stored one is only
        as of the last batch); None: unknown."""
        if self.version_ceiling is None:
            return None
        return encode_ceiling(index, self.version_ceiling)

    def snapshot_spans(self) -> list[Span]:
        return range_spans(self.range_id, self.descriptor)

    def snapshot_installed(self, local: Mapping[bytes, bytes]) -> None:
        stored = local.get(range_local_key(self.range_id, DESCRIPTOR))
        if stored:
            self.descriptor = RangeDescriptor.from_proto(
                types_pb2.RangeDescriptor.FromString(stored)
            )
        gc = local.get(range_local_key(self.range_id, GC_THRESHOLD))
        self.gc_threshold = Timestamp.decode(gc) if gc else Timestamp.MIN
        self.version_ceiling = _stored_ceiling(local.get, self.range_id)
        self.approx_size = None

    def save_descriptor(self, batch: StateBatch) -> None:
        batch.put_local(self.range_id, DESCRIPTOR, self.descriptor_pb.SerializeToString())

    # --- MVCC writes ------------------------------------------------------------------

    def _apply_write(
        self, op: replica_pb2.ReplicaOp, ts: Timestamp, reader: Reader, batch: StateBatch
    ) -> replica_pb2.ReplicaOpResult:
        kind = op.WhichOneof("op")
        key = getattr(op, kind).key  # type: ignore[arg-type]
        ceiling = self.version_ceiling
        if kind == "put" and ceiling is not None and ts > ceiling:
            # Above every version of the range: nothing to read (module docstring).
            current = latest = None
        else:
            current, latest = mvcc.get(reader, key, Timestamp.MAX)
            if latest is not None and latest >= ts:
                ts = latest.next()
        if ceiling is not None and ts > ceiling:
            # Raised even when the write adds nothing (a failed CAS, a delete of
            # nothing): still a bound, and the same on every replica.
            self.version_ceiling = ts
        self._versioned(ts)
        if self.approx_size is not None:
            value = op.put.value if kind == "put" else op.compare_and_swap.new_value
            self.approx_size += len(key) + len(value) + VERSION_OVERHEAD
        if kind == "put":
            mvcc.put(batch, key, op.put.value, ts)
            return replica_pb2.ReplicaOpResult(put=replica_pb2.PutResult(version=_ts_pb(ts)))
        if kind == "delete":
            if current is None:
                return replica_pb2.ReplicaOpResult(delete=replica_pb2.DeleteResult(deleted=False))
            mvcc.delete(batch, key, ts)
            return replica_pb2.ReplicaOpResult(
                delete=replica_pb2.DeleteResult(deleted=True, version=_ts_pb(ts))
            )
        cas = op.compare_and_swap
        expected = None if cas.expect_absent else cas.expected_value
        if current != expected:
            res = replica_pb2.CompareAndSwapResult(succeeded=False)
            if current is not None:
                res.current.CopyFrom(
                    types_pb2.KeyValue(key=key, value=current, version=_ts_pb(latest))
                )
            return replica_pb2.ReplicaOpResult(compare_and_swap=res)
        mvcc.put(batch, key, cas.new_value, ts)
        return replica_pb2.ReplicaOpResult(
            compare_and_swap=replica_pb2.CompareAndSwapResult(
                succeeded=True,
                current=types_pb2.KeyValue(key=key, value=cas.new_value, version=_ts_pb(ts)),
            )
        )

    # --- transaction records and the split trigger ------------------------------------

    def _apply_txn_op(
        self, op: raftcmd_pb2.TxnOp, ts: Timestamp, reader: Reader, batch: StateBatch
    ) -> TxnApplied:
        """Apply one transaction-record operation (deterministic: see txn.py)."""
        desc = self.descriptor
        if not desc.contains_key(op.txn.record_key) or len(op.txn.id) != TXN_ID_LEN:
            return TxnApplied(None, outside=True)
        key = txn_record_key(op.txn.record_key, op.txn.id)
        raw = reader.get(key)
        existing = types_pb2.TxnRecord.FromString(raw) if raw is not None else None
        left = right = None
        split_ok = True
        if op.kind == txn.COMMIT and op.HasField("split_left"):
            try:
                left = RangeDescriptor.from_proto(op.split_left)
                right = RangeDescriptor.from_proto(op.split_right)
            except ValueError:  # malformed descriptors: never a valid split (apply never raises)
                split_ok = False
            else:
                split_ok = txn.split_matches(desc, left, right)
        decision = txn.decide(op, existing, ts.wall_time, split_ok=split_ok)
        if decision.write and decision.record is not None:
            batch.put(key, decision.record.SerializeToString())
        if decision.split:
            assert left is not None and right is not None
            self._apply_split(left, right, batch)
        return TxnApplied(decision.record)

    def _apply_split(
        self, left: RangeDescriptor, right: RangeDescriptor, batch: StateBatch
    ) -> None:
        """The split trigger: this range becomes `left`; the store creates `right`."""
        self.descriptor = left
        self.save_descriptor(batch)
        self.approx_size = None  # both halves are re-estimated
        self._events.split_applied(left, right, batch)

    # --- garbage collection -------------------------------------------------------------

    def _apply_gc(self, threshold: Timestamp, batch: StateBatch) -> None:
        """Drop versions no read at or above `threshold` can see (deterministic:
        every replica scans the same applied state)."""
        if threshold <= self.gc_threshold:
            return
        desc = self.descriptor
        mvcc.gc(self._engine, batch, threshold, desc.start_key, desc.end_key)
        batch.put_local(self.range_id, GC_THRESHOLD, threshold.encode())
        self.gc_threshold = threshold
