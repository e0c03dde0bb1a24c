"""The client's one I/O seam: how a request reaches the cluster and its answer comes back.

A transport moves ``(kind, message)`` requests (see rangekv.client.values) and
answers the response proto of the unary call of the same name, or raises the
:class:`~rangekv.common.errors.RangeKVError` that call would have failed with.
For a write that failed, the exception says whether it may have been applied
(``Unavailable`` / ``DeadlineExceeded`` carry a ``WriteOutcome``); the client's
retry policy (rangekv.client.retry) relies on that and on nothing else.

Implementations: :class:`rangekv.client.gateway.GatewayTransport` (KV/Stream on
a few connections to a gateway) and :class:`rangekv.client.direct.DirectTransport`
(the gateway's own routing, in-process). Tests use an in-memory one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from rangekv.v1 import kv_pb2


class KVTransport(Protocol):
    async def call(self, kind: str, message: Any, timeout: float) -> Any:
        """Run one request within ``timeout`` seconds; its response proto."""
        ...

    def scan(
        self, request: kv_pb2.ScanRequest, timeout: float
    ) -> AsyncIterator[kv_pb2.ScanResponse]:
        """The chunks of a scan; ``timeout`` bounds each wait for the next chunk."""
        ...

    async def close(self) -> None: ...


__all__ = ["KVTransport"]
