"""A raft group's one proposal queue, and the merging of concurrent writes into one command.

Callers queue proposals on a group from any coroutine; the scheduler takes them
all, once per iteration, inside its section, and proposes them in one batch.
Two kinds share the queue:

* a *command* (`add_command`): finished bytes, one raft entry, whose applied
  result goes to its one future;
* a *part* (`add_part`): some items (e.g. a client batch's write operations)
  that the group's `CommandMerger` merges with every other part queued in the
  same iteration into ONE command. Its applied result is one list, one answer
  per item, and each caller gets its own slice of it (`FanOut`).

Merging is what turns many concurrent client batches into one raft entry and
one fsync. The merger is a component of the serving layer (it decides, in the
scheduler's section, which parts may go now and at which timestamp); the group
only keeps the queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from rangekv.common.fan_out import FanOut

__all__ = ["CommandMerger", "Merge", "ProposalQueue", "QueuedPart", "Waiter", "settle"]

T = TypeVar("T")

#: Who waits for an entry's applied result: one caller, or the callers of a merge.
Waiter = asyncio.Future[Any] | FanOut[Any, list[Any]]


@dataclass(frozen=True, slots=True)
class QueuedPart(Generic[T]):
    """One caller's items waiting to be merged, and its future (its slice of the answer)."""

    items: Sequence[T]
    future: asyncio.Future[list[Any]]


@dataclass(frozen=True, slots=True)
class Merge(Generic[T]):
    """What a merger made of the queued parts: one command holding the `taken`
    parts' items in order (None: nothing is proposed now); the other parts wait."""

    command: bytes | None
    taken: Sequence[QueuedPart[T]] = ()


class CommandMerger(Protocol[T]):
    """Merges the parts queued on a group into one command (serving layer)."""

    def merge(self, parts: Sequence[QueuedPart[T]]) -> Merge[T]:
        """Called once per scheduler iteration, in its section, with every part
        still wanted (possibly none). The command's applied result must be one
        list holding one answer per item of `taken`, in order."""
        ...


class ProposalQueue(Generic[T]):
    """The one queue of a group's proposals (see the module docstring)."""

    def __init__(self, merger: CommandMerger[T] | None = None) -> None:
        self._merger = merger
        self._commands: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._parts: list[QueuedPart[T]] = []
        self._part_items = 0

    @property
    def queued_items(self) -> int:
        """Items of parts queued and not proposed yet (callers that gave up included
        until the next take)."""
        return self._part_items

    def __bool__(self) -> bool:
        return bool(self._commands or self._parts)

    def add_command(self, command: bytes) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._commands.append((command, fut))
        return fut

    def add_part(self, items: Sequence[T]) -> asyncio.Future[list[Any]]:
        if self._merger is None:
            raise TypeError("this group merges no parts (it was given no CommandMerger)")
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._parts.append(QueuedPart(items, fut))
        self._part_items += len(items)
        return fut

    def take(self) -> list[tuple[bytes, Waiter]]:
        """Everything to propose now, in order: the commands, then the merge."""
        if not self._commands and not self._parts:
            return []  # the common case for most groups in most scheduler turns
        out: list[tuple[bytes, Waiter]] = [(c, f) for c, f in self._commands if not f.done()]
        self._commands = []
        if self._merger is None:
            return out
        parts = [p for p in self._parts if not p.future.done()]  # callers that gave up go
        merge = self._merger.merge(parts)
        if merge.command is None:
            self._set_parts(parts)
            return out
        taken = {id(p) for p in merge.taken}
        self._set_parts([p for p in parts if id(p) not in taken])
        fan: FanOut[Any, list[Any]] = FanOut()
        for part in merge.taken:
            fan.add(part.items, part.future)
        out.append((merge.command, fan))
        return out

    def _set_parts(self, parts: list[QueuedPart[T]]) -> None:
        self._parts = parts
        self._part_items = sum(len(p.items) for p in parts)

    def fail_all(self, exc: BaseException) -> None:
        """Every queued caller gets `exc` (the group is closing)."""
        for _command, fut in self._commands:
            if not fut.done():
                fut.set_exception(exc)
        for part in self._parts:
            if not part.future.done():
                part.future.set_exception(exc)
        self._commands = []
        self._set_parts([])


def settle(waiter: Waiter, result: object) -> None:
    """Hand an applied (or failed) entry's `result` to whoever waits for it: an
    exception value fails them; a merge's callers each get their slice."""
    if isinstance(waiter, FanOut):
        if isinstance(result, BaseException):
            waiter.fail(result)
        else:
            assert isinstance(result, Sequence)
            waiter.resolve(result, list)
    elif not waiter.done():
        if isinstance(result, BaseException):
            waiter.set_exception(result)
        else:
            waiter.set_result(result)
