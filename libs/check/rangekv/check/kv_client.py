"""Operations sent to the public KV API (rangekv.v1.KV), recorded into a history.

The integration tests and the chaos harness drive real gateways and check
what they saw with `check_history`. What a client may claim about an
operation that failed is subtle, and must be the same everywhere:

* a failed read (GET or SCAN, even one that streamed some rows first) has
  no effect: FAIL;
* a failed write is FAIL only when the gateway says nothing was written -
  INVALID_ARGUMENT or RESOURCE_EXHAUSTED (input refused), or UNAVAILABLE /
  DEADLINE_EXCEEDED carrying WRITE_OUTCOME_NOT_APPLIED. Anything else (our own
  deadline, a broken stream, WRITE_OUTCOME_UNKNOWN) may have applied: UNKNOWN.
"""

from __future__ import annotations

import grpc

from rangekv.check.history import HistoryRecorder, Operation, OpKind, Outcome
from rangekv.common import errors as E
from rangekv.v1 import kv_pb2, kv_pb2_grpc

_INPUT_REFUSED = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)


def failed_outcome(kind: OpKind, err: grpc.aio.AioRpcError) -> Outcome:
    """What a client can know of an operation the gateway answered with `err`."""
    if kind in (OpKind.GET, OpKind.SCAN) or err.code() in _INPUT_REFUSED:
        return Outcome.FAIL
    exc = E.from_rpc_error(err, is_write=True)
    applied = exc.outcome if isinstance(exc, E.Unavailable | E.DeadlineExceeded) else None
    return Outcome.FAIL if applied == E.WriteOutcome.NOT_APPLIED else Outcome.UNKNOWN


async def recorded_op(
    cid: int,
    kv: kv_pb2_grpc.KVStub,
    rec: HistoryRecorder,
    kind: OpKind,
    key: bytes,
    value: bytes | None = None,
    expected: bytes | None = None,
    *,
    timeout: float,
) -> tuple[Operation, grpc.aio.AioRpcError | None]:
    """Send one operation through a gateway and record it; returns it and its error.

    CAS: `expected=None` means "expect absent"; a refused CAS records the
    current value it reported, so the checker can use what the client saw.
    """
    handle = rec.invoke(cid, kind, key, value=value, expected=expected)
    try:
        if kind is OpKind.GET:
            got = await kv.Get(kv_pb2.GetRequest(key=key), timeout=timeout)
            return rec.ok(handle, read=got.kv.value if got.found else None), None
        if kind is OpKind.PUT:
            await kv.Put(kv_pb2.PutRequest(key=key, value=value), timeout=timeout)
            return rec.ok(handle), None
        if kind is OpKind.DELETE:
            deleted = await kv.Delete(kv_pb2.DeleteRequest(key=key), timeout=timeout)
            return rec.ok(handle, succeeded=deleted.deleted), None
        req = kv_pb2.CompareAndSwapRequest(
            key=key, expected_value=expected or b"", expect_absent=expected is None, new_value=value
        )
        res = await kv.CompareAndSwap(req, timeout=timeout)
        seen = res.current.value if not res.succeeded and res.HasField("current") else None
        return rec.ok(handle, succeeded=res.succeeded, read=seen), None
    except grpc.aio.AioRpcError as err:
        if failed_outcome(kind, err) is Outcome.FAIL:
            return rec.fail(handle), err
        return rec.unknown(handle), err


async def recorded_scan(
    cid: int,
    kv: kv_pb2_grpc.KVStub,
    rec: HistoryRecorder,
    start: bytes,
    end: bytes | None = None,
    limit: int = 0,
    *,
    timeout: float,
) -> tuple[Operation, grpc.aio.AioRpcError | None]:
    """Scan ``[start, end)`` through a gateway and record it; returns it and its error.

    ``end=None`` is unbounded (sent as the wire's empty ``end_key``);
    ``limit=0`` means no limit.  A scan that returned ``limit`` rows is
    recorded as cut short (its span ends just after its last row), so it
    claims nothing about the keys it did not reach.  The rows of every
    streamed response are one scan: one read timestamp, one instant.
    """
    handle = rec.invoke(cid, OpKind.SCAN, start, end=end)
    rows: list[tuple[bytes, bytes]] = []
    try:
        request = kv_pb2.ScanRequest(start_key=start, end_key=end or b"", limit=limit)
        async for resp in kv.Scan(request, timeout=timeout):
            rows.extend((item.key, item.value) for item in resp.kvs)
    except grpc.aio.AioRpcError as err:
        return rec.fail(handle), err
    return rec.ok(handle, rows=rows, truncated=0 < limit <= len(rows)), None


__all__ = ["failed_outcome", "recorded_op", "recorded_scan"]
