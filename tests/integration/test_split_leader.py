"""The right-hand range of a split has a leaseholder at once, and only where it is safe.

Counted in raft ticks on the in-process cluster (time moves only when the test
ticks), so the figures do not depend on the machine: a new right-hand range
used to sit in the restart quiet period for a whole election timeout (10 ticks)
before anyone could win an election; the left-hand leaseholder's node now wins
it at once, and no other replica can win during that period.
"""

from __future__ import annotations

from pathlib import Path

from inproc_cluster import InProcCluster, layout

#: Ticks the right-hand side may take to get a leaseholder (a lease needs a
#: heartbeat round after the election; the quiet period alone is 10 ticks).
AT_ONCE_TICKS = 3


async def test_right_hand_range_gets_a_leaseholder_at_once(tmp_path: Path) -> None:
    cluster = InProcCluster(tmp_path, layout())
    await cluster.start()
    try:
        await cluster.elect_all({1: 2})
        await cluster.put(2, 1, b"k", b"v")
        right = await cluster.split(1, b"m", 2)
        ticks = 0

        def has_lease() -> bool:
            nonlocal ticks
            ticks += 1
            return cluster.leaseholder(right.range_id) is not None

        await cluster.until(has_lease, "a leaseholder for the right-hand range")
        assert cluster.leaseholder(right.range_id) == 2, "not the left-hand leaseholder's node"
        assert ticks - 1 <= AT_ONCE_TICKS, f"the right-hand range waited {ticks - 1} ticks"
        await cluster.put(2, right.range_id, b"x", b"y")
    finally:
        await cluster.close()
