"""What the client takes and answers: plain frozen values, and their wire forms.

A caller never handles protobuf: keys and values are bytes, a read answers a
:class:`KeyValue` (or None), a write its :class:`Version`. The operations of a
batch are values too (:class:`Get`, :class:`Put`, :class:`Delete`,
:class:`CompareAndSwap`), so that a batch is a plain list.

Every request travels as ``(kind, message)``: ``kind`` is the name of the
operation's field in ``rangekv.v1.StreamRequestItem`` (``get``, ``put``,
``delete``, ``compare_and_swap``, ``batch``) and ``message`` the request proto of
the unary call of the same name. Transports (rangekv.client.transport) move those
pairs; this module builds and reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rangekv.v1 import kv_pb2, types_pb2

#: StreamRequestItem's operation fields that write.
WRITE_KINDS = frozenset({"put", "delete", "compare_and_swap"})


@dataclass(frozen=True, slots=True, order=True)
class Version:
    """The MVCC timestamp a value was written at (hybrid logical clock)."""

    wall_time: int
    logical: int = 0

    @staticmethod
    def from_proto(ts: types_pb2.Timestamp) -> Version:
        return Version(ts.wall_time, ts.logical)


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    version: Version

    @staticmethod
    def from_proto(kv: types_pb2.KeyValue) -> KeyValue:
        return KeyValue(kv.key, kv.value, Version(kv.version.wall_time, kv.version.logical))


@dataclass(frozen=True, slots=True)
class CasResult:
    """A compare-and-swap's answer: whether it wrote, and the key's value now
    (the value written when it succeeded; the value found, or None, when not)."""

    succeeded: bool
    current: KeyValue | None


# --- batch operations ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Get:
    key: bytes
    #: False: any replica may answer from its applied state (possibly stale).
    consistent: bool = True


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class Delete:
    key: bytes


@dataclass(frozen=True, slots=True)
class CompareAndSwap:
    key: bytes
    new_value: bytes
    #: The value the key must hold; None: the key must be absent.
    expected: bytes | None


Operation = Get | Put | Delete | CompareAndSwap
#: What a batch answers per operation, in order: KeyValue | None, Version, bool, CasResult.
Result = KeyValue | None | Version | bool | CasResult


# --- to the wire -----------------------------------------------------------------------


def get_request(key: bytes, consistent: bool = True) -> kv_pb2.GetRequest:
    return kv_pb2.GetRequest(
        key=key,
        consistency=kv_pb2.READ_CONSISTENCY_LINEARIZABLE
        if consistent
        else kv_pb2.READ_CONSISTENCY_INCONSISTENT,
    )


def cas_request(
    key: bytes, new_value: bytes, expected: bytes | None
) -> kv_pb2.CompareAndSwapRequest:
    return kv_pb2.CompareAndSwapRequest(
        key=key,
        new_value=new_value,
        expected_value=expected or b"",
        expect_absent=expected is None,
    )


def batch_request(ops: Sequence[Operation]) -> kv_pb2.BatchRequest:
    items = []
    for op in ops:
        if isinstance(op, Get):
            items.append(kv_pb2.BatchRequestItem(get=get_request(op.key, op.consistent)))
        elif isinstance(op, Put):
            items.append(kv_pb2.BatchRequestItem(put=kv_pb2.PutRequest(key=op.key, value=op.value)))
        elif isinstance(op, Delete):
            items.append(kv_pb2.BatchRequestItem(delete=kv_pb2.DeleteRequest(key=op.key)))
        elif isinstance(op, CompareAndSwap):
            req = cas_request(op.key, op.new_value, op.expected)
            items.append(kv_pb2.BatchRequestItem(compare_and_swap=req))
        else:
            raise TypeError(f"not a batch operation: {op!r}")
    return kv_pb2.BatchRequest(requests=items)


def is_write(kind: str, message: Any) -> bool:
    """Whether a request may change data (a batch: whether any of its items does)."""
    if kind == "batch":
        return any(item.WhichOneof("request") in WRITE_KINDS for item in message.requests)
    return kind in WRITE_KINDS


# --- from the wire ---------------------------------------------------------------------


def get_result(resp: kv_pb2.GetResponse) -> KeyValue | None:
    return KeyValue.from_proto(resp.kv) if resp.found else None


def cas_result(resp: kv_pb2.CompareAndSwapResponse) -> CasResult:
    current = KeyValue.from_proto(resp.current) if resp.HasField("current") else None
    return CasResult(resp.succeeded, current)


def batch_results(resp: kv_pb2.BatchResponse) -> list[Result]:
    out: list[Result] = []
    for item in resp.responses:
        kind = item.WhichOneof("response")
        if kind == "get":
            out.append(get_result(item.get))
        elif kind == "put":
            out.append(Version.from_proto(item.put.version))
        elif kind == "delete":
            out.append(item.delete.deleted)
        elif kind == "compare_and_swap":
            out.append(cas_result(item.compare_and_swap))
        else:
            raise ValueError(f"batch answer item without a result: {item}")
    return out


__all__ = [
    "WRITE_KINDS",
    "CasResult",
    "CompareAndSwap",
    "Delete",
    "Get",
    "KeyValue",
    "Operation",
    "Put",
    "Result",
    "Version",
    "batch_request",
    "batch_results",
    "cas_request",
    "get_request",
    "get_result",
    "is_write",
]
