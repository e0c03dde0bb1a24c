"""rangekv.client's stream connection: multiplexing, answers by id, breaks, deadlines, bounds.

The KV/Stream call is an in-memory twin (`FakeCall`): what the connection writes
is recorded, the test answers (or breaks the stream) as a gateway would.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from testkit.waiting import async_wait_for

from rangekv.client.stream_conn import ITEM_FRAMING, StreamConnection
from rangekv.common import errors as E
from rangekv.v1 import kv_pb2, types_pb2


class Broken(grpc.aio.AioRpcError):
    def __init__(self, details: str) -> None:
        super().__init__(
            grpc.StatusCode.UNAVAILABLE,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            details=details,
        )


class FakeCall:
    """One KV/Stream as the connection sees it."""

    def __init__(self) -> None:
        self.written: list[kv_pb2.StreamRequest] = []
        self.wrote = asyncio.Event()
        self._answers: asyncio.Queue[Any] = asyncio.Queue()
        self.cancelled = False

    async def write(self, request: kv_pb2.StreamRequest) -> None:
        self.written.append(request)
        self.wrote.set()

    async def read(self) -> Any:
        item = await self._answers.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self) -> bool:
        self.cancelled = True
        return True

    def answer(self, *items: kv_pb2.StreamResponseItem) -> None:
        self._answers.put_nowait(kv_pb2.StreamResponse(responses=list(items)))

    def end(self, error: BaseException | None = None) -> None:
        self._answers.put_nowait(error if error is not None else grpc.aio.EOF)

    def ids(self) -> list[int]:
        return [i.request_id for m in self.written for i in m.requests]


class Calls:
    """Opens FakeCalls and keeps them, newest last."""

    def __init__(self) -> None:
        self.opened: list[FakeCall] = []

    def __call__(self) -> FakeCall:
        call = FakeCall()
        self.opened.append(call)
        return call

    @property
    def last(self) -> FakeCall:
        return self.opened[-1]


def put_ok(rid: int) -> kv_pb2.StreamResponseItem:
    return kv_pb2.StreamResponseItem(
        request_id=rid, put=kv_pb2.PutResponse(version=types_pb2.Timestamp(wall_time=rid))
    )


async def until(cond: Any) -> None:
    await async_wait_for(cond, 5, "the condition", 0)


PUT = kv_pb2.PutRequest(key=b"k", value=b"v")
GET = kv_pb2.GetRequest(key=b"k")


async def test_concurrent_calls_share_a_message_and_get_their_own_answers() -> None:
    calls = Calls()
    conn = StreamConnection(calls)
    tasks = [asyncio.ensure_future(conn.call("put", PUT, 5.0)) for _ in range(3)]
    await until(lambda: calls.opened and calls.last.written)
    call = calls.last
    assert len(call.written) == 1 and call.ids() == [1, 2, 3]
    assert all(0 < i.timeout.ToNanoseconds() < 5e9 for i in call.written[0].requests)
    call.answer(put_ok(3), put_ok(1))
    call.answer(put_ok(2))
    results = await asyncio.gather(*tasks)
    assert [r.version.wall_time for r in results] == [1, 2, 3]
    assert len(calls.opened) == 1 and conn.waiting == 0
    await conn.close()


async def test_an_error_answer_is_the_unary_calls_exception() -> None:
    calls = Calls()
    conn = StreamConnection(calls)
    task = asyncio.ensure_future(conn.call("put", PUT, 5.0))
    await until(lambda: calls.opened and calls.last.written)
    status = E.to_status_proto(E.InvalidArgument("key", "must not be empty"))
    calls.last.answer(kv_pb2.StreamResponseItem(request_id=1, error=status))
    with pytest.raises(E.InvalidArgument) as refused:
        await task
    assert refused.value.field == "key"
    await conn.close()


async def test_a_broken_stream_fails_what_it_carried_and_the_next_call_reconnects() -> None:
    calls = Calls()
    conn = StreamConnection(calls)
    write = asyncio.ensure_future(conn.call("put", PUT, 5.0))
    read = asyncio.ensure_future(conn.call("get", GET, 5.0))
    await until(lambda: calls.opened and calls.last.written)
    calls.last.answer(put_ok(99))  # an answer came: the stream certainly connected
    calls.last.end(Broken("Socket closed"))
    with pytest.raises(E.Unavailable) as w:
        await write
    assert w.value.outcome == E.WriteOutcome.UNKNOWN  # it may have reached the gateway
    with pytest.raises(E.Unavailable) as r:
        await read
    assert r.value.outcome == E.WriteOutcome.NOT_APPLIED  # a read: safe to send again
    assert calls.last.cancelled
    again = asyncio.ensure_future(conn.call("put", PUT, 5.0))
    await until(lambda: len(calls.opened) == 2 and calls.last.written)
    calls.last.answer(put_ok(3))
    assert (await again).version.wall_time == 3
    await conn.close()


async def test_a_stream_that_never_connected_sent_nothing() -> None:
    calls = Calls()
    conn = StreamConnection(calls)
    write = asyncio.ensure_future(conn.call("put", PUT, 5.0))
    await until(lambda: calls.opened and calls.last.written)
    calls.last.end(Broken("failed to connect to all addresses; last error: connection refused"))
    with pytest.raises(E.Unavailable) as w:
        await write
    assert w.value.outcome == E.WriteOutcome.NOT_APPLIED
    await conn.close()


async def test_the_deadline_answers_even_if_the_gateway_does_not() -> None:
    calls = Calls()
    conn = StreamConnection(calls)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(E.DeadlineExceeded) as late:
        await conn.call("put", PUT, 0.05)
    assert loop.time() - started < 1.0
    assert late.value.outcome == E.WriteOutcome.UNKNOWN  # it was sent
    calls.last.answer(put_ok(1))  # a late answer finds nobody waiting, and harms nothing
    task = asyncio.ensure_future(conn.call("put", PUT, 5.0))
    await until(lambda: len(calls.last.written) == 2)
    calls.last.answer(put_ok(2))
    assert (await task).version.wall_time == 2
    await conn.close()


async def test_callers_beyond_the_bound_wait_for_room() -> None:
    calls = Calls()
    conn = StreamConnection(calls, max_inflight=2)
    first = [asyncio.ensure_future(conn.call("put", PUT, 5.0)) for _ in range(2)]
    third = asyncio.ensure_future(conn.call("put", PUT, 5.0))
    await until(lambda: calls.opened and len(calls.last.ids()) == 2)
    for _ in range(20):
        await asyncio.sleep(0)
    assert calls.last.ids() == [1, 2] and not third.done()
    calls.last.answer(put_ok(1))
    await until(lambda: len(calls.last.ids()) == 3)
    calls.last.answer(put_ok(2), put_ok(3))
    await asyncio.gather(*first, third)
    # No room before the deadline: DEADLINE_EXCEEDED, and certainly not applied.
    blockers = [asyncio.ensure_future(conn.call("put", PUT, 5.0)) for _ in range(2)]
    await until(lambda: conn.waiting == 2)
    with pytest.raises(E.DeadlineExceeded) as full:
        await conn.call("put", PUT, 0.05)
    assert full.value.outcome == E.WriteOutcome.NOT_APPLIED
    await conn.close()
    for b in blockers:
        with pytest.raises(E.Unavailable):
            await b


async def test_a_caller_that_gives_up_before_sending_sends_nothing() -> None:
    calls = Calls()
    conn = StreamConnection(calls)
    kept = asyncio.ensure_future(conn.call("put", PUT, 5.0))
    dropped = asyncio.ensure_future(conn.call("put", PUT, 5.0))
    dropped.cancel()
    await until(lambda: calls.opened and calls.last.written)
    assert calls.last.ids() == [1]
    calls.last.answer(put_ok(1))
    await kept
    await conn.close()


class HeldCall(FakeCall):
    """A stream whose first write takes until the test lets it end (a busy writer)."""

    def __init__(self) -> None:
        super().__init__()
        self.let_go = asyncio.Event()

    async def write(self, request: kv_pb2.StreamRequest) -> None:
        await super().write(request)
        if len(self.written) == 1:
            await self.let_go.wait()


@pytest.mark.parametrize(
    ("kind", "turns", "second"),
    [
        ("get", 16, [2, 3, 4, 5]),  # busy, reads only: the calls on their way join
        ("get", 0, [2, 3]),  # gathering off
        ("put", 16, [2, 3]),  # a write never waits
    ],
)
async def test_a_busy_writer_gathers_reads_only(kind: str, turns: int, second: list[int]) -> None:
    """Request 1 is being written while 2 and 3 are queued: the writer is busy. Calls
    4 and 5 start just as the write ends, so they are queued one event-loop turn later."""
    call = HeldCall()
    conn = StreamConnection(lambda: call, gather_turns=turns)
    body = GET if kind == "get" else PUT
    tasks = [asyncio.ensure_future(conn.call(kind, body, 5.0))]
    await until(lambda: call.written)
    tasks += [asyncio.ensure_future(conn.call(kind, body, 5.0)) for _ in range(2)]
    await until(lambda: conn.waiting == 3)
    call.let_go.set()
    tasks += [asyncio.ensure_future(conn.call(kind, body, 5.0)) for _ in range(2)]
    await until(lambda: len(call.ids()) == 5)
    assert [[i.request_id for i in m.requests] for m in call.written][:2] == [[1], second]
    assert (conn.gather_turns > 0) == (len(second) > 2)
    await conn.close()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _written_sizes(max_frame_bytes: int, calls_made: int) -> list[tuple[int, int]]:
    """(requests, encoded bytes) of each message written for `calls_made` equal puts."""
    calls = Calls()
    conn = StreamConnection(calls, max_frame_bytes=max_frame_bytes)
    big = kv_pb2.PutRequest(key=b"k", value=b"v" * 60)
    tasks = [asyncio.ensure_future(conn.call("put", big, 5.0)) for _ in range(calls_made)]
    await until(lambda: calls.opened and len(calls.last.ids()) == calls_made)
    await conn.close()
    await asyncio.gather(*tasks, return_exceptions=True)
    return [(len(m.requests), m.ByteSize()) for m in calls.last.written]


async def test_a_message_holds_at_most_max_frame_bytes_of_requests() -> None:
    """The bound counts what a request adds to the message (its field tag and length
    prefix), not only its own encoding: two requests whose encodings fill the bound
    exactly do not share a message that would exceed it."""
    ((_, one),) = await _written_sizes(1 << 20, 1)
    item = one - 2  # the message is one field: a tag byte and a one-byte length
    # Their encodings fit exactly, the message would not: one request per message.
    assert await _written_sizes(2 * item, 3) == [(1, one)] * 3
    # Room for both with their framing (counted at its most, ITEM_FRAMING): they share.
    assert await _written_sizes(2 * (item + ITEM_FRAMING), 3) == [(2, 2 * one), (1, one)]
    assert [n for n, _ in await _written_sizes(10, 3)] == [1, 1, 1]  # one always goes


async def test_a_new_streams_first_message_does_not_wait() -> None:
    """Requests queued before a stream existed did not pile up behind a busy writer:
    the first message leaves without gathering, on the first stream and after a
    reconnect."""
    calls = Calls()
    conn = StreamConnection(calls, gather_turns=16)
    first = asyncio.ensure_future(conn.call("get", GET, 5.0))
    await until(lambda: calls.opened and calls.last.written)
    assert conn.gather_turns == 0
    calls.last.end(Broken("connection reset"))
    with pytest.raises(E.Unavailable):
        await first
    again = asyncio.ensure_future(conn.call("get", GET, 5.0))
    await until(lambda: len(calls.opened) == 2 and calls.last.written)
    assert conn.gather_turns == 0
    await conn.close()
    with pytest.raises(E.Unavailable):
        await again


async def test_a_caller_waiting_for_room_learns_the_client_closed() -> None:
    calls = Calls()
    conn = StreamConnection(calls, max_inflight=1)
    held = asyncio.ensure_future(conn.call("put", PUT, 5.0))
    await until(lambda: conn.waiting == 1)
    waiter = asyncio.ensure_future(conn.call("put", PUT, 5.0))
    await until(lambda: calls.opened and calls.last.written)
    await conn.close()
    for task in (held, waiter):
        with pytest.raises(E.Unavailable, match="closed"):
            await asyncio.wait_for(task, 1.0)
