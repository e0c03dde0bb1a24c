"""Running a descriptor transaction on a range's leaseholder: what splits and replica changes share.

A split and a replica change both change a range's descriptor the same way
(`rangekv.domain.descriptor_txn` has the lock-first protocol and its reasons):

  1. write the transaction record PENDING on the range at its start key
     (raft), then keep heartbeating it while the transaction runs;
  2. sweep: push and resolve every other transaction's intent inside the span
     (a live pending one fails the transaction: retry later);
  3. write the intents: the lock at meta(end) first, conditional on the
     committed descriptor this node holds, then the others;
  4. commit -- the one step that differs: a split's EndTxn with the split
     trigger, a replica change's raft conf change;
  5. resolve the intents COMMITTED (the lock first) and forget the record's
     intent keys.

A failure before the commit aborts the record (learning the truth if the
commit did apply) and resolves the intents accordingly, best effort: the
`TxnQueue` of the record's leaseholder (`rangekv.raftnode.split`) finishes
whatever a crashed or failed coordinator left. `DescriptorTxns.run` is that
sequence, once; `step` names the points a test may crash the process at.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable

from rangekv.common import errors as E
from rangekv.common.clock import Clock
from rangekv.domain.descriptor_txn import DescriptorTxn
from rangekv.domain.txn import TXN_ID_LEN, Intent, TxnStatus
from rangekv.metarange.client import MetaApi
from rangekv.raftnode import txn as T
from rangekv.raftnode.replica import RangeReplica
from rangekv.raftnode.store import INITIAL_INDEX, Store
from rangekv.raftnode.txn_push import TxnPusher
from rangekv.v1 import raftcmd_pb2, types_pb2

__all__ = ["SWEEP_LIMIT", "DescriptorTxns", "Step"]

log = logging.getLogger(__name__)

#: Meta keys read by a sweep: the span (A, C] holds the committed [A, C) and intents.
SWEEP_LIMIT = 256

#: Called with the name of each step a transaction completes (test crash points).
Step = Callable[[str], None]


def _no_step(_name: str) -> None:
    return None


class DescriptorTxns:
    """Runs descriptor transactions for the ranges this node leads."""

    def __init__(
        self,
        store: Store,
        meta: MetaApi | None,
        pusher: TxnPusher,
        clock: Clock,
        rng: random.Random,
    ) -> None:
        self.store = store
        self.meta = meta
        self.pusher = pusher
        self.clock = clock
        self._rng = rng
        #: One descriptor transaction per range at a time, whatever its kind.
        self._locks: dict[int, asyncio.Lock] = defaultdict(asyncio.Lock)

    def lock(self, range_id: int) -> asyncio.Lock:
        return self._locks[range_id]

    def require_meta(self) -> MetaApi:
        if self.meta is None:
            raise E.Unavailable("this node has no meta range address (--meta-addrs)")
        return self.meta

    def new_txn_id(self) -> bytes:
        return self._rng.randbytes(TXN_ID_LEN)

    def leader_replica(self, range_id: int) -> RangeReplica:
        """This node's initialized replica of `range_id`, which must lead it."""
        replica = self.store.replica(range_id)
        if replica is None or replica.applied_index < INITIAL_INDEX:
            raise E.RangeNotFound(range_id, self.store.node_id)
        if not replica.is_leader:
            raise replica.not_lease_holder()
        return replica

    async def run(
        self,
        replica: RangeReplica,
        plan: DescriptorTxn,
        commit: Callable[[], Awaitable[None]],
        *,
        what: str,
        active: bool = False,
        step: Step = _no_step,
    ) -> None:
        """Steps 1-5 of the module docstring; `commit` is step 4 and raises unless the
        transaction committed. `active`: the commit applies whatever the record says
        (a conf change), so pushes from this node must not abort it meanwhile."""
        meta = self.require_meta()
        txn_pb = plan.txn.to_proto()
        active_txns = replica.ctx.active_txns
        if active:
            active_txns.add(plan.txn.id)
        try:
            create = raftcmd_pb2.TxnOp(kind=T.CREATE, txn=txn_pb)
            create.intent_keys.extend(w.meta_key for w in plan.writes())
            rec = await replica.propose_txn_op(create)
            if rec is None or rec.status != TxnStatus.PENDING:
                raise E.Unavailable(f"{what} record could not be created")
            step("record")
            heartbeat = asyncio.ensure_future(self._heartbeat(replica, txn_pb))
            committed = False
            try:
                await self.sweep(plan)
                for i, write in enumerate(plan.writes()):
                    await meta.write_intent(write.to_request())
                    step("first_intent" if i == 0 else "both_intents")
                await commit()
                committed = True
                step("commit")
            except BaseException:
                heartbeat.cancel()
                if not committed:
                    await self._give_up(replica, plan)
                raise
            heartbeat.cancel()
        finally:
            if active:
                active_txns.discard(plan.txn.id)
        for i, res in enumerate(plan.resolutions(TxnStatus.COMMITTED)):
            with contextlib.suppress(E.RangeKVError):
                await meta.resolve_intent(res.meta_key, res.txn_id, int(TxnStatus.COMMITTED))
            if i == 0:
                step("one_resolve")
        with contextlib.suppress(E.RangeKVError):
            await replica.propose_txn_op(raftcmd_pb2.TxnOp(kind=T.CLEAR_INTENTS, txn=txn_pb))

    async def sweep(self, plan: DescriptorTxn) -> None:
        """Step 2: push and resolve other transactions' intents inside the span."""
        meta = self.require_meta()
        listing = await meta.list_ranges(
            start_key=plan.original.start_key, limit=SWEEP_LIMIT, include_intents=True
        )
        intents = [Intent.from_proto(i) for i in listing.intents]
        statuses: dict[bytes, TxnStatus] = {}
        for intent in intents:
            mine = intent.txn.id == plan.txn.id
            if not mine and plan.in_span(intent.meta_key) and intent.txn.id not in statuses:
                statuses[intent.txn.id] = await self.pusher.push(intent.txn)
        for res in plan.sweep(intents, lambda t: statuses[t.id]):
            await meta.resolve_intent(res.meta_key, res.txn_id, int(res.status))

    async def _heartbeat(self, replica: RangeReplica, txn_pb: types_pb2.TxnMeta) -> None:
        interval = self.pusher.expiry / 4
        while True:
            await self.clock.sleep(interval)
            try:
                rec = await replica.propose_txn_op(raftcmd_pb2.TxnOp(kind=T.HEARTBEAT, txn=txn_pb))
            except E.RangeKVError:
                continue
            if rec is None or rec.status != TxnStatus.PENDING:
                return

    async def _give_up(self, replica: RangeReplica, plan: DescriptorTxn) -> None:
        """Best effort after a failure: abort the record (learning the truth if the
        commit did apply) and resolve the intents accordingly. The TxnQueue of
        the record's leaseholder finishes whatever this cannot."""
        meta = self.require_meta()
        try:
            rec = await replica.propose_txn_op(
                raftcmd_pb2.TxnOp(kind=T.ABORT, txn=plan.txn.to_proto())
            )
            status = T.record_status(rec)
            for res in plan.resolutions(status):
                await meta.resolve_intent(res.meta_key, res.txn_id, int(status))
        except Exception as exc:
            log.info("%s: cleanup deferred to the txn queue: %s", plan.txn.id.hex(), exc)
