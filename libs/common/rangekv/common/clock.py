"""The one clock every rangekv component reads, its in-memory twin, and the test offset.

Logic never calls `time.monotonic`, `time.time_ns` or `asyncio.sleep(delay)`:
it is handed a `Clock` (monotonic seconds for deadlines and leases, wall
nanoseconds for timestamps, and sleeping). The services' entry points build
one `SystemClock`; tests and the simulator build a `ManualClock`, whose time
moves only when they say so, so an outcome never depends on the machine's
speed. (A bare `asyncio.sleep(0)` -- yielding to the event loop -- reads no
time and stays as it is.)

The one test-only way to make a process's clock wrong:
RANGEKV_TEST_CLOCK_OFFSET_MS=N (may be negative) shifts its wall clock by N
milliseconds. It is read ONCE, at process start, by the entry point, and a
process started with it says so loudly. The chaos suite uses it to skew clocks
within the maximum clock offset (nothing may break) and beyond it at one
process (whose timestamps must then be refused, never absorbed).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import os
import time
from collections.abc import Callable, Mapping
from typing import Final, Protocol

from rangekv.common.logs import fault_banner

__all__ = [
    "ENV_VAR",
    "EPOCH_NS",
    "Clock",
    "ManualClock",
    "SystemClock",
    "test_clock_offset_ns",
    "warning_line",
]

ENV_VAR = "RANGEKV_TEST_CLOCK_OFFSET_MS"

#: Wall time (ns) at which every ManualClock starts: a realistic epoch value.
EPOCH_NS: Final = 1_800_000_000 * 10**9


class Clock(Protocol):
    """Time as a component sees it."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (deadlines, leases, ticks)."""
        ...

    def wall_ns(self) -> int:
        """Nanoseconds since the epoch (hybrid-logical timestamps, liveness)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once `seconds` of monotonic time have passed."""
        ...


class SystemClock:
    """The machine's clocks; `offset_ns` shifts the wall clock (test only)."""

    __slots__ = ("offset_ns",)

    def __init__(self, offset_ns: int = 0) -> None:
        self.offset_ns = offset_ns

    def monotonic(self) -> float:
        return time.monotonic()

    def wall_ns(self) -> int:
        return time.time_ns() + self.offset_ns

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ManualClock:
    """The in-memory twin of `SystemClock`: time moves only by `advance`.

    `sleep` parks the caller until `advance` moves time past its deadline (a
    sleep of zero or less only yields). `view` gives a clock that shares this
    one's time but has a wall clock of its own offset: one per simulated
    process, so a test can skew one process's clock or step it back.
    """

    def __init__(self, start: float = 1000.0, epoch_ns: int = EPOCH_NS) -> None:
        self.now = start
        self._start = start
        self._epoch_ns = epoch_ns
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self.now

    def wall_ns(self) -> int:
        return self._epoch_ns + round((self.now - self._start) * 1e9)

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._seq), fut))
        await fut

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has passed."""
        self.now += seconds
        while self._sleepers and self._sleepers[0][0] <= self.now:
            _at, _seq, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    @property
    def sleepers(self) -> int:
        """Sleeps waiting for time to pass."""
        return sum(1 for _at, _seq, fut in self._sleepers if not fut.done())

    def next_wakeup(self) -> float | None:
        """The earliest deadline of a waiting sleep (None: nobody sleeps)."""
        live = [at for at, _seq, fut in self._sleepers if not fut.done()]
        return min(live) if live else None

    def view(self, offset_ns: Callable[[], int]) -> ClockView:
        """A clock on this one's time whose wall clock is shifted by `offset_ns()`."""
        return ClockView(self, offset_ns)


class ClockView:
    """One process's view of a shared `ManualClock` (see `ManualClock.view`)."""

    __slots__ = ("_base", "_offset")

    def __init__(self, base: ManualClock, offset_ns: Callable[[], int]) -> None:
        self._base = base
        self._offset = offset_ns

    def monotonic(self) -> float:
        return self._base.monotonic()

    def wall_ns(self) -> int:
        return self._base.wall_ns() + self._offset()

    async def sleep(self, seconds: float) -> None:
        await self._base.sleep(seconds)


def test_clock_offset_ns(environ: Mapping[str, str] | None = None) -> int:
    """The offset RANGEKV_TEST_CLOCK_OFFSET_MS asks for, in nanoseconds (0: none).

    A malformed value is an error, not a silent zero: a test that asks for a
    skewed clock must get it."""
    env = os.environ if environ is None else environ
    raw = env.get(ENV_VAR, "").strip()
    if not raw:
        return 0
    try:
        return int(float(raw) * 1_000_000)
    except ValueError:
        raise ValueError(f"{ENV_VAR}={raw!r} is not a number of milliseconds") from None


def warning_line(offset_ns: int) -> str | None:
    """The loud startup warning for a skewed clock (None when not skewed)."""
    if not offset_ns:
        return None
    return fault_banner(
        "CLOCK OFFSET ACTIVE",
        f"{ENV_VAR}={offset_ns / 1e6:g}",
        "this process's wall clock is DELIBERATELY WRONG",
    )
