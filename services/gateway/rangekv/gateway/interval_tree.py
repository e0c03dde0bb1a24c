"""An interval map over byte-key spans ``[start, end)`` that may hold overlapping spans.

The descriptor cache needs more than a sorted map of non-overlapping ranges:
while a split or replica-change transaction is unresolved it keeps the
committed descriptor *and* the intent's descriptor, which overlap (the cache
keeps whatever it cannot prove stale). So this map answers two questions over
possibly-overlapping spans:

- ``covering(key)``: every span that contains ``key``;
- ``overlapping(start, end)``: every span that shares a key with ``[start, end)``.

Why a treap with a max-end augmentation rather than a sorted list plus
``bisect``: a sorted list finds the spans *starting* at or before a key in
O(log n), but with overlaps allowed the ones that still *reach* the key can be
anywhere in that prefix; without an augmented tree that is an O(n) scan. The
treap keeps every operation at O(log n) expected (plus the number of results),
and the subtree maximum of ``end`` prunes whole subtrees that end before the
key. The treap's balance comes from random priorities; the generator is
injected (seeded by default) so runs are reproducible.

An empty ``end`` means "to the end of the keyspace" (+inf), as in
:class:`rangekv.common.descriptors.RangeDescriptor`. Adjacent spans
(``[a, b)`` and ``[b, c)``) do not overlap.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

__all__ = ["IntervalMap", "end_order", "spans_overlap"]

T = TypeVar("T", bound=Hashable)

# A comparable form of an end key: bounded ends sort by their bytes, the
# unbounded end (b"") after every one of them.
_EndOrder = tuple[int, bytes]
_INF: _EndOrder = (1, b"")


def end_order(end: bytes) -> _EndOrder:
    """A sort key for an end key in which the empty (unbounded) end is the largest."""
    return (0, end) if end else _INF


def spans_overlap(a_start: bytes, a_end: bytes, b_start: bytes, b_end: bytes) -> bool:
    """Whether ``[a_start, a_end)`` and ``[b_start, b_end)`` share a key (empty end = +inf)."""
    return (not b_end or a_start < b_end) and (not a_end or b_start < a_end)


class _Node(Generic[T]):
    __slots__ = ("end", "item", "left", "max_end", "order", "prio", "right", "start")

    def __init__(self, item: T, start: bytes, end: bytes, seq: int, prio: float) -> None:
        self.item = item
        self.start = start
        self.end = end_order(end)
        self.order = (start, seq)
        self.prio = prio
        self.left: _Node[T] | None = None
        self.right: _Node[T] | None = None
        self.max_end = self.end

    def refresh(self) -> None:
        best = self.end
        if self.left is not None and self.left.max_end > best:
            best = self.left.max_end
        if self.right is not None and self.right.max_end > best:
            best = self.right.max_end
        self.max_end = best


def _split(
    node: _Node[T] | None, order: tuple[bytes, int]
) -> tuple[_Node[T] | None, _Node[T] | None]:
    """Split into (nodes ordered before ``order``, nodes at or after it)."""
    if node is None:
        return None, None
    if node.order < order:
        left, right = _split(node.right, order)
        node.right = left
        node.refresh()
        return node, right
    left, right = _split(node.left, order)
    node.left = right
    node.refresh()
    return left, node


def _merge(a: _Node[T] | None, b: _Node[T] | None) -> _Node[T] | None:
    """Join two treaps where every node of ``a`` orders before every node of ``b``."""
    if a is None:
        return b
    if b is None:
        return a
    if a.prio > b.prio:
        a.right = _merge(a.right, b)
        a.refresh()
        return a
    b.left = _merge(a, b.left)
    b.refresh()
    return b


class IntervalMap(Generic[T]):
    """Spans keyed by a caller-chosen hashable item; each item appears at most once.

    Results come back in span order (by start key, then insertion order).
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng if rng is not None else random.Random(0)
        self._root: _Node[T] | None = None
        self._nodes: dict[T, _Node[T]] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, item: object) -> bool:
        return item in self._nodes

    def span(self, item: T) -> tuple[bytes, bytes]:
        """The ``(start, end)`` an item was added with; KeyError when absent."""
        node = self._nodes[item]
        return node.start, node.end[1]

    def add(self, item: T, start: bytes, end: bytes) -> None:
        """Add ``item`` over ``[start, end)``; an item already present is moved."""
        if end and end <= start:
            raise ValueError(f"empty span [{start!r}, {end!r})")
        if item in self._nodes:
            self.discard(item)
        self._seq += 1
        node = _Node(item, start, end, self._seq, self._rng.random())
        left, right = _split(self._root, node.order)
        self._root = _merge(_merge(left, node), right)
        self._nodes[item] = node

    def discard(self, item: T) -> bool:
        """Remove ``item``; False when it was not there."""
        node = self._nodes.pop(item, None)
        if node is None:
            return False
        start, seq = node.order
        left, rest = _split(self._root, node.order)
        middle, right = _split(rest, (start, seq + 1))
        assert middle is node and node.left is None and node.right is None
        self._root = _merge(left, right)
        return True

    def covering(self, key: bytes) -> list[T]:
        """Every item whose span contains ``key``."""
        point = (0, key)
        out: list[T] = []
        self._covering(self._root, key, point, out)
        return out

    def _covering(self, node: _Node[T] | None, key: bytes, point: _EndOrder, out: list[T]) -> None:
        # Depth is O(log n) expected, so recursion is bounded.
        if node is None or node.max_end <= point:
            return  # nothing below reaches past the key
        self._covering(node.left, key, point, out)
        if node.start <= key:
            if node.end > point:
                out.append(node.item)
            self._covering(node.right, key, point, out)
        # else: this node and its right subtree start after the key

    def overlapping(self, start: bytes, end: bytes) -> list[T]:
        """Every item whose span shares a key with ``[start, end)`` (empty end = +inf)."""
        lo = (0, start)
        out: list[T] = []
        self._overlapping(self._root, lo, end, out)
        return out

    def _overlapping(self, node: _Node[T] | None, lo: _EndOrder, end: bytes, out: list[T]) -> None:
        if node is None or node.max_end <= lo:
            return  # everything below ends at or before the query's start
        self._overlapping(node.left, lo, end, out)
        if not end or node.start < end:
            if node.end > lo:
                out.append(node.item)
            self._overlapping(node.right, lo, end, out)

    def __iter__(self) -> Iterator[T]:
        """Items in span order."""
        stack: list[_Node[T]] = []
        node = self._root
        while stack or node is not None:
            while node is not None:
                stack.append(node)
                node = node.left
            node = stack.pop()
            yield node.item
            node = node.right

    def check(self) -> None:
        """Verify the tree's invariants (ordering, heap, augmentation); for tests."""

        def walk(node: _Node[T] | None) -> tuple[int, _EndOrder | None]:
            if node is None:
                return 0, None
            count_l, max_l = walk(node.left)
            count_r, max_r = walk(node.right)
            for child in (node.left, node.right):
                assert child is None or child.prio <= node.prio, "heap order"
            assert node.left is None or node.left.order < node.order, "key order"
            assert node.right is None or node.right.order > node.order, "key order"
            expect = max(e for e in (node.end, max_l, max_r) if e is not None)
            assert node.max_end == expect, "max-end augmentation"
            return count_l + count_r + 1, node.max_end

        count, _ = walk(self._root)
        assert count == len(self._nodes), "index and tree disagree"
