"""Client: the asyncio API of rangekv for Python programs.

    async with await connect(ClientConfig(addr="127.0.0.1:50051"), security) as kv:
        await kv.put(b"k", b"v")
        found = await kv.get(b"k")          # KeyValue | None
        await kv.cas(b"k", b"w", expected=b"v")
        async for row in kv.scan(b"a", b"z"):
            ...

Every method may be called concurrently from many tasks: with the gateway
route, concurrent calls share one KV/Stream per connection (and its messages),
which is what makes the client cheap per operation. Each call has a deadline
(``timeout=``, else the config's) that bounds its retries too.

Errors are the exceptions of rangekv.common.errors, mapped from the answer's
status exactly as for the unary calls: InvalidArgument, PermissionDenied,
ResourceExhausted, Unavailable and DeadlineExceeded (with ``outcome``: whether a
write may have been applied), FenceLost (a scan's snapshot was lost after rows
were returned), InternalError. What is retried (only what is safe) is
rangekv.client.retry's rule; a write of unknown outcome never is.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from rangekv.client.retry import RetryPolicy
from rangekv.client.transport import KVTransport
from rangekv.client.values import (
    CasResult,
    KeyValue,
    Operation,
    Result,
    Version,
    batch_request,
    batch_results,
    cas_request,
    cas_result,
    get_request,
    get_result,
    is_write,
)
from rangekv.common import errors as E
from rangekv.v1 import kv_pb2


class Client:
    """get/put/delete/cas/batch/scan over a KVTransport, with deadlines and safe retries."""

    def __init__(
        self,
        transport: KVTransport,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        rng: random.Random | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """``rng`` jitters retry waits and ``sleep`` waits them out (injected, for tests)."""
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        self.transport = transport
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._rng = rng or random.Random()
        self._monotonic = monotonic
        self._sleep = sleep
        #: Requests sent again after a failure that made it safe (all operations).
        self.retries = 0

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.transport.close()

    # --- operations -----------------------------------------------------------------------

    async def get(
        self, key: bytes, *, consistent: bool = True, timeout: float | None = None
    ) -> KeyValue | None:
        """The key's value, or None. ``consistent=False``: any replica may answer
        from its applied state (possibly stale, never torn)."""
        resp = await self._run("get", get_request(key, consistent), timeout)
        return get_result(resp)

    async def put(self, key: bytes, value: bytes, *, timeout: float | None = None) -> Version:
        resp = await self._run("put", kv_pb2.PutRequest(key=key, value=value), timeout)
        return Version.from_proto(resp.version)

    async def delete(self, key: bytes, *, timeout: float | None = None) -> bool:
        """Whether the key existed."""
        resp = await self._run("delete", kv_pb2.DeleteRequest(key=key), timeout)
        return bool(resp.deleted)

    async def cas(
        self,
        key: bytes,
        new_value: bytes,
        *,
        expected: bytes | None,
        timeout: float | None = None,
    ) -> CasResult:
        """Write ``new_value`` only if the key holds ``expected`` (None: only if absent).
        A failed comparison is an answer (``succeeded`` False, the current value), not
        an error."""
        resp = await self._run("compare_and_swap", cas_request(key, new_value, expected), timeout)
        return cas_result(resp)

    async def batch(
        self, ops: Sequence[Operation], *, timeout: float | None = None
    ) -> list[Result]:
        """Several operations in one request, each linearizable on its own (not a
        transaction); validated together, so one bad operation refuses them all.
        Answers in order: KeyValue | None, Version, bool (deleted), CasResult."""
        resp = await self._run("batch", batch_request(ops), timeout)
        return batch_results(resp)

    async def scan(
        self,
        start: bytes = b"",
        end: bytes = b"",
        *,
        limit: int = 0,
        consistent: bool = True,
        timeout: float | None = None,
    ) -> AsyncIterator[KeyValue]:
        """The live keys of [start, end) in key order (``end`` b"": to the keyspace's
        end), at one consistent MVCC timestamp. ``timeout`` bounds each wait for the
        next chunk. Retried from the start if it fails before its first row."""
        request = kv_pb2.ScanRequest(
            start_key=start,
            end_key=end,
            limit=limit,
            consistency=kv_pb2.READ_CONSISTENCY_LINEARIZABLE
            if consistent
            else kv_pb2.READ_CONSISTENCY_INCONSISTENT,
        )
        budget = timeout or self.timeout
        deadline = self._monotonic() + budget
        attempt = 0
        while True:
            returned = False
            try:
                async for chunk in self.transport.scan(request, budget):
                    for kv in chunk.kvs:
                        returned = True
                        yield KeyValue.from_proto(kv)
                return
            except E.RangeKVError as exc:
                attempt += 1
                if returned or not await self._may_retry(exc, False, attempt, deadline):
                    raise

    # --- the retry loop ---------------------------------------------------------------------

    async def _run(self, kind: str, message: Any, timeout: float | None) -> Any:
        deadline = self._monotonic() + (timeout or self.timeout)
        attempt = 0
        while True:
            try:
                return await self.transport.call(kind, message, deadline - self._monotonic())
            except E.RangeKVError as exc:
                attempt += 1
                if not await self._may_retry(exc, is_write(kind, message), attempt, deadline):
                    raise

    async def _may_retry(
        self, exc: E.RangeKVError, write: bool, attempt: int, deadline: float
    ) -> bool:
        """Whether to try again after ``exc`` (having waited the backoff): retryable,
        attempts left, and time left for the wait and another try."""
        policy = self.retry
        if attempt >= policy.attempts or not policy.retryable(exc, write):
            return False
        delay = policy.delay(attempt, exc, self._rng)
        if self._monotonic() + delay >= deadline:
            return False
        self.retries += 1
        await self._sleep(delay)
        return True


__all__ = ["Client"]
