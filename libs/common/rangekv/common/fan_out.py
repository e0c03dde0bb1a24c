"""One list built from several callers' items, and one answer split back among them.

Both ends of a write merge concurrent work: the gateway's node client merges the
operations of concurrent client calls into one node batch, and a storage node's
replica merges concurrent batches into one raft command. Either way the answer
is one list, position for position, and each caller gets its own slice of it,
or the whole's error. `FanOut` is that bookkeeping, written once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["FanOut", "Share"]

T = TypeVar("T")  # an item of the merged list
R = TypeVar("R")  # what a caller's future resolves with
A = TypeVar("A")  # an item of the answer


@dataclass(frozen=True, slots=True)
class Share(Generic[R]):
    """One caller's place in the merged list: `count` items from `start`."""

    start: int
    count: int
    future: asyncio.Future[R]


@dataclass(slots=True)
class FanOut(Generic[T, R]):
    """Items of several callers, in order, and who waits for which slice."""

    items: list[T] = field(default_factory=list)
    shares: list[Share[R]] = field(default_factory=list)

    def add(self, items: Sequence[T], future: asyncio.Future[R]) -> None:
        """Append one caller's items; `future` will get the answer's matching slice."""
        self.shares.append(Share(len(self.items), len(items), future))
        self.items.extend(items)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def answered(self) -> bool:
        """Every caller already has an answer (or gave up): nothing is owed."""
        return all(s.future.done() for s in self.shares)

    def live(self) -> FanOut[T, R]:
        """This fan-out minus the callers already answered (e.g. cancelled by their
        deadline while they waited): nothing is sent on behalf of those."""
        if not any(s.future.done() for s in self.shares):
            return self
        kept: FanOut[T, R] = FanOut()
        for share in self.shares:
            if not share.future.done():
                kept.add(self.items[share.start : share.start + share.count], share.future)
        return kept

    def slices(self) -> list[tuple[list[T], asyncio.Future[R]]]:
        """Each waiting caller's own items and future."""
        return [
            (self.items[s.start : s.start + s.count], s.future)
            for s in self.shares
            if not s.future.done()
        ]

    def fail(self, exc: BaseException) -> None:
        """Every caller still waiting gets `exc`."""
        for share in self.shares:
            if not share.future.done():
                share.future.set_exception(exc)

    def resolve(self, answer: Sequence[A], wrap: Callable[[list[A]], R]) -> None:
        """Every caller still waiting gets `wrap` of its slice of `answer`."""
        for share in self.shares:
            if not share.future.done():
                share.future.set_result(wrap(list(answer[share.start : share.start + share.count])))
