"""The raft transport over real gRPC servers on 127.0.0.1 (several nodes, one process).

Synchronisation is by condition only: every callback pokes a `Signal`, and
tests wait for a predicate over what was observed, with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from testkit.waiting import async_wait_for

from rangekv.cli.cluster import free_port
from rangekv.common.clock import SystemClock
from rangekv.raft import ConfState, Message, MessageType, Snapshot, SnapshotMetadata
from rangekv.replication.lanes import InMemoryTransportMetrics, Lane, lane_for
from rangekv.replication.raft_codec import DecodedMessage, message_from_proto
from rangekv.replication.transport import (
    READER_STOP_WAIT,
    SERVER_OPTIONS,
    RaftTransport,
    RaftTransportServicer,
    TransportConfig,
    _StreamLane,
)
from rangekv.v1 import raft_pb2, raft_pb2_grpc, types_pb2

M = MessageType
FAST_BACKOFF = TransportConfig(backoff_initial=0.01, backoff_max=0.1)

pytestmark = pytest.mark.timeout(60)


class Signal:
    """Wakes waiters whenever anything observable happened."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()

    async def wait_until(self, pred: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not pred():
            self._event.clear()
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError("condition not reached before the deadline")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), remaining)


SnapshotHandler = Callable[[raft_pb2.SnapshotHeader, AsyncIterator[bytes]], Awaitable[bool]]


@dataclass
class Receiver:
    node_id: int
    signal: Signal
    server: grpc.aio.Server
    addr: str
    batches: list[list[DecodedMessage]] = field(default_factory=list)

    @property
    def messages(self) -> list[DecodedMessage]:
        return [m for b in self.batches for m in b]

    def of_type(self, t: MessageType) -> list[Message]:
        return [m for _, m, _ in self.messages if m.type is t]


async def _accept_all(header: raft_pb2.SnapshotHeader, chunks: AsyncIterator[bytes]) -> bool:
    async for _ in chunks:
        pass
    return True


async def start_receiver(
    node_id: int,
    signal: Signal,
    handle_snapshot: SnapshotHandler = _accept_all,
    port: int = 0,
    refusing: Callable[[], bool] | None = None,
) -> Receiver:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    rec = Receiver(node_id, signal, server, f"127.0.0.1:{bound}")

    def handle(batch: list[DecodedMessage]) -> None:
        rec.batches.append(batch)
        signal.notify()

    RaftTransportServicer(node_id, handle, handle_snapshot, refusing=refusing).add_to_server(server)
    await server.start()
    return rec


@dataclass
class Sender:
    transport: RaftTransport
    metrics: InMemoryTransportMetrics
    addresses: dict[int, str]
    unreachable: list[tuple[int, int, int]] = field(default_factory=list)
    snapshot_status: list[tuple[int, int, int, bool]] = field(default_factory=list)
    wrong_node: list[tuple[int, str]] = field(default_factory=list)


async def _no_snapshot(group_id: int, msg: Message) -> AsyncIterator[bytes]:
    yield b"snapshot-of-%d" % group_id


def make_sender(
    signal: Signal,
    addresses: dict[int, str],
    *,
    config: TransportConfig = FAST_BACKOFF,
    source: Callable[[int, Message], AsyncIterator[bytes]] = _no_snapshot,
) -> Sender:
    metrics = InMemoryTransportMetrics()
    s: Sender

    def unreachable(node: int, group: int, to: int) -> None:
        s.unreachable.append((node, group, to))
        signal.notify()

    def status(node: int, group: int, to: int, failed: bool) -> None:
        s.snapshot_status.append((node, group, to, failed))
        signal.notify()

    def wrong(node: int, addr: str) -> None:
        s.wrong_node.append((node, addr))
        signal.notify()

    transport = RaftTransport(
        1,
        addresses.get,
        on_unreachable=unreachable,
        on_snapshot_status=status,
        snapshot_source=source,
        clock=SystemClock(),
        rng=random.Random(1),
        metrics=metrics,
        on_wrong_node=wrong,
        config=config,
    )
    s = Sender(transport, metrics, addresses)
    return s


def snap_msg(index: int = 100, to: int = 2) -> Message:
    md = SnapshotMetadata(index, 5, ConfState((1, 2, 3)))
    return Message(M.SNAP, to, 1, term=5, snapshot=Snapshot(md))


# ---------------------------------------------------------------------------- tests


async def test_messages_arrive_in_order_per_lane_and_in_batches() -> None:
    signal = Signal()
    rec = await start_receiver(2, signal)
    # Room for everything: this test is about order, not about drops.
    config = TransportConfig(other_queue=1024)
    sender = make_sender(signal, {2: rec.addr}, config=config)
    kinds = [M.APP, M.APP_RESP, M.VOTE, M.READ_INDEX, M.HEARTBEAT_RESP, M.TRANSFER_LEADER]
    sent: list[Message] = []
    try:
        seq = 0
        for _round in range(25):
            for _ in range(40):
                m = Message(kinds[seq % len(kinds)], 2, 1, index=seq, term=1)
                sender.transport.send(2, 7, m)
                sent.append(m)
                seq += 1
            await asyncio.sleep(0)  # let the workers interleave with the sends
        await signal.wait_until(lambda: len(rec.messages) == len(sent))
        got = [m for _, m, _ in rec.messages]
        for lane in (Lane.HEARTBEAT, Lane.REPLICATION, Lane.OTHER):
            want = [m.index for m in sent if lane_for(m.type) is lane]
            assert [m.index for m in got if lane_for(m.type) is lane] == want
        assert all(g == 7 and d is None for g, _, d in rec.messages)
        assert sorted(got, key=lambda m: m.index) == sent  # decoded values, not just indexes
        assert sorted(m.index for m in got) == list(range(len(sent)))
        # Batching: far fewer writes than messages, and every batch is one lane.
        assert len(rec.batches) < len(sent) // 4
        for batch in rec.batches:
            assert len({lane_for(m.type) for _, m, _ in batch}) == 1
        assert sender.metrics.dispatch_drop_total.value() == 0
        assert sender.metrics.dispatch_errors_total.value() == 0
        # The counters say the same: every write (frame) and every message in one
        # (counted once a write completes, which may be just after its arrival).
        messages = sender.metrics.messages_sent_total
        await async_wait_for(lambda: messages.value() == len(sent) or None, 10, "counted")
        assert sender.metrics.frames_sent_total.value() == len(rec.batches)
        assert sender.metrics.messages_sent_total.value() == len(sent)
    finally:
        await sender.transport.close()
        await rec.server.stop(None)


async def test_descriptor_travels_with_the_message() -> None:
    signal = Signal()
    rec = await start_receiver(2, signal)
    sender = make_sender(signal, {2: rec.addr})
    desc = types_pb2.RangeDescriptor(range_id=9, start_key=b"a", end_key=b"m", generation=3)
    try:
        sender.transport.send(2, 9, Message(M.APP, 2, 1, index=4), desc)
        await signal.wait_until(lambda: len(rec.messages) == 1)
        group, msg, got = rec.messages[0]
        assert (group, msg.index, got) == (9, 4, desc)
    finally:
        await sender.transport.close()
        await rec.server.stop(None)


async def test_heartbeats_coalesce_to_the_newest_per_group_and_target() -> None:
    signal = Signal()
    rec = await start_receiver(2, signal)
    sender = make_sender(signal, {2: rec.addr})
    t = sender.transport
    try:
        # All queued before the (new) lane worker first runs: one drain.
        t.send(2, 1, Message(M.HEARTBEAT, 2, 1, commit=1))
        t.send(2, 1, Message(M.VOTE, 2, 1, term=2))
        t.send(2, 1, Message(M.HEARTBEAT, 2, 1, commit=2))
        t.send(2, 2, Message(M.HEARTBEAT, 5, 4, commit=1))
        t.send(2, 1, Message(M.HEARTBEAT, 2, 1, commit=3))
        assert t.queued(2, Lane.HEARTBEAT) == 3
        await signal.wait_until(lambda: len(rec.messages) == 3)
        got = [(g, m.type, m.commit) for g, m, _ in rec.messages]
        assert got == [(1, M.VOTE, 0), (2, M.HEARTBEAT, 1), (1, M.HEARTBEAT, 3)]
        assert len(rec.batches) == 1
        assert sender.metrics.dispatch_drop_total.value() == 0
    finally:
        await t.close()
        await rec.server.stop(None)


async def test_full_queue_drops_and_counts_without_reporting_unreachable() -> None:
    signal = Signal()
    rec = await start_receiver(2, signal)
    config = TransportConfig(replication_queue=4, snapshot_queue=1)
    sender = make_sender(signal, {2: rec.addr}, config=config)
    t = sender.transport
    try:
        for i in range(10):
            t.send(2, 1, Message(M.APP, 2, 1, index=i))
        t.send(2, 1, snap_msg(100))
        t.send(2, 3, snap_msg(200))  # the snapshot lane holds one: dropped
        drops = sender.metrics.dispatch_drop_total
        assert drops.value(lane="replication", type="app") == 6
        assert drops.value(lane="snapshot", type="snap") == 1
        await signal.wait_until(
            lambda: len(rec.of_type(M.APP)) == 4 and len(sender.snapshot_status) == 2
        )
        assert [m.index for m in rec.of_type(M.APP)] == [0, 1, 2, 3]
        # A dropped SNAP is reported failed (so raft retries); the other succeeded.
        assert sorted(sender.snapshot_status) == [(2, 1, 2, False), (2, 3, 2, True)]
        assert sender.unreachable == []
        assert sender.metrics.dispatch_errors_total.value() == 0
    finally:
        await t.close()
        await rec.server.stop(None)


async def test_dead_peer_counts_errors_reports_unreachable_then_recovers() -> None:
    signal = Signal()
    port = free_port()  # nothing listens here (yet)
    sender = make_sender(signal, {2: f"127.0.0.1:{port}"})
    t = sender.transport
    rec: Receiver | None = None
    try:
        t.send(2, 1, Message(M.HEARTBEAT, 2, 1))
        t.send(2, 2, Message(M.HEARTBEAT, 5, 4))
        t.send(2, 1, Message(M.APP, 2, 1, index=1))
        t.send(2, 1, Message(M.APP, 2, 1, index=2))
        t.send(2, 3, Message(M.APP, 8, 4, index=1))
        await signal.wait_until(
            lambda: {(2, 1, 2), (2, 2, 5), (2, 3, 8)} <= set(sender.unreachable)
        )
        errors = sender.metrics.dispatch_errors_total
        assert errors.value(lane="heartbeat", code="unavailable") >= 1
        assert errors.value(lane="replication", code="unavailable") >= 1
        # Once per (group, to) per failed batch (one batch per lane here), not
        # once per message.
        assert sorted(sender.unreachable) == [(2, 1, 2), (2, 1, 2), (2, 2, 5), (2, 3, 8)]
        assert sender.metrics.dispatch_drop_total.value() == 0

        # The peer comes up on that address: the lane reconnects after its backoff.
        rec = await start_receiver(2, signal, port=port)
        receiver = rec

        async def until_delivered() -> None:
            for i in range(10_000):
                t.send(2, 1, Message(M.READ_INDEX, 2, 1, index=i))
                try:
                    await signal.wait_until(lambda: bool(receiver.messages), timeout=0.05)
                    return
                except AssertionError:
                    continue

        await asyncio.wait_for(until_delivered(), 10)
    finally:
        await t.close()
        if rec is not None:
            await rec.server.stop(None)


async def test_unresolvable_peer_is_a_send_failure() -> None:
    signal = Signal()
    sender = make_sender(signal, {})
    try:
        sender.transport.send(9, 4, Message(M.VOTE, 3, 1))
        await signal.wait_until(lambda: (9, 4, 3) in sender.unreachable)
        assert sender.metrics.dispatch_errors_total.value(code="unresolved") >= 1
    finally:
        await sender.transport.close()


async def test_address_change_reopens_the_lanes() -> None:
    signal = Signal()
    old = await start_receiver(2, signal)
    new = await start_receiver(2, signal)
    addresses = {2: old.addr}
    sender = make_sender(signal, addresses)
    t = sender.transport
    try:
        t.send(2, 1, Message(M.VOTE, 2, 1, index=1))
        t.send(2, 1, Message(M.APP, 2, 1, index=1))
        await signal.wait_until(lambda: len(old.messages) == 2)
        addresses[2] = new.addr
        t.send(2, 1, Message(M.VOTE, 2, 1, index=2))
        t.send(2, 1, Message(M.APP, 2, 1, index=2))
        await signal.wait_until(lambda: len(new.messages) == 2)
        assert [m.index for _, m, _ in new.messages] in ([2, 2],)
        assert len(old.messages) == 2
        assert sender.metrics.dispatch_errors_total.value() == 0
        assert sender.unreachable == []
    finally:
        await t.close()
        await old.server.stop(None)
        await new.server.stop(None)


async def test_wrong_node_is_reported_and_nothing_is_delivered() -> None:
    signal = Signal()
    impostor = await start_receiver(3, signal)  # node 3 where node 2 was expected
    sender = make_sender(signal, {2: impostor.addr})
    try:
        sender.transport.send(2, 6, Message(M.VOTE, 2, 1))
        await signal.wait_until(lambda: bool(sender.wrong_node) and bool(sender.unreachable))
        assert sender.wrong_node[0] == (2, impostor.addr)
        assert sender.unreachable[0] == (2, 6, 2)
        assert sender.metrics.dispatch_errors_total.value(code="wrong_node") >= 1
        assert impostor.messages == []
    finally:
        await sender.transport.close()
        await impostor.server.stop(None)


async def test_big_snapshot_does_not_delay_heartbeats() -> None:
    """50 MiB in 1 MiB chunks to a receiver that takes each next chunk only after
    two more heartbeats arrived: the snapshot can only finish if heartbeats keep
    flowing while its own stream is stalled on flow control."""
    chunk_size, n_chunks, beats_per_chunk = 1 << 20, 50, 2
    signal = Signal()
    chunks_seen: list[int] = []  # first byte of each chunk, in order
    beats_during: list[int] = []
    snapshot_started = asyncio.Event()

    def beats() -> list[int]:
        """Commit of every heartbeat received so far, in arrival order."""
        return [m.commit for m in rec.of_type(M.HEARTBEAT)]

    def at_least(n: int) -> Callable[[], bool]:
        return lambda: len(beats()) >= n

    async def slow_apply(header: raft_pb2.SnapshotHeader, chunks: AsyncIterator[bytes]) -> bool:
        group, msg, _ = message_from_proto(header.message)
        assert (group, msg.type, header.from_node_id) == (11, M.SNAP, 1)
        snapshot_started.set()
        start = len(beats())
        async for chunk in chunks:
            assert len(chunk) == chunk_size
            chunks_seen.append(chunk[0])
            await signal.wait_until(at_least(len(beats()) + beats_per_chunk))
        beats_during.append(len(beats()) - start)
        return True

    rec = await start_receiver(2, signal, handle_snapshot=slow_apply)

    async def source(group_id: int, msg: Message) -> AsyncIterator[bytes]:
        for i in range(n_chunks):
            yield bytes([i]) * chunk_size

    sender = make_sender(signal, {2: rec.addr}, source=source)
    t = sender.transport
    latencies: list[float] = []

    def arrived(i: int) -> bool:
        got = beats()
        return bool(got) and got[-1] >= i

    def arrived_or_done(i: int) -> Callable[[], bool]:
        return lambda: bool(sender.snapshot_status) or arrived(i)

    async def pump() -> None:
        """Ping-pong heartbeats: send one, wait for it to arrive, repeat."""
        i = 0
        while not sender.snapshot_status:
            i += 1
            sent_at = time.perf_counter()
            t.send(2, 11, Message(M.HEARTBEAT, 2, 1, commit=i))
            await signal.wait_until(arrived_or_done(i), timeout=5)
            if arrived(i):
                latencies.append(time.perf_counter() - sent_at)

    try:
        pumping = asyncio.create_task(pump())
        await signal.wait_until(lambda: bool(beats()))  # the heartbeat lane is up
        t.send(2, 11, snap_msg(500))
        await asyncio.wait_for(snapshot_started.wait(), 10)
        await signal.wait_until(lambda: bool(sender.snapshot_status), timeout=40)
        await pumping
        assert sender.snapshot_status == [(2, 11, 2, False)]
        assert chunks_seen == list(range(n_chunks))
        assert beats_during and beats_during[0] >= n_chunks * beats_per_chunk
        assert len(latencies) >= n_chunks * beats_per_chunk
        latencies.sort()
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        assert p99 < 0.25, f"heartbeat p99 {p99 * 1000:.1f} ms during the snapshot"
        assert sender.metrics.dispatch_errors_total.value() == 0
        assert sender.metrics.dispatch_drop_total.value() == 0
    finally:
        await t.close()
        await rec.server.stop(None)


async def test_snapshot_failures_are_reported() -> None:
    signal = Signal()

    async def refuse(header: raft_pb2.SnapshotHeader, chunks: AsyncIterator[bytes]) -> bool:
        async for _ in chunks:
            pass
        return False

    refusing = await start_receiver(2, signal, handle_snapshot=refuse)

    async def broken_source(group_id: int, msg: Message) -> AsyncIterator[bytes]:
        if group_id == 13:
            raise OSError("storage snapshot unreadable")
        yield b"data"

    dead = f"127.0.0.1:{free_port()}"
    sender = make_sender(signal, {2: refusing.addr, 3: dead}, source=broken_source)
    t = sender.transport
    try:
        t.send(2, 12, snap_msg(to=2))  # refused by the receiver
        t.send(3, 12, snap_msg(to=4))  # nobody listening
        await signal.wait_until(lambda: len(sender.snapshot_status) == 2)
        t.send(2, 13, snap_msg(to=2))  # our own source fails
        await signal.wait_until(lambda: len(sender.snapshot_status) == 3)
        assert sorted(sender.snapshot_status) == [
            (2, 12, 2, True),
            (2, 13, 2, True),
            (3, 12, 4, True),
        ]
        errors = sender.metrics.dispatch_errors_total
        assert errors.value(lane="snapshot", code="snapshot_refused") == 1
        assert errors.value(lane="snapshot", code="unavailable") == 1
        assert errors.value(lane="snapshot", code="snapshot_source") == 1
        # Only the dead peer is unreachable.
        assert sender.unreachable == [(3, 12, 4)]
    finally:
        await t.close()
        await refusing.server.stop(None)


async def test_receiver_rejects_incomplete_and_misaddressed_snapshots() -> None:
    signal = Signal()
    outcome: list[str] = []

    async def record(header: raft_pb2.SnapshotHeader, chunks: AsyncIterator[bytes]) -> bool:
        try:
            async for _ in chunks:
                pass
        except Exception as exc:
            outcome.append(type(exc).__name__)
            raise
        return True

    rec = await start_receiver(2, signal, handle_snapshot=record)
    async with grpc.aio.insecure_channel(rec.addr) as channel:
        stub = raft_pb2_grpc.RaftTransportStub(channel)
        header = raft_pb2.SnapshotHeader(from_node_id=1, to_node_id=2)

        async def cut() -> AsyncIterator[raft_pb2.SendSnapshotRequest]:
            yield raft_pb2.SendSnapshotRequest(header=header, data=b"a")
            yield raft_pb2.SendSnapshotRequest(data=b"b")  # no `last`

        resp = await stub.SendSnapshot(cut())
        assert not resp.applied and outcome == ["IncompleteSnapshot"]

        async def elsewhere() -> AsyncIterator[raft_pb2.SendSnapshotRequest]:
            wrong = raft_pb2.SnapshotHeader(from_node_id=1, to_node_id=5)
            yield raft_pb2.SendSnapshotRequest(header=wrong, data=b"a", last=True)

        resp = await stub.SendSnapshot(elsewhere())
        assert not resp.applied and "wrong node" in resp.message

        async def whole() -> AsyncIterator[raft_pb2.SendSnapshotRequest]:
            yield raft_pb2.SendSnapshotRequest(header=header, data=b"a", last=True)

        assert (await stub.SendSnapshot(whole())).applied
    await rec.server.stop(None)


async def test_close_stops_workers_and_later_sends_are_dropped() -> None:
    signal = Signal()
    rec = await start_receiver(2, signal)
    sender = make_sender(signal, {2: rec.addr})
    t = sender.transport
    t.send(2, 1, Message(M.APP, 2, 1))
    await signal.wait_until(lambda: len(rec.messages) == 1)
    before = {task for task in asyncio.all_tasks() if task.get_name().startswith("raft-lane")}
    assert len(before) >= 4
    await t.close()
    assert all(task.done() for task in before)
    t.send(2, 1, Message(M.APP, 2, 1))
    assert sender.metrics.dispatch_drop_total.value(lane="replication") == 1
    with pytest.raises(ValueError):
        t.send(2, 1, Message(M.HUP, 2, 1))
    await rec.server.stop(None)


@contextlib.asynccontextmanager
async def serving(servicer: raft_pb2_grpc.RaftTransportServicer) -> AsyncIterator[str]:
    """A gRPC server on 127.0.0.1 serving `servicer` (a stand-in receiver); its address."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    port = server.add_insecure_port("127.0.0.1:0")
    raft_pb2_grpc.add_RaftTransportServicer_to_server(servicer, server)
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


class _RefusingServicer(raft_pb2_grpc.RaftTransportServicer):
    """A peer that refuses every raft stream, as its authorization would refuse a
    caller that is not a node."""

    def __init__(self, signal: Signal) -> None:
        self.signal = signal
        self.refused = 0

    async def RaftStream(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        self.refused += 1
        self.signal.notify()
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not a node of this cluster")
        yield raft_pb2.RaftStreamResponse()  # never reached: makes this a generator


async def test_a_refused_stream_is_counted_under_its_real_status() -> None:
    """A lane writes only once the peer accepted the stream (its initial metadata):
    a first write racing the refusal would fail as INTERNAL and hide the real
    status from the dispatch error counter and the log."""
    signal = Signal()
    refusing = _RefusingServicer(signal)
    async with serving(refusing) as addr:
        sender = make_sender(signal, {2: addr})
        errors = sender.metrics.dispatch_errors_total
        try:
            for i in range(1, 6):
                sender.transport.send(2, 1, Message(M.APP, 2, 1, index=i))
                await signal.wait_until(lambda n=i: refusing.refused >= n)  # type: ignore[misc]
                await signal.wait_until(lambda n=i: len(sender.unreachable) >= n)  # type: ignore[misc]
            assert errors.value(lane="replication", code="permission_denied") == 5
            assert errors.value(code="internal") == 0
        finally:
            await sender.transport.close()


class _OlderServicer(raft_pb2_grpc.RaftTransportServicer):
    """A receiver of an older build: it reads the stream but sends no initial
    metadata until it answers (it never does)."""

    def __init__(self, signal: Signal) -> None:
        self.signal = signal
        self.received: list[raft_pb2.RaftStreamRequest] = []

    async def RaftStream(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        async for request in request_iterator:
            self.received.append(request)
            self.signal.notify()
        if False:  # a generator that yields nothing
            yield raft_pb2.RaftStreamResponse()


async def test_a_receiver_that_sends_no_early_metadata_still_gets_the_batches() -> None:
    signal = Signal()
    older = _OlderServicer(signal)
    config = TransportConfig(backoff_initial=0.01, backoff_max=0.1, accept_timeout=0.2)
    async with serving(older) as addr:
        sender = make_sender(signal, {2: addr}, config=config)
        try:
            sender.transport.send(2, 1, Message(M.APP, 2, 1, index=1))
            sender.transport.send(2, 1, Message(M.APP, 2, 1, index=2))
            await signal.wait_until(lambda: sum(len(r.messages) for r in older.received) == 2)
            assert sender.metrics.dispatch_errors_total.value() == 0
            assert sender.unreachable == []
        finally:
            await sender.transport.close()


async def test_a_reader_stuck_in_grpc_does_not_hang_the_lane_or_close() -> None:
    """gRPC can leave the reader of a stream refused at once pending forever, its
    cancellation stuck in the call's preparation (seen on a loaded machine: the
    refused-stream test above then hung in `close`). The lane waits for such a
    reader only READER_STOP_WAIT seconds: dropping the call, and closing the
    transport, still end."""
    signal = Signal()
    sender = make_sender(signal, {2: "127.0.0.1:1"})
    release = asyncio.Event()

    async def stuck_reader() -> None:
        while not release.is_set():  # ignores cancellation, as the stuck reader did
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    try:
        lane = sender.transport._add_peer(2)[Lane.REPLICATION - 1]  # idle: nothing queued
        assert isinstance(lane, _StreamLane)
        lane._reader = asyncio.ensure_future(stuck_reader())
        await asyncio.wait_for(lane._drop_call(), READER_STOP_WAIT + 5)
        lane._reader = asyncio.ensure_future(stuck_reader())
        await asyncio.wait_for(sender.transport.close(), READER_STOP_WAIT + 5)
    finally:
        release.set()
        await sender.transport.close()


async def test_a_lane_recovers_once_its_peer_stops_refusing() -> None:
    """The chaos suite's refuse_raft fault, in one process: a peer refuses every
    stream (the test fault `refusing`, PERMISSION_DENIED): the open stream ends at
    its next message, new ones are refused at once and counted under their real
    status; once it accepts again, the same lane delivers again. A lane that never
    recovers (the hang READER_STOP_WAIT bounds) would leave the peer behind.

    Appends go out every 20 ms while waiting, as raft's heartbeats and resends
    would: a message on a stream that just ended is lost without a report."""
    signal = Signal()
    refusing = False
    rec = await start_receiver(2, signal, refusing=lambda: refusing)
    sender = make_sender(signal, {2: rec.addr})
    errors = sender.metrics.dispatch_errors_total
    index = 0

    async def send_until(done: Callable[[], bool], what: str) -> None:
        async def sent_or_done() -> bool:
            nonlocal index
            if done():
                return True
            index += 1
            sender.transport.send(2, 1, Message(M.APP, 2, 1, index=index))
            return False

        await async_wait_for(sent_or_done, 10, what, 0.02)

    try:
        await send_until(lambda: len(rec.messages) > 0, "a first delivery")
        delivered = len(rec.messages)
        refusing = True
        await send_until(lambda: errors.value(code="permission_denied") >= 3, "3 refusals")
        assert len(rec.messages) == delivered  # nothing got through while it refused
        assert errors.value(code="internal") == 0
        refusing = False
        await send_until(lambda: len(rec.messages) > delivered, "a delivery after the refusals")
    finally:
        await sender.transport.close()
        await rec.server.stop(None)


async def test_a_refusing_peer_refuses_snapshots_too() -> None:
    """Under the refuse_raft test fault a snapshot fails under PERMISSION_DENIED and
    raft is told it failed (so the leader retries it later)."""
    signal = Signal()
    rec = await start_receiver(2, signal, refusing=lambda: True)
    sender = make_sender(signal, {2: rec.addr})
    try:
        sender.transport.send(2, 12, snap_msg(to=2))
        await signal.wait_until(lambda: len(sender.snapshot_status) == 1)
        assert sender.snapshot_status == [(2, 12, 2, True)]
        # Counted on the snapshot lane; under which code depends on whether the
        # header's write raced the refusal (gRPC then says INTERNAL).
        assert sender.metrics.dispatch_errors_total.value(lane="snapshot") == 1
    finally:
        await sender.transport.close()
        await rec.server.stop(None)
