"""Closed-loop measurement cells shared by the benchmarks that drive real processes.

A cell runs `clients` coroutines, each a loop of one call after the other,
for a warm-up and then `seconds`; only calls started after the warm-up count.
It keeps per-second completion counts (the reported rate is their median, so
one slow second of a shared machine does not move it) and every latency
(percentiles), plus whatever figures the benchmark adds (`extra`). Progress
goes to stderr with the time since the benchmark started.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

__all__ = ["Cell", "closed_loop", "progress"]

_T0 = time.monotonic()


def progress(msg: str) -> None:
    """One line on stderr, stamped with the seconds since the benchmark started."""
    print(f"[{time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


@dataclass
class Cell:
    """One measured cell: per-second completion counts and every latency."""

    label: str
    clients: int
    per_second: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return statistics.median(self.per_second) if self.per_second else 0.0

    def pct(self, q: float) -> float:
        """The `q` quantile of the latencies, in milliseconds."""
        if not self.latencies:
            return float("nan")
        data = sorted(self.latencies)
        return data[min(len(data) - 1, int(q * len(data)))] * 1000.0


#: One call of client `c` (its `i`-th): True when it succeeded. Exceptions count as failures.
Call = Callable[[int, int], Awaitable[bool]]


async def closed_loop(
    call: Call, clients: int, seconds: float, label: str, warmup: float = 0.5
) -> Cell:
    """`clients` coroutines, each a loop of `call`s, for `warmup + seconds`; only calls
    started after the warm-up are counted (`extra["calls"]` counts every call)."""
    cell = Cell(label, clients)
    loop = asyncio.get_running_loop()
    start = loop.time() + warmup
    end = start + seconds
    buckets = [0] * int(seconds)
    calls = 0

    async def one_client(c: int) -> None:
        nonlocal calls
        i = 0
        while True:
            t0 = loop.time()
            if t0 >= end:
                return
            try:
                failed = not await call(c, i)
            except Exception:
                failed = True
            i += 1
            t1 = loop.time()
            calls += 1
            if t0 < start:
                continue
            if failed:
                cell.errors += 1
                continue
            cell.latencies.append(t1 - t0)
            second = int(t1 - start)
            if second < len(buckets):
                buckets[second] += 1

    await asyncio.gather(*(one_client(c) for c in range(clients)))
    cell.per_second = buckets
    cell.extra["calls"] = calls
    return cell
