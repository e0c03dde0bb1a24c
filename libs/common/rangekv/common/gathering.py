"""Gathering: a busy consumer yields to the event loop while each turn brings more.

Two places wait a little for company when they are busy, because more work is
usually already on its way (gRPC completions queued on the event loop behind
them):

  - the raft scheduler, before an iteration (`rangekv.replication.scheduler`):
    the inputs of many ranges then share one log write and one frame per peer;
  - a `FrameQueue`, before a frame of reads (`rangekv.common.frames`): the
    reads of many ranges then share one stream message.

Both follow the one rule kept here: yield one event-loop turn at a time while
each turn brings something new, at most `max_turns` turns, and stop before a
turn when the caller says it must go now. So a steady stream of arrivals delays
the caller by at most `max_turns` turns, and a turn that brings nothing ends
the wait at once. Whether to gather at all (is the caller busy?) is the
caller's decision.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["gather"]


async def gather(
    max_turns: int,
    arrivals: Callable[[], int],
    may_go_on: Callable[[], bool] | None = None,
) -> int:
    """Yield while each turn brings arrivals; returns the turns yielded.

    `arrivals` counts what has arrived so far (never decreasing): a turn after
    which it did not move ends the gathering. `may_go_on`, asked before every
    turn, ends it when False (e.g. something arrived that must not wait)."""
    turns = 0
    seen = arrivals()
    while turns < max_turns and (may_go_on is None or may_go_on()):
        await asyncio.sleep(0)
        turns += 1
        now = arrivals()
        if now == seen:
            break
        seen = now
    return turns
