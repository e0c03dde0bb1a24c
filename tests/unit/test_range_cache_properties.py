"""Property: whatever order stale and fresh descriptors arrive in, the cache never goes back.

A random history of splits and replica changes of one keyspace yields every
descriptor that ever existed (each a committed value at some point, each also
possibly seen as an intent). Random interleavings insert them, stale ones
included, as committed descriptors or as intents of their transaction, and
pass NotLeaseHolder hints through tokens. After every step:

- the cache's invariants hold (``RangeCache.check``: no two committed entries
  overlap; an intent overlaps only older committed entries; the tree is sound);
- for every key, the committed entry answering it is at least as new as every
  committed descriptor the cache has been given for that key, i.e. the
  generation rule holds (last-writer-wins fails this within a few examples).
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from rangekv.common.descriptors import RangeDescriptor, ReplicaDescriptor
from rangekv.common.errors import NotLeaseHolder
from rangekv.domain.txn import Intent, TxnMeta, TxnStatus
from rangekv.gateway.cache_types import CacheEntry, EvictionToken, LookupResult
from rangekv.gateway.range_cache import RangeCache

PROBES = [b""] + [bytes([i]) for i in range(0, 256, 5)]


async def _no_lookup(key: bytes, prefetch: int) -> LookupResult:
    raise AssertionError("the property only inserts")


async def _no_push(txn: TxnMeta, intent: RangeDescriptor, fallback: object) -> TxnStatus:
    raise AssertionError("the property never pushes")


def _no_resolve(meta_key: bytes, txn_id: bytes, status: TxnStatus) -> None:
    raise AssertionError("nothing is resolved")


@st.composite
def histories(draw: st.DrawFn) -> list[RangeDescriptor]:
    """Every descriptor of a random split / replica-change history, oldest first."""
    replicas = tuple(ReplicaDescriptor(n, n) for n in (1, 2, 3))
    live = {1: RangeDescriptor(1, b"", b"", replicas, generation=0)}
    history = [live[1]]
    next_id = 2
    for _ in range(draw(st.integers(1, 14))):
        d = live[draw(st.sampled_from(sorted(live)))]
        if draw(st.booleans()):
            at = bytes([draw(st.integers(1, 255))])
            if not d.contains_key(at) or at == d.start_key:
                continue
            left = replace(d, end_key=at, generation=d.generation + 1)
            right = replace(d, range_id=next_id, start_key=at, generation=d.generation + 1)
            next_id += 1
            live[left.range_id], live[right.range_id] = left, right
            history += [left, right]
        else:
            node = draw(st.integers(4, 9))
            moved = replace(
                d,
                replicas=(*d.replicas[1:], ReplicaDescriptor(node, node)),
                generation=d.generation + 1,
            )
            live[moved.range_id] = moved
            history.append(moved)
    return history


def intent_of(d: RangeDescriptor) -> Intent:
    txn = TxnMeta((d.range_id * 1000 + d.generation).to_bytes(16, "big"), d.start_key, "split")
    return Intent(b"meta" + d.end_key, d, txn)


# (history index, kind, lease sequence): kind 0 committed, 1 intent, 2 NotLeaseHolder hint
STEPS = st.lists(st.tuples(st.integers(0, 60), st.integers(0, 2), st.integers(0, 9)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(histories(), STEPS)
def test_the_cache_never_answers_with_an_older_descriptor_than_it_was_given(
    history: list[RangeDescriptor], steps: list[tuple[int, int, int]]
) -> None:
    cache = RangeCache(_no_lookup, _no_push, _no_resolve, max_entries=10_000)
    seen: dict[bytes, int] = {}
    for index, kind, sequence in steps:
        d = history[index % len(history)]
        if kind == 1:
            cache.maybe_insert(CacheEntry(d, intent=intent_of(d)))
            cache.check()
            continue
        if kind == 0:
            stored = cache.maybe_insert(CacheEntry(d))
            if stored is not None and sequence % 2:
                cache.maybe_confirm(EvictionToken(stored))  # rule V, then check() below
        else:
            current = cache.peek(d.start_key)
            if current is None or current.descriptor.range_id != d.range_id:
                continue  # a replica of this range is not where the cache would route
            holder = d.replicas[sequence % len(d.replicas)]
            err = NotLeaseHolder(d.range_id, holder, f"n{holder.node_id}", sequence, d)
            cache.maybe_update_leaseholder(EvictionToken(current), err)
            after = cache.peek(d.start_key)
            if after is not None and after.descriptor.range_id == current.descriptor.range_id:
                # Rule L: never back to a lower lease sequence, never to an older descriptor.
                assert after.lease_sequence >= current.lease_sequence
                assert after.generation >= current.generation
        for key in PROBES:
            if d.contains_key(key):
                seen[key] = max(seen.get(key, -1), d.generation)
        cache.check()
        for key in PROBES:
            answer = cache.peek(key)
            if answer is not None:
                assert answer.generation >= seen.get(key, -1), (key, answer, seen[key])
                assert answer.descriptor.contains_key(key)
