"""The rangekv exception tree and its one mapping to and from the wire.

Inside a process, failures are exceptions; on the wire they are proto values.
This module is the only place that converts between the two::

    RangeKVError
     +-- InvalidArgument      bad input; nothing was written      INVALID_ARGUMENT (+BadRequest)
     +-- RoutingError         the request reached the wrong place; the gateway reroutes
     |    +-- NotLeaseHolder     hint: leaseholder node, address, lease sequence, descriptor
     |    +-- RangeKeyMismatch   the replica's current descriptors
     |    +-- RangeNotFound      the node has no replica of the range
     +-- Unavailable          retry later (retry_after); `outcome` for writes   UNAVAILABLE (+RetryInfo)
     |    +-- NotLeader          a raft service's follower, with the leader hint
     +-- DeadlineExceeded     the caller's deadline passed; `outcome` for writes  DEADLINE_EXCEEDED
     +-- ResourceExhausted    overloaded; nothing was written                  RESOURCE_EXHAUSTED (+RetryInfo)
     +-- ConditionFailed      a conditional meta write met another value       FAILED_PRECONDITION
     +-- IntentExists         the key holds another transaction's intent       ABORTED
     +-- FenceLost            a scan's snapshot is gone on a replica; restart   ABORTED (+RetryInfo)
     +-- ClockOffset          a timestamp too far ahead of a node's clock      UNAVAILABLE (+RetryInfo)
     +-- NotFound             no such range or node (admin API)                NOT_FOUND
     +-- FailedPrecondition   not possible in the cluster's current state      FAILED_PRECONDITION
     +-- Unimplemented        not available in this version                    UNIMPLEMENTED
     +-- InternalError        a bug                                            INTERNAL

Between gateway and raftnode the routing errors, Unavailable, InvalidArgument,
IntentExists, FenceLost, ClockOffset and ResourceExhausted travel in-band as
``rangekv.v1.ReplicaError`` (``to_replica_error`` / ``from_replica_error``).
Towards clients and on the Meta API every error is a gRPC status whose
``google.rpc.Status`` details carry the proto form (``to_rpc_status`` /
``from_rpc_error``), readable from any language. On KV/Stream, where one call
carries many requests, a failed request is answered with that same
``google.rpc.Status`` as a value (``to_status_proto`` / ``from_status_proto``):
one mapping, two carriers.
"""

from __future__ import annotations

import enum
from typing import cast

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from rangekv.common.descriptors import RangeDescriptor, ReplicaDescriptor
from rangekv.v1 import errors_pb2, types_pb2


class WriteOutcome(enum.IntEnum):
    """Whether a failed write may have been applied (wire: rangekv.v1.WriteOutcome)."""

    UNSPECIFIED = errors_pb2.WRITE_OUTCOME_UNSPECIFIED
    NOT_APPLIED = errors_pb2.WRITE_OUTCOME_NOT_APPLIED
    UNKNOWN = errors_pb2.WRITE_OUTCOME_UNKNOWN

    @classmethod
    def of(cls, may_have_applied: bool) -> WriteOutcome:
        """UNKNOWN if the failed request may have been applied (a write that reached
        the server), else NOT_APPLIED: the one rule every client-side path follows."""
        return cls.UNKNOWN if may_have_applied else cls.NOT_APPLIED


class RangeKVError(Exception):
    """Root of every error rangekv raises on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(RangeKVError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.reason = message


class RoutingError(RangeKVError):
    """The request reached a replica that cannot serve it; reroute and retry."""

    code = grpc.StatusCode.UNAVAILABLE


class NotLeaseHolder(RoutingError):
    def __init__(
        self,
        range_id: int,
        leaseholder: ReplicaDescriptor | None,
        leaseholder_address: str,
        lease_sequence: int,
        descriptor: RangeDescriptor | None,
    ) -> None:
        who = f"node {leaseholder.node_id} at {leaseholder_address}" if leaseholder else "unknown"
        super().__init__(f"range {range_id}: not the leaseholder; leaseholder is {who}")
        self.range_id = range_id
        self.leaseholder = leaseholder
        self.leaseholder_address = leaseholder_address
        self.lease_sequence = lease_sequence
        self.descriptor = descriptor


class RangeKeyMismatch(RoutingError):
    def __init__(self, requested_range_id: int, descriptors: tuple[RangeDescriptor, ...]) -> None:
        spans = ", ".join(f"r{d.range_id}[{d.start_key!r},{d.end_key!r})" for d in descriptors)
        super().__init__(f"range {requested_range_id}: keys outside the range; node has {spans}")
        self.requested_range_id = requested_range_id
        self.descriptors = descriptors


class RangeNotFound(RoutingError):
    def __init__(self, range_id: int, node_id: int) -> None:
        super().__init__(f"range {range_id} not found on node {node_id}")
        self.range_id = range_id
        self.node_id = node_id


class Unavailable(RangeKVError):
    code = grpc.StatusCode.UNAVAILABLE

    def __init__(
        self,
        message: str,
        retry_after: float = 0.1,
        outcome: WriteOutcome = WriteOutcome.NOT_APPLIED,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.outcome = outcome


class NotLeader(Unavailable):
    def __init__(self, leader_node_id: int, leader_address: str, term: int) -> None:
        hint = f"leader is node {leader_node_id} at {leader_address}" if leader_node_id else ""
        super().__init__(f"not the leader; {hint or 'leader unknown'}", retry_after=0.05)
        self.leader_node_id = leader_node_id
        self.leader_address = leader_address
        self.term = term


class DeadlineExceeded(RangeKVError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED

    def __init__(self, message: str, outcome: WriteOutcome = WriteOutcome.UNSPECIFIED) -> None:
        super().__init__(message)
        self.outcome = outcome


class ResourceExhausted(RangeKVError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(
        self, message: str, retry_after: float = 0.1, *, answer_too_large: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        #: The batch asked for more than one answer may carry: split it and ask again.
        self.answer_too_large = answer_too_large


class ConditionFailed(RangeKVError):
    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, key: bytes, actual: RangeDescriptor | None) -> None:
        super().__init__(f"condition failed at {key!r}: current value is {actual}")
        self.key = key
        self.actual = actual


class IntentExists(RangeKVError):
    code = grpc.StatusCode.ABORTED

    def __init__(self, key: bytes, txn: types_pb2.TxnMeta) -> None:
        super().__init__(f"{key!r} holds an intent of transaction {txn.id.hex()}")
        self.key = key
        self.txn = txn


class FenceLost(RangeKVError):
    """A multi-range scan read under a fence the replica does not hold (any more):
    its snapshot is gone there; the scan must start over. Nothing was written."""

    code = grpc.StatusCode.ABORTED

    def __init__(self, fence_id: bytes, reason: str, retry_after: float = 0.02) -> None:
        super().__init__(f"scan snapshot lost ({reason}); retry the scan")
        self.fence_id = fence_id
        self.reason = reason
        self.retry_after = retry_after


class ClockOffset(RangeKVError):
    """A timestamp more than the maximum clock offset ahead of a node's physical
    clock: refused, never absorbed (someone's clock is wrong)."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(
        self, timestamp: types_pb2.Timestamp, physical_ns: int, max_offset_ns: int, node_id: int
    ) -> None:
        ahead_ms = (timestamp.wall_time - physical_ns) / 1e6
        super().__init__(
            f"timestamp {timestamp.wall_time}.{timestamp.logical} is {ahead_ms:.0f} ms ahead of "
            f"node {node_id}'s clock; the maximum clock offset is {max_offset_ns / 1e6:.0f} ms "
            "(a clock in the cluster is wrong)"
        )
        self.timestamp = timestamp
        self.physical_ns = physical_ns
        self.max_offset_ns = max_offset_ns
        self.node_id = node_id
        self.retry_after = 0.5


class NotFound(RangeKVError):
    """What an admin request names does not exist (a range id, a node id)."""

    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(RangeKVError):
    """An admin request that the cluster's current state makes pointless or impossible."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unimplemented(RangeKVError):
    """An operation this version declares but does not carry out yet."""

    code = grpc.StatusCode.UNIMPLEMENTED


class InternalError(RangeKVError):
    code = grpc.StatusCode.INTERNAL


class Unauthenticated(RangeKVError):
    """The caller presented no identity this cluster knows (see rangekv.common.auth)."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(RangeKVError):
    """The caller's identity lacks the role the method needs (see rangekv.common.auth)."""

    code = grpc.StatusCode.PERMISSION_DENIED


# --- in-band: rangekv.v1.ReplicaError ------------------------------------------------


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def _outcome_pb(outcome: int) -> errors_pb2.WriteOutcome:
    return cast(errors_pb2.WriteOutcome, int(outcome))


def _descriptor_or_none(pb: types_pb2.RangeDescriptor) -> RangeDescriptor | None:
    return RangeDescriptor.from_proto(pb) if pb.range_id else None


def to_replica_error(exc: RangeKVError) -> errors_pb2.ReplicaError:
    """The in-band wire form of an error a replica answers with."""
    if isinstance(exc, NotLeaseHolder):
        nlh = errors_pb2.NotLeaseHolderError(
            range_id=exc.range_id,
            leaseholder_address=exc.leaseholder_address,
            lease_sequence=exc.lease_sequence,
        )
        if exc.leaseholder is not None:
            nlh.leaseholder.CopyFrom(exc.leaseholder.to_proto())
        if exc.descriptor is not None:
            nlh.descriptor.CopyFrom(exc.descriptor.to_proto())
        return errors_pb2.ReplicaError(not_lease_holder=nlh)
    if isinstance(exc, RangeKeyMismatch):
        return errors_pb2.ReplicaError(
            range_key_mismatch=errors_pb2.RangeKeyMismatchError(
                requested_range_id=exc.requested_range_id,
                descriptors=[d.to_proto() for d in exc.descriptors],
            )
        )
    if isinstance(exc, RangeNotFound):
        return errors_pb2.ReplicaError(
            range_not_found=errors_pb2.RangeNotFoundError(
                range_id=exc.range_id, node_id=exc.node_id
            )
        )
    if isinstance(exc, InvalidArgument):
        return errors_pb2.ReplicaError(
            invalid_argument=errors_pb2.InvalidArgumentError(field=exc.field, message=exc.reason)
        )
    if isinstance(exc, IntentExists):
        return errors_pb2.ReplicaError(
            intent_exists=errors_pb2.IntentExistsError(key=exc.key, txn=exc.txn)
        )
    if isinstance(exc, FenceLost):
        return errors_pb2.ReplicaError(
            fence_lost=errors_pb2.FenceLostError(fence_id=exc.fence_id, reason=exc.reason)
        )
    if isinstance(exc, ClockOffset):
        return errors_pb2.ReplicaError(
            clock_offset=errors_pb2.ClockOffsetError(
                timestamp=exc.timestamp,
                physical_nanos=exc.physical_ns,
                max_offset_nanos=exc.max_offset_ns,
                node_id=exc.node_id,
            )
        )
    if isinstance(exc, ResourceExhausted):
        return errors_pb2.ReplicaError(
            resource_exhausted=errors_pb2.ResourceExhaustedError(
                message=exc.message,
                retry_after=_duration(exc.retry_after),
                answer_too_large=exc.answer_too_large,
            )
        )
    retry_after = exc.retry_after if isinstance(exc, Unavailable) else 0.1
    outcome = exc.outcome if isinstance(exc, Unavailable | DeadlineExceeded) else 0
    return errors_pb2.ReplicaError(
        unavailable=errors_pb2.UnavailableError(
            message=exc.message,
            retry_after=_duration(retry_after),
            outcome=_outcome_pb(outcome),
        )
    )


def from_replica_error(pb: errors_pb2.ReplicaError) -> RangeKVError:
    """The exception an in-band ReplicaError stands for."""
    kind = pb.WhichOneof("error")
    if kind == "not_lease_holder":
        e = pb.not_lease_holder
        leaseholder = ReplicaDescriptor.from_proto(e.leaseholder) if e.leaseholder.node_id else None
        return NotLeaseHolder(
            e.range_id,
            leaseholder,
            e.leaseholder_address,
            e.lease_sequence,
            _descriptor_or_none(e.descriptor),
        )
    if kind == "range_key_mismatch":
        m = pb.range_key_mismatch
        return RangeKeyMismatch(
            m.requested_range_id, tuple(RangeDescriptor.from_proto(d) for d in m.descriptors)
        )
    if kind == "range_not_found":
        return RangeNotFound(pb.range_not_found.range_id, pb.range_not_found.node_id)
    if kind == "invalid_argument":
        return InvalidArgument(pb.invalid_argument.field, pb.invalid_argument.message)
    if kind == "intent_exists":
        return IntentExists(pb.intent_exists.key, pb.intent_exists.txn)
    if kind == "fence_lost":
        return FenceLost(pb.fence_lost.fence_id, pb.fence_lost.reason)
    if kind == "clock_offset":
        c = pb.clock_offset
        return ClockOffset(c.timestamp, c.physical_nanos, c.max_offset_nanos, c.node_id)
    if kind == "resource_exhausted":
        r = pb.resource_exhausted
        return ResourceExhausted(
            r.message, r.retry_after.ToNanoseconds() / 1e9, answer_too_large=r.answer_too_large
        )
    if kind == "unavailable":
        u = pb.unavailable
        return Unavailable(
            u.message, u.retry_after.ToNanoseconds() / 1e9, WriteOutcome(u.outcome or 1)
        )
    return InternalError(f"unrecognised replica error: {pb}")


# --- out-of-band: gRPC status with google.rpc.Status details -------------------------


def _pack(msg: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(msg)  # type: ignore[arg-type]
    return packed


def to_rpc_status(exc: RangeKVError) -> grpc.Status:
    """The gRPC status (with structured details) a server aborts a call with."""
    return rpc_status.to_status(to_status_proto(exc))


def to_status_proto(exc: RangeKVError) -> status_pb2.Status:
    """The google.rpc.Status of ``exc``: code, message and structured details."""
    details: list[any_pb2.Any] = []
    if isinstance(exc, InvalidArgument):
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=exc.field, description=exc.reason
                        )
                    ]
                )
            )
        )
    if isinstance(exc, Unavailable | ResourceExhausted | FenceLost | ClockOffset):
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=_duration(exc.retry_after))))
    if isinstance(exc, Unavailable | DeadlineExceeded) and exc.outcome:
        details.append(_pack(errors_pb2.RequestOutcomeDetail(outcome=_outcome_pb(exc.outcome))))
    if isinstance(exc, NotLeader):
        details.append(
            _pack(
                errors_pb2.NotLeaderError(
                    leader_node_id=exc.leader_node_id,
                    leader_address=exc.leader_address,
                    term=exc.term,
                )
            )
        )
    if isinstance(exc, RoutingError):
        details.append(_pack(to_replica_error(exc)))
    if isinstance(exc, ConditionFailed):
        cond = errors_pb2.ConditionFailedError(key=exc.key)
        if exc.actual is not None:
            cond.actual.CopyFrom(exc.actual.to_proto())
        details.append(_pack(cond))
    if isinstance(exc, IntentExists):
        details.append(_pack(errors_pb2.IntentExistsError(key=exc.key, txn=exc.txn)))
    code = exc.code.value[0]
    return status_pb2.Status(code=code, message=exc.message, details=details)


_CODES: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


def _status_details(err: grpc.RpcError) -> status_pb2.Status | None:
    trailing = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    return None


def from_rpc_error(err: grpc.RpcError, *, is_write: bool = False) -> RangeKVError:
    """The exception a failed gRPC call stands for (client side)."""
    code: grpc.StatusCode = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message: str = (err.details() if hasattr(err, "details") else "") or str(code)
    return _from_status(code, message, _status_details(err), is_write)


def from_status_proto(status: status_pb2.Status, *, is_write: bool = False) -> RangeKVError:
    """The exception a google.rpc.Status stands for (a KV/Stream answer, client side).

    ``is_write``: without a RequestOutcomeDetail, a failed write's outcome is UNKNOWN."""
    code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    return _from_status(code, status.message or code.name, status, is_write)


def _from_status(  # noqa: C901, PLR0912 -- the one mapping from wire errors back to exceptions, every code in one place
    code: grpc.StatusCode, message: str, status: status_pb2.Status | None, is_write: bool
) -> RangeKVError:
    retry_after = 0.1
    outcome = WriteOutcome.UNKNOWN if is_write else WriteOutcome.UNSPECIFIED
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                retry_after = info.retry_delay.ToNanoseconds() / 1e9
            elif detail.Is(errors_pb2.RequestOutcomeDetail.DESCRIPTOR):
                out = errors_pb2.RequestOutcomeDetail()
                detail.Unpack(out)
                outcome = WriteOutcome(out.outcome)
            elif detail.Is(errors_pb2.NotLeaderError.DESCRIPTOR):
                nl = errors_pb2.NotLeaderError()
                detail.Unpack(nl)
                return NotLeader(nl.leader_node_id, nl.leader_address, nl.term)
            elif detail.Is(errors_pb2.ReplicaError.DESCRIPTOR):
                rep = errors_pb2.ReplicaError()
                detail.Unpack(rep)
                return from_replica_error(rep)
            elif detail.Is(errors_pb2.ConditionFailedError.DESCRIPTOR):
                cf = errors_pb2.ConditionFailedError()
                detail.Unpack(cf)
                return ConditionFailed(cf.key, _descriptor_or_none(cf.actual))
            elif detail.Is(errors_pb2.IntentExistsError.DESCRIPTOR):
                ie = errors_pb2.IntentExistsError()
                detail.Unpack(ie)
                return IntentExists(ie.key, ie.txn)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                br = error_details_pb2.BadRequest()
                detail.Unpack(br)
                if br.field_violations:
                    v = br.field_violations[0]
                    return InvalidArgument(v.field, v.description)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument("", message)
    if code == grpc.StatusCode.ABORTED:
        # The one ABORTED without an IntentExistsError detail: a scan lost its snapshot.
        lost = FenceLost(b"", message, retry_after)
        lost.message = message  # already says what was lost; not wrapped twice
        lost.args = (message,)
        return lost
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(message)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return FailedPrecondition(message)
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return Unimplemented(message)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(message, outcome)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(message, retry_after)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN):
        return Unavailable(message, retry_after, outcome)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(message)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(message)
    return InternalError(f"{code.name}: {message}")


__all__ = [
    "ClockOffset",
    "ConditionFailed",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FenceLost",
    "IntentExists",
    "InternalError",
    "InvalidArgument",
    "NotFound",
    "NotLeader",
    "NotLeaseHolder",
    "PermissionDenied",
    "RangeKVError",
    "RangeKeyMismatch",
    "RangeNotFound",
    "ResourceExhausted",
    "RoutingError",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "WriteOutcome",
    "from_replica_error",
    "from_rpc_error",
    "from_status_proto",
    "to_replica_error",
    "to_rpc_status",
    "to_status_proto",
]
