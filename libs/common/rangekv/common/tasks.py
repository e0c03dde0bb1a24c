"""Stopping background tasks: the one way a component cancels what it started.

Every long-lived component (the raft host's ticker and truncator, the split
and replicate queues, a raft lane, the registry loop) keeps asyncio tasks it
must end on shutdown. Cancelling alone is not enough: a task still running
when its engines close would touch closed RocksDB handles, so each is also
awaited, and its CancelledError - the expected outcome - is swallowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from rangekv.common.clock import Clock
from rangekv.common.errors import RangeKVError


def retrieve_outcome(fut: asyncio.Future[Any]) -> None:
    """A done-callback for a future nobody awaits (a best-effort call, a dropped
    proposal): reads its exception so asyncio does not log it as never retrieved."""
    if not fut.cancelled():
        fut.exception()


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any] | None]) -> None:
    """Cancel every task (None entries are skipped), then wait until each has ended."""
    started = [t for t in tasks if t is not None]
    for task in started:
        task.cancel()
    for task in started:
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Periodic:
    """`step()` every `interval` seconds of `clock`, from `start()` until `stop()`.

    A failing step is logged and the next one runs on time: a background queue
    (size-based splits, the rebalancer) must outlive what goes wrong in one pass.
    A RangeKVError is an expected answer of the cluster (logged at info), any
    other exception a bug (logged with its traceback)."""

    def __init__(
        self,
        name: str,
        interval: float,
        step: Callable[[], Awaitable[object]],
        clock: Clock,
        log: logging.Logger,
    ) -> None:
        self.name = name
        self._interval = interval
        self._step = step
        self._clock = clock
        self._log = log
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait([task])

    async def _run(self) -> None:
        while True:
            await self._clock.sleep(self._interval)
            try:
                await self._step()
            except RangeKVError as exc:
                self._log.info("%s: %s", self.name, exc)
            except Exception:
                self._log.exception("%s pass failed", self.name)


__all__ = ["Periodic", "cancel_and_wait"]
