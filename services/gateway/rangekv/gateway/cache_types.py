"""The values the range descriptor cache hands out and the ports it is built on.

Values (all immutable, so a caller can hold one across awaits while the cache
moves on):

- :class:`CacheEntry`: one descriptor with its leaseholder hint, or an
  unresolved meta intent (``intent`` set, ``speculative``).
- :class:`EvictionToken`: what a lookup returns next to the entry; it names
  the exact entry the caller routes with, so a later eviction removes that
  entry and nothing newer (compare-and-evict).
- :class:`LookupResult`: what one meta lookup answered (committed descriptors
  and intents, each in scan order), the shape of ``LookupRangeResponse``.

Ports (injected, so tests script them and the gateway adapts its gRPC clients):
:class:`MetaLookup`, :class:`TxnPusher`, :class:`IntentResolver`,
:class:`CacheMetrics` (with an in-memory and a :class:`Telemetry` adapter).
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from rangekv.common.descriptors import RangeDescriptor, ReplicaDescriptor
from rangekv.common.telemetry import Telemetry
from rangekv.domain.txn import Intent, TxnMeta, TxnStatus
from rangekv.v1 import meta_pb2

__all__ = [
    "CacheEntry",
    "CacheMetrics",
    "EvictionReason",
    "EvictionToken",
    "InMemoryCacheMetrics",
    "IntentResolver",
    "LookupResult",
    "MetaLookup",
    "TelemetryCacheMetrics",
    "TxnPusher",
    "mismatch_reason",
]


class EvictionReason(enum.StrEnum):
    """Why an entry left the cache: the metric label, one per rule."""

    #: insert rule: an overlapping descriptor with a higher generation arrived
    SUPERSEDED = "superseded"
    #: insert rule: an overlapping descriptor of equal generation but another span/range
    CONFLICT = "conflict"
    #: insert rule: an intent overlapped by a committed descriptor at least as new is dead
    STALE_INTENT = "stale_intent"
    #: intent rule: the intent's transaction committed; the intent became a committed entry
    INTENT_COMMITTED = "intent_committed"
    #: intent rule: the intent's transaction aborted
    INTENT_ABORTED = "intent_aborted"
    #: proven invalid: the range answered RangeKeyMismatch with a newer descriptor
    RANGE_KEY_MISMATCH = "range_key_mismatch"
    #: proven invalid: RangeKeyMismatch carrying nothing newer than the routed descriptor
    #: (the request re-reads meta at its leader and backs off if that is no newer either)
    MISMATCH_UNCHANGED = "mismatch_unchanged"
    #: proven invalid: every replica answered RangeNotFound
    RANGE_NOT_FOUND = "range_not_found"
    #: proven invalid: no replica was reachable
    UNREACHABLE = "unreachable"
    #: proven valid: a request succeeded with a newer overlapping descriptor
    CONFIRMED_NEWER = "confirmed_newer"
    #: size bound: least recently used
    LRU = "lru"


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """A descriptor and what the cache knows about routing to it.

    ``intent`` is set when the descriptor comes from a meta intent whose
    transaction is not known to have committed (a *speculative* entry); such
    an entry is never handed out for routing, only kept so that the cache
    knows a descriptor change is in flight over these keys. ``intent_status``
    is PENDING once a push found the transaction pending (so a cache hit does
    not push again), None while nobody has pushed it.

    ``extra_replicas`` is only ever set on an entry *returned* for routing: the
    replicas of a pending replica-change intent that the committed descriptor
    lacks, so the caller routes with the union of both sets instead of waiting.
    """

    descriptor: RangeDescriptor
    leaseholder: ReplicaDescriptor | None = None
    leaseholder_address: str = ""
    lease_sequence: int = 0
    intent: Intent | None = None
    intent_status: TxnStatus | None = None
    extra_replicas: tuple[ReplicaDescriptor, ...] = ()

    @property
    def speculative(self) -> bool:
        return self.intent is not None

    @property
    def txn(self) -> TxnMeta | None:
        return self.intent.txn if self.intent is not None else None

    @property
    def start_key(self) -> bytes:
        return self.descriptor.start_key

    @property
    def end_key(self) -> bytes:
        return self.descriptor.end_key

    @property
    def generation(self) -> int:
        return self.descriptor.generation

    @property
    def slot(self) -> EntrySlot:
        """The entry's identity in the cache: its descriptor, and its txn if speculative.

        Leaseholder updates keep the slot, so a token taken before a
        NotLeaseHolder redirect still evicts the (updated) entry it routed with.
        """
        return (self.descriptor, self.intent.txn.id if self.intent is not None else None)

    def routing_replicas(self) -> tuple[ReplicaDescriptor, ...]:
        """The replicas to try: the descriptor's, then a pending replica change's extras."""
        return self.descriptor.replicas + self.extra_replicas


EntrySlot = tuple[RangeDescriptor, bytes | None]


@dataclass(frozen=True, slots=True)
class EvictionToken:
    """Names the exact entry a request was routed with.

    Eviction, confirmation and leaseholder updates go through the token, so a
    request that learned something about an old entry cannot remove or
    overwrite a newer one the cache acquired meanwhile.
    """

    entry: CacheEntry

    @property
    def descriptor(self) -> RangeDescriptor:
        return self.entry.descriptor


@dataclass(frozen=True, slots=True)
class LookupResult:
    """One meta lookup's answer: committed descriptors and intents, each in scan order."""

    descriptors: tuple[RangeDescriptor, ...] = ()
    intents: tuple[Intent, ...] = ()

    @staticmethod
    def from_proto(pb: meta_pb2.LookupRangeResponse) -> LookupResult:
        return LookupResult(
            descriptors=tuple(RangeDescriptor.from_proto(d) for d in pb.descriptors),
            intents=tuple(Intent.from_proto(i) for i in pb.intents),
        )


class MetaLookup(Protocol):
    """Scans the meta range forward from meta(key), returning committed records and intents.

    By default from any replica's applied state (INCONSISTENT: cheap, may lag);
    ``consistent=True`` reads at the meta leader (CONSISTENT, intents included),
    which the cache asks for only when an inconsistent answer was no newer than
    a descriptor a request just proved wrong. Callers pass ``consistent`` only
    when it is true.
    """

    async def __call__(
        self, key: bytes, prefetch: int, *, consistent: bool = False
    ) -> LookupResult: ...


class TxnPusher(Protocol):
    """Pushes a descriptor transaction and returns its status.

    The implementation routes the PushTxn to the range holding
    ``txn.record_key``; it may reach it through either descriptor it is given
    (for a split the record lives on the left-hand side, whose range id both
    the intent and the committed descriptor carry), so the cache never needs
    the descriptor being resolved to resolve it. A pending transaction past its
    deadline is aborted by the push (ABORTED is returned).
    """

    async def __call__(
        self,
        txn: TxnMeta,
        intent_descriptor: RangeDescriptor,
        committed_descriptor: RangeDescriptor | None,
    ) -> TxnStatus: ...


class IntentResolver(Protocol):
    """Schedules ResolveIntent(meta_key, txn_id, status) in the meta range.

    Must not block: the gateway's implementation starts a task. Resolution is
    idempotent, so a resolution scheduled twice is harmless.
    """

    def __call__(self, meta_key: bytes, txn_id: bytes, status: TxnStatus) -> None: ...


class CacheMetrics(Protocol):
    """The cache's counters."""

    def hit(self) -> None: ...
    def miss(self) -> None: ...
    def evicted(self, reason: EvictionReason, count: int = 1) -> None: ...
    def lookup(self, consistent: bool = False) -> None: ...
    def coalesced(self) -> None: ...
    def intent_pushed(self, status: TxnStatus | None) -> None: ...
    def lease_dropped(self) -> None: ...


@dataclass
class InMemoryCacheMetrics:
    """Counters kept in a plain object; what tests and benchmarks read."""

    hits: int = 0
    misses: int = 0
    #: every lookup sent, consistent ones included
    lookups: int = 0
    consistent_lookups: int = 0
    coalesced_lookups: int = 0
    leases_dropped: int = 0
    evictions: collections.Counter[str] = field(default_factory=collections.Counter)
    pushes: collections.Counter[str] = field(default_factory=collections.Counter)

    def hit(self) -> None:
        self.hits += 1

    def miss(self) -> None:
        self.misses += 1

    def evicted(self, reason: EvictionReason, count: int = 1) -> None:
        self.evictions[reason.value] += count

    def lookup(self, consistent: bool = False) -> None:
        self.lookups += 1
        self.consistent_lookups += consistent

    def coalesced(self) -> None:
        self.coalesced_lookups += 1

    def intent_pushed(self, status: TxnStatus | None) -> None:
        self.pushes[status.name.lower() if status is not None else "error"] += 1

    def lease_dropped(self) -> None:
        self.leases_dropped += 1

    @property
    def intents_pushed(self) -> int:
        return sum(self.pushes.values())


class TelemetryCacheMetrics:
    """The counters as OpenTelemetry instruments of the process's :class:`Telemetry`."""

    def __init__(self, telemetry: Telemetry) -> None:
        t = telemetry
        self._hits = t.counter("rangekv_gateway_cache_hits", "Descriptor cache hits.")
        self._misses = t.counter("rangekv_gateway_cache_misses", "Descriptor cache misses.")
        self._evictions = t.counter(
            "rangekv_gateway_cache_evictions", "Cache entries removed, by rule.", labels=("reason",)
        )
        self._lookups = t.counter(
            "rangekv_gateway_meta_lookups",
            "Meta range lookups sent, by mode (consistent: a re-read at the meta leader).",
            labels=("mode",),
        )
        self._coalesced = t.counter(
            "rangekv_gateway_meta_lookups_coalesced", "Misses answered by another's lookup."
        )
        self._pushes = t.counter(
            "rangekv_gateway_intents_pushed", "Meta intents pushed, by outcome.", labels=("status",)
        )
        self._leases_dropped = t.counter(
            "rangekv_gateway_cache_leases_dropped",
            "Cached leaseholders cleared because a newer descriptor no longer lists them.",
        )
        # Every series starts at 0, so a dashboard shows "none yet" rather than no data.
        for counter in (self._hits, self._misses, self._coalesced, self._leases_dropped):
            counter.add(0)
        for mode in ("inconsistent", "consistent"):
            self._lookups.add(0, mode=mode)
        for reason in EvictionReason:
            self._evictions.add(0, reason=reason.value)

    def hit(self) -> None:
        self._hits.add()

    def miss(self) -> None:
        self._misses.add()

    def evicted(self, reason: EvictionReason, count: int = 1) -> None:
        self._evictions.add(count, reason=reason.value)

    def lookup(self, consistent: bool = False) -> None:
        self._lookups.add(mode="consistent" if consistent else "inconsistent")

    def coalesced(self) -> None:
        self._coalesced.add()

    def intent_pushed(self, status: TxnStatus | None) -> None:
        self._pushes.add(status=status.name.lower() if status is not None else "error")

    def lease_dropped(self) -> None:
        self._leases_dropped.add()


def mismatch_reason(
    routed: RangeDescriptor, descriptors: Sequence[RangeDescriptor]
) -> EvictionReason:
    """How a RangeKeyMismatch is counted: whether it carried a descriptor newer than the
    one the request was routed with (else it taught nothing, and meta is re-read)."""
    if any(d.generation > routed.generation for d in descriptors):
        return EvictionReason.RANGE_KEY_MISMATCH
    return EvictionReason.MISMATCH_UNCHANGED


def replicas_missing(
    have: Sequence[ReplicaDescriptor], extra: Sequence[ReplicaDescriptor]
) -> tuple[ReplicaDescriptor, ...]:
    """The replicas of ``extra`` on nodes that ``have`` has no replica on."""
    nodes = {r.node_id for r in have}
    return tuple(r for r in extra if r.node_id not in nodes)
