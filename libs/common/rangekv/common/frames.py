"""A queue that hands out everything it holds at once: the sender side of framed streams.

A Python gRPC stream pays a fixed cost per message (a write, a read, an event-loop
turn and a task wake-up on each side), whatever the message holds. When many
small messages are ready together -- the batches a gateway gathered for one node
in one event-loop turn, one per range; the answers a node finished in one
scheduler iteration -- sending them as ONE frame pays that cost once.

`FrameQueue` is that: producers `put` items with their encoded size; the one
consumer `await`s `next_frame`, which waits for the first item and then takes
every item already queued, in order, while the frame stays within `max_bytes`
(a frame always holds at least one item, so an item larger than the bound
still goes, alone). No timer: a frame holds what piled up while the previous
one was being written, so frames grow with load and a lone item leaves at once.

Gathering (`gather_turns`, by the rule of `rangekv.common.gathering`). Under
load, more items are usually on their way when a frame is taken: their
producers wait behind the consumer on the event loop (a node's read answers
finish one task at a time; a gateway's reads for many ranges are routed one
call at a time). If items were already queued when
the consumer asked for its next frame -- they piled up while it wrote the last
one, so it is busy -- and every queued item `may_wait`, the consumer first
yields to the loop, one turn at a time, while each turn brings new items: at
most `gather_turns` turns, and it stops at once when a turn brings nothing,
when an item that may not wait arrives, when the queue holds `max_bytes`, or
when the queue is closed. So:

  - an idle queue never delays: its consumer was waiting, not busy; nor does
    a consumer's first frame (`frames`): what it finds was queued before it;
  - an item that may not wait (a write, whose caller's next entry waits on it)
    is never held back, and neither is anything queued with it;
  - a steady stream of items delays a frame by at most `gather_turns` turns.

Only reads gather because that is what measured well: over many ranges, where
each batch holds about one read, reads through a stream got faster with it,
while writes held back got slower (a busy node's raft scheduler already
gathers writes into shared log writes, and a closed-loop writer waits).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Final, Generic, TypeVar

from rangekv.common.gathering import gather

__all__ = ["FRAME_MAX_BYTES", "FrameQueue"]

T = TypeVar("T")

#: Default bound of one frame's encoded items (well under every channel's and
#: server's message limit, which are at least 4 MiB plus one item).
FRAME_MAX_BYTES: Final = 4 << 20


class FrameQueue(Generic[T]):
    """Items in order, handed out as frames (see the module docstring). One consumer."""

    def __init__(
        self,
        max_bytes: int = FRAME_MAX_BYTES,
        *,
        gather_turns: int = 0,
        on_gather: Callable[[int], None] | None = None,
    ) -> None:
        """`gather_turns`: at most this many event-loop turns a busy consumer waits for
        more items that may wait (0: never; see the module docstring); `on_gather` is
        told how many turns each gathering took."""
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        if gather_turns < 0:
            raise ValueError(f"gather_turns must be >= 0, got {gather_turns}")
        self._max_bytes = max_bytes
        self._gather_turns = gather_turns
        self._on_gather = on_gather
        #: (item, size, may_wait), in put order.
        self._items: deque[tuple[T, int, bool]] = deque()
        #: Invariant: the sizes of `_items`, summed.
        self._bytes = 0
        #: Invariant: how many of `_items` may not wait.
        self._hurried = 0
        #: Items ever put: a turn that did not move it brought nothing.
        self._puts = 0
        self._ready = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, item: T, size: int, *, may_wait: bool = False) -> None:
        """Queue `item` (`size`: its encoded bytes; `may_wait`: a busy consumer may hold
        it a few turns for company, see the module docstring). Ignored once closed."""
        if self._closed:
            return
        self._items.append((item, size, may_wait))
        self._bytes += size
        self._hurried += not may_wait
        self._puts += 1
        self._ready.set()

    def close(self) -> None:
        """No more items: `next_frame` returns what is queued, then an empty frame."""
        self._closed = True
        self._ready.set()

    async def next_frame(self, *, busy: bool = True) -> list[T]:
        """The next frame: at least one item, or [] once closed and drained.

        `busy=False`: never wait for company although items are queued (what
        `frames` asks for a consumer's first frame)."""
        if busy and self._items and self._gather_turns and self._may_gather():
            turns = await gather(self._gather_turns, self._put_count, self._may_gather)
            if turns and self._on_gather is not None:
                self._on_gather(turns)
        while not self._items:
            if self._closed:
                return []
            self._ready.clear()
            await self._ready.wait()
        item, total = self._pop()
        frame = [item]
        while self._items and total + self._items[0][1] <= self._max_bytes:
            item, size = self._pop()
            frame.append(item)
            total += size
        return frame

    async def frames(self) -> AsyncIterator[list[T]]:
        """One consumer's frames, until the queue is closed and drained.

        Its first frame never gathers: whatever it finds queued was queued before it
        existed (a new stream on this queue, or the next one after a reconnect), so it
        was not busy. Every later frame follows `next_frame`'s rule."""
        busy = False
        while frame := await self.next_frame(busy=busy):
            busy = True
            yield frame

    def _may_gather(self) -> bool:
        """Another gathering turn is allowed: every queued item may wait, the queue is
        open and the frame is not full yet."""
        return not self._hurried and not self._closed and self._bytes < self._max_bytes

    def _put_count(self) -> int:
        return self._puts

    def _pop(self) -> tuple[T, int]:
        item, size, may_wait = self._items.popleft()
        self._bytes -= size
        self._hurried -= not may_wait
        return item, size
