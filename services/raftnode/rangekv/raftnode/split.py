"""Range splits: the split transaction's coordinator, pushes, and the background queues.

A split of [A, C) at B runs on the leaseholder of [A, C) as a descriptor
transaction (DESIGN.md; `rangekv.metarange.protocol` builds its meta writes):

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
  6. resolve both intents COMMITTED, the lock first.

`crash_after` (RANGEKV_SPLIT_CRASH_AFTER, read once in main) makes the process
exit right after a step, leaving that intermediate state for tests:
record | first_intent | both_intents | commit | one_resolve.

Whoever meets a crashed split's leftovers finishes the job: a gateway lookup
pushes intents (`rangekv.gateway.pusher`), a later split's sweep pushes and
resolves them, and the `TxnQueue` of the record's leaseholder aborts expired
pending records and resolves the intents of final ones (the record lists its
intent keys), so meta converges without anyone reading.

`SplitQueue` splits ranges whose approximate size exceeds a threshold: sizes
are estimated by scanning the range's MVCC span from an engine snapshot in a
worker thread, then raised by every applied write (`RangeReplica.approx_size`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from rangekv.common import errors as E
from rangekv.common.descriptors import RangeDescriptor
from rangekv.common.tasks import cancel_and_wait
from rangekv.common.tls import ChannelOpener, PlaintextChannels
from rangekv.metarange.client import MetaClient
from rangekv.metarange.commands import WriteIntent
from rangekv.metarange.protocol import DescriptorTxn, plan_split
from rangekv.metarange.records import Intent, TxnMeta, TxnStatus
from rangekv.raftnode import txn as T
from rangekv.raftnode.keys import data_span, decode_version_key, txn_record_span
from rangekv.raftnode.replica import RangeReplica
from rangekv.raftnode.store import INITIAL_INDEX, Store
from rangekv.v1 import meta_pb2, raftcmd_pb2, replica_pb2, replica_pb2_grpc, types_pb2

log = logging.getLogger(__name__)

CRASH_POINTS = ("record", "first_intent", "both_intents", "commit", "one_resolve")
#: Meta keys read by a sweep: the span (A, C] holds the committed [A, C) and intents.
SWEEP_LIMIT = 256


@dataclass(frozen=True)
class SplitConfig:
    #: A PENDING record not heartbeated for this long may be aborted by a push.
    txn_expiry: float = 5.0
    #: Split a range once its approximate size exceeds this many bytes (0: never).
    size_threshold: int = 64 << 20
    #: Seconds between size checks (and txn record cleanups).
    check_interval: float = 10.0
    #: Exit the process right after this step of a split (tests only).
    crash_after: str = ""
    #: Deadline of one push / RPC to another node.
    rpc_timeout: float = 5.0

    def __post_init__(self) -> None:
        if self.txn_expiry <= 0 or self.check_interval <= 0 or self.size_threshold < 0:
            raise ValueError("txn_expiry and check_interval must be > 0, size_threshold >= 0")
        if self.crash_after and self.crash_after not in CRASH_POINTS:
            raise ValueError(f"crash_after must be one of {CRASH_POINTS}")


def _status(rec: types_pb2.TxnRecord | None) -> TxnStatus:
    if rec is None or rec.status == T.ABORTED:
        return TxnStatus.ABORTED
    return TxnStatus(rec.status)


async def push_local(
    replica: RangeReplica, meta: types_pb2.TxnMeta, expiry: float
) -> types_pb2.TxnRecord | None:
    """PushTxn on the record's leaseholder: final records are answered as they
    are, an unexpired PENDING one too; an expired or missing one is aborted
    through raft."""
    rec = await replica.read_txn_record(meta)
    if rec is not None and rec.status == T.PENDING and meta.id in replica.ctx.active_txns:
        # A replica change this node is running: its commit is a conf change
        # that applies whatever the record says, so it must never be aborted
        # underneath (rangekv.raftnode.change). Its coordinator is alive.
        return rec
    now = replica.ctx.hlc.now().wall_time
    cutoff = now - int(expiry * 1e9)
    if rec is not None and (rec.status != T.PENDING or rec.last_heartbeat.wall_time >= cutoff):
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


class TxnClient:
    """Pushes and ends transactions whose records may live on any range of the cluster."""

    def __init__(self, store: Store, peers: Peers, config: SplitConfig) -> None:
        self._store = store
        self._peers = peers
        self._config = config

    def _replica_for(self, key: bytes) -> RangeReplica | None:
        for replica in self._store.replicas():
            if replica.applied_index >= INITIAL_INDEX and replica.descriptor.contains_key(key):
                return replica
        return None

    async def push(self, meta: TxnMeta) -> TxnStatus:
        """The transaction's status, aborting it if it expired (see push_local)."""
        pb = meta.to_proto()
        deadline = time.monotonic() + self._config.rpc_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            replica = self._replica_for(meta.record_key)
            if replica is None:
                raise E.Unavailable(f"no local replica holds txn record key {meta.record_key!r}")
            try:
                if replica.raw_node.is_leader():
                    return _status(await push_local(replica, pb, self._config.txn_expiry))
                return await self._push_remote(replica, pb)
            except (E.NotLeaseHolder, E.RangeKeyMismatch, E.Unavailable) as exc:
                last = exc
            await asyncio.sleep(0.05)  # leadership is moving: back off briefly, then retry
        raise E.Unavailable(f"could not push txn {meta.id.hex()}: {last}")

    async def _push_remote(self, replica: RangeReplica, pb: types_pb2.TxnMeta) -> TxnStatus:
        lead = replica.raw_node.leader()
        target = replica.descriptor.replica_by_id(lead) if lead else None
        if target is None:
            raise E.Unavailable(f"range {replica.range_id} has no leader")
        stub = self._peers.stub(target.node_id)
        if stub is None:
            raise E.Unavailable(f"no address for node {target.node_id}")
        try:
            resp = await stub.PushTxn(
                replica_pb2.PushTxnRequest(range_id=replica.range_id, txn=pb),
                timeout=self._config.rpc_timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise E.from_rpc_error(exc) from None
        if resp.HasField("error"):
            raise E.from_replica_error(resp.error)
        return _status(resp.record if resp.HasField("record") else None)


class SplitCoordinator:
    """Runs split transactions for the ranges this node leads."""

    def __init__(
        self,
        store: Store,
        meta: MetaClient | None,
        config: SplitConfig,
        *,
        exit_process: Callable[[int], None] = os._exit,
        channels: ChannelOpener | None = None,
    ) -> None:
        self.store = store
        self.meta = meta
        self.config = config
        self.peers = Peers(store, channels)
        self.txns = TxnClient(store, self.peers, config)
        self._exit = exit_process
        self._locks: dict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._tasks: list[asyncio.Task[None]] = []
        self.splits_done = 0

    # --- the transaction ------------------------------------------------------------------

    def _leader_replica(self, range_id: int) -> RangeReplica:
        replica = self.store.replica(range_id)
        if replica is None or replica.applied_index < INITIAL_INDEX:
            raise E.RangeNotFound(range_id, self.store.node_id)
        if not replica.raw_node.is_leader():
            raise replica.not_lease_holder()
        return replica

    def _fault(self, step: str) -> None:
        if self.config.crash_after == step:
            log.critical("RANGEKV_SPLIT_CRASH_AFTER=%s: exiting after this split step", step)
            for handler in logging.getLogger().handlers:
                handler.flush()
            self._exit(17)

    async def split(
        self, range_id: int, split_key: bytes = b""
    ) -> tuple[RangeDescriptor, RangeDescriptor]:
        """Split the range at `split_key` (empty: at its middle by size); returns (left, right)."""
        if self.meta is None:
            raise E.Unavailable("this node has no meta range address (--meta-addrs)")
        self._leader_replica(range_id)
        async with self._locks[range_id]:
            replica = self._leader_replica(range_id)
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
            ids = await self.meta.allocate_ids(meta_pb2.ID_KIND_RANGE)
            plan = plan_split(original, split_key, ids.first, os.urandom(16))
            return await self._run(replica, plan)

    async def _run(
        self, replica: RangeReplica, plan: DescriptorTxn
    ) -> tuple[RangeDescriptor, RangeDescriptor]:
        assert self.meta is not None
        meta = self.meta
        txn_pb = plan.txn.to_proto()
        right, left = plan.updates
        create = raftcmd_pb2.TxnOp(kind=T.CREATE, txn=txn_pb)
        create.intent_keys.extend(w.meta_key for w in plan.writes())
        rec = await replica.propose_txn_op(create)
        if rec is None or rec.status != T.PENDING:
            raise E.Unavailable("split transaction record could not be created")
        self._fault("record")
        heartbeat = asyncio.ensure_future(self._heartbeat(replica, txn_pb))
        committed = False
        try:
            await self._sweep(plan)
            for i, write in enumerate(plan.writes()):
                await meta.write_intent(_write_request(write))
                self._fault("first_intent" if i == 0 else "both_intents")
            commit = raftcmd_pb2.TxnOp(kind=T.COMMIT, txn=txn_pb)
            commit.split_left.CopyFrom(left.to_proto())
            commit.split_right.CopyFrom(right.to_proto())
            rec = await replica.propose_txn_op(commit)
            if rec is None or rec.status != T.COMMITTED:
                raise E.Unavailable("split transaction was aborted (pushed, or the range changed)")
            committed = True
            self._fault("commit")
        except BaseException:
            heartbeat.cancel()
            if not committed:
                await self._give_up(replica, plan)
            raise
        heartbeat.cancel()
        for i, res in enumerate(plan.resolutions(TxnStatus.COMMITTED)):
            with contextlib.suppress(E.RangeKVError):
                await meta.resolve_intent(res.meta_key, res.txn_id, int(TxnStatus.COMMITTED))
            if i == 0:
                self._fault("one_resolve")
        with contextlib.suppress(E.RangeKVError):
            await replica.propose_txn_op(raftcmd_pb2.TxnOp(kind=T.CLEAR_INTENTS, txn=txn_pb))
        self.splits_done += 1
        return left, right

    async def _sweep(self, plan: DescriptorTxn) -> None:
        """Step 3: push and resolve other transactions' intents inside the span."""
        assert self.meta is not None
        listing = await self.meta.list_ranges(
            start_key=plan.original.start_key, limit=SWEEP_LIMIT, include_intents=True
        )
        intents = [Intent.from_proto(i) for i in listing.intents]
        statuses: dict[bytes, TxnStatus] = {}
        for intent in intents:
            mine = intent.txn.id == plan.txn.id
            if not mine and plan.in_span(intent.meta_key) and intent.txn.id not in statuses:
                statuses[intent.txn.id] = await self.txns.push(intent.txn)
        for res in plan.sweep(intents, lambda t: statuses[t.id]):
            await self.meta.resolve_intent(res.meta_key, res.txn_id, int(res.status))

    async def _heartbeat(self, replica: RangeReplica, txn_pb: types_pb2.TxnMeta) -> None:
        interval = self.config.txn_expiry / 4
        while True:
            await asyncio.sleep(interval)
            try:
                rec = await replica.propose_txn_op(raftcmd_pb2.TxnOp(kind=T.HEARTBEAT, txn=txn_pb))
            except E.RangeKVError:
                continue
            if rec is None or rec.status != T.PENDING:
                return

    async def _give_up(self, replica: RangeReplica, plan: DescriptorTxn) -> None:
        """Best effort after a failure: abort the record (learning the truth if the
        commit did apply) and resolve the intents accordingly. The TxnQueue of
        the record's leaseholder finishes whatever this cannot."""
        assert self.meta is not None
        try:
            rec = await replica.propose_txn_op(
                raftcmd_pb2.TxnOp(kind=T.ABORT, txn=plan.txn.to_proto())
            )
            status = _status(rec)
            for res in plan.resolutions(status):
                await self.meta.resolve_intent(res.meta_key, res.txn_id, int(status))
        except Exception as exc:
            log.info("split %s: cleanup deferred to the txn queue: %s", plan.txn.id.hex(), exc)

    # --- background queues ------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._queue_loop(), name="split-and-txn-queues"))

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        await self.peers.close()

    async def _queue_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.check_interval)
            for replica in list(self.store.replicas()):
                if not replica.raw_node.is_leader() or replica.applied_index < INITIAL_INDEX:
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
        if self.meta is None:
            return 0
        desc = replica.descriptor
        lo, hi = txn_record_span(desc.start_key, desc.end_key)
        records = [
            types_pb2.TxnRecord.FromString(v) for _k, v in self.store.state_engine.iterate(lo, hi)
        ]
        done = 0
        cutoff = self.store.hlc.now().wall_time - int(self.config.txn_expiry * 1e9)
        for rec in records:
            if rec.status == T.PENDING and rec.last_heartbeat.wall_time >= cutoff:
                continue
            if rec.status != T.PENDING and not rec.intent_keys:
                continue
            if rec.status == T.PENDING:
                rec = await push_local(replica, rec.meta, self.config.txn_expiry) or rec
                if rec.status == T.PENDING:
                    continue
            status = _status(rec)
            for mk in rec.intent_keys:
                await self.meta.resolve_intent(mk, rec.meta.id, int(status))
            await replica.propose_txn_op(raftcmd_pb2.TxnOp(kind=T.CLEAR_INTENTS, txn=rec.meta))
            done += 1
        return done

    async def maybe_split_by_size(self, replica: RangeReplica) -> bool:
        threshold = self.config.size_threshold
        if not threshold or self.meta is None:
            return False
        if replica.approx_size is None:
            found = await middle_key(self.store, replica)
            replica.approx_size = found[0] if found else 0
        if replica.approx_size < threshold:
            return False
        found = await middle_key(self.store, replica)  # exact size and where to split
        replica.approx_size = found[0] if found else 0
        if found is None or found[0] < threshold:
            return False
        log.info(
            "range %d is ~%d bytes (threshold %d): splitting at %r",
            replica.range_id,
            found[0],
            threshold,
            found[1],
        )
        await self.split(replica.range_id, found[1])
        return True


async def middle_key(store: Store, replica: RangeReplica) -> tuple[int, bytes] | None:
    """(bytes of the range's MVCC data, the user key where half of them lie below),
    from one engine snapshot scanned in a worker thread; None when there is no
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
            below = 0
            for user_key, n in sizes:
                if below * 2 >= total and user_key > desc.start_key:
                    return total, user_key
                below += n
            for user_key, _n in reversed(sizes):  # few keys: take the last one above the start
                if user_key > desc.start_key:
                    return total, user_key
            return None
        finally:
            snap.close()

    return await asyncio.to_thread(scan)


def _write_request(w: WriteIntent) -> meta_pb2.WriteIntentRequest:
    req = meta_pb2.WriteIntentRequest(
        txn=w.txn.to_proto(),
        descriptor=w.descriptor.to_proto(),
        expect_absent=w.expect_absent,
        lock_key=w.lock_key or b"",
    )
    if w.expected is not None:
        req.expected.CopyFrom(w.expected.to_proto())
    return req


__all__ = [
    "CRASH_POINTS",
    "Peers",
    "SplitConfig",
    "SplitCoordinator",
    "TxnClient",
    "middle_key",
    "push_local",
]
