"""What the single-key and the joint search share: the entry list, timeouts, failures.

Both searches (:mod:`rangekv.check.linearizability` for one key,
:mod:`rangekv.check.component_search` for keys tied by scans) are Wing &
Gong's with Lowe's improvement: the call and return entries of the OK
operations form a doubly linked list in time order, an operation whose
call precedes the first return may be linearized next, and linearizing
one lifts both its entries out of the list in O(1) (undone in O(1),
because removed nodes keep their pointers).  This module builds that list
and turns the deepest dead end a search reached into an explanation a
human can chase.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from rangekv.check.history import Operation

__all__ = ["CHECK_CLOCK_EVERY", "EntryLists", "Failure", "SearchTimeout", "build_lists", "explain"]

CHECK_CLOCK_EVERY = 1024
"""Search steps between two looks at the clock (the deadline check)."""


class SearchTimeout(Exception):
    """The deadline passed before the search reached a verdict."""


@dataclass(slots=True)
class EntryLists:
    """The linked list of call/return entries of the OK operations.

    Nodes ``1..2m`` are entries, ``head`` is 0 and ``tail`` is ``2m+1``.
    ``node_op`` maps a node to its operation, ``node_call`` tells calls
    from returns, ``match`` pairs a call with its return, ``rank`` is an
    entry's position in time order and ``call_node`` an operation's call.
    ``unk_rank[u]`` is the position the call of unknown operation ``u``
    would have in the same order (unknown operations have no return).
    """

    head: int
    tail: int
    nxt: list[int]
    prv: list[int]
    node_op: list[int]
    node_call: list[bool]
    match: list[int]
    rank: list[int]
    call_node: list[int]
    unk_rank: list[int]


def build_lists(
    invokes: Sequence[float], completes: Sequence[float], unk_invokes: Sequence[float]
) -> EntryLists:
    """Lay out the entries of ``m`` OK and ``k`` unknown operations in time order.

    Entries sort by time, calls before returns at equal times (operations
    completing and being invoked at the same instant are concurrent), then
    OK before unknown and by index, so the order is deterministic.
    """
    m = len(invokes)
    events: list[tuple[float, int, int, int]] = []
    for i in range(m):
        events.append((invokes[i], 0, 0, i))
        events.append((completes[i], 1, 0, i))
    for u, t in enumerate(unk_invokes):
        events.append((t, 0, 1, u))
    events.sort()
    head, tail = 0, 2 * m + 1
    node_op = [-1] * (2 * m + 2)
    node_call = [False] * (2 * m + 2)
    rank = [0] * (2 * m + 2)
    rank[tail] = len(events)
    match = [0] * (2 * m + 2)
    unk_rank = [0] * len(unk_invokes)
    call_node = [0] * m
    order = [head]
    next_node = 1
    for pos, (_, is_return, is_unknown, idx) in enumerate(events):
        if is_unknown:
            unk_rank[idx] = pos
            continue
        node = next_node
        next_node += 1
        order.append(node)
        node_op[node] = idx
        rank[node] = pos
        if is_return:
            match[call_node[idx]] = node
            match[node] = call_node[idx]
        else:
            node_call[node] = True
            call_node[idx] = node
    order.append(tail)
    nxt = [0] * (2 * m + 2)
    prv = [0] * (2 * m + 2)
    for a, b in itertools.pairwise(order):
        nxt[a] = b
        prv[b] = a
    return EntryLists(head, tail, nxt, prv, node_op, node_call, match, rank, call_node, unk_rank)


@dataclass(slots=True)
class Failure:
    """The deepest dead end of a failed search, in terms of operations."""

    placed: list[Operation]
    state: str
    stuck: Operation
    candidates: list[tuple[Operation, str]]
    total: int
    note: str = ""  # a last line, e.g. what was left out of the candidates


def explain(headline: str, state_noun: str, f: Failure, show: int = 12) -> str:
    """The explanation of a failed search; ``headline`` says what is not linearizable."""
    lines = [
        headline,
        f"The longest partial linearization found places {len(f.placed)} operation(s) "
        f"(the history has {f.total} OK ones); it ends with:",
    ]
    tail = f.placed[-show:]
    if len(f.placed) > len(tail):
        lines.append(f"  ... {len(f.placed) - len(tail)} earlier operation(s)")
    lines += [f"  {o.describe()}" for o in tail] or ["  (nothing)"]
    lines.append(f"leaving {state_noun} as {f.state}.")
    lines.append("From there this operation must be linearized before it completes, but cannot be:")
    lines.append(f"  {f.stuck.describe()}")
    lines.append("because no operation that could go next leads anywhere:")
    lines += [f"  {o.describe()}: {reason}" for o, reason in f.candidates[:show]]
    if len(f.candidates) > show:
        lines.append(f"  ... and {len(f.candidates) - show} more")
    if f.note:
        lines.append(f.note)
    return "\n".join(lines)
