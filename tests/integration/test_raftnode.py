"""Real-process tests of the storage node: three `rangekv raftnode` processes on loopback.

What issue 4 says the node must show, observed from outside like a gateway
would: reads and writes through the leaseholder, NotLeaseHolder hints from
followers, no acknowledged write lost when the leader is killed (-9) or when
every node is killed and restarted (both FSM sync modes), lease reads that
cost no read-index round trip (and at most one per batch when the lease is
gone), and a large snapshot streaming to a lagging follower without any
election elsewhere.

The clusters are the kit's (tests/testkit): raftnodes only, no meta range and
no gateway, talked to with the kit's routed `ReplicaClient`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from dataclasses import replace

import grpc
import pytest
from testkit.cluster import NODES_ONLY, Cluster, alive
from testkit.fixtures import ClusterFactory
from testkit.metrics import metric_value
from testkit.replica_client import (
    RANGE_ID,
    ReplicaClient,
    WriteOutcomeUnknown,
    cas_op,
    delete_op,
    get_op,
    put_op,
    scan_op,
)
from testkit.waiting import async_wait_for

from rangekv.v1 import replica_pb2

pytestmark = pytest.mark.timeout(180)


def error_kind(resp: replica_pb2.ReplicaBatchResponse) -> str | None:
    return resp.error.WhichOneof("error") if resp.HasField("error") else None


def no_error(resp: replica_pb2.ReplicaBatchResponse) -> replica_pb2.ReplicaBatchResponse:
    assert error_kind(resp) is None, f"unexpected error: {resp.error}"
    return resp


async def lease_reads(cluster: Cluster, node: int) -> dict[str, float]:
    text = await cluster.metrics(cluster.node(node))
    return {
        outcome: metric_value(text, "rangekv_lease_read_total", outcome=outcome)
        for outcome in ("hit", "readindex", "not_leader")
    }


async def wait_caught_up(client: ReplicaClient, nodes: list[int], index: int) -> None:
    """Wait until every node in `nodes` has applied at least `index`."""

    async def caught_up() -> bool:
        infos = await client.range_infos(nodes)
        return all(i is not None and i.applied_index >= index for i in infos.values())

    await async_wait_for(caught_up, 60, f"nodes {nodes} to apply index {index}")


async def wait_followers_know(client: ReplicaClient, leader: int, followers: list[int]) -> None:
    """Followers learn the leader from its heartbeats; wait until they have."""

    async def known() -> bool:
        infos = await client.range_infos(followers)
        return all(i is not None and i.leader_replica_id == leader for i in infos.values())

    await async_wait_for(known, 20, f"followers {followers} to know leader {leader}")


# --------------------------------------------------------------------------- (a)


async def test_reads_and_writes_through_the_leaseholder(clusters: ClusterFactory) -> None:
    """Put/get/CAS/delete/scan semantics at the leaseholder, and bad input writes nothing."""
    cluster = await clusters.start(NODES_ONLY)

    async with ReplicaClient.of(cluster) as client:
        leader = await client.leaseholder()

        async def one(op: replica_pb2.ReplicaOp) -> replica_pb2.ReplicaOpResult:
            resp = no_error(await client.batch(leader, [op]))
            return resp.results[0]

        # Put and get, overwrite with a newer version.
        first = (await one(put_op(b"k1", b"v1"))).put.version
        assert first.wall_time > 0
        got = (await one(get_op(b"k1"))).get
        assert got.found and got.kv.value == b"v1"
        second = (await one(put_op(b"k1", b"v2"))).put.version
        assert (second.wall_time, second.logical) > (first.wall_time, first.logical)
        assert (await one(get_op(b"k1"))).get.kv.value == b"v2"
        assert not (await one(get_op(b"absent"))).get.found

        # Compare-and-swap: a wrong expectation fails and reports the current value.
        failed = (await one(cas_op(b"k1", b"wrong", b"v3"))).compare_and_swap
        assert not failed.succeeded and failed.current.value == b"v2"
        swapped = (await one(cas_op(b"k1", b"v2", b"v3"))).compare_and_swap
        assert swapped.succeeded and swapped.current.value == b"v3"
        assert await client.get(b"k1", via=leader) == b"v3"
        assert (await one(cas_op(b"c", None, b"a"))).compare_and_swap.succeeded
        absent_failed = (await one(cas_op(b"c", None, b"b"))).compare_and_swap
        assert not absent_failed.succeeded and absent_failed.current.value == b"a"

        # Delete: a tombstone hides the key; deleting again deletes nothing;
        # "expect absent" holds again after a delete.
        assert (await one(delete_op(b"k1"))).delete.deleted
        assert not (await one(get_op(b"k1"))).get.found
        assert not (await one(delete_op(b"k1"))).delete.deleted
        assert (await one(cas_op(b"k1", None, b"v4"))).compare_and_swap.succeeded
        assert await client.get(b"k1") == b"v4"

        # Scan with limit and resume_key; deleted keys and keys outside the span
        # never show; binary keys keep byte order.
        no_error(await client.batch(leader, [put_op(b"s/%02d" % i, b"%d" % i) for i in range(25)]))
        no_error(await client.batch(leader, [put_op(b"r/x", b"-"), put_op(b"t/x", b"-")]))
        assert (await one(delete_op(b"s/05"))).delete.deleted
        expected = [b"s/%02d" % i for i in range(25) if i != 5]
        seen: list[bytes] = []
        start, pages = b"s/", 0
        while True:
            page = (await one(scan_op(start, b"s0", limit=10))).scan
            seen.extend(kv.key for kv in page.kvs)
            pages += 1
            assert len(page.kvs) <= 10
            if not page.resume_key:
                break
            start = page.resume_key
        assert seen == expected
        assert pages == 3  # 10 + 10 + 4: a page that ends the span has no resume key
        whole = (await one(scan_op(b"s/", b"s0"))).scan
        assert [kv.key for kv in whole.kvs] == expected and not whole.resume_key
        assert [kv.value for kv in whole.kvs][:2] == [b"0", b"1"]
        binary = [b"b", b"b\x00", b"b\x00\x00", b"b\x01", b"b\xff", b"b\xff\xff"]
        no_error(await client.batch(leader, [put_op(k, k) for k in reversed(binary)]))
        scanned = (await one(scan_op(b"b", b"c"))).scan
        assert [kv.key for kv in scanned.kvs] == binary

        # Bad input: invalid_argument, and nothing is written (not even the valid
        # ops of the same batch, and no raft entry at all).
        before = await client.range_info(leader)
        assert before is not None
        too_big = b"x" * ((1 << 20) + 1)
        bad_batches = [
            [put_op(b"", b"v")],
            [get_op(b"")],
            [put_op(b"ok-1", b"v"), put_op(b"big", too_big)],
            [put_op(b"ok-2", b"v"), cas_op(b"ok-2", None, too_big)],
            [put_op(b"ok-3", b"v"), put_op(b"k" * 4097, b"v")],
            [],
            [replica_pb2.ReplicaOp()],
        ]
        for ops in bad_batches:
            resp = await client.batch(leader, ops)
            assert error_kind(resp) == "invalid_argument", (ops[:1], resp)
            assert not resp.results
        resp = await client.batch(leader, [put_op(b"ok-4", b"v")], inconsistent=True)
        assert error_kind(resp) == "invalid_argument"
        resp = await client.batch(leader, [get_op(b"k")], range_id=999)
        assert error_kind(resp) == "range_not_found"
        assert resp.error.range_not_found.range_id == 999
        got_ok = await client.get_many([b"ok-1", b"ok-2", b"ok-3", b"ok-4", b"big"])
        assert got_ok == dict.fromkeys(got_ok)
        after = await client.range_info(leader)
        assert after is not None
        assert after.applied_index == before.applied_index, "bad input reached the raft log"

        # Everything acknowledged is on every replica.
        await wait_caught_up(client, [1, 2, 3], after.applied_index)
        for node in (1, 2, 3):
            view = await client.get_many([b"k1", b"c", b"s/24"], via=node, inconsistent=True)
            assert view == {b"k1": b"v4", b"c": b"a", b"s/24": b"24"}, node


# --------------------------------------------------------------------------- (b)


async def test_follower_answers_not_lease_holder_with_hint(clusters: ClusterFactory) -> None:
    """A follower refuses reads and writes with the leaseholder's node id and address."""
    cluster = await clusters.start(NODES_ONLY)

    async with ReplicaClient.of(cluster) as client:
        leader = await client.leaseholder()
        followers = [n for n in cluster.node_ids if n != leader]
        await wait_followers_know(client, leader, followers)
        leader_info = await client.range_info(leader)
        assert leader_info is not None
        for follower in followers:
            before = await lease_reads(cluster, follower)
            for ops in ([get_op(b"k")], [put_op(b"k", b"from-" + bytes([48 + follower]))]):
                resp = await client.batch(follower, ops)
                assert error_kind(resp) == "not_lease_holder", resp
                nlh = resp.error.not_lease_holder
                assert nlh.range_id == RANGE_ID
                assert nlh.leaseholder.node_id == leader
                assert nlh.leaseholder.replica_id == leader
                assert nlh.leaseholder_address == cluster.node_address(leader)
                assert nlh.lease_sequence == leader_info.lease_sequence
                assert nlh.descriptor.range_id == RANGE_ID
                assert sorted(r.node_id for r in nlh.descriptor.replicas) == [1, 2, 3]
            after = await lease_reads(cluster, follower)
            assert after["not_leader"] == before["not_leader"] + 1

        # The refused writes were not applied; a routed call starting at a
        # follower lands on the leaseholder in one hop.
        assert await client.get(b"k", via=leader) is None
        served_by, resp = await client.send([put_op(b"k", b"routed")], via=followers[0])
        assert served_by == leader and client.stats["hints"] == 1
        assert no_error(resp).results[0].put.version.wall_time > 0
        assert await client.get(b"k", via=followers[1]) == b"routed"


# --------------------------------------------------------------------------- (c)


async def test_kill_leader_under_writes_moves_lease_and_loses_nothing(
    clusters: ClusterFactory,
) -> None:
    """kill -9 the leader while 8 clients write: the lease moves, every ack survives."""
    cluster = await clusters.start(NODES_ONLY)
    writers = 8

    async with ReplicaClient.of(cluster) as client:
        old_leader = await client.leaseholder()
        acked: dict[bytes, bytes] = {}
        unknown: dict[bytes, bytes] = {}
        stop = asyncio.Event()

        async def writer(w: int) -> None:
            i = 0
            while not stop.is_set():
                key = b"w%d/%06d" % (w, i)
                value = key + b"=" + os.urandom(8).hex().encode()
                i += 1
                try:
                    await client.put(key, value, timeout=20)
                except (WriteOutcomeUnknown, TimeoutError):
                    unknown[key] = value
                else:
                    acked[key] = value

        tasks = [asyncio.create_task(writer(w)) for w in range(writers)]
        try:
            await async_wait_for(lambda: len(acked) >= 150, 30, "150 acked writes")
            await cluster.kill(cluster.node(old_leader))
            at_kill = len(acked)
            survivors = [n for n in cluster.node_ids if n != old_leader]
            new_leader = await client.leaseholder(survivors, timeout=30)
            await async_wait_for(
                lambda: len(acked) >= at_kill + 150, 40, "150 acked writes after the kill"
            )
        finally:
            stop.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(r is None for r in results), results

        assert new_leader != old_leader
        info = await client.range_info(new_leader)
        assert info is not None and info.is_leader and info.lease_valid
        # Every acknowledged write is readable at the new leaseholder ...
        keys = sorted(acked)
        got = await client.get_many(keys, via=new_leader)
        lost = [k for k in keys if got[k] != acked[k]]
        assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:5]}"
        # ... and an unknown outcome is either absent or exactly what was written.
        maybe = await client.get_many(sorted(unknown), via=new_leader)
        assert all(v in (None, unknown[k]) for k, v in maybe.items())
        # The surviving follower holds the same data.
        follower = next(n for n in survivors if n != new_leader)
        info = await client.range_info(new_leader)
        assert info is not None
        await wait_caught_up(client, [follower], info.commit_index)
        replica_view = await client.get_many(keys, via=follower, inconsistent=True)
        assert replica_view == acked


# --------------------------------------------------------------------------- (d)


@pytest.mark.parametrize("mode", ["sync", "nosync"])
async def test_restart_of_every_node_recovers_all_data(clusters: ClusterFactory, mode: str) -> None:
    """kill -9 all three nodes right after the last ack, restart all: nothing is lost.

    kill -9 loses what a process had not handed to the OS; in nosync mode the
    state engine's unsynced commits may then be behind the raft log, and the
    restart must replay the log idempotently (overwrites, deletes and CAS
    included, since replaying those twice would be visible).
    """
    cluster = await clusters.start(NODES_ONLY, env={"RANGEKV_FSM_SYNC_MODE": mode})

    async with ReplicaClient.of(cluster) as client:
        for node in cluster.node_ids:
            text = await cluster.metrics(cluster.node(node))
            assert metric_value(text, "rangekv_fsm_apply_sync_mode", mode=mode) == 1.0
        await client.leaseholder()
        expected: dict[bytes, bytes | None] = {}

        async def writer(w: int) -> None:
            for i in range(40):
                key = b"d%d/%03d" % (w, i)
                await client.put(key, b"v1-" + key)
                expected[key] = b"v1-" + key

        await asyncio.gather(*(writer(w) for w in range(8)))
        # Overwrites, deletes and a CAS chain: replaying any of them twice, or
        # losing one, would show.
        keys = sorted(expected)
        _node, resp = await client.send([put_op(k, b"v2-" + k) for k in keys[:60]])
        no_error(resp)
        expected.update({k: b"v2-" + k for k in keys[:60]})
        _node, resp = await client.send([delete_op(k) for k in keys[60:100]])
        assert all(r.delete.deleted for r in no_error(resp).results)
        expected.update(dict.fromkeys(keys[60:100]))
        counter = None
        for n in range(20):
            new = b"%d" % n
            result = await client.cas(b"counter", counter, new)
            assert result.succeeded
            counter = new
        expected[b"counter"] = counter

        await cluster.kill(*cluster.nodes)  # at once, right after the last acknowledgement
        await client.close()
        await cluster.start()

        leader = await client.leaseholder(timeout=30)
        got = await client.get_many(sorted(expected), via=leader)
        missing = {k: (got[k], v) for k, v in expected.items() if got[k] != v}
        assert not missing, f"{len(missing)} keys differ after restart: {list(missing)[:5]}"
        live = (await client.scan(b"d", b"e", via=leader)).kvs
        assert len(live) == sum(1 for k, v in expected.items() if k.startswith(b"d") and v)
        info = await client.range_info(leader)
        assert info is not None
        await wait_caught_up(client, [1, 2, 3], info.commit_index)
        for node in cluster.node_ids:
            view = await client.get_many(sorted(expected), via=node, inconsistent=True)
            assert view == expected, f"node {node} differs after restart"


# --------------------------------------------------------------------------- (e)


async def test_lease_reads_check_once_per_batch(clusters: ClusterFactory) -> None:
    """A batch of 100 gets costs one lease check: a hit under a valid lease, and ONE
    read-index round trip when the lease is gone (the failure this guards against
    is one read-index per storage read, which swamps the raft dispatcher).

    To take the lease away while the leader keeps its quorum, one follower is
    killed and the lease is transferred to it: while the transfer is pending
    (one election timeout, 3 s here) the leader has no lease and serves reads
    by read-index. (Then the transfer is abandoned and the leader, whose
    TIMEOUT_NOW left, ends its term and wins the next with a lease again.)
    """
    cluster = await clusters.start(replace(NODES_ONLY, node_args=("--election-ticks", "30")))
    batches = 20

    async with ReplicaClient.of(cluster) as client:
        leader = await client.leaseholder()
        keys = [b"e/%03d" % i for i in range(100)]
        no_error(await client.batch(leader, [put_op(k, k) for k in keys]))
        gets = [get_op(k) for k in keys]
        info = await client.range_info(leader)
        assert info is not None and info.lease_valid
        term = info.lease_sequence

        before = await lease_reads(cluster, leader)
        for b in range(batches):
            ops = [*gets, scan_op(b"e/", b"e0", limit=50)] if b == batches - 1 else gets
            resp = no_error(await client.batch(leader, ops))
            # Every read of a batch sees its own key (one iterator serves them all).
            assert [r.get.kv.value for r in resp.results[:100]] == keys
            if len(ops) > 100:
                assert [kv.key for kv in resp.results[100].scan.kvs] == keys[:50]
        after = await lease_reads(cluster, leader)
        info = await client.range_info(leader)
        assert info is not None and info.is_leader and info.lease_sequence == term
        assert after["hit"] - before["hit"] == batches
        assert after["readindex"] == before["readindex"]
        assert after["not_leader"] == before["not_leader"]

        # Now without a lease: kill a caught-up follower, transfer the lease to it.
        victim = next(n for n in cluster.node_ids if n != leader)
        await wait_caught_up(client, [victim], info.commit_index)
        await cluster.kill(cluster.node(victim))
        request = replica_pb2.TransferLeaseRequest(range_id=RANGE_ID, target_node_id=victim)

        async def transfer_lease() -> replica_pb2.TransferLeaseResponse:
            return await client.stub(leader).TransferLease(request, timeout=10)

        transfer = asyncio.create_task(transfer_lease())
        try:

            async def lease_gone() -> bool:
                i = await client.range_info(leader)
                return i is not None and i.is_leader and not i.lease_valid

            await async_wait_for(lease_gone, 10, "the leader to lose its lease")
            before = await lease_reads(cluster, leader)
            for _ in range(5):
                resp = no_error(await client.batch(leader, gets))
                assert all(r.get.found for r in resp.results)
            after = await lease_reads(cluster, leader)
            assert after["readindex"] - before["readindex"] == 5
            assert after["hit"] == before["hit"]
        finally:
            transfer.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await transfer
        info = await client.range_info(leader)
        assert info is not None and info.is_leader and not info.lease_valid

        # The transfer is abandoned. Its TIMEOUT_NOW had left (and may still arrive),
        # so the leader ends its term itself and wins the next with a lease again,
        # rather than leading on without one.
        async def lease_back() -> bool:
            i = await client.range_info(leader)
            return i is not None and i.is_leader and i.lease_valid and i.lease_sequence > term

        await async_wait_for(lease_back, 30, "the leader to lead the next term with a lease")


@pytest.mark.parametrize("turns", [16, 0])
async def test_a_busy_node_gathers_inputs_before_an_iteration(
    clusters: ClusterFactory, turns: int
) -> None:
    """Under concurrent writes the raft scheduler finds inputs waiting as an
    iteration ends and yields to the event loop for more before the next
    (`--raft-gather-turns`); with the flag at 0 it never does. Either way every
    write is applied and readable."""
    cluster = await clusters.start(
        replace(NODES_ONLY, node_args=("--raft-gather-turns", str(turns)))
    )
    writers, writes = 32, 8
    async with ReplicaClient.of(cluster) as client:
        leader = await client.leaseholder()

        async def writer(w: int) -> None:
            for i in range(writes):
                no_error(await client.batch(leader, [put_op(b"g/%02d/%02d" % (w, i), b"v")]))

        await asyncio.gather(*(writer(w) for w in range(writers)))
        resp = no_error(await client.batch(leader, [scan_op(b"g/", b"g0", limit=1000)]))
        assert len(resp.results[0].scan.kvs) == writers * writes
    texts = [await cluster.metrics(cluster.node(n)) for n in cluster.node_ids]
    gathered = sum(metric_value(t, "rangekv_raft_gather_turns_total") for t in texts)
    assert all("rangekv_raft_gather_turns_total" in t for t in texts)
    if turns:
        assert gathered > 0
    else:
        assert gathered == 0


# --------------------------------------------------------------------------- (f)


async def test_large_snapshot_to_lagging_follower_causes_no_election(
    clusters: ClusterFactory,
) -> None:
    """~40 MB written while a follower is down, with the log truncated behind it: on
    restart it can only catch up by a snapshot, which streams while heartbeats keep
    the leader and the other follower in the same term."""
    cluster = await clusters.start(
        NODES_ONLY, node_args=("--log-retain-entries", "10", "--truncate-interval", "0.5")
    )
    value_size = 256 * 1024
    count = 160  # 40 MiB

    async with ReplicaClient.of(cluster) as client:
        leader = await client.leaseholder()
        lagging, other = (n for n in cluster.node_ids if n != leader)
        await client.put(b"before", b"down")
        info = await client.range_info(leader)
        assert info is not None
        await wait_caught_up(client, [lagging], info.commit_index)
        await cluster.kill(cluster.node(lagging))
        lagging_applied = info.commit_index

        digests: dict[bytes, str] = {}

        async def writer(w: int) -> None:
            for i in range(w, count, 4):
                key = b"big/%04d" % i
                value = os.urandom(value_size)
                await client.put(key, value, via=leader, timeout=30)
                digests[key] = hashlib.sha256(value).hexdigest()

        await asyncio.gather(*(writer(w) for w in range(4)))
        info = await client.range_info(leader)
        assert info is not None
        target = info.commit_index
        missed = target - lagging_applied
        assert missed > 40, f"only {missed} entries behind: the test needs a real gap"

        async def truncated_past_lagging() -> bool:
            # "Only a snapshot can catch it up", observed: both logs now start past
            # the entry after the last one the lagging node holds.
            infos = await client.range_infos([leader, other])
            return all(
                i is not None and i.log_first_index > lagging_applied + 1 for i in infos.values()
            )

        await async_wait_for(
            truncated_past_lagging, 30, "the leader and the other follower to truncate their logs"
        )
        infos = await client.range_infos([leader, other])
        terms = {n: i.lease_sequence for n, i in infos.items() if i is not None}
        assert len(terms) == 2

        samples: list[tuple[int, int, bool, int]] = []
        sampling = asyncio.Event()

        async def sample() -> None:
            # Polls while the snapshot streams; every observation must show the
            # same leader in the same term on both nodes.
            while not sampling.is_set():
                for node, i in (await client.range_infos([leader, other])).items():
                    if i is not None:
                        samples.append((node, i.lease_sequence, i.is_leader, i.leader_replica_id))
                await asyncio.sleep(0.05)  # sampling period

        sampler = asyncio.create_task(sample())
        try:
            await cluster.start_children([cluster.node(lagging)])
            await client.reset(lagging)
            await wait_caught_up(client, [lagging], target)
        finally:
            sampling.set()
            await sampler

        assert len(samples) >= 10
        changed = [s for s in samples if s[1] != terms[s[0]] or s[3] != leader]
        assert not changed, f"election while the snapshot streamed: {changed[:5]}"
        assert all(is_leader == (node == leader) for node, _t, is_leader, _l in samples)
        infos = await client.range_infos()
        for node, i in infos.items():
            assert i is not None and i.leader_replica_id == leader, node
            assert i.lease_sequence == terms.get(node, terms[leader]), node

        # It caught up by snapshot, not by replaying the entries it missed.
        text = await cluster.metrics(cluster.node(lagging))
        applied_entries = metric_value(text, "rangekv_raft_entries_applied_total")
        assert applied_entries < missed / 2, (applied_entries, missed)
        drops = metric_value(
            await cluster.metrics(cluster.node(leader)),
            "rangekv_raft_dispatch_drop_total",
            lane="heartbeat",
        )
        assert drops == 0

        # The lagging node has the data in its own state (inconsistent reads).
        keys = sorted(digests)
        assert len(keys) == count
        for i in range(0, count, 16):
            part = keys[i : i + 16]
            view = await client.get_many(part, via=lagging, inconsistent=True, chunk=16)
            for key in part:
                value = view[key]
                assert value is not None, key
                assert hashlib.sha256(value).hexdigest() == digests[key], key
        before = await client.get_many([b"before"], via=lagging, inconsistent=True)
        assert before == {b"before": b"down"}


# --------------------------------------------------------------------------- truncation


async def test_log_truncation_during_writes_never_stops_raft(clusters: ClusterFactory) -> None:
    """Log truncation every 50 ms under a steady stream of writes.

    Regression: the truncator committed to the raft-log engine from the event
    loop while the scheduler's group-commit batch was being written from a
    worker thread; the scheduler's commit then failed with ConcurrentBatchError
    and the node's raft loop stopped for good.
    """
    cluster = await clusters.start(
        NODES_ONLY, node_args=("--log-retain-entries", "0", "--truncate-interval", "0.05")
    )

    async with ReplicaClient.of(cluster) as client:
        await client.leaseholder()

        async def writer(w: int) -> None:
            for i in range(150):
                await client.put(b"t%d/%04d" % (w, i), b"x" * 512, timeout=10)

        await asyncio.gather(*(writer(w) for w in range(8)))
        info = await client.range_info(client.leader_hint)
        assert info is not None
        await wait_caught_up(client, [1, 2, 3], info.commit_index)
    for child in cluster.nodes:
        assert alive(child), cluster.log_tails()
        assert "CRITICAL" not in child.log_path.read_text(), cluster.log_tails()


# --------------------------------------------------------------------------- range info


async def test_range_info_counts_only_lists_nothing(clusters: ClusterFactory) -> None:
    """The rebalancer polls every peer each pass for two numbers: `counts_only`
    answers them without building one ReplicaInfo per replica on the node."""
    cluster = await clusters.start(NODES_ONLY)
    async with ReplicaClient.of(cluster) as client:
        leader = await client.leaseholder()
        for node in (1, 2, 3):
            full = await client.stub(node).RangeInfo(replica_pb2.RangeInfoRequest(), timeout=5)
            counts = await client.stub(node).RangeInfo(
                replica_pb2.RangeInfoRequest(counts_only=True), timeout=5
            )
            assert len(full.replicas) == full.replica_count == counts.replica_count == 1
            assert counts.replicas == [] and counts.node_id == node
            led = sum(1 for r in full.replicas if r.is_leader)
            assert full.lease_count == counts.lease_count == led == (node == leader)
