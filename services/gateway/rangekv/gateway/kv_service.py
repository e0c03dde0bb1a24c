"""rangekv.v1.KV: the public API, served by every gateway.

Input is validated here, before anything is sent, so a bad request gets
INVALID_ARGUMENT and nothing is written (a Batch with one bad operation is
refused whole). Everything else is the DistSender's; its RangeKVErrors become
gRPC statuses once, in the server's interceptor.

KV/Stream carries the same operations on one long-lived call; its session
(rangekv.gateway.kv_stream) runs each request through :meth:`KVService.serve`,
the same validation, admission and operations as the unary calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from rangekv.common import errors as E
from rangekv.common.auth import current_caller
from rangekv.common.certs import Role
from rangekv.domain.limits import MAX_BATCH_OPS, KeyValueLimits
from rangekv.gateway.dist_sender import DistSender
from rangekv.gateway.kv_stream import StreamLimits, StreamSession, StreamStats
from rangekv.v1 import kv_pb2, kv_pb2_grpc, replica_pb2

#: Operations one client Batch may carry. Admitted alone (`Admission` lets any call in
#: when nothing is in flight), its operations may all land in one node batch, so it
#: is the node's limit.
MAX_BATCH = MAX_BATCH_OPS


@dataclass(frozen=True, slots=True)
class KVLimits:
    kv: KeyValueLimits = field(default_factory=KeyValueLimits)
    #: Operations in flight at once (a Batch counts each of its operations);
    #: past it new calls are refused with RESOURCE_EXHAUSTED, nothing written.
    max_inflight_ops: int = MAX_BATCH_OPS


class Admission:
    """The gateway's budget of operations in flight: what is not admitted is
    refused at once (RESOURCE_EXHAUSTED + RetryInfo) instead of queued without
    bound behind the ones being served."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.inflight = 0
        self.refused = 0

    def enter(self, ops: int = 1) -> None:
        if self.inflight + ops > self.limit and self.inflight:
            self.refused += 1
            raise E.ResourceExhausted(
                f"the gateway is serving {self.inflight} operations, its limit is "
                f"{self.limit}; retry shortly",
                retry_after=0.05,
            )
        self.inflight += ops

    def leave(self, ops: int = 1) -> None:
        self.inflight -= ops


#: The operations a Batch item (and a KV/Stream request) may carry, by oneof name.
ITEM_KINDS = ("get", "put", "delete", "compare_and_swap")


class KVService(kv_pb2_grpc.KVServicer):
    def __init__(
        self,
        sender: DistSender,
        limits: KVLimits | None = None,
        stream_limits: StreamLimits | None = None,
    ) -> None:
        self._sender = sender
        self._limits = limits or KVLimits()
        self.admission = Admission(self._limits.max_inflight_ops)
        self.stream_limits = stream_limits or StreamLimits()
        self.stream_stats = StreamStats()
        self._calls: dict[str, Callable[[Any, float | None], Awaitable[Any]]] = {
            "get": self._get,
            "put": self._put,
            "delete": self._delete,
            "compare_and_swap": self._cas,
        }

    # --- validation -----------------------------------------------------------------

    def _key(self, field: str, key: bytes) -> None:
        self._limits.kv.check_key(field, key)

    def _value(self, field: str, value: bytes) -> None:
        self._limits.kv.check_value(field, value)

    def _check_item(self, prefix: str, item: kv_pb2.BatchRequestItem) -> str:
        kind = item.WhichOneof("request")
        if kind is None:
            raise E.InvalidArgument(prefix, "operation not set")
        body = getattr(item, kind)
        self._key(f"{prefix}.{kind}.key", body.key)
        if kind == "put":
            self._value(f"{prefix}.put.value", body.value)
        elif kind == "compare_and_swap":
            self._value(f"{prefix}.compare_and_swap.new_value", body.new_value)
            self._value(f"{prefix}.compare_and_swap.expected_value", body.expected_value)
        return kind

    # --- operations -----------------------------------------------------------------

    async def _get(
        self, req: kv_pb2.GetRequest, timeout: float | None = None
    ) -> kv_pb2.GetResponse:
        inconsistent = req.consistency == kv_pb2.READ_CONSISTENCY_INCONSISTENT
        op = replica_pb2.ReplicaOp(get=replica_pb2.GetOp(key=req.key))
        reply = await self._sender.send(
            req.key, op, is_write=False, inconsistent=inconsistent, timeout=timeout
        )
        res = reply.results[0].get
        return kv_pb2.GetResponse(found=res.found, kv=res.kv if res.found else None)

    async def _put(
        self, req: kv_pb2.PutRequest, timeout: float | None = None
    ) -> kv_pb2.PutResponse:
        op = replica_pb2.ReplicaOp(put=replica_pb2.PutOp(key=req.key, value=req.value))
        reply = await self._sender.send(req.key, op, is_write=True, timeout=timeout)
        return kv_pb2.PutResponse(version=reply.results[0].put.version)

    async def _delete(
        self, req: kv_pb2.DeleteRequest, timeout: float | None = None
    ) -> kv_pb2.DeleteResponse:
        op = replica_pb2.ReplicaOp(delete=replica_pb2.DeleteOp(key=req.key))
        reply = await self._sender.send(req.key, op, is_write=True, timeout=timeout)
        res = reply.results[0].delete
        return kv_pb2.DeleteResponse(deleted=res.deleted, version=res.version)

    async def _cas(
        self, req: kv_pb2.CompareAndSwapRequest, timeout: float | None = None
    ) -> kv_pb2.CompareAndSwapResponse:
        op = replica_pb2.ReplicaOp(
            compare_and_swap=replica_pb2.CompareAndSwapOp(
                key=req.key,
                expected_value=req.expected_value,
                expect_absent=req.expect_absent,
                new_value=req.new_value,
            )
        )
        reply = await self._sender.send(req.key, op, is_write=True, timeout=timeout)
        res = reply.results[0].compare_and_swap
        current = res.current if res.HasField("current") else None
        return kv_pb2.CompareAndSwapResponse(succeeded=res.succeeded, current=current)

    # --- RPCs -----------------------------------------------------------------------

    async def Get(
        self, request: kv_pb2.GetRequest, context: grpc.aio.ServicerContext
    ) -> kv_pb2.GetResponse:
        self._key("key", request.key)
        self.admission.enter()
        try:
            return await self._get(request)
        finally:
            self.admission.leave()

    async def Put(
        self, request: kv_pb2.PutRequest, context: grpc.aio.ServicerContext
    ) -> kv_pb2.PutResponse:
        self._key("key", request.key)
        self._value("value", request.value)
        self.admission.enter()
        try:
            return await self._put(request)
        finally:
            self.admission.leave()

    async def Delete(
        self, request: kv_pb2.DeleteRequest, context: grpc.aio.ServicerContext
    ) -> kv_pb2.DeleteResponse:
        self._key("key", request.key)
        self.admission.enter()
        try:
            return await self._delete(request)
        finally:
            self.admission.leave()

    async def CompareAndSwap(
        self, request: kv_pb2.CompareAndSwapRequest, context: grpc.aio.ServicerContext
    ) -> kv_pb2.CompareAndSwapResponse:
        self._key("key", request.key)
        self._value("new_value", request.new_value)
        self._value("expected_value", request.expected_value)
        self.admission.enter()
        try:
            return await self._cas(request)
        finally:
            self.admission.leave()

    async def Scan(
        self, request: kv_pb2.ScanRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[kv_pb2.ScanResponse]:
        async for chunk in self.scan(request):
            yield chunk

    async def scan(
        self, request: kv_pb2.ScanRequest, timeout: float | None = None
    ) -> AsyncIterator[kv_pb2.ScanResponse]:
        """A Scan's chunks, validated and admitted like the RPC (also for in-process use)."""
        if request.limit < 0:
            raise E.InvalidArgument("limit", "must be >= 0 (0 means no limit)")
        if request.end_key and request.end_key <= request.start_key:
            raise E.InvalidArgument("end_key", "must be greater than start_key (or empty)")
        inconsistent = request.consistency == kv_pb2.READ_CONSISTENCY_INCONSISTENT
        self.admission.enter()
        try:
            async for kvs, read_ts in self._sender.scan(
                request.start_key,
                request.end_key,
                request.limit,
                inconsistent=inconsistent,
                timeout=timeout,
            ):
                yield kv_pb2.ScanResponse(kvs=kvs, read_timestamp=read_ts)
        finally:
            self.admission.leave()

    async def Batch(
        self, request: kv_pb2.BatchRequest, context: grpc.aio.ServicerContext
    ) -> kv_pb2.BatchResponse:
        return await self._batch(request, self.check_batch(request), None)

    def check_batch(self, request: kv_pb2.BatchRequest) -> list[str]:
        """Validate a Batch whole (nothing is sent unless every item is fine); its kinds."""
        if len(request.requests) > MAX_BATCH:
            raise E.InvalidArgument("requests", f"at most {MAX_BATCH} operations")
        return [self._check_item(f"requests[{i}]", r) for i, r in enumerate(request.requests)]

    async def _batch(
        self, request: kv_pb2.BatchRequest, kinds: list[str], timeout: float | None
    ) -> kv_pb2.BatchResponse:
        calls = self._calls
        ops = max(1, len(kinds))
        self.admission.enter(ops)
        try:
            results = await asyncio.gather(
                *(
                    calls[k](getattr(r, k), timeout)
                    for k, r in zip(kinds, request.requests, strict=True)
                ),
                return_exceptions=True,
            )
        finally:
            self.admission.leave(ops)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise _batch_failure(kinds, results, failures)
        items = [
            kv_pb2.BatchResponseItem(**{kind: res})  # type: ignore[arg-type]
            for kind, res in zip(kinds, results, strict=True)
        ]
        return kv_pb2.BatchResponse(responses=items)

    # --- KV/Stream ----------------------------------------------------------------------

    async def serve(self, kind: str, body: Any, timeout: float | None) -> Any:
        """One KV/Stream request, exactly as its unary call: validated, the caller's
        role checked for writes, admitted, run (``kind``: a StreamRequestItem oneof
        name; ``timeout``: None for the gateway's own). Raises what the call would."""
        # The role first, as the interceptor checks a unary call's before its input.
        if kind == "batch":
            if any(item.WhichOneof("request") not in (None, "get") for item in body.requests):
                _require_write("a Batch with writes")
            return await self._batch(body, self.check_batch(body), timeout)
        if kind != "get":
            _require_write(_OP_NAMES[kind])
        self._key("key", body.key)
        if kind == "put":
            self._value("value", body.value)
        elif kind == "compare_and_swap":
            self._value("new_value", body.new_value)
            self._value("expected_value", body.expected_value)
        self.admission.enter()
        try:
            return await self._calls[kind](body, timeout)
        finally:
            self.admission.leave()

    async def Stream(
        self,
        request_iterator: AsyncIterator[kv_pb2.StreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[kv_pb2.StreamResponse]:
        session = StreamSession(self.serve, self.stream_limits, self.stream_stats)
        async for frame in session.run(request_iterator):
            yield frame


_OP_NAMES = {"put": "Put", "delete": "Delete", "compare_and_swap": "CompareAndSwap"}


def _require_write(what: str) -> None:
    caller = current_caller()
    if caller is not None:
        caller.require(Role.WRITE, what)


def _batch_failure(
    kinds: list[str], results: list[Any], failures: list[BaseException]
) -> BaseException:
    """The error a failed Batch answers with, honest about what may have been written.

    Operations run independently, so when one fails another write may already
    be applied; then the batch's outcome is UNKNOWN, never NOT_APPLIED (which
    would invite a retry that applies that write twice).
    """
    first = failures[0]
    applied_write = any(
        k != "get" and not isinstance(r, BaseException) for k, r in zip(kinds, results, strict=True)
    )
    unknown = any(
        isinstance(f, E.Unavailable | E.DeadlineExceeded) and f.outcome == E.WriteOutcome.UNKNOWN
        for f in failures
    )
    if applied_write or unknown:
        why = first.message if isinstance(first, E.RangeKVError) else str(first)
        return E.Unavailable(
            f"batch partly failed ({why}); some of its writes may have been applied",
            outcome=E.WriteOutcome.UNKNOWN,
        )
    return first
