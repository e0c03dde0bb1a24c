"""Gateway batching never mixes reads and writes in one node batch.

A node batch fails as a whole. If a read's failure (no read point: the lease is
moving) could fail a batch whose write was already applied, the gateway would
re-send that write and apply it twice (the chaos suite found exactly this: a
DELETE reporting deleted=False on a present key, during a lease transfer).
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from rangekv.common import errors as E
from rangekv.gateway.node_client import LocalStream, NodeClients, NodeStream
from rangekv.v1 import replica_pb2


class _FakeStream:
    def __init__(self) -> None:
        self.sent: list[tuple[replica_pb2.ReplicaBatchRequest, bool]] = []

    def submit(self, batch: replica_pb2.ReplicaBatchRequest, has_writes: bool) -> Any:
        self.sent.append((batch, has_writes))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        return fut


async def test_reads_and_writes_to_one_range_leave_in_separate_batches() -> None:
    clients = NodeClients(channel_factory=lambda addr: None)  # type: ignore[arg-type,return-value]
    stream = _FakeStream()
    clients._stream = lambda address: stream  # type: ignore[assignment,method-assign]
    get = replica_pb2.ReplicaOp(get=replica_pb2.GetOp(key=b"k"))
    put = replica_pb2.ReplicaOp(put=replica_pb2.PutOp(key=b"k", value=b"v"))
    clients.submit("n1", 7, [get], has_writes=False)
    clients.submit("n1", 7, [put], has_writes=True)
    clients.submit("n1", 7, [get], has_writes=False)
    await asyncio.sleep(0)  # let the per-iteration flush run
    sent = stream.sent
    assert len(sent) == 2
    kinds = sorted((len(b.ops), w) for b, w in sent)
    assert kinds == [(1, True), (2, False)]
    for batch, has_writes in sent:
        ops = {op.WhichOneof("op") for op in batch.ops}
        assert ops == ({"put"} if has_writes else {"get"})


async def test_a_fence_op_never_shares_a_batch_with_reads() -> None:
    """A scan's fence hold goes out as a consistent read with no read timestamp,
    like a plain GET; merged into one batch, the node refuses the mix and every
    GET in it fails with INVALID_ARGUMENT (the chaos workload saw hundreds)."""
    clients = NodeClients(channel_factory=lambda addr: None)  # type: ignore[arg-type,return-value]
    stream = _FakeStream()
    clients._stream = lambda address: stream  # type: ignore[assignment,method-assign]
    get = replica_pb2.ReplicaOp(get=replica_pb2.GetOp(key=b"k"))
    fence = replica_pb2.ReplicaOp(
        fence=replica_pb2.FenceOp(start_key=b"a", end_key=b"z", fence_id=b"f" * 16)
    )
    clients.submit("n1", 7, [get], has_writes=False)
    clients.submit("n1", 7, [fence], has_writes=False)
    clients.submit("n1", 7, [get], has_writes=False)
    await asyncio.sleep(0)  # let the per-iteration flush run
    batches = sorted([op.WhichOneof("op") for op in b.ops] for b, _w in stream.sent)
    assert batches == [["fence"], ["get", "get"]]


class _AnsweringStream(_FakeStream):
    """Records batches; the test answers them by index."""

    def __init__(self) -> None:
        super().__init__()
        self.futures: list[asyncio.Future[Any]] = []

    def submit(self, batch: replica_pb2.ReplicaBatchRequest, has_writes: bool) -> Any:
        fut = super().submit(batch, has_writes)
        self.futures.append(fut)
        return fut

    def answer(self, i: int) -> None:
        batch = self.sent[i][0]
        results = [
            replica_pb2.ReplicaOpResult(put=replica_pb2.PutResult()) for _ in range(len(batch.ops))
        ]
        self.futures[i].set_result(replica_pb2.ReplicaBatchResponse(results=results))


def _put(key: bytes) -> replica_pb2.ReplicaOp:
    return replica_pb2.ReplicaOp(put=replica_pb2.PutOp(key=key, value=b"v"))


async def test_ops_gather_behind_a_full_window_and_leave_together() -> None:
    clients = NodeClients(channel_factory=lambda addr: None, max_inflight=1)  # type: ignore[arg-type,return-value]
    stream = _AnsweringStream()
    clients._stream = lambda address: stream  # type: ignore[assignment,method-assign]
    first = clients.submit("n1", 7, [_put(b"a")], has_writes=True)
    await asyncio.sleep(0)
    assert [len(b.ops) for b, _ in stream.sent] == [1]  # an idle window: no wait
    later = [clients.submit("n1", 7, [_put(b"%d" % i)], has_writes=True) for i in range(5)]
    other_range = clients.submit("n1", 8, [_put(b"x")], has_writes=True)
    await asyncio.sleep(0)
    # Range 7's window is full; range 8 has its own.
    assert [(b.range_id, len(b.ops)) for b, _ in stream.sent] == [(7, 1), (8, 1)]
    stream.answer(0)
    await first
    for _ in range(3):
        await asyncio.sleep(0)
    assert [(b.range_id, len(b.ops)) for b, _ in stream.sent] == [(7, 1), (8, 1), (7, 5)]
    stream.answer(2)
    replies = await asyncio.gather(*later)
    assert all(len(r.results) == 1 for r in replies)
    assert not other_range.done()


async def test_callers_that_gave_up_while_waiting_are_not_sent() -> None:
    clients = NodeClients(channel_factory=lambda addr: None, max_inflight=1)  # type: ignore[arg-type,return-value]
    stream = _AnsweringStream()
    clients._stream = lambda address: stream  # type: ignore[assignment,method-assign]
    clients.submit("n1", 7, [_put(b"a")], has_writes=True)
    await asyncio.sleep(0)
    gave_up = clients.submit("n1", 7, [_put(b"b"), _put(b"c")], has_writes=True)
    kept = clients.submit("n1", 7, [_put(b"d")], has_writes=True)
    alone = clients.submit("n1", 9, [_put(b"e")], has_writes=True)
    await asyncio.sleep(0)
    gave_up.cancel()
    stream.answer(0)
    for _ in range(3):
        await asyncio.sleep(0)
    keys = [[op.put.key for op in b.ops] for b, _ in stream.sent]
    assert keys == [[b"a"], [b"e"], [b"d"]]
    stream.answer(2)
    assert len((await kept).results) == 1
    assert not alone.done()


def test_window_must_hold_a_batch() -> None:
    with pytest.raises(ValueError, match="max_inflight"):
        NodeClients(channel_factory=lambda addr: None, max_inflight=0)  # type: ignore[arg-type,return-value]


class _FakeCall:
    """A stream call that fails at its first read with `code`."""

    def __init__(self, requests: Any, code: grpc.StatusCode, details: str) -> None:
        self.requests = requests
        self._code = code
        self._details = details
        self._ended = False

    def __aiter__(self) -> _FakeCall:
        return self

    def cancel(self) -> None:
        return None

    async def initial_metadata(self) -> Any:
        return ()

    def done(self) -> bool:
        return self._ended

    async def __anext__(self) -> Any:
        self._ended = True
        raise grpc.aio.AioRpcError(
            self._code, grpc.aio.Metadata(), grpc.aio.Metadata(), self._details
        )


class _FakeStub:
    """Both stream methods; every call fails as `code` says."""

    def __init__(self, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE, details: str = "gone"):
        self.calls: list[tuple[str, _FakeCall]] = []
        self._code = code
        self._details = details

    def BatchStream(self, requests: Any) -> _FakeCall:
        self.calls.append(("BatchStream", _FakeCall(requests, self._code, self._details)))
        return self.calls[-1][1]

    def BatchFrames(self, requests: Any) -> _FakeCall:
        self.calls.append(("BatchFrames", _FakeCall(requests, self._code, self._details)))
        return self.calls[-1][1]


class _AnyChannel:  # enough for ReplicaStub's constructor; the stub is replaced
    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


async def _drain(gen: Any) -> list[Any]:
    return [r async for r in gen]


@pytest.mark.parametrize("framed", [True, False])
async def test_a_broken_stream_ends_its_request_generator(framed: bool) -> None:
    """Before, grpc's task feeding a dead stream waited on the outbox forever and was
    garbage collected pending ("Task was destroyed but it is pending!" in the soak's
    gateway logs)."""
    stub = _FakeStub()
    stream = NodeStream("n1", _AnyChannel(), framed=framed)  # type: ignore[arg-type]
    stream._stub = stub  # type: ignore[assignment]
    fut = stream.submit(replica_pb2.ReplicaBatchRequest(range_id=1), has_writes=True)
    with pytest.raises(E.Unavailable, match="gone") as failed:
        await fut
    # This fake fails before gRPC takes anything from the generator: never sent.
    assert failed.value.outcome == E.WriteOutcome.NOT_APPLIED
    assert stream.broken and not stream.unimplemented
    method, call = stub.calls[0]
    assert method == ("BatchFrames" if framed else "BatchStream")
    sent = await asyncio.wait_for(_drain(call.requests), 2)
    if framed:
        assert sent == []  # a frame is sent only to a call that has not ended
    else:
        assert [r.batch.range_id for r in sent] == [1]


async def test_one_flush_sends_every_range_of_a_node_in_one_frame() -> None:
    """Batches for different ranges of one node, gathered in one loop turn, leave as
    ONE BatchFrames message (one gRPC message instead of one per range)."""
    frames: list[replica_pb2.BatchFramesRequest] = []
    got_two = asyncio.Event()

    class Call:
        def __init__(self, requests: Any) -> None:
            self._task = asyncio.ensure_future(self._consume(requests))
            self._cancelled = asyncio.Event()

        async def _consume(self, requests: Any) -> None:
            async for frame in requests:
                frames.append(frame)
                if len(frames) == 2:
                    got_two.set()

        def __aiter__(self) -> Call:
            return self

        async def initial_metadata(self) -> Any:
            return ()

        def done(self) -> bool:
            return self._cancelled.is_set()

        async def __anext__(self) -> Any:
            await self._cancelled.wait()  # never answers; the test looks at what left
            raise asyncio.CancelledError

        def cancel(self) -> None:
            self._task.cancel()
            self._cancelled.set()

    class Stub:
        def BatchFrames(self, requests: Any) -> Call:
            return Call(requests)

    clients = NodeClients(channel_factory=lambda addr: _AnyChannel())  # type: ignore[arg-type,return-value]
    stream = clients._stream("n1")
    stream._stub = Stub()  # type: ignore[assignment]
    for range_id in (1, 2, 3):
        clients.submit("n1", range_id, [_put(b"%d" % range_id)], has_writes=True)
    clients.submit(
        "n1", 1, [replica_pb2.ReplicaOp(get=replica_pb2.GetOp(key=b"1"))], has_writes=False
    )
    await asyncio.sleep(0)
    clients.submit("n1", 4, [_put(b"4")], has_writes=True)  # a later loop turn
    await asyncio.wait_for(got_two.wait(), 2)
    first = [(r.batch.range_id, len(r.batch.ops)) for r in frames[0].requests]
    assert sorted(first) == [(1, 1), (1, 1), (2, 1), (3, 1)]
    assert [r.batch.range_id for r in frames[1].requests] == [4]
    ids = [r.request_id for f in frames for r in f.requests]
    assert len(set(ids)) == 5
    await stream.close()


async def test_a_node_without_batch_frames_gets_batch_stream_next() -> None:
    """UNIMPLEMENTED before any answer: the method is unknown there, so nothing was
    served: the requests fail as NOT applied (safe to send again), and the next
    stream to that address is a BatchStream."""
    clients = NodeClients(channel_factory=lambda addr: _AnyChannel())  # type: ignore[arg-type,return-value]
    stub = _FakeStub(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
    first = clients._stream("n1")
    first._stub = stub  # type: ignore[assignment]
    fut = clients.submit("n1", 1, [_put(b"a")], has_writes=True)
    with pytest.raises(E.Unavailable) as failed:
        await fut
    assert failed.value.outcome == E.WriteOutcome.NOT_APPLIED
    assert first.unimplemented
    second = clients._stream("n1")
    assert second is not first and not second.framed
    assert clients._stream("n2").framed  # other nodes keep frames
    await first.close()


async def test_a_read_batch_whose_answer_is_too_large_is_split() -> None:
    """The node refuses a merged read batch whose answer would be too large (it
    would break the stream other requests share); each caller's reads go again
    in a batch of their own, and every caller gets its own answer."""
    clients = NodeClients(channel_factory=lambda addr: None)  # type: ignore[arg-type,return-value]
    stream = _AnsweringStream()
    clients._stream = lambda address: stream  # type: ignore[assignment,method-assign]
    gets = [
        clients.submit(
            "n1", 7, [replica_pb2.ReplicaOp(get=replica_pb2.GetOp(key=b"%d" % i))], has_writes=False
        )
        for i in range(3)
    ]
    await asyncio.sleep(0)
    assert [len(b.ops) for b, _ in stream.sent] == [3]
    too_large = E.ResourceExhausted("too large", retry_after=0.0, answer_too_large=True)
    stream.futures[0].set_result(
        replica_pb2.ReplicaBatchResponse(error=E.to_replica_error(too_large))
    )
    for _ in range(3):
        await asyncio.sleep(0)
    assert [len(b.ops) for b, _ in stream.sent] == [3, 1, 1, 1]
    for i in (1, 2, 3):
        stream.futures[i].set_result(
            replica_pb2.ReplicaBatchResponse(
                results=[replica_pb2.ReplicaOpResult(get=replica_pb2.GetResult(found=False))]
            )
        )
    replies = await asyncio.gather(*gets)
    assert [len(r.results) for r in replies] == [1, 1, 1]
    assert clients.split_batches == 1


class _GatedCall:
    """A BatchFrames call whose node speaks (initial metadata) only when told to,
    and ends only when told to (`end`); frames handed to it are recorded. With
    `take`, it takes that many frames and then never finishes writing."""

    def __init__(self, requests: Any, take: int | None = None) -> None:
        self.frames: list[replica_pb2.BatchFramesRequest] = []
        self.spoke = asyncio.Event()
        self.ended: grpc.StatusCode | None = None
        self._end = asyncio.Event()
        self._got_frame = asyncio.Event()
        self._take = take
        self._task = asyncio.ensure_future(self._consume(requests))

    async def _consume(self, requests: Any) -> None:
        async for frame in requests:
            self.frames.append(frame)
            self._got_frame.set()
            if self._take is not None and len(self.frames) >= self._take:
                await asyncio.Event().wait()  # a write that never completes

    def end(self, code: grpc.StatusCode) -> None:
        """The call ends (which also ends any wait for initial metadata)."""
        self.ended = code
        self._end.set()
        self.spoke.set()

    async def initial_metadata(self) -> Any:
        await self.spoke.wait()
        return ()

    def done(self) -> bool:
        return self.ended is not None

    def __aiter__(self) -> _GatedCall:
        return self

    async def __anext__(self) -> Any:
        await self._end.wait()
        assert self.ended is not None
        raise grpc.aio.AioRpcError(self.ended, grpc.aio.Metadata(), grpc.aio.Metadata(), "end")

    def cancel(self) -> None:
        self._task.cancel()
        if self.ended is None:
            self.end(grpc.StatusCode.CANCELLED)


class _GatedStub:
    def __init__(self, take: int | None = None) -> None:
        self.calls: list[_GatedCall] = []
        self._take = take

    def BatchFrames(self, requests: Any) -> _GatedCall:
        self.calls.append(_GatedCall(requests, self._take))
        return self.calls[-1]


async def test_no_frame_leaves_before_the_node_accepts_the_stream() -> None:
    """gRPC Python turns a send that races the server ending the call into
    INTERNAL, losing the real status (an old node's UNIMPLEMENTED came back as
    "Internal error from Core" under load, and the gateway did not fall back).
    So the first frame waits for the node's initial metadata."""
    stub = _GatedStub()
    stream = NodeStream("n1", _AnyChannel(), framed=True)  # type: ignore[arg-type]
    stream._stub = stub  # type: ignore[assignment]
    stream.submit(replica_pb2.ReplicaBatchRequest(range_id=1), has_writes=True)
    call = stub.calls[0]
    for _ in range(20):  # many loop turns: the frame would have left by now
        await asyncio.sleep(0)
    assert call.frames == []
    call.spoke.set()
    await asyncio.wait_for(call._got_frame.wait(), 2)
    assert [[r.batch.range_id for r in f.requests] for f in call.frames] == [[1]]
    await stream.close()


async def test_a_stream_refused_before_it_is_accepted_sends_nothing() -> None:
    """The node ends the call (UNIMPLEMENTED) instead of accepting it: nothing is
    written to it, its requests fail as not applied, and the node is marked as
    one that does not serve BatchFrames."""
    stub = _GatedStub()
    stream = NodeStream("n1", _AnyChannel(), framed=True)  # type: ignore[arg-type]
    stream._stub = stub  # type: ignore[assignment]
    fut = stream.submit(replica_pb2.ReplicaBatchRequest(range_id=1), has_writes=True)
    call = stub.calls[0]
    call.end(grpc.StatusCode.UNIMPLEMENTED)
    with pytest.raises(E.Unavailable) as failed:
        await fut
    assert failed.value.outcome == E.WriteOutcome.NOT_APPLIED
    assert stream.unimplemented
    await asyncio.wait_for(call._task, 2)
    assert call.frames == []


async def test_a_write_that_never_left_the_gateway_is_not_applied() -> None:
    """A stream that breaks fails its writes as of unknown outcome only if they
    were handed to gRPC: a write still in the outbox -- or on a stream the node
    never accepted -- cannot have reached the node, so it is NOT_APPLIED and
    the gateway may send it again elsewhere."""
    stub = _GatedStub(take=1)
    stream = NodeStream("n1", _AnyChannel(), framed=True)  # type: ignore[arg-type]
    stream._stub = stub  # type: ignore[assignment]
    first = stream.submit(replica_pb2.ReplicaBatchRequest(range_id=1), has_writes=True)
    call = stub.calls[0]
    call.spoke.set()
    await asyncio.wait_for(call._got_frame.wait(), 2)  # `first` left; gRPC is now stuck
    second = stream.submit(replica_pb2.ReplicaBatchRequest(range_id=2), has_writes=True)
    for _ in range(20):
        await asyncio.sleep(0)
    call.end(grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(E.Unavailable) as one:
        await first
    with pytest.raises(E.Unavailable) as two:
        await second
    assert one.value.outcome == E.WriteOutcome.UNKNOWN
    assert two.value.outcome == E.WriteOutcome.NOT_APPLIED
    assert [[r.batch.range_id for r in f.requests] for f in call.frames] == [[1]]
    await stream.close()


async def test_a_stream_that_ends_before_it_is_accepted_applied_nothing() -> None:
    stub = _GatedStub()
    stream = NodeStream("n1", _AnyChannel(), framed=True)  # type: ignore[arg-type]
    stream._stub = stub  # type: ignore[assignment]
    fut = stream.submit(replica_pb2.ReplicaBatchRequest(range_id=1), has_writes=True)
    stub.calls[0].end(grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(E.Unavailable) as failed:
        await fut
    assert failed.value.outcome == E.WriteOutcome.NOT_APPLIED
    assert not stream.unimplemented


# --- the local node (a gateway inside a storage node) ----------------------------------


async def test_batches_for_the_local_node_are_merged_and_served_in_process() -> None:
    """No channel is ever opened to the local address: its batches, merged as any
    node's are, go to the handler; another address still gets a stream."""
    dialled: list[str] = []
    clients = NodeClients(channel_factory=lambda addr: dialled.append(addr))  # type: ignore[arg-type,return-value]
    served: list[replica_pb2.ReplicaBatchRequest] = []

    async def handler(req: replica_pb2.ReplicaBatchRequest) -> replica_pb2.ReplicaBatchResponse:
        served.append(req)
        return replica_pb2.ReplicaBatchResponse(
            results=[replica_pb2.ReplicaOpResult() for _ in req.ops]
        )

    local = clients.serve_locally("n1", handler)
    get = replica_pb2.ReplicaOp(get=replica_pb2.GetOp(key=b"k"))
    replies = [clients.submit("n1", 7, [get], has_writes=False) for _ in range(3)]
    for reply in replies:
        assert len((await reply).results) == 1
    assert [len(r.ops) for r in served] == [3] and local.batches == 1
    assert dialled == []
    await clients.close()


@pytest.mark.parametrize(
    ("has_writes", "outcome"),
    [(True, E.WriteOutcome.UNKNOWN), (False, E.WriteOutcome.NOT_APPLIED)],
)
async def test_a_local_handler_that_raises_fails_its_batch_as_unavailable(
    has_writes: bool, outcome: E.WriteOutcome
) -> None:
    """A bug in the node's handler: a write it was serving may have been proposed."""
    clients = NodeClients(channel_factory=lambda addr: None)  # type: ignore[arg-type,return-value]

    async def handler(req: replica_pb2.ReplicaBatchRequest) -> replica_pb2.ReplicaBatchResponse:
        raise RuntimeError("boom")

    clients.serve_locally("n1", handler)
    op = (
        replica_pb2.ReplicaOp(put=replica_pb2.PutOp(key=b"k", value=b"v"))
        if has_writes
        else replica_pb2.ReplicaOp(get=replica_pb2.GetOp(key=b"k"))
    )
    with pytest.raises(E.Unavailable) as caught:
        await clients.submit("n1", 7, [op], has_writes=has_writes)
    assert caught.value.outcome is outcome
    assert "boom" in caught.value.message
    await clients.close()


@pytest.mark.parametrize("close_wait", [0.0, 0.01])
async def test_closing_the_local_stream_answers_what_it_was_still_serving(
    close_wait: float,
) -> None:
    """At shutdown a write the node is still serving is stopped after the wait and its
    caller told UNAVAILABLE of unknown outcome (not left to its deadline); a batch
    submitted after the close began is refused unsent."""
    never = asyncio.Event()

    async def handler(req: replica_pb2.ReplicaBatchRequest) -> replica_pb2.ReplicaBatchResponse:
        await never.wait()  # a write whose quorum never answers
        raise AssertionError("unreachable")

    stream = LocalStream("n1", handler, close_wait=close_wait)
    put = replica_pb2.ReplicaBatchRequest(
        range_id=7, ops=[replica_pb2.ReplicaOp(put=replica_pb2.PutOp(key=b"k", value=b"v"))]
    )
    answer = stream.submit(put, True)
    await stream.close()
    with pytest.raises(E.Unavailable) as caught:
        await answer
    assert caught.value.outcome is E.WriteOutcome.UNKNOWN
    late = stream.submit(put, True)
    with pytest.raises(E.Unavailable) as refused:
        await late
    assert refused.value.outcome is E.WriteOutcome.NOT_APPLIED


async def test_a_stream_replaced_by_the_local_route_is_closed_with_the_others() -> None:
    clients = NodeClients(channel_factory=lambda addr: None)  # type: ignore[arg-type,return-value]
    closed: list[str] = []

    class _Earlier(_FakeStream):
        broken = False
        unimplemented = False

        async def close(self) -> None:
            closed.append("earlier")

    clients._streams["n1"] = _Earlier()  # opened before the node knew its address

    async def handler(req: replica_pb2.ReplicaBatchRequest) -> replica_pb2.ReplicaBatchResponse:
        return replica_pb2.ReplicaBatchResponse()

    clients.serve_locally("n1", handler)
    await clients.close()
    assert closed == ["earlier"]
