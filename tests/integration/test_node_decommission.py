"""Decommissioning a node by hand, with real processes and the real CLI.

`rangekv node decommission 3` on a cluster of 4 raftnodes (the first range on
nodes 1-3, after two splits): the registry marks node 3 decommissioning, the
rebalancers replace each of its replicas on node 4 and hand its leases away,
and the command returns once the registry says DECOMMISSIONED. Then no range
names node 3, every acknowledged write reads back, `rangekv nodes` shows the
state, node 3 keeps running unready (a decommissioned node waits to be
stopped), and when it is started again on its data it refuses, with the
reason, and exits with status 2.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys

import pytest
from dev_process import rangekv
from testkit.cluster import SPARE_NODE
from testkit.fixtures import ClusterFactory
from testkit.kv import check_data, kv_stubs, meta_client, put
from testkit.ranges import settled
from testkit.replicas import Replicas
from testkit.waiting import async_wait_for

from rangekv.common.descriptors import RangeDescriptor

pytestmark = pytest.mark.timeout(240)


async def test_node_decommission_by_hand(clusters: ClusterFactory) -> None:
    cluster = await clusters.start(SPARE_NODE)
    replicas = Replicas(cluster)
    meta_addrs = ",".join(cluster.meta_addrs)
    async with kv_stubs(cluster) as (kv,), meta_client(cluster) as meta:
        certs = ["--certs-dir", str(cluster.certs_dir)]  # the cluster's own (mutual TLS)
        for key in (b"p", b"g"):
            await replicas.admin_split(1, key)
        await async_wait_for(lambda: settled(replicas, meta), 30, "the splits")
        data = {b"%c%02d" % (c, i): b"v%d" % i for c in b"bhq" for i in range(10)}
        for k, v in data.items():
            await put(kv, k, v)

        # Each call follows the move for up to --timeout, then asks again.
        done = await asyncio.to_thread(
            rangekv,
            "node",
            "decommission",
            "3",
            "--meta",
            meta_addrs,
            *certs,
            "--timeout",
            "2",
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1] == "node 3: decommissioned"
        # (Progress lines, "node 3: decommissioning, N replica(s) left", go to stderr
        # while it lasts; here it may well finish within the first call.)

        async def moved() -> list[RangeDescriptor] | None:
            layout = await settled(replicas, meta)
            if layout is None or any(d.replica_on(3) for d in layout):
                return None
            return layout

        layout = await async_wait_for(moved, 60, "node 3 to hold nothing")
        assert all(sorted(d.voter_node_ids) == [1, 2, 4] for d in layout)
        await check_data(kv, data)

        nodes = await asyncio.to_thread(
            rangekv, "nodes", "--json", "--meta", meta_addrs, *certs, timeout=120
        )
        states = {n["node_id"]: n["state"] for n in json.loads(nodes.stdout)["nodes"]}
        assert states == {1: "active", 2: "active", 3: "decommissioned", 4: "active"}
        again = await asyncio.to_thread(
            rangekv, "node", "decommission", "3", "--meta", meta_addrs, *certs, timeout=120
        )
        assert again.returncode == 0 and "decommissioned" in again.stdout  # idempotent
        back = await asyncio.to_thread(
            rangekv, "node", "recommission", "3", "--meta", meta_addrs, *certs, timeout=120
        )
        assert back.returncode == 1 and "FAILED_PRECONDITION" in back.stderr

        child = cluster.node(3)
        assert child.proc is not None and child.proc.returncode is None
        child.signal(signal.SIGTERM)
        assert await asyncio.wait_for(child.proc.wait(), 30) == 0
        refused = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "rangekv.cli.main", *child.args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 2, refused.stderr
        assert "node 3, which was decommissioned" in refused.stderr
        assert "Traceback" not in refused.stderr
