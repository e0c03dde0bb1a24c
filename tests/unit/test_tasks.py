"""rangekv.common.tasks.cancel_and_wait: cancelled AND finished, None skipped."""

from __future__ import annotations

import asyncio

from rangekv.common.tasks import cancel_and_wait


async def test_every_task_is_cancelled_and_has_finished_on_return() -> None:
    finished: list[str] = []

    async def worker(name: str, started: asyncio.Event) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # cleanup that itself awaits: must complete before return
            finished.append(name)

    events = [asyncio.Event(), asyncio.Event()]
    tasks = [asyncio.create_task(worker(n, e)) for n, e in zip("ab", events, strict=True)]
    for event in events:
        await event.wait()
    await cancel_and_wait([tasks[0], None, tasks[1]])
    tasks = tasks
    assert sorted(finished) == ["a", "b"]
    assert all(t.cancelled() for t in tasks)
