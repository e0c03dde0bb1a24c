"""rangekv.client's Client: values, and retrying only what is safe, within the deadline.

`MemoryKV` is the in-memory twin of a transport: a dict answering the unary
calls' response protos, with failures scripted per call. The clock and the
sleep are injected, so backoffs are counted, never waited.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from rangekv.client import CasResult, Client, CompareAndSwap, Delete, Get, Put, RetryPolicy
from rangekv.client.values import KeyValue, Version
from rangekv.common import errors as E
from rangekv.v1 import kv_pb2, types_pb2


class MemoryKV:
    """A KVTransport over a dict; `fail` holds exceptions raised by the next calls."""

    def __init__(self) -> None:
        self.data: dict[bytes, tuple[bytes, int]] = {}
        self.fail: list[E.RangeKVError] = []
        self.calls: list[str] = []
        self.clock = 0
        self.scan_fail: list[E.RangeKVError] = []
        self.closed = False

    def _kv(self, key: bytes) -> types_pb2.KeyValue | None:
        if key not in self.data:
            return None
        value, wall = self.data[key]
        return types_pb2.KeyValue(key=key, value=value, version=types_pb2.Timestamp(wall_time=wall))

    def _write(self, key: bytes, value: bytes) -> types_pb2.Timestamp:
        self.clock += 1
        self.data[key] = (value, self.clock)
        return types_pb2.Timestamp(wall_time=self.clock)

    def _one(self, kind: str, m: Any) -> Any:
        if kind == "get":
            kv = self._kv(m.key)
            return kv_pb2.GetResponse(found=kv is not None, kv=kv)
        if kind == "put":
            return kv_pb2.PutResponse(version=self._write(m.key, m.value))
        if kind == "delete":
            existed = self.data.pop(m.key, None) is not None
            return kv_pb2.DeleteResponse(deleted=existed)
        if kind == "compare_and_swap":
            current = self._kv(m.key)
            ok = (
                current is None
                if m.expect_absent
                else (current is not None and current.value == m.expected_value)
            )
            if ok:
                self._write(m.key, m.new_value)
                current = self._kv(m.key)
            return kv_pb2.CompareAndSwapResponse(succeeded=ok, current=current)
        raise AssertionError(kind)

    async def call(self, kind: str, message: Any, timeout: float) -> Any:
        self.calls.append(kind)
        assert timeout > 0
        if self.fail:
            raise self.fail.pop(0)
        if kind == "batch":
            items = []
            for item in message.requests:
                k = item.WhichOneof("request")
                items.append(kv_pb2.BatchResponseItem(**{k: self._one(k, getattr(item, k))}))
            return kv_pb2.BatchResponse(responses=items)
        return self._one(kind, message)

    async def scan(
        self, request: kv_pb2.ScanRequest, timeout: float
    ) -> AsyncIterator[kv_pb2.ScanResponse]:
        self.calls.append("scan")
        keys = sorted(k for k in self.data if k >= request.start_key)
        for n, key in enumerate(keys):
            if self.scan_fail and n == len(keys) // 2:
                raise self.scan_fail.pop(0)
            kv = self._kv(key)
            assert kv is not None
            yield kv_pb2.ScanResponse(kvs=[kv])

    async def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def client(kv: MemoryKV, clock: Clock, **kw: Any) -> Client:
    return Client(kv, rng=random.Random(7), monotonic=clock.monotonic, sleep=clock.sleep, **kw)


async def test_the_operations_answer_plain_values() -> None:
    kv = MemoryKV()
    async with client(kv, Clock()) as c:
        assert await c.get(b"a") is None
        v1 = await c.put(b"a", b"1")
        assert v1 == Version(1) and await c.get(b"a") == KeyValue(b"a", b"1", Version(1))
        assert await c.cas(b"a", b"2", expected=b"x") == CasResult(
            False, KeyValue(b"a", b"1", Version(1))
        )
        assert (await c.cas(b"a", b"2", expected=b"1")).succeeded
        assert (await c.cas(b"b", b"new", expected=None)).current == KeyValue(
            b"b", b"new", Version(3)
        )
        assert await c.delete(b"b") is True and await c.delete(b"b") is False
        out = await c.batch(
            [Put(b"c", b"3"), Get(b"a"), Delete(b"zz"), CompareAndSwap(b"c", b"4", b"3")]
        )
        assert out[0] == Version(4) and out[1] == KeyValue(b"a", b"2", Version(2))
        assert out[2] is False and isinstance(out[3], CasResult) and out[3].succeeded
        assert [row.key async for row in c.scan(b"a")] == [b"a", b"c"]
    assert kv.closed


async def test_reads_are_retried_after_unavailable_and_overload() -> None:
    kv, clock = MemoryKV(), Clock()
    kv.fail = [
        E.Unavailable("no leaseholder", retry_after=0.2, outcome=E.WriteOutcome.UNKNOWN),
        E.ResourceExhausted("busy", retry_after=0.05),
    ]
    c = client(kv, clock)
    assert await c.get(b"a") is None
    assert kv.calls == ["get", "get", "get"] and c.retries == 2
    # The server's RetryInfo sets the wait (jittered x[0.5, 1.5)).
    assert 0.1 <= clock.slept[0] < 0.3 and 0.025 <= clock.slept[1] < 0.075


async def test_a_write_is_retried_only_when_it_was_not_applied() -> None:
    kv, clock = MemoryKV(), Clock()
    c = client(kv, clock)
    kv.fail = [E.Unavailable("stream broke before sending", outcome=E.WriteOutcome.NOT_APPLIED)]
    assert await c.put(b"a", b"1") == Version(1)
    kv.fail = [E.ResourceExhausted("admission")]
    assert await c.put(b"a", b"2") == Version(2)
    for unknown in (
        E.Unavailable("stream broke after sending", outcome=E.WriteOutcome.UNKNOWN),
        E.DeadlineExceeded("in flight", E.WriteOutcome.UNKNOWN),
    ):
        kv.fail = [unknown]
        kv.calls.clear()
        with pytest.raises(type(unknown)) as raised:
            await c.put(b"a", b"3")
        assert raised.value is unknown and kv.calls == ["put"]  # never sent twice
    kv.fail = [E.Unavailable("unknown", outcome=E.WriteOutcome.UNKNOWN)]
    with pytest.raises(E.Unavailable):
        await c.batch([Get(b"a"), Put(b"b", b"1")])  # a batch with a write is a write
    kv.fail = [E.Unavailable("unknown", outcome=E.WriteOutcome.UNKNOWN)]
    assert await c.batch([Get(b"a")]) == [KeyValue(b"a", b"2", Version(2))]  # reads only


async def test_refusals_are_never_retried() -> None:
    kv, clock = MemoryKV(), Clock()
    c = client(kv, clock)
    for refusal in (
        E.InvalidArgument("key", "must not be empty"),
        E.PermissionDenied("needs role write"),
        E.InternalError("a bug"),
        E.ResourceExhausted("too large", answer_too_large=True),
    ):
        kv.fail = [refusal]
        kv.calls.clear()
        with pytest.raises(type(refusal)):
            await c.get(b"a")
        assert kv.calls == ["get"]
    assert clock.slept == []


async def test_retries_stop_at_the_deadline_and_at_the_attempt_limit() -> None:
    kv, clock = MemoryKV(), Clock()
    c = client(kv, clock, timeout=1.0)
    kv.fail = [E.Unavailable("down", retry_after=0.3) for _ in range(100)]
    with pytest.raises(E.Unavailable):
        await c.get(b"a")
    assert clock.now < 1.0 and 2 <= len(kv.calls) <= 8
    kv, clock = MemoryKV(), Clock()
    c = client(kv, clock, retry=RetryPolicy(attempts=3))
    kv.fail = [E.Unavailable("down", retry_after=0.01) for _ in range(100)]
    with pytest.raises(E.Unavailable):
        await c.get(b"a", timeout=60)
    assert len(kv.calls) == 3


async def test_a_scan_restarts_only_before_its_first_row() -> None:
    kv, clock = MemoryKV(), Clock()
    c = client(kv, clock)
    for key in (b"a", b"b", b"c", b"d"):
        kv.data[key] = (b"v", 1)

    # Failing before anything was returned: retried, whole.
    async def failing_first() -> AsyncIterator[kv_pb2.ScanResponse]:
        raise E.FenceLost(b"", "lease moved")
        yield  # pragma: no cover

    first = kv.scan
    attempts = []

    def scan(request: kv_pb2.ScanRequest, timeout: float) -> AsyncIterator[kv_pb2.ScanResponse]:
        attempts.append(1)
        return failing_first() if len(attempts) == 1 else first(request, timeout)

    kv.scan = scan  # type: ignore[method-assign]
    assert [r.key async for r in c.scan()] == [b"a", b"b", b"c", b"d"]
    assert len(attempts) == 2
    kv.scan = first  # type: ignore[method-assign]
    kv.scan_fail = [E.FenceLost(b"", "lease moved")]
    seen = []
    with pytest.raises(E.FenceLost):
        async for row in c.scan():
            seen.append(row.key)
    assert seen == [b"a", b"b"]  # rows were returned: no restart, the caller is told
