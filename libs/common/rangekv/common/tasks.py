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
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any] | None]) -> None:
    """Cancel every task (None entries are skipped), then wait until each has ended."""
    started = [t for t in tasks if t is not None]
    for task in started:
        task.cancel()
    for task in started:
        with contextlib.suppress(asyncio.CancelledError):
            await task


__all__ = ["cancel_and_wait"]
