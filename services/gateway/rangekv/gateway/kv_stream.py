"""KV/Stream: many tagged requests on one long-lived call, answered as they finish.

Why: a Python gRPC server pays a few hundred microseconds of CPU per unary
call, whatever the call does. A busy client that opens one stream per
connection and sends its operations on it pays that once; each operation then
costs its share of one message read and one message written, and several
requests (and several answers) share a message whenever they meet in the same
event-loop iteration.

How one stream is served (one :class:`StreamSession` per call):

- the *reader* takes the client's messages in order and, for each request,
  waits for a slot: at most ``max_inflight`` requests of the stream are open
  (being worked on, or answered but not yet handed to gRPC). Then it starts a
  task for the request. While the stream is at its bound the reader does not
  read, so HTTP/2 flow control slows the client down;
- a request's task runs it exactly as its unary call would run (the service's
  ``serve``: validation, role, admission, DistSender) and turns the outcome into
  one answer: the unary call's response, or the google.rpc.Status the unary
  call would have ended with (rangekv.common.errors.to_status_proto);
- the *writer* (the handler's response generator) sends every answer that is
  ready as one message (several if they exceed ``frame_bytes``) and frees their
  slots only once gRPC has taken the message. A client that does not read its
  answers therefore stops the reader after ``max_inflight`` requests: the
  gateway never holds more than that many requests and answers per stream.
  The answers wait in a :class:`rangekv.common.frames.FrameQueue`: when the
  writer was busy (answers piled up while it wrote the last message) and every
  waiting answer is a read's, its next message first waits up to
  ``gather_turns`` event-loop turns while each brings more answers, so that
  the reads of many ranges share one message (an answer to a write never
  waits; an idle stream never does).

One failed request never ends the stream. The stream ends with a status of its
own only for what concerns it as a whole: a message that is not valid protobuf
(INVALID_ARGUMENT), a request id repeated while the first is unanswered
(INVALID_ARGUMENT: an answer carrying it could be taken for the other one's).
Requests already started are answered first; nothing after the bad message is
read. When the client half-closes, the stream ends OK once every request is
answered. When the client cancels, the work in flight is cancelled (a write
already sent to its range may still apply: the client gave its answer up).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from rangekv.common import errors as E
from rangekv.common.frames import FrameQueue
from rangekv.common.server import internal_message
from rangekv.v1 import kv_pb2

log = logging.getLogger("rangekv.gateway.stream")

METHOD = "/rangekv.v1.KV/Stream"

#: Runs one request: (StreamRequestItem oneof name, its message, timeout or None) -> response.
Serve = Callable[[str, Any, float | None], Awaitable[Any]]

#: Room kept in a message for the framing around one answer.
_FRAMING = 1024


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """How much one KV/Stream may hold, and how answers are framed."""

    #: Requests of one stream open at once (running, or answered and not yet sent).
    max_inflight: int = 1000
    #: The longest a request may take (its own timeout is capped by it).
    request_timeout: float = 10.0
    #: The largest message the server sends; an answer that cannot fit is refused.
    max_message_bytes: int = 64 << 20
    #: Answers ready together are sent in messages of about this many bytes.
    frame_bytes: int = 1 << 20
    #: Event-loop turns a busy stream's next message of read answers may wait for
    #: more of them (0: never; see the module docstring).
    gather_turns: int = 0

    def __post_init__(self) -> None:
        if self.max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {self.max_inflight}")
        if self.gather_turns < 0:
            raise ValueError(f"gather_turns must be >= 0, got {self.gather_turns}")
        if self.request_timeout <= 0:
            raise ValueError(f"request_timeout must be > 0, got {self.request_timeout}")
        if self.max_message_bytes <= _FRAMING or self.frame_bytes < 1:
            raise ValueError("max_message_bytes and frame_bytes must leave room for an answer")


@dataclass
class StreamStats:
    """Counters telemetry reads (plain ints: nothing on the hot path but an addition)."""

    opened: int = 0
    open: int = 0
    requests: int = 0
    messages_in: int = 0
    messages_out: int = 0
    #: Event-loop turns busy writers waited for more answers of reads.
    gather_turns: int = 0
    #: Failed requests by status code name.
    failed: dict[str, int] = field(default_factory=dict)

    def fail(self, code: str) -> None:
        self.failed[code] = self.failed.get(code, 0) + 1


class StreamSession:
    """One KV/Stream call: its reader, its requests' tasks and its writer."""

    def __init__(
        self,
        serve: Serve,
        limits: StreamLimits,
        stats: StreamStats,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._serve = serve
        self._limits = limits
        self._stats = stats
        self._monotonic = monotonic
        #: Requests admitted and not yet handed to gRPC in an answer.
        self._open = 0
        #: Ids of the requests started and not yet answered.
        self._ids: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Answers ready to send; closed once the reader and every request are done.
        self._ready: FrameQueue[kv_pb2.StreamResponseItem] = FrameQueue(
            limits.frame_bytes, gather_turns=limits.gather_turns, on_gather=self._gathered
        )
        self._reader: asyncio.Task[None] | None = None
        self._room = asyncio.Event()
        self._room.set()

    # --- the writer: the handler's response stream -------------------------------------

    async def run(
        self, requests: AsyncIterable[kv_pb2.StreamRequest]
    ) -> AsyncGenerator[kv_pb2.StreamResponse, None]:
        """Serve the call: yields the answer messages; raises the stream-level error."""
        self._stats.opened += 1
        self._stats.open += 1
        reader = self._reader = asyncio.ensure_future(self._read(requests))
        reader.add_done_callback(self._maybe_end)
        try:
            async for frame in self._ready.frames():
                self._stats.messages_out += 1
                yield kv_pb2.StreamResponse(responses=frame)
                self._release(len(frame))
            error = reader.exception()
            if error is not None:
                raise error
        finally:
            self._stats.open -= 1
            # The call is over (ended, failed or cancelled): nobody will read answers.
            reader.cancel()
            for task in self._tasks:
                task.cancel()

    def _release(self, n: int) -> None:
        self._open -= n
        if self._open < self._limits.max_inflight:
            self._room.set()

    def _maybe_end(self, _done: object = None) -> None:
        """Once the reader and every request it started are done, no answer can come:
        the writer sends what is queued, then ends."""
        if self._reader is not None and self._reader.done() and not self._tasks:
            self._ready.close()

    def _gathered(self, turns: int) -> None:
        self._stats.gather_turns += turns

    # --- the reader -------------------------------------------------------------------

    async def _read(self, requests: AsyncIterable[kv_pb2.StreamRequest]) -> None:
        async for message in requests:
            self._stats.messages_in += 1
            received = self._monotonic()
            for item in message.requests:
                while self._open >= self._limits.max_inflight:
                    self._room.clear()
                    await self._room.wait()
                self._start(item, received)

    def _start(self, item: kv_pb2.StreamRequestItem, received: float) -> None:
        rid = item.request_id
        if rid in self._ids:
            raise E.InvalidArgument(
                "request_id",
                f"{rid} is used by a request of this stream that is not answered yet "
                "(an answer carrying it could be taken for either)",
            )
        self._stats.requests += 1
        self._open += 1
        kind = item.WhichOneof("request")
        if kind is None:
            self._answer_error(
                rid,
                E.InvalidArgument(
                    "request", "no operation set (get, put, delete, compare_and_swap or batch)"
                ),
            )
            return
        timeout = self._limits.request_timeout
        if item.HasField("timeout"):
            asked = item.timeout.ToNanoseconds() / 1e9
            if asked < 0:
                self._answer_error(rid, E.InvalidArgument("timeout", "must not be negative"))
                return
            if asked > 0:
                timeout = min(asked, timeout)
        self._ids.add(rid)
        body = getattr(item, kind)
        task = asyncio.ensure_future(
            self._serve_one(rid, kind, body, received + timeout, _reads_only(kind, body))
        )
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._maybe_end()

    # --- one request ------------------------------------------------------------------

    async def _serve_one(
        self, rid: int, kind: str, body: Any, deadline: float, reads_only: bool
    ) -> None:
        """Run one request; its answer waits to be sent (`reads_only`: it may wait for
        company, see the module docstring)."""
        try:
            remaining = deadline - self._monotonic()
            if remaining <= 0:
                raise E.DeadlineExceeded(
                    "the request's timeout passed before the gateway could start it (the "
                    f"stream was at its limit of {self._limits.max_inflight} open requests)",
                    E.WriteOutcome.NOT_APPLIED,
                )
            result = await self._serve(kind, body, remaining)
        except E.RangeKVError as exc:
            self._ids.discard(rid)
            self._answer_error(rid, exc)
            return
        except Exception as exc:  # a bug: one line to the client, the traceback to the log
            log.error("internal error in %s (%s)", METHOD, kind, exc_info=exc)
            self._ids.discard(rid)
            self._answer_error(rid, E.InternalError(internal_message(METHOD, exc)))
            return
        self._ids.discard(rid)
        answer = kv_pb2.StreamResponseItem(request_id=rid)
        getattr(answer, kind).CopyFrom(result)
        size = answer.ByteSize()
        if size > self._limits.max_message_bytes - _FRAMING:
            self._answer_error(rid, _too_large(kind, body, size, self._limits.max_message_bytes))
            return
        self._ready.put(answer, size, may_wait=reads_only)

    def _answer_error(self, rid: int, exc: E.RangeKVError) -> None:
        self._stats.fail(exc.code.name)
        answer = kv_pb2.StreamResponseItem(request_id=rid, error=E.to_status_proto(exc))
        self._ready.put(answer, answer.ByteSize())


def _reads_only(kind: str, body: Any) -> bool:
    """Whether a request only reads: a get, or a batch of gets."""
    return kind == "get" or (
        kind == "batch" and all(i.WhichOneof("request") == "get" for i in body.requests)
    )


def _too_large(kind: str, body: Any, size: int, limit: int) -> E.RangeKVError:
    """The answer for a request whose answer cannot fit in one message."""
    why = f"the answer is {size} bytes, more than one stream message may carry ({limit})"
    if _reads_only(kind, body):
        return E.ResourceExhausted(f"{why}; ask for fewer keys at once")
    return E.Unavailable(
        f"{why}; the writes were applied but their answer cannot be sent",
        retry_after=0.0,
        outcome=E.WriteOutcome.UNKNOWN,
    )


__all__ = ["METHOD", "Serve", "StreamLimits", "StreamSession", "StreamStats"]
