"""The chaos suite's divergence checks (`Replicas.diverged`, `MetaReplicas.diverged`)
on a real cluster.

Every read goes to a leaseholder, so a follower whose state differs from its
leader's breaks no history until the lease moves to it; only the replicas'
checksums (`rangekv.replication.checksum`) can show it. Here the difference is
put on a follower's disk by hand, as silent corruption would: the follower is
stopped, one key is added to its RocksDB state engine, and it is started
again. The checks must be clean before and name that replica after, for a
range of a storage node and for the meta range.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import rocksdict
from testkit.cluster import Child, Cluster, ClusterSpec
from testkit.fixtures import ClusterFactory
from testkit.kv import kv_stubs, put
from testkit.meta import MetaReplicas
from testkit.replicas import Replicas

from rangekv.cli.dev import wait_until_serving
from rangekv.common.hlc import Timestamp
from rangekv.metarange.keys import META_PREFIX
from rangekv.raftnode.keys import version_key

pytestmark = pytest.mark.timeout(180)


def state_dir(child: Child) -> Path:
    return Path(child.args[child.args.index("--data-dir") + 1]) / "state"


async def corrupt(cluster: Cluster, child: Child, key: bytes, value: bytes) -> None:
    """Stop `child` (gracefully), add `key` to its state engine, start it again."""
    await cluster.stop(child)
    db = rocksdict.Rdict(str(state_dir(child)), rocksdict.Options(raw_mode=True))
    try:
        db[key] = value
    finally:
        db.close()
    await cluster.start_children([child])


async def test_a_replica_that_differs_from_its_leader_is_named(clusters: ClusterFactory) -> None:
    cluster = await clusters.start(ClusterSpec(insecure=True))
    await wait_until_serving(cluster.gateways[0].address, cluster.client_channels())
    replicas = Replicas(cluster)
    async with kv_stubs(cluster) as (kv,), MetaReplicas(cluster) as meta:
        for i in range(5):
            await put(kv, b"key/%d" % i, b"v")
        assert await replicas.diverged(30) == []
        assert await meta.diverged(30) == []

        range_id, holder = await replicas.wait_leaseholder_of(b"key/0", 20)
        follower = next(n for n in await replicas.voters(range_id) if n != holder)
        await corrupt(
            cluster, cluster.node(follower), version_key(b"key/0", Timestamp(1, 0)), b"bit rot"
        )
        await put(kv, b"key/after", b"v")  # the range moves on; the difference stays
        found = await replicas.diverged(30)
        assert len(found) == 1, found
        assert found[0].startswith(f"range {range_id} at applied index "), found
        assert f"node(s) {follower} hold" in found[0], found

        lead = await meta.wait_leader()
        other = next(i for i in meta.ids if i != lead)
        await corrupt(cluster, cluster.meta_replica(other), META_PREFIX + b"\x7ftampered", b"x")
        await meta.wait_leader()
        found = await meta.diverged(30)
        assert found and all(f"node(s) {other} hold" in line for line in found), found
