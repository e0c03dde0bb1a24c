"""Gateway -> storage node calls, shared by every concurrent client call.

Python pays ~350-430 µs of server CPU per unary gRPC call, so one RPC per
client operation cannot scale. Instead, per node, the gateway keeps ONE
long-lived `Replica.BatchFrames` stream and, per (node, range, read mode),
merges the operations that concurrent client calls submit into ONE
`ReplicaBatchRequest` (the node, in turn, turns a batch's writes into one raft
command). Throughput then grows with concurrency. A stream message still
costs tens of µs on each side, and a node with many ranges would get one
per range: so every batch of one event-loop turn to one node, whatever its
range, travels in ONE frame (and the node answers in frames; see
`rangekv.common.frames`). Nodes that predate BatchFrames get `BatchStream`,
one batch per message (see `NodeStream`).

How big a batch gets: at most `max_inflight` batches per (node, range, mode)
are on the wire at once. Below that a submitted op leaves at the end of the
current event-loop iteration (a lone client waits for nothing); at the limit,
ops gather until an answer frees a slot, so under load a batch holds what
arrived during one round trip. Without the bound, a CPU-starved gateway sends
a stream of one- and two-op batches and every process pays its per-message
and per-raft-entry costs for each (measured: about 2.4 puts per raft entry at
64 clients, against tens with the bound). The default bound is one: a second
slot let a get batch leave while the first was still out, so gets were
merged 1.5 to a batch at 64 clients; with one slot, 3.6, and both gets and
puts cost less CPU per operation (rangekv dev, 64 clients, one run each of
two rounds: gets 2,750-2,940/s against 2,150-2,230/s, cluster CPU per get
460-480 µs against 630-670 µs; puts 19-22 per raft entry against 11-13).
A lone client is not slowed: its op always finds the slot free.

A caller that gave up (its future is done, e.g. cancelled by its deadline)
while its ops waited for a slot is dropped from the batch before it leaves:
nothing is sent on behalf of a caller that was already answered.

Outcome accounting: once a request was written to a stream, losing the
stream means its writes have an unknown outcome (they may apply); a request
that never left the process failed cleanly. Callers get `Unavailable` with
the matching `WriteOutcome` and decide (writes of unknown outcome are never
retried).

A gateway that runs inside a storage node (`rangekv.gateway.embedded`) is told
that node's address and how to serve a batch in process (`serve_locally`): its
batches to that address are merged and bounded exactly as above, then handed
to the node's Replica service without gRPC (`LocalStream`): no serialization,
no stream message, no second event-loop hop.

`NodeBatches` is the seam the DistSender calls; `NodeClients` is the real one,
`MemoryNodeClients` its in-memory twin (each submission handed to an
in-process handler, e.g. a storage node's replica, with no gRPC in between).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from rangekv.common import errors as E
from rangekv.common.fan_out import FanOut
from rangekv.common.frames import FRAME_MAX_BYTES, FrameQueue
from rangekv.common.tls import ChannelOpener, PlaintextChannels
from rangekv.v1 import replica_pb2, replica_pb2_grpc, types_pb2

log = logging.getLogger(__name__)

CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
)


#: Batches per (node, range, mode) on the wire at once (see the module docstring).
DEFAULT_MAX_INFLIGHT = 1

#: (node address, range id, inconsistent, read timestamp bytes, has writes, fence id,
#: solo: 0, or a number of its own for a batch that must not be merged with others)
_BatchKey = tuple[str, int, bool, bytes, bool, bytes, int]


@dataclass(frozen=True, slots=True)
class BatchReply:
    """One caller's share of a node's answer."""

    results: list[replica_pb2.ReplicaOpResult]
    descriptor: types_pb2.RangeDescriptor
    read_timestamp: types_pb2.Timestamp
    lease_sequence: int


class NodeBatches(Protocol):
    """Batches of operations to storage nodes, as the DistSender submits them."""

    def submit(
        self,
        address: str,
        range_id: int,
        ops: list[replica_pb2.ReplicaOp],
        *,
        has_writes: bool,
        inconsistent: bool = False,
        read_timestamp: types_pb2.Timestamp | None = None,
        traceparent: str = "",
        fence_id: bytes = b"",
        solo: bool = False,
    ) -> asyncio.Future[BatchReply]:
        """The future resolves with this caller's results, or fails with the batch's
        error (a RangeKVError: routing errors, Unavailable, ...)."""
        ...

    async def close(self) -> None: ...


@dataclass
class _Pending:
    """Ops merged into one outgoing batch, and the callers waiting on them."""

    range_id: int
    inconsistent: bool
    read_timestamp: types_pb2.Timestamp | None
    #: The merged ops and which callers wait for which of them.
    fan: FanOut[replica_pb2.ReplicaOp, BatchReply] = field(default_factory=FanOut)
    has_writes: bool = False
    #: The callers' W3C traceparents; None (not an empty list) while none is traced.
    traceparents: list[str] | None = None
    #: The scan fence the reads are served under (b"": none).
    fence_id: bytes = b""


class NodeStream:
    """One stream of batches to one node address, with request multiplexing.

    `framed` (the default): `Replica.BatchFrames`, every batch queued by the time
    the previous frame was handed to gRPC in one stream message -- the batches
    one flush sends to a node for all its ranges travel together. A node that
    does not serve BatchFrames (an older version) answers UNIMPLEMENTED before
    serving anything (frames are sent only after the node's initial metadata,
    see `_accepted`, so that status arrives intact); the stream then fails its
    requests as not applied and
    says so in `unimplemented`, and the next stream to that address is a
    `Replica.BatchStream` (one batch per message)."""

    def __init__(
        self,
        address: str,
        channel: grpc.aio.Channel,
        *,
        framed: bool = True,
        gather_turns: int = 0,
        on_gather: Callable[[int], None] | None = None,
    ) -> None:
        """`gather_turns`, `on_gather`: a busy stream's frames of reads gather (see
        `rangekv.common.frames`); writes never wait."""
        self.address = address
        self.framed = framed
        self._stub = replica_pb2_grpc.ReplicaStub(channel)
        self._ids = itertools.count(1)
        self._inflight: dict[
            int, tuple[asyncio.Future[replica_pb2.ReplicaBatchResponse], bool]
        ] = {}
        self._outbox: FrameQueue[replica_pb2.BatchStreamRequest] = FrameQueue(
            FRAME_MAX_BYTES if framed else 1,
            gather_turns=gather_turns if framed else 0,
            on_gather=on_gather,
        )
        self._call: grpc.aio.StreamStreamCall | None = None
        self._reader: asyncio.Task[None] | None = None
        self._answered = False
        #: The highest request id handed to gRPC (the outbox is FIFO in id order):
        #: a request above it never left this process.
        self._handed_through = 0
        self.broken = False
        #: The node answered BatchFrames with UNIMPLEMENTED before serving anything.
        self.unimplemented = False

    def _ensure_open(self) -> None:
        if self._call is not None:
            return
        outbox = self._outbox

        async def frames() -> object:
            if not await self._accepted():
                return
            async for requests in outbox.frames():  # a new stream's first never waits
                self._handed_through = requests[-1].request_id
                yield replica_pb2.BatchFramesRequest(requests=requests)

        async def requests() -> object:
            async for requests in outbox.frames():
                self._handed_through = requests[0].request_id
                yield requests[0]  # frames of one (see __init__)

        if self.framed:
            self._call = self._stub.BatchFrames(frames())
        else:
            self._call = self._stub.BatchStream(requests())
        self._reader = asyncio.ensure_future(self._read())

    async def _accepted(self) -> bool:
        """Wait for the node's initial metadata (BatchFrames servers send it at once):
        True once the node serves the stream, False if the call ended instead.

        Why wait: when a stream ends on the server (UNIMPLEMENTED from a node that
        predates BatchFrames, PERMISSION_DENIED, ...) while a first message is
        being sent, gRPC Python reports the failed send as the call's status
        ("INTERNAL: Internal error from Core") and the real status is lost; the
        gateway could then not tell an old node from a broken one. Sending only
        after the node has spoken removes that race."""
        call = self._call
        assert call is not None
        try:
            await call.initial_metadata()
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            return False
        return not call.done()

    def _answer(self, resp: replica_pb2.BatchStreamResponse) -> None:
        entry = self._inflight.pop(resp.request_id, None)
        if entry is not None and not entry[0].done():
            entry[0].set_result(resp.batch)

    async def _read(self) -> None:
        assert self._call is not None
        err: E.RangeKVError | None = None
        never_served = False
        try:
            if self.framed:
                async for frame in self._call:
                    self._answered = True
                    for resp in frame.responses:
                        self._answer(resp)
            else:
                async for resp in self._call:
                    self._answer(resp)
        except grpc.aio.AioRpcError as exc:
            err = E.from_rpc_error(exc)
            never_served = _never_connected(exc)
            if self.framed and not self._answered and exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                # The method is unknown there: nothing of this stream was served.
                self.unimplemented = never_served = True
                err = E.Unavailable(f"{self.address} does not serve BatchFrames", 0.0)
        except asyncio.CancelledError:
            err = E.Unavailable(f"stream to {self.address} closed")
        self.broken = True
        # End the request generator too: otherwise grpc's task consuming it waits on
        # the outbox forever and is garbage collected pending (logged as an error).
        self._outbox.close()
        reason = err.message if err else f"stream to {self.address} ended"
        retry_after = 0.0 if self.unimplemented else 0.05
        for request_id, (fut, has_writes) in self._inflight.items():
            if not fut.done():
                # A write is of unknown outcome once it may have reached the node.
                # Nothing was sent if the connection was never made, or if the
                # request was still in the outbox: never handed to gRPC.
                sent = request_id <= self._handed_through
                unknown = has_writes and sent and not never_served
                outcome = E.WriteOutcome.of(unknown)
                fut.set_exception(E.Unavailable(reason, retry_after=retry_after, outcome=outcome))
        self._inflight.clear()

    def submit(
        self, batch: replica_pb2.ReplicaBatchRequest, has_writes: bool
    ) -> asyncio.Future[replica_pb2.ReplicaBatchResponse]:
        fut: asyncio.Future[replica_pb2.ReplicaBatchResponse] = (
            asyncio.get_running_loop().create_future()
        )
        if self.broken:
            fut.set_exception(E.Unavailable(f"stream to {self.address} is broken", 0.05))
            return fut
        self._ensure_open()
        request_id = next(self._ids)
        self._inflight[request_id] = (fut, has_writes)
        request = replica_pb2.BatchStreamRequest(request_id=request_id, batch=batch)
        self._outbox.put(request, request.ByteSize() if self.framed else 1, may_wait=not has_writes)
        return fut

    async def close(self) -> None:
        self._outbox.close()
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


#: Serves one batch of this process's own node in process (see `LocalStream`).
LocalBatchHandler = Callable[
    [replica_pb2.ReplicaBatchRequest], Awaitable[replica_pb2.ReplicaBatchResponse]
]


class BatchChannel(Protocol):
    """Where `NodeClients` hands a built batch: a gRPC stream or the local node."""

    broken: bool
    unimplemented: bool

    def submit(
        self, batch: replica_pb2.ReplicaBatchRequest, has_writes: bool
    ) -> asyncio.Future[replica_pb2.ReplicaBatchResponse]: ...

    async def close(self) -> None: ...


class LocalStream:
    """Batches for the node this gateway runs in, served by its Replica service in
    process. It never breaks: there is no connection to lose.

    Outcomes as over gRPC: the node answers errors in-band; an exception out of
    the handler is a bug there, and a write it was serving is of unknown outcome
    (it may have been proposed before the exception), as a write on a stream
    that broke after it left. The same holds for a batch still being served when
    the stream closes (the node is shutting down): it is stopped, and its
    callers are answered UNAVAILABLE with that outcome. A batch submitted after
    `close` began is refused unsent (NOT_APPLIED).

    Each submission returns a plain future that only this stream settles: a
    caller that gives up does not cancel what the node is serving (as a batch
    on the wire is not called back either), and the stream's own stop answers
    its callers instead of leaving them to their deadlines."""

    broken = False
    unimplemented = False

    def __init__(
        self, address: str, handler: LocalBatchHandler, *, close_wait: float = 1.0
    ) -> None:
        self.address = address
        self._handler = handler
        #: Seconds `close` lets batches being served finish before it stops them.
        self._close_wait = close_wait
        self._serving: set[asyncio.Task[replica_pb2.ReplicaBatchResponse]] = set()
        self._closing = False
        #: Batches served in process (a test and a benchmark read it).
        self.batches = 0

    def submit(
        self, batch: replica_pb2.ReplicaBatchRequest, has_writes: bool
    ) -> asyncio.Future[replica_pb2.ReplicaBatchResponse]:
        answer: asyncio.Future[replica_pb2.ReplicaBatchResponse] = (
            asyncio.get_running_loop().create_future()
        )
        if self._closing:
            answer.set_exception(E.Unavailable(f"{self.address} is shutting down", 0.05))
            return answer
        self.batches += 1
        task = asyncio.ensure_future(self._handler(batch))
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)
        task.add_done_callback(
            functools.partial(self._hand_over, answer, batch.range_id, has_writes)
        )
        return answer

    def _hand_over(
        self,
        answer: asyncio.Future[replica_pb2.ReplicaBatchResponse],
        range_id: int,
        has_writes: bool,
        served: asyncio.Task[replica_pb2.ReplicaBatchResponse],
    ) -> None:
        """Settle the callers' future from the node's task, however it ended
        (stopped by `close` even before it started, raised, or answered)."""
        if answer.done():
            return
        outcome = E.WriteOutcome.of(has_writes)
        if served.cancelled():
            answer.set_exception(
                E.Unavailable(f"{self.address} stopped serving", 0.05, outcome=outcome)
            )
        elif (exc := served.exception()) is not None:
            log.error("the local node failed a batch for range %d", range_id, exc_info=exc)
            answer.set_exception(
                E.Unavailable(
                    f"{self.address} failed a batch in process: {exc!r}", 0.05, outcome=outcome
                )
            )
        else:
            answer.set_result(served.result())

    async def close(self) -> None:
        """Refuse new batches; let those being served finish for up to `close_wait`
        seconds, then stop them (their callers are answered, see the class)."""
        self._closing = True
        if not self._serving:
            return
        serving = list(self._serving)
        _done, late = await asyncio.wait(serving, timeout=self._close_wait)
        for task in late:
            task.cancel()
        if late:
            await asyncio.gather(*late, return_exceptions=True)


class NodeClients:
    """Streams and batching towards every node the gateway talks to."""

    def __init__(
        self,
        *,
        channel_factory: Callable[[str], grpc.aio.Channel] | None = None,
        channels: ChannelOpener | None = None,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        framed: bool = True,
        frame_gather_turns: int = 0,
    ) -> None:
        """`framed`: talk BatchFrames to nodes (see NodeStream); False: BatchStream.
        `frame_gather_turns`: event-loop turns a busy stream's frame of reads may wait
        for more reads (`rangekv.common.frames`; 0: never)."""
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
        if frame_gather_turns < 0:
            raise ValueError(f"frame_gather_turns must be >= 0, got {frame_gather_turns}")
        opener = channels if channels is not None else PlaintextChannels()
        self._channel_factory = channel_factory or (lambda addr: opener(addr, CHANNEL_OPTIONS))
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._streams: dict[str, BatchChannel] = {}
        #: Streams replaced by `serve_locally`, closed by `close`.
        self._retired: list[BatchChannel] = []
        self._max_inflight = max_inflight
        self._pending: dict[_BatchKey, _Pending] = {}
        #: Batches on the wire per key; a key is absent when none is.
        self._inflight: dict[_BatchKey, int] = {}
        self._flush_scheduled = False
        self.batches_sent = 0
        self.ops_sent = 0
        #: Read batches split because their answer would have been too large.
        self.split_batches = 0
        self._solo_ids = itertools.count(1)
        self._framed = framed
        self._frame_gather_turns = frame_gather_turns
        #: Event-loop turns the streams' frames waited for more reads (monotonic).
        self.frame_gather_turns = 0
        #: Nodes that answered BatchFrames with UNIMPLEMENTED: they get BatchStream.
        self._unframed: set[str] = set()

    def channel(self, address: str) -> grpc.aio.Channel:
        ch = self._channels.get(address)
        if ch is None:
            ch = self._channel_factory(address)
            self._channels[address] = ch
        return ch

    def stub(self, address: str) -> replica_pb2_grpc.ReplicaStub:
        return replica_pb2_grpc.ReplicaStub(self.channel(address))

    def serve_locally(self, address: str, handler: LocalBatchHandler) -> LocalStream:
        """Batches for `address` (the node this gateway runs in, as the store
        registry names it) go to `handler` in process from now on. A gRPC stream
        to that address opened before (calls served before the node knew its
        address) keeps its batches in flight and is closed with the others."""
        replaced = self._streams.get(address)
        if replaced is not None:
            self._retired.append(replaced)
        local = LocalStream(address, handler)
        self._streams[address] = local
        return local

    def _stream(self, address: str) -> BatchChannel:
        stream = self._streams.get(address)
        if stream is None or stream.broken:
            if stream is not None and stream.unimplemented:
                log.info("node %s does not serve BatchFrames; using BatchStream", address)
                self._unframed.add(address)
            framed = self._framed and address not in self._unframed
            stream = NodeStream(
                address,
                self.channel(address),
                framed=framed,
                gather_turns=self._frame_gather_turns,
                on_gather=self._count_gather,
            )
            self._streams[address] = stream
        return stream

    def _count_gather(self, turns: int) -> None:
        self.frame_gather_turns += turns

    def submit(
        self,
        address: str,
        range_id: int,
        ops: list[replica_pb2.ReplicaOp],
        *,
        has_writes: bool,
        inconsistent: bool = False,
        read_timestamp: types_pb2.Timestamp | None = None,
        traceparent: str = "",
        fence_id: bytes = b"",
        solo: bool = False,
    ) -> asyncio.Future[BatchReply]:
        """Queue `ops` for `range_id` at `address`; they leave with every other op
        queued for the same (node, range, mode) in this loop iteration.

        The future resolves with this caller's results, or fails with the
        batch's error (a RangeKVError: routing errors, Unavailable, ...).
        `traceparent` (W3C; "" when untraced) rides along in the batch so the
        node continues the caller's trace. `fence_id`: the scan fence the reads
        are served under (see rangekv.raftnode.fences); batches never mix fences.
        `solo`: these ops leave in a batch of their own. So does a fence operation
        (a scan's hold or release): a node refuses a batch that mixes one with
        reads (INVALID_ARGUMENT), and the refusal would fail every read in it.
        """
        if not solo and ops[0].HasField("fence"):
            solo = True  # the scan's fence calls send one fence op each
        ts_key = read_timestamp.SerializeToString() if read_timestamp is not None else b""
        # Reads and writes never share a batch: a batch fails as a whole, and a
        # read's failure must not be able to mask (and so re-send) an applied write.
        key = (
            address,
            range_id,
            inconsistent,
            ts_key,
            has_writes,
            fence_id,
            next(self._solo_ids) if solo else 0,
        )
        pending = self._pending.get(key)
        if pending is None:
            pending = _Pending(range_id, inconsistent, read_timestamp, fence_id=fence_id)
            self._pending[key] = pending
        fut: asyncio.Future[BatchReply] = asyncio.get_running_loop().create_future()
        pending.fan.add(ops, fut)
        pending.has_writes = pending.has_writes or has_writes
        if traceparent:
            if pending.traceparents is None:
                pending.traceparents = []
            pending.traceparents.append(traceparent)
        if self._inflight.get(key, 0) < self._max_inflight:
            self._schedule_flush()
        return fut

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Send every gathered batch whose key has a free in-flight slot."""
        self._flush_scheduled = False
        for key in [k for k in self._pending if self._inflight.get(k, 0) < self._max_inflight]:
            p = _without_abandoned(self._pending.pop(key))
            if p is None:
                continue
            self._inflight[key] = self._inflight.get(key, 0) + 1
            req = replica_pb2.ReplicaBatchRequest(
                range_id=p.range_id,
                inconsistent=p.inconsistent,
                ops=p.fan.items,
                fence_id=p.fence_id,
            )
            if p.read_timestamp is not None:
                req.read_timestamp.CopyFrom(p.read_timestamp)
            if p.traceparents:
                req.traceparents.extend(p.traceparents)
            self.batches_sent += 1
            self.ops_sent += len(p.fan)
            sent = self._stream(key[0]).submit(req, p.has_writes)
            sent.add_done_callback(functools.partial(self._distribute, key=key, pending=p))
            sent.add_done_callback(functools.partial(self._answered, key))

    def _answered(self, key: _BatchKey, _done: asyncio.Future[Any]) -> None:
        """A batch of `key` left the wire: free its slot, send what gathered behind it."""
        left = self._inflight.pop(key, 1) - 1
        if left > 0:
            self._inflight[key] = left
        if key in self._pending:
            self._schedule_flush()

    def _distribute(
        self,
        done: asyncio.Future[replica_pb2.ReplicaBatchResponse],
        key: _BatchKey,
        pending: _Pending,
    ) -> None:
        """Hand every caller its share of the node's answer (or the batch's error).

        A batch of reads whose answer the node found too large (it refuses rather
        than break the shared stream) is split: each caller's ops go again, alone."""
        p = pending
        if done.cancelled():  # no stream cancels its answers; if one ever does, say so
            outcome = E.WriteOutcome.of(p.has_writes)
            p.fan.fail(E.Unavailable("node batch cancelled", 0.05, outcome=outcome))
            return
        exc = done.exception()
        resp: replica_pb2.ReplicaBatchResponse | None = None
        if exc is None:
            resp = done.result()
            if resp.HasField("error"):
                exc = E.from_replica_error(resp.error)
            elif len(resp.results) != len(p.fan):
                exc = E.InternalError(
                    f"node answered {len(resp.results)} results for {len(p.fan)} operations"
                )
        if (
            isinstance(exc, E.ResourceExhausted)
            and exc.answer_too_large
            and not p.has_writes
            and len(p.fan.shares) > 1
        ):
            self._split(key, p)
            return
        if exc is not None:
            p.fan.fail(exc)
            return
        assert resp is not None
        p.fan.resolve(resp.results, functools.partial(_reply, resp))

    def _split(self, key: _BatchKey, p: _Pending) -> None:
        """Send each caller's reads of `p` as a batch of its own."""
        address, range_id, inconsistent, _ts, _writes, fence_id, _solo = key
        self.split_batches += 1
        for ops, fut in p.fan.slices():
            alone = self.submit(
                address,
                range_id,
                ops,
                has_writes=False,
                inconsistent=inconsistent,
                read_timestamp=p.read_timestamp,
                fence_id=fence_id,
                solo=True,
            )
            alone.add_done_callback(functools.partial(_pass_on, fut))

    async def close(self) -> None:
        for stream in [*self._streams.values(), *self._retired]:
            await stream.close()
        self._retired.clear()
        for ch in self._channels.values():
            await ch.close()
        self._streams.clear()
        self._channels.clear()


def _never_connected(exc: grpc.aio.AioRpcError) -> bool:
    """Whether the stream failed before any connection existed (so nothing was sent)."""
    if exc.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    details = (exc.details() or "").lower()
    return "failed to connect" in details or "connection refused" in details


def _without_abandoned(p: _Pending) -> _Pending | None:
    """`p` minus the callers that are already answered (None if none is left)."""
    live = p.fan.live()
    if live is p.fan:
        return p
    if not live.shares:
        return None
    return _Pending(
        p.range_id,
        p.inconsistent,
        p.read_timestamp,
        fan=live,
        has_writes=p.has_writes,
        traceparents=p.traceparents,
        fence_id=p.fence_id,
    )


def _reply(
    resp: replica_pb2.ReplicaBatchResponse, results: list[replica_pb2.ReplicaOpResult]
) -> BatchReply:
    """One caller's share of `resp`: its results, and what the whole answer says."""
    return BatchReply(results, resp.descriptor, resp.read_timestamp, resp.lease_sequence)


def _pass_on(target: asyncio.Future[BatchReply], done: asyncio.Future[BatchReply]) -> None:
    if target.done():
        return
    if done.cancelled():
        target.cancel()
    elif (exc := done.exception()) is not None:
        target.set_exception(exc)
    else:
        target.set_result(done.result())


#: Serves one batch in process: (node address, request) -> the node's answer.
BatchHandler = Callable[
    [str, replica_pb2.ReplicaBatchRequest], Awaitable[replica_pb2.ReplicaBatchResponse]
]


class MemoryNodeClients:
    """The in-memory twin of `NodeClients`: every submission becomes one request,
    built as the real client builds it, handed to `handler` in this process; the
    answer is split and its errors mapped as the real client does (no merging:
    each caller's ops go alone)."""

    def __init__(self, handler: BatchHandler) -> None:
        self._handler = handler
        #: Every request handed over, by node address (in order).
        self.requests: list[tuple[str, replica_pb2.ReplicaBatchRequest]] = []

    def submit(
        self,
        address: str,
        range_id: int,
        ops: list[replica_pb2.ReplicaOp],
        *,
        has_writes: bool,
        inconsistent: bool = False,
        read_timestamp: types_pb2.Timestamp | None = None,
        traceparent: str = "",
        fence_id: bytes = b"",
        solo: bool = False,
    ) -> asyncio.Future[BatchReply]:
        req = replica_pb2.ReplicaBatchRequest(
            range_id=range_id, ops=ops, inconsistent=inconsistent, fence_id=fence_id
        )
        if read_timestamp is not None:
            req.read_timestamp.CopyFrom(read_timestamp)
        if traceparent:
            req.traceparents.append(traceparent)

        async def call() -> BatchReply:
            self.requests.append((address, req))
            resp = await self._handler(address, req)
            if resp.HasField("error"):
                raise E.from_replica_error(resp.error)
            return _reply(resp, list(resp.results))

        return asyncio.ensure_future(call())

    async def close(self) -> None:
        return None
