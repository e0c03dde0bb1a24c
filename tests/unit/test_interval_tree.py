"""The gateway's interval map against a brute-force model, plus the edge cases that matter."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from rangekv.gateway.interval_tree import IntervalMap, end_order, spans_overlap

KEYS = st.binary(min_size=0, max_size=2).map(lambda b: b.replace(b"\x00", b"\x01"))


def span_of(a: bytes, b: bytes, unbounded: bool) -> tuple[bytes, bytes]:
    lo, hi = sorted((a, b))
    if unbounded:
        return lo, b""
    return (lo, hi) if lo < hi else (lo, lo + b"\x01")


SPANS = st.tuples(KEYS, KEYS, st.booleans()).map(lambda t: span_of(*t))
OPS = st.lists(st.tuples(st.booleans(), st.integers(0, 30), SPANS), max_size=80)


def contains(span: tuple[bytes, bytes], key: bytes) -> bool:
    return span[0] <= key and (not span[1] or key < span[1])


@settings(max_examples=200, deadline=None)
@given(OPS, st.lists(KEYS, min_size=1, max_size=8), st.lists(SPANS, min_size=1, max_size=4))
def test_matches_a_brute_force_model(
    ops: list[tuple[bool, int, tuple[bytes, bytes]]],
    probes: list[bytes],
    queries: list[tuple[bytes, bytes]],
) -> None:
    imap: IntervalMap[int] = IntervalMap(random.Random(7))
    model: dict[int, tuple[bytes, bytes]] = {}
    for add, item, span in ops:
        if add:
            imap.add(item, *span)
            model[item] = span
        else:
            assert imap.discard(item) == (model.pop(item, None) is not None)
        imap.check()
    assert set(imap) == set(model) and len(imap) == len(model)
    for key in probes:
        assert sorted(imap.covering(key)) == sorted(i for i, s in model.items() if contains(s, key))
    for q in queries:
        expect = sorted(i for i, s in model.items() if spans_overlap(*s, *q))
        assert sorted(imap.overlapping(*q)) == expect


def test_adjacent_spans_do_not_overlap_and_the_empty_end_is_unbounded() -> None:
    imap: IntervalMap[str] = IntervalMap()
    imap.add("left", b"a", b"m")
    imap.add("right", b"m", b"")
    assert imap.covering(b"m") == ["right"]
    assert imap.covering(b"\xff\xff") == ["right"]
    assert imap.overlapping(b"", b"m") == ["left"]
    assert imap.overlapping(b"m", b"n") == ["right"]
    assert end_order(b"") > end_order(b"\xff" * 8)
    assert list(imap) == ["left", "right"] and imap.span("right") == (b"m", b"")


def test_overlapping_spans_are_all_found_in_span_order() -> None:
    imap: IntervalMap[int] = IntervalMap()
    for i, (s, e) in enumerate([(b"a", b""), (b"a", b"c"), (b"b", b"d"), (b"x", b"z")]):
        imap.add(i, s, e)
    assert imap.covering(b"b") == [0, 1, 2]
    assert imap.covering(b"y") == [0, 3]
    assert imap.overlapping(b"c", b"x") == [0, 2]


def test_stays_shallow_for_sorted_inserts() -> None:
    imap: IntervalMap[int] = IntervalMap()
    for i in range(5_000):  # recursion would overflow on a degenerate tree
        imap.add(i, i.to_bytes(4, "big"), (i + 1).to_bytes(4, "big"))
    assert imap.covering((1_234).to_bytes(4, "big")) == [1_234]
    for i in range(0, 5_000, 2):
        imap.discard(i)
    assert imap.overlapping((100).to_bytes(4, "big"), (110).to_bytes(4, "big")) == [
        101, 103, 105, 107, 109,
    ]  # fmt: skip
