"""Quiescence through real stores (the in-process cluster: real engines, the memory
network, time moved only by the test; rangekv/raft/quiesce.py has the protocol).

* idle ranges quiesce on every replica: the ticker visits none of them, no raft
  message crosses the network, only node-level liveness (one beat per node pair
  and heartbeat interval, whatever the number of ranges), and every leaseholder
  keeps a valid lease on it;
* a write wakes its range (and only it), which quiesces again once idle;
* a leaseholder's node unheard for an election timeout, then heard again: its
  peers wake their followers, it wakes its leaders on their new sessions, and
  no range changes leader;
* a leaseholder's node cut off from the others: its peers declare it unreachable,
  wake their followers, elect a new leaseholder after an election timeout -- and
  at no tick do two replicas hold a valid lease.
"""

from __future__ import annotations

from pathlib import Path

from testkit.inproc import InProcCluster, layout, started

from rangekv.raft import MessageType
from rangekv.replication.liveness import LIVENESS_GROUP, beat_ticks

KEYS = (b"d", b"h", b"m", b"r")


def quiesced(cluster: InProcCluster, range_id: int) -> bool:
    return all(
        cluster.replica(n, range_id).group.quiesced
        for n in cluster.node_ids
        if n not in cluster.stopped
    )


async def test_idle_ranges_quiesce_and_keep_their_leases(tmp_path: Path) -> None:
    leaders = {1: 1, 2: 2, 3: 3, 4: 1, 5: 2}
    async with started(tmp_path, layout(*KEYS), leaders) as cluster:
        ids = [d.range_id for d in cluster.ranges]
        await cluster.until(lambda: all(quiesced(cluster, r) for r in ids), "every range quiesced")
        for node in cluster.node_ids:
            assert cluster.stores[node].scheduler.ticking == 0
        # Ten election timeouts later: still quiesced, the same leaseholders, only liveness
        # on the wire.
        ticks = 10 * cluster.timing.election_ticks
        with cluster.watching() as sent:
            for _ in range(ticks):
                await cluster.tick_when_quiet()
                for rid in ids:
                    assert cluster.valid_leases(rid) == [leaders[rid]], f"range {rid}"
        seen = [group_id for group_id, _msg in sent]
        assert set(seen) == {LIVENESS_GROUP}, "raft traffic from quiesced ranges"
        pairs = len(cluster.node_ids) * (len(cluster.node_ids) - 1)
        beats = ticks // beat_ticks(cluster.timing)
        # A beat and its answer per ordered node pair and beat interval (5 ranges).
        assert len(seen) <= 2 * pairs * (beats + 1), len(seen)
        assert all(quiesced(cluster, r) for r in ids)


async def test_a_write_wakes_its_range_only_and_it_quiesces_again(tmp_path: Path) -> None:
    async with started(tmp_path, layout(*KEYS), {1: 1, 3: 2}) as cluster:
        ids = [d.range_id for d in cluster.ranges]
        await cluster.until(lambda: all(quiesced(cluster, r) for r in ids), "every range quiesced")
        await cluster.put(2, 3, b"k", b"v")
        assert not cluster.replica(2, 3).group.quiesced
        assert all(quiesced(cluster, r) for r in ids if r != 3)
        await cluster.until(lambda: quiesced(cluster, 3), "range 3 quiesced again")
        assert await cluster.get(2, 3, b"k") == b"v"  # a lease read: it stays quiesced
        assert quiesced(cluster, 3)


async def test_a_cut_off_leaseholder_loses_its_range_safely(tmp_path: Path) -> None:
    async with started(tmp_path, layout(b"m"), {1: 1, 2: 1}) as cluster:
        await cluster.until(lambda: quiesced(cluster, 1) and quiesced(cluster, 2), "quiesced")
        for other in (2, 3):
            cluster.router.cut(1, other)
            cluster.router.cut(other, 1)
        limit = 6 * cluster.timing.election_ticks
        for _ in range(limit):
            await cluster.tick_when_quiet()
            for rid in (1, 2):
                holders = cluster.valid_leases(rid)
                assert len(holders) <= 1, f"range {rid}: two valid leases {holders}"
            if all(cluster.valid_leases(r) and cluster.valid_leases(r)[0] != 1 for r in (1, 2)):
                break
        else:
            raise AssertionError("no new leaseholder away from the cut-off node")
        await cluster.put(cluster.valid_leases(2)[0], 2, b"x", b"y")


async def test_a_transient_lapse_costs_no_election(tmp_path: Path) -> None:
    async with started(tmp_path, layout(b"m"), {1: 1, 2: 1}) as cluster:
        await cluster.until(lambda: quiesced(cluster, 1) and quiesced(cluster, 2), "quiesced")
        terms = {r: cluster.replica(1, r).group.term() for r in (1, 2)}
        for other in (2, 3):
            cluster.router.cut(1, other)  # node 1 is not heard; it still hears the others
        followers = [cluster.replica(n, r).group for n in (2, 3) for r in (1, 2)]
        await cluster.until(
            lambda: not any(g.quiesced for g in followers), "the followers woken by the lapse"
        )
        for other in (2, 3):
            cluster.router.heal(1, other)
        with cluster.watching() as sent:
            for _ in range(4 * cluster.timing.election_ticks):
                await cluster.tick_when_quiet()
                for rid in (1, 2):
                    assert cluster.valid_leases(rid) in ([1], []), f"range {rid}"
        kinds = [msg.type for _group_id, msg in sent]
        # The leader woke on the followers' new sessions and heartbeat them before
        # any timed out: not even a pre-vote.
        assert MessageType.PRE_VOTE not in kinds and MessageType.VOTE not in kinds
        assert {r: cluster.replica(1, r).group.term() for r in (1, 2)} == terms
        assert all(cluster.replica(1, r).group.is_leader for r in (1, 2))
        await cluster.until(lambda: quiesced(cluster, 1) and quiesced(cluster, 2), "quiesced")
