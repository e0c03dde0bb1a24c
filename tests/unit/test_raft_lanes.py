"""Lane classification and the lane queue (bounded, batching, coalescing)."""

from __future__ import annotations

import asyncio

import pytest

from rangekv.raft import Entry, Message, MessageType
from rangekv.replication.lanes import (
    UNBOUNDED,
    InMemoryCounter,
    Lane,
    LaneQueue,
    Outbound,
    lane_for,
)
from rangekv.v1 import raft_pb2

M = MessageType

LANE_TABLE: dict[MessageType, Lane] = {
    M.HEARTBEAT: Lane.HEARTBEAT,
    M.HEARTBEAT_RESP: Lane.HEARTBEAT,
    M.VOTE: Lane.HEARTBEAT,
    M.VOTE_RESP: Lane.HEARTBEAT,
    M.PRE_VOTE: Lane.HEARTBEAT,
    M.PRE_VOTE_RESP: Lane.HEARTBEAT,
    M.READ_INDEX: Lane.HEARTBEAT,
    M.READ_INDEX_RESP: Lane.HEARTBEAT,
    M.TIMEOUT_NOW: Lane.HEARTBEAT,
    M.APP: Lane.REPLICATION,
    M.APP_RESP: Lane.REPLICATION,
    M.SNAP: Lane.SNAPSHOT,
    M.TRANSFER_LEADER: Lane.OTHER,
    M.HUP: Lane.OTHER,
    M.BEAT: Lane.OTHER,
    M.PROP: Lane.OTHER,
    M.UNREACHABLE: Lane.OTHER,
    M.SNAP_STATUS: Lane.OTHER,
    M.CHECK_QUORUM: Lane.OTHER,
}


def test_table_covers_every_message_type() -> None:
    assert set(LANE_TABLE) == set(MessageType)


@pytest.mark.parametrize(("msg_type", "lane"), [(t, LANE_TABLE[t]) for t in MessageType])
def test_lane_for(msg_type: MessageType, lane: Lane) -> None:
    assert lane_for(msg_type) is lane


def test_lane_values_are_the_wire_enum() -> None:
    assert Lane.HEARTBEAT == raft_pb2.RAFT_LANE_HEARTBEAT
    assert Lane.REPLICATION == raft_pb2.RAFT_LANE_REPLICATION
    assert Lane.SNAPSHOT == raft_pb2.RAFT_LANE_SNAPSHOT
    assert Lane.OTHER == raft_pb2.RAFT_LANE_OTHER
    assert [lane.label for lane in Lane] == ["heartbeat", "replication", "snapshot", "other"]


def hb(group: int, to: int, commit: int) -> Outbound:
    return (group, Message(M.HEARTBEAT, to, 1, commit=commit), None)


def msg(t: MessageType, group: int = 1, to: int = 2, index: int = 0) -> Outbound:
    return (group, Message(t, to, 1, index=index), None)


def test_bounded_queue_refuses_when_full() -> None:
    q = LaneQueue(3)
    assert all(q.put(msg(M.APP, index=i)) for i in range(3))
    assert not q.put(msg(M.APP, index=3))
    assert len(q) == 3
    assert [m.index for _, m, _ in q.drain(UNBOUNDED)] == [0, 1, 2]
    assert len(q) == 0


def test_heartbeats_coalesce_per_group_and_target_without_reordering() -> None:
    q = LaneQueue(8, coalesce_heartbeats=True)
    q.put(hb(1, 2, commit=1))
    q.put(msg(M.VOTE, group=1))
    q.put(hb(2, 2, commit=1))
    q.put(hb(1, 2, commit=2))  # supersedes the first
    q.put(hb(1, 3, commit=1))  # other target: kept
    q.put(hb(1, 2, commit=3))  # supersedes again
    assert len(q) == 4
    out = [(g, m.type, m.to, m.commit) for g, m, _ in q.drain(UNBOUNDED)]
    assert out == [
        (1, M.VOTE, 2, 0),
        (2, M.HEARTBEAT, 2, 1),
        (1, M.HEARTBEAT, 3, 1),
        (1, M.HEARTBEAT, 2, 3),
    ]
    # Once drained, a heartbeat for the pair is new again.
    q.put(hb(1, 2, commit=4))
    assert [m.commit for _, m, _ in q.drain(UNBOUNDED)] == [4]


def test_a_superseding_heartbeat_is_never_dropped_when_full() -> None:
    q = LaneQueue(2, coalesce_heartbeats=True)
    assert q.put(hb(1, 2, 1)) and q.put(hb(2, 2, 1))
    assert not q.put(hb(3, 2, 1))  # a new pair: the lane is full
    for commit in range(2, 100):  # tombstones get compacted along the way
        assert q.put(hb(1, 2, commit))
    assert len(q) == 2
    assert [(g, m.commit) for g, m, _ in q.drain(UNBOUNDED)] == [(2, 1), (1, 99)]


def test_without_coalescing_heartbeats_are_kept() -> None:
    q = LaneQueue(8)
    q.put(hb(1, 2, 1))
    q.put(hb(1, 2, 2))
    assert len(q.drain(UNBOUNDED)) == 2


def test_drain_caps_batch_bytes_but_always_takes_one() -> None:
    q = LaneQueue(16)
    for i in range(4):
        q.put((1, Message(M.APP, 2, 1, index=i, entries=(Entry(1, i, data=b"x" * 1000),)), None))
    assert [m.index for _, m, _ in q.drain(2500)] == [0, 1]
    assert [m.index for _, m, _ in q.drain(10)] == [2]  # oversized: alone
    assert [m.index for _, m, _ in q.drain(0)] == [3]


async def test_get_batch_waits_for_a_put() -> None:
    q = LaneQueue(4)
    waiter = asyncio.ensure_future(q.get_batch(UNBOUNDED))
    await asyncio.sleep(0)
    assert not waiter.done()
    q.put(msg(M.APP, index=1))
    q.put(msg(M.APP, index=2))
    batch: list[Outbound] = await asyncio.wait_for(waiter, 5)
    assert [m.index for _, m, _ in batch] == [1, 2]


def test_clear_returns_what_was_live() -> None:
    q = LaneQueue(4, coalesce_heartbeats=True)
    q.put(hb(1, 2, 1))
    q.put(hb(1, 2, 2))
    assert [m.commit for _, m, _ in q.clear()] == [2]
    assert len(q) == 0 and q.drain(UNBOUNDED) == []


def test_in_memory_counter_sums_by_label_subset() -> None:
    c = InMemoryCounter()
    c.add(1, lane="heartbeat", type="heartbeat")
    c.add(2, lane="heartbeat", type="vote")
    c.add(5, lane="replication", type="app")
    assert c.value(lane="heartbeat") == 3
    assert c.value(type="app") == 5
    assert c.value() == 8
