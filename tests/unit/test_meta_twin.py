"""`memory_meta_client`, the meta client's twin: the real service handlers and state
machine, with no raft and no gRPC, answering as the meta range does."""

from __future__ import annotations

import asyncio

import pytest

from rangekv.common import errors as E
from rangekv.common.clock import ManualClock
from rangekv.common.descriptors import first_range
from rangekv.domain.descriptor_txn import plan_split
from rangekv.domain.txn import TxnStatus
from rangekv.metarange.client import MetaApi
from rangekv.metarange.commands import Bootstrap
from rangekv.metarange.local import LocalMeta, memory_meta_client
from rangekv.v1 import meta_pb2


def test_a_split_through_the_twin_reads_back_like_meta() -> None:
    async def main() -> None:
        backend = LocalMeta()
        meta: MetaApi = memory_meta_client(ManualClock(), backend)
        with pytest.raises(E.Unavailable):  # not bootstrapped: what the service says
            await meta.allocate_ids(meta_pb2.ID_KIND_RANGE)
        await backend.execute(Bootstrap(first_range([1, 2, 3])))
        ids = await meta.allocate_ids(meta_pb2.ID_KIND_RANGE)
        original = first_range([1, 2, 3])
        plan = plan_split(original, b"m", ids.first, b"\x07" * 16)
        for write in plan.writes():
            await meta.write_intent(write.to_request())
        with pytest.raises(E.IntentExists):  # a second transaction on the range is refused
            again = plan_split(original, b"q", ids.first + 1, b"\x08" * 16)
            await meta.write_intent(again.writes()[0].to_request())
        found = await meta.lookup_range(b"a", include_intents=True)
        assert {i.txn.id for i in found.intents} == {b"\x07" * 16}
        for res in plan.resolutions(TxnStatus.COMMITTED):
            await meta.resolve_intent(res.meta_key, res.txn_id, int(res.status))
        listing = await meta.list_ranges()
        assert [(d.start_key, d.end_key) for d in listing.descriptors] == [(b"", b"m"), (b"m", b"")]
        await meta.heartbeat(4, "node-4")
        nodes = await meta.list_nodes()
        assert [(n.node.node_id, n.live) for n in nodes.nodes] == [(4, True)]

    asyncio.run(main())
