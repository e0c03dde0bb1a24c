"""The gateway's TxnPusher routes Replica.PushTxn to the record's range.

Scripted replicas (no network): which descriptor is used when the intent does
not cover the record key (the lock intent of a split), NotLeaseHolder hints
to a node outside the descriptor, RangeKeyMismatch carrying the range that now
holds the key, a meta lookup when no given descriptor covers it, and the
deadline.
"""

from __future__ import annotations

from typing import Any

import pytest

from rangekv.common import errors as E
from rangekv.common.descriptors import RangeDescriptor, ReplicaDescriptor
from rangekv.domain.txn import TxnMeta, TxnStatus
from rangekv.gateway.dist_sender import NodeDirectory
from rangekv.gateway.pusher import ReplicaTxnPusher
from rangekv.v1 import meta_pb2, replica_pb2, types_pb2

REPLICAS = (ReplicaDescriptor(1, 1), ReplicaDescriptor(2, 2), ReplicaDescriptor(3, 3))
TXN = TxnMeta(b"\x07" * 16, b"a", "split")
ORIGINAL = RangeDescriptor(1, b"a", b"z", REPLICAS, generation=3)
LEFT = RangeDescriptor(1, b"a", b"m", REPLICAS, generation=4)
RIGHT = RangeDescriptor(9, b"m", b"z", REPLICAS, generation=4)


class FakeStub:
    def __init__(self, nodes: FakeNodes, address: str) -> None:
        self._nodes = nodes
        self._address = address

    async def PushTxn(self, req: replica_pb2.PushTxnRequest, timeout: float) -> Any:
        self._nodes.calls.append((self._address, req.range_id))
        answer = self._nodes.answers.get((self._address, req.range_id))
        if answer is None:
            err = E.RangeNotFound(req.range_id, 0)
            return replica_pb2.PushTxnResponse(error=E.to_replica_error(err))
        if isinstance(answer, E.RangeKVError):
            return replica_pb2.PushTxnResponse(error=E.to_replica_error(answer))
        rec = types_pb2.TxnRecord(meta=req.txn, status=answer)
        return replica_pb2.PushTxnResponse(record=rec)


class FakeNodes:
    def __init__(self, answers: dict[tuple[str, int], Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, int]] = []

    def stub(self, address: str) -> FakeStub:
        return FakeStub(self, address)


def directory() -> NodeDirectory:
    async def fetch() -> meta_pb2.ListNodesResponse:
        return meta_pb2.ListNodesResponse()

    d = NodeDirectory(fetch)
    for n in (1, 2, 3):
        d.set(n, f"n{n}")
    return d


def pusher(nodes: FakeNodes, lookup: Any = None, timeout: float = 2.0) -> ReplicaTxnPusher:
    async def no_lookup(key: bytes) -> meta_pb2.LookupRangeResponse:
        raise AssertionError("no meta lookup expected")

    return ReplicaTxnPusher(nodes, directory(), lookup or no_lookup, timeout=timeout)  # type: ignore[arg-type]


async def test_lock_intent_is_pushed_through_the_committed_descriptor() -> None:
    """meta(C) = [B, C) does not hold A: the committed [A, C) routes the push."""
    nodes = FakeNodes({("n1", 1): types_pb2.TXN_STATUS_COMMITTED})
    assert (await pusher(nodes)(TXN, RIGHT, ORIGINAL)) is TxnStatus.COMMITTED
    assert nodes.calls == [("n1", 1)]


async def test_not_leaseholder_hint_is_followed_even_outside_the_descriptor() -> None:
    hint = E.NotLeaseHolder(1, ReplicaDescriptor(4, 5), "n4", 7, LEFT)
    nodes = FakeNodes({("n1", 1): hint, ("n4", 1): types_pb2.TXN_STATUS_ABORTED})
    assert (await pusher(nodes)(TXN, LEFT, None)) is TxnStatus.ABORTED
    assert nodes.calls == [("n1", 1), ("n4", 1)]


async def test_range_key_mismatch_moves_to_the_range_holding_the_key() -> None:
    """A stale committed descriptor whose range no longer holds the record key."""
    stale = RangeDescriptor(5, b"", b"z", REPLICAS, generation=2)
    mismatch = E.RangeKeyMismatch(5, (RangeDescriptor(5, b"", b"a", REPLICAS, 3), LEFT))
    nodes = FakeNodes(
        {(f"n{i}", 5): mismatch for i in (1, 2, 3)} | {("n2", 1): types_pb2.TXN_STATUS_PENDING}
    )
    assert (await pusher(nodes)(TXN, RIGHT, stale)) is TxnStatus.PENDING
    assert nodes.calls[0] == ("n1", 5) and nodes.calls[-1] == ("n2", 1)


async def test_meta_lookup_when_no_descriptor_holds_the_record_key() -> None:
    looked_up: list[bytes] = []

    async def lookup(key: bytes) -> meta_pb2.LookupRangeResponse:
        looked_up.append(key)
        return meta_pb2.LookupRangeResponse(descriptors=[LEFT.to_proto(), RIGHT.to_proto()])

    nodes = FakeNodes({("n3", 1): types_pb2.TXN_STATUS_COMMITTED})
    assert (await pusher(nodes, lookup)(TXN, RIGHT, None)) is TxnStatus.COMMITTED
    assert looked_up == [b"a"]


async def test_gives_up_at_the_deadline() -> None:
    down = E.Unavailable("no quorum")
    nodes = FakeNodes({(f"n{i}", 1): down for i in (1, 2, 3)})
    with pytest.raises(E.Unavailable):
        await pusher(nodes, timeout=0.3)(TXN, LEFT, ORIGINAL)
    assert len(nodes.calls) >= 3
