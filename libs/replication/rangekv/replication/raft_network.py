"""The raft transport's seams, and `MemoryNetwork`, their in-memory twin.

A process that hosts raft groups talks to its peers through two seams:

* `RaftSender` -- `send(node, group, msg, descriptor)`: queue one outgoing
  message; never blocks (the scheduler calls it inside its section). The real
  one is `transport.RaftTransport` (lanes over gRPC streams).
* `RaftEndpoint` -- what the process offers the network: it takes batches of
  incoming messages (`handle_raft`) and streamed snapshots (`handle_snapshot`,
  the snapshot sink), streams its own snapshots (`snapshot_source`), and hears
  what became of what it sent (`report_unreachable`, `report_snapshot`). The
  real receiving side is `transport_server.RaftTransportServicer`.

`MemoryNetwork` connects endpoints in one event loop with no gRPC in between:
a message is delivered on a later turn of the loop (never inside `send`), a
SNAP is streamed chunk by chunk from the sender's source into the receiver's
sink, and the outcome is reported back as the real transport would. A test or
a simulator controls it: hold a link (messages queue until released), cut it
(messages are dropped), stop a snapshot stream between chunks, take a node
down. Its deliveries depend on nothing but the calls made, so a run is
reproducible.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from rangekv.raft import Message, MessageType
from rangekv.v1 import types_pb2

__all__ = ["Inbound", "MemoryNetwork", "RaftEndpoint", "RaftSender"]

#: One received message: (group id, message, descriptor it carried or None).
Inbound = tuple[int, Message, types_pb2.RangeDescriptor | None]


class RaftSender(Protocol):
    """The sending side of the raft transport (see the module docstring)."""

    def send(
        self,
        node_id: int,
        group_id: int,
        msg: Message,
        descriptor: types_pb2.RangeDescriptor | None = None,
    ) -> None: ...


class RaftEndpoint(Protocol):
    """What a raft-hosting process offers its peers (see the module docstring)."""

    def handle_raft(self, messages: Sequence[Inbound]) -> None: ...

    async def handle_snapshot(
        self,
        group_id: int,
        message: Message,
        descriptor: types_pb2.RangeDescriptor | None,
        chunks: AsyncIterator[bytes],
    ) -> bool:
        """Install a streamed snapshot; True once raft has seen its message."""
        ...

    def snapshot_source(self, group_id: int, message: Message) -> AsyncIterator[bytes]: ...

    def report_unreachable(self, node_id: int, group_id: int, replica_id: int) -> None: ...

    def report_snapshot(
        self, node_id: int, group_id: int, replica_id: int, failed: bool
    ) -> None: ...


@dataclass
class _Link:
    held: bool = False
    cut: bool = False
    queue: list[Inbound] = field(default_factory=list)


class MemoryNetwork:
    """Raft endpoints in one event loop, wired by the caller (see the module docstring)."""

    def __init__(self) -> None:
        self.endpoints: dict[int, RaftEndpoint] = {}
        #: Nodes that are down: nothing reaches them, and the snapshots they were
        #: streaming are not reported back to them.
        self.down: set[int] = set()
        self._links: dict[tuple[int, int], _Link] = {}
        #: (from, to) -> event that a snapshot stream waits on between chunks.
        self._snapshot_gates: dict[tuple[int, int], asyncio.Event] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        #: The (from, to) of each snapshot stream in flight.
        self._stream_ends: dict[asyncio.Task[Any], tuple[int, int]] = {}
        self.delivered = 0
        #: Deliveries scheduled on the event loop and not yet made.
        self.in_flight = 0
        #: Snapshot streams: (from, to, chunks that went through, whether it was taken).
        self.snapshot_results: list[tuple[int, int, int, bool]] = []

    def attach(self, node_id: int, endpoint: RaftEndpoint) -> None:
        """`endpoint` is node `node_id` from now on (whether it is up is `down`'s say)."""
        self.endpoints[node_id] = endpoint

    def sender(self, src: int) -> _Sender:
        """The `RaftSender` of node `src`."""
        return _Sender(self, src)

    def link(self, src: int, dst: int) -> _Link:
        return self._links.setdefault((src, dst), _Link())

    def _send(self, src: int, dst: int, group_id: int, msg: Message, desc: Any) -> None:
        link = self.link(src, dst)
        if link.cut:
            return
        if link.held and msg.type is not MessageType.SNAP:
            link.queue.append((group_id, msg, desc))
            return
        if dst in self.down or dst not in self.endpoints:
            return
        if msg.type is MessageType.SNAP:
            task = asyncio.ensure_future(self._stream(src, dst, group_id, msg, desc))
            self._tasks.add(task)
            self._stream_ends[task] = (src, dst)
            task.add_done_callback(self._stream_done)
            return
        self._schedule(dst, group_id, msg, desc)

    def _schedule(
        self, dst: int, group_id: int, msg: Message, desc: types_pb2.RangeDescriptor | None
    ) -> None:
        self.in_flight += 1
        asyncio.get_running_loop().call_soon(self._deliver, dst, group_id, msg, desc)

    def _deliver(
        self, dst: int, group_id: int, msg: Message, desc: types_pb2.RangeDescriptor | None
    ) -> None:
        self.in_flight -= 1
        if dst in self.down or dst not in self.endpoints:
            return
        self.delivered += 1
        self.endpoints[dst].handle_raft([(group_id, msg, desc)])

    def _stream_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._stream_ends.pop(task, None)

    def take_down(self, node_id: int) -> None:
        """Node `node_id` stops (its process ends): nothing reaches it any more, and
        the snapshot streams it was sending or receiving break, as their gRPC
        streams would (the sender, if up, hears that the snapshot failed)."""
        self.down.add(node_id)
        for task, (src, dst) in list(self._stream_ends.items()):
            if node_id in (src, dst):
                task.cancel()

    # --- the links, under the caller's control ------------------------------------------

    def hold(self, src: int, dst: int) -> None:
        self.link(src, dst).held = True

    def hold_all_to(self, dst: int) -> None:
        for src in self.endpoints:
            if src != dst:
                self.hold(src, dst)

    def hold_all_from(self, src: int) -> None:
        for dst in self.endpoints:
            if dst != src:
                self.hold(src, dst)

    def take_held(self, src: int, dst: int) -> list[Inbound]:
        """Remove and return the messages held on src -> dst (the link stays held)."""
        link = self.link(src, dst)
        queued, link.queue = link.queue, []
        return queued

    def release(self, src: int, dst: int) -> None:
        link = self.link(src, dst)
        link.held = False
        queued, link.queue = link.queue, []
        for group_id, msg, desc in queued:
            self._schedule(dst, group_id, msg, desc)

    def release_all(self) -> None:
        for src, dst in list(self._links):
            self.release(src, dst)

    def cut(self, src: int, dst: int) -> None:
        link = self.link(src, dst)
        link.cut = True
        link.queue.clear()

    def heal(self, src: int, dst: int) -> None:
        self.link(src, dst).cut = False

    # --- snapshots ------------------------------------------------------------------------

    @property
    def streams_in_flight(self) -> int:
        """Snapshot streams started and not yet ended."""
        return len(self._tasks)

    def hold_snapshots(self, src: int, dst: int) -> asyncio.Event:
        """Streams src -> dst stop after their first chunk until the event is set."""
        gate = asyncio.Event()
        self._snapshot_gates[(src, dst)] = gate
        return gate

    async def _stream(
        self,
        src: int,
        dst: int,
        group_id: int,
        msg: Message,
        desc: types_pb2.RangeDescriptor | None,
    ) -> None:
        sender = self.endpoints[src]
        receiver = self.endpoints[dst]
        sent = 0

        async def chunks() -> AsyncIterator[bytes]:
            nonlocal sent
            async for chunk in sender.snapshot_source(group_id, msg):
                sent += 1
                yield chunk
                gate = self._snapshot_gates.get((src, dst))
                if gate is not None:
                    await gate.wait()

        ok = False
        try:
            if dst not in self.down:
                ok = await receiver.handle_snapshot(group_id, msg, desc, chunks())
        finally:
            self.snapshot_results.append((src, dst, sent, ok))
            if src not in self.down:
                sender.report_snapshot(dst, group_id, msg.to, not ok)

    async def close(self) -> None:
        for gate in self._snapshot_gates.values():
            gate.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class _Sender:
    """One node's `RaftSender` on a `MemoryNetwork`."""

    __slots__ = ("_network", "node_id")

    def __init__(self, network: MemoryNetwork, node_id: int) -> None:
        self._network = network
        self.node_id = node_id

    def send(
        self,
        node_id: int,
        group_id: int,
        msg: Message,
        descriptor: types_pb2.RangeDescriptor | None = None,
    ) -> None:
        self._network._send(self.node_id, node_id, group_id, msg, descriptor)
