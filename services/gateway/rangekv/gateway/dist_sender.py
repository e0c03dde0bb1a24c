"""The DistSender: turn one key (or span) into calls to the right range's leaseholder.

Routing loop for one operation, until its deadline (the rules are tabled in
OVERVIEW.md beside this file; the replica-level ones live in
:mod:`rangekv.gateway.retry_policy`):
  1. look the key up in the descriptor cache (a miss costs one coalesced meta
     lookup; the lookup is bounded by the deadline);
  2. one pass over the range's replicas, the cached leaseholder first, each
     replica once: NotLeaseHolder -> the cache learns the hint; a redirect to a
     higher lease sequence than the request has seen is followed at once, a hint
     the cache did not take means the next replica, a lagging leaseholder is
     asked again only a bounded number of times; RangeNotFound / unreachable ->
     the next replica;
  3. RangeKeyMismatch, or RangeNotFound from every replica, proves the routed
     descriptor wrong: it is evicted and the next lookup must find a newer one,
     re-reading meta at its leader when an inconsistent read finds nothing newer
     (rule R); if even that is no newer, the request backs off before using it;
  4. any pass that ends without an answer and without new information backs off
     (capped exponential with jitter, seeded rng); success -> maybe_confirm the
     entry, and a consistent answer names its replica as leaseholder.
A read that a replica does not answer within `read_attempt_timeout` (the
process is paused, or a cut link holds the request) is asked of the next
replica: a read has no effect, so asking twice is safe, and without this a
stopped leaseholder would hold every read until its caller's deadline. A
write is never re-sent that way: once sent it may still apply (a paused
leader that wakes up in time commits it), so it waits for its answer or its
deadline, and a write still in flight at the deadline gives DEADLINE_EXCEEDED
with WRITE_OUTCOME_UNKNOWN. A write whose outcome is unknown (the stream broke
after it was sent, or the node said so) is never retried: the caller gets
UNAVAILABLE with WRITE_OUTCOME_UNKNOWN. Running out of time with nothing in
flight (every attempt was refused or never left) gives UNAVAILABLE with
WRITE_OUTCOME_NOT_APPLIED and a retry hint, never a hang.

Scans are one snapshot across ranges, read in pages at one MVCC timestamp
chosen from the ranges' own clocks under scan fences: see rangekv.gateway.scan
(the gateway's clock plays no part in it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from opentelemetry import trace

from rangekv.common import errors as E
from rangekv.common.clock import Clock, SystemClock
from rangekv.common.descriptors import RangeDescriptor, ReplicaDescriptor
from rangekv.common.telemetry import end_span_with, traceparent
from rangekv.gateway.cache_types import EvictionReason, EvictionToken, mismatch_reason
from rangekv.gateway.node_client import BatchReply, NodeBatches
from rangekv.gateway.range_cache import RangeCache
from rangekv.gateway.retry_policy import ReplicaOrder, RouteState, after_not_lease_holder
from rangekv.gateway.scan import ScanConfig, Scanner
from rangekv.v1 import replica_pb2, types_pb2


@dataclass
class RetryCounters:
    """Retries and backoffs by reason, and redirects followed; telemetry reads these.

    Retry reasons: what made a replica not answer (``no_address``,
    ``slow_replica``, ``unavailable``, ``range_not_found``,
    ``range_key_mismatch``, ``mismatch_unchanged``, and the NotLeaseHolder
    kinds of :mod:`rangekv.gateway.retry_policy`). Backoff reasons: why a
    request waited (``meta_lookup``, ``stale_descriptor``, ``unreachable``,
    ``lagging_replica``, ``lease_not_newer``, ``redirect_limit``, or the last
    retry reason of a pass that ended without an answer).
    """

    retries: dict[str, int] = field(default_factory=dict)
    backoffs: dict[str, int] = field(default_factory=dict)
    redirects: int = 0

    def retry(self, reason: str) -> None:
        self.retries[reason] = self.retries.get(reason, 0) + 1

    def backoff(self, reason: str) -> None:
        self.backoffs[reason] = self.backoffs.get(reason, 0) + 1


class NodeDirectory:
    """node id -> address, from the store registry (refreshed on demand)."""

    def __init__(
        self, fetch: Callable[[], object], *, min_refresh: float = 0.5, clock: Clock | None = None
    ) -> None:
        self._fetch = fetch
        self._clock: Clock = clock if clock is not None else SystemClock()
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
        now = self._clock.monotonic()
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
            self._last_refresh = self._clock.monotonic()
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


@dataclass(frozen=True, slots=True)
class _Served:
    """A pass that got an answer: from `replica` at `address`, routed with `token`."""

    reply: BatchReply
    token: EvictionToken
    replica: ReplicaDescriptor
    address: str


@dataclass(frozen=True, slots=True)
class _Op:
    """What one routed operation asks of a replica."""

    op: replica_pb2.ReplicaOp
    is_write: bool
    inconsistent: bool
    read_timestamp: types_pb2.Timestamp | None
    fence_id: bytes


@dataclass(slots=True)
class _Pass:
    """One pass over a range's replicas: the route it follows and what it met so far."""

    token: EvictionToken
    order: ReplicaOrder
    last: E.RangeKVError
    tried: int = 0
    not_found: int = 0
    unreachable: int = 0
    #: Why the last replica did not answer (the backoff reason if the pass fails).
    reason: str = "no_replica"


@dataclass(frozen=True, slots=True)
class _Failed:
    """A pass without an answer; `backoff` names why to wait first (None: go on at once)."""

    error: E.RangeKVError
    backoff: str | None


class DistSender:
    def __init__(
        self,
        cache: RangeCache,
        nodes: NodeBatches,
        directory: NodeDirectory,
        *,
        timeout: float = 10.0,
        backoff_initial: float = 0.02,
        backoff_max: float = 1.0,
        rng: random.Random | None = None,
        clock: Clock | None = None,
        read_attempt_timeout: float = DEFAULT_READ_ATTEMPT_TIMEOUT,
        tracer: trace.Tracer | None = None,
        scan_config: ScanConfig | None = None,
    ) -> None:
        """`tracer`: None unless tracing is on (then each call to a node is a
        client span, its traceparent carried in the node batch). `rng` jitters
        the backoff and `clock` times deadlines and waits backoffs out (both
        default to the system's; tests pass their own)."""
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
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError(
                f"need 0 < backoff_initial <= backoff_max, got {backoff_initial}, {backoff_max}"
            )
        self._rng = rng if rng is not None else random.Random()
        self._clock: Clock = clock if clock is not None else SystemClock()
        self.counters = RetryCounters()
        self.scanner = Scanner(self, self, scan_config, rng=self._rng, clock=self._clock)

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
        req = _Op(op, is_write, inconsistent, read_timestamp, fence_id)
        deadline = self._clock.monotonic() + (timeout or self.timeout)
        state = RouteState()
        last: E.RangeKVError | None = None
        while True:
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                raise _out_of_time(last, is_write)
            try:
                # A plain hit needs no task; a miss waits for meta at most until the deadline.
                found = self.cache.hit(key, stale=state.stale)
                if found is None:
                    lookup = self.cache.lookup(key, stale=state.stale)
                    found = await asyncio.wait_for(lookup, remaining)
                entry, token = found
            except TimeoutError:
                slow = E.Unavailable("the meta range did not answer the lookup in time")
                raise _out_of_time(last or slow, is_write) from None
            except E.Unavailable as err:
                # Meta had no descriptor for the key (not bootstrapped yet, or an
                # inconsistent read from a lagging replica) or was unreachable: nothing
                # was sent, so back off and look again until the deadline.
                last = err
                await self._back_off(state, "meta_lookup", deadline)
                continue
            if state.stale is not None and entry.generation <= state.stale.generation:
                # Rule R: even meta's leader names nothing newer than what just failed.
                await self._back_off(state, "stale_descriptor", deadline)
            state.stale = None
            outcome = await self._try_replicas(token, state, req, deadline)
            if isinstance(outcome, _Served):
                self.cache.maybe_confirm(outcome.token)
                if not inconsistent:  # only the leaseholder answers a consistent request
                    self.cache.maybe_learn_leaseholder(
                        outcome.token,
                        outcome.replica,
                        outcome.address,
                        outcome.reply.lease_sequence,
                    )
                return outcome.reply
            last = outcome.error
            if outcome.backoff is not None:
                await self._back_off(state, outcome.backoff, deadline)

    async def _back_off(self, state: RouteState, reason: str, deadline: float) -> None:
        self.counters.backoff(reason)
        remaining = deadline - self._clock.monotonic()
        initial, maximum = self._backoff_initial, self._backoff_max
        await self._clock.sleep(state.next_backoff(initial, maximum, self._rng, remaining))

    async def _try_replicas(
        self, token: EvictionToken, state: RouteState, req: _Op, deadline: float
    ) -> _Served | _Failed:
        """One pass over the range's replicas (module docstring, retry_policy)."""
        state.start_pass(token.entry)
        p = _Pass(
            token,
            ReplicaOrder(token.entry.routing_replicas(), token.entry.leaseholder),
            last=E.Unavailable(f"range {token.descriptor.range_id}: no replica answered"),
        )
        while (replica := p.order.next()) is not None:
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                return _Failed(p.last, None)
            p.tried += 1
            address = self.directory.get(replica.node_id)
            if address is None:  # unknown yet: ask the registry, within the deadline
                try:
                    lookup = self.directory.address(replica.node_id)
                    address = await asyncio.wait_for(lookup, remaining)
                except TimeoutError:
                    return _Failed(p.last, None)
            if address is None:
                p.unreachable += 1
                self._retry(p, "no_address")
                continue
            outcome = await self._attempt(p, state, replica, address, req, deadline)
            if outcome is not None:
                return outcome
        return await self._end_pass(p, state, deadline)

    async def _attempt(
        self,
        p: _Pass,
        state: RouteState,
        replica: ReplicaDescriptor,
        address: str,
        req: _Op,
        deadline: float,
    ) -> _Served | _Failed | None:
        """Ask one replica; an outcome ends the pass, None goes on to the next replica."""
        remaining = deadline - self._clock.monotonic()
        submitted = self._submit(p.token.descriptor, replica, address, req)
        wait = remaining if req.is_write else min(remaining, self._read_attempt_timeout)
        try:
            # On timeout wait_for cancels `submitted`: that gives up only this
            # caller's place (dropped from its batch if the batch has not left).
            reply = await asyncio.wait_for(submitted, wait)
        except TimeoutError:
            return self._timed_out(p, replica, req, wait, remaining)
        except E.NotLeaseHolder as err:
            return self._redirected(p, state, replica, err)
        except E.RangeKeyMismatch as err:
            desc = p.token.descriptor
            self.counters.retry(mismatch_reason(desc, err.descriptors).value)
            self.cache.maybe_evict_for_mismatch(p.token, err)
            state.stale = desc  # rule R: the next lookup must find something newer
            return _Failed(err, None)
        except E.RangeNotFound as err:
            p.not_found += 1
            p.last = err
            self._retry(p, "range_not_found")
        except E.Unavailable as err:
            if req.is_write and err.outcome == E.WriteOutcome.UNKNOWN:
                raise
            p.unreachable += 1
            p.last = err
            self._retry(p, "unavailable")
        else:
            return _Served(reply, p.token, replica, address)
        return None

    def _submit(
        self, desc: RangeDescriptor, replica: ReplicaDescriptor, address: str, req: _Op
    ) -> asyncio.Future[BatchReply]:
        """Hand the operation to the node (a client span around it when tracing)."""
        span: trace.Span | None = None
        parent = ""
        if self._tracer is not None:
            span = self._tracer.start_span(
                "node.batch",
                kind=trace.SpanKind.CLIENT,
                attributes={
                    "rangekv.node_id": replica.node_id,
                    "rangekv.range_id": desc.range_id,
                    "rangekv.write": req.is_write,
                    "server.address": address,
                },
            )
            parent = traceparent(span)
        submitted = self.nodes.submit(
            address,
            desc.range_id,
            [req.op],
            has_writes=req.is_write,
            inconsistent=req.inconsistent,
            read_timestamp=req.read_timestamp,
            traceparent=parent,
            fence_id=req.fence_id,
        )
        if span is not None:
            # The span lasts as long as the node call, even past our deadline.
            submitted.add_done_callback(functools.partial(end_span_with, span))
        return submitted

    def _timed_out(
        self, p: _Pass, replica: ReplicaDescriptor, req: _Op, wait: float, remaining: float
    ) -> _Failed | None:
        if req.is_write:
            raise E.DeadlineExceeded(
                "deadline exceeded while the write was in flight; it may or may not apply",
                E.WriteOutcome.UNKNOWN,
            ) from None
        if wait >= remaining:
            return _Failed(E.DeadlineExceeded("deadline exceeded"), None)
        # A slow or stopped replica: ask the next one (module docstring).
        p.last = E.Unavailable(
            f"range {p.token.descriptor.range_id}: node {replica.node_id} did not answer a "
            f"read within {wait:.2f}s"
        )
        self._retry(p, "slow_replica")
        return None

    def _redirected(
        self, p: _Pass, state: RouteState, replica: ReplicaDescriptor, err: E.NotLeaseHolder
    ) -> _Failed | None:
        """NotLeaseHolder: the cache learns the hint; follow it, go on, or end the pass."""
        p.last = err
        routed = p.token.entry
        updated = self.cache.maybe_update_leaseholder(p.token, err)
        if updated is not None:
            if updated.descriptor != p.token.descriptor:  # a newer descriptor came with it
                p.order.reroute(updated.entry.routing_replicas(), updated.entry.leaseholder)
            p.token = updated
        step = after_not_lease_holder(
            state, p.order, replica, routed, updated.entry if updated else None, err
        )
        p.reason = step.reason
        if step.go_to is not None:
            self.counters.redirects += 1
            if err.leaseholder_address:
                self.directory.set(step.go_to.node_id, err.leaseholder_address)
            p.order.go_to(step.go_to)
            return None
        self.counters.retry(p.reason)
        return _Failed(err, p.reason) if step.end_pass else None

    def _retry(self, p: _Pass, reason: str) -> None:
        p.reason = reason
        self.counters.retry(reason)

    async def _end_pass(self, p: _Pass, state: RouteState, deadline: float) -> _Failed:
        """Every replica was asked and none answered: what that proves about the route."""
        if p.not_found and p.not_found == p.tried:
            # Rule R: the range is gone from every replica we know; look for a newer one.
            self.cache.maybe_evict(p.token, EvictionReason.RANGE_NOT_FOUND)
            state.stale = p.token.descriptor
            return _Failed(p.last, None)
        if p.unreachable and p.unreachable + p.not_found == p.tried:
            self.cache.maybe_evict(p.token, EvictionReason.UNREACHABLE)
            with contextlib.suppress(E.RangeKVError, TimeoutError):
                remaining = max(0.0, deadline - self._clock.monotonic())
                await asyncio.wait_for(self.directory.refresh(), remaining)
            return _Failed(p.last, "unreachable")
        return _Failed(p.last, p.reason)

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
    """The deadline passed between attempts: nothing is in flight and every attempt
    was refused before it could apply (an attempt of unknown outcome is raised at
    once), so even a write was NOT applied."""
    why = last.message if last is not None else "no answer"
    return E.Unavailable(
        f"could not reach the range's leaseholder before the deadline: {why}",
        retry_after=0.5,
        outcome=E.WriteOutcome.NOT_APPLIED,
    )
