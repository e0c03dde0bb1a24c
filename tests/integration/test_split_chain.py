"""Splits that chain, on a real `rangekv dev` cluster (3 metarange, 3 raftnodes, a gateway).

A split answers only once its right-hand range can serve (a leader with a valid
lease), so pre-splitting in a loop needs no retries: each split may land in the
right-hand range of the one before.

* `test_63_splits_in_a_row_none_refused`: 63 `Admin.SplitRange` calls, each
  right after the previous answered, at keys spread over the keyspace (in an
  order that often splits the previous right-hand side again); every call
  succeeds and, when it answers, the new right-hand range has a leaseholder.
* `test_cli_splits_several_keys`: `rangekv split K1 K2 K3` splits at every key
  in ascending order in one call; a bad key among several refuses all of them.
"""

from __future__ import annotations

import json
import random
import time

import grpc
import pytest
from dev_process import DevCluster, ok, one_error_line, rangekv
from testkit.kv import get, put

from rangekv.v1 import admin_pb2, admin_pb2_grpc, kv_pb2_grpc

pytestmark = pytest.mark.timeout(300)

SPLITS = 63
#: Per call: a split is a few meta writes and raft rounds; the CPU is shared.
CALL_TIMEOUT = 30.0


def spread_keys(n: int, seed: int) -> list[bytes]:
    """`n` keys spread evenly over "chain/000".."chain/999", in a seeded order."""
    keys = [b"chain/%03d" % (i * 1000 // n + 5) for i in range(n)]
    random.Random(seed).shuffle(keys)
    return keys


async def test_63_splits_in_a_row_none_refused(dev_cluster: DevCluster) -> None:
    refused: list[tuple[bytes, str]] = []
    took: list[float] = []
    keys = spread_keys(SPLITS, seed=20)
    async with dev_cluster.client_channels()(dev_cluster.addr) as ch:
        admin = admin_pb2_grpc.AdminStub(ch)
        kv = kv_pb2_grpc.KVStub(ch)
        for key in keys:
            start = time.monotonic()
            try:
                resp = await admin.SplitRange(
                    admin_pb2.AdminSplitRangeRequest(split_key=key), timeout=CALL_TIMEOUT
                )
            except grpc.aio.AioRpcError as exc:
                refused.append((key, f"{exc.code().name}: {exc.details()}"))
                continue
            took.append(time.monotonic() - start)
            assert resp.right.start_key == key
            # The answer came once the right-hand side can serve: it has a leaseholder.
            listed = await admin.ListRanges(
                admin_pb2.AdminListRangesRequest(start_key=key, limit=1), timeout=CALL_TIMEOUT
            )
            (summary,) = listed.ranges
            assert summary.descriptor.range_id == resp.right.range_id
            assert summary.leaseholder_node_id != 0, f"no leaseholder for {key!r} at the answer"
        assert refused == [], f"{len(refused)} of {SPLITS} splits refused: {refused[:5]}"
        listed = await admin.ListRanges(
            admin_pb2.AdminListRangesRequest(start_key=b"chain/", limit=1000),
            timeout=CALL_TIMEOUT,
        )
        starts = {r.descriptor.start_key for r in listed.ranges}
        assert set(keys) <= starts
        for key in sorted(keys)[::8]:  # the new ranges take writes at once
            await put(kv, key, b"v")
            assert await get(kv, key) == b"v"
    took.sort()
    print(f"{SPLITS} splits: median {took[len(took) // 2]:.3f}s, max {took[-1]:.3f}s")


def test_cli_splits_several_keys(dev_cluster: DevCluster) -> None:
    a = ["--addr", dev_cluster.addr, "--data", str(dev_cluster.data), "--timeout", "60"]
    out = json.loads(ok(rangekv("split", "cli/c", "cli/a", "cli/b", "--json", *a)))
    assert [s["key"] for s in out["splits"]] == ["cli/a", "cli/b", "cli/c"]
    rights = [s["right"]["range_id"] for s in out["splits"]]
    assert len(set(rights)) == 3 and out["right"] == out["splits"][-1]["right"]
    # The right-hand range of each split is the left-hand side of the next.
    assert [s["left"]["range_id"] for s in out["splits"][1:]] == rights[:2]

    text = ok(rangekv("split", "cli/e", "cli/d", *a)).splitlines()
    assert [line.split(":")[0] for line in text] == ["split at cli/d", "split at cli/e"]

    # cli/b already starts a range: nothing is split, cli/f included.
    refused = one_error_line(rangekv("split", "cli/f", "cli/b", *a))
    assert refused.startswith("rangekv: FAILED_PRECONDITION:"), refused
    ranges = json.loads(ok(rangekv("ranges", "--json", *a)))["ranges"]
    starts = {r["start_key"] for r in ranges}
    assert {"cli/a", "cli/e"} <= starts and "cli/f" not in starts
    usage = one_error_line(rangekv("split", "cli/g", "cli/g", *a))
    assert usage.startswith("rangekv: INVALID_ARGUMENT:"), usage
