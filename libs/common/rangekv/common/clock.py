"""The process's wall clock, and the one test-only way to make it wrong.

Every rangekv process reads wall time through the callable `wall_clock` returns
(nanoseconds), never `time.time_ns` directly, so that a test can run a process
whose clock is off: RANGEKV_TEST_CLOCK_OFFSET_MS=N (may be negative) shifts it
by N milliseconds. It is read ONCE, at process start, by the entry point, and a
process started with it says so loudly. The chaos suite uses it to skew clocks
within the maximum clock offset (nothing may break) and beyond it at one process
(whose timestamps must then be refused, never absorbed).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping

ENV_VAR = "RANGEKV_TEST_CLOCK_OFFSET_MS"


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


def wall_clock(offset_ns: int = 0) -> Callable[[], int]:
    """Wall time in nanoseconds, shifted by `offset_ns` (test only)."""
    if not offset_ns:
        return time.time_ns
    return lambda: time.time_ns() + offset_ns


def warning_line(offset_ns: int) -> str | None:
    """The loud startup warning for a skewed clock (None when not skewed)."""
    if not offset_ns:
        return None
    return (
        f"!!!!! TEST CLOCK OFFSET ACTIVE: {ENV_VAR}={offset_ns / 1e6:g} -- this process's "
        "wall clock is DELIBERATELY WRONG !!!!!"
    )
