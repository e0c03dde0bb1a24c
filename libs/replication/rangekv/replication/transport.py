"""Raft transport, sender side: per-peer lanes over long-lived gRPC streams.

`RaftTransport` is the real `raft_network.RaftSender` (`MemoryNetwork` is its
in-memory twin). The raft scheduler calls `RaftTransport.send` for every outgoing message of
every group hosted in this process. `send` only classifies the message and
appends it to a bounded in-memory queue: it never blocks and never awaits,
because a scheduler stalled on one slow peer would stall every group.

Per peer node there are four lanes (see lanes.py for why). Each lane has its
own queue, its own worker task and its own gRPC channel (own TCP connection:
`grpc.use_local_subchannel_pool` stops gRPC from multiplexing the lanes onto
one socket, where 50 MB of snapshot bytes in the kernel send buffer would sit
in front of a heartbeat). A stream lane's worker writes everything queued as
ONE `RaftStreamRequest` per write; while that write waits on flow control, new
messages pile up and leave together in the next one, so batching adapts to
the peer's speed with no timer. The snapshot lane sends one SNAP at a time
through `SendSnapshot`, pulling chunks from an injected source.

Failure accounting:
- queue full: the message is dropped here and counted in
  `rangekv_raft_dispatch_drop_total{lane,type}`. Raft is NOT told the peer is
  unreachable: the peer may be fine, we are just behind, and raft retries
  (heartbeats, probes) on its own.
- send failure (unresolvable address, connect refused, stream broken, wrong
  node): counted in `rangekv_raft_dispatch_errors_total{lane,code}`, and
  `on_unreachable(node, group, to)` is called once per (group, to) of the
  lost batch, so the leader stops optimistic replication to that follower.
  The lane then waits a capped, jittered backoff before reconnecting;
  messages queued meanwhile wait (or are dropped when the queue fills).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc

from rangekv.common.clock import Clock
from rangekv.common.tasks import cancel_and_wait, retrieve_outcome
from rangekv.common.tls import ChannelOpener, PlaintextChannels
from rangekv.raft import Message, MessageType
from rangekv.v1 import raft_pb2, raft_pb2_grpc, types_pb2

from .lanes import (
    UNBOUNDED,
    InMemoryTransportMetrics,
    Lane,
    LaneQueue,
    Outbound,
    TransportMetrics,
    lane_for,
)
from .mutations import Mutation
from .raft_codec import message_to_proto
from .raft_network import RaftEndpoint
from .transport_config import CHANNEL_OPTIONS, Backoff, TransportConfig
from .transport_server import SERVER_OPTIONS, RaftTransportServicer

__all__ = [
    "CHANNEL_OPTIONS",
    "SERVER_OPTIONS",
    "RaftTransport",
    "RaftTransportServicer",
    "TransportConfig",
    "transport_for",
]

log = logging.getLogger(__name__)

Resolver = Callable[[int], str | None]
UnreachableCallback = Callable[[int, int, int], None]
SnapshotStatusCallback = Callable[[int, int, int, bool], None]
SnapshotSource = Callable[[int, Message], AsyncIterator[bytes]]
WrongNodeCallback = Callable[[int, str], None]

# Indexed by MessageType number (`_value_`: an enum-keyed dict would cost an
# interpreted `Enum.__hash__` per send). None for local types (HUP, BEAT, ...):
# they must never leave the node, and `send` rejects them.
_SEND_LANE: tuple[Lane | None, ...] = tuple(
    None if t.is_local() else lane_for(t) for t in sorted(MessageType, key=lambda t: t.value)
)
_RPC_ERRORS = (grpc.aio.AioRpcError, asyncio.InvalidStateError)
#: Seconds a lane waits for a cancelled stream's reader to end (see `_drop_call`).
READER_STOP_WAIT = 1.0


@dataclass(slots=True)
class _Env:
    """What every lane of one transport shares."""

    node_id: int
    resolve: Resolver
    on_unreachable: UnreachableCallback
    on_snapshot_status: SnapshotStatusCallback
    snapshot_source: SnapshotSource
    on_wrong_node: WrongNodeCallback | None
    metrics: TransportMetrics
    config: TransportConfig
    channels: ChannelOpener
    #: Backoff pauses and stream ages.
    clock: Clock
    #: Backoff jitter.
    rng: random.Random
    #: Stamps every batch with the sender's clock (receivers refuse one too far ahead).
    stamp: Callable[[], types_pb2.Timestamp] | None = None
    #: A deliberately broken build (`rangekv.replication.mutations`; NONE in production).
    mutation: Mutation = Mutation.NONE

    def error(self, lane: Lane, code: str) -> None:
        self.metrics.dispatch_errors_total.add(1, lane=lane.label, code=code)

    def unreachable(self, peer: int, group_id: int, to: int) -> None:
        try:
            self.on_unreachable(peer, group_id, to)
        except Exception:
            log.exception("on_unreachable(%d, %d, %d) failed", peer, group_id, to)

    def snapshot_status(self, peer: int, group_id: int, to: int, failed: bool) -> None:
        try:
            self.on_snapshot_status(peer, group_id, to, failed)
        except Exception:
            log.exception("on_snapshot_status(%d, %d, %d) failed", peer, group_id, to)


def _code_label(code: grpc.StatusCode | None) -> str:
    # A stream the peer ended cleanly (OK) still lost what we tried to write.
    if code is None or code == grpc.StatusCode.OK:
        return "closed"
    return str(code.name).lower()


async def _failure_code(call: grpc.aio.Call, exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return _code_label(exc.code())
    if call.done():  # InvalidStateError: the call had already finished
        return _code_label(await call.code())
    return "closed"


async def _accepted(call: grpc.aio.StreamStreamCall, timeout: float) -> bool:
    """Wait up to `timeout` for the receiver's initial metadata (`RaftStream`
    sends it at once): False if the call ended instead (then it is done, with
    its status), True otherwise (a receiver of an older build says nothing until
    it answers: it is given the benefit of the doubt, and a refusal then
    surfaces on the write)."""
    waiter = asyncio.ensure_future(call.initial_metadata())
    waiter.add_done_callback(retrieve_outcome)
    try:
        await asyncio.wait({waiter}, timeout=timeout)
    except asyncio.CancelledError:
        waiter.cancel()  # the lane is stopping
        raise
    return not call.done()


class _LaneWorker:
    """One lane to one peer: a queue, a worker task and a channel of its own."""

    def __init__(self, env: _Env, peer_id: int, lane: Lane) -> None:
        self.env = env
        self.peer_id = peer_id
        self.lane = lane
        self.queue = LaneQueue(
            env.config.capacity(lane), coalesce_heartbeats=lane is Lane.HEARTBEAT
        )
        self._max_bytes = env.config.max_batch_bytes
        self._backoff = Backoff(env.config.backoff_initial, env.config.backoff_max, env.rng)
        self._addr: str | None = None
        self._channel: grpc.aio.Channel | None = None
        self._stub: raft_pb2_grpc.RaftTransportStub | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"raft-lane-{self.peer_id}-{self.lane.label}"
        )

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait([task])
        await self._disconnect()

    async def _run(self) -> None:
        while True:
            batch = await self.queue.get_batch(self._max_bytes)
            try:
                await self._deliver(batch)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug must not kill the lane: every later message would be
                # silently stuck in the queue.
                log.exception("raft lane %s to node %d failed", self.lane.label, self.peer_id)
                self.report_lost(batch, "internal")
                await self._disconnect()

    async def _deliver(self, batch: list[Outbound]) -> None:
        raise NotImplementedError

    def report_lost(self, batch: list[Outbound], code: str) -> None:
        """Count one send failure and tell raft, once per (group, to), what was lost."""
        self.env.error(self.lane, code)
        seen: set[tuple[int, int]] = set()
        for group_id, msg, _ in batch:
            key = (group_id, msg.to)
            if key not in seen:
                seen.add(key)
                self.env.unreachable(self.peer_id, group_id, msg.to)

    async def pause(self) -> None:
        await self.env.clock.sleep(self._backoff.next())

    def reset_backoff(self) -> None:
        self._backoff.reset()

    async def connect(self) -> raft_pb2_grpc.RaftTransportStub | None:
        """A stub for the peer's current address (None when it has none).

        Resolving before every batch is what makes an address change take
        effect: the lane closes the old channel and opens one to the new place.
        """
        addr = self.env.resolve(self.peer_id)
        if addr is None:
            return None
        if addr != self._addr or self._stub is None:
            await self._disconnect()
            self._channel = self.env.channels(addr, self.env.config.channel_options)
            self._stub = raft_pb2_grpc.RaftTransportStub(self._channel)
            self._addr = addr
        return self._stub

    async def _disconnect(self) -> None:
        channel, self._channel, self._stub, self._addr = self._channel, None, None, None
        if channel is not None:
            await channel.close()


class _StreamLane(_LaneWorker):
    """HEARTBEAT, REPLICATION and OTHER: batches over one long-lived RaftStream."""

    def __init__(self, env: _Env, peer_id: int, lane: Lane) -> None:
        super().__init__(env, peer_id, lane)
        if lane is Lane.HEARTBEAT:
            self._max_bytes = UNBOUNDED  # all tiny; skip the size estimate
        self._call: grpc.aio.StreamStreamCall | None = None
        self._reader: asyncio.Task[None] | None = None
        self._opened_at = 0.0
        # The last batch written to the current stream: what a wrong_node
        # answer tells us was lost.
        self._last_batch: list[Outbound] = []
        self._penalty = False

    async def _deliver(self, batch: list[Outbound]) -> None:
        if self._penalty:  # the previous stream was refused (wrong node)
            self._penalty = False
            await self._disconnect()
            await self.pause()
        stub = await self.connect()
        if stub is None:
            self.report_lost(batch, "unresolved")
            await self.pause()
            return
        call = self._call
        if call is None or call.done():
            # A stream the peer ended (restart, GOAWAY) is replaced silently;
            # only a refused stream or a failed write below counts as an error.
            await self._drop_call()
            call = self._open(stub)
            if not await _accepted(call, self.env.config.accept_timeout):
                # Refused (authorization, an unknown service, a peer going away):
                # the batch is lost under the stream's real status. Written at
                # once, it would have counted as sent and vanished, or failed as
                # INTERNAL when the write raced the refusal.
                code = _code_label(await call.code())
                self.report_lost(batch, code)
                if (
                    self.env.mutation is Mutation.STUCK_LANE_AFTER_REFUSAL
                    and code == "permission_denied"
                ):
                    await asyncio.Event().wait()  # TEST MUTATION: the lane never sends again
                await self._disconnect()
                await self.pause()
                return
        node_id = self.env.node_id
        request = raft_pb2.RaftStreamRequest(
            from_node_id=node_id,
            to_node_id=self.peer_id,
            lane=self.lane.value,
            messages=[message_to_proto(g, m, d) for g, m, d in batch],
        )
        if self.env.stamp is not None:
            request.sender_clock.CopyFrom(self.env.stamp())
        # Set before the write: a wrong_node answer may be read before the
        # write's completion is.
        self._last_batch = batch
        try:
            await call.write(request)
            self._count_sent(len(batch))
        except _RPC_ERRORS as exc:
            self._last_batch = []
            self.report_lost(batch, await _failure_code(call, exc))
            await self._disconnect()
            await self.pause()
            return
        # Only a stream that stayed up for a while proves the peer healthy; a
        # peer that accepts and then refuses every stream keeps backing off.
        if self.env.clock.monotonic() - self._opened_at >= self.env.config.backoff_max:
            self.reset_backoff()

    def _count_sent(self, messages: int) -> None:
        metrics = self.env.metrics
        metrics.frames_sent_total.add(1, lane=self.lane.label)
        metrics.messages_sent_total.add(messages, lane=self.lane.label)

    def _open(self, stub: raft_pb2_grpc.RaftTransportStub) -> grpc.aio.StreamStreamCall:
        call: grpc.aio.StreamStreamCall = stub.RaftStream()
        self._call = call
        self._opened_at = self.env.clock.monotonic()
        self._last_batch = []
        self._reader = asyncio.get_running_loop().create_task(
            self._read(call, self._addr or ""),
            name=f"raft-lane-{self.peer_id}-{self.lane.label}-reader",
        )
        return call

    async def _read(self, call: grpc.aio.StreamStreamCall, addr: str) -> None:
        """Watch the stream's responses; the receiver only speaks to refuse."""
        try:
            async for resp in call:
                if resp.wrong_node:
                    log.warning(
                        "raft lane %s: %s is node %d, not node %d",
                        self.lane.label,
                        addr,
                        resp.node_id,
                        self.peer_id,
                    )
                    self.report_lost(self._last_batch, "wrong_node")
                    self._last_batch = []
                    self._penalty = True
                    if self.env.on_wrong_node is not None:
                        try:
                            self.env.on_wrong_node(self.peer_id, addr)
                        except Exception:
                            log.exception("on_wrong_node(%d, %s) failed", self.peer_id, addr)
                    call.cancel()
                    return
        except grpc.aio.AioRpcError:
            return  # broken stream: the worker reconnects on its next batch

    async def _drop_call(self) -> None:
        call, self._call = self._call, None
        reader, self._reader = self._reader, None
        if call is not None:
            call.cancel()
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
            # Bounded: gRPC can leave the reader of a call refused at once pending
            # forever, its cancellation stuck inside the call's own preparation
            # (seen on a loaded machine). Waiting for it without a bound hung the
            # lane -- no more batches to that peer -- and `close()` with it. A
            # reader left behind can do nothing: its call is cancelled.
            await asyncio.wait({reader}, timeout=READER_STOP_WAIT)
            reader.add_done_callback(retrieve_outcome)

    async def _disconnect(self) -> None:
        await self._drop_call()
        await super()._disconnect()


class _SnapshotLane(_LaneWorker):
    """SNAPSHOT: one SNAP at a time, its data streamed through SendSnapshot."""

    def __init__(self, env: _Env, peer_id: int, lane: Lane) -> None:
        super().__init__(env, peer_id, lane)
        self._max_bytes = 0  # drain one message per batch

    async def _deliver(self, batch: list[Outbound]) -> None:
        for group_id, msg, descriptor in batch:
            try:
                failed = await self._send_one(group_id, msg, descriptor)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("snapshot of group %d to node %d failed", group_id, self.peer_id)
                self.env.error(self.lane, "internal")
                await self._disconnect()
                failed = True
            # Exactly one status per SNAP taken off the queue, whatever happened.
            self.env.snapshot_status(self.peer_id, group_id, msg.to, failed)

    async def _send_one(
        self, group_id: int, msg: Message, descriptor: types_pb2.RangeDescriptor | None
    ) -> bool:
        """Stream one snapshot; True when it failed (raft will retry later)."""
        stub = await self.connect()
        if stub is None:
            self.report_lost([(group_id, msg, descriptor)], "unresolved")
            await self.pause()
            return True
        header = raft_pb2.SnapshotHeader(
            from_node_id=self.env.node_id,
            to_node_id=self.peer_id,
            message=message_to_proto(group_id, msg),
            descriptor=descriptor,
        )
        call: grpc.aio.StreamUnaryCall = stub.SendSnapshot()
        chunks = self.env.snapshot_source(group_id, msg)
        source_failed = False
        try:
            await call.write(raft_pb2.SendSnapshotRequest(header=header))
            # One chunk of lookahead so that `last` rides on the final data chunk.
            pending: bytes | None = None
            try:
                async for chunk in chunks:
                    if pending is not None:
                        await call.write(raft_pb2.SendSnapshotRequest(data=pending))
                    pending = chunk
            except _RPC_ERRORS:
                raise
            except Exception:
                source_failed = True
                raise
            await call.write(raft_pb2.SendSnapshotRequest(data=pending or b"", last=True))
            await call.done_writing()
            response = await call
        except _RPC_ERRORS as exc:
            self.report_lost([(group_id, msg, descriptor)], await _failure_code(call, exc))
            await self._disconnect()
            await self.pause()
            return True
        except Exception:
            if not source_failed:
                raise
            # Our own snapshot could not be read: the peer is not at fault.
            log.exception("snapshot source for group %d failed", group_id)
            call.cancel()
            self.env.error(self.lane, "snapshot_source")
            return True
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                # Releases the storage snapshot the chunks were read from.
                await aclose()
        if not response.applied:
            log.warning(
                "node %d refused snapshot of group %d: %s",
                self.peer_id,
                group_id,
                response.message,
            )
            self.env.error(self.lane, "snapshot_refused")
            return True
        self.reset_backoff()
        return False


class RaftTransport:
    """Sender side of the raft transport for one process (one node id).

    Callbacks run on the event loop, never inside `send`: `on_unreachable`,
    `on_snapshot_status` and `on_wrong_node` may re-enter the raft scheduler
    (e.g. `RawNode.report_unreachable`) without observing a half-sent Ready.
    """

    def __init__(
        self,
        node_id: int,
        resolve: Resolver,
        *,
        on_unreachable: UnreachableCallback,
        on_snapshot_status: SnapshotStatusCallback,
        snapshot_source: SnapshotSource,
        clock: Clock,
        rng: random.Random,
        metrics: TransportMetrics | None = None,
        on_wrong_node: WrongNodeCallback | None = None,
        config: TransportConfig | None = None,
        channels: ChannelOpener | None = None,
        stamp: Callable[[], types_pb2.Timestamp] | None = None,
        mutation: Mutation = Mutation.NONE,
    ) -> None:
        """``channels``: how lanes dial peers (mutual TLS in a secure cluster; plaintext if
        None); ``stamp``: this node's hybrid clock, stamped on every batch; ``mutation``:
        a test's deliberately broken build."""
        self._env = _Env(
            node_id=node_id,
            resolve=resolve,
            on_unreachable=on_unreachable,
            on_snapshot_status=on_snapshot_status,
            snapshot_source=snapshot_source,
            on_wrong_node=on_wrong_node,
            metrics=metrics if metrics is not None else InMemoryTransportMetrics(),
            config=config if config is not None else TransportConfig(),
            channels=channels if channels is not None else PlaintextChannels(),
            clock=clock,
            rng=rng,
            stamp=stamp,
            mutation=mutation,
        )
        self._peers: dict[int, tuple[_LaneWorker, ...]] = {}
        self._closed = False

    @property
    def node_id(self) -> int:
        return self._env.node_id

    @property
    def metrics(self) -> TransportMetrics:
        return self._env.metrics

    def send(
        self,
        node_id: int,
        group_id: int,
        msg: Message,
        descriptor: types_pb2.RangeDescriptor | None = None,
    ) -> None:
        """Queue `msg` of `group_id` for node `node_id`; never blocks.

        Must be called on the transport's event loop. A full lane drops the
        message (counted, not reported unreachable); a dropped SNAP is
        reported as a failed snapshot so the leader's progress can retry.
        """
        lane = _SEND_LANE[msg.type._value_]
        if lane is None:
            raise ValueError(f"{msg.type.name} is local to a node and never sent")
        peer = self._peers.get(node_id)
        if peer is None:
            if self._closed:
                self._dropped(node_id, lane, group_id, msg)
                return
            peer = self._add_peer(node_id)
        if not peer[lane - 1].queue.put((group_id, msg, descriptor)):
            self._dropped(node_id, lane, group_id, msg)

    def _dropped(self, node_id: int, lane: Lane, group_id: int, msg: Message) -> None:
        self._env.metrics.dispatch_drop_total.add(1, lane=lane.label, type=msg.type.name.lower())
        if msg.type is MessageType.SNAP:
            # Otherwise the leader would wait forever for this snapshot's outcome.
            asyncio.get_running_loop().call_soon(
                self._env.snapshot_status, node_id, group_id, msg.to, True
            )

    def _add_peer(self, node_id: int) -> tuple[_LaneWorker, ...]:
        # Indexed by lane number - 1 (lanes are numbered from 1 on the wire).
        workers: list[_LaneWorker] = []
        for lane in Lane:
            worker: _LaneWorker
            if lane is Lane.SNAPSHOT:
                worker = _SnapshotLane(self._env, node_id, lane)
            else:
                worker = _StreamLane(self._env, node_id, lane)
            worker.start()
            workers.append(worker)
        assert [w.lane for w in workers] == list(range(1, len(Lane) + 1))
        peer = tuple(workers)
        self._peers[node_id] = peer
        return peer

    def queued(self, node_id: int, lane: Lane) -> int:
        """Messages waiting on one lane to one peer (0 for an unknown peer)."""
        peer = self._peers.get(node_id)
        return len(peer[lane - 1].queue) if peer is not None else 0

    async def remove_peer(self, node_id: int) -> None:
        """Stop the lanes to a node that left; queued messages are discarded."""
        peer = self._peers.pop(node_id, None)
        if peer is not None:
            await asyncio.gather(*(w.stop() for w in peer))

    async def close(self) -> None:
        """Stop every worker and close every channel; later sends are dropped."""
        self._closed = True
        peers, self._peers = self._peers, {}
        await asyncio.gather(*(w.stop() for peer in peers.values() for w in peer))


def transport_for(
    node_id: int,
    resolve: Resolver,
    endpoint: Callable[[], RaftEndpoint],
    *,
    clock: Clock,
    rng: random.Random,
    metrics: TransportMetrics | None = None,
    channels: ChannelOpener | None = None,
    stamp: Callable[[], types_pb2.Timestamp] | None = None,
    mutation: Mutation = Mutation.NONE,
) -> RaftTransport:
    """The transport of a process whose `RaftEndpoint` is `endpoint()`: it streams that
    endpoint's snapshots and reports lost messages and snapshot outcomes to it. The
    endpoint is looked up at each call, since it is built after (and with) the
    transport."""
    return RaftTransport(
        node_id,
        resolve,
        on_unreachable=lambda n, g, r: endpoint().report_unreachable(n, g, r),
        on_snapshot_status=lambda n, g, r, failed: endpoint().report_snapshot(n, g, r, failed),
        snapshot_source=lambda g, m: endpoint().snapshot_source(g, m),
        clock=clock,
        rng=rng,
        metrics=metrics,
        channels=channels,
        stamp=stamp,
        mutation=mutation,
    )
