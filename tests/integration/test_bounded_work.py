"""Work is bounded: scans come in pages, queues have limits, overload is refused cleanly.

Every refusal here is RESOURCE_EXHAUSTED with a retry delay and nothing written,
and the store keeps serving what it did admit:

* a scan with no limit never builds more than one page (a byte budget) in one
  node answer: the node stops at the budget and answers a resume key;
* writes queued on a range (here: held behind a scan fence) are bounded;
* a leader whose uncommitted log is over its byte budget refuses proposals;
* a batch of reads whose answer would be too large is refused (so it cannot
  break the stream it shares), and says so, so the gateway can split it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from testkit.inproc import InProcCluster, layout
from testkit.replica_client import put_op

from rangekv.common import errors as E
from rangekv.raftnode.requests import ReplicaLimits
from rangekv.v1 import replica_pb2, types_pb2

VALUE = b"x" * 1024


async def test_a_scan_without_limit_is_answered_in_pages(tmp_path: Path) -> None:
    cluster = InProcCluster(tmp_path, layout())
    await cluster.start()
    try:
        await cluster.elect_all({1: 1})
        for start in range(0, 3000, 250):  # 3 MB of values in one range
            await cluster.batch(
                1, 1, [put_op(b"k%06d" % i, VALUE) for i in range(start, start + 250)]
            )
        scan = replica_pb2.ReplicaOp(scan=replica_pb2.ScanOp(start_key=b"", end_key=b""))
        resp = await cluster.batch(1, 1, [scan], fence_id=b"f" * 16)
        size = resp.ByteSize()
        assert size <= 1.1 * (1 << 20), f"one node answer carried {size} bytes"
        assert resp.results[0].scan.resume_key, "a partial page must say where to resume"
        rows = len(resp.results[0].scan.kvs)
        cursor = resp.results[0].scan.resume_key
        while cursor:
            page = replica_pb2.ReplicaOp(scan=replica_pb2.ScanOp(start_key=cursor, end_key=b""))
            more = await cluster.batch(
                1, 1, [page], fence_id=b"f" * 16, read_timestamp=resp.read_timestamp
            )
            rows += len(more.results[0].scan.kvs)
            cursor = more.results[0].scan.resume_key
        assert rows == 3000
    finally:
        await cluster.close()


async def test_queued_writes_are_bounded(tmp_path: Path) -> None:
    cluster = InProcCluster(tmp_path, layout(), limits=ReplicaLimits(max_queued_writes=4))
    await cluster.start()
    try:
        await cluster.elect_all({1: 1})
        hold = replica_pb2.ReplicaOp(
            fence=replica_pb2.FenceOp(
                start_key=b"", end_key=b"", fence_id=b"h" * 16, hold_millis=2000
            )
        )
        fenced = await cluster.batch(1, 1, [hold])
        queued = [asyncio.ensure_future(cluster.put(1, 1, b"q%d" % i, b"v")) for i in range(4)]
        await cluster.until(
            lambda: cluster.replica(1, 1).queued_writes == 4, "4 queued", tick=False
        )
        with pytest.raises(E.ResourceExhausted) as refused:
            await cluster.put(1, 1, b"refused", b"v")
        assert refused.value.retry_after > 0
        release = replica_pb2.ReplicaOp(
            fence=replica_pb2.FenceOp(start_key=b"", end_key=b"", fence_id=b"h" * 16)
        )
        await cluster.batch(1, 1, [release], read_timestamp=fenced.results[0].fence.timestamp)
        await asyncio.wait_for(asyncio.gather(*queued), 10)
        assert await cluster.get(1, 1, b"refused") is None
        assert await cluster.get(1, 1, b"q3") == b"v"
    finally:
        await cluster.close()


async def test_a_leader_over_its_uncommitted_budget_refuses_writes(tmp_path: Path) -> None:
    cluster = InProcCluster(tmp_path, layout(), max_uncommitted_bytes=4096)
    await cluster.start()
    try:
        await cluster.elect_all({1: 1})
        cluster.router.hold_all_from(1)  # nothing commits
        first = asyncio.ensure_future(cluster.put(1, 1, b"a", b"x" * 3000))
        leader = cluster.replica(1, 1)
        last = leader.group.raw_node.last_index()
        await cluster.until(lambda: leader.group.raw_node.last_index() > last, "a", tick=False)
        second = asyncio.ensure_future(cluster.put(1, 1, b"b", b"x" * 3000))
        with pytest.raises(E.ResourceExhausted):
            await asyncio.wait_for(second, 10)
        cluster.router.release_all()
        await asyncio.wait_for(first, 10)
        assert await cluster.get(1, 1, b"b") is None
    finally:
        await cluster.close()


async def test_a_read_batch_with_a_too_large_answer_is_refused(tmp_path: Path) -> None:
    limits = ReplicaLimits(max_read_response_bytes=10_000)
    cluster = InProcCluster(tmp_path, layout(), limits=limits)
    await cluster.start()
    try:
        await cluster.elect_all({1: 1})
        await cluster.batch(1, 1, [put_op(b"g%d" % i, b"y" * 4000) for i in range(5)])
        gets = [replica_pb2.ReplicaOp(get=replica_pb2.GetOp(key=b"g%d" % i)) for i in range(5)]
        with pytest.raises(E.ResourceExhausted) as refused:
            await cluster.batch(1, 1, gets)
        assert refused.value.answer_too_large
        alone = await cluster.batch(1, 1, gets[:2])  # within the budget: answered
        assert all(r.get.found for r in alone.results)
    finally:
        await cluster.close()


def test_refusals_travel_in_band_with_their_retry_delay() -> None:
    exc = E.ResourceExhausted("over", retry_after=0.25, answer_too_large=True)
    back = E.from_replica_error(E.to_replica_error(exc))
    assert isinstance(back, E.ResourceExhausted)
    assert back.answer_too_large and back.retry_after == pytest.approx(0.25)
    offset = E.ClockOffset(types_pb2.Timestamp(wall_time=5_000_000_000), 1, 500_000_000, 3)
    again = E.from_replica_error(E.to_replica_error(offset))
    assert isinstance(again, E.ClockOffset) and again.node_id == 3
