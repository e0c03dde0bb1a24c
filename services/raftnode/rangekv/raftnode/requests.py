"""What a Replica.Batch request may hold: the replica's limits, and their validation.

Everything here is checked before anything is read or proposed, so a bad
request gets INVALID_ARGUMENT naming the field and nothing is done. Key and
value sizes are the cluster-wide limits of `rangekv.domain.limits` (the gateway
checks them first, with the same messages).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from rangekv.common import errors as E
from rangekv.common.descriptors import RangeDescriptor
from rangekv.domain.limits import MAX_BATCH_OPS, KeyValueLimits
from rangekv.raftnode.fences import FenceLimits
from rangekv.v1 import replica_pb2

__all__ = [
    "READ_KINDS",
    "SPAN_KINDS",
    "WRITE_KINDS",
    "BatchShape",
    "ReplicaLimits",
    "keys_outside",
    "reads_only",
    "validate",
]

WRITE_KINDS: Final = frozenset({"put", "delete", "compare_and_swap"})
READ_KINDS: Final = frozenset({"get", "scan"})
#: Operations keyed by a span rather than a key.
SPAN_KINDS: Final = frozenset({"scan", "fence"})


@dataclass(frozen=True, slots=True)
class ReplicaLimits:
    """Input limits and deadlines of the replica API."""

    kv: KeyValueLimits = field(default_factory=KeyValueLimits)
    max_ops_per_batch: int = MAX_BATCH_OPS
    read_index_timeout: float = 2.0
    write_timeout: float = 5.0
    #: MVCC versions older than this (and shadowed) are garbage-collected.
    gc_ttl: float = 600.0
    #: One scan page: at most this many keys and about this many bytes.
    max_scan_page_rows: int = 10_000
    max_scan_page_bytes: int = 1 << 20
    #: Write operations queued on one replica (not yet proposed) before new
    #: writes are refused with RESOURCE_EXHAUSTED.
    max_queued_writes: int = 20_000
    #: Bytes one batch of reads may answer (bigger: ResourceExhausted, and the
    #: gateway splits the batch), so that no answer can break the shared stream.
    max_read_response_bytes: int = 16 << 20
    fences: FenceLimits = field(default_factory=FenceLimits)

    def __post_init__(self) -> None:
        if (
            min(
                self.max_ops_per_batch,
                self.max_scan_page_rows,
                self.max_scan_page_bytes,
                self.max_queued_writes,
            )
            <= 0
        ):
            raise ValueError("replica limits must be positive")


@dataclass(frozen=True, slots=True)
class BatchShape:
    """What a validated batch does: its operation kinds, in order."""

    kinds: tuple[str, ...]

    @property
    def has_writes(self) -> bool:
        return any(k in WRITE_KINDS for k in self.kinds)

    @property
    def has_reads(self) -> bool:
        return any(k in READ_KINDS for k in self.kinds)

    @property
    def fencing(self) -> bool:
        return "fence" in self.kinds


def reads_only(req: replica_pb2.ReplicaBatchRequest) -> bool:
    """No operation of `req` writes (its answer may wait a few turns for company on a
    busy stream, see `rangekv.common.frames`). Cheap: no validation."""
    return not any(op.WhichOneof("op") in WRITE_KINDS for op in req.ops)


def validate(req: replica_pb2.ReplicaBatchRequest, limits: ReplicaLimits) -> BatchShape:
    """The batch's shape, or InvalidArgument naming the first bad field."""
    if not req.ops:
        raise E.InvalidArgument("ops", "a batch needs at least one operation")
    if len(req.ops) > limits.max_ops_per_batch:
        raise E.InvalidArgument("ops", f"at most {limits.max_ops_per_batch} operations")
    kinds = tuple(_check_op(i, op, limits.kv) for i, op in enumerate(req.ops))
    if req.fence_id and not 8 <= len(req.fence_id) <= 64:
        raise E.InvalidArgument("fence_id", "must be 8 to 64 bytes")
    shape = BatchShape(kinds)
    if shape.has_writes and req.inconsistent:
        raise E.InvalidArgument("inconsistent", "only reads may be inconsistent")
    if shape.fencing and (len(set(kinds)) > 1 or req.inconsistent or req.fence_id):
        raise E.InvalidArgument("ops", "fence operations go alone in a consistent batch")
    if req.fence_id and (shape.has_writes or req.inconsistent):
        raise E.InvalidArgument("fence_id", "only consistent reads are served under a fence")
    return shape


def _check_op(i: int, op: replica_pb2.ReplicaOp, kv: KeyValueLimits) -> str:
    kind = op.WhichOneof("op")
    if kind is None:
        raise E.InvalidArgument(f"ops[{i}]", "operation not set")
    body = getattr(op, kind)
    if kind in SPAN_KINDS:
        if kind == "scan" and (body.limit < 0 or body.max_bytes < 0):
            raise E.InvalidArgument(f"ops[{i}].scan", "limit and max_bytes must be >= 0")
        if body.end_key and body.end_key <= body.start_key:
            raise E.InvalidArgument(f"ops[{i}].{kind}.end_key", "must be > start_key")
        if kind == "fence" and not 8 <= len(body.fence_id) <= 64:
            raise E.InvalidArgument(f"ops[{i}].fence.fence_id", "must be 8 to 64 bytes")
    else:
        kv.check_key(f"ops[{i}].{kind}.key", body.key)
    if kind == "put":
        kv.check_value(f"ops[{i}].put.value", body.value)
    elif kind == "compare_and_swap":
        kv.check_value(f"ops[{i}].compare_and_swap.new_value", body.new_value)
        kv.check_value(f"ops[{i}].compare_and_swap.expected_value", body.expected_value)
    return kind


def keys_outside(req: replica_pb2.ReplicaBatchRequest, desc: RangeDescriptor) -> bytes | None:
    """The first key (or span start) of `req` that `desc` does not hold, if any."""
    for op in req.ops:
        kind = op.WhichOneof("op")
        body = getattr(op, kind)  # type: ignore[arg-type]
        if kind in SPAN_KINDS:
            ok = desc.contains_key(body.start_key) or (
                body.start_key < desc.start_key and desc.overlaps(body.start_key, body.end_key)
            )
            if not ok:
                return bytes(body.start_key)
        elif not desc.contains_key(body.key):
            return bytes(body.key)
    return None
