"""The DistSender's rules for one request: which replica to ask next, and when to wait first.

No spin: every retry either acts on new information at once or waits a
capped exponential backoff with jitter (:class:`Backoff`, seeded rng
injected), and the request's deadline bounds both. What counts as new
information, by what the request met:

- **A pass** (:class:`ReplicaOrder`) asks a range's replicas once each, the
  cached leaseholder first. The only replica asked twice in a pass is one a
  redirect names with a lease sequence higher than any this request has seen
  (the lease really moved; at most :data:`MAX_REDIRECTS_PER_PASS` times).
- **NotLeaseHolder, hint taken** (the cache now names the hinted replica, see
  ``RangeCache.maybe_update_leaseholder``): a lease sequence HIGHER than any
  seen for this request is followed at once, even to a replica already asked
  (``redirect``). A sequence not higher is followed only to a replica not yet
  asked in this pass; otherwise the pass moves on, and a pass that ends
  without an answer backs off (``lease_not_newer``). This replaces "was this
  node already hinted": transfers stay cheap, flapping leases stay bounded.
- **NotLeaseHolder, hint not taken** (no hint, a node the descriptor does not
  list, or a lease older than the cached one): the next replica, at once
  (``no_leaseholder``, ``unusable_hint``, ``older_lease``).
- **NotLeaseHolder with an older descriptor from the cached leaseholder**: a
  lagging replica, perhaps about to apply the lease: asked again after a
  backoff, :data:`LAGGING_ATTEMPTS` times in all per request, then the pass
  moves on (``lagging_replica``); no lookup, no eviction.

What a pass does with RangeKeyMismatch, RangeNotFound and unreachable
replicas, and the consistent re-read of meta (rule R), is in the DistSender
(:mod:`rangekv.gateway.dist_sender`); the labels above are the
``rangekv_gateway_retries`` / ``rangekv_gateway_backoffs`` reasons.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from rangekv.common.descriptors import RangeDescriptor, ReplicaDescriptor
from rangekv.common.errors import NotLeaseHolder
from rangekv.gateway.cache_types import CacheEntry

__all__ = [
    "LAGGING_ATTEMPTS",
    "MAX_REDIRECTS_PER_PASS",
    "Backoff",
    "ReplicaOrder",
    "RouteState",
    "Step",
    "after_not_lease_holder",
]

#: Times one request asks a leaseholder that answers with an older descriptor.
LAGGING_ATTEMPTS = 2

#: Redirects to ever higher lease sequences followed at once in one pass; past it the
#: request backs off anyway (nothing unbounded, even against a replica that lies).
MAX_REDIRECTS_PER_PASS = 8


class Backoff:
    """Capped exponential backoff with jitter: delays of [0.5, 1.5) x the current step."""

    def __init__(self, initial: float, maximum: float, rng: random.Random) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError(f"backoff needs 0 < initial <= maximum, got {initial}, {maximum}")
        self._next = initial
        self._max = maximum
        self._rng = rng

    def delay(self, remaining: float) -> float:
        """The next wait, never past ``remaining`` (the time left before the deadline)."""
        step = self._next
        self._next = min(self._next * 2, self._max)
        return max(0.0, min(remaining, step * (0.5 + self._rng.random())))


class ReplicaOrder:
    """One pass over a range's replicas: the leaseholder first, then the others in order."""

    def __init__(
        self, replicas: Sequence[ReplicaDescriptor], leaseholder: ReplicaDescriptor | None
    ) -> None:
        self._queue = _leaseholder_first(replicas, leaseholder)
        self._asked: set[int] = set()

    def next(self) -> ReplicaDescriptor | None:
        """The next replica to ask (marked asked), or None when the pass is over."""
        while self._queue:
            replica = self._queue.pop(0)
            if replica.node_id not in self._asked:
                self._asked.add(replica.node_id)
                return replica
        return None

    def asked(self, node_id: int) -> bool:
        return node_id in self._asked

    def go_to(self, replica: ReplicaDescriptor) -> None:
        """Ask ``replica`` next, even if it was asked already in this pass."""
        self._asked.discard(replica.node_id)
        self._queue.insert(0, replica)

    def reroute(
        self, replicas: Sequence[ReplicaDescriptor], leaseholder: ReplicaDescriptor | None
    ) -> None:
        """The range's descriptor changed mid-pass: the rest of the pass is its replicas
        not asked yet (a replica it no longer lists is not asked)."""
        self._queue = [
            r for r in _leaseholder_first(replicas, leaseholder) if r.node_id not in self._asked
        ]


def _leaseholder_first(
    replicas: Sequence[ReplicaDescriptor], leaseholder: ReplicaDescriptor | None
) -> list[ReplicaDescriptor]:
    order = list(replicas)
    if leaseholder is not None:
        order.sort(key=lambda r: r.node_id != leaseholder.node_id)
    return order


@dataclass(slots=True)
class RouteState:
    """What one request has learned so far, across its passes.

    Cheap to make (one per request): the backoff and the lagging counts appear
    only when a request needs them.
    """

    #: The request's backoff, made at its first wait (see :meth:`next_backoff`).
    backoff: Backoff | None = None
    #: The highest lease sequence this request routed with or was redirected to.
    lease_sequence: int = -1
    #: Redirects followed at once in the current pass.
    redirects_in_pass: int = 0
    #: Times each node answered as a lagging leaseholder.
    lagging: dict[int, int] | None = None
    #: A descriptor proven wrong for the key; the next lookup must find a newer one (rule R).
    stale: RangeDescriptor | None = None

    def next_backoff(
        self, initial: float, maximum: float, rng: random.Random, remaining: float
    ) -> float:
        """The next wait of this request's backoff (made on first use)."""
        if self.backoff is None:
            self.backoff = Backoff(initial, maximum, rng)
        return self.backoff.delay(remaining)

    def lagged(self, node_id: int) -> int:
        """Count one more lagging answer of ``node_id``; how many so far."""
        if self.lagging is None:
            self.lagging = {}
        self.lagging[node_id] = self.lagging.get(node_id, 0) + 1
        return self.lagging[node_id]

    def start_pass(self, entry: CacheEntry) -> None:
        self.redirects_in_pass = 0
        if entry.leaseholder is not None:
            self.lease_sequence = max(self.lease_sequence, entry.lease_sequence)


@dataclass(frozen=True, slots=True)
class Step:
    """What to do after a NotLeaseHolder.

    ``go_to`` set: ask that replica next (a redirect). Else ``end_pass`` False:
    ask the next replica of the pass; True: end the pass and back off first.
    ``reason`` is the retry / backoff label.
    """

    reason: str
    go_to: ReplicaDescriptor | None = None
    end_pass: bool = False


def after_not_lease_holder(
    state: RouteState,
    order: ReplicaOrder,
    asked: ReplicaDescriptor,
    routed: CacheEntry,
    updated: CacheEntry | None,
    err: NotLeaseHolder,
) -> Step:
    """The rules of the module docstring for one NotLeaseHolder.

    ``asked`` answered it; ``routed`` is the entry the request routed with when
    it asked; ``updated`` is the entry the cache holds after learning the error
    (None: the range is no longer cached).
    """
    hinted = err.leaseholder
    taken = (
        hinted is not None
        and updated is not None
        and updated.leaseholder is not None
        and updated.leaseholder.node_id == hinted.node_id
        and updated.lease_sequence == err.lease_sequence
    )
    if taken and hinted is not None and hinted.node_id != asked.node_id:
        if err.lease_sequence > state.lease_sequence:
            if state.redirects_in_pass >= MAX_REDIRECTS_PER_PASS:
                return Step("redirect_limit", end_pass=True)
            state.lease_sequence = err.lease_sequence
            state.redirects_in_pass += 1
            return Step("redirect", go_to=hinted)
        if not order.asked(hinted.node_id):
            return Step("redirect", go_to=hinted)
        return Step("lease_not_newer")
    older = err.descriptor is not None and err.descriptor.generation < routed.generation
    holder = routed.leaseholder
    if older and holder is not None and holder.node_id == asked.node_id:
        return Step("lagging_replica", end_pass=state.lagged(asked.node_id) < LAGGING_ATTEMPTS)
    if hinted is None or hinted.node_id == asked.node_id:
        return Step("no_leaseholder")
    if (
        updated is not None
        and err.lease_sequence < updated.lease_sequence
        and updated.descriptor.replica_on(hinted.node_id) is not None
    ):
        return Step("older_lease")  # the cache knows a newer lease (rule L)
    return Step("unusable_hint")
