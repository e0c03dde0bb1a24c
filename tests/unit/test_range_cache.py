"""The gateway's range descriptor cache against a scripted meta range.

``ScriptedMeta`` is an in-memory meta range over a model layout: committed
descriptors and intents keyed by end key (the meta key), transaction records,
a forward scan with prefetch, pushes and intent resolution. Its staleness is
scriptable: ``stale`` answers are returned instead of the scan (a lagging meta
replica), and intents can be left unresolved.

Each test is written so that a plausible wrong cache fails it: last-writer-wins
inserts, evictions by key instead of by token, a hint accepted from an older
descriptor, a lower lease sequence accepted, pushes not made, a walk that stops
at the first intent.
"""

from __future__ import annotations

import asyncio
import collections
from typing import TypeVar

import pytest

from rangekv.common.descriptors import RangeDescriptor, ReplicaDescriptor
from rangekv.common.errors import NotLeaseHolder, RangeKeyMismatch, Unavailable
from rangekv.common.telemetry import Telemetry
from rangekv.domain.txn import Intent, TxnMeta, TxnStatus
from rangekv.gateway.cache_types import (
    CacheEntry,
    EvictionReason,
    InMemoryCacheMetrics,
    LookupResult,
    TelemetryCacheMetrics,
)
from rangekv.gateway.interval_tree import end_order
from rangekv.gateway.range_cache import RangeCache
from rangekv.v1 import meta_pb2

T = TypeVar("T")
N1, N2, N3, N4 = (ReplicaDescriptor(n, n) for n in (1, 2, 3, 4))


def desc(
    range_id: int,
    start: bytes,
    end: bytes,
    gen: int,
    replicas: tuple[ReplicaDescriptor, ...] = (N1, N2, N3),
) -> RangeDescriptor:
    return RangeDescriptor(range_id, start, end, replicas, generation=gen)


def mk(end: bytes) -> bytes:
    """The fake's meta key for an end key (opaque to the cache)."""
    return b"\x01" + end if end else b"\x02"


def txn_id(n: int) -> bytes:
    return n.to_bytes(16, "big")


class ScriptedMeta:
    """An in-memory meta range with scriptable staleness."""

    def __init__(self, *descriptors: RangeDescriptor) -> None:
        self.committed: dict[bytes, RangeDescriptor] = {d.end_key: d for d in descriptors}
        self.intents: dict[bytes, Intent] = {}
        self.txn_status: dict[bytes, TxnStatus] = {}
        self.expired: set[bytes] = set()
        self.stale: collections.deque[LookupResult] = collections.deque()
        self.lookups: list[bytes] = []
        self.consistent_lookups: list[bytes] = []
        self.pushes: list[bytes] = []
        self.resolutions: list[tuple[bytes, bytes, TxnStatus]] = []
        self.hold: asyncio.Event | None = None

    # --- the ports the cache uses ---

    async def lookup(self, key: bytes, prefetch: int, *, consistent: bool = False) -> LookupResult:
        self.lookups.append(key)
        if consistent:
            self.consistent_lookups.append(key)
        await asyncio.sleep(0)
        if self.hold is not None:
            await self.hold.wait()
        if self.stale and not consistent:  # a lagging replica; the leader is never stale
            return self.stale.popleft()
        descriptors: list[RangeDescriptor] = []
        intents: list[Intent] = []
        for end in sorted(set(self.committed) | set(self.intents), key=end_order):
            if end and end <= key:
                continue
            if end in self.intents:
                intents.append(self.intents[end])
            if end in self.committed:
                descriptors.append(self.committed[end])
                if len(descriptors) > prefetch:
                    break
        return LookupResult(tuple(descriptors), tuple(intents))

    async def push(
        self,
        txn: TxnMeta,
        intent_descriptor: RangeDescriptor,
        committed_descriptor: RangeDescriptor | None,
    ) -> TxnStatus:
        # The pusher must reach the txn record through one of the descriptors it is
        # given: the cache never needs the descriptor being resolved for that.
        assert intent_descriptor.contains_key(txn.record_key) or (
            committed_descriptor is not None and committed_descriptor.contains_key(txn.record_key)
        )
        self.pushes.append(txn.id)
        await asyncio.sleep(0)
        status = self.txn_status[txn.id]
        if status is TxnStatus.PENDING and txn.id in self.expired:
            status = self.txn_status[txn.id] = TxnStatus.ABORTED
        return status

    def resolve(self, meta_key: bytes, txn: bytes, status: TxnStatus) -> None:
        self.resolutions.append((meta_key, txn, status))
        for end, intent in list(self.intents.items()):
            if mk(end) == meta_key and intent.txn.id == txn:
                del self.intents[end]
                if status is TxnStatus.COMMITTED:
                    self.committed[end] = intent.descriptor

    # --- scripting the model ---

    def write_intent(self, d: RangeDescriptor, txn: TxnMeta) -> Intent:
        intent = Intent(mk(d.end_key), d, txn)
        self.intents[d.end_key] = intent
        self.txn_status.setdefault(txn.id, TxnStatus.PENDING)
        return intent

    def begin_split(
        self, d: RangeDescriptor, at: bytes, txn: int, new_range_id: int
    ) -> tuple[RangeDescriptor, RangeDescriptor, TxnMeta]:
        """Intents of a split of ``d`` at ``at``; the record lives on the left-hand side."""
        left = desc(d.range_id, d.start_key, at, d.generation + 1, d.replicas)
        right = desc(new_range_id, at, d.end_key, d.generation + 1, d.replicas)
        meta = TxnMeta(txn_id(txn), d.start_key, "split")
        self.write_intent(right, meta)  # the lock on the range, written first
        self.write_intent(left, meta)
        return left, right, meta

    def split(
        self, d: RangeDescriptor, at: bytes, new_range_id: int
    ) -> tuple[RangeDescriptor, ...]:
        """A committed, resolved split."""
        left = desc(d.range_id, d.start_key, at, d.generation + 1, d.replicas)
        right = desc(new_range_id, at, d.end_key, d.generation + 1, d.replicas)
        self.committed[at] = left
        self.committed[d.end_key] = right
        return left, right


def make_cache(meta: ScriptedMeta, **kwargs: int) -> RangeCache:
    return RangeCache(
        meta.lookup, meta.push, meta.resolve, metrics=InMemoryCacheMetrics(), **kwargs
    )


def counters(cache: RangeCache) -> InMemoryCacheMetrics:
    assert isinstance(cache.metrics, InMemoryCacheMetrics)
    return cache.metrics


ROOT = desc(1, b"", b"", 1)


# --- rule G: generations decide overlaps ---------------------------------------------


async def test_split_replaces_the_older_covering_descriptor() -> None:
    meta = ScriptedMeta(ROOT)
    cache = make_cache(meta)
    entry, _ = await cache.lookup(b"k")
    assert entry.descriptor == ROOT
    left, right = meta.split(ROOT, b"m", 2)
    cache.maybe_insert_descriptors([left])
    assert cache.peek(b"a") == CacheEntry(left)
    assert cache.peek(b"x") is None, "the older covering descriptor must be gone"
    assert counters(cache).evictions[EvictionReason.SUPERSEDED] == 1
    cache.maybe_insert_descriptors([right])
    assert [e.descriptor for e in cache.entries()] == [left, right]
    cache.check()


async def test_a_stale_descriptor_from_a_lookup_never_replaces_a_newer_one() -> None:
    meta = ScriptedMeta(ROOT)
    left, right = meta.split(ROOT, b"m", 2)
    cache = make_cache(meta)
    cache.maybe_insert_descriptors([left])
    # A lagging meta replica answers the lookup for "x" with the pre-split descriptor.
    meta.stale.append(LookupResult((ROOT,)))
    entry, token = await cache.lookup(b"x")
    assert entry.descriptor == ROOT  # the best answer for "x" it has: routed, not cached
    assert cache.peek(b"a") == CacheEntry(left), "last-writer-wins would have clobbered it"
    assert cache.peek(b"x") is None
    # The stale route fails with RangeKeyMismatch; the retry needs no lookup.
    cache.maybe_evict_for_mismatch(token, RangeKeyMismatch(1, (right,)))
    assert (await cache.lookup(b"x"))[0].descriptor == right
    assert len(meta.lookups) == 1
    cache.check()


async def test_a_stale_prefetched_descriptor_never_replaces_a_newer_one() -> None:
    meta = ScriptedMeta(ROOT)
    left, right = meta.split(ROOT, b"m", 2)
    mid, tail = meta.split(right, b"t", 3)
    cache = make_cache(meta)
    cache.maybe_insert_descriptors([mid])
    # The lookup for "a" is answered correctly for "a", but prefetches the stale [m, +inf).
    meta.stale.append(LookupResult((left, right)))
    assert (await cache.lookup(b"a"))[0].descriptor == left
    assert cache.peek(b"n") == CacheEntry(mid)
    assert cache.peek(b"u") is None
    cache.maybe_insert_descriptors([tail, right, ROOT])  # more stale ones, in any order
    assert [e.descriptor for e in cache.entries()] == [left, mid, tail]
    cache.check()


def test_adjacent_spans_are_not_overlaps() -> None:
    cache = make_cache(ScriptedMeta())
    a = desc(1, b"a", b"m", 5)
    b = desc(2, b"m", b"t", 1)
    c = desc(3, b"t", b"", 9)
    cache.maybe_insert_descriptors([a, b, c])
    assert [e.descriptor for e in cache.entries()] == [a, b, c]
    assert cache.peek(b"m") == CacheEntry(b) and cache.peek(b"l") == CacheEntry(a)
    assert not counters(cache).evictions
    cache.check()


def test_the_same_descriptor_merges_leaseholder_info() -> None:
    cache = make_cache(ScriptedMeta())
    d = desc(1, b"a", b"m", 5)
    cache.maybe_insert(CacheEntry(d, N2, "n2:1", 4))
    cache.maybe_insert(CacheEntry(d))  # a lookup's copy knows no lease
    assert cache.peek(b"b") == CacheEntry(d, N2, "n2:1", 4)
    cache.maybe_insert(CacheEntry(d, N3, "n3:1", 3))  # an older lease
    assert cache.peek(b"b") == CacheEntry(d, N2, "n2:1", 4)
    assert len(cache) == 1 and not counters(cache).evictions


async def test_an_insert_over_mixed_generations_removes_the_older_and_yields_to_the_newer() -> None:
    """Issue 14, item 5: {A[a,m) g2, B[m,z) g4} + C[b,y) g3. C proves A stale (the keys
    they share were covered at g3 since), and B proves C stale: A goes, C stays out,
    and b is then a miss that looks up instead of being served by A."""
    a = desc(1, b"a", b"m", 2)
    b = desc(2, b"m", b"z", 4)
    c = desc(1, b"b", b"y", 3)
    meta = ScriptedMeta(desc(1, b"a", b"b", 5), desc(3, b"b", b"m", 5), b)
    cache = make_cache(meta, prefetch=0)
    cache.maybe_insert_descriptors([a, b])
    assert cache.maybe_insert(CacheEntry(c)) is None
    assert [e.descriptor for e in cache.entries()] == [b]
    assert counters(cache).evictions[EvictionReason.SUPERSEDED] == 1
    cache.check()
    assert (await cache.lookup(b"b"))[0].descriptor == desc(3, b"b", b"m", 5)
    assert meta.lookups == [b"b"]


# --- rule P: compare-and-evict ----------------------------------------------------------


async def test_compare_and_evict_is_a_no_op_when_the_cache_moved_on() -> None:
    meta = ScriptedMeta(ROOT)
    cache = make_cache(meta)
    _, token = await cache.lookup(b"a")
    left, _ = meta.split(ROOT, b"m", 2)
    cache.maybe_insert_descriptors([left])  # another request learned of the split
    assert not cache.maybe_evict(token, EvictionReason.UNREACHABLE)
    assert cache.peek(b"a") == CacheEntry(left), "an eviction by key would have removed it"
    assert counters(cache).evictions[EvictionReason.UNREACHABLE] == 0


async def test_eviction_by_token_survives_a_leaseholder_update() -> None:
    meta = ScriptedMeta(ROOT)
    cache = make_cache(meta)
    _, token = await cache.lookup(b"a")
    redirected = cache.maybe_update_leaseholder(token, NotLeaseHolder(1, N2, "n2:1", 3, ROOT))
    assert redirected is not None and redirected.entry.leaseholder == N2
    assert cache.maybe_evict(token, EvictionReason.RANGE_NOT_FOUND)
    assert len(cache) == 0
    assert counters(cache).evictions[EvictionReason.RANGE_NOT_FOUND] == 1


async def test_range_key_mismatch_with_both_halves_routes_the_retry_with_zero_lookups() -> None:
    meta = ScriptedMeta(ROOT)
    cache = make_cache(meta)
    _, token = await cache.lookup(b"a")
    left, right = meta.split(ROOT, b"m", 2)
    assert cache.maybe_evict_for_mismatch(token, RangeKeyMismatch(1, (left, right)))
    assert (await cache.lookup(b"a"))[0].descriptor == left
    assert (await cache.lookup(b"x"))[0].descriptor == right
    assert meta.lookups == [b"a"]
    assert counters(cache).evictions[EvictionReason.RANGE_KEY_MISMATCH] == 1
    cache.check()


async def test_confirm_keeps_the_routed_entry_and_is_a_no_op_once_it_is_gone() -> None:
    meta = ScriptedMeta(ROOT)
    cache = make_cache(meta)
    _, token = await cache.lookup(b"a")
    assert cache.maybe_confirm(token) == 0
    assert cache.peek(b"a") == CacheEntry(ROOT)
    cache.maybe_insert_descriptors([desc(1, b"", b"m", 2)])
    assert cache.maybe_confirm(token) == 0
    assert cache.peek(b"a") == CacheEntry(desc(1, b"", b"m", 2))


async def test_confirm_skips_its_search_only_while_no_entry_was_added() -> None:
    """Rule V's shortcut (an entry confirmed before, with no slot added since, has no
    older entry overlapping it) must not hide one added later. No public path adds
    an older overlapping entry (rules G and I refuse it; rule V is the backstop), so
    this test plants one directly."""
    meta = ScriptedMeta(desc(1, b"", b"", 5))
    cache = make_cache(meta)
    _, token = await cache.lookup(b"a")
    assert cache.maybe_confirm(token) == 0  # searched, found nothing: remembered
    assert cache.maybe_confirm(token) == 0  # the shortcut
    cache._put(CacheEntry(desc(2, b"a", b"m", 3)))  # older, overlapping
    assert cache.maybe_confirm(token) == 1  # an entry was added: searched again
    assert counters(cache).evictions[EvictionReason.CONFIRMED_NEWER] == 1
    assert [e.descriptor.range_id for e in cache.entries()] == [1]
    cache.check()


def test_an_entry_replaced_under_an_equal_descriptor_is_keyed_by_the_new_object() -> None:
    """Routing builds each operation's slot from the entry it was handed; the cache's
    key must be that very descriptor object, or every lookup compares the two
    field by field, replica by replica."""
    cache = make_cache(ScriptedMeta(ROOT))
    first = desc(1, b"", b"", 1)
    cache.maybe_insert(CacheEntry(first))
    again = desc(1, b"", b"", 1)  # equal, another object (a fresh lookup's)
    assert again == first and again is not first
    stored = cache.maybe_insert(CacheEntry(again, N2, "n2", 7))
    assert stored is not None and stored.descriptor is again
    [(key_descriptor, _txn)] = list(cache._entries)
    assert key_descriptor is again
    cache.check()


# --- rule L: NotLeaseHolder hints -------------------------------------------------------


async def test_a_hint_naming_a_replica_only_a_newer_descriptor_lists_is_followed() -> None:
    meta = ScriptedMeta(ROOT)
    cache = make_cache(meta)
    _, token = await cache.lookup(b"a")
    theirs = desc(1, b"", b"", 2, (N2, N3, N4))
    err = NotLeaseHolder(1, N4, "n4:1", 7, theirs)
    redirected = cache.maybe_update_leaseholder(token, err)
    assert redirected is not None
    assert (redirected.entry.leaseholder, redirected.entry.leaseholder_address) == (N4, "n4:1")
    entry, _ = await cache.lookup(b"q")
    assert (entry.descriptor, entry.leaseholder, entry.lease_sequence) == (theirs, N4, 7)
    assert meta.lookups == [b"a"], "following the hint must cost no lookup"
    cache.check()


@pytest.mark.parametrize(
    "theirs",
    [ROOT, None, desc(1, b"", b"", 2)],
    ids=["same-descriptor", "no-descriptor", "newer-descriptor-without-it"],
)
async def test_a_hint_naming_a_replica_outside_the_descriptor_is_not_taken(
    theirs: RangeDescriptor | None,
) -> None:
    """Issue 14, item 1: a leaseholder in no descriptor the cache would hold cannot be
    routed to; the entry keeps no lease (and takes a newer descriptor if one came)."""
    cache = make_cache(ScriptedMeta(ROOT))
    _, token = await cache.lookup(b"a")
    after = cache.maybe_update_leaseholder(token, NotLeaseHolder(1, N4, "n4:1", 7, theirs))
    assert after is not None and after.entry.leaseholder is None
    assert after.entry.descriptor == (theirs or ROOT)
    cache.check()


async def test_a_newer_descriptor_without_the_cached_leaseholder_drops_the_lease() -> None:
    """Issue 14, item 4: the lease leaves with its replica, whether the newer descriptor
    comes with a NotLeaseHolder (whose own hint is not taken) or a mismatch."""
    cache = make_cache(ScriptedMeta())
    cache.maybe_insert(CacheEntry(ROOT, N1, "n1:1", 5))
    token = (await cache.lookup(b"a"))[1]
    without_n1 = desc(1, b"", b"", 2, (N2, N3, N4))
    # The hint names n2 at an older lease sequence: the descriptor is taken, the hint not.
    after = cache.maybe_update_leaseholder(token, NotLeaseHolder(1, N2, "n2:1", 4, without_n1))
    assert after is not None
    assert (after.entry.descriptor, after.entry.leaseholder, after.entry.lease_sequence) == (
        without_n1,
        None,
        5,
    ), "the lease sequence stays as a floor; the holder is gone"
    assert counters(cache).leases_dropped == 1
    # The same through a RangeKeyMismatch carrying the newer descriptor.
    other = make_cache(ScriptedMeta())
    other.maybe_insert(CacheEntry(ROOT, N1, "n1:1", 5))
    routed = (await other.lookup(b"a"))[1]
    other.maybe_evict_for_mismatch(routed, RangeKeyMismatch(1, (without_n1,)))
    assert other.peek(b"a") == CacheEntry(without_n1, None, "", 5)
    assert counters(other).leases_dropped == 1


async def test_a_hint_with_an_older_descriptor_is_ignored() -> None:
    current = desc(1, b"", b"", 3, (N1, N2, N3))
    cache = make_cache(ScriptedMeta())
    cache.maybe_insert(CacheEntry(current, N1, "n1:1", 5))
    token = (await cache.lookup(b"a"))[1]
    old = desc(1, b"", b"", 2, (N1, N3, N4))
    after = cache.maybe_update_leaseholder(token, NotLeaseHolder(1, N4, "n4:1", 9, old))
    assert after is not None and after.entry == CacheEntry(current, N1, "n1:1", 5)
    assert cache.entries() == [CacheEntry(current, N1, "n1:1", 5)]


async def test_a_lower_lease_sequence_never_overwrites_a_higher_one() -> None:
    d = desc(1, b"", b"", 3)
    cache = make_cache(ScriptedMeta())
    cache.maybe_insert(CacheEntry(d))
    token = (await cache.lookup(b"a"))[1]
    t2 = cache.maybe_update_leaseholder(token, NotLeaseHolder(1, N2, "n2:1", 7, d))
    assert t2 is not None and t2.entry.leaseholder == N2
    # A replica that still believes in an older lease answers later.
    t3 = cache.maybe_update_leaseholder(t2, NotLeaseHolder(1, N1, "n1:1", 6, d))
    assert t3 is not None and (t3.entry.leaseholder, t3.entry.lease_sequence) == (N2, 7)
    assert cache.peek(b"a") == CacheEntry(d, N2, "n2:1", 7)
    # ... even one carrying a newer descriptor: the descriptor is taken, the lease is not.
    d4 = desc(1, b"", b"", 4)
    t4 = cache.maybe_update_leaseholder(t3, NotLeaseHolder(1, N3, "n3:1", 5, d4))
    assert t4 is not None and t4.entry == CacheEntry(d4, N2, "n2:1", 7)
    t5 = cache.maybe_update_leaseholder(t4, NotLeaseHolder(1, N3, "n3:1", 8, d4))
    assert t5 is not None and cache.peek(b"a") == CacheEntry(d4, N3, "n3:1", 8)


async def test_a_hint_without_descriptor_is_followed_only_inside_the_descriptor() -> None:
    cache = make_cache(ScriptedMeta())
    cache.maybe_insert(CacheEntry(ROOT))
    token = (await cache.lookup(b"a"))[1]
    t = cache.maybe_update_leaseholder(token, NotLeaseHolder(1, N4, "n4:1", 2, None))
    assert t is not None and t.entry.leaseholder is None
    t = cache.maybe_update_leaseholder(token, NotLeaseHolder(1, N3, "n3:1", 2, None))
    assert t is not None and t.entry.leaseholder == N3


# --- coalescing -------------------------------------------------------------------------


async def test_concurrent_misses_on_one_key_cost_one_lookup() -> None:
    meta = ScriptedMeta(ROOT)
    cache = make_cache(meta)

    async def main() -> list[tuple[CacheEntry, object]]:
        return await asyncio.gather(*(cache.lookup(b"k") for _ in range(20)))

    answers = await main()
    assert {e.descriptor for e, _ in answers} == {ROOT}
    assert meta.lookups == [b"k"]
    assert counters(cache).lookups == 1
    assert counters(cache).coalesced_lookups == 19


async def test_concurrent_misses_in_one_range_cost_one_lookup() -> None:
    meta = ScriptedMeta(ROOT)
    cache = make_cache(meta)

    async def main() -> None:
        await asyncio.gather(*(cache.lookup(bytes([97 + i])) for i in range(20)))

    await main()
    assert meta.lookups == [b"a"]


@pytest.mark.parametrize("order", ["key-order", "reverse-order", "middle-first"])
async def test_concurrent_misses_in_one_range_cost_one_lookup_in_any_order(order: str) -> None:
    """Issue 14, item 6: after a split at "an", misses for an0, an1, an2 share one lookup
    whatever order they arrive in (each waits for the nearest lookup below or above)."""
    left, right = desc(1, b"", b"an", 2), desc(2, b"an", b"", 2)
    meta = ScriptedMeta(left, right)
    cache = make_cache(meta)
    keys = {
        "key-order": [b"an0", b"an1", b"an2"],
        "reverse-order": [b"an2", b"an1", b"an0"],
        "middle-first": [b"an1", b"an2", b"an0"],
    }[order]

    async def main() -> list[tuple[CacheEntry, object]]:
        meta.hold = asyncio.Event()
        calls = [asyncio.ensure_future(cache.lookup(k)) for k in keys]
        await asyncio.sleep(0)
        meta.hold.set()
        return await asyncio.gather(*calls)

    assert {e.descriptor for e, _ in (await main())} == {right}
    assert meta.lookups == [keys[0]]
    assert counters(cache).coalesced_lookups == 2


async def test_a_miss_the_nearby_lookup_does_not_cover_looks_up_exactly_once() -> None:
    left, right = desc(1, b"", b"an", 2), desc(2, b"an", b"", 2)
    meta = ScriptedMeta(left, right)
    cache = make_cache(meta, prefetch=0)

    async def main() -> list[tuple[CacheEntry, object]]:
        meta.hold = asyncio.Event()
        calls = [asyncio.ensure_future(cache.lookup(k)) for k in (b"an2", b"a0")]
        await asyncio.sleep(0)
        meta.hold.set()
        return await asyncio.gather(*calls)

    assert [e.descriptor for e, _ in (await main())] == [right, left]
    assert meta.lookups == [b"an2", b"a0"]


async def test_a_lookup_outlives_the_request_that_started_it() -> None:
    """The first miss gives up (its deadline); the others still get the one answer."""
    meta = ScriptedMeta(ROOT)
    cache = make_cache(meta)

    async def main() -> list[tuple[CacheEntry, object]]:
        meta.hold = asyncio.Event()
        first = asyncio.ensure_future(cache.lookup(b"k"))
        await asyncio.sleep(0)
        others = [asyncio.ensure_future(cache.lookup(b"k")) for _ in range(3)]
        await asyncio.sleep(0)
        first.cancel()
        meta.hold.set()
        return await asyncio.gather(*others)

    assert {e.descriptor for e, _ in (await main())} == {ROOT}
    assert meta.lookups == [b"k"]


# --- rule R: re-reading meta after a descriptor proved wrong ----------------------------


async def test_a_lookup_no_newer_than_the_stale_descriptor_is_repeated_at_the_meta_leader() -> None:
    """Issue 14, item 3: a lagging meta replica still answers with the descriptor that
    just failed; the cache then reads meta consistently (at its leader)."""
    meta = ScriptedMeta(ROOT)
    cache = make_cache(meta)
    _, token = await cache.lookup(b"x")
    left, right = meta.split(ROOT, b"m", 2)
    assert cache.maybe_evict(token, EvictionReason.RANGE_NOT_FOUND)
    meta.stale.append(LookupResult((ROOT,)))
    entry, _ = await cache.lookup(b"x", stale=ROOT)
    assert entry.descriptor == right
    assert meta.consistent_lookups == [b"x"] and len(meta.lookups) == 3
    # An inconsistent answer newer than the bound is enough: no consistent read.
    assert (await cache.lookup(b"a", stale=ROOT))[0].descriptor == left
    assert len(meta.lookups) == 4 and meta.consistent_lookups == [b"x"]
    assert counters(cache).consistent_lookups == 1


async def test_a_cached_entry_no_newer_than_the_stale_descriptor_is_not_a_hit() -> None:
    meta = ScriptedMeta(ROOT)
    cache = make_cache(meta)
    await cache.lookup(b"x")
    _, right = meta.split(ROOT, b"m", 2)
    meta.stale.append(LookupResult((ROOT,)))  # and meta's followers lag too
    assert cache.hit(b"x", stale=ROOT) is None
    entry, _ = await cache.lookup(b"x", stale=ROOT)
    assert entry.descriptor == right
    assert meta.consistent_lookups == [b"x"]


async def test_the_consistent_answer_is_returned_even_when_it_is_no_newer() -> None:
    """Meta's leader agrees with the descriptor that failed: the caller gets it (and
    backs off), the cache does not loop."""
    meta = ScriptedMeta(ROOT)
    cache = make_cache(meta)
    await cache.lookup(b"x")
    entry, _ = await cache.lookup(b"x", stale=ROOT)
    assert entry.descriptor == ROOT
    assert len(meta.lookups) == 3 and meta.consistent_lookups == [b"x"]


async def test_a_failed_lookup_fails_its_waiters_and_the_next_miss_retries() -> None:
    meta = ScriptedMeta()  # nothing covers any key
    cache = make_cache(meta)

    async def main() -> list[BaseException | tuple[CacheEntry, object]]:
        return await asyncio.gather(*(cache.lookup(b"k") for _ in range(5)), return_exceptions=True)

    assert all(isinstance(r, Unavailable) for r in await main())
    assert meta.lookups == [b"k"]
    meta.committed[b""] = ROOT
    assert (await cache.lookup(b"k"))[0].descriptor == ROOT


# --- intents (rule T) ---------------------------------------------------------------------


async def test_an_intent_of_a_committed_split_is_used() -> None:
    meta = ScriptedMeta(ROOT)
    left, right, txn = meta.begin_split(ROOT, b"m", 1, 2)
    meta.txn_status[txn.id] = TxnStatus.COMMITTED  # committed, intents not yet resolved
    cache = make_cache(meta)
    assert (await cache.lookup(b"a"))[0].descriptor == left
    assert meta.pushes == [txn.id]
    # The prefetched intent of the same transaction is known committed: no second push.
    assert (await cache.lookup(b"x"))[0].descriptor == right
    assert meta.pushes == [txn.id] and len(meta.lookups) == 1
    assert set(meta.resolutions) == {
        (mk(b"m"), txn.id, TxnStatus.COMMITTED),
        (mk(b""), txn.id, TxnStatus.COMMITTED),
    }
    assert meta.committed == {b"m": left, b"": right} and not meta.intents
    assert not any(e.speculative for e in cache.entries())
    cache.check()


async def test_an_intent_of_an_aborted_split_is_discarded() -> None:
    meta = ScriptedMeta(ROOT)
    _, _, txn = meta.begin_split(ROOT, b"m", 1, 2)
    meta.txn_status[txn.id] = TxnStatus.ABORTED
    cache = make_cache(meta)
    assert (await cache.lookup(b"a"))[0].descriptor == ROOT  # the scan meets both intents
    assert (await cache.lookup(b"x"))[0].descriptor == ROOT
    assert meta.pushes == [txn.id] and meta.lookups == [b"a"]
    assert cache.entries() == [CacheEntry(ROOT)]
    assert {s for _, _, s in meta.resolutions} == {TxnStatus.ABORTED}
    assert not meta.intents and meta.committed == {b"": ROOT}


async def test_an_intent_of_a_pending_split_is_pushed_and_the_committed_descriptor_used() -> None:
    meta = ScriptedMeta(ROOT)
    left, right, txn = meta.begin_split(ROOT, b"m", 1, 2)
    cache = make_cache(meta)
    assert (await cache.lookup(b"a"))[0].descriptor == ROOT
    assert meta.pushes == [txn.id]
    assert counters(cache).pushes["pending"] == 1
    # The undecided pair stays; a hit does not push again.
    assert {e.descriptor for e in cache.entries() if e.speculative} == {left, right}
    assert (await cache.lookup(b"x"))[0].descriptor == ROOT
    assert meta.pushes == [txn.id] and len(meta.lookups) == 1
    cache.check()
    # The split commits; the old route fails, and the error's descriptors replace both.
    meta.txn_status[txn.id] = TxnStatus.COMMITTED
    _, token = await cache.lookup(b"x")
    cache.maybe_evict_for_mismatch(token, RangeKeyMismatch(1, (left, right)))
    assert [e.descriptor for e in cache.entries()] == [left, right]
    assert not any(e.speculative for e in cache.entries())
    cache.check()


async def test_a_pending_split_past_its_deadline_is_aborted_by_the_push() -> None:
    meta = ScriptedMeta(ROOT)
    _, _, txn = meta.begin_split(ROOT, b"m", 1, 2)
    meta.expired.add(txn.id)
    cache = make_cache(meta)
    assert (await cache.lookup(b"a"))[0].descriptor == ROOT
    assert meta.txn_status[txn.id] is TxnStatus.ABORTED and not meta.intents
    assert cache.entries() == [CacheEntry(ROOT)]


async def test_a_pending_replica_change_routes_with_the_union_of_both_replica_sets() -> None:
    meta = ScriptedMeta(ROOT)
    changed = desc(1, b"", b"", 2, (N1, N2, N4))
    meta.write_intent(changed, TxnMeta(txn_id(5), b"", "change-replicas"))
    cache = make_cache(meta)
    entry, _ = await cache.lookup(b"a")
    assert entry.descriptor == ROOT and entry.extra_replicas == (N4,)
    assert entry.routing_replicas() == (N1, N2, N3, N4)
    again, _ = await cache.lookup(b"b")  # a hit keeps routing with the union
    assert again.extra_replicas == (N4,) and len(meta.pushes) == 1


async def test_prefetched_intents_are_pushed_only_when_their_keys_are_used() -> None:
    far = desc(2, b"m", b"", 1)
    meta = ScriptedMeta(desc(1, b"", b"m", 1), far)
    left, right, txn = meta.begin_split(far, b"t", 7, 3)
    meta.txn_status[txn.id] = TxnStatus.COMMITTED
    cache = make_cache(meta)
    await cache.lookup(b"a")
    assert meta.pushes == [] and any(e.speculative for e in cache.entries())
    cache.check()
    assert (await cache.lookup(b"u"))[0].descriptor == right  # a hit that pushes
    assert meta.pushes == [txn.id] and len(meta.lookups) == 1
    assert cache.peek(b"n") == CacheEntry(left)


async def test_the_reference_counterexample_resolves_every_key_to_the_truth() -> None:
    # [A, D) split at B aborts, leaving intents at meta(B) and meta(D); meta(D)'s is
    # resolved; then a split at C commits, its intents unresolved. Both records at A.
    a, b, c, d = b"A", b"B", b"C", b"D"
    whole = desc(1, a, d, 1)
    tail = desc(9, d, b"", 4)
    meta = ScriptedMeta(whole, tail)
    _, _, t1 = meta.begin_split(whole, b, 1, 2)
    meta.txn_status[t1.id] = TxnStatus.ABORTED
    meta.resolve(mk(d), t1.id, TxnStatus.ABORTED)
    assert set(meta.intents) == {b}
    left, right, t2 = meta.begin_split(whole, c, 2, 3)
    meta.txn_status[t2.id] = TxnStatus.COMMITTED
    assert set(meta.intents) == {b, c, d}
    truth = {a: left, b"A1": left, b: left, b"B1": left, c: right, b"C1": right, b"D1": tail}
    snapshot = (dict(meta.committed), dict(meta.intents))
    for key, expected in truth.items():  # each key through a fresh cache and meta
        meta.committed, meta.intents = dict(snapshot[0]), dict(snapshot[1])
        fresh = make_cache(meta, prefetch=0)
        assert (await fresh.lookup(key))[0].descriptor == expected, key
        fresh.check()
    # One cache, all keys, prefetch on, meta as it was.
    meta.committed, meta.intents = dict(snapshot[0]), dict(snapshot[1])
    meta.pushes.clear()
    cache = make_cache(meta)
    for key, expected in truth.items():
        assert (await cache.lookup(key))[0].descriptor == expected, key
    assert sorted(meta.pushes) == sorted([t1.id, t2.id])
    cache.check()
    # The walk resolved what it met, so the next reader pays no push.
    assert meta.committed == {c: left, d: right, b"": tail} and not meta.intents
    meta.pushes.clear()
    again = make_cache(meta)
    for key, expected in truth.items():
        assert (await again.lookup(key))[0].descriptor == expected, key
    assert meta.pushes == []


# --- rule S: size -----------------------------------------------------------------------


async def test_the_size_bound_evicts_the_least_recently_used() -> None:
    cache = make_cache(ScriptedMeta(), max_entries=4)
    ds = [desc(i + 1, bytes([97 + i]), bytes([98 + i]), 1) for i in range(10)]
    cache.maybe_insert_descriptors(ds[:4])
    (await cache.lookup(b"a"))  # touch "a": now the most recently used
    cache.maybe_insert_descriptors(ds[4:7])
    assert [e.descriptor for e in cache.entries()] == [ds[0], ds[4], ds[5], ds[6]]
    cache.maybe_insert_descriptors(ds[7:])
    assert [e.descriptor for e in cache.entries()] == [ds[6], ds[7], ds[8], ds[9]]
    assert counters(cache).evictions[EvictionReason.LRU] == 6 and counters(cache).hits == 1
    cache.check()


def test_lookup_result_reads_the_wire_form() -> None:
    intent = Intent(mk(b"m"), desc(1, b"", b"m", 2), TxnMeta(txn_id(3), b"", "split"))
    pb = meta_pb2.LookupRangeResponse(descriptors=[ROOT.to_proto()], intents=[intent.to_proto()])
    assert LookupResult.from_proto(pb) == LookupResult((ROOT,), (intent,))


async def test_prefetch_never_pushes_the_answer_out_of_a_small_cache() -> None:
    ds = [desc(i + 1, bytes([97 + i]), bytes([98 + i]) if i < 9 else b"", 1) for i in range(10)]
    meta = ScriptedMeta(*ds)
    cache = make_cache(meta, max_entries=3)
    assert (await cache.lookup(b"a"))[0].descriptor == ds[0]
    assert (await cache.lookup(b"a"))[0].descriptor == ds[0]
    assert meta.lookups == [b"a"] and len(cache) == 3


async def test_telemetry_counters_are_exported() -> None:
    telemetry = Telemetry("gateway")
    try:
        cache = RangeCache(
            ScriptedMeta(ROOT).lookup,
            ScriptedMeta().push,
            ScriptedMeta().resolve,
            metrics=TelemetryCacheMetrics(telemetry),
        )
        await cache.lookup(b"a")
        await cache.lookup(b"a")
        text = telemetry.metrics_text()
        assert "rangekv_gateway_cache_hits_total" in text
        assert "rangekv_gateway_meta_lookups_total" in text
    finally:
        telemetry.shutdown()
