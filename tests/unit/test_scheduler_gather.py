"""The scheduler's gathering: a busy iteration first yields to the event loop while
inputs keep arriving, at most `gather_turns` turns; an idle one starts at once.

The groups here are stand-ins that count their drains and have no Ready: what is
tested is when iterations start, not what they do (test_scheduler.py does that
over real engines, and every raftnode runs with gathering on).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from rangekv.replication.engines import MemoryEngines
from rangekv.replication.group import RaftGroup
from rangekv.replication.host import HostConfig
from rangekv.replication.scheduler import CountingMetrics, RaftScheduler
from rangekv.replication.sync_mode import FsmSyncMode

TURNS = 8


class StubGroup:
    """Just what `_collect_readies` reads of a group; `on_drain` runs inside an
    iteration, as a handler queueing an input meanwhile would."""

    def __init__(self, group_id: int) -> None:
        self.group_id = group_id
        self.removed = False
        self.quiesced = False
        self.is_leader = False
        self.drains = 0
        self.on_drain: Any = None

    def drain_inputs(self) -> None:
        self.drains += 1
        if self.on_drain is not None:
            self.on_drain()

    def take_ready(self) -> None:
        return None


def _scheduler(turns: int = TURNS) -> tuple[RaftScheduler, CountingMetrics]:
    log_engine, state_engine = MemoryEngines()(FsmSyncMode.SYNC)
    metrics = CountingMetrics()
    sched = RaftScheduler(
        log_engine, state_engine, lambda group, msgs: None, metrics=metrics, gather_turns=turns
    )
    return sched, metrics


def _as_group(stub: StubGroup) -> RaftGroup:
    return cast(RaftGroup, stub)


@contextlib.asynccontextmanager
async def _running(sched: RaftScheduler) -> AsyncIterator[None]:
    """The scheduler's loop, started for the block and stopped after it."""
    sched.start()
    try:
        yield
    finally:
        await sched.stop()


async def _until_idle(sched: RaftScheduler, limit: int = 1000) -> None:
    """Step the event loop (no timed sleep) until the scheduler has nothing to do."""
    for _ in range(limit):
        await asyncio.sleep(0)
        if sched.idle:
            return
    raise AssertionError("the scheduler never went idle")


async def test_an_iteration_that_starts_from_idle_does_not_gather() -> None:
    sched, metrics = _scheduler()
    group = StubGroup(1)
    async with _running(sched):
        for _ in range(3):
            sched.wake(_as_group(group))
            await _until_idle(sched)
    assert group.drains == 3
    assert metrics.gather_turns == 0


async def test_inputs_that_came_during_an_iteration_make_the_next_gather() -> None:
    sched, metrics = _scheduler()
    group = StubGroup(1)
    other = StubGroup(2)
    # While the first iteration drains `group`, an input for `other` arrives: the
    # node is busy, so the next iteration gathers first (one turn: nothing more came).
    group.on_drain = lambda: (sched.wake(_as_group(other)), setattr(group, "on_drain", None))
    async with _running(sched):
        sched.wake(_as_group(group))
        await _until_idle(sched)
    assert (group.drains, other.drains) == (1, 1)
    assert metrics.gather_turns == 1


async def test_gathering_ends_at_the_first_turn_without_inputs() -> None:
    sched, metrics = _scheduler()
    group = StubGroup(1)
    loop = asyncio.get_running_loop()
    # Two inputs are on their way, one per loop turn; then nothing.
    loop.call_soon(
        lambda: (sched.wake(_as_group(group)), loop.call_soon(sched.wake, _as_group(group)))
    )
    await sched._gather()
    assert metrics.gather_turns == 3  # two turns with an input, one without


async def test_a_steady_stream_of_inputs_delays_an_iteration_at_most_gather_turns() -> None:
    sched, metrics = _scheduler()
    group = StubGroup(1)
    feeding = True

    async def feed() -> None:
        while feeding:
            sched.wake(_as_group(group))
            await asyncio.sleep(0)

    feeder = asyncio.create_task(feed())
    await asyncio.sleep(0)
    try:
        await sched._gather()
        assert metrics.gather_turns == TURNS
    finally:
        feeding = False
        await feeder


async def test_zero_turns_never_gathers() -> None:
    sched, metrics = _scheduler(turns=0)
    group = StubGroup(1)
    loop = asyncio.get_running_loop()
    loop.call_soon(sched.wake, _as_group(group))
    await sched._gather()
    assert metrics.gather_turns == 0


def test_negative_turns_are_refused() -> None:
    with pytest.raises(ValueError, match="gather_turns must be >= 0"):
        HostConfig(node_id=1, gather_turns=-1)
