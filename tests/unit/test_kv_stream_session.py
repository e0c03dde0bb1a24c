"""KV/Stream's session at the gateway: tagged answers, per-request errors, bounds, roles.

The session is driven as the server drives it (an async iterator of request
messages in, the generator's answer messages out) around a scripted `serve`, or
around the real KVService with a scripted DistSender, so each rule is checked
without processes; tests/integration/test_kv_stream.py checks them through a
real gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from testkit.waiting import async_wait_for

from rangekv.common import errors as E
from rangekv.common.auth import Authorizer, Caller, set_caller
from rangekv.common.certs import Identity, Role
from rangekv.domain.limits import KeyValueLimits
from rangekv.gateway.kv_service import KVLimits, KVService
from rangekv.gateway.kv_stream import StreamLimits, StreamSession, StreamStats
from rangekv.gateway.node_client import BatchReply
from rangekv.v1 import errors_pb2, kv_pb2, replica_pb2, types_pb2


def put(rid: int, key: bytes = b"k", value: bytes = b"v") -> kv_pb2.StreamRequestItem:
    return kv_pb2.StreamRequestItem(request_id=rid, put=kv_pb2.PutRequest(key=key, value=value))


def get(rid: int, key: bytes = b"k") -> kv_pb2.StreamRequestItem:
    return kv_pb2.StreamRequestItem(request_id=rid, get=kv_pb2.GetRequest(key=key))


class Feed:
    """The client's side of the request stream: messages pushed, and how many were taken."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[kv_pb2.StreamRequest | None] = asyncio.Queue()
        self.taken = 0

    def send(self, *items: kv_pb2.StreamRequestItem) -> None:
        self.queue.put_nowait(kv_pb2.StreamRequest(requests=list(items)))

    def close(self) -> None:
        self.queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[kv_pb2.StreamRequest]:
        while (msg := await self.queue.get()) is not None:
            self.taken += 1
            yield msg


class Script:
    """A `serve` whose requests finish when the test says (or at once)."""

    def __init__(self, *, hold: bool = False) -> None:
        self.hold = hold
        self.started: list[tuple[str, Any, float | None]] = []
        self.gates: dict[bytes, asyncio.Future[Any]] = {}
        #: Requests that returned a result: the session queued their answer in the
        #: same step.
        self.answered = 0

    def release(self, key: bytes, result: Any) -> None:
        fut = self.gates[key]
        if isinstance(result, BaseException):
            fut.set_exception(result)
        else:
            fut.set_result(result)

    async def __call__(self, kind: str, body: Any, timeout: float | None) -> Any:
        self.started.append((kind, body, timeout))
        if kind == "put" and body.key == b"boom":
            raise ValueError("a bug")
        if kind == "put" and body.key == b"down":
            raise E.Unavailable("no leaseholder", retry_after=0.25)
        if self.hold:
            fut = self.gates.setdefault(body.key, asyncio.get_running_loop().create_future())
            result = await fut
            self.answered += 1
            return result
        self.answered += 1
        return _result(kind, body)


def _result(kind: str, body: Any) -> Any:
    if kind == "put":
        return kv_pb2.PutResponse(version=types_pb2.Timestamp(wall_time=7))
    if kind == "get":
        return kv_pb2.GetResponse(found=True, kv=types_pb2.KeyValue(key=body.key, value=b"x"))
    raise AssertionError(kind)


async def answers(
    session: StreamSession, feed: Feed, want: int, frames: list[kv_pb2.StreamResponse] | None = None
) -> dict[int, kv_pb2.StreamResponseItem]:
    """Read the session's messages until `want` answers came (the stream stays open)."""
    out: dict[int, kv_pb2.StreamResponseItem] = {}
    gen = session.run(feed)
    async for frame in gen:
        if frames is not None:
            frames.append(frame)
        for item in frame.responses:
            assert item.request_id not in out
            out[item.request_id] = item
        if len(out) >= want:
            break
    await gen.aclose()
    return out


def status_of(item: kv_pb2.StreamResponseItem) -> E.RangeKVError:
    assert item.WhichOneof("response") == "error", item
    return E.from_status_proto(item.error, is_write=True)


async def test_answers_carry_their_ids_and_may_share_a_message() -> None:
    serve = Script()
    feed = Feed()
    feed.send(put(1), get(2, b"a"), put(3))
    frames: list[kv_pb2.StreamResponse] = []
    got = await answers(StreamSession(serve, StreamLimits(), StreamStats()), feed, 3, frames)
    assert got[1].put.version.wall_time == 7
    assert got[2].get.kv.key == b"a"
    assert len(frames) == 1  # ready in the same iteration: one message


async def test_answers_come_in_the_order_requests_finish() -> None:
    serve = Script(hold=True)
    feed = Feed()
    feed.send(put(1, b"slow"), put(2, b"fast"))
    session = StreamSession(serve, StreamLimits(), StreamStats())
    gen = session.run(feed)
    first = asyncio.ensure_future(gen.__anext__())
    await async_wait_for(lambda: len(serve.started) >= 2, 5, "both requests to start", 0)
    serve.release(b"fast", _result("put", kv_pb2.PutRequest()))
    frame = await first
    assert [i.request_id for i in frame.responses] == [2]
    serve.release(b"slow", _result("put", kv_pb2.PutRequest()))
    frame = await gen.__anext__()
    assert [i.request_id for i in frame.responses] == [1]
    await gen.aclose()


async def test_a_failed_request_gets_its_status_and_the_stream_goes_on() -> None:
    stats = StreamStats()
    feed = Feed()
    feed.send(put(1, b"down"), put(2, b"boom"), kv_pb2.StreamRequestItem(request_id=3), put(4))
    got = await answers(StreamSession(Script(), StreamLimits(), stats), feed, 4)
    down = status_of(got[1])
    assert isinstance(down, E.Unavailable) and down.retry_after == pytest.approx(0.25)
    assert down.outcome == E.WriteOutcome.NOT_APPLIED  # RequestOutcomeDetail, as the unary call
    bug = status_of(got[2])
    assert isinstance(bug, E.InternalError)
    assert "internal error in /rangekv.v1.KV/Stream: ValueError: a bug" in bug.message
    empty = got[3].error
    assert empty.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    bad = error_details_pb2.BadRequest()
    assert empty.details[0].Unpack(bad) and bad.field_violations[0].field == "request"
    assert got[4].HasField("put")
    assert stats.failed == {"UNAVAILABLE": 1, "INTERNAL": 1, "INVALID_ARGUMENT": 1}


async def test_timeouts_are_capped_by_the_gateways_and_negative_ones_refused() -> None:
    serve = Script()
    feed = Feed()
    items = [put(1), put(2), put(3)]
    items[1].timeout.FromMilliseconds(250)
    items[2].timeout.FromSeconds(-1)
    feed.send(*items)
    limits = StreamLimits(request_timeout=2.0)
    got = await answers(StreamSession(serve, limits, StreamStats()), feed, 3)
    timeouts = sorted(t for _kind, _body, t in serve.started if t is not None)
    assert timeouts[0] == pytest.approx(0.25, abs=0.05)
    assert timeouts[1] == pytest.approx(2.0, abs=0.05)
    assert status_of(got[3]).code is grpc.StatusCode.INVALID_ARGUMENT


async def test_a_repeated_id_in_flight_ends_the_stream_after_the_others_are_answered() -> None:
    serve = Script(hold=True)
    feed = Feed()
    feed.send(put(1, b"a"), put(1, b"b"), put(2, b"c"))
    session = StreamSession(serve, StreamLimits(), StreamStats())
    gen = session.run(feed)
    pending = asyncio.ensure_future(gen.__anext__())
    await async_wait_for(lambda: serve.started, 5, "the request to start", 0)
    serve.release(b"a", _result("put", kv_pb2.PutRequest()))
    frame = await pending
    assert [i.request_id for i in frame.responses] == [1]
    with pytest.raises(E.InvalidArgument, match="request_id: 1 is used by a request"):
        await gen.__anext__()
    assert [body.key for _k, body, _t in serve.started] == [b"a"]  # nothing after it ran


async def test_half_close_ends_the_stream_once_every_request_is_answered() -> None:
    feed = Feed()
    feed.send(put(1), get(2))
    feed.close()
    frames = [f async for f in StreamSession(Script(), StreamLimits(), StreamStats()).run(feed)]
    assert sorted(i.request_id for f in frames for i in f.responses) == [1, 2]


async def test_a_slow_reader_stops_the_gateway_reading_at_the_bound() -> None:
    """At max_inflight open requests nothing more is read: the client is slowed down by
    flow control, the gateway holds at most that many requests and answers."""
    serve = Script()
    feed = Feed()
    for rid in range(1, 21):
        feed.send(put(rid, b"k%d" % rid))
    session = StreamSession(serve, StreamLimits(max_inflight=4), StreamStats())
    gen = session.run(feed)
    first = await gen.__anext__()  # the client reads one message, then stops reading
    assert len(first.responses) >= 1
    for _ in range(50):
        await asyncio.sleep(0)
    # The answers of the message not yet taken by gRPC still hold their slots: four
    # requests were started, and one more message is held (read, waiting for a slot).
    assert len(serve.started) == 4
    assert feed.taken == 5
    seen = {i.request_id for i in first.responses}
    async for frame in gen:  # the client reads again: everything flows
        seen |= {i.request_id for i in frame.responses}
        if len(seen) == 20:
            break
    await gen.aclose()
    assert seen == set(range(1, 21))


async def test_an_answer_too_large_for_a_message_is_refused_alone() -> None:
    class Big:
        async def __call__(self, kind: str, body: Any, timeout: float | None) -> Any:
            value = b"x" * (8 << 10) if body.key == b"big" else b"y"
            return kv_pb2.GetResponse(found=True, kv=types_pb2.KeyValue(key=body.key, value=value))

    feed = Feed()
    feed.send(get(1, b"big"), get(2, b"small"))
    limits = StreamLimits(max_message_bytes=4 << 10)
    got = await answers(StreamSession(Big(), limits, StreamStats()), feed, 2)
    assert status_of(got[1]).code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert got[2].get.kv.value == b"y"


# --- gathering: a busy writer's answers of reads wait for company ---------------------------


def _one_of_each(kind: str) -> list[kv_pb2.StreamRequestItem]:
    make = get if kind == "get" else put
    return [make(rid, b"k%d" % rid) for rid in range(1, 6)]


@pytest.mark.parametrize(
    ("kind", "turns", "second"),
    [
        ("get", 16, [2, 4, 5]),  # busy, reads only: the answers on their way join
        ("get", 0, [2]),  # gathering off
        ("put", 16, [2]),  # an answer to a write never waits
    ],
)
async def test_a_busy_writer_gathers_answers_of_reads_only(
    kind: str, turns: int, second: list[int]
) -> None:
    """Answer 1 is being written (the test holds the first message) while answer 2
    is ready: the writer is busy. Answers 4 and 5 are released just before it asks
    for its next message, so they arrive one event-loop turn later."""
    serve = Script(hold=True)
    feed = Feed()
    feed.send(*_one_of_each(kind))
    stats = StreamStats()
    session = StreamSession(serve, StreamLimits(gather_turns=turns), stats)
    gen = session.run(feed)
    pending = asyncio.ensure_future(gen.__anext__())
    await async_wait_for(lambda: len(serve.started) == 5, 5, "every request to start", 0)
    done = _result(kind, kv_pb2.GetRequest(key=b"x"))
    serve.release(b"k1", done)
    first = await pending
    serve.release(b"k2", done)
    await async_wait_for(lambda: serve.answered == 2, 5, "answer 2 to be ready", 0)
    serve.release(b"k4", done)
    serve.release(b"k5", done)
    frame = await gen.__anext__()
    assert [i.request_id for i in first.responses] == [1]
    assert [i.request_id for i in frame.responses] == second
    assert (stats.gather_turns > 0) == (second != [2])
    serve.release(b"k3", done)
    await gen.aclose()


def test_gather_turns_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="gather_turns must be >= 0"):
        StreamLimits(gather_turns=-1)


# --- the real KVService behind the session -----------------------------------------------


class Sender:
    """A DistSender stand-in: answers puts and gets, or holds them."""

    def __init__(self, hold: asyncio.Event | None = None) -> None:
        self.hold = hold
        self.sent: list[replica_pb2.ReplicaOp] = []

    async def send(self, key: bytes, op: replica_pb2.ReplicaOp, **_kw: Any) -> BatchReply:
        self.sent.append(op)
        if self.hold is not None:
            await self.hold.wait()
        kind = op.WhichOneof("op")
        if kind == "put":
            result = replica_pb2.ReplicaOpResult(put=replica_pb2.PutResult())
        else:
            result = replica_pb2.ReplicaOpResult(get=replica_pb2.GetResult(found=False))
        return BatchReply([result], types_pb2.RangeDescriptor(), types_pb2.Timestamp(), 1)


def service(sender: Sender, max_ops: int = 100) -> KVService:
    return KVService(sender, KVLimits(max_inflight_ops=max_ops))  # type: ignore[arg-type]


async def test_a_read_client_may_send_reads_only() -> None:
    sender = Sender()
    kv = service(sender)
    authorizer = Authorizer()
    set_caller(Caller("/rangekv.v1.KV/Stream", Identity("reader", Role.READ), authorizer))
    batch_of_gets = kv_pb2.BatchRequest(
        requests=[kv_pb2.BatchRequestItem(get=kv_pb2.GetRequest(key=b"a"))]
    )
    mixed = kv_pb2.BatchRequest(
        requests=[
            kv_pb2.BatchRequestItem(get=kv_pb2.GetRequest(key=b"a")),
            kv_pb2.BatchRequestItem(delete=kv_pb2.DeleteRequest(key=b"a")),
        ]
    )
    feed = Feed()
    feed.send(
        get(1),
        put(2),
        kv_pb2.StreamRequestItem(request_id=3, batch=batch_of_gets),
        kv_pb2.StreamRequestItem(request_id=4, batch=mixed),
        kv_pb2.StreamRequestItem(request_id=5, delete=kv_pb2.DeleteRequest(key=b"")),
    )
    got = await answers(StreamSession(kv.serve, StreamLimits(), StreamStats()), feed, 5)
    assert got[1].HasField("get") and got[3].HasField("batch")
    for rid, what in ((2, "Put"), (4, "a Batch with writes"), (5, "Delete")):
        refused = status_of(got[rid])
        assert isinstance(refused, E.PermissionDenied), refused
        assert f"/rangekv.v1.KV/Stream: {what} needs role write or higher" in refused.message
    assert all(op.WhichOneof("op") == "get" for op in sender.sent)  # nothing written


async def test_admission_applies_per_request() -> None:
    hold = asyncio.Event()
    kv = service(Sender(hold), max_ops=2)
    feed = Feed()
    feed.send(get(1, b"a"), get(2, b"b"), get(3, b"c"))
    session = StreamSession(kv.serve, StreamLimits(), StreamStats())
    gen = session.run(feed)
    frame = await gen.__anext__()
    refused = status_of(frame.responses[0])
    assert frame.responses[0].request_id == 3
    assert isinstance(refused, E.ResourceExhausted) and refused.retry_after > 0
    hold.set()
    rest = await gen.__anext__()
    assert sorted(i.request_id for i in rest.responses) == [1, 2]
    await gen.aclose()
    assert kv.admission.inflight == 0


async def test_the_same_validation_as_the_unary_calls() -> None:
    kv = KVService(Sender(), KVLimits(KeyValueLimits(max_key_bytes=4, max_value_bytes=4)))  # type: ignore[arg-type]
    cases: Sequence[tuple[str, Any, str]] = [
        ("put", kv_pb2.PutRequest(key=b"", value=b"v"), "key"),
        ("put", kv_pb2.PutRequest(key=b"k", value=b"12345"), "value"),
        ("get", kv_pb2.GetRequest(key=b"12345"), "key"),
        (
            "compare_and_swap",
            kv_pb2.CompareAndSwapRequest(key=b"k", new_value=b"123456"),
            "new_value",
        ),
        (
            "batch",
            kv_pb2.BatchRequest(requests=[kv_pb2.BatchRequestItem()]),
            "requests[0]",
        ),
    ]
    for kind, body, field in cases:
        with pytest.raises(E.InvalidArgument) as refused:
            await kv.serve(kind, body, None)
        assert refused.value.field == field
    status = E.to_status_proto(E.Unavailable("x", outcome=E.WriteOutcome.UNKNOWN))
    outcome = errors_pb2.RequestOutcomeDetail()
    assert any(d.Unpack(outcome) for d in status.details)
    assert outcome.outcome == errors_pb2.WRITE_OUTCOME_UNKNOWN
