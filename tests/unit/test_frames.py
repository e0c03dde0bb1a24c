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


# --- gathering: a busy consumer waits a few turns for more items that may wait


class _Producer:
    """Puts one item per event-loop turn, `count` times (a producer that is on its
    way while the consumer runs)."""

    def __init__(self, q: FrameQueue[str], count: int, *, may_wait: bool = True) -> None:
        self.q = q
        self.count = count
        self.may_wait = may_wait
        self.put = 0

    async def run(self) -> None:
        for i in range(self.count):
            self.q.put(f"p{i}", 1, may_wait=self.may_wait)
            self.put += 1
            await asyncio.sleep(0)


def _gathering(turns: int = 16, max_bytes: int = 1000) -> tuple[FrameQueue[str], list[int]]:
    gathered: list[int] = []
    return FrameQueue(max_bytes, gather_turns=turns, on_gather=gathered.append), gathered


async def test_an_idle_consumer_takes_the_first_item_at_once() -> None:
    q, gathered = _gathering()
    waiting = asyncio.ensure_future(q.next_frame())
    await asyncio.sleep(0)
    q.put("a", 1, may_wait=True)
    producer = asyncio.ensure_future(_Producer(q, 3).run())
    assert await asyncio.wait_for(waiting, 2) == ["a"]  # it was waiting, not busy
    assert gathered == []
    await producer


#: (case, gather_turns, max_bytes, items the producer brings one per turn,
#:  the frame expected, the turns reported). "a" was queued before the consumer asked.
_BUSY_CASES = [
    ("gathers items on their way", 16, 1000, 5, ["a", "p0", "p1", "p2", "p3", "p4"], [6]),
    ("ends at the first turn without items", 16, 1000, 0, ["a"], [1]),
    (
        "a steady stream waits at most gather_turns",
        4,
        1000,
        100,
        ["a", "p0", "p1", "p2", "p3"],
        [4],
    ),
    ("ends once the frame is full", 16, 3, 100, ["a", "p0", "p1"], [2]),
    ("zero turns never gathers", 0, 1000, 5, ["a"], []),
]


@pytest.mark.parametrize(
    ("turns", "max_bytes", "produced", "frame", "reported"),
    [case[1:] for case in _BUSY_CASES],
    ids=[case[0] for case in _BUSY_CASES],
)
async def test_a_busy_consumer_gathers_within_its_bounds(
    turns: int, max_bytes: int, produced: int, frame: list[str], reported: list[int]
) -> None:
    """An item queued before the consumer asked makes it busy: it gathers within the
    case's bounds and reports the turns it yielded."""
    q, gathered = _gathering(turns=turns, max_bytes=max_bytes)
    q.put("a", 1, may_wait=True)  # queued before the consumer asked: it is busy
    producer = asyncio.ensure_future(_Producer(q, produced).run())
    assert await q.next_frame() == frame
    assert gathered == reported
    producer.cancel()


async def test_a_consumers_first_frame_never_gathers() -> None:
    """`frames()`: items queued before the consumer existed (a new stream on the
    queue) go at once, producers on their way or not; from its second frame on it
    gathers like `next_frame`."""
    q, gathered = _gathering()
    q.put("a", 1, may_wait=True)
    first = asyncio.ensure_future(_Producer(q, 5).run())
    frames = q.frames()
    assert await anext(frames) == ["a"]
    assert gathered == []
    await first
    # Queued meanwhile: busy, it looks one turn further, which brings nothing.
    assert await anext(frames) == ["p0", "p1", "p2", "p3", "p4"]
    assert gathered == [1]
    q.put("b", 1, may_wait=True)  # queued before the consumer asks: it is busy
    second = asyncio.ensure_future(_Producer(q, 5).run())
    assert await anext(frames) == ["b", "p0", "p1", "p2", "p3", "p4"]
    assert gathered == [1, 6]
    await second
    q.close()
    assert [f async for f in frames] == []


async def test_an_item_that_may_not_wait_is_never_held() -> None:
    q, gathered = _gathering()
    q.put("r", 1, may_wait=True)
    q.put("w", 1)  # a write: the frame leaves at once
    task = asyncio.ensure_future(_Producer(q, 5).run())
    assert await q.next_frame() == ["r", "w"]
    assert gathered == []
    task.cancel()


async def test_an_item_that_may_not_wait_ends_gathering() -> None:
    q, gathered = _gathering()
    q.put("r", 1, may_wait=True)
    reads = asyncio.ensure_future(_Producer(q, 100).run())
    write = _Producer(q, 1, may_wait=False)  # arrives in the first turn too
    await asyncio.gather(q.next_frame(), write.run())
    assert gathered == [1]
    reads.cancel()


def test_gather_turns_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="gather_turns"):
        FrameQueue(gather_turns=-1)
