"""The meta range as tests see it: its replicas one at a time, its records as a value.

Tests of the meta range (and the metarange benchmark) ask single replicas
(who leads, what each one applied) and compare what a replica holds with a
model: `MetaView` is a replica's records as a comparable value. Also here:
protocol commands (`rangekv.domain.descriptor_txn` builds `WriteIntent` /
`ResolveIntent`) as wire requests, and a split run to completion for setting
up layouts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc

from rangekv.common import errors as E
from rangekv.common.descriptors import RangeDescriptor
from rangekv.domain.descriptor_txn import DescriptorTxn, ResolveIntent, WriteIntent, plan_split
from rangekv.domain.keys import meta_key
from rangekv.domain.txn import TxnStatus
from rangekv.metarange.client import MetaClient
from rangekv.metarange.keys import META_GROUP_ID
from rangekv.replication.checksum import ChecksumLedger
from rangekv.v1 import meta_pb2, meta_pb2_grpc
from testkit.cluster import Cluster, alive
from testkit.waiting import async_wait_for

__all__ = [
    "MetaReplicas",
    "MetaView",
    "commit_split",
    "meta_layout",
    "resolve_request",
    "write_request",
]

#: Per-call deadline of direct calls to one replica.
CALL_TIMEOUT = 2.0


def write_request(cmd: WriteIntent) -> meta_pb2.WriteIntentRequest:
    """The wire form of a protocol `WriteIntent` (expected XOR expect_absent, lock key)."""
    req = meta_pb2.WriteIntentRequest(
        txn=cmd.txn.to_proto(),
        descriptor=cmd.descriptor.to_proto(),
        expect_absent=cmd.expect_absent,
        lock_key=cmd.lock_key or b"",
    )
    if cmd.expected is not None:
        req.expected.CopyFrom(cmd.expected.to_proto())
    return req


def resolve_request(cmd: ResolveIntent) -> meta_pb2.ResolveIntentRequest:
    return meta_pb2.ResolveIntentRequest(
        meta_key=cmd.meta_key,
        txn_id=cmd.txn_id,
        status=int(cmd.status),  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class MetaView:
    """The meta records one replica holds: committed descriptors and intents by meta key."""

    committed: dict[bytes, RangeDescriptor] = field(default_factory=dict)
    intents: dict[bytes, tuple[bytes, RangeDescriptor]] = field(default_factory=dict)

    @staticmethod
    def from_listing(resp: meta_pb2.ListRangesResponse) -> MetaView:
        committed = {}
        for pb in resp.descriptors:
            d = RangeDescriptor.from_proto(pb)
            committed[meta_key(d.end_key)] = d
        intents = {
            i.meta_key: (i.txn.id, RangeDescriptor.from_proto(i.descriptor)) for i in resp.intents
        }
        return MetaView(committed, intents)

    @staticmethod
    def of_layout(layout: Iterable[RangeDescriptor]) -> MetaView:
        """A settled meta: one committed record per range, no intents."""
        return MetaView({meta_key(d.end_key): d for d in layout}, {})

    def describe(self) -> str:
        lines = [f"  committed {mk.hex()}: {d}" for mk, d in sorted(self.committed.items())]
        lines += [
            f"  intent    {mk.hex()}: txn {t.hex()[:8]} {d}"
            for mk, (t, d) in sorted(self.intents.items())
        ]
        return "\n".join(lines) or "  (empty)"


async def commit_split(client: MetaClient, original: RangeDescriptor, key: bytes) -> DescriptorTxn:
    """Run one split of `original` at `key` to completion (lock, left intent,
    commit, resolve) through `client`; for setting up layouts, so any error raises."""
    alloc = await client.allocate_ids(meta_pb2.ID_KIND_RANGE, 1)
    txn = plan_split(original, key, alloc.first, os.urandom(16))
    for w in txn.writes():
        await client.write_intent(write_request(w))
    for r in txn.resolutions(TxnStatus.COMMITTED):
        await client.resolve_intent(r.meta_key, r.txn_id, int(r.status))
    return txn


async def meta_layout(client: MetaClient) -> tuple[list[RangeDescriptor], int]:
    """Committed descriptors in meta, and how many intents are left."""
    listing = await client.list_ranges(include_intents=True)
    return [RangeDescriptor.from_proto(d) for d in listing.descriptors], len(listing.intents)


# ----------------------------------------------------------------------------- the replicas


class MetaReplicas:
    """The metarange replicas of a running `Cluster`, asked one at a time.

    Channels to single replicas are kept (one per replica) and closed by `close`;
    `client()` is a MetaClient over all of them, as a node or gateway has one.
    """

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._channels: dict[int, grpc.aio.Channel] = {}

    @property
    def ids(self) -> list[int]:
        return self.cluster.meta_ids

    @property
    def running_ids(self) -> list[int]:
        return [i for i in self.ids if alive(self.cluster.meta_replica(i))]

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()

    async def __aenter__(self) -> MetaReplicas:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def stub(self, node_id: int) -> meta_pb2_grpc.MetaStub:
        """A stub bound to ONE replica (no leader following): for per-replica checks."""
        ch = self._channels.get(node_id)
        if ch is None:
            ch = self.cluster.node_channels()(self.cluster.meta_address(node_id))
            self._channels[node_id] = ch
        return meta_pb2_grpc.MetaStub(ch)

    def client(self, timeout: float = 5.0) -> MetaClient:
        return MetaClient(
            self.cluster.meta_addrs, timeout=timeout, channels=self.cluster.node_channels()
        )

    async def info(self, node_id: int) -> meta_pb2.ClusterInfoResponse | None:
        """ClusterInfo from one replica, or None if it does not answer."""
        try:
            return await self.stub(node_id).ClusterInfo(
                meta_pb2.ClusterInfoRequest(), timeout=CALL_TIMEOUT
            )
        except grpc.aio.AioRpcError:
            return None

    async def leader(self, among: Iterable[int] | None = None) -> int | None:
        """A running replica that says it leads, if any."""
        for i in among if among is not None else self.running_ids:
            info = await self.info(i)
            if info is not None and info.leader_node_id == i:
                return i
        return None

    async def wait_leader(self, among: Iterable[int] | None = None, timeout: float = 20.0) -> int:
        """Poll until a replica leads AND serves a consistent read (its term's
        entry is committed and applied, so earlier acknowledged writes are visible)."""
        ids = list(among) if among is not None else None

        async def ready_leader() -> int | None:
            lead = await self.leader(ids)
            if lead is None:
                return None
            try:
                await self.stub(lead).LookupRange(
                    meta_pb2.LookupRangeRequest(key=b"", mode=meta_pb2.LOOKUP_MODE_CONSISTENT),
                    timeout=CALL_TIMEOUT,
                )
            except grpc.aio.AioRpcError:
                return None
            return lead

        return await async_wait_for(ready_leader, timeout, "a meta leader serving consistent reads")

    async def diverged(self, timeout: float) -> list[str]:
        """Meta replicas whose state differs from another's at the same applied index: []
        once every replica reported at one common index and all agree
        (`rangekv.replication.checksum`; `Replicas.diverged` is the storage nodes'
        check). The nodes' heartbeats keep the meta range writing, so reports
        accumulate across polls until all replicas were seen at one index. A check
        that never compared them within `timeout` seconds says so."""
        ledger = ChecksumLedger()
        request = meta_pb2.ClusterInfoRequest(checksum=True)

        async def settled() -> bool:
            for i in self.ids:
                try:
                    info = await self.stub(i).ClusterInfo(request, timeout=10.0)
                except grpc.aio.AioRpcError:
                    continue
                if info.HasField("checksum"):
                    ledger.record(META_GROUP_ID, i, info.checksum)
            return bool(ledger.divergences()) or ledger.compared(META_GROUP_ID, self.ids)

        try:
            await async_wait_for(settled, timeout, "the meta replicas to be compared", 0.1)
        except TimeoutError:
            return ["the meta range's replicas never reported one common applied index"]
        return ledger.divergences("group")

    async def view(self, node_id: int) -> MetaView:
        """Replica `node_id`'s applied meta records (ListRanges with intents is a
        local read on any replica, leader or not)."""
        resp = await self.stub(node_id).ListRanges(
            meta_pb2.ListRangesRequest(include_intents=True), timeout=CALL_TIMEOUT
        )
        return MetaView.from_listing(resp)

    async def wait_view(
        self, expected: MetaView, node_ids: Iterable[int] | None = None, timeout: float = 20.0
    ) -> None:
        """Wait until every replica in `node_ids` (default: running) holds `expected`."""
        ids = list(node_ids) if node_ids is not None else self.running_ids
        last: dict[int, MetaView | str] = {}

        async def converged() -> bool:
            for i in ids:
                try:
                    last[i] = await self.view(i)
                except grpc.aio.AioRpcError as exc:
                    last[i] = f"error {E.from_rpc_error(exc)}"
            return all(last[i] == expected for i in ids)

        try:
            await async_wait_for(converged, timeout, f"replicas {ids} to hold the expected meta")
        except TimeoutError as exc:
            detail = "\n".join(
                f" replica {i}:\n{v.describe() if isinstance(v, MetaView) else v}"
                for i, v in last.items()
            )
            raise AssertionError(f"{exc}\n expected:\n{expected.describe()}\n{detail}") from None
