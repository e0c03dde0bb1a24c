"""The range descriptor cache: which range, and which replica, serves a key.

Shape (CockroachDB's rangecache, adapted): a lookup returns an immutable
:class:`CacheEntry` and an :class:`EvictionToken` naming it; everything a
request later learns (the range moved, the lease moved, the route worked)
comes back through that token, and every method that may decline to act is
named ``maybe_*``. Descriptors live in an interval map that may hold
overlapping spans: the cache keeps everything it was told (committed
descriptors and the descriptors of in-flight changes) unless it can prove it
stale, and generations are what proves it. The rules, each named where it is
applied (and counted under the :class:`EvictionReason` label shown):

- G (insert): committed descriptors never overlap; an incoming one removes
  the older ones it overlaps (``superseded``), even when a newer overlapping
  one keeps it out (the generations covering a key only grow); equal
  generation with another span cannot happen soundly, the incoming one wins
  (``conflict``); the same descriptor merges leaseholder info.
- I (insert): an intent may overlap a committed descriptor only while it is
  newer; one at least as new proves it dead (``stale_intent``) or, when it is
  the intent's own descriptor, committed (``intent_committed``).
- P (proven invalid): RangeKeyMismatch, RangeNotFound on every replica, or no
  replica reachable removes the routed entry (compare-and-evict on the token);
  the error's descriptors go in by rule G (``range_key_mismatch``, or
  ``mismatch_unchanged`` when it carried nothing newer).
- R (re-read): a lookup given the descriptor a request just proved wrong
  (``stale``) takes nothing at most as new from the cache or an inconsistent
  read; it re-reads meta at its leader and returns that answer.
- V (proven valid): a request that succeeded removes overlapping entries
  older than the one it used (``confirmed_newer``).
- L (leaseholder): a NotLeaseHolder hint is taken only to a member of the
  descriptor held afterwards (the error's if at least as new, else the
  cached one); lease sequences never go back. L2: a newer descriptor drops a
  cached leaseholder it does not list. L3: a consistent answer names its
  replica.
- C (coalescing): :mod:`rangekv.gateway.lookup_flights`.
- T (intents): see :mod:`rangekv.gateway.meta_walk`; outcomes learned by a push
  convert or drop every cached intent of that transaction
  (``intent_committed`` / ``intent_aborted``) and are resolved in meta.
- S (size): at most ``max_entries`` entries, least recently used out first (``lru``).

OVERVIEW.md beside this file lists the invariants these rules keep.
"""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import Iterable
from dataclasses import replace

from rangekv.common.descriptors import RangeDescriptor, ReplicaDescriptor
from rangekv.common.errors import NotLeaseHolder, RangeKeyMismatch, RangeKVError, Unavailable
from rangekv.domain.txn import Intent, TxnStatus
from rangekv.gateway.cache_types import (
    CacheEntry,
    CacheMetrics,
    EntrySlot,
    EvictionReason,
    EvictionToken,
    InMemoryCacheMetrics,
    IntentResolver,
    LookupResult,
    MetaLookup,
    TxnPusher,
    mismatch_reason,
    replicas_missing,
)
from rangekv.gateway.interval_tree import IntervalMap, spans_overlap
from rangekv.gateway.lookup_flights import LookupFlights, wait_all
from rangekv.gateway.meta_walk import Record, WalkOutcome, resolve_key

__all__ = ["RangeCache"]


def _newer(entry: CacheEntry, stale: RangeDescriptor | None) -> bool:
    """Whether ``entry`` may answer a lookup that proved ``stale`` wrong (rule R).

    Generations of the descriptors covering one key only grow (splits and
    replica changes bump them, nothing merges), whatever the range id.
    """
    return stale is None or entry.generation > stale.generation


def _same_range(a: RangeDescriptor, b: RangeDescriptor) -> bool:
    """Equal generation, range and span: the same descriptor, whatever the replica order."""
    return (a.range_id, a.start_key, a.end_key, a.generation) == (
        b.range_id,
        b.start_key,
        b.end_key,
        b.generation,
    )


def _merge_lease(old: CacheEntry, new: CacheEntry) -> CacheEntry:
    """One entry from two views of the same descriptor: the higher lease sequence wins."""
    keep_old = old.lease_sequence > new.lease_sequence or (
        old.lease_sequence == new.lease_sequence
        and new.leaseholder is None
        and old.leaseholder is not None
    )
    src = old if keep_old else new
    return CacheEntry(new.descriptor, src.leaseholder, src.leaseholder_address, src.lease_sequence)


class RangeCache:
    """Descriptors by key span, with lookups through the meta range on a miss.

    ``meta_lookup``, ``push`` and ``resolve_intent`` are the ports to the meta
    range and to transaction records (see :mod:`rangekv.gateway.cache_types`).
    Single event loop; no locks: every mutation runs between two awaits.
    """

    def __init__(
        self,
        meta_lookup: MetaLookup,
        push: TxnPusher,
        resolve_intent: IntentResolver,
        *,
        max_entries: int = 65_536,
        prefetch: int = 8,
        max_txn_outcomes: int = 4_096,
        metrics: CacheMetrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._meta_lookup = meta_lookup
        self._push = push
        self._resolve_intent = resolve_intent
        self._max_entries = max_entries
        self._prefetch = prefetch
        self._max_outcomes = max_txn_outcomes
        self.metrics: CacheMetrics = metrics if metrics is not None else InMemoryCacheMetrics()
        self._tree: IntervalMap[EntrySlot] = IntervalMap(rng)
        self._entries: collections.OrderedDict[EntrySlot, CacheEntry] = collections.OrderedDict()
        self._by_txn: dict[bytes, set[EntrySlot]] = {}
        # Final transaction outcomes never change, so they are safe to remember.
        self._outcomes: collections.OrderedDict[bytes, TxnStatus] = collections.OrderedDict()
        self._flights = LookupFlights()
        #: Slots added so far (a replacement under the same slot does not count), and
        #: that count at each entry's last confirmation (rule V): only an added entry
        #: can be an older one overlapping it, so an unchanged count skips the search.
        self._adds = 0
        self._confirmed_at: dict[EntrySlot, int] = {}
        self._pushes: dict[bytes, asyncio.Future[TxnStatus | None]] = {}

    # --- reading without side effects ---------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[CacheEntry]:
        """Every entry (committed and speculative), in span order."""
        return [self._entries[s] for s in self._tree]

    def covering(self, key: bytes) -> list[CacheEntry]:
        """Every entry whose span contains ``key``, speculative ones included."""
        return [self._entries[s] for s in self._tree.covering(key)]

    def peek(self, key: bytes) -> CacheEntry | None:
        """The committed entry covering ``key``, without pushing, looking up or touching LRU."""
        return next((e for e in self.covering(key) if not e.speculative), None)

    # --- lookup ---------------------------------------------------------------------

    def hit(
        self, key: bytes, *, stale: RangeDescriptor | None = None
    ) -> tuple[CacheEntry, EvictionToken] | None:
        """What :meth:`lookup` answers when the cache alone can, without awaiting
        anything (no intent to push, nothing to look up); None otherwise."""
        entries = self.covering(key)
        if any(e.speculative and e.intent_status is None for e in entries):
            return None
        entry = self._routing_entry(key, entries)
        if entry is None or not _newer(entry, stale):
            return None
        self.metrics.hit()
        return entry, EvictionToken(entry)

    async def lookup(
        self, key: bytes, *, stale: RangeDescriptor | None = None
    ) -> tuple[CacheEntry, EvictionToken]:
        """The entry to route ``key`` with, from the cache or the meta range.

        ``stale`` is a descriptor the caller just proved wrong for ``key`` (rule
        R): an entry at most as new as it is not taken from the cache nor from
        an inconsistent lookup; meta is then read again at its leader
        (consistently, intents included) and that answer is returned whatever
        its generation, for the caller to back off from if it is no newer.

        Misses coalesce (rule C, :mod:`rangekv.gateway.lookup_flights`): a miss
        joins the lookup in flight for its key, or waits for the nearest ones
        below and above it and re-checks the cache, and only then looks up
        itself, once. Raises Unavailable when meta has no descriptor for the key.
        """
        entry = await self._cached(key)
        if entry is not None and _newer(entry, stale):
            self.metrics.hit()
            return entry, EvictionToken(entry)
        self.metrics.miss()
        answer = None
        if self._flights.get(key, False) is None:
            answer = await self._after_nearby_lookups(key)
        if answer is None:
            answer = await self._shared_lookup(key, consistent=False)
        if not _newer(answer, stale):
            answer = await self._shared_lookup(key, consistent=True)
        return answer, EvictionToken(answer)

    async def _after_nearby_lookups(self, key: bytes) -> CacheEntry | None:
        """Wait for the in-flight lookups nearest ``key``; the entry covering it after them."""
        flights = self._flights.nearby(key)
        if not flights:
            return None
        answers = await wait_all(flights)
        entry = await self._cached(key)
        if entry is None:
            entry = next((a for a in answers if a.descriptor.contains_key(key)), None)
        if entry is not None:
            self.metrics.coalesced()
        return entry

    async def _shared_lookup(self, key: bytes, *, consistent: bool) -> CacheEntry:
        """Join the lookup of ``key`` in flight (this mode), or start it; its answer."""
        flight = self._flights.get(key, consistent)
        joined = flight is not None
        if flight is None:
            flight = self._flights.start(
                key, consistent, lambda: self._lookup_once(key, consistent)
            )
        answer = await asyncio.shield(flight)
        if not joined:
            return answer
        self.metrics.coalesced()
        cached = await self._cached(key)  # the cache may have learned more since it landed
        return cached if cached is not None and cached.generation >= answer.generation else answer

    async def _lookup_once(self, key: bytes, consistent: bool) -> CacheEntry:
        self.metrics.lookup(consistent)
        if consistent:
            result = await self._meta_lookup(key, self._prefetch, consistent=True)
        else:
            result = await self._meta_lookup(key, self._prefetch)
        records = [Record(d) for d in result.descriptors]
        records += [Record(i.descriptor, i) for i in result.intents]
        outcome = await resolve_key(key, records, self._status_of)
        scheduled: set[tuple[bytes, bytes]] = set()
        self._learn(outcome.statuses, scheduled)
        self._absorb(result, outcome.statuses, scheduled)
        if outcome.truth is None:
            raise Unavailable(f"meta lookup found no descriptor for key {key!r}", retry_after=0.05)
        # Again, last: so that prefetched records cannot push the answer out (rule S).
        self._insert(CacheEntry(outcome.truth), scheduled)
        return self._answer_for(key, outcome)

    def _absorb(
        self,
        result: LookupResult,
        statuses: dict[bytes, TxnStatus],
        scheduled: set[tuple[bytes, bytes]],
    ) -> None:
        """Everything a lookup returned, prefetched records included, goes in by rules G and I."""
        for desc in result.descriptors:
            self._insert(CacheEntry(desc), scheduled)
        for intent in result.intents:
            status = statuses.get(intent.txn.id)
            pending = TxnStatus.PENDING if status is TxnStatus.PENDING else None
            self._insert(
                CacheEntry(intent.descriptor, intent=intent, intent_status=pending), scheduled
            )

    def _answer_for(self, key: bytes, outcome: WalkOutcome) -> CacheEntry:
        truth = outcome.truth
        assert truth is not None
        cached = self._routing_entry(key)
        if cached is not None and cached.generation >= truth.generation:
            # The cache's view is at least as new (with lease info): route with it.
            if _same_range(cached.descriptor, truth) and outcome.extra_replicas:
                extra = replicas_missing(cached.routing_replicas(), outcome.extra_replicas)
                cached = replace(cached, extra_replicas=cached.extra_replicas + extra)
            return cached
        # The truth did not stay in the cache (a newer overlapping entry that does not
        # cover this key rejected it, or the size bound): route with it uncached.
        return CacheEntry(truth, extra_replicas=outcome.extra_replicas)

    async def _cached(self, key: bytes) -> CacheEntry | None:
        """The routing entry for ``key`` from the cache alone (pushing cached intents if needed)."""
        entries = self.covering(key)
        if any(e.speculative and e.intent_status is None for e in entries):
            records = [Record(e.descriptor, e.intent, e.intent_status) for e in entries]
            outcome = await resolve_key(key, records, self._status_of)
            self._learn(outcome.statuses, set())
        return self._routing_entry(key)

    def _routing_entry(
        self, key: bytes, entries: list[CacheEntry] | None = None
    ) -> CacheEntry | None:
        """The committed entry covering ``key`` (of ``entries``, the ones covering it, if
        the caller has them), with a pending replica change's extras."""
        if entries is None:
            entries = self.covering(key)
        committed = next((e for e in entries if not e.speculative), None)
        if committed is None:
            return None
        self._entries.move_to_end(committed.slot)
        extra = committed.extra_replicas
        for e in entries:
            if e.intent_status is TxnStatus.PENDING and e.descriptor.range_id == (
                committed.descriptor.range_id
            ):
                extra += replicas_missing(
                    committed.descriptor.replicas + extra, e.descriptor.replicas
                )
        return replace(committed, extra_replicas=extra) if extra else committed

    # --- intents --------------------------------------------------------------------

    async def _status_of(
        self, intent: Intent, committed: RangeDescriptor | None, known: TxnStatus | None
    ) -> TxnStatus | None:
        """The intent's txn status: remembered, already known pending, or pushed (coalesced)."""
        txn = intent.txn
        remembered = self._outcomes.get(txn.id)
        if remembered is not None:
            return remembered
        if known is not None:
            return known
        inflight = self._pushes.get(txn.id)
        if inflight is not None:
            return await asyncio.shield(inflight)
        future: asyncio.Future[TxnStatus | None] = asyncio.get_running_loop().create_future()
        self._pushes[txn.id] = future
        status: TxnStatus | None = None
        try:
            status = await self._push(txn, intent.descriptor, committed)
        except (RangeKVError, OSError, TimeoutError):
            status = None  # unknown for now; the walk treats the intent as not live
        finally:
            del self._pushes[txn.id]
            future.set_result(status)
            self.metrics.intent_pushed(status)
        return status

    def _learn(self, statuses: dict[bytes, TxnStatus], scheduled: set[tuple[bytes, bytes]]) -> None:
        """Rule T: apply learned txn outcomes to every cached intent of those transactions."""
        for txn_id, status in statuses.items():
            if status.final:
                self._outcomes[txn_id] = status
                self._outcomes.move_to_end(txn_id)
                while len(self._outcomes) > self._max_outcomes:
                    self._outcomes.popitem(last=False)
            for slot in list(self._by_txn.get(txn_id, ())):
                entry = self._entries.get(slot)
                if entry is None:
                    continue  # an earlier conversion's insert pushed it out (rule S)
                if status is TxnStatus.PENDING:
                    self._entries[slot] = replace(entry, intent_status=TxnStatus.PENDING)
                    continue
                reason = (
                    EvictionReason.INTENT_COMMITTED
                    if status is TxnStatus.COMMITTED
                    else EvictionReason.INTENT_ABORTED
                )
                self._remove(slot, reason)
                # _insert converts a committed intent and schedules the resolution.
                self._insert(entry, scheduled)

    def _schedule_resolution(
        self, intent: Intent, status: TxnStatus, scheduled: set[tuple[bytes, bytes]]
    ) -> None:
        if (intent.meta_key, intent.txn.id) not in scheduled:
            scheduled.add((intent.meta_key, intent.txn.id))
            self._resolve_intent(intent.meta_key, intent.txn.id, status)

    # --- insertion (rules G, I) -------------------------------------------------------

    def maybe_insert(self, entry: CacheEntry) -> CacheEntry | None:
        """Insert by rules G and I; returns the entry as stored, or None if it was stale."""
        return self._insert(entry, set())

    def maybe_insert_descriptors(self, descriptors: Iterable[RangeDescriptor]) -> None:
        for desc in descriptors:
            self._insert(CacheEntry(desc), set())

    def _insert(self, new: CacheEntry, scheduled: set[tuple[bytes, bytes]]) -> CacheEntry | None:
        if new.extra_replicas:
            new = replace(new, extra_replicas=())  # a routing view, never stored
        if new.intent is not None:
            outcome = self._outcomes.get(new.intent.txn.id)
            if outcome is not None:
                # Rule T: a decided intent is either the committed descriptor or nothing.
                self._schedule_resolution(new.intent, outcome, scheduled)
                if outcome is TxnStatus.ABORTED:
                    return None
                new = CacheEntry(new.descriptor)
        overlaps = [self._entries[s] for s in self._tree.overlapping(new.start_key, new.end_key)]
        if new.speculative:
            return self._insert_intent(new, overlaps)
        return self._insert_committed(new, overlaps)

    def _insert_committed(self, new: CacheEntry, overlaps: list[CacheEntry]) -> CacheEntry | None:
        # Rule G. Whether or not `new` stays, it proves every overlapping entry older
        # than it stale: the keys they share have been covered by a descriptor of
        # `new`'s generation, and the generations covering a key only grow. So those
        # go first (with mixed generations around it, the older ones must not keep
        # serving), and then `new` is dropped if an overlapping one is newer still.
        newer = any(not o.speculative and o.generation > new.generation for o in overlaps)
        same: CacheEntry | None = None
        for old in overlaps:
            if old.speculative:
                if _same_range(old.descriptor, new.descriptor):
                    self._remove(old.slot, EvictionReason.INTENT_COMMITTED)  # rule I
                elif old.generation <= new.generation:
                    self._remove(old.slot, EvictionReason.STALE_INTENT)  # rule I
                # else: a newer intent; freshness undecided until it is pushed
            elif old.generation < new.generation:
                self._remove(old.slot, EvictionReason.SUPERSEDED)
            elif old.generation > new.generation:
                continue  # never evict a newer overlapping descriptor
            elif _same_range(old.descriptor, new.descriptor):
                same = old
            elif not newer:
                self._remove(old.slot, EvictionReason.CONFLICT)  # equal generation
        if newer:
            return None
        if same is not None:
            new = _merge_lease(same, new)
            if same.slot != new.slot:
                self._remove(same.slot, None)
        self._put(new)
        return new

    def _insert_intent(self, new: CacheEntry, overlaps: list[CacheEntry]) -> CacheEntry | None:
        for old in overlaps:
            if not old.speculative and old.generation >= new.generation:
                return None  # rule I: a committed descriptor at least as new proves it stale
            if old.slot == new.slot:
                new = replace(new, intent_status=new.intent_status or old.intent_status)
        self._put(new)
        return new

    def _put(self, entry: CacheEntry) -> None:
        slot = entry.slot
        stored = self._entries.get(slot)
        if stored is not None and stored.descriptor is not entry.descriptor:
            # An equal descriptor, another object (a lease learnt from a fresh lookup or
            # a redirect): re-key with it. A dict keeps the key it has, and a slot made
            # from the new object would then match it only field by field, replica by
            # replica, on every routed operation; by identity it is one comparison.
            self._remove(slot, None)
        if slot not in self._entries:
            self._adds += 1
            self._tree.add(slot, entry.start_key, entry.end_key)
            if entry.intent is not None:
                self._by_txn.setdefault(entry.intent.txn.id, set()).add(slot)
        self._entries[slot] = entry
        self._entries.move_to_end(slot)
        while len(self._entries) > self._max_entries:  # rule S
            self._remove(next(iter(self._entries)), EvictionReason.LRU)

    def _remove(self, slot: EntrySlot, reason: EvictionReason | None) -> None:
        """Drop an entry; ``reason`` None for a replacement by the same descriptor (not counted)."""
        entry = self._entries.pop(slot)
        self._confirmed_at.pop(slot, None)
        self._tree.discard(slot)
        if entry.intent is not None:
            slots = self._by_txn[entry.intent.txn.id]
            slots.discard(slot)
            if not slots:
                del self._by_txn[entry.intent.txn.id]
        if reason is not None:
            self.metrics.evicted(reason)

    # --- feedback from requests (rules P, V, L) ----------------------------------------

    def maybe_evict(
        self,
        token: EvictionToken,
        reason: EvictionReason,
        replacements: Iterable[RangeDescriptor] = (),
    ) -> bool:
        """Rule P: compare-and-evict the routed entry, then insert what the error said.

        Returns whether the entry was still cached (else the cache had moved on
        and nothing was removed). ``replacements`` go in by rule G either way.
        """
        routed = token.entry
        evicted = routed.slot in self._entries
        if evicted:
            self._remove(routed.slot, reason)
        for desc in replacements:
            carried = CacheEntry(desc)
            holder = routed.leaseholder
            if desc.range_id == routed.descriptor.range_id:
                # The lease sequence carries over (it never goes back); the holder only if
                # the new descriptor still lists it (rule L2).
                carried = replace(carried, lease_sequence=routed.lease_sequence)
                if holder is not None and desc.replica_on(holder.node_id) is not None:
                    carried = replace(
                        carried, leaseholder=holder, leaseholder_address=routed.leaseholder_address
                    )
                elif holder is not None:
                    self.metrics.lease_dropped()
            self._insert(carried, set())
        return evicted

    def maybe_evict_for_mismatch(self, token: EvictionToken, err: RangeKeyMismatch) -> bool:
        """Rule P for RangeKeyMismatch: the error's descriptors replace the routed one.

        Counted as ``range_key_mismatch`` when the error carries a descriptor newer
        than the routed one, else as ``mismatch_unchanged`` (it taught nothing: the
        caller re-reads meta, rule R).
        """
        reason = mismatch_reason(token.descriptor, err.descriptors)
        return self.maybe_evict(token, reason, err.descriptors)

    def maybe_confirm(self, token: EvictionToken) -> int:
        """Rule V: the routed entry served a request; drop overlapping entries older than it.

        Returns how many were removed. A no-op when the entry is no longer
        cached. Intents newer than it stay: a request succeeding under the old
        descriptor does not prove an in-flight change aborted.
        """
        slot = token.entry.slot
        current = self._entries.get(slot)
        if current is None or current.speculative:
            return 0
        self._entries.move_to_end(slot)
        if self._confirmed_at.get(slot) == self._adds:
            return 0  # nothing was added since it was last confirmed: nothing older overlaps
        older = self._older_overlapping(current)
        for e in older:
            self._remove(e.slot, EvictionReason.CONFIRMED_NEWER)
        self._confirmed_at[slot] = self._adds
        return len(older)

    def _older_overlapping(self, entry: CacheEntry) -> list[CacheEntry]:
        """The cached entries overlapping `entry` at a lower generation (rule V's victims)."""
        return [
            e
            for e in (
                self._entries[s] for s in self._tree.overlapping(entry.start_key, entry.end_key)
            )
            if e.generation < entry.generation
        ]

    def maybe_update_leaseholder(
        self, token: EvictionToken, err: NotLeaseHolder
    ) -> EvictionToken | None:
        """Rule L: learn what a NotLeaseHolder says; returns the token to route with next.

        The returned entry names ``err.leaseholder`` only if the hint was taken: the
        hinted replica is a member of the descriptor held afterwards (the error's
        when at least as new as the cached one, else the cached one with a pending
        change's replicas). A newer descriptor replaces the cached one and drops a
        leaseholder it does not list (L2). None: the range is no longer cached.
        """
        routed = token.entry
        current = self._entries.get(routed.slot)
        if current is None:
            current = self.peek(routed.start_key)
            if current is not None and current.descriptor.range_id != routed.descriptor.range_id:
                current = None
        base = current if current is not None else routed
        unchanged = EvictionToken(current) if current is not None else None
        desc = err.descriptor
        if desc is not None and desc.range_id != base.descriptor.range_id:
            return unchanged  # the error is about another range
        if desc is not None and desc.generation < base.generation:
            return unchanged  # an older descriptor: a lagging replica, nothing to learn
        target = desc if desc is not None else base.descriptor
        members = {r.node_id for r in target.replicas}
        if _same_range(target, routed.descriptor):
            members.update(r.node_id for r in routed.extra_replicas)
        lease = (base.leaseholder, base.leaseholder_address, base.lease_sequence)
        holder = err.leaseholder
        usable = holder is not None and holder.node_id in members
        if usable and err.lease_sequence >= base.lease_sequence:
            lease = (holder, err.leaseholder_address, err.lease_sequence)
        moved = not _same_range(target, base.descriptor)
        if moved and lease[0] is not None and lease[0].node_id not in members:
            lease = (None, "", lease[2])  # rule L2: the lease left with its replica
            self.metrics.lease_dropped()
        stored = self._insert(CacheEntry(target, *lease), set())
        if stored is None:
            return unchanged
        return EvictionToken(stored)

    def maybe_learn_leaseholder(
        self, token: EvictionToken, replica: ReplicaDescriptor, address: str, lease_sequence: int
    ) -> None:
        """Rule L3: ``replica`` answered a consistent request routed with ``token``, so it
        held the lease at ``lease_sequence``: route there first next time. Ignored when
        the entry is gone, or the cache knows a higher lease sequence (rule L)."""
        routed = token.entry
        if routed.leaseholder == replica and routed.lease_sequence >= lease_sequence:
            return  # routed there already: nothing new (and no hashing on the hot path)
        current = self._entries.get(routed.slot)
        if current is None or current.speculative:
            return
        if lease_sequence < current.lease_sequence or (
            current.leaseholder is not None and current.leaseholder.node_id == replica.node_id
        ):
            return
        self._insert(CacheEntry(current.descriptor, replica, address, lease_sequence), set())

    # --- for tests ----------------------------------------------------------------------

    def check(self) -> None:
        """Assert the invariants of OVERVIEW.md."""
        self._tree.check()
        assert len(self._tree) == len(self._entries) <= self._max_entries
        entries = list(self._entries.values())
        for i, a in enumerate(entries):
            assert a.slot in self._tree
            for b in entries[i + 1 :]:
                if not spans_overlap(a.start_key, a.end_key, b.start_key, b.end_key):
                    continue
                assert a.speculative or b.speculative, f"committed overlap: {a} / {b}"
                if a.speculative != b.speculative:
                    intent, committed = (a, b) if a.speculative else (b, a)
                    assert intent.generation > committed.generation, f"stale intent {intent}"
                else:
                    assert a.txn != b.txn, "one transaction's intents do not overlap"
        for slot, at in self._confirmed_at.items():
            # Rule V's shortcut: an entry confirmed with no slot added since has no
            # older entry overlapping it.
            confirmed = self._entries[slot]
            if at == self._adds:
                assert not self._older_overlapping(confirmed), (
                    f"an older entry overlaps {confirmed}, confirmed with no slot added since"
                )
        for txn_id, slots in self._by_txn.items():
            assert slots and all(self._entries[s].txn.id == txn_id for s in slots)  # type: ignore[union-attr]
