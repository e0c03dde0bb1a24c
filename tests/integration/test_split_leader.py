"""The right-hand range of a split has a leaseholder at once, and only where it is safe.

Counted in raft ticks on the in-process cluster (time moves only when the test
ticks), so the figures do not depend on the machine: a new right-hand range
used to sit in the restart quiet period for a whole election timeout (10 ticks)
before anyone could win an election; the left-hand leaseholder's node now wins
it at once, and no other replica can win during that period.
"""

from __future__ import annotations

from pathlib import Path

from testkit.inproc import layout, started

from rangekv.raftnode.store import INITIAL_INDEX

#: Ticks the right-hand side may take to get a leaseholder (a lease needs a
#: heartbeat round after the election; the quiet period alone is 10 ticks).
AT_ONCE_TICKS = 3


async def test_right_hand_range_gets_a_leaseholder_at_once(tmp_path: Path) -> None:
    async with started(tmp_path, layout(), {1: 2}) as cluster:
        await cluster.put(2, 1, b"k", b"v")
        right = await cluster.split(1, b"m", 2)
        start = cluster.clock.now
        await cluster.until(
            lambda: cluster.leaseholder(right.range_id) is not None,
            "a leaseholder for the right-hand range",
        )
        ticks = round((cluster.clock.now - start) / cluster.timing.tick_interval)
        assert cluster.leaseholder(right.range_id) == 2, "not the left-hand leaseholder's node"
        assert ticks <= AT_ONCE_TICKS, f"the right-hand range waited {ticks} ticks"
        await cluster.put(2, right.range_id, b"x", b"y")


async def test_elsewhere_the_quiet_period_still_holds(tmp_path: Path) -> None:
    """The left-hand leaseholder's node stops right after the split: the other
    replicas of the right-hand range must sit out the quiet period (an election
    timeout) before any of them can win -- a left-hand leaseholder that had not
    applied the split yet could still be serving those keys."""
    async with started(tmp_path, layout(), {1: 2}) as cluster:
        right = await cluster.split(1, b"m", 2)
        await cluster.stop_node(2)
        start = cluster.clock.now
        await cluster.until(
            lambda: cluster.leaseholder(right.range_id) is not None,
            "a leaseholder for the right-hand range",
        )
        ticks = round((cluster.clock.now - start) / cluster.timing.tick_interval)
        assert ticks >= cluster.timing.election_ticks, f"a leader after only {ticks} ticks"


async def test_every_replica_applies_the_split_without_waiting_for_a_heartbeat(
    tmp_path: Path,
) -> None:
    """Followers learn commit indexes lazily (from the next append or heartbeat),
    but a split's commit is published at once: each node creates its right-hand
    replica before any tick, so the new range's election finds its voters."""
    async with started(tmp_path, layout(), {1: 2}) as cluster:
        right = await cluster.split(1, b"m", 2)
        # Every node holds an initialized right-hand replica, with no tick.
        await cluster.until_applied_everywhere(
            right.range_id, INITIAL_INDEX, tick=False, timeout=5.0
        )


async def test_chained_right_hand_ranges_each_get_a_leaseholder_within_a_tick(
    tmp_path: Path,
) -> None:
    """A split's commit is proposed to be published at once (not left to the next
    heartbeat, as lazy commit does with other entries), so every follower applies
    it -- and holds an initialized right-hand replica -- by the time the right-hand
    election and first append reach it. Otherwise a follower answers them from an
    uninitialized replica, the leader's snapshot is refused while the follower's
    left-hand side still covers the keys, and the new range waits for a heartbeat."""
    async with started(tmp_path, layout(), {1: 2}) as cluster:
        await cluster.put(2, 1, b"a", b"v")
        waited = []
        range_id = 1
        for n, key in enumerate([b"b", b"c", b"d", b"e", b"f", b"g", b"h"]):
            start = cluster.clock.now
            right = await cluster.split(range_id, key, n + 2)
            await cluster.until(
                lambda rid=right.range_id: cluster.leaseholder(rid) is not None,
                "a leaseholder for the right-hand range",
            )
            waited.append(round((cluster.clock.now - start) / cluster.timing.tick_interval))
            range_id = right.range_id
        assert max(waited) <= 1, f"ticks each right-hand range waited for a leaseholder: {waited}"
