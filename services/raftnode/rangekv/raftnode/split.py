"""Range splits: the split coordinator, and the background queue that splits by size.

A split of [A, C) at B runs on the leaseholder of [A, C) as a descriptor
transaction (`rangekv.raftnode.descriptor_txn` runs it; the domain module
`rangekv.domain.descriptor_txn` plans its meta writes):

  1. allocate the right-hand range id from meta;
  2. write the txn record PENDING on this range at key A (raft), then keep
     heartbeating it while the transaction runs;
  3. sweep: resolve every intent at meta(X), A < X <= C, pushing its
     transaction (a live pending one fails the split: retry later);
  4. write the intent meta(C) = [B, C), conditional on the committed [A, C)
     (the lock), then meta(B) = [A, B), expect-absent, holding the lock;
  5. EndTxn COMMIT with the split trigger: one raft command on [A, C) marks
     the record COMMITTED and splits the range on every replica, provided the
     record is still PENDING (a pusher may have aborted it) and the
     descriptor is still [A, C);
  6. resolve both intents COMMITTED, the lock first;
  7. answer only once the right-hand range can serve: this node's replica of
     it leads with a valid lease (the left-hand leaseholder's node campaigns
     for it at once, `Store._create_split_rhs`), or it knows a leader elsewhere,
     or `rhs_serve_wait` passed. So splits chain: the next split (or write) of
     the right-hand side finds a leaseholder instead of "no leader right now".

The test fault `split_crash_after` (RANGEKV_SPLIT_CRASH_AFTER, read once in
main into the node's TestFaults) makes the process exit right after a step,
leaving that intermediate state for tests: record | first_intent |
both_intents | commit | one_resolve.

Whoever meets a crashed split's leftovers finishes the job: a gateway lookup
pushes intents (`rangekv.gateway.pusher`), a later split's sweep pushes and
resolves them, and the queue of the record's leaseholder aborts expired
pending records and resolves the intents of final ones (the record lists its
intent keys), so meta converges without anyone reading.

The queue also splits ranges whose approximate size exceeds a threshold: sizes
are estimated by scanning the range's MVCC span from an engine snapshot beside the
event loop, then raised by every applied write (`RangeStateMachine.approx_size`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from rangekv.common import errors as E
from rangekv.common.clock import Clock
from rangekv.common.descriptors import RangeDescriptor
from rangekv.common.tasks import Periodic
from rangekv.domain.descriptor_txn import DescriptorTxn, plan_split
from rangekv.domain.txn import TxnStatus
from rangekv.raft import LeaseState
from rangekv.raftnode import txn as T
from rangekv.raftnode.descriptor_txn import DescriptorTxns
from rangekv.raftnode.keys import data_span, decode_version_key, txn_record_span
from rangekv.raftnode.replica import RangeReplica
from rangekv.raftnode.store import INITIAL_INDEX, Store
from rangekv.raftnode.txn_push import push_local
from rangekv.v1 import meta_pb2, raftcmd_pb2, types_pb2

__all__ = ["SplitConfig", "SplitCoordinator", "SplitQueue", "middle_key"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitConfig:
    #: A PENDING record not heartbeated for this long may be aborted by a push.
    txn_expiry: float = 5.0
    #: Split a range once its approximate size exceeds this many bytes (0: never).
    size_threshold: int = 64 << 20
    #: Seconds between size checks (and txn record cleanups).
    check_interval: float = 10.0
    #: Deadline of one push / RPC to another node.
    rpc_timeout: float = 5.0
    #: How long a split waits, after it committed, for its right-hand range to serve.
    rhs_serve_wait: float = 5.0

    def __post_init__(self) -> None:
        if self.txn_expiry <= 0 or self.check_interval <= 0 or self.size_threshold < 0:
            raise ValueError("txn_expiry and check_interval must be > 0, size_threshold >= 0")
        if self.rhs_serve_wait < 0:
            raise ValueError("rhs_serve_wait must be >= 0")


class SplitCoordinator:
    """Runs split transactions for the ranges this node leads."""

    def __init__(
        self,
        txns: DescriptorTxns,
        *,
        crash_after: str = "",
        exit_process: Callable[[int], None] = os._exit,
        rhs_serve_wait: float = SplitConfig.rhs_serve_wait,
    ) -> None:
        """`crash_after` is the test fault `TestFaults.split_crash_after`;
        `rhs_serve_wait` is `SplitConfig.rhs_serve_wait` (step 7)."""
        self.txns = txns
        self.store = txns.store
        self._rhs_serve_wait = rhs_serve_wait
        self._crash_after = crash_after
        self._exit = exit_process
        self.splits_done = 0

    def _step(self, step: str) -> None:
        if self._crash_after == step:
            log.critical("RANGEKV_SPLIT_CRASH_AFTER=%s: exiting after this split step", step)
            for handler in logging.getLogger().handlers:
                handler.flush()
            self._exit(17)

    async def split(
        self, range_id: int, split_key: bytes = b""
    ) -> tuple[RangeDescriptor, RangeDescriptor]:
        """Split the range at `split_key` (empty: at its middle by size); returns (left, right)."""
        meta = self.txns.require_meta()
        self.txns.leader_replica(range_id)
        async with self.txns.lock(range_id):
            replica = self.txns.leader_replica(range_id)
            original = replica.descriptor
            if not split_key:
                found = await middle_key(self.store, replica)
                if found is None:
                    raise E.InvalidArgument("split_key", "the range has no key to split at")
                split_key = found[1]
            if not original.contains_key(split_key) or split_key == original.start_key:
                raise E.InvalidArgument(
                    "split_key", f"{split_key!r} is not strictly inside range {range_id}"
                )
            ids = await meta.allocate_ids(meta_pb2.ID_KIND_RANGE)
            plan = plan_split(original, split_key, ids.first, self.txns.new_txn_id())
            return await self._run(replica, plan)

    async def _run(
        self, replica: RangeReplica, plan: DescriptorTxn
    ) -> tuple[RangeDescriptor, RangeDescriptor]:
        right, left = plan.updates

        async def commit() -> None:
            op = raftcmd_pb2.TxnOp(kind=T.COMMIT, txn=plan.txn.to_proto())
            op.split_left.CopyFrom(left.to_proto())
            op.split_right.CopyFrom(right.to_proto())
            rec = await replica.propose_txn_op(op)
            if rec is None or rec.status != TxnStatus.COMMITTED:
                raise E.Unavailable("split transaction was aborted (pushed, or the range changed)")

        await self.txns.run(replica, plan, commit, what="split transaction", step=self._step)
        self.splits_done += 1
        if not await self.await_serving(right.range_id, self._rhs_serve_wait):
            log.warning(
                "split of range %d: right-hand range %d has no leaseholder after %.1fs; "
                "answering anyway (the split committed)",
                left.range_id,
                right.range_id,
                self._rhs_serve_wait,
            )
        return left, right

    def serving(self, range_id: int) -> bool:
        """This node's replica of `range_id` leads with a valid lease, or knows a
        leader elsewhere (whose lease this node cannot see, but which answers)."""
        replica = self.store.replica(range_id)
        if replica is None or replica.removed:
            return False
        if replica.is_leader:
            now = self.txns.clock.monotonic()
            return replica.lease_status(now).state is LeaseState.VALID
        return replica.group.leader() != 0

    async def await_serving(self, range_id: int, wait: float) -> bool:
        """Step 7: poll `serving` once per raft tick for at most `wait` seconds (the
        lease appears after the election and one heartbeat round: a few ticks)."""
        clock = self.txns.clock
        deadline = clock.monotonic() + wait
        pause = self.store.config.host.timing.tick_interval
        while not self.serving(range_id):
            remaining = deadline - clock.monotonic()
            if remaining <= 0:
                return False
            await clock.sleep(min(pause, remaining))
        return True


class SplitQueue:
    """Every `check_interval`, on each range this node leads: finish what crashed
    descriptor transactions left (`clean_txn_records`), then split by size."""

    def __init__(self, splits: SplitCoordinator, config: SplitConfig, clock: Clock) -> None:
        self.splits = splits
        self.store = splits.store
        self.config = config
        self._loop = Periodic(
            "split-and-txn-queues", config.check_interval, self.pass_once, clock, log
        )

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def pass_once(self) -> None:
        """One pass over the ranges this node leads (a range's failure spares the others)."""
        for replica in list(self.store.replicas()):
            if not replica.is_leader or replica.applied_index < INITIAL_INDEX:
                continue
            try:
                await self.clean_txn_records(replica)
                await self.maybe_split_by_size(replica)
            except E.RangeKVError as exc:
                log.info("range %d: background split/txn work: %s", replica.range_id, exc)
            except Exception:
                log.exception("range %d: background split/txn work failed", replica.range_id)

    async def clean_txn_records(self, replica: RangeReplica) -> int:
        """Abort expired pending records and resolve final records' intents; returns
        how many records were finished."""
        meta = self.splits.txns.meta
        if meta is None:
            return 0
        desc = replica.descriptor
        lo, hi = txn_record_span(desc.start_key, desc.end_key)
        records = [
            types_pb2.TxnRecord.FromString(v) for _k, v in self.store.state_engine.iterate(lo, hi)
        ]
        done = 0
        cutoff = self.store.hlc.now().wall_time - int(self.config.txn_expiry * 1e9)
        for rec in records:
            if rec.status == TxnStatus.PENDING and rec.last_heartbeat.wall_time >= cutoff:
                continue
            if rec.status != TxnStatus.PENDING and not rec.intent_keys:
                continue
            if rec.status == TxnStatus.PENDING:
                rec = await push_local(replica, rec.meta, self.config.txn_expiry) or rec
                if rec.status == TxnStatus.PENDING:
                    continue
            status = T.record_status(rec)
            for mk in rec.intent_keys:
                await meta.resolve_intent(mk, rec.meta.id, int(status))
            await replica.propose_txn_op(raftcmd_pb2.TxnOp(kind=T.CLEAR_INTENTS, txn=rec.meta))
            done += 1
        return done

    async def maybe_split_by_size(self, replica: RangeReplica) -> bool:
        threshold = self.config.size_threshold
        if not threshold or self.splits.txns.meta is None:
            return False
        state = replica.state
        if state.approx_size is None:
            found = await middle_key(self.store, replica)
            state.approx_size = found[0] if found else 0
        if state.approx_size < threshold:
            return False
        found = await middle_key(self.store, replica)  # exact size and where to split
        state.approx_size = found[0] if found else 0
        if found is None or found[0] < threshold:
            return False
        log.info(
            "range %d is ~%d bytes (threshold %d): splitting at %r",
            replica.range_id,
            found[0],
            threshold,
            found[1],
        )
        await self.splits.split(replica.range_id, found[1])
        return True


async def middle_key(store: Store, replica: RangeReplica) -> tuple[int, bytes] | None:
    """(bytes of the range's MVCC data, the user key where half of them lie below),
    from one engine snapshot scanned beside the event loop; None when there is no
    key strictly after the range's start to split at."""
    desc = replica.descriptor
    lo, hi = data_span(desc.start_key, desc.end_key)
    snap = store.state_engine.snapshot()

    def scan() -> tuple[int, bytes] | None:
        try:
            sizes: list[tuple[bytes, int]] = []
            total = 0
            prev: bytes | None = None
            for stored, value in snap.iterate(lo, hi):
                n = len(stored) + len(value)
                total += n
                user_key, _ts = decode_version_key(stored)
                if user_key != prev:
                    sizes.append((user_key, n))
                    prev = user_key
                else:
                    sizes[-1] = (user_key, sizes[-1][1] + n)
            return _halfway(desc, sizes, total)
        finally:
            snap.close()

    return await store.host.run_blocking(scan)


def _halfway(
    desc: RangeDescriptor, sizes: list[tuple[bytes, int]], total: int
) -> tuple[int, bytes] | None:
    below = 0
    for user_key, n in sizes:
        if below * 2 >= total and user_key > desc.start_key:
            return total, user_key
        below += n
    for user_key, _n in reversed(sizes):  # few keys: take the last one above the start
        if user_key > desc.start_key:
            return total, user_key
    return None
