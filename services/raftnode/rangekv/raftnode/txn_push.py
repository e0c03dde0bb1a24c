"""Pushing transactions: learning a descriptor transaction's status, aborting it if it expired.

A transaction's record lives on the range holding its record key, anywhere in
the cluster. `push_local` runs on that range's leaseholder: a final record is
answered as it is, an unexpired PENDING one too, and an expired or missing one
is aborted through raft (so a dead coordinator never blocks anyone for longer
than the expiry). `TxnPusher` gets there from any node: the local replica when
this node leads the record's range, the leaseholder's `PushTxn` otherwise.
"""

from __future__ import annotations

import grpc

from rangekv.common import errors as E
from rangekv.common.clock import Clock
from rangekv.common.tls import ChannelOpener, PlaintextChannels
from rangekv.domain.txn import TxnMeta, TxnStatus
from rangekv.raftnode import txn as T
from rangekv.raftnode.replica import RangeReplica
from rangekv.raftnode.store import Store
from rangekv.v1 import raftcmd_pb2, replica_pb2, replica_pb2_grpc, types_pb2

__all__ = ["Peers", "TxnPusher", "push_local"]


async def push_local(
    replica: RangeReplica, meta: types_pb2.TxnMeta, expiry: float
) -> types_pb2.TxnRecord | None:
    """PushTxn on the record's leaseholder: final records are answered as they
    are, an unexpired PENDING one too; an expired or missing one is aborted
    through raft."""
    rec = await replica.read_txn_record(meta)
    if rec is not None and rec.status == TxnStatus.PENDING and meta.id in replica.ctx.active_txns:
        # A replica change this node is running: its commit is a conf change
        # that applies whatever the record says, so it must never be aborted
        # underneath (rangekv.raftnode.change). Its coordinator is alive.
        return rec
    now = replica.ctx.hlc.now().wall_time
    cutoff = now - int(expiry * 1e9)
    if rec is not None and (
        rec.status != TxnStatus.PENDING or rec.last_heartbeat.wall_time >= cutoff
    ):
        return rec
    op = raftcmd_pb2.TxnOp(kind=T.PUSH, txn=meta)
    op.expired_before.wall_time = cutoff
    return await replica.propose_txn_op(op)


class Peers:
    """Replica stubs towards the other nodes, by node id."""

    def __init__(self, store: Store, channels: ChannelOpener | None = None) -> None:
        self._store = store
        self._open = channels if channels is not None else PlaintextChannels()
        self._channels: dict[str, grpc.aio.Channel] = {}

    def stub(self, node_id: int) -> replica_pb2_grpc.ReplicaStub | None:
        address = self._store.ctx.resolve_address(node_id)
        if not address:
            return None
        return self.stub_at(address)

    def stub_at(self, address: str) -> replica_pb2_grpc.ReplicaStub:
        """A stub for the node at ``address`` (one cached channel per address)."""
        ch = self._channels.get(address)
        if ch is None:
            ch = self._open(address)
            self._channels[address] = ch
        return replica_pb2_grpc.ReplicaStub(ch)

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()


class TxnPusher:
    """Pushes transactions whose records may live on any range of the cluster."""

    def __init__(
        self, store: Store, peers: Peers, clock: Clock, *, expiry: float, rpc_timeout: float
    ) -> None:
        self._store = store
        self._peers = peers
        self._clock = clock
        self.expiry = expiry
        self._rpc_timeout = rpc_timeout

    async def push(self, meta: TxnMeta) -> TxnStatus:
        """The transaction's status, aborting it if it expired (see push_local)."""
        pb = meta.to_proto()
        deadline = self._clock.monotonic() + self._rpc_timeout
        last: Exception | None = None
        while self._clock.monotonic() < deadline:
            replica = self._store.initialized_replica_for(meta.record_key)
            if replica is None:
                raise E.Unavailable(f"no local replica holds txn record key {meta.record_key!r}")
            try:
                if replica.is_leader:
                    return T.record_status(await push_local(replica, pb, self.expiry))
                return await self._push_remote(replica, pb)
            except (E.NotLeaseHolder, E.RangeKeyMismatch, E.Unavailable) as exc:
                last = exc
            await self._clock.sleep(0.05)  # leadership is moving: back off briefly, then retry
        raise E.Unavailable(f"could not push txn {meta.id.hex()}: {last}")

    async def _push_remote(self, replica: RangeReplica, pb: types_pb2.TxnMeta) -> TxnStatus:
        lead = replica.group.leader()
        target = replica.descriptor.replica_by_id(lead) if lead else None
        if target is None:
            raise E.Unavailable(f"range {replica.range_id} has no leader")
        stub = self._peers.stub(target.node_id)
        if stub is None:
            raise E.Unavailable(f"no address for node {target.node_id}")
        try:
            resp = await stub.PushTxn(
                replica_pb2.PushTxnRequest(range_id=replica.range_id, txn=pb),
                timeout=self._rpc_timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise E.from_rpc_error(exc) from None
        if resp.HasField("error"):
            raise E.from_replica_error(resp.error)
        return T.record_status(resp.record if resp.HasField("record") else None)
