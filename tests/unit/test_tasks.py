"""rangekv.common.tasks.cancel_and_wait: cancelled AND finished, None skipped."""

from __future__ import annotations

import asyncio

from rangekv.common.tasks import cancel_and_wait


def test_every_task_is_cancelled_and_has_finished_on_return() -> None:
    finished: list[str] = []

    async def worker(name: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # cleanup that itself awaits
            finished.append(name)

    async def run() -> list[asyncio.Task[None]]:
        tasks = [asyncio.create_task(worker(n)) for n in ("a", "b")]
        await asyncio.sleep(0)
        await cancel_and_wait([tasks[0], None, tasks[1]])
        return tasks

    tasks = asyncio.run(run())
    assert sorted(finished) == ["a", "b"]
    assert all(t.cancelled() for t in tasks)
