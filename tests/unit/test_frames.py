"""FrameQueue: everything queued leaves in one frame, in order, within the byte bound."""

from __future__ import annotations

import asyncio

import pytest

from rangekv.common.frames import FrameQueue


async def test_a_frame_takes_everything_queued_in_order() -> None:
    q: FrameQueue[str] = FrameQueue(100)
    for item in "abc":
        q.put(item, 10)
    assert await q.next_frame() == ["a", "b", "c"]
    assert len(q) == 0


async def test_a_frame_stays_within_its_bytes_but_always_holds_one_item() -> None:
    q: FrameQueue[str] = FrameQueue(25)
    q.put("big", 60)  # larger than the bound: it still goes, alone
    q.put("a", 10)
    q.put("b", 10)
    q.put("c", 10)
    assert await q.next_frame() == ["big"]
    assert await q.next_frame() == ["a", "b"]
    assert await q.next_frame() == ["c"]


async def test_a_bound_of_one_byte_makes_frames_of_one() -> None:
    q: FrameQueue[int] = FrameQueue(1)
    for i in range(3):
        q.put(i, 1)
    assert [await q.next_frame() for _ in range(3)] == [[0], [1], [2]]


async def test_the_consumer_waits_for_the_first_item() -> None:
    q: FrameQueue[str] = FrameQueue()
    waiting = asyncio.ensure_future(q.next_frame())
    await asyncio.sleep(0)
    assert not waiting.done()
    q.put("a", 1)
    q.put("b", 1)  # queued before the consumer ran: same frame
    assert await asyncio.wait_for(waiting, 2) == ["a", "b"]


async def test_close_drains_then_ends_and_ignores_later_items() -> None:
    q: FrameQueue[str] = FrameQueue()
    q.put("a", 1)
    q.close()
    q.put("late", 1)
    assert q.closed
    assert await q.next_frame() == ["a"]
    assert await q.next_frame() == []
    waiting = asyncio.ensure_future(q.next_frame())
    assert await asyncio.wait_for(waiting, 2) == []


async def test_close_wakes_a_waiting_consumer() -> None:
    q: FrameQueue[str] = FrameQueue()
    waiting = asyncio.ensure_future(q.next_frame())
    await asyncio.sleep(0)
    q.close()
    assert await asyncio.wait_for(waiting, 2) == []


def test_the_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        FrameQueue(0)
