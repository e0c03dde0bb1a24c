"""The raft transport's receiver drops a batch whose sender's clock it refuses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from rangekv.raft import Message, MessageType
from rangekv.replication.raft_codec import message_to_proto
from rangekv.replication.transport_server import RaftTransportServicer
from rangekv.v1 import raft_pb2, types_pb2


async def test_batches_from_a_refused_clock_are_dropped() -> None:
    handled: list[Any] = []
    seen: list[tuple[int, int]] = []

    def admit(sender: int, clock: types_pb2.Timestamp) -> bool:
        seen.append((sender, clock.wall_time))
        return clock.wall_time < 100

    servicer = RaftTransportServicer(1, handled.extend, _no_snapshots, admit_clock=admit)
    msg = message_to_proto(5, Message(MessageType.HEARTBEAT, 1, 2, term=3), None)

    async def requests() -> AsyncIterator[raft_pb2.RaftStreamRequest]:
        for wall in (50, 500, 60):
            yield raft_pb2.RaftStreamRequest(
                from_node_id=2,
                to_node_id=1,
                messages=[msg],
                sender_clock=types_pb2.Timestamp(wall_time=wall),
            )
        yield raft_pb2.RaftStreamRequest(from_node_id=2, to_node_id=1, messages=[msg])

    answers = [a async for a in servicer.RaftStream(requests(), _Context())]  # type: ignore[arg-type]
    assert answers == []
    assert [s for s in seen] == [(2, 50), (2, 500), (2, 60)]
    assert len(handled) == 3, "the batch stamped 500 was delivered"


class _Context:
    """The one ServicerContext call RaftStream makes."""

    async def send_initial_metadata(self, metadata: Any) -> None:
        return None


async def _no_snapshots(header: Any, chunks: Any) -> bool:
    return False
