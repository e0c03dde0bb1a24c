"""Hybrid logical clock (HLC) timestamps for MVCC.

Every MVCC version is stamped with a `Timestamp`: a physical wall time in
nanoseconds plus a logical counter that orders events sharing one wall time.
The clock never goes backwards, even if the machine's clock does, and it
absorbs timestamps seen on incoming messages (`update`) so that causality is
preserved across nodes: anything that happened after a node saw timestamp t
is stamped with something greater than t.

Why a bound on `update`: a peer with a badly wrong clock would otherwise drag
every node's HLC far into the future, and reads at those timestamps would
never be satisfiable by well-behaved nodes again. A remote timestamp more than
`max_offset_ns` ahead of our physical clock is rejected with
`ClockOffsetError` instead of being absorbed.

Time is an injected callable (no module global, no direct `time` call in the
logic), so tests and simulations are deterministic.

Encoding: `Timestamp.encode()` is 12 fixed bytes, big-endian wall time (8)
then logical (4), so byte order equals timestamp order; MVCC keys rely on it.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Final

__all__ = [
    "ENCODED_TIMESTAMP_LEN",
    "ClockOffsetError",
    "HybridClock",
    "LogicalOverflowError",
    "Timestamp",
    "TimestampDecodeError",
]

_WALL_MAX: Final = (1 << 64) - 1
_LOGICAL_MAX: Final = (1 << 32) - 1
_STRUCT: Final = struct.Struct(">QI")
ENCODED_TIMESTAMP_LEN: Final = _STRUCT.size  # 12


class TimestampDecodeError(ValueError):
    """Raised when bytes are not a 12-byte encoded timestamp."""


class LogicalOverflowError(OverflowError):
    """Raised when the logical counter would exceed 32 bits.

    That needs 2**32 events within one wall-clock nanosecond reading, i.e. a
    physical clock that is stuck; failing loudly beats wrapping around.
    """


class ClockOffsetError(Exception):
    """A remote timestamp is further ahead of our physical clock than allowed."""

    def __init__(self, remote: Timestamp, local_physical_ns: int, max_offset_ns: int) -> None:
        self.remote = remote
        self.local_physical_ns = local_physical_ns
        self.max_offset_ns = max_offset_ns
        self.offset_ns = remote.wall_time - local_physical_ns
        super().__init__(
            f"remote timestamp {remote} is {self.offset_ns} ns ahead of local physical "
            f"clock {local_physical_ns}; max allowed offset is {max_offset_ns} ns"
        )


@dataclass(frozen=True, slots=True, order=True)
class Timestamp:
    """An HLC timestamp; ordered by (wall_time, logical)."""

    wall_time: int
    logical: int = 0

    MIN: ClassVar[Timestamp]
    MAX: ClassVar[Timestamp]

    def __post_init__(self) -> None:
        if not 0 <= self.wall_time <= _WALL_MAX:
            raise ValueError(f"wall_time {self.wall_time} outside [0, 2**64)")
        if not 0 <= self.logical <= _LOGICAL_MAX:
            raise ValueError(f"logical {self.logical} outside [0, 2**32)")

    def encode(self) -> bytes:
        """12 bytes whose lexicographic order is the timestamp order."""
        return _STRUCT.pack(self.wall_time, self.logical)

    @classmethod
    def decode(cls, data: bytes) -> Timestamp:
        if len(data) != ENCODED_TIMESTAMP_LEN:
            raise TimestampDecodeError(
                f"encoded timestamp must be {ENCODED_TIMESTAMP_LEN} bytes, got {len(data)}"
            )
        wall, logical = _STRUCT.unpack(data)
        return cls(wall, logical)

    def next(self) -> Timestamp:
        """The smallest timestamp strictly greater than this one."""
        if self.logical < _LOGICAL_MAX:
            return Timestamp(self.wall_time, self.logical + 1)
        return Timestamp(self.wall_time + 1, 0)

    def __str__(self) -> str:
        return f"{self.wall_time}.{self.logical}"


Timestamp.MIN = Timestamp(0, 0)
Timestamp.MAX = Timestamp(_WALL_MAX, _LOGICAL_MAX)


class HybridClock:
    """A monotonic hybrid logical clock over an injected physical clock.

    `physical_now` returns nanoseconds (e.g. `time.time_ns`). The clock is
    safe to share between threads: both operations take one lock.
    """

    def __init__(self, physical_now: Callable[[], int], max_offset_ns: int) -> None:
        if max_offset_ns < 0:
            raise ValueError(f"max_offset_ns must be >= 0, got {max_offset_ns}")
        self._physical_now = physical_now
        self._max_offset_ns = max_offset_ns
        self._last = Timestamp.MIN
        self._lock = threading.Lock()

    @property
    def max_offset_ns(self) -> int:
        return self._max_offset_ns

    def last(self) -> Timestamp:
        """The most recent timestamp handed out or absorbed."""
        with self._lock:
            return self._last

    def now(self) -> Timestamp:
        """A timestamp strictly greater than every earlier `now`/`update` result."""
        with self._lock:
            physical = self._physical_now()
            last = self._last
            if physical > last.wall_time:
                ts = Timestamp(physical, 0)
            else:
                ts = self._tick(last.wall_time, last.logical)
            self._last = ts
            return ts

    def update(self, remote: Timestamp) -> Timestamp:
        """Absorb a timestamp received from a peer; returns the new clock value.

        Raises `ClockOffsetError` (and leaves the clock untouched) when
        `remote` is more than `max_offset_ns` ahead of our physical clock.
        """
        with self._lock:
            physical = self._physical_now()
            if remote.wall_time - physical > self._max_offset_ns:
                raise ClockOffsetError(remote, physical, self._max_offset_ns)
            last = self._last
            wall = max(physical, last.wall_time, remote.wall_time)
            if wall == last.wall_time and wall == remote.wall_time:
                ts = self._tick(wall, max(last.logical, remote.logical))
            elif wall == last.wall_time:
                ts = self._tick(wall, last.logical)
            elif wall == remote.wall_time:
                ts = self._tick(wall, remote.logical)
            else:
                ts = Timestamp(wall, 0)
            self._last = ts
            return ts

    def physical_now(self) -> int:
        """The physical clock's reading (nanoseconds)."""
        return self._physical_now()

    def check_offset(self, remote: Timestamp) -> None:
        """Raise `ClockOffsetError` when `remote` is more than the maximum offset
        ahead of our physical clock; absorb nothing either way."""
        physical = self._physical_now()
        if remote.wall_time - physical > self._max_offset_ns:
            raise ClockOffsetError(remote, physical, self._max_offset_ns)

    def forward(self, ts: Timestamp) -> None:
        """Make every later `now()` exceed `ts`, with no offset check.

        For timestamps taken from the replicated log at apply: they are already
        committed facts, so refusing them (as `update` refuses a far-ahead
        peer) would only make replicas disagree.
        """
        with self._lock:
            if ts > self._last:
                self._last = ts

    @staticmethod
    def _tick(wall: int, logical: int) -> Timestamp:
        if logical >= _LOGICAL_MAX:
            raise LogicalOverflowError(
                f"logical counter exhausted at wall time {wall}; is the physical clock stuck?"
            )
        return Timestamp(wall, logical + 1)
