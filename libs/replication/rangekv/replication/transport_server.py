"""Raft transport, receiver side: the `rangekv.v1.RaftTransport` gRPC service.

The servicer decodes and hands over; it holds no raft state. Each
`RaftStreamRequest` becomes ONE call of the injected `handle(batch)`, so the
raft scheduler can step a whole batch before its next Ready round instead of
waking once per message. `handle` is synchronous and must not block: it runs
on the event loop between reads of every lane's stream.

Snapshots are not buffered here: `handle_snapshot` receives an async iterator
that pulls chunks off the gRPC stream as it consumes them, so memory stays at
about one chunk and gRPC flow control slows the sender to the receiver's pace.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Final

import grpc

from rangekv.v1 import raft_pb2, raft_pb2_grpc, types_pb2

from .raft_codec import DecodedMessage, message_from_proto, messages_from_proto

__all__ = [
    "MAX_MESSAGE_BYTES",
    "SERVER_OPTIONS",
    "IncompleteSnapshot",
    "RaftTransportServicer",
]

log = logging.getLogger(__name__)

#: The refusal's message under the test fault (`TestFaults.refuse_raft_file`).
REFUSED_BY_TEST_FAULT: Final = "refused by a test fault (RANGEKV_TEST_REFUSE_RAFT_FILE)"

#: Largest gRPC message either side accepts: a batch holds up to
#: `TransportConfig.max_batch_bytes` plus at most one oversized message.
MAX_MESSAGE_BYTES: Final = 64 << 20

#: Options for the gRPC server that hosts this servicer: accept big batches and
#: allow the senders' keepalive pings (the default policy would answer them
#: with GOAWAY "too_many_pings").
SERVER_OPTIONS: Final[tuple[tuple[str, int], ...]] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
)

BatchHandler = Callable[[list[DecodedMessage]], None]
SnapshotHandler = Callable[[raft_pb2.SnapshotHeader, AsyncIterator[bytes]], Awaitable[bool]]


class IncompleteSnapshot(Exception):
    """The sender's stream ended before the chunk marked `last`."""


async def _snapshot_chunks(
    first: raft_pb2.SendSnapshotRequest,
    rest: AsyncIterator[raft_pb2.SendSnapshotRequest],
) -> AsyncGenerator[bytes, None]:
    """Data of the chunks, in order; raises IncompleteSnapshot on a cut stream."""
    if first.data:
        yield first.data
    if first.last:
        return
    async for req in rest:
        if req.data:
            yield req.data
        if req.last:
            return
    raise IncompleteSnapshot("snapshot stream ended before its last chunk")


class RaftTransportServicer(raft_pb2_grpc.RaftTransportServicer):
    """Receives raft batches and snapshots addressed to node `node_id`."""

    def __init__(
        self,
        node_id: int,
        handle: BatchHandler,
        handle_snapshot: SnapshotHandler,
        admit_clock: Callable[[int, types_pb2.Timestamp], bool] | None = None,
        refusing: Callable[[], bool] | None = None,
    ) -> None:
        """`admit_clock(sender, clock)`: False refuses a batch whose sender's clock is
        too far ahead of ours (the batch is dropped: raft copes with lost messages,
        and a node with a wrong clock is cut off instead of followed).

        `refusing()`: True refuses every stream (a test fault, `TestFaults.refuse_raft_file`:
        PERMISSION_DENIED, as a refused caller gets; an open stream ends at its next
        message). None in every real deployment."""
        self._node_id = node_id
        self._handle = handle
        self._handle_snapshot = handle_snapshot
        self._admit_clock = admit_clock
        self._refusing = refusing

    async def _refuse(self, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, REFUSED_BY_TEST_FAULT)

    def add_to_server(self, server: grpc.aio.Server) -> None:
        raft_pb2_grpc.add_RaftTransportServicer_to_server(self, server)

    async def RaftStream(
        self,
        request_iterator: AsyncIterator[raft_pb2.RaftStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[raft_pb2.RaftStreamResponse]:
        # None in production: the loop below then asks nothing per message.
        refusing = self._refusing
        if refusing is not None and refusing():
            await self._refuse(context)
        # Initial metadata at once: a sender may wait for it before its first batch,
        # so that a refused stream reaches it with its real status (see the
        # gateway's NodeStream._accepted for the gRPC race this avoids).
        await context.send_initial_metadata(())
        node_id = self._node_id
        handle = self._handle
        async for request in request_iterator:
            if refusing is not None and refusing():
                await self._refuse(context)
            if request.to_node_id != node_id:
                # The sender's address book is stale (an address was reused).
                # Say so once and end the stream: nothing on it is ours.
                log.warning(
                    "raft batch for node %d from node %d reached node %d",
                    request.to_node_id,
                    request.from_node_id,
                    node_id,
                )
                yield raft_pb2.RaftStreamResponse(wrong_node=True, node_id=node_id)
                return
            if (
                self._admit_clock is not None
                and request.HasField("sender_clock")
                and not self._admit_clock(request.from_node_id, request.sender_clock)
            ):
                continue
            try:
                batch = messages_from_proto(request.messages)
            except ValueError:
                batch = self._decode_leniently(request)
            if not batch:
                continue
            try:
                handle(batch)
            except Exception:
                # One bad batch must not cut the stream for every group on it.
                log.exception("raft batch handler failed")

    @staticmethod
    def _decode_leniently(request: raft_pb2.RaftStreamRequest) -> list[DecodedMessage]:
        """Decode what this build understands; drop (and log) what it does not."""
        out: list[DecodedMessage] = []
        for pb in request.messages:
            try:
                out.append(message_from_proto(pb))
            except ValueError as exc:
                log.warning("dropping raft message from node %d: %s", request.from_node_id, exc)
        return out

    async def SendSnapshot(
        self,
        request_iterator: AsyncIterator[raft_pb2.SendSnapshotRequest],
        context: grpc.aio.ServicerContext,
    ) -> raft_pb2.SendSnapshotResponse:
        if self._refusing is not None and self._refusing():
            await self._refuse(context)
        requests = aiter(request_iterator)
        try:
            first = await anext(requests)
        except StopAsyncIteration:
            return raft_pb2.SendSnapshotResponse(applied=False, message="empty snapshot stream")
        if not first.HasField("header"):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first snapshot chunk must carry the header"
            )
        header = first.header
        if header.to_node_id != self._node_id:
            return raft_pb2.SendSnapshotResponse(
                applied=False,
                message=f"wrong node: this is node {self._node_id}, not {header.to_node_id}",
            )
        chunks = _snapshot_chunks(first, requests)
        try:
            applied = await self._handle_snapshot(header, chunks)
        except Exception as exc:
            log.exception("applying snapshot from node %d failed", header.from_node_id)
            return raft_pb2.SendSnapshotResponse(applied=False, message=repr(exc))
        finally:
            await chunks.aclose()
        return raft_pb2.SendSnapshotResponse(
            applied=bool(applied), message="" if applied else "refused by the receiver"
        )
