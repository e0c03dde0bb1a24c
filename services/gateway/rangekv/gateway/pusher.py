"""The gateway's TxnPusher: learn a descriptor transaction's outcome from its record.

The range cache meets meta intents of split transactions and must know
whether their transaction committed (the intent is the truth), aborted
(discard it) or is still pending (the committed descriptor stands). The
record lives on the range holding ``txn.record_key``; for a split of [A, C)
that is A, which both the committed [A, C) and the intent meta(B) = [A, B)
cover with the same (left-hand) range id, so either descriptor routes the
push. The lock intent meta(C) = [B, C) does not cover A: then the committed
descriptor does, and if neither given descriptor covers the key, one meta
lookup of the record key supplies candidates. The replica that answers
(`Replica.PushTxn`) aborts an expired PENDING record, so a push of a crashed
split's transaction eventually returns ABORTED.

Routing follows what replicas say: NotLeaseHolder hints (to a node perhaps
absent from the descriptor), RangeKeyMismatch descriptors (the record's range
split again since), and gives up at a deadline (the cache then treats the
intent as not live for this lookup).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from rangekv.common import errors as E
from rangekv.common.clock import Clock, SystemClock
from rangekv.common.descriptors import RangeDescriptor
from rangekv.domain.txn import TxnMeta, TxnStatus
from rangekv.gateway.dist_sender import NodeDirectory
from rangekv.gateway.node_client import NodeClients
from rangekv.v1 import meta_pb2, replica_pb2

__all__ = ["ReplicaTxnPusher"]

RecordLookup = Callable[[bytes], Awaitable[meta_pb2.LookupRangeResponse]]


class ReplicaTxnPusher:
    """A `rangekv.gateway.cache_types.TxnPusher` that sends `Replica.PushTxn`."""

    def __init__(
        self,
        nodes: NodeClients,
        directory: NodeDirectory,
        lookup: RecordLookup,
        *,
        timeout: float = 3.0,
        clock: Clock | None = None,
    ) -> None:
        self._nodes = nodes
        self._directory = directory
        self._lookup = lookup
        self._timeout = timeout
        self._clock: Clock = clock if clock is not None else SystemClock()
        self.pushes = 0

    async def __call__(
        self,
        txn: TxnMeta,
        intent_descriptor: RangeDescriptor,
        committed_descriptor: RangeDescriptor | None,
    ) -> TxnStatus:
        key = txn.record_key
        deadline = self._clock.monotonic() + self._timeout
        candidates = [
            d for d in (intent_descriptor, committed_descriptor) if d and d.contains_key(key)
        ]
        if not candidates:
            found = await self._lookup(key)
            candidates = [
                d
                for d in (
                    *(RangeDescriptor.from_proto(p) for p in found.descriptors),
                    *(RangeDescriptor.from_proto(i.descriptor) for i in found.intents),
                )
                if d.contains_key(key)
            ]
        tried: set[tuple[int, int]] = set()
        last: Exception | None = None
        backoff = 0.02
        while candidates:
            desc = max(candidates, key=lambda d: d.generation)
            candidates.remove(desc)
            if (desc.range_id, desc.generation) in tried:
                continue
            tried.add((desc.range_id, desc.generation))
            try:
                return await self._push_range(desc, txn, deadline)
            except E.RangeKeyMismatch as err:
                last = err
                candidates.extend(d for d in err.descriptors if d.contains_key(key))
            except E.RangeKVError as err:
                last = err
                if self._clock.monotonic() >= deadline:
                    break
                candidates.append(desc)  # retry the same range after a pause
                tried.discard((desc.range_id, desc.generation))
                await self._clock.sleep(min(backoff, max(0.0, deadline - self._clock.monotonic())))
                backoff = min(backoff * 2, 0.5)
        raise E.Unavailable(f"could not push transaction {txn.id.hex()}: {last or 'no route'}")

    async def _push_range(self, desc: RangeDescriptor, txn: TxnMeta, deadline: float) -> TxnStatus:
        """Push via one range: its replicas, following leaseholder hints."""
        req = replica_pb2.PushTxnRequest(range_id=desc.range_id, txn=txn.to_proto())
        queue: list[tuple[int, str | None]] = [(r.node_id, None) for r in desc.replicas]
        visits: dict[int, int] = {}
        last: E.RangeKVError = E.Unavailable(f"range {desc.range_id}: no replica answered")
        while queue:
            node_id, address = queue.pop(0)
            if visits.get(node_id, 0) >= 2:  # a hint may send us back once, not forever
                continue
            visits[node_id] = visits.get(node_id, 0) + 1
            address = address or await self._directory.address(node_id)
            remaining = deadline - self._clock.monotonic()
            if address is None or remaining <= 0:
                continue
            self.pushes += 1
            try:
                resp = await self._nodes.stub(address).PushTxn(req, timeout=remaining)
            except grpc.aio.AioRpcError as exc:
                last = E.from_rpc_error(exc)
                continue
            if not resp.HasField("error"):
                status = resp.record.status if resp.HasField("record") else 0
                return TxnStatus(status) if status else TxnStatus.ABORTED
            err = E.from_replica_error(resp.error)
            if isinstance(err, E.RangeKeyMismatch):
                raise err
            last = err
            if isinstance(err, E.NotLeaseHolder) and err.leaseholder is not None:
                if err.leaseholder_address:
                    self._directory.set(err.leaseholder.node_id, err.leaseholder_address)
                queue.insert(0, (err.leaseholder.node_id, err.leaseholder_address or None))
        raise last
