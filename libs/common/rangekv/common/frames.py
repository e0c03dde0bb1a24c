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
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Final, Generic, TypeVar

__all__ = ["FRAME_MAX_BYTES", "FrameQueue"]

T = TypeVar("T")

#: Default bound of one frame's encoded items (well under every channel's and
#: server's message limit, which are at least 4 MiB plus one item).
FRAME_MAX_BYTES: Final = 4 << 20


class FrameQueue(Generic[T]):
    """Items in order, handed out as frames (see the module docstring). One consumer."""

    def __init__(self, max_bytes: int = FRAME_MAX_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self._max_bytes = max_bytes
        self._items: deque[tuple[T, int]] = deque()
        self._ready = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, item: T, size: int) -> None:
        """Queue `item` (`size`: its encoded bytes). Ignored once closed."""
        if self._closed:
            return
        self._items.append((item, size))
        self._ready.set()

    def close(self) -> None:
        """No more items: `next_frame` returns what is queued, then an empty frame."""
        self._closed = True
        self._ready.set()

    async def next_frame(self) -> list[T]:
        """The next frame: at least one item, or [] once closed and drained."""
        while not self._items:
            if self._closed:
                return []
            self._ready.clear()
            await self._ready.wait()
        item, total = self._items.popleft()
        frame = [item]
        while self._items and total + self._items[0][1] <= self._max_bytes:
            item, size = self._items.popleft()
            frame.append(item)
            total += size
        return frame
