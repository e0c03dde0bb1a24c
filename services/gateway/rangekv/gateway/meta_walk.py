"""Which descriptor is the truth for a key, given meta records that may be stale or intents.

The rule: walk the records covering the key in scan order (by meta key, i.e. by end key with the
unbounded end last; at one meta key the intent sits *over* the committed
version, so it is met first). For an intent, learn its transaction's status
(push it):

- COMMITTED: the intent is the truth (a committed transaction's intent is not
  stale: the next descriptor change over those keys must resolve it first);
- ABORTED: discard it and keep walking;
- PENDING: the committed version is still the truth; keep walking to it. If
  the pending intent is a replica change of that very range (same range id),
  the caller routes with the union of both replica sets instead of waiting.

The first committed descriptor reached with no live intent over it is the
truth. An aborted split of [A, D) at B that left an intent at meta(B),
followed by a committed split at C, is why the walk does not stop at the
first intent: the stale intent at meta(B) is discarded and the walk goes on
to meta(C).

The walk itself neither pushes nor caches: ``status_of`` does (the cache
supplies it with memoised outcomes, coalesced pushes and metrics), so this
module is the rule and nothing else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from rangekv.common.descriptors import RangeDescriptor, ReplicaDescriptor
from rangekv.domain.txn import Intent, TxnStatus
from rangekv.gateway.cache_types import replicas_missing
from rangekv.gateway.interval_tree import end_order

__all__ = ["Record", "StatusOf", "WalkOutcome", "resolve_key", "scan_order"]


@dataclass(frozen=True, slots=True)
class Record:
    """One meta record: a committed descriptor (``intent`` None) or an intent.

    ``known_status`` carries what the caller already knows about the intent's
    transaction without asking (e.g. a cached intent already found PENDING).
    """

    descriptor: RangeDescriptor
    intent: Intent | None = None
    known_status: TxnStatus | None = None

    @property
    def is_intent(self) -> bool:
        return self.intent is not None


StatusOf = Callable[[Intent, RangeDescriptor | None, TxnStatus | None], Awaitable[TxnStatus | None]]
"""``status_of(intent, committed_fallback, known_status)``: the transaction's status, or
None when it could not be learned (the push failed); then the walk treats the
intent as not live for this walk, as it would a pending one."""


@dataclass(frozen=True, slots=True)
class WalkOutcome:
    """The truth for the key (None: these records cannot tell) and what was learned."""

    truth: RangeDescriptor | None
    extra_replicas: tuple[ReplicaDescriptor, ...] = ()
    statuses: dict[bytes, TxnStatus] = field(default_factory=dict)
    #: the intent that turned out to be the truth (its txn committed), if any
    committed_intent: Intent | None = None


def scan_order(records: Iterable[Record]) -> list[Record]:
    """Records in the order a forward meta scan meets them."""
    return sorted(records, key=lambda r: (end_order(r.descriptor.end_key), 0 if r.intent else 1))


async def resolve_key(key: bytes, records: Iterable[Record], status_of: StatusOf) -> WalkOutcome:
    """Walk the records covering ``key`` in scan order and return the truth for it."""
    covering = [r for r in scan_order(records) if r.descriptor.contains_key(key)]
    statuses: dict[bytes, TxnStatus] = {}
    pending: list[RangeDescriptor] = []
    for i, record in enumerate(covering):
        intent = record.intent
        if intent is None:
            return WalkOutcome(record.descriptor, _union(record.descriptor, pending), statuses)
        status = statuses.get(intent.txn.id)
        if status is None:
            fallback = next((r.descriptor for r in covering[i + 1 :] if r.intent is None), None)
            status = await status_of(intent, fallback, record.known_status)
            if status is not None:
                statuses[intent.txn.id] = status
        if status is TxnStatus.COMMITTED:
            return WalkOutcome(intent.descriptor, (), statuses, committed_intent=intent)
        if status is TxnStatus.PENDING:
            pending.append(intent.descriptor)
        # ABORTED, PENDING or unknown: not the truth for now; keep walking.
    return WalkOutcome(None, (), statuses)


def _union(
    committed: RangeDescriptor, pending: list[RangeDescriptor]
) -> tuple[ReplicaDescriptor, ...]:
    """Replicas of pending replica changes of ``committed``'s range that it lacks."""
    extra: list[ReplicaDescriptor] = []
    for desc in pending:
        if desc.range_id == committed.range_id:
            extra.extend(replicas_missing(committed.replicas + tuple(extra), desc.replicas))
    return tuple(extra)
