"""Work is bounded: scans come in pages, queues have limits, overload is refused cleanly.

* A scan with no limit never builds more than one page (a byte budget) in one
  node answer: the node stops at the budget and answers a resume key, and the
  gateway pages through, so neither the event loop nor the shared stream ever
  carries a whole range at once.
"""

from __future__ import annotations

from pathlib import Path

from inproc_cluster import InProcCluster, layout

from rangekv.v1 import replica_pb2

VALUE = b"x" * 1024
KEYS = 3000  # 3 MB of values in one range


async def test_a_scan_without_limit_is_answered_in_pages(tmp_path: Path) -> None:
    cluster = InProcCluster(tmp_path, layout())
    await cluster.start()
    try:
        await cluster.elect_all({1: 1})
        for start in range(0, KEYS, 250):
            ops = [
                replica_pb2.ReplicaOp(put=replica_pb2.PutOp(key=b"k%06d" % i, value=VALUE))
                for i in range(start, start + 250)
            ]
            await cluster.batch(1, 1, ops)
        scan = replica_pb2.ReplicaOp(scan=replica_pb2.ScanOp(start_key=b"", end_key=b""))
        resp = await cluster.batch(1, 1, [scan])
        size = resp.ByteSize()
        assert size <= 1.1 * (1 << 20), f"one node answer carried {size} bytes"
        assert resp.results[0].scan.resume_key, "a partial page must say where to resume"
    finally:
        await cluster.close()
