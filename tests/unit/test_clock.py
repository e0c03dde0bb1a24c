"""The one `Clock`: the system's, and its in-memory twin `ManualClock`."""

from __future__ import annotations

import asyncio

from rangekv.common.clock import EPOCH_NS, ManualClock, SystemClock


def test_manual_time_moves_only_when_told_and_wakes_sleepers_in_order() -> None:
    async def main() -> None:
        clock = ManualClock()
        woke: list[str] = []

        async def sleeper(name: str, seconds: float) -> None:
            await clock.sleep(seconds)
            woke.append(name)

        tasks = [asyncio.ensure_future(sleeper(n, s)) for n, s in (("b", 2.0), ("a", 1.0))]
        await asyncio.sleep(0)
        assert clock.sleepers == 2 and clock.next_wakeup() == clock.now + 1.0
        clock.advance(1.5)
        await asyncio.sleep(0)
        assert woke == ["a"]
        clock.advance(0.5)
        await asyncio.gather(*tasks)
        assert woke == ["a", "b"] and clock.sleepers == 0
        await clock.sleep(0)  # only yields

    asyncio.run(main())


def test_views_share_time_and_skew_only_their_wall_clock() -> None:
    clock = ManualClock()
    offset = {"ns": 0}
    view = clock.view(lambda: offset["ns"])
    assert clock.wall_ns() == EPOCH_NS
    clock.advance(2.0)
    offset["ns"] = -5
    assert view.monotonic() == clock.monotonic()
    assert view.wall_ns() == EPOCH_NS + 2_000_000_000 - 5


def test_the_system_clock_shifts_its_wall_clock_by_the_test_offset() -> None:
    plain, skewed = SystemClock(), SystemClock(offset_ns=10**12)
    assert skewed.wall_ns() - plain.wall_ns() >= 10**12 - 10**9
    assert plain.monotonic() <= SystemClock().monotonic()
