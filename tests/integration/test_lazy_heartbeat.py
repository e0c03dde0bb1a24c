"""Lazy heartbeats through real stores (the in-process cluster: real engines, the
memory network, time moved only by the test).

A leader sends no heartbeat to a follower it sent an append since the previous
beat and that answered the previous beat's round: the append carries the term,
the commit index and the newest lease round, and its answer is the follower's
acknowledgement of that round (rangekv/raft, `Config.lazy_heartbeat`). The raft
core's tests check the rule message by message; this checks what it must keep
through the real replication host, scheduler and stores: ranges under a steady
stream of writes keep their leaders, their terms and a valid lease at every
tick, and send (almost) no heartbeats. A range written about once a tick must
not count as idle either: it would quiesce and wake again and again, a
heartbeat round each way (`RaftGroup`'s idle count).
"""

from __future__ import annotations

from pathlib import Path

from testkit.inproc import layout, started

from rangekv.raft import MessageType

KEYS = (b"d", b"h", b"m", b"r")
#: Range id -> its leaseholder; ranges 1, 3 and 4 are written every tick, 2 and 5 idle.
LEADERS = {1: 1, 2: 2, 3: 3, 4: 1, 5: 2}
WRITTEN = {1: b"a", 3: b"i", 4: b"n"}


async def test_written_ranges_keep_leader_term_and_lease_at_every_tick(tmp_path: Path) -> None:
    async with started(tmp_path, layout(*KEYS), LEADERS) as cluster:
        ids = [d.range_id for d in cluster.ranges]
        await cluster.until(
            lambda: all(cluster.valid_leases(r) == [LEADERS[r]] for r in ids),
            "every range's lease on its leaseholder",
        )
        terms = {r: cluster.replica(LEADERS[r], r).group.term() for r in ids}
        ticks = 5 * cluster.timing.election_ticks
        with cluster.watching() as sent:
            for tick in range(ticks):
                for rid, prefix in WRITTEN.items():
                    await cluster.put(LEADERS[rid], rid, prefix + b"%03d" % tick, b"v")
                await cluster.tick_when_quiet()
                for rid in ids:
                    where = f"range {rid} at tick {tick}"
                    assert cluster.valid_leases(rid) == [LEADERS[rid]], where
                    for node in cluster.node_ids:
                        assert cluster.replica(node, rid).group.term() == terms[rid], where
        heartbeats = dict.fromkeys(WRITTEN, 0)
        for group_id, msg in sent:
            if msg.type is MessageType.HEARTBEAT and group_id in heartbeats:
                heartbeats[group_id] += 1
        # Without lazy heartbeats a written range's leader beats both followers at
        # every heartbeat interval; with them, hardly ever (none in this run). With
        # appends that do not carry the lease round, every other beat would go.
        per_range = 2 * ticks // cluster.timing.heartbeat_ticks
        for rid, beats in heartbeats.items():
            assert beats <= per_range // 10, f"range {rid}: {beats} heartbeats of {per_range}"
        for rid, prefix in WRITTEN.items():
            assert await cluster.get(LEADERS[rid], rid, prefix + b"%03d" % (ticks - 1)) == b"v"
