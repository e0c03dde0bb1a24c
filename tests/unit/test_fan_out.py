"""One merged list, one answer split back: `FanOut` and a raft group's `ProposalQueue`."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from rangekv.common.fan_out import FanOut
from rangekv.replication.proposals import Merge, ProposalQueue, QueuedPart, settle


def test_each_caller_gets_its_slice_or_the_error() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        a, b, gone = loop.create_future(), loop.create_future(), loop.create_future()
        fan: FanOut[str, list[int]] = FanOut()
        fan.add(["x", "y"], a)
        fan.add(["z"], gone)
        fan.add(["w"], b)
        gone.cancel()  # a caller that gave up
        live = fan.live()
        assert live.items == ["x", "y", "w"] and len(live.shares) == 2
        live.resolve([1, 2, 3], list)
        assert a.result() == [1, 2] and b.result() == [3]
        c = loop.create_future()
        other: FanOut[str, list[int]] = FanOut()
        other.add(["q"], c)
        other.fail(RuntimeError("boom"))
        with pytest.raises(RuntimeError):
            c.result()
        assert other.answered

    asyncio.run(main())


class _Merger:
    """Takes the parts whose items are not 'blocked'; the command lists the items."""

    def __init__(self) -> None:
        self.calls = 0

    def merge(self, parts: Sequence[QueuedPart[str]]) -> Merge[str]:
        self.calls += 1
        taken = [p for p in parts if "blocked" not in p.items]
        if not taken:
            return Merge(None)
        return Merge(",".join(i for p in taken for i in p.items).encode(), taken)


def test_the_queue_proposes_commands_then_one_merge_and_keeps_what_waits() -> None:
    async def main() -> None:
        merger = _Merger()
        queue: ProposalQueue[str] = ProposalQueue(merger)
        cmd = queue.add_command(b"txn-op")
        p1 = queue.add_part(["a", "b"])
        p2 = queue.add_part(["blocked"])
        p3 = queue.add_part(["c"])
        dropped = queue.add_part(["d"])
        dropped.cancel()
        assert queue.queued_items == 5
        taken = queue.take()
        assert [c for c, _w in taken] == [b"txn-op", b"a,b,c"]
        assert queue.queued_items == 1  # the blocked part waits
        settle(taken[0][1], "record")
        settle(taken[1][1], [1, 2, 3])
        assert cmd.result() == "record" and p1.result() == [1, 2] and p3.result() == [3]
        assert queue.take() == [] and merger.calls == 2  # merged again, still blocked
        queue.fail_all(RuntimeError("closing"))
        with pytest.raises(RuntimeError):
            p2.result()
        assert not queue

    asyncio.run(main())


def test_a_failed_entry_fails_every_caller_of_its_merge() -> None:
    async def main() -> None:
        queue: ProposalQueue[Any] = ProposalQueue(_Merger())
        parts = [queue.add_part([str(i)]) for i in range(3)]
        ((_command, waiter),) = queue.take()
        settle(waiter, ValueError("refused"))
        for part in parts:
            with pytest.raises(ValueError):
                part.result()

    asyncio.run(main())
