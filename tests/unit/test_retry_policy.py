"""The DistSender's per-request rules (rangekv.gateway.retry_policy), one by one.

The end-to-end behaviour is in tests/unit/test_dist_sender.py and, through the
real gateway process, tests/integration/test_gateway_routing.py; these pin the
pieces: the backoff's bounds, the order of one pass, and the NotLeaseHolder
decisions by lease sequence.
"""

from __future__ import annotations

import random

import pytest

from rangekv.common.descriptors import RangeDescriptor, ReplicaDescriptor
from rangekv.common.errors import NotLeaseHolder
from rangekv.gateway.cache_types import CacheEntry
from rangekv.gateway.retry_policy import (
    LAGGING_ATTEMPTS,
    MAX_REDIRECTS_PER_PASS,
    Backoff,
    ReplicaOrder,
    RouteState,
    after_not_lease_holder,
)

N1, N2, N3, N4 = (ReplicaDescriptor(n, n) for n in (1, 2, 3, 4))
D = RangeDescriptor(1, b"", b"", (N1, N2, N3), generation=3)
OLDER = RangeDescriptor(1, b"", b"", (N2, N3, N4), generation=2)


def state() -> RouteState:
    return RouteState()


def test_backoff_doubles_to_its_cap_with_jitter_and_never_passes_the_deadline() -> None:
    backoff = Backoff(0.02, 1.0, random.Random(1))
    delays = [backoff.delay(100.0) for _ in range(12)]
    steps = [min(0.02 * 2**i, 1.0) for i in range(12)]
    assert all(0.5 * s <= d < 1.5 * s for d, s in zip(delays, steps, strict=True)), delays
    assert backoff.delay(0.003) <= 0.003
    assert backoff.delay(-1.0) == 0.0


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="initial"):
        Backoff(0.0, 1.0, random.Random())
    with pytest.raises(ValueError, match="initial"):
        Backoff(2.0, 1.0, random.Random())


def test_a_pass_asks_the_leaseholder_first_and_every_replica_once() -> None:
    order = ReplicaOrder((N1, N2, N3), N3)
    assert [order.next(), order.next(), order.next(), order.next()] == [N3, N1, N2, None]


def test_go_to_asks_again_and_reroute_keeps_only_members_not_yet_asked() -> None:
    order = ReplicaOrder((N1, N2, N3), None)
    assert order.next() == N1
    order.go_to(N1)  # a redirect to a strictly newer lease may ask a replica again
    assert order.next() == N1
    assert order.next() == N2
    order.reroute((N2, N3, N4), N4)  # a newer descriptor: N1 left, N4 joined and leads
    assert [order.next(), order.next(), order.next()] == [N4, N3, None]


def nlh(
    holder: ReplicaDescriptor | None, seq: int, desc: RangeDescriptor | None = D
) -> NotLeaseHolder:
    return NotLeaseHolder(1, holder, "", seq, desc)


def test_a_higher_lease_sequence_is_followed_at_once_even_to_a_replica_asked() -> None:
    s, order = state(), ReplicaOrder((N1, N2, N3), None)
    routed = CacheEntry(D)
    asked = order.next()
    assert asked == N1
    step = after_not_lease_holder(s, order, N1, routed, CacheEntry(D, N1, "", 6), nlh(N1, 6))
    assert step.reason == "no_leaseholder"  # "I am the leaseholder", yet refused: next
    order.next()
    step = after_not_lease_holder(s, order, N2, routed, CacheEntry(D, N1, "", 7), nlh(N1, 7))
    assert (step.go_to, step.reason, s.lease_sequence) == (N1, "redirect", 7)


def test_a_sequence_not_higher_goes_only_to_a_replica_not_yet_asked() -> None:
    s, order = state(), ReplicaOrder((N1, N2, N3), None)
    s.lease_sequence = 5
    routed = CacheEntry(D, N2, "", 5)
    order.next()  # N1
    step = after_not_lease_holder(s, order, N1, routed, CacheEntry(D, N3, "", 5), nlh(N3, 5))
    assert step.go_to == N3  # not asked yet: part of the pass anyway
    order.go_to(N3)
    order.next()
    step = after_not_lease_holder(s, order, N3, routed, CacheEntry(D, N1, "", 5), nlh(N1, 5))
    assert (step.go_to, step.end_pass, step.reason) == (None, False, "lease_not_newer")


def test_redirects_at_once_are_bounded_per_pass() -> None:
    s, order = state(), ReplicaOrder((N1, N2, N3), None)
    routed = CacheEntry(D)
    for seq in range(1, MAX_REDIRECTS_PER_PASS + 1):
        err = nlh(N2, seq)
        assert after_not_lease_holder(s, order, N1, routed, CacheEntry(D, N2, "", seq), err).go_to
    err = nlh(N2, 100)
    step = after_not_lease_holder(s, order, N1, routed, CacheEntry(D, N2, "", 100), err)
    assert (step.go_to, step.end_pass, step.reason) == (None, True, "redirect_limit")
    s.start_pass(CacheEntry(D, N2, "", 100))
    assert s.redirects_in_pass == 0 and s.lease_sequence == 100


def test_hints_the_cache_did_not_take_mean_the_next_replica() -> None:
    s, order = state(), ReplicaOrder((N1, N2, N3), None)
    routed = CacheEntry(D)
    for err, reason in [
        (nlh(None, 3), "no_leaseholder"),
        (nlh(N4, 3), "unusable_hint"),
        (nlh(N4, 3, None), "unusable_hint"),
    ]:
        step = after_not_lease_holder(s, order, N1, routed, CacheEntry(D), err)
        assert (step.go_to, step.end_pass, step.reason) == (None, False, reason)
    known = CacheEntry(D, N3, "", 9)
    step = after_not_lease_holder(s, order, N1, known, known, nlh(N2, 4))
    assert step.reason == "older_lease"


def test_a_lagging_leaseholder_is_retried_after_a_backoff_a_bounded_number_of_times() -> None:
    s, order = state(), ReplicaOrder((N1, N2, N3), N2)
    routed = CacheEntry(D, N2, "", 5)
    steps = [
        after_not_lease_holder(s, order, N2, routed, routed, nlh(N4, 6, OLDER))
        for _ in range(LAGGING_ATTEMPTS)
    ]
    assert [st.end_pass for st in steps] == [True] * (LAGGING_ATTEMPTS - 1) + [False]
    assert {st.reason for st in steps} == {"lagging_replica"}
    # Another replica answering with an older descriptor is simply skipped.
    step = after_not_lease_holder(s, order, N1, routed, routed, nlh(N4, 6, OLDER))
    assert (step.end_pass, step.reason) == (False, "unusable_hint")
