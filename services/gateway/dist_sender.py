"""The DistSender: turn one key (or span) into calls to the right range's leaseholder.

Routing loop for one operation, until its deadline:
  1. look the key up in the descriptor cache (a miss costs one coalesced meta lookup);
  2. try the cached leaseholder first, then the other replicas;
  3. NotLeaseHolder -> trust the hint (RangeCache.maybe_update_leaseholder) and go
     to the hinted node at once, no backoff; RangeKeyMismatch -> evict the entry we
     routed with, insert the error's descriptors, re-route (usually zero lookups);
     RangeNotFound / unreachable -> next replica, then evict; Unavailable -> next
     replica, then capped exponential backoff with jitter;
  4. success -> maybe_confirm the entry.
A read that a replica does not answer within `read_attempt_timeout` (the
process is paused, or a cut link holds the request) is asked of the next
replica: a read has no effect, so asking twice is safe, and without this a
stopped leaseholder would hold every read until its caller's deadline. A
write is never re-sent that way: once sent it may still apply (a paused
leader that wakes up in time commits it), so it waits for its answer or its
deadline. A write whose outcome is unknown (the stream broke after it was
sent, or the node said so) is never retried: the caller gets UNAVAILABLE with
WRITE_OUTCOME_UNKNOWN. Running out of time gives DEADLINE_EXCEEDED (reads,
writes that never left) with a retry hint, never a hang.

Scans are one snapshot across ranges, read in pages at one MVCC timestamp
chosen from the ranges' own clocks under scan fences: see rangekv.gateway.scan
(the gateway's clock plays no part in it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from opentelemetry import trace

from rangekv.common import errors as E
from rangekv.common.descriptors import RangeDescriptor, ReplicaDescriptor
from rangekv.common.telemetry import end_span_with, traceparent
from rangekv.gateway.cache_types import EvictionReason, EvictionToken
from rangekv.gateway.node_client import BatchReply, NodeClients
from rangekv.gateway.range_cache import RangeCache
from rangekv.gateway.scan import ScanConfig, Scanner
from rangekv.v1 import replica_pb2, types_pb2


@dataclass
class RetryCounters:
    """Retries by reason and redirects; telemetry reads these."""

    retries: dict[str, int] = field(default_factory=dict)
    redirects: int = 0

    def retry(self, reason: str) -> None:
        self.retries[reason] = self.retries.get(reason, 0) + 1


class NodeDirectory:
    """node id -> address, from the store registry (refreshed on demand)."""

    def __init__(self, fetch: Callable[[], object], *, min_refresh: float = 0.5) -> None:
        self._fetch = fetch
        self._addresses: dict[int, str] = {}
        self._min_refresh = min_refresh
        self._last_refresh = 0.0
        self._refreshing: asyncio.Future[None] | None = None

    def set(self, node_id: int, address: str) -> None:
        if address:
            self._addresses[node_id] = address

    def get(self, node_id: int) -> str | None:
        return self._addresses.get(node_id)

    async def refresh(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_refresh < self._min_refresh:
            return
        if self._refreshing is not None and not self._refreshing.done():
            await asyncio.shield(self._refreshing)
            return
        self._refreshing = asyncio.get_running_loop().create_future()
        try:
            nodes = await self._fetch()  # type: ignore[misc]
            for status in nodes.nodes:
                self.set(status.node.node_id, status.node.address)
            self._last_refresh = time.monotonic()
        finally:
            self._refreshing.set_result(None)

    async def address(self, node_id: int) -> str | None:
        addr = self._addresses.get(node_id)
        if addr is None:
            try:
                await self.refresh()
            except E.RangeKVError:
                return None
            addr = self._addresses.get(node_id)
        return addr


#: Seconds a read waits for one replica before asking the next (see the docstring).
DEFAULT_READ_ATTEMPT_TIMEOUT = 1.5


class DistSender:
    def __init__(
        self,
        cache: RangeCache,
        nodes: NodeClients,
        directory: NodeDirectory,
        *,
        timeout: float = 10.0,
        backoff_initial: float = 0.02,
        backoff_max: float = 1.0,
        rng: random.Random | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        read_attempt_timeout: float = DEFAULT_READ_ATTEMPT_TIMEOUT,
        tracer: trace.Tracer | None = None,
        scan_config: ScanConfig | None = None,
    ) -> None:
        """`tracer`: None unless tracing is on (then each call to a node is a
        client span, its traceparent carried in the node batch)."""
        self.cache = cache
        self._tracer = tracer
        self.nodes = nodes
        self.directory = directory
        self.timeout = timeout
        if read_attempt_timeout <= 0:
            raise ValueError(f"read_attempt_timeout must be > 0, got {read_attempt_timeout}")
        self._read_attempt_timeout = read_attempt_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._rng = rng or random.Random()
        self._monotonic = monotonic
        self.counters = RetryCounters()
        self.scanner = Scanner(self, self, scan_config, rng=self._rng, monotonic=monotonic)

    # --- point operations ---------------------------------------------------------------

    async def send(
        self,
        key: bytes,
        op: replica_pb2.ReplicaOp,
        *,
        is_write: bool,
        inconsistent: bool = False,
        read_timestamp: types_pb2.Timestamp | None = None,
        timeout: float | None = None,
        fence_id: bytes = b"",
    ) -> BatchReply:
        """Run one operation on the range owning `key`; returns its reply.

        `fence_id`: the scan fence a read is served under (rangekv.gateway.scan)."""
        deadline = self._monotonic() + (timeout or self.timeout)
        backoff = self._backoff_initial
        last: E.RangeKVError | None = None
        # Leaseholders we were redirected to since the last backoff: a hint is
        # followed at once, but a hint we already followed (the lease is moving,
        # or the hinted node is down) waits for the backoff instead of spinning.
        followed: set[int] = set()
        while True:
            if self._monotonic() >= deadline:
                raise _out_of_time(last, is_write)
            try:
                entry, token = await self.cache.lookup(key)
            except E.Unavailable as err:
                # Meta had no descriptor for the key (not bootstrapped yet, or an
                # inconsistent read from a lagging replica) or was unreachable: nothing
                # was sent, so back off and look again until the deadline.
                outcome: BatchReply | E.RangeKVError = err
            else:
                outcome = await self._try_replicas(
                    token,
                    entry.routing_replicas(),
                    entry.leaseholder,
                    op,
                    is_write,
                    inconsistent,
                    read_timestamp,
                    deadline,
                    fence_id,
                )
            if isinstance(outcome, BatchReply):
                self.cache.maybe_confirm(token)
                return outcome
            last = outcome
            if isinstance(outcome, E.RangeKeyMismatch):
                continue  # the cache learned the new descriptors: re-route at once
            if isinstance(outcome, E.NotLeaseHolder) and outcome.leaseholder is not None:
                hinted = outcome.leaseholder.node_id
                if hinted not in followed:
                    followed.add(hinted)
                    continue  # a fresh hint: go there at once, no backoff
            followed.clear()
            delay = min(backoff, max(0.0, deadline - self._monotonic()))
            await asyncio.sleep(delay * (0.5 + self._rng.random()))
            backoff = min(backoff * 2, self._backoff_max)

    async def _try_replicas(
        self,
        token: EvictionToken,
        replicas: tuple[ReplicaDescriptor, ...],
        leaseholder: ReplicaDescriptor | None,
        op: replica_pb2.ReplicaOp,
        is_write: bool,
        inconsistent: bool,
        read_timestamp: types_pb2.Timestamp | None,
        deadline: float,
        fence_id: bytes = b"",
    ) -> BatchReply | E.RangeKVError:
        desc = token.descriptor
        order = list(replicas)
        if leaseholder is not None:
            order.sort(key=lambda r: r.node_id != leaseholder.node_id)
        not_found = unreachable = 0
        last: E.RangeKVError = E.Unavailable(f"range {desc.range_id}: no replica answered")
        for replica in order:
            address = await self.directory.address(replica.node_id)
            if address is None:
                unreachable += 1
                self.counters.retry("no_address")
                continue
            remaining = deadline - self._monotonic()
            if remaining <= 0:
                return last
            span: trace.Span | None = None
            parent = ""
            if self._tracer is not None:
                span = self._tracer.start_span(
                    "node.batch",
                    kind=trace.SpanKind.CLIENT,
                    attributes={
                        "rangekv.node_id": replica.node_id,
                        "rangekv.range_id": desc.range_id,
                        "rangekv.write": is_write,
                        "server.address": address,
                    },
                )
                parent = traceparent(span)
            submitted = self.nodes.submit(
                address,
                desc.range_id,
                [op],
                has_writes=is_write,
                inconsistent=inconsistent,
                read_timestamp=read_timestamp,
                traceparent=parent,
                fence_id=fence_id,
            )
            if span is not None:
                # The span lasts as long as the node call, even past our deadline.
                submitted.add_done_callback(functools.partial(end_span_with, span))
            wait = remaining if is_write else min(remaining, self._read_attempt_timeout)
            try:
                # On timeout wait_for cancels `submitted`: that gives up only this
                # caller's place (dropped from its batch if the batch has not left).
                return await asyncio.wait_for(submitted, wait)
            except TimeoutError:
                if is_write:
                    raise E.DeadlineExceeded(
                        "deadline exceeded while the write was in flight; it may or may not apply",
                        E.WriteOutcome.UNKNOWN,
                    ) from None
                if wait >= remaining:
                    return E.DeadlineExceeded("deadline exceeded")
                # A slow or stopped replica: ask the next one (module docstring).
                last = E.Unavailable(
                    f"range {desc.range_id}: node {replica.node_id} did not answer a read "
                    f"within {wait:.2f}s"
                )
                self.counters.retry("slow_replica")
            except E.NotLeaseHolder as err:
                self.counters.redirects += 1
                self.cache.maybe_update_leaseholder(token, err)
                last = err
                if err.leaseholder is None or err.leaseholder.node_id == replica.node_id:
                    continue  # no usable hint (an election is running): ask the next replica
                if err.leaseholder_address:
                    self.directory.set(err.leaseholder.node_id, err.leaseholder_address)
                return err
            except E.RangeKeyMismatch as err:
                self.counters.retry("range_key_mismatch")
                self.cache.maybe_evict_for_mismatch(token, err)
                return err
            except E.RangeNotFound as err:
                not_found += 1
                last = err
                self.counters.retry("range_not_found")
            except E.Unavailable as err:
                if is_write and err.outcome == E.WriteOutcome.UNKNOWN:
                    raise
                unreachable += 1
                last = err
                self.counters.retry("unavailable")
        if not_found == len(order):
            self.cache.maybe_evict(token, EvictionReason.RANGE_NOT_FOUND)
        elif unreachable + not_found == len(order) and unreachable:
            self.cache.maybe_evict(token, EvictionReason.UNREACHABLE)
            with contextlib.suppress(E.RangeKVError):
                await self.directory.refresh()
        return last

    # --- scans --------------------------------------------------------------------------

    def scan(
        self,
        start: bytes,
        end: bytes,
        limit: int,
        *,
        inconsistent: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[tuple[list[types_pb2.KeyValue], types_pb2.Timestamp]]:
        """Yield (kvs, read timestamp) chunks of [start, end) in key order: one
        snapshot across ranges (rangekv.gateway.scan)."""
        return self.scanner.scan(
            start, end, limit, inconsistent=inconsistent, timeout=timeout or self.timeout
        )

    async def lookup(self, key: bytes) -> RangeDescriptor:
        """The descriptor the cache routes `key` with (a scan's piece planning)."""
        entry, _token = await self.cache.lookup(key)
        return entry.descriptor


def _out_of_time(last: E.RangeKVError | None, is_write: bool) -> E.RangeKVError:
    why = last.message if last is not None else "no answer"
    return E.Unavailable(
        f"could not reach the range's leaseholder before the deadline: {why}",
        retry_after=0.5,
        outcome=E.WriteOutcome.NOT_APPLIED,
    )
