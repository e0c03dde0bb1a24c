"""A replica of one range, serving: validation, read point, fences, proposals, answers.

What the range's commands do is `range_state.RangeStateMachine`'s business;
the raft group that orders them is `rangekv.replication.group.RaftGroup`; how
concurrent writes become one command is `writes.RangeWrites`. This module
serves the Replica API on top of them.

Reads, in order:
  1. a valid lease (leader, quorum ack younger than the lease, an applied entry
     of its own term, no transfer in flight) -> serve from the local applied
     state, no raft round trip;
  2. leader without a valid lease -> ONE read-index round trip for the whole
     batch (and concurrent batches share it: see RaftGroup.read_index);
  3. not leader -> NotLeaseHolder naming the leader this replica believes in.
A batch is checked once, whatever number of reads it carries: no read below
this method asks raft anything (a read-index per storage read would multiply
the round trips by the batch size).

Writes are proposed through raft and acknowledged after this replica applied
them, merged with concurrent batches into one raft command per scheduler
iteration. Every check that can fail a batch runs before anything is proposed,
so an error answer never hides an applied write (which a retry would apply
twice).

Tracing (only when the context has a tracer AND the batch carries traceparents):
a `replica.batch` span in each caller's trace, with `raft.commit` (proposal
until applied here) or `read.lease` / `read.read_index` under it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final

from opentelemetry import trace

from rangekv.common import errors as E
from rangekv.common.descriptors import RangeDescriptor
from rangekv.common.hlc import ClockOffsetError, Timestamp
from rangekv.common.tasks import retrieve_outcome
from rangekv.common.telemetry import SpanSet
from rangekv.domain.keys import min_end
from rangekv.domain.txn import check_txn_id
from rangekv.raft import LeaseStatus, Status
from rangekv.raftnode import mvcc
from rangekv.raftnode.context import ReplicaContext
from rangekv.raftnode.fences import FenceState, ScanFences
from rangekv.raftnode.keys import txn_record_key
from rangekv.raftnode.range_state import (
    OUTSIDE_RANGE,
    RangeStateMachine,
    TxnApplied,
    ts_from_proto,
    ts_to_proto,
)
from rangekv.raftnode.requests import READ_KINDS, WRITE_KINDS, keys_outside, validate
from rangekv.raftnode.writes import RangeWrites, op_key
from rangekv.replication.group import NotLeaderNow, RaftGroup
from rangekv.replication.mutations import Mutation
from rangekv.replication.state_engine import Reader, StateBatch
from rangekv.v1 import raftcmd_pb2, replica_pb2, types_pb2

__all__ = ["RangeReplica"]

log = logging.getLogger(__name__)

#: Span name of a consistent read's read point, by how it was obtained.
READ_SPANS: Final = {"hit": "read.lease", "readindex": "read.read_index"}


class RangeReplica:
    """One replica of one range on this node: its group, its state, its serving."""

    def __init__(self, ctx: ReplicaContext, descriptor: RangeDescriptor, replica_id: int) -> None:
        self.ctx = ctx
        self.range_id = descriptor.range_id
        self.replica_id = replica_id
        self.fences = ScanFences(ctx.limits.fences)
        host = ctx.host
        skips = host.faults.mutation is Mutation.FOLLOWER_SKIPS_WRITES
        self.state = RangeStateMachine(
            descriptor,
            ctx.engine,
            self,
            ctx.hlc.forward,
            skips_writes=(lambda: not self.is_leader) if skips else None,
        )
        self.writes = RangeWrites(
            self.range_id, self.fences, ctx.hlc, ctx.clock, mutation=host.faults.mutation
        )
        self.group: RaftGroup = host.add_group(
            self.range_id,
            replica_id,
            self.state,
            merger=self.writes,
            on_role_change=self._role_changed,
            node_of=self._node_of_replica,
        )
        #: Coordinators of replica changes waiting for them to apply here, by txn id.
        self._change_waiters: dict[bytes, asyncio.Future[RangeDescriptor]] = {}

    # --- what the rest of the node reads --------------------------------------------

    def _node_of_replica(self, replica_id: int) -> int | None:
        """The node of this range's replica `replica_id` (the liveness view's map)."""
        found = self.state.descriptor.replica_by_id(replica_id)
        return None if found is None else found.node_id

    @property
    def descriptor(self) -> RangeDescriptor:
        return self.state.descriptor

    @property
    def applied_index(self) -> int:
        return self.group.applied_index

    @property
    def is_leader(self) -> bool:
        return self.group.is_leader

    @property
    def removed(self) -> bool:
        return self.group.removed

    @property
    def queued_writes(self) -> int:
        """Write operations queued and not proposed yet."""
        return self.group.proposals.queued_items

    def raft_status(self) -> Status:
        """The raft core's view: term, commit, and (on the leader) each peer's progress."""
        return self.group.status()

    def lease_status(self, now: float) -> LeaseStatus:
        return self.group.lease_status(now)

    def transfer_leadership(self, replica_id: int) -> None:
        self.group.transfer_leadership(replica_id)

    # --- RangeEvents: what an apply tells this replica --------------------------------

    def split_applied(
        self, left: RangeDescriptor, right: RangeDescriptor, batch: StateBatch
    ) -> None:
        if self.ctx.on_split is not None:
            self.ctx.on_split(self, left, right, batch)

    def replica_change_applied(self, new: RangeDescriptor, txn_id: bytes) -> None:
        fut = self._change_waiters.pop(txn_id, None)
        if fut is not None:
            # Resolved once the batch holding the change is durable.
            self.ctx.host.scheduler.after_apply(lambda: _resolve(fut, self.descriptor))
        if self.ctx.on_replica_change is not None:
            self.ctx.on_replica_change(self, new)

    def _role_changed(self) -> None:
        # Fences die with the lease: a later leaseholder knows nothing of them, so a
        # read under one must be refused (it would not see writes made meanwhile).
        self.fences.clear()
        if self.ctx.on_leader_change is not None:
            self.ctx.on_leader_change()

    # --- the Replica API --------------------------------------------------------------

    async def batch(self, req: replica_pb2.ReplicaBatchRequest) -> replica_pb2.ReplicaBatchResponse:
        """Serve one batch; every failure is an in-band ReplicaError."""
        tracer = self.ctx.tracer
        if tracer is not None and req.traceparents:
            return await self._traced_batch(tracer, req)
        try:
            return await self._batch(req)
        except E.RangeKVError as exc:
            return replica_pb2.ReplicaBatchResponse(error=E.to_replica_error(exc))

    async def _traced_batch(
        self, tracer: trace.Tracer, req: replica_pb2.ReplicaBatchRequest
    ) -> replica_pb2.ReplicaBatchResponse:
        """`batch`, recorded as a `replica.batch` span in every caller's trace."""
        with SpanSet.start(
            tracer,
            "replica.batch",
            req.traceparents,
            kind=trace.SpanKind.SERVER,
            attributes={
                "rangekv.node_id": self.ctx.node_id,
                "rangekv.range_id": self.range_id,
                "rangekv.ops": len(req.ops),
                "rangekv.callers": len(req.traceparents),
                "rangekv.inconsistent": req.inconsistent,
            },
        ) as spans:
            try:
                return await self._batch(req, spans)
            except E.RangeKVError as exc:
                spans.fail(exc)
                return replica_pb2.ReplicaBatchResponse(error=E.to_replica_error(exc))

    async def _batch(
        self, req: replica_pb2.ReplicaBatchRequest, spans: SpanSet | None = None
    ) -> replica_pb2.ReplicaBatchResponse:
        shape = validate(req, self.ctx.limits)
        self._check_keys(req)
        read_ts = ts_from_proto(req.read_timestamp) if req.HasField("read_timestamp") else None
        if read_ts is not None:
            self._check_read_timestamp(read_ts)
            if not (req.inconsistent or req.fence_id or shape.fencing):
                raise E.InvalidArgument(
                    "read_timestamp",
                    "a consistent read at a chosen timestamp is served under a scan fence "
                    "(fence_id); without one the node picks the timestamp",
                )
        if shape.fencing:
            await self._await_read_point(spans)
            self._check_keys(req)
            return await self._fence_batch(req, read_ts)
        results: list[replica_pb2.ReplicaOpResult | None] = [None] * len(req.ops)
        if shape.has_reads:
            read_ts = await self._serve_reads(req, shape.kinds, read_ts, results, spans)
        if shape.has_writes:
            # Writes go last: every check that can fail the batch has passed.
            self._require_leader()
            writes = [op for op in req.ops if op.WhichOneof("op") in WRITE_KINDS]
            it = iter(await self._propose_writes(writes, spans))
            for i, kind in enumerate(shape.kinds):
                if kind in WRITE_KINDS:
                    results[i] = next(it)
        resp = self._answer(results)
        if read_ts is not None:
            resp.read_timestamp.CopyFrom(ts_to_proto(read_ts))
        return resp

    def _answer(
        self, results: list[replica_pb2.ReplicaOpResult | None]
    ) -> replica_pb2.ReplicaBatchResponse:
        return replica_pb2.ReplicaBatchResponse(
            results=results,  # type: ignore[arg-type]
            descriptor=self.state.descriptor_pb,
            lease_sequence=self.group.term(),
        )

    # --- reads --------------------------------------------------------------------------

    async def _serve_reads(
        self,
        req: replica_pb2.ReplicaBatchRequest,
        kinds: tuple[str, ...],
        read_ts: Timestamp | None,
        results: list[replica_pb2.ReplicaOpResult | None],
        spans: SpanSet | None,
    ) -> Timestamp:
        """Evaluate the reads of `req` into `results`; returns the timestamp served at."""
        if not req.inconsistent:
            before = self.descriptor
            await self._await_read_point(spans)
            if self.descriptor is not before:
                self._check_keys(req)  # a split applied while we waited
        if req.fence_id:
            read_ts = await self._fenced_read_timestamp(req, read_ts)
        ts = read_ts if read_ts is not None else self.ctx.hlc.now()
        reads = [i for i, kind in enumerate(kinds) if kind in READ_KINDS]
        if len(reads) == 1:
            results[reads[0]] = self._evaluate_read(req.ops[reads[0]], ts, self.ctx.engine)
        else:
            # One storage view for the whole batch instead of one iterator per read
            # (creating one costs about as much as the seek it serves). Nothing is
            # applied between these reads (no await), so it is the same view.
            with self.ctx.engine.snapshot() as view:
                for i in reads:
                    results[i] = self._evaluate_read(req.ops[i], ts, view)
            self._check_answer_size(results)
        if req.fence_id:
            self._maybe_end_fence(req, results)
        return ts

    def _evaluate_read(
        self, op: replica_pb2.ReplicaOp, ts: Timestamp, reader: Reader
    ) -> replica_pb2.ReplicaOpResult:
        kind = op.WhichOneof("op")
        if kind == "get":
            value, version = mvcc.get(reader, op.get.key, ts)
            if value is None:
                return replica_pb2.ReplicaOpResult(get=replica_pb2.GetResult(found=False))
            kv = types_pb2.KeyValue(key=op.get.key, value=value, version=_ts_pb(version))
            return replica_pb2.ReplicaOpResult(get=replica_pb2.GetResult(found=True, kv=kv))
        scan = op.scan
        start, end = self._clip(scan.start_key, scan.end_key)
        limits = self.ctx.limits
        rows_cap = min(scan.limit or limits.max_scan_page_rows, limits.max_scan_page_rows)
        bytes_cap = min(scan.max_bytes or limits.max_scan_page_bytes, limits.max_scan_page_bytes)
        rows, resume = mvcc.scan_page(reader, start, end, ts, rows_cap, bytes_cap)
        kvs = [types_pb2.KeyValue(key=k, value=v) for k, v in rows]
        return replica_pb2.ReplicaOpResult(scan=replica_pb2.ScanResult(kvs=kvs, resume_key=resume))

    def _check_answer_size(self, results: list[replica_pb2.ReplicaOpResult | None]) -> None:
        """An answer bigger than the budget would break the stream it shares with
        other requests (writes on it would come back of unknown outcome): refuse
        it instead; the gateway splits the batch (reads only, so nothing to undo)."""
        size = sum(r.ByteSize() for r in results if r is not None)
        if size > self.ctx.limits.max_read_response_bytes:
            self.ctx.refusals.add("overloaded")
            raise E.ResourceExhausted(
                f"range {self.range_id}: the answer to this batch of reads would be {size} "
                f"bytes, over {self.ctx.limits.max_read_response_bytes}; split it",
                retry_after=0.0,
                answer_too_large=True,
            )

    def _check_read_timestamp(self, read_ts: Timestamp) -> None:
        """Refuse what cannot be served honestly: below the GC threshold (versions
        may be gone), or more than the maximum clock offset ahead of this node's
        physical clock (a wrong clock somewhere: refused and counted, never
        absorbed -- nothing here moves this node's clock)."""
        if read_ts < self.state.gc_threshold:
            raise E.InvalidArgument(
                "read_timestamp",
                f"{read_ts} is below the range's GC threshold {self.state.gc_threshold}",
            )
        try:
            self.ctx.hlc.check_offset(read_ts)
        except ClockOffsetError as exc:
            self.ctx.refusals.add("clock_offset")
            raise E.ClockOffset(
                ts_to_proto(read_ts), exc.local_physical_ns, exc.max_offset_ns, self.ctx.node_id
            ) from None

    async def _await_read_point(self, spans: SpanSet | None = None) -> None:
        """Return once the local applied state includes every acknowledged write."""
        reads = self.ctx.reads
        count = reads.add if reads is not None else None
        if spans is None:
            await self._read_point(count)
            return
        with spans.child("read.point", {"rangekv.range_id": self.range_id}) as read_spans:

            def traced_count(outcome: str) -> None:
                read_spans.update_name(READ_SPANS.get(outcome, "read.point"))
                read_spans.set_attribute("rangekv.read_path", outcome)
                if count is not None:
                    count(outcome)

            await self._read_point(traced_count)

    async def _read_point(self, count: Callable[[str], None] | None) -> None:
        timeout = self.ctx.limits.read_index_timeout
        try:
            await self.group.await_read_point(self.ctx.clock.monotonic(), timeout, count)
        except TimeoutError:
            raise E.Unavailable(
                f"range {self.range_id}: read-index did not complete in {timeout}s (no quorum?)",
                retry_after=0.2,
            ) from None
        except NotLeaderNow:
            raise self.not_lease_holder() from None

    # --- scan fences (see rangekv.raftnode.fences) --------------------------------------

    async def _fence_batch(
        self, req: replica_pb2.ReplicaBatchRequest, release_at: Timestamp | None
    ) -> replica_pb2.ReplicaBatchResponse:
        """HOLD (no read timestamp) or RELEASE (at the read timestamp) each fence."""
        results = []
        now = self.ctx.clock.monotonic()
        for op in req.ops:
            f = op.fence
            start, end = self._clip(f.start_key, f.end_key)
            try:
                if release_at is None:
                    self.fences.hold(f.fence_id, start, end, f.hold_millis / 1000, now)
                    # A held fence keeps writes waiting on this lease: run awake (ticks,
                    # heartbeats) while it is held rather than on liveness alone.
                    self.group.wake_leader()
                    # Writes already proposed to the span apply first: none of them may
                    # land at or below the timestamp this range answers.
                    await self._await_inflight(start, end)
                    fenced_at = self.ctx.hlc.now()
                else:
                    self.fences.release(f.fence_id, release_at, now)
                    self.group.wake()  # writes that waited on the fence may go
                    fenced_at = release_at
            except E.FenceLost:
                self.ctx.refusals.add("fence_lost")
                raise
            except BaseException:
                if release_at is None:
                    self.fences.done(f.fence_id)
                    self.group.wake()
                raise
            results.append(
                replica_pb2.ReplicaOpResult(
                    fence=replica_pb2.FenceResult(
                        timestamp=ts_to_proto(fenced_at), start_key=start, end_key=end
                    )
                )
            )
        return self._answer(results)  # type: ignore[arg-type]

    async def _fenced_read_timestamp(
        self, req: replica_pb2.ReplicaBatchRequest, read_ts: Timestamp | None
    ) -> Timestamp:
        """The timestamp reads under `req.fence_id` are served at.

        With a read timestamp: the fence must be this leaseholder's, released at it
        (a fence still held is released now). Without: a scan of one range opens
        its fence here, at this replica's clock once the writes already proposed
        to the span have applied."""
        now = self.ctx.clock.monotonic()
        start, end = self._read_span(req)
        try:
            if read_ts is None:
                await self._await_inflight(start, end)
                read_ts = self.ctx.hlc.now()
                self.fences.open(req.fence_id, start, end, read_ts, self.ctx.clock.monotonic())
                return read_ts
            fence = self.fences.get(req.fence_id)
            if fence is not None and fence.state is FenceState.HELD:
                self.fences.release(req.fence_id, read_ts, now)
                self.group.wake()
            self.fences.check_read(req.fence_id, read_ts, start, end, now)
        except E.FenceLost:
            self.ctx.refusals.add("fence_lost")
            raise
        return read_ts

    def _maybe_end_fence(
        self,
        req: replica_pb2.ReplicaBatchRequest,
        results: list[replica_pb2.ReplicaOpResult | None],
    ) -> None:
        """The scan read the last page under its fence here: forget the fence."""
        _start, end = self._read_span(req)
        for res in results:
            if res is not None and res.WhichOneof("result") == "scan" and res.scan.resume_key:
                return
        fence = self.fences.get(req.fence_id)
        if fence is not None and fence.end == end:
            self.fences.done(req.fence_id)

    def _read_span(self, req: replica_pb2.ReplicaBatchRequest) -> tuple[bytes, bytes]:
        """The span the reads of `req` cover, clipped to the range."""
        starts, ends = [], []
        for op in req.ops:
            if op.WhichOneof("op") == "scan":
                start, end = self._clip(op.scan.start_key, op.scan.end_key)
            else:
                key = op_key(op)
                start, end = key, key + b"\x00"
            starts.append(start)
            ends.append(end)
        end = b"" if b"" in ends else max(ends)
        return min(starts), end

    def _clip(self, start: bytes, end: bytes) -> tuple[bytes, bytes]:
        desc = self.descriptor
        return max(start, desc.start_key), min_end(end, desc.end_key)

    async def _await_inflight(self, start: bytes, end: bytes) -> None:
        await self.writes.await_inflight(start, end, self.ctx.limits.write_timeout)

    # --- routing answers ----------------------------------------------------------------

    def _check_keys(self, req: replica_pb2.ReplicaBatchRequest) -> None:
        key = keys_outside(req, self.descriptor)
        if key is not None:
            raise self.key_mismatch(key)

    def key_mismatch(self, key: bytes) -> E.RangeKeyMismatch:
        """RangeKeyMismatch naming this replica's descriptor and, when this node
        holds the range that owns `key` (e.g. the right-hand side of a split
        that just applied), that range's descriptor too."""
        descs = [self.descriptor]
        lookup = self.ctx.descriptor_for_key
        other = lookup(key) if lookup is not None else None
        if other is not None and other.range_id != self.range_id:
            descs.append(other)
        return E.RangeKeyMismatch(self.range_id, tuple(descs))

    def not_lease_holder(self) -> E.NotLeaseHolder:
        lead = self.group.leader()
        leader = self.descriptor.replica_by_id(lead) if lead else None
        address = self.ctx.resolve_address(leader.node_id) if leader else ""
        return E.NotLeaseHolder(self.range_id, leader, address, self.group.term(), self.descriptor)

    def _require_leader(self) -> None:
        if not self.group.is_leader:
            raise self.not_lease_holder()

    # --- writes -------------------------------------------------------------------------

    async def _await_applied(self, fut: asyncio.Future[Any], what: str) -> Any:
        return await self.group.await_applied(
            fut,
            self.ctx.limits.write_timeout,
            f"range {self.range_id}: {what}",
            self.not_lease_holder,
        )

    async def _propose_writes(
        self, writes: list[replica_pb2.ReplicaOp], spans: SpanSet | None = None
    ) -> list[replica_pb2.ReplicaOpResult]:
        queued = self.queued_writes
        if queued + len(writes) > self.ctx.limits.max_queued_writes:
            self.ctx.refusals.add("overloaded")
            if self.ctx.host.faults.mutation is Mutation.REFUSED_WRITE_APPLIES:
                # TEST MUTATION: answer "nothing was written", and write it anyway.
                self.group.propose_part(writes).add_done_callback(retrieve_outcome)
            raise E.ResourceExhausted(
                f"range {self.range_id}: {queued} writes are queued and this batch holds "
                f"{len(writes)}, over the limit of {self.ctx.limits.max_queued_writes}; "
                "nothing was written, retry later",
                retry_after=0.05,
            )
        fut = self.group.propose_part(writes)
        if spans is None:
            results = await self._await_applied(fut, "write")
        else:
            # From the proposal (merged with concurrent batches into one raft
            # command) until it is committed by a quorum and applied here.
            attributes = {"rangekv.range_id": self.range_id, "rangekv.writes": len(writes)}
            with spans.child("raft.commit", attributes):
                results = await self._await_applied(fut, "write")
        if any(r is OUTSIDE_RANGE for r in results):
            # The command applied after a split took some of its keys away:
            # none of its writes were applied (all or nothing), so a retry is safe.
            raise self.key_mismatch(op_key(writes[0]))
        return results  # type: ignore[no-any-return]

    # --- transaction records --------------------------------------------------------------

    async def propose_txn_op(self, op: raftcmd_pb2.TxnOp) -> types_pb2.TxnRecord | None:
        """On the leaseholder: apply `op` through raft; returns the record afterwards
        (None: there is none). Raises NotLeaseHolder, RangeKeyMismatch, Unavailable."""
        self._require_leader()
        check_txn_id("txn.id", op.txn.id)
        if not self.descriptor.contains_key(op.txn.record_key):
            raise self.key_mismatch(op.txn.record_key)
        cmd = raftcmd_pb2.RaftCommand(timestamp=ts_to_proto(self.ctx.hlc.now()), txn_op=op)
        # A split's commit is published at once: each replica should apply it (and
        # create its right-hand replica) before the right-hand election reaches it.
        publish = op.HasField("split_right")
        result = await self._await_applied(
            self.group.propose(cmd.SerializeToString(), publish=publish), "txn record operation"
        )
        assert isinstance(result, TxnApplied)
        if result.outside:
            raise self.key_mismatch(op.txn.record_key)
        return result.record

    async def read_txn_record(self, meta: types_pb2.TxnMeta) -> types_pb2.TxnRecord | None:
        """The record as of now (leaseholder read: lease or read-index)."""
        if not self.descriptor.contains_key(meta.record_key):
            raise self.key_mismatch(meta.record_key)
        check_txn_id("txn.id", meta.id)
        await self._await_read_point()
        if not self.descriptor.contains_key(meta.record_key):
            raise self.key_mismatch(meta.record_key)
        raw = self.ctx.engine.get(txn_record_key(meta.record_key, meta.id))
        return types_pb2.TxnRecord.FromString(raw) if raw is not None else None

    def wait_change_applied(self, txn_id: bytes) -> asyncio.Future[RangeDescriptor]:
        """A future resolved with the new descriptor once the replica change
        `txn_id` is applied (and durable) on this replica."""
        fut: asyncio.Future[RangeDescriptor] = asyncio.get_running_loop().create_future()
        self._change_waiters[txn_id] = fut
        return fut

    def forget_change_waiter(self, txn_id: bytes) -> None:
        self._change_waiters.pop(txn_id, None)

    # --- garbage collection -------------------------------------------------------------

    def propose_gc(self) -> asyncio.Future[Any] | None:
        """On the leaseholder: propose collecting versions older than gc_ttl -- unless
        no write applied since the last GC's threshold (nothing new to collect; an
        idle range is not woken every gc_interval)."""
        if not self.group.is_leader:
            return None
        newest = self.state.newest_write
        if newest is not None and newest < self.state.gc_threshold:
            return None
        now = self.ctx.hlc.now()
        threshold = Timestamp(max(0, now.wall_time - int(self.ctx.limits.gc_ttl * 1e9)), 0)
        if threshold <= self.state.gc_threshold:
            return None
        cmd = raftcmd_pb2.RaftCommand(
            timestamp=ts_to_proto(now), gc_threshold=ts_to_proto(threshold)
        )
        return self.group.propose(cmd.SerializeToString())


def _resolve(fut: asyncio.Future[RangeDescriptor], value: RangeDescriptor) -> None:
    if not fut.done():
        fut.set_result(value)


def _ts_pb(ts: Timestamp | None) -> types_pb2.Timestamp:
    return ts_to_proto(ts) if ts is not None else types_pb2.Timestamp()
