"""Waiting for a condition, with a deadline: the only way tests synchronise with a cluster.

A wait polls an observable condition and fails with a message naming what it
waited for; nothing sleeps in the hope that something has happened meanwhile.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")

__all__ = ["async_wait_for", "wait_for"]


def wait_for(pred: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
    """Poll `pred` until it returns something truthy; return that, or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)  # polling interval of a condition with a deadline


@overload
async def async_wait_for(
    pred: Callable[[], Awaitable[T | None]],
    timeout: float,
    what: str,
    interval: float = 0.05,
    *,
    seen: Callable[[], str] | None = None,
) -> T: ...


@overload
async def async_wait_for(
    pred: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.05,
    *,
    seen: Callable[[], str] | None = None,
) -> T: ...


async def async_wait_for(
    pred: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.05,
    *,
    seen: Callable[[], str] | None = None,
) -> Any:
    """Async `wait_for`: `pred` may be a plain function or return an awaitable; the
    first truthy value it gives is returned. On timeout the error says what was
    waited for and, with `seen`, what was seen last (e.g. a refusal the predicate
    recorded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = pred()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            last = f"; last seen: {seen()}" if seen is not None else ""
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}{last}")
        await asyncio.sleep(interval)  # polling interval of a condition with a deadline
