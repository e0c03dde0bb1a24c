"""Which operations of a history must be judged together.

Linearizability is local (Herlihy & Wing): a history is linearizable iff
its restriction to each *object* is.  A single-key operation touches one
object, its key, so a history without scans splits into one register per
key.  A SCAN reads every key of its span at one instant, so for it the
keys of its span are one object: the keys some scan ties together form a
*component*, checked as one object whose state is the tuple of the
per-key states, while every other key stays a register of its own.

A scan covers every key *of the history* inside its span -- every key some
operation touched or some scan returned.  Keys nobody touched need no
state: they are absent throughout, which is what every scan of them
reports unless it returned a row for them (and then the key is in the
history).  A scan covering no key asserts nothing and is dropped; a scan
covering one key is a read of that key and stays in that key's register
check, so only scans covering two keys or more cost a joint search.

The cost of a joint search grows with the keys tied together, so a
workload that records scans should scan a small keyspace (a handful to a
dozen keys) or keep its scans' spans narrow.

This module also validates what the search relies on: a scan's span is
not empty (``end`` greater than ``key``, or ``None`` for unbounded), its
rows are in strictly increasing key order and all inside the span.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass

from rangekv.check.history import Operation, OpKind, Outcome

__all__ = ["Component", "partition"]


@dataclass(frozen=True, slots=True)
class Component:
    """Keys checked together and the operations that bear on them.

    ``ops`` holds every non-FAIL operation on ``keys`` plus the OK scans
    covering them.  ``joint`` tells whether a scan ties two or more keys
    (then ``keys`` has several and the joint search runs); otherwise
    ``keys`` is one key checked as a register, and any scan in ``ops``
    covers that key alone.
    """

    keys: tuple[bytes, ...]
    ops: tuple[Operation, ...]
    joint: bool


def validate_scan(op: Operation) -> None:
    """Raise ``ValueError`` unless an OK scan's span and rows make sense."""
    if op.end is not None and op.end <= op.key:
        raise ValueError(
            f"scan with an empty span (end must be greater than the start key, "
            f"or None for unbounded): {op.describe()}"
        )
    previous: bytes | None = None
    for key, value in op.rows:
        if not isinstance(key, bytes) or not isinstance(value, bytes):
            raise ValueError(f"scan row is not a pair of bytes: {op.describe()}")
        if previous is not None and key <= previous:
            raise ValueError(f"scan rows are not in strictly increasing key order: {op.describe()}")
        if not op.covers(key):
            raise ValueError(f"scan row {key!r} lies outside the scan's span: {op.describe()}")
        previous = key


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def partition(ops: Iterable[Operation]) -> list[Component]:  # noqa: C901, PLR0912 -- one pass over the history, one branch per op kind
    """Split a history into components, ordered by their smallest key.

    FAIL operations are dropped (no effect, nothing returned), as are
    scans that did not complete OK.  Raises ``ValueError`` for malformed
    operations: an interval that ends before it starts, an invocation time
    that is not a number, a scan with an empty span or bad rows.
    """
    by_key: dict[bytes, list[Operation]] = {}
    scans: list[Operation] = []
    for op in ops:
        if op.outcome is Outcome.FAIL:
            if not op.complete >= op.invoke:
                raise ValueError(f"operation completes before it is invoked: {op.describe()}")
            continue
        if math.isnan(op.invoke):
            raise ValueError(f"operation without an invocation time: {op.describe()}")
        if op.kind is OpKind.SCAN:
            if op.outcome is Outcome.OK:
                if not op.complete >= op.invoke:
                    raise ValueError(f"operation completes before it is invoked: {op.describe()}")
                validate_scan(op)
                scans.append(op)
            continue
        by_key.setdefault(op.key, []).append(op)
    for scan in scans:
        for key, _ in scan.rows:
            by_key.setdefault(key, [])

    keys = sorted(by_key)
    index = {key: i for i, key in enumerate(keys)}
    links = _UnionFind(len(keys))
    joint_scans: list[tuple[int, Operation]] = []
    for scan in scans:
        lo = bisect.bisect_left(keys, scan.key)
        hi = len(keys) if scan.end is None else bisect.bisect_left(keys, scan.end)
        if hi - lo == 1:
            by_key[keys[lo]].append(scan)
        elif hi - lo > 1:
            for i in range(lo + 1, hi):
                links.union(lo, i)
            joint_scans.append((lo, scan))

    members: dict[int, list[bytes]] = {}
    for key in keys:
        members.setdefault(links.find(index[key]), []).append(key)
    by_root: dict[int, list[Operation]] = {}
    for lo, scan in joint_scans:
        by_root.setdefault(links.find(lo), []).append(scan)
    components = []
    for root, group in members.items():
        group_ops = [op for key in group for op in by_key[key]]
        group_ops += by_root.get(root, [])
        components.append(Component(tuple(group), tuple(group_ops), joint=len(group) > 1))
    components.sort(key=lambda c: c.keys[0])
    return components
