"""Meta lookups in flight, shared by every cache miss they can answer (rule C).

A lookup runs as a task of its own, not inside the request that started it:
every miss that joins it (the starter included) waits on it through a
shield, so a request that gives up at its deadline stops waiting without
cancelling the answer the other waiters need (and the cache still learns it).

Which in-flight lookups can answer a miss for key ``k``? A lookup of ``j``
returns the range covering ``j`` and the ``prefetch`` ranges after it. So one
of ``j > k`` covers ``k`` only if ``k`` is in the same range as ``j``, and of
those the nearest above ``k`` is the best bet (a farther one's range starts no
earlier); one of ``j < k`` covers ``k`` through the ranges after ``j``, and the
nearest below ``k`` reaches at least as far as any farther one. A miss
therefore waits for the exact key's lookup if there is one, else for the
nearest lookup below and the nearest above; whatever the order the misses
arrived in, one lookup serves every key its answer covers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from rangekv.gateway.cache_types import CacheEntry

__all__ = ["LookupFlights"]

_Flight = asyncio.Task[CacheEntry]


class LookupFlights:
    """Lookup tasks by (key, consistent). Single event loop; no locks."""

    def __init__(self) -> None:
        self._flights: dict[tuple[bytes, bool], _Flight] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def get(self, key: bytes, consistent: bool) -> _Flight | None:
        return self._flights.get((key, consistent))

    def start(
        self, key: bytes, consistent: bool, lookup: Callable[[], Coroutine[Any, Any, CacheEntry]]
    ) -> _Flight:
        """Run ``lookup()`` as the flight of (key, consistent); it leaves when it is done."""
        flight = asyncio.ensure_future(lookup())
        slot = (key, consistent)
        self._flights[slot] = flight

        def landed(done: _Flight) -> None:
            if self._flights.get(slot) is done:
                del self._flights[slot]
            if not done.cancelled():
                done.exception()  # retrieved: a flight nobody waits for any more may fail

        flight.add_done_callback(landed)
        return flight

    def nearby(self, key: bytes) -> list[_Flight]:
        """The inconsistent flights nearest below and nearest above ``key`` (module doc)."""
        below: tuple[bytes, _Flight] | None = None
        above: tuple[bytes, _Flight] | None = None
        for (k, consistent), flight in self._flights.items():
            if consistent or k == key:
                continue
            if k < key and (below is None or k > below[0]):
                below = (k, flight)
            elif k > key and (above is None or k < above[0]):
                above = (k, flight)
        return [pair[1] for pair in (below, above) if pair is not None]


async def wait_all(flights: list[_Flight]) -> list[CacheEntry]:
    """Wait for every flight without cancelling any; the answers of those that succeeded."""
    if flights:
        await asyncio.wait(flights)
    return [f.result() for f in flights if not f.cancelled() and f.exception() is None]
