"""A replica of one range: raft group + MVCC state machine + lease-aware reads.

Reads, in order (DESIGN.md, consistency contract):
  1. a valid lease (leader, quorum ack younger than the lease, an applied entry
     of its own term, no transfer in flight) -> serve from the local applied
     state, no raft round trip;
  2. leader without a valid lease -> ONE read-index round trip for the whole
     batch (and concurrent batches share it: see RaftGroup.read_index);
  3. not leader -> NotLeaseHolder naming the leader this replica believes in.
A batch is checked once, whatever number of reads it carries: the failure of
reference text 003 (a read-index per storage read) cannot happen because no
read below this method asks raft anything.

Writes are proposed through raft and acknowledged after this replica applied
them. Concurrent client batches are merged into one raft command per scheduler
iteration (`before_drain`). CompareAndSwap is evaluated at apply, so it is
atomic with respect to every other write of the range.

Tracing (only when the context has a tracer AND the batch carries traceparents):
a `replica.batch` span in each caller's trace, with `raft.commit` (proposal
until applied here) or `read.lease` / `read.read_index` under it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from opentelemetry import trace

from rangekv.common import errors as E
from rangekv.common.descriptors import RangeDescriptor
from rangekv.common.hlc import ClockOffsetError, HybridClock, Timestamp
from rangekv.common.telemetry import SpanSet
from rangekv.raft import ConfChange, Entry, RawNode, Ready
from rangekv.raftnode import mvcc, txn
from rangekv.raftnode.fences import FenceLimits, FenceState, ScanFences
from rangekv.raftnode.keys import txn_record_key
from rangekv.replication.group import NotLeaderNow, RaftGroup
from rangekv.replication.mutations import Mutation
from rangekv.replication.state_engine import DESCRIPTOR as DESCRIPTOR_KIND
from rangekv.replication.state_engine import GC_THRESHOLD as GC_THRESHOLD_KIND
from rangekv.replication.state_engine import (
    AppliedState,
    Reader,
    StateBatch,
    StateEngine,
)
from rangekv.v1 import raftcmd_pb2, replica_pb2, types_pb2

log = logging.getLogger(__name__)

WRITE_KINDS = frozenset({"put", "delete", "compare_and_swap"})
READ_KINDS = frozenset({"get", "scan"})
#: Operations keyed by a span rather than a key.
SPAN_KINDS = frozenset({"scan", "fence"})
#: Span name of a consistent read's read point, by how it was obtained.
READ_SPANS: Final = {"hit": "read.lease", "readindex": "read.read_index"}


@dataclass(frozen=True, slots=True)
class ReplicaLimits:
    """Input limits and deadlines of the replica API."""

    max_key_bytes: int = 4096
    max_value_bytes: int = 1 << 20
    max_ops_per_batch: int = 10_000
    read_index_timeout: float = 2.0
    write_timeout: float = 5.0
    #: MVCC versions older than this (and shadowed) are garbage-collected.
    gc_ttl: float = 600.0
    #: One scan page: at most this many keys and about this many bytes.
    max_scan_page_rows: int = 10_000
    max_scan_page_bytes: int = 1 << 20
    #: Write operations queued on one replica (not yet proposed) before new
    #: writes are refused with RESOURCE_EXHAUSTED.
    max_queued_writes: int = 20_000
    #: Bytes one batch of reads may answer (bigger: ResourceExhausted, and the
    #: gateway splits the batch), so that no answer can break the shared stream.
    max_read_response_bytes: int = 16 << 20
    fences: FenceLimits = field(default_factory=FenceLimits)

    def __post_init__(self) -> None:
        if (
            min(
                self.max_key_bytes,
                self.max_value_bytes,
                self.max_ops_per_batch,
                self.max_scan_page_rows,
                self.max_scan_page_bytes,
                self.max_queued_writes,
            )
            <= 0
        ):
            raise ValueError("replica limits must be positive")


class ReadCounter(Protocol):
    """Counts consistent reads by outcome: hit | readindex | not_leader."""

    def add(self, outcome: str) -> None: ...


class ReadOutcomeCounter:
    """An in-memory ReadCounter (telemetry provides the exported one)."""

    def __init__(self) -> None:
        self.counts = {"hit": 0, "readindex": 0, "not_leader": 0}

    def add(self, outcome: str) -> None:
        self.counts[outcome] += 1


class RefusalCounter(Protocol):
    """Counts requests refused on purpose, by reason: clock_offset | overloaded | fence_lost."""

    def add(self, reason: str) -> None: ...


class Refusals:
    """An in-memory RefusalCounter (telemetry provides the exported one)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1


@dataclass
class ReplicaContext:
    """What every replica of a node shares."""

    node_id: int
    engine: StateEngine
    hlc: HybridClock
    limits: ReplicaLimits
    resolve_address: Callable[[int], str]
    monotonic: Callable[[], float] = time.monotonic
    reads: ReadCounter | None = None
    refusals: RefusalCounter = field(default_factory=Refusals)
    on_leader_change: Callable[[], None] | None = None
    #: Called (inside apply) when a split trigger narrows `replica` to `left`:
    #: the store writes the right-hand range's initial state into `batch` and
    #: creates its raft group once the batch is durable.
    on_split: (
        Callable[[RangeReplica, RangeDescriptor, RangeDescriptor, StateBatch], None] | None
    ) = None
    #: The descriptor of this node's replica holding a key, if any (for
    #: RangeKeyMismatch answers that name the right-hand side of a split).
    descriptor_for_key: Callable[[bytes], RangeDescriptor | None] | None = None
    #: Called (inside apply) when a replica change installs a new descriptor:
    #: the store refreshes the raft snapshot metadata (so a snapshot names a
    #: new learner) and destroys a replica that was removed.
    on_replica_change: Callable[[RangeReplica, RangeDescriptor], None] | None = None
    #: Ids of the replica change transactions this node coordinates right now:
    #: a push never aborts them (see rangekv.raftnode.change).
    active_txns: set[bytes] = field(default_factory=set)
    #: None unless tracing is on (Telemetry.active_tracer).
    tracer: trace.Tracer | None = None


def ts_to_proto(ts: Timestamp) -> types_pb2.Timestamp:
    return types_pb2.Timestamp(wall_time=ts.wall_time, logical=ts.logical)


def ts_from_proto(pb: types_pb2.Timestamp) -> Timestamp:
    return Timestamp(pb.wall_time, pb.logical)


class RangeReplica(RaftGroup):
    """One replica of one range on this node."""

    def __init__(
        self,
        ctx: ReplicaContext,
        descriptor: RangeDescriptor,
        replica_id: int,
        raw_node: RawNode,
        applied: AppliedState,
        *,
        wake: Callable[[RaftGroup], None],
    ) -> None:
        super().__init__(descriptor.range_id, raw_node, wake=wake)
        self.ctx = ctx
        self._descriptor = descriptor
        self.descriptor_pb = descriptor.to_proto()
        self.replica_id = replica_id
        self.applied_index = applied.index
        self._write_queue: list[tuple[list[replica_pb2.ReplicaOp], asyncio.Future[Any]]] = []
        #: Write operations in `_write_queue` (bounded by limits.max_queued_writes).
        self._queued_writes = 0
        #: Writes this leader proposed and has not applied yet, by proposal.
        self._inflight: dict[int, _Inflight] = {}
        self.fences = ScanFences(ctx.limits.fences)
        #: Ticks during which this replica keeps forcing an election while no
        #: leader is known (a split's right-hand side on the left leader's node).
        self._forced_campaign_ticks = 0
        raw_gc = ctx.engine.get_local(descriptor.range_id, GC_THRESHOLD_KIND)
        #: Reads below this timestamp are refused: their versions may be gone.
        self.gc_threshold = Timestamp.decode(raw_gc) if raw_gc else Timestamp.MIN
        #: Approximate bytes of the range's MVCC keys and values: None until the
        #: size estimator scanned it; then raised by every applied write.
        self.approx_size: int | None = None
        #: Replica change transactions applied in the current scheduler
        #: iteration, and the coordinators waiting for them (by txn id).
        self._changes_applied: list[bytes] = []
        self._change_waiters: dict[bytes, asyncio.Future[RangeDescriptor]] = {}

    @property
    def range_id(self) -> int:
        return self._descriptor.range_id

    @property
    def descriptor(self) -> RangeDescriptor:
        return self._descriptor

    @descriptor.setter
    def descriptor(self, value: RangeDescriptor) -> None:
        self._descriptor = value
        self.descriptor_pb = value.to_proto()

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
        kinds = self._validate(req)
        has_writes = any(k in WRITE_KINDS for k in kinds)
        has_reads = any(k in READ_KINDS for k in kinds)
        fencing = "fence" in kinds
        if has_writes and req.inconsistent:
            raise E.InvalidArgument("inconsistent", "only reads may be inconsistent")
        if fencing and (len(set(kinds)) > 1 or req.inconsistent or req.fence_id):
            raise E.InvalidArgument("ops", "fence operations go alone in a consistent batch")
        if req.fence_id and (has_writes or req.inconsistent):
            raise E.InvalidArgument("fence_id", "only consistent reads are served under a fence")
        self._check_keys(req)
        results: list[replica_pb2.ReplicaOpResult | None] = [None] * len(req.ops)
        read_ts = ts_from_proto(req.read_timestamp) if req.HasField("read_timestamp") else None
        if read_ts is not None:
            self._check_read_timestamp(read_ts)
            if not (req.inconsistent or req.fence_id or fencing):
                raise E.InvalidArgument(
                    "read_timestamp",
                    "a consistent read at a chosen timestamp is served under a scan fence "
                    "(fence_id); without one the node picks the timestamp",
                )
        if fencing:
            await self._await_read_point(spans)
            self._check_keys(req)
            return await self._fence_batch(req, read_ts)
        if has_reads:
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
                # One RocksDB iterator for the whole batch instead of one per read
                # (creating one costs about as much as the seek it serves). Nothing
                # is applied between these reads (no await), so it is the same view.
                with self.ctx.engine.snapshot() as view:
                    for i in reads:
                        results[i] = self._evaluate_read(req.ops[i], ts, view)
            if len(reads) > 1:
                self._check_answer_size(results)
            if req.fence_id:
                self._maybe_end_fence(req, results)
            read_ts = ts
        # Writes go last: every check that can fail a batch (read timestamp, read
        # point, key ranges) has passed before anything is proposed, so an error
        # answer never hides an applied write (which a retry would apply twice).
        if has_writes:
            self._require_leader()
            writes = [op for op in req.ops if op.WhichOneof("op") in WRITE_KINDS]
            write_results = await self._propose_writes(writes, spans)
            it = iter(write_results)
            for i, kind in enumerate(kinds):
                if kind in WRITE_KINDS:
                    results[i] = next(it)
        resp = replica_pb2.ReplicaBatchResponse(
            results=results,  # type: ignore[arg-type]
            descriptor=self.descriptor_pb,
            lease_sequence=self.raw_node.raft.term,
        )
        if read_ts is not None:
            resp.read_timestamp.CopyFrom(ts_to_proto(read_ts))
        return resp

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
        if read_ts < self.gc_threshold:
            raise E.InvalidArgument(
                "read_timestamp",
                f"{read_ts} is below the range's GC threshold {self.gc_threshold}",
            )
        try:
            self.ctx.hlc.check_offset(read_ts)
        except ClockOffsetError as exc:
            self.ctx.refusals.add("clock_offset")
            raise E.ClockOffset(
                ts_to_proto(read_ts), exc.local_physical_ns, exc.max_offset_ns, self.ctx.node_id
            ) from None

    # --- scan fences (see rangekv.raftnode.fences) --------------------------------------

    async def _fence_batch(
        self, req: replica_pb2.ReplicaBatchRequest, release_at: Timestamp | None
    ) -> replica_pb2.ReplicaBatchResponse:
        """HOLD (no read timestamp) or RELEASE (at the read timestamp) each fence."""
        results = []
        now = self.ctx.monotonic()
        for op in req.ops:
            f = op.fence
            start, end = self._clip(f.start_key, f.end_key)
            try:
                if release_at is None:
                    self.fences.hold(f.fence_id, start, end, f.hold_millis / 1000, now)
                    # Writes already proposed to the span apply first: none of them may
                    # land at or below the timestamp this range answers.
                    await self._await_inflight(start, end)
                    fenced_at = self.ctx.hlc.now()
                else:
                    self.fences.release(f.fence_id, release_at, now)
                    self._wake(self)  # writes that waited on the fence may go
                    fenced_at = release_at
            except E.FenceLost:
                self.ctx.refusals.add("fence_lost")
                raise
            except BaseException:
                if release_at is None:
                    self.fences.done(f.fence_id)
                    self._wake(self)
                raise
            results.append(
                replica_pb2.ReplicaOpResult(
                    fence=replica_pb2.FenceResult(
                        timestamp=ts_to_proto(fenced_at), start_key=start, end_key=end
                    )
                )
            )
        return replica_pb2.ReplicaBatchResponse(
            results=results,
            descriptor=self.descriptor_pb,
            lease_sequence=self.raw_node.raft.term,
        )

    async def _fenced_read_timestamp(
        self, req: replica_pb2.ReplicaBatchRequest, read_ts: Timestamp | None
    ) -> Timestamp:
        """The timestamp reads under `req.fence_id` are served at.

        With a read timestamp: the fence must be this leaseholder's, released at it
        (a fence still held is released now). Without: a scan of one range opens
        its fence here, at this replica's clock once the writes already proposed
        to the span have applied."""
        now = self.ctx.monotonic()
        start, end = self._read_span(req)
        try:
            if read_ts is None:
                await self._await_inflight(start, end)
                read_ts = self.ctx.hlc.now()
                self.fences.open(req.fence_id, start, end, read_ts, self.ctx.monotonic())
                return read_ts
            fence = self.fences.get(req.fence_id)
            if fence is not None and fence.state is FenceState.HELD:
                self.fences.release(req.fence_id, read_ts, now)
                self._wake(self)
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
            kind = op.WhichOneof("op")
            if kind == "scan":
                start, end = self._clip(op.scan.start_key, op.scan.end_key)
            else:
                key = getattr(op, kind).key  # type: ignore[arg-type]
                start, end = key, key + b"\x00"
            starts.append(start)
            ends.append(end)
        end = b"" if b"" in ends else max(ends)
        return min(starts), end

    def _clip(self, start: bytes, end: bytes) -> tuple[bytes, bytes]:
        desc = self.descriptor
        return max(start, desc.start_key), _min_end(end, desc.end_key)

    async def _await_inflight(self, start: bytes, end: bytes) -> None:
        """Wait until every write this leader proposed to [start, end) is applied (or
        failed): reads that follow must not miss a write that lands below them."""
        waiting = [w.future for w in self._inflight.values() if w.overlaps(start, end)]
        if not waiting:
            return
        timeout = self.ctx.limits.write_timeout
        _done, pending = await asyncio.wait(waiting, timeout=timeout)
        if pending:
            raise E.Unavailable(
                f"range {self.range_id}: writes proposed before this scan did not apply "
                f"within {timeout}s",
                retry_after=0.2,
            )

    # --- validation and routing checks -------------------------------------------------

    def _validate(self, req: replica_pb2.ReplicaBatchRequest) -> list[str]:
        limits = self.ctx.limits
        if not req.ops:
            raise E.InvalidArgument("ops", "a batch needs at least one operation")
        if len(req.ops) > limits.max_ops_per_batch:
            raise E.InvalidArgument("ops", f"at most {limits.max_ops_per_batch} operations")
        kinds: list[str] = []
        for i, op in enumerate(req.ops):
            kind = op.WhichOneof("op")
            if kind is None:
                raise E.InvalidArgument(f"ops[{i}]", "operation not set")
            body = getattr(op, kind)
            if kind in SPAN_KINDS:
                if kind == "scan" and (body.limit < 0 or body.max_bytes < 0):
                    raise E.InvalidArgument(f"ops[{i}].scan", "limit and max_bytes must be >= 0")
                if body.end_key and body.end_key <= body.start_key:
                    raise E.InvalidArgument(f"ops[{i}].{kind}.end_key", "must be > start_key")
                if kind == "fence" and not 8 <= len(body.fence_id) <= 64:
                    raise E.InvalidArgument(f"ops[{i}].fence.fence_id", "must be 8 to 64 bytes")
            else:
                _check_key(f"ops[{i}].{kind}.key", body.key, limits)
            if kind == "put":
                _check_value(f"ops[{i}].put.value", body.value, limits)
            elif kind == "compare_and_swap":
                _check_value(f"ops[{i}].compare_and_swap.new_value", body.new_value, limits)
                _check_value(
                    f"ops[{i}].compare_and_swap.expected_value", body.expected_value, limits
                )
            kinds.append(kind)
        if req.fence_id and not 8 <= len(req.fence_id) <= 64:
            raise E.InvalidArgument("fence_id", "must be 8 to 64 bytes")
        return kinds

    def _check_keys(self, req: replica_pb2.ReplicaBatchRequest) -> None:
        desc = self.descriptor
        for op in req.ops:
            kind = op.WhichOneof("op")
            body = getattr(op, kind)  # type: ignore[arg-type]
            if kind in SPAN_KINDS:
                ok = desc.contains_key(body.start_key) or (
                    body.start_key < desc.start_key and desc.overlaps(body.start_key, body.end_key)
                )
            else:
                ok = desc.contains_key(body.key)
            if not ok:
                raise self.key_mismatch(body.start_key if kind in SPAN_KINDS else body.key)

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
        lead = self.raw_node.leader()
        leader = self.descriptor.replica_by_id(lead) if lead else None
        address = self.ctx.resolve_address(leader.node_id) if leader else ""
        term = self.raw_node.raft.term
        return E.NotLeaseHolder(self.range_id, leader, address, term, self.descriptor)

    def _require_leader(self) -> None:
        if not self.raw_node.is_leader():
            raise self.not_lease_holder()

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
        try:
            await self.await_read_point(
                self.ctx.monotonic(), self.ctx.limits.read_index_timeout, count
            )
        except TimeoutError:
            raise E.Unavailable(
                f"range {self.range_id}: read-index did not complete in "
                f"{self.ctx.limits.read_index_timeout}s (no quorum?)",
                retry_after=0.2,
            ) from None
        except NotLeaderNow:
            raise self.not_lease_holder() from None

    # --- reads --------------------------------------------------------------------------

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

    # --- writes -------------------------------------------------------------------------

    async def _await_applied(self, fut: asyncio.Future[Any], what: str) -> Any:
        return await self.await_applied(
            fut,
            self.ctx.limits.write_timeout,
            f"range {self.range_id}: {what}",
            self.not_lease_holder,
        )

    async def _propose_writes(
        self, writes: list[replica_pb2.ReplicaOp], spans: SpanSet | None = None
    ) -> list[replica_pb2.ReplicaOpResult]:
        queued = self._queued_writes + len(writes)
        if queued > self.ctx.limits.max_queued_writes:
            self.ctx.refusals.add("overloaded")
            raise E.ResourceExhausted(
                f"range {self.range_id}: {self._queued_writes} writes are queued; retry later",
                retry_after=0.05,
            )
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._write_queue.append((writes, fut))
        self._queued_writes = queued
        self._wake(self)
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
            key = next(getattr(op, op.WhichOneof("op")).key for op in writes)  # type: ignore[arg-type]
            raise self.key_mismatch(key)
        return results  # type: ignore[no-any-return]

    def before_drain(self) -> None:
        """Merge every queued client write batch into ONE raft command.

        Scan fences (rangekv.raftnode.fences) decide two things here, in the
        scheduler's section, so nothing can slip between the check and the
        proposal: a batch touching a span whose fence is HELD stays queued, and
        the command's version base lies above the read timestamp of every
        RELEASED fence covering one of its keys."""
        if self._forced_campaign_ticks and self.pending_ticks:
            self._maybe_force_campaign()
        fences = self.fences
        if len(fences):
            fences.expire(self.ctx.monotonic())  # a lapsed hold frees what it blocked
        if self.mutation is Mutation.NO_SCAN_FENCE:
            fences = _NO_FENCES  # TEST MUTATION: writes ignore every scan fence
        if not self._write_queue:
            return
        queued, self._write_queue = self._write_queue, []
        ready: list[tuple[list[replica_pb2.ReplicaOp], asyncio.Future[Any]]] = []
        keys: list[bytes] = []
        for ops, fut in queued:
            if fut.done():  # the caller gave up; nothing was proposed for it
                self._queued_writes -= len(ops)
                continue
            op_keys = [getattr(op, op.WhichOneof("op")).key for op in ops]  # type: ignore[arg-type]
            if fences.any_held and fences.blocks(op_keys):
                self._write_queue.append((ops, fut))
                continue
            ready.append((ops, fut))
            keys.extend(op_keys)
            self._queued_writes -= len(ops)
        if not ready:
            return
        base = self.ctx.hlc.now()
        floor = fences.floor(keys)
        if floor >= base:
            base = floor.next()
            self.ctx.hlc.forward(base)
        cmd = raftcmd_pb2.RaftCommand(timestamp=ts_to_proto(base))
        spans = []
        for ops, fut in ready:
            spans.append((len(cmd.writes), len(ops), fut))
            cmd.writes.extend(ops)
        proposal = self.propose(cmd.SerializeToString())
        if self.mutation is not Mutation.NO_SCAN_FENCE:
            key = id(proposal)
            self._inflight[key] = _Inflight(proposal, min(keys), max(keys), frozenset(keys))
            proposal.add_done_callback(functools.partial(self._landed, key))

        def distribute(done: asyncio.Future[Any]) -> None:
            exc = done.exception()
            for start, count, fut in spans:
                if fut.done():
                    continue
                if exc is not None:
                    fut.set_exception(exc)
                else:
                    fut.set_result(done.result()[start : start + count])

        proposal.add_done_callback(distribute)

    def force_campaign(self, ticks: int) -> None:
        """Win this new range's first election at once (see Store._create_split_rhs
        for why that is safe for a split's right-hand side on the left leader's
        node): force an election now, and again every other tick while no leader
        is known, for `ticks` ticks (a vote can reach a peer that has not applied
        the split yet, which drops it)."""
        self._forced_campaign_ticks = ticks
        self.raw_node.campaign(force=True)
        self._wake(self)

    def _maybe_force_campaign(self) -> None:
        self._forced_campaign_ticks = max(0, self._forced_campaign_ticks - self.pending_ticks)
        node = self.raw_node
        if node.leader() or node.is_leader():
            self._forced_campaign_ticks = 0
        elif self._forced_campaign_ticks % 2 == 0:
            node.campaign(force=True)

    def _landed(self, key: int, _proposal: asyncio.Future[Any]) -> None:
        self._inflight.pop(key, None)

    def apply_command(self, entry: Entry, command: bytes, batch: StateBatch) -> Any:
        cmd = raftcmd_pb2.RaftCommand.FromString(command)
        reader = batch.reader()
        base = ts_from_proto(cmd.timestamp)
        results: list[replica_pb2.ReplicaOpResult] = []
        if cmd.HasField("gc_threshold"):
            self._apply_gc(ts_from_proto(cmd.gc_threshold), batch)
        if cmd.HasField("txn_op"):
            return self._apply_txn_op(cmd.txn_op, base, reader, batch)
        desc = self.descriptor
        if not all(desc.contains_key(getattr(op, op.WhichOneof("op")).key) for op in cmd.writes):  # type: ignore[arg-type]
            # Proposed before a split that applied first: keys of another range now.
            return [OUTSIDE_RANGE] * len(cmd.writes)
        for i, op in enumerate(cmd.writes):
            results.append(
                self._apply_write(op, Timestamp(base.wall_time, base.logical + i), reader, batch)
            )
        return results

    def _apply_write(
        self, op: replica_pb2.ReplicaOp, ts: Timestamp, reader: Reader, batch: StateBatch
    ) -> replica_pb2.ReplicaOpResult:
        kind = op.WhichOneof("op")
        key = getattr(op, kind).key  # type: ignore[arg-type]
        current, latest = mvcc.get(reader, key, Timestamp.MAX)
        if latest is not None and latest >= ts:
            ts = latest.next()
        self.ctx.hlc.forward(ts)
        if self.approx_size is not None:
            value = op.put.value if kind == "put" else op.compare_and_swap.new_value
            self.approx_size += len(key) + len(value) + VERSION_OVERHEAD
        if kind == "put":
            mvcc.put(batch, key, op.put.value, ts)
            return replica_pb2.ReplicaOpResult(put=replica_pb2.PutResult(version=_ts_pb(ts)))
        if kind == "delete":
            if current is None:
                return replica_pb2.ReplicaOpResult(delete=replica_pb2.DeleteResult(deleted=False))
            mvcc.delete(batch, key, ts)
            return replica_pb2.ReplicaOpResult(
                delete=replica_pb2.DeleteResult(deleted=True, version=_ts_pb(ts))
            )
        cas = op.compare_and_swap
        expected = None if cas.expect_absent else cas.expected_value
        if current != expected:
            res = replica_pb2.CompareAndSwapResult(succeeded=False)
            if current is not None:
                res.current.CopyFrom(
                    types_pb2.KeyValue(key=key, value=current, version=_ts_pb(latest))
                )
            return replica_pb2.ReplicaOpResult(compare_and_swap=res)
        mvcc.put(batch, key, cas.new_value, ts)
        return replica_pb2.ReplicaOpResult(
            compare_and_swap=replica_pb2.CompareAndSwapResult(
                succeeded=True,
                current=types_pb2.KeyValue(key=key, value=cas.new_value, version=_ts_pb(ts)),
            )
        )

    # --- transaction records ------------------------------------------------------------

    def _apply_txn_op(
        self, op: raftcmd_pb2.TxnOp, ts: Timestamp, reader: Reader, batch: StateBatch
    ) -> TxnApplied:
        """Apply one transaction-record operation (deterministic: see txn.py)."""
        desc = self.descriptor
        if not desc.contains_key(op.txn.record_key) or len(op.txn.id) != TXN_ID_LEN:
            return TxnApplied(None, outside=True)
        key = txn_record_key(op.txn.record_key, op.txn.id)
        raw = reader.get(key)
        existing = types_pb2.TxnRecord.FromString(raw) if raw is not None else None
        left = right = None
        split_ok = True
        if op.kind == txn.COMMIT and op.HasField("split_left"):
            try:
                left = RangeDescriptor.from_proto(op.split_left)
                right = RangeDescriptor.from_proto(op.split_right)
            except ValueError:  # malformed descriptors: never a valid split (apply never raises)
                split_ok = False
            else:
                split_ok = txn.split_matches(desc, left, right)
        decision = txn.decide(op, existing, ts.wall_time, split_ok=split_ok)
        if decision.write and decision.record is not None:
            batch.put(key, decision.record.SerializeToString())
        if decision.split:
            assert left is not None and right is not None
            self._apply_split(left, right, batch)
        return TxnApplied(decision.record)

    def _apply_split(
        self, left: RangeDescriptor, right: RangeDescriptor, batch: StateBatch
    ) -> None:
        """The split trigger: this range becomes `left`; the store creates `right`."""
        self.descriptor = left
        self.save_descriptor(batch)
        self.approx_size = None  # both halves are re-estimated
        if self.ctx.on_split is not None:
            self.ctx.on_split(self, left, right, batch)

    async def propose_txn_op(self, op: raftcmd_pb2.TxnOp) -> types_pb2.TxnRecord | None:
        """On the leaseholder: apply `op` through raft; returns the record afterwards
        (None: there is none). Raises NotLeaseHolder, RangeKeyMismatch, Unavailable."""
        self._require_leader()
        if len(op.txn.id) != TXN_ID_LEN:
            raise E.InvalidArgument("txn.id", f"must be {TXN_ID_LEN} bytes")
        if not self.descriptor.contains_key(op.txn.record_key):
            raise self.key_mismatch(op.txn.record_key)
        cmd = raftcmd_pb2.RaftCommand(timestamp=ts_to_proto(self.ctx.hlc.now()), txn_op=op)
        result = await self._await_applied(
            self.propose(cmd.SerializeToString()), "txn record operation"
        )
        assert isinstance(result, TxnApplied)
        if result.outside:
            raise self.key_mismatch(op.txn.record_key)
        return result.record

    async def read_txn_record(self, meta: types_pb2.TxnMeta) -> types_pb2.TxnRecord | None:
        """The record as of now (leaseholder read: lease or read-index)."""
        if not self.descriptor.contains_key(meta.record_key):
            raise self.key_mismatch(meta.record_key)
        if len(meta.id) != TXN_ID_LEN:
            raise E.InvalidArgument("txn.id", f"must be {TXN_ID_LEN} bytes")
        await self._await_read_point()
        if not self.descriptor.contains_key(meta.record_key):
            raise self.key_mismatch(meta.record_key)
        raw = self.ctx.engine.get(txn_record_key(meta.record_key, meta.id))
        return types_pb2.TxnRecord.FromString(raw) if raw is not None else None

    # --- replica changes --------------------------------------------------------------

    def apply_conf_change(self, entry: Entry, cc: ConfChange, batch: StateBatch) -> None:
        """A replica change commits (every replica alike): the entry's context
        carries the transaction and the new descriptor; the record becomes
        COMMITTED and the descriptor is installed in the same batch. The raft
        core has already changed its membership (rangekv.replication.group)."""
        if not cc.context:
            return
        try:
            ctx = raftcmd_pb2.ReplicaChangeContext.FromString(cc.context)
            new = RangeDescriptor.from_proto(ctx.descriptor)
        except Exception:  # malformed context: never proposed by us; apply never raises
            log.error("range %d: conf change at %d with a bad context", self.range_id, entry.index)
            return
        if new.range_id != self.range_id or new.generation <= self.descriptor.generation:
            return
        meta = ctx.txn
        if len(meta.id) == TXN_ID_LEN and self.descriptor.contains_key(meta.record_key):
            key = txn_record_key(meta.record_key, meta.id)
            raw = batch.reader().get(key)
            rec = types_pb2.TxnRecord.FromString(raw) if raw is not None else None
            if rec is not None and rec.status == txn.PENDING:
                done = types_pb2.TxnRecord()
                done.CopyFrom(rec)
                done.status = txn.COMMITTED
                batch.put(key, done.SerializeToString())
            elif rec is None or rec.status != txn.COMMITTED:
                # Cannot happen while pushes never abort a running change (see
                # change.py); the membership changed regardless, so the
                # descriptor must follow it.
                log.error(
                    "range %d: replica change %s applied over a record that is not PENDING",
                    self.range_id,
                    meta.id.hex(),
                )
        self.descriptor = new
        self.save_descriptor(batch)
        self._changes_applied.append(bytes(meta.id))
        if self.ctx.on_replica_change is not None:
            self.ctx.on_replica_change(self, new)

    def wait_change_applied(self, txn_id: bytes) -> asyncio.Future[RangeDescriptor]:
        """A future resolved with the new descriptor once the replica change
        `txn_id` is applied (and durable) on this replica."""
        fut: asyncio.Future[RangeDescriptor] = asyncio.get_running_loop().create_future()
        self._change_waiters[txn_id] = fut
        return fut

    def forget_change_waiter(self, txn_id: bytes) -> None:
        self._change_waiters.pop(txn_id, None)

    def after_advance(self, rd: Ready) -> None:
        super().after_advance(rd)
        if self._changes_applied:
            applied, self._changes_applied = self._changes_applied, []
            for txn_id in applied:
                fut = self._change_waiters.pop(txn_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(self.descriptor)

    def on_soft_state(self, rd: Any) -> None:
        # Fences die with the lease: a later leaseholder knows nothing of them, so a
        # read under one must be refused (it would not see writes made meanwhile).
        self.fences.clear()
        if self.ctx.on_leader_change is not None:
            self.ctx.on_leader_change()

    def _apply_gc(self, threshold: Timestamp, batch: StateBatch) -> None:
        """Drop versions no read at or above `threshold` can see (deterministic:
        every replica scans the same applied state)."""
        if threshold <= self.gc_threshold:
            return
        desc = self.descriptor
        mvcc.gc(self.ctx.engine, batch, threshold, desc.start_key, desc.end_key)
        batch.put_local(self.range_id, GC_THRESHOLD_KIND, threshold.encode())
        self.gc_threshold = threshold

    def propose_gc(self) -> asyncio.Future[Any] | None:
        """On the leaseholder: propose collecting versions older than gc_ttl."""
        if not self.raw_node.is_leader():
            return None
        now = self.ctx.hlc.now()
        threshold = Timestamp(max(0, now.wall_time - int(self.ctx.limits.gc_ttl * 1e9)), 0)
        if threshold <= self.gc_threshold:
            return None
        cmd = raftcmd_pb2.RaftCommand(
            timestamp=ts_to_proto(now), gc_threshold=ts_to_proto(threshold)
        )
        return self.propose(cmd.SerializeToString())

    def record_applied(self, index: int, term: int, batch: StateBatch) -> None:
        batch.set_applied_state(self.range_id, AppliedState(index, term))

    def save_descriptor(self, batch: StateBatch) -> None:
        batch.put_local(
            self.range_id, DESCRIPTOR_KIND, self.descriptor.to_proto().SerializeToString()
        )


#: TEST MUTATION no_scan_fence: the fences writes see (none).
_NO_FENCES: Final = ScanFences()

#: What a command's writes answer when the range no longer holds their keys.
OUTSIDE_RANGE: Final = object()
#: Bytes a stored MVCC version adds to its user key and value (prefix, escaping, timestamp).
VERSION_OVERHEAD: Final = 16
TXN_ID_LEN: Final = 16


@dataclass(frozen=True, slots=True)
class _Inflight:
    """A proposed write command: its keys, and its future (done once applied here)."""

    future: asyncio.Future[Any]
    low: bytes
    high: bytes
    keys: frozenset[bytes]

    def overlaps(self, start: bytes, end: bytes) -> bool:
        if self.high < start or (end and self.low >= end):
            return False
        return any(start <= k and (not end or k < end) for k in self.keys)


@dataclass(frozen=True, slots=True)
class TxnApplied:
    """What a txn-record command answers its proposer."""

    record: types_pb2.TxnRecord | None
    outside: bool = False


def _ts_pb(ts: Timestamp | None) -> types_pb2.Timestamp:
    return ts_to_proto(ts) if ts is not None else types_pb2.Timestamp()


def _min_end(a: bytes, b: bytes) -> bytes:
    """The smaller of two exclusive ends, where empty means unbounded."""
    if not a:
        return b
    if not b:
        return a
    return min(a, b)


def _check_key(field: str, key: bytes, limits: ReplicaLimits) -> None:
    if not key:
        raise E.InvalidArgument(field, "must not be empty")
    if len(key) > limits.max_key_bytes:
        raise E.InvalidArgument(
            field, f"{len(key)} bytes exceeds the limit of {limits.max_key_bytes}"
        )


def _check_value(field: str, value: bytes, limits: ReplicaLimits) -> None:
    if len(value) > limits.max_value_bytes:
        raise E.InvalidArgument(
            field, f"{len(value)} bytes exceeds the limit of {limits.max_value_bytes}"
        )
