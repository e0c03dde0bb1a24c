"""Why keys read together by scans are not linearizable, in terms a human can chase.

The joint search (:mod:`rangekv.check.component_search`) refutes a bad
choice as early as it can -- often long before the operation that makes
the choice bad, because its rules look ahead -- so the place where it
gave up need not be where the history went wrong.  The explanation
therefore first finds the *culprit*: the history cut at time ``T`` (every
operation invoked by ``T``; those still running at ``T`` count as unknown)
is linearizable for small ``T``, and once it is not, no later cut is
either, so a binary search over completion times finds the first
operation whose completion breaks linearizability.  The search is then
rerun on that cut, where the dead end is next to the culprit, and its
deepest dead end is described: the operations placed so far, the state
of every key, the operation that had to be placed next but could not, and
for each operation that could have gone next the reason it leads
nowhere, by the search's own rules -- illegal in that state; it would
strand an operation that still needs the value it overwrites (naming that
operation, often the scan that saw the old value); or every continuation
was explored.  Operations on keys unrelated to the stuck one are only
counted: the search proved they can wait.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import replace

from rangekv.check.component_model import M_DEL, M_NOT, M_READ, M_SET
from rangekv.check.component_search import UNKNOWN_FRAME, ComponentSearch
from rangekv.check.history import Operation, Outcome
from rangekv.check.wgl import Failure, SearchTimeout, explain

__all__ = ["describe_failure", "explain_component"]


def cut(ops: Sequence[Operation], at: float) -> list[Operation]:
    """The history as it stood at time ``at``: operations invoked by then,
    those still running counted as unknown (a read's result is dropped)."""
    kept = []
    for o in ops:
        if o.invoke > at:
            continue
        if o.outcome is not Outcome.UNKNOWN and o.complete > at:
            if o.outcome is Outcome.FAIL:
                continue
            o = replace(o, outcome=Outcome.UNKNOWN, complete=math.inf, read=None, rows=())
        kept.append(o)
    return kept


def explain_component(
    keys: Sequence[bytes],
    ops: Sequence[Operation],
    failed: ComponentSearch,
    headline: str,
    deadline: float | None,
    clock: Callable[[], float],
) -> str:
    """Explain why a component failed, starting from the culprit when time allows.

    ``failed`` is the search that refuted the whole component; it is
    described as it is if localizing the culprit runs past ``deadline``.
    """
    times = sorted({o.complete for o in ops if o.outcome is Outcome.OK})
    try:
        at, best = _first_failing_cut(keys, ops, times, failed, deadline, clock)
    except SearchTimeout:
        return explain(headline, "the keys", describe_failure(failed))
    culprits = [o for o in ops if o.outcome is Outcome.OK and o.complete == times[at]]
    first, rest = explain(headline, "the keys", describe_failure(best)).split("\n", 1)
    lines = [
        first,
        f"It first goes wrong at time {times[at]:.6g}: the history up to then is not "
        "linearizable, though up to any earlier completion it is. What completed then:",
        *(f"  {o.describe()}" for o in culprits),
        "Below, the search over the history up to then (operations invoked later left out, "
        "those still running counted as unknown).",
        rest,
    ]
    return "\n".join(lines)


def _first_failing_cut(
    keys: Sequence[bytes],
    ops: Sequence[Operation],
    times: list[float],
    failed: ComponentSearch,
    deadline: float | None,
    clock: Callable[[], float],
) -> tuple[int, ComponentSearch]:
    """The index in ``times`` of the first cut that is not linearizable, and its search.

    Refuting a cut costs far more than accepting one, so the search starts
    where the failed search got stuck and gallops forward to the first
    failing cut, then bisects below it: few failing cuts get checked.
    """
    assert failed.deepest is not None
    stuck = failed.ok_ops[failed.lists.node_op[failed.deepest[2]]]
    lo, hi, best = 0, len(times) - 1, failed  # the last cut fails, as everything did
    probe, stride = min(bisect.bisect_left(times, stuck.complete), hi), 1
    while probe < hi:
        search = ComponentSearch(keys, cut(ops, times[probe]))
        if not search.run(deadline, clock):
            hi, best = probe, search
            break
        lo = probe + 1
        probe, stride = min(probe + stride, hi), stride * 2
    while lo < hi:
        mid = (lo + hi) // 2
        search = ComponentSearch(keys, cut(ops, times[mid]))
        if search.run(deadline, clock):
            lo = mid + 1
        else:
            hi, best = mid, search
    return hi, best


def describe_failure(search: ComponentSearch) -> Failure:  # noqa: C901, PLR0915 -- one report, section after section, read top to bottom
    """Describe the deepest dead end the search's last run reached."""
    assert search.deepest is not None, "run() found no dead end"
    stack, state, stuck, related = search.deepest
    L = search.lists
    placed_ok = {L.node_op[f[0]] for f in stack if f[1] != UNKNOWN_FRAME}
    placed_unk: list[int] = []
    counts = [0] * len(search.classes)
    for f in stack:
        if f[1] == UNKNOWN_FRAME:
            c = f[0] - 1
            placed_unk.append(search.classes[c][counts[c]])
            counts[c] += 1
    free_ok = [i for i in range(len(search.ok_ops)) if i not in placed_ok]
    free_unk = [u for u in range(len(search.unk_ops)) if u not in set(placed_unk)]

    def call_rank(i: int) -> int:
        return L.rank[L.call_node[i]]

    def return_rank(i: int) -> int:
        return L.rank[L.match[L.call_node[i]]]

    def stranded(g: int, own: int) -> tuple[Operation, bool] | None:
        """The op left needing value ``g`` if it is overwritten now, and
        whether nothing at all could write it again; None if none is."""
        first_writer = min(
            [call_rank(i) for i in free_ok if search.ok_prod[i] == g and i != own]
            + [L.unk_rank[u] for u in free_unk if search.unk_prod[u] == g],
            default=math.inf,
        )
        needers = [i for i in free_ok if i != own and g in search.ok_cons[i]]
        if not needers:
            return None
        first = min(needers, key=return_rank)
        if return_rank(first) >= first_writer:
            return None
        return search.ok_ops[first], math.isinf(first_writer)

    def ends(j: int, k: int, v: int) -> bool:
        """Can OK op j not run while key k holds v without failing or changing it?"""
        code = search.ok_code[j]
        if code == M_READ:
            return search.local(search.ok_want[j], k) != v
        if code == M_NOT:
            return search.ok_a[j] == v
        if code == M_SET:
            return search.ok_a[j] != v
        return code == M_DEL or search.ok_a[j] != v or search.ok_b[j] != v

    def short_lived(k: int, v: int, own: int, own_unk: int) -> str | None:
        """Why writing v to key k now starves an op that needs it, if it does."""
        g = search.base[k] + v
        if any(search.ok_prod[i] == g for i in free_ok if i != own) or any(
            search.unk_prod[u] == g for u in free_unk if u != own_unk
        ):
            return None
        enders = [j for j in free_ok if j != own and search.ok_kmask[j] >> k & 1 and ends(j, k, v)]
        if not enders:
            return None
        ender = min(enders, key=return_rank)
        end = return_rank(ender)
        name = f"{search.keys[k]!r} = {search.names[k][v]}"
        needers = sorted((j for j in free_ok if j != own and g in search.ok_cons[j]), key=call_rank)
        for j in needers:
            needer = search.ok_ops[j].describe()
            if call_rank(j) >= end:
                return (
                    f"would write {name}, which nothing writes again, yet {needer} needs it "
                    f"and starts only after {search.ok_ops[ender].describe()} completes, "
                    "which cannot run while it holds"
                )
            for k2 in range(len(search.keys)):
                if k2 == k or not search.ok_kmask[j] >> k2 & 1 or search.ok_k[j] >= 0:
                    continue
                w = search.local(search.ok_want[j], k2)
                if search.local(state, k2) == w or writable(search.base[k2] + w, end):
                    continue
                return (
                    f"would write {name}, which nothing writes again, yet {needer} needs it "
                    f"together with {search.keys[k2]!r} = {search.names[k2][w]}, which nothing "
                    f"writes before {search.ok_ops[ender].describe()} completes, which cannot "
                    f"run while {name} holds"
                )
        return None

    def writable(g: int, end: int) -> bool:
        return any(call_rank(i) < end for i in free_ok if search.ok_prod[i] == g) or any(
            L.unk_rank[u] < end for u in free_unk if search.unk_prod[u] == g
        )

    def why(k: int, code: int, a: int, b: int, mask: int, want: int, own: int, own_unk: int) -> str:
        legal, ns = search.step(code, k, a, b, mask, want, state)
        if not legal:
            return "illegal in that state"
        if ns == state:
            return "changes nothing" if own_unk >= 0 else "explored, fails"
        g = search.base[k] + search.local(state, k)
        lost = stranded(g, own)
        if lost is not None:
            needer, for_good = lost
            value = f"{search.keys[k]!r} = {search.names[k][search.local(state, k)]}"
            if for_good:
                return f"would lose {value} for good, yet {needer.describe()} needs it"
            return (
                f"would overwrite {value}, yet {needer.describe()} needs it and nothing "
                "can write it again before that completes"
            )
        starved = short_lived(k, search.local(ns, k), own, own_unk)
        return starved or "every continuation was explored and fails"

    limit = L.rank[stuck]
    unrelated = 0
    ok_candidates: list[tuple[Operation, str]] = []
    for i in free_ok:
        if call_rank(i) >= limit:
            continue
        k = search.ok_k[i]
        if k >= 0 and not related >> k & 1:
            unrelated += 1
            continue
        reason = why(
            k,
            search.ok_code[i],
            search.ok_a[i],
            search.ok_b[i],
            search.ok_mask[i],
            search.ok_want[i],
            i,
            -1,
        )
        ok_candidates.append((search.ok_ops[i], reason))
    unk_candidates: list[tuple[Operation, str]] = []
    for u in free_unk:
        if L.unk_rank[u] >= limit:
            continue
        k = search.unk_k[u]
        if not related >> k & 1:
            unrelated += 1
            continue
        reason = why(k, search.unk_code[u], search.unk_a[u], search.unk_b[u], 0, 0, -1, u)
        unk_candidates.append((search.unk_ops[u], reason))
    ok_candidates.sort(key=lambda c: c[0].invoke)
    unk_candidates.sort(key=lambda c: c[0].invoke)

    placed: list[Operation] = []
    unk_iter = iter(placed_unk)
    for f in stack:
        if f[1] == UNKNOWN_FRAME:
            placed.append(search.unk_ops[next(unk_iter)])
        else:
            placed.append(search.ok_ops[L.node_op[f[0]]])
    note = ""
    if unrelated:
        note = (
            f"({unrelated} more operation(s) on keys no pending scan relates to it "
            "can wait until after it)"
        )
    return Failure(
        placed=placed,
        state=search.describe_state(state),
        stuck=search.ok_ops[L.node_op[stuck]],
        candidates=ok_candidates + unk_candidates,
        total=len(search.ok_ops),
        note=note,
    )
