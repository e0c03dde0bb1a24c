"""One connection's KV/Stream: concurrent calls multiplexed onto one long-lived stream.

Every call gets a request id and a future. The requests made in one event-loop
iteration leave together, in one message (up to ``max_frame_bytes``), written by
the connection's writer task; the reader task resolves each future from the
answer carrying its id, in whatever order the answers come. So concurrent
callers share both the cost of the gRPC call (paid once per stream) and the
cost of a message.

Gathering (``gather_turns``): the requests wait in a
:class:`rangekv.common.frames.FrameQueue`. When the writer was busy (requests
piled up while it wrote the last message) and every waiting request only reads,
the next message first waits up to ``gather_turns`` event-loop turns while each
brings more requests, so that many callers' reads share one message. A write
never waits, nor does anything queued with it; an idle connection never waits,
and neither does a new stream's first message.

Bounded: at most ``max_inflight`` requests per connection are unanswered; a
caller beyond that waits for room (within its deadline).

Deadlines: the gateway is told each request's timeout (a little less than
what the caller has left, so that its own answer, which says whether a write
applied, usually arrives first); a timer at the caller's deadline is the
backstop and answers DEADLINE_EXCEEDED itself.

A broken stream (the gateway restarted, the connection dropped) fails the
requests it carried: a read with UNAVAILABLE, which is safe to retry; a write
with UNAVAILABLE and WRITE_OUTCOME_UNKNOWN, because it may have reached the
gateway - unless the stream never connected at all, when nothing was sent
(NOT_APPLIED). Requests that were not written yet go out on the next stream,
which the next call (or those requests) opens: that is the reconnect.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from rangekv.client.values import is_write
from rangekv.common import errors as E
from rangekv.common.frames import FRAME_MAX_BYTES, FrameQueue
from rangekv.v1 import kv_pb2


class StreamCall(Protocol):
    """What the connection needs of a grpc.aio KV/Stream call (and tests' twin of it)."""

    async def write(self, request: kv_pb2.StreamRequest) -> None: ...

    async def read(self) -> Any:
        """The next StreamResponse, or ``grpc.aio.EOF`` when the stream ended cleanly."""
        ...

    def cancel(self) -> bool: ...


#: Bytes one request adds to a StreamRequest beyond its own encoding (field tag and
#: length prefix): counted, so that a message stays within `max_frame_bytes`.
ITEM_FRAMING = 6

#: Opens a new KV/Stream call.
OpenStream = Callable[[], StreamCall]


@dataclass(slots=True)
class _Waiting:
    """One request not answered yet."""

    future: asyncio.Future[Any]
    write: bool
    #: The stream it was written to (None: not written yet).
    stream: _Stream | None = None


@dataclass(eq=False)
class _Stream:
    """One KV/Stream call and its writer and reader tasks."""

    call: StreamCall
    #: Whether any answer came back on it (so it certainly connected).
    answered: bool = False
    writer: asyncio.Task[None] | None = None
    reader: asyncio.Task[None] | None = None


class StreamConnection:
    """Calls multiplexed onto one KV/Stream at a time (see the module docstring)."""

    def __init__(
        self,
        open_stream: OpenStream,
        *,
        max_inflight: int = 1000,
        gather_turns: int = 0,
        max_frame_bytes: int = FRAME_MAX_BYTES,
    ) -> None:
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
        self._open_stream = open_stream
        self._max_inflight = max_inflight
        self._ids = itertools.count(1)
        self._waiting: dict[int, _Waiting] = {}
        #: Requests not written yet, in call order (a stream that breaks leaves the
        #: rest to the next one).
        self._outbox: FrameQueue[kv_pb2.StreamRequestItem] = FrameQueue(
            max_frame_bytes, gather_turns=gather_turns, on_gather=self._gathered
        )
        self._stream: _Stream | None = None
        self._room = asyncio.Event()
        self._room.set()
        self._closed = False
        #: Streams opened, and messages written (so requests per message can be seen).
        self.streams_opened = 0
        self.messages_sent = 0
        #: Event-loop turns the busy writer waited for more reads (see the module docstring).
        self.gather_turns = 0

    @property
    def waiting(self) -> int:
        """Requests not answered yet."""
        return len(self._waiting)

    async def call(self, kind: str, message: Any, timeout: float) -> Any:
        """Send one request; its response proto, or the RangeKVError it failed with."""
        if self._closed:
            raise E.Unavailable("the client is closed", retry_after=0.0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self._waiting) >= self._max_inflight:
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), deadline - loop.time())
            except TimeoutError:
                raise E.DeadlineExceeded(
                    f"the deadline passed while {len(self._waiting)} requests filled the "
                    "connection (nothing was sent)",
                    E.WriteOutcome.NOT_APPLIED,
                ) from None
        if self._closed:  # while this call waited for room
            raise E.Unavailable("the client is closed", retry_after=0.0)
        rid = next(self._ids)
        item = kv_pb2.StreamRequestItem(request_id=rid)
        getattr(item, kind).CopyFrom(message)
        # Leave the gateway time to answer (and say whether a write applied) before we give up.
        item.timeout.FromNanoseconds(int(max(0.001, timeout - min(0.1, timeout * 0.1)) * 1e9))
        waiting = _Waiting(loop.create_future(), is_write(kind, message))
        self._waiting[rid] = waiting
        size = item.ByteSize() + ITEM_FRAMING
        self._outbox.put(item, size, may_wait=not waiting.write)
        if self._stream is None:
            self._open()
        timer = loop.call_at(deadline, self._expire, rid)
        try:
            return await waiting.future
        finally:
            timer.cancel()
            if self._waiting.get(rid) is waiting:  # the caller was cancelled
                del self._waiting[rid]
                self._made_room()

    def _expire(self, rid: int) -> None:
        waiting = self._waiting.pop(rid, None)
        if waiting is None or waiting.future.done():
            return
        self._made_room()
        sent = waiting.stream is not None
        outcome = E.WriteOutcome.UNSPECIFIED
        if waiting.write:
            outcome = E.WriteOutcome.of(sent)
        where = "while the request was in flight" if sent else "before the request was sent"
        waiting.future.set_exception(E.DeadlineExceeded(f"deadline exceeded {where}", outcome))

    def _made_room(self) -> None:
        if len(self._waiting) < self._max_inflight:
            self._room.set()

    def _gathered(self, turns: int) -> None:
        self.gather_turns += turns

    # --- streams ------------------------------------------------------------------------

    def _open(self) -> _Stream:
        stream = _Stream(self._open_stream())
        self._stream = stream
        self.streams_opened += 1
        stream.writer = asyncio.ensure_future(self._write_loop(stream))
        stream.reader = asyncio.ensure_future(self._read_loop(stream))
        return stream

    async def _write_loop(self, stream: _Stream) -> None:
        """Write what callers queued: everything queued, up to a frame, per message."""
        waiting = self._waiting
        try:
            async for frame in self._outbox.frames():  # a new stream's first never waits
                # Requests whose caller gave up before they left are not sent at all.
                items = [i for i in frame if i.request_id in waiting]
                if not items:
                    continue
                for item in items:
                    waiting[item.request_id].stream = stream
                self.messages_sent += 1
                await stream.call.write(kv_pb2.StreamRequest(requests=items))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the call failed under the write: the reader says why
            self._broken(stream, _as_error(exc, stream))

    async def _read_loop(self, stream: _Stream) -> None:
        waiting = self._waiting
        try:
            while True:
                message = await stream.call.read()
                if message is grpc.aio.EOF:
                    error: E.RangeKVError = E.Unavailable("the gateway ended the stream")
                    break
                stream.answered = True
                for answer in message.responses:
                    entry = waiting.pop(answer.request_id, None)
                    if entry is None or entry.future.done():
                        continue  # its caller gave up already
                    kind = answer.WhichOneof("response")
                    if kind == "error":
                        entry.future.set_exception(
                            E.from_status_proto(answer.error, is_write=entry.write)
                        )
                    elif kind is None:
                        entry.future.set_exception(
                            E.InternalError(f"answer {answer.request_id} carries no response")
                        )
                    else:
                        entry.future.set_result(getattr(answer, kind))
                if len(waiting) < self._max_inflight:
                    self._room.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = _as_error(exc, stream)
        self._broken(stream, error)

    def _broken(self, stream: _Stream, error: E.RangeKVError) -> None:
        """The stream is over: fail what it carried; what it did not carry waits for the next."""
        if self._stream is stream:
            self._stream = None
        stream.call.cancel()
        for task in (stream.writer, stream.reader):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        never_connected = isinstance(error, _NeverConnected)
        for rid, entry in list(self._waiting.items()):
            if entry.stream is not stream:
                continue
            del self._waiting[rid]
            if entry.future.done():
                continue
            unknown = entry.write and not never_connected
            entry.future.set_exception(
                E.Unavailable(
                    f"the stream to the gateway broke: {error.message}",
                    retry_after=0.05,
                    outcome=E.WriteOutcome.of(unknown),
                )
            )
        self._made_room()
        if self._outbox and not self._closed:
            self._open()

    async def close(self) -> None:
        """Fail every request not answered yet, end the stream."""
        self._closed = True
        self._room.set()  # callers waiting for room learn it is closed
        stream, self._stream = self._stream, None
        self._outbox.close()
        for entry in self._waiting.values():
            if not entry.future.done():
                unknown = entry.write and entry.stream is not None
                entry.future.set_exception(
                    E.Unavailable(
                        "the client was closed",
                        retry_after=0.0,
                        outcome=E.WriteOutcome.of(unknown),
                    )
                )
        self._waiting.clear()
        if stream is not None:
            stream.call.cancel()
            tasks = [t for t in (stream.writer, stream.reader) if t is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


class _NeverConnected(E.Unavailable):
    """The stream failed before it ever connected: nothing written to it was sent."""


def _as_error(exc: Exception, stream: _Stream) -> E.RangeKVError:
    if isinstance(exc, grpc.aio.AioRpcError):
        details = (exc.details() or "").lower()
        if (
            not stream.answered
            and exc.code() == grpc.StatusCode.UNAVAILABLE
            and ("failed to connect" in details or "connection refused" in details)
        ):
            return _NeverConnected(exc.details() or "cannot connect", retry_after=0.1)
        return E.from_rpc_error(exc)
    if isinstance(exc, E.RangeKVError):
        return exc
    return E.Unavailable(f"{type(exc).__name__}: {exc}")


__all__ = ["OpenStream", "StreamCall", "StreamConnection"]
