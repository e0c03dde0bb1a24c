"""The chaos suite's catch-up check (`testkit.replicas.Replicas.lagging`) on a real cluster.

The check must see a replica that does not keep up: a follower's node is
paused (SIGSTOP) while writes go on through the gateway (the two others make
the quorum), so every check while it is stopped names it, and once it resumes
it catches up and the check is clean. Without this, a chaos run that left a
replica behind for good would pass.
"""

from __future__ import annotations

import pytest
from testkit.cluster import ClusterSpec
from testkit.fixtures import ClusterFactory
from testkit.kv import kv_stubs, put
from testkit.replicas import Replicas

from rangekv.cli.dev import wait_until_serving

pytestmark = pytest.mark.timeout(180)


async def test_a_replica_left_behind_is_named_until_it_catches_up(
    clusters: ClusterFactory,
) -> None:
    cluster = await clusters.start(ClusterSpec(insecure=True))
    await wait_until_serving(cluster.gateways[0].address, cluster.client_channels())
    replicas = Replicas(cluster)
    async with kv_stubs(cluster) as (kv,):
        await put(kv, b"before", b"1")
        assert await replicas.lagging(30) == []

        holder = await replicas.wait_leaseholder()
        follower = next(n for n in cluster.node_ids if n != holder)
        cluster.pause(cluster.node(follower))
        try:
            for i in range(20):
                await put(kv, b"while/%d" % i, b"2")
            behind = await replicas.lagging(1.0)
            assert behind and all(f"node {follower} did not answer" in b for b in behind), behind
        finally:
            cluster.resume(cluster.node(follower))
        await put(kv, b"after", b"3")
        assert await replicas.lagging(30) == []
