"""Gateway batching never mixes reads and writes in one node batch.

A node batch fails as a whole. If a read's failure (no read point: the lease is
moving) could fail a batch whose write was already applied, the gateway would
re-send that write and apply it twice (the chaos suite found exactly this: a
DELETE reporting deleted=False on a present key, during a lease transfer).
"""

from __future__ import annotations

import asyncio
from typing import Any

from rangekv.gateway.node_client import NodeClients
from rangekv.v1 import replica_pb2


class _FakeStream:
    def __init__(self) -> None:
        self.sent: list[tuple[replica_pb2.ReplicaBatchRequest, bool]] = []

    def submit(self, batch: replica_pb2.ReplicaBatchRequest, has_writes: bool) -> Any:
        self.sent.append((batch, has_writes))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        return fut


def test_reads_and_writes_to_one_range_leave_in_separate_batches() -> None:
    async def run() -> list[tuple[replica_pb2.ReplicaBatchRequest, bool]]:
        clients = NodeClients(channel_factory=lambda addr: None)  # type: ignore[arg-type,return-value]
        stream = _FakeStream()
        clients._stream = lambda address: stream  # type: ignore[assignment,method-assign]
        get = replica_pb2.ReplicaOp(get=replica_pb2.GetOp(key=b"k"))
        put = replica_pb2.ReplicaOp(put=replica_pb2.PutOp(key=b"k", value=b"v"))
        clients.submit("n1", 7, [get], has_writes=False)
        clients.submit("n1", 7, [put], has_writes=True)
        clients.submit("n1", 7, [get], has_writes=False)
        await asyncio.sleep(0)  # let the per-iteration flush run
        return stream.sent

    sent = asyncio.run(run())
    assert len(sent) == 2
    kinds = sorted((len(b.ops), w) for b, w in sent)
    assert kinds == [(1, True), (2, False)]
    for batch, has_writes in sent:
        ops = {op.WhichOneof("op") for op in batch.ops}
        assert ops == ({"put"} if has_writes else {"get"})
