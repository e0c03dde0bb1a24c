"""Linearizability checking of key-value histories.

The question is Herlihy & Wing's: is there a total order of the operations
that (1) respects real time -- if ``a`` completed before ``b`` was invoked,
``a`` comes first -- and (2) is a legal sequential execution of the store,
i.e. every observed result is what a single copy of the data would have
returned?  A store promising strong consistency must pass this for every
history; the simulator and the chaos harness produce them, this judges.

*P-compositionality.*  Linearizability is local: a history is linearizable
iff its restriction to each object is.  A single-key operation touches one
key, so each key is checked alone, as a register whose state is absent or a
value.  A SCAN reads every key of its span at one instant, so keys that
scans tie together form one object, checked jointly
(:mod:`rangekv.check.partition`, :mod:`rangekv.check.component_search`)
after each of its keys passed alone with every scan counting as a read of
it (a cheap necessary condition that refutes most bad scans quickly).
This module is the register search; everything below describes it, and
the joint search re-derives each rule for several keys.

*Search.*  Per key, a depth-first search in the style of Wing & Gong with
Lowe's improvement (the scheme porcupine also uses).  Invocations and
completions of the OK operations form a doubly linked list in time order;
an operation whose call entry precedes the first completion entry may be
linearized next.  Linearizing one *lifts* both its entries out of the list
(O(1), and undone in O(1) on backtrack because removed nodes keep their
pointers).  A cache of ``(linearized set, state)`` pairs prunes
configurations already proven dead.  States are interned ints; the set is a
Python int bitset, stored shifted by the lowest unlinearized operation
(everything below is linearized) so cache keys stay short.

Plain WGL drowns on 10,000-operation register histories; three further
reductions make it fast, each sound because the pruned branch is dominated
by one that is explored:

* an operation that does not change the state (a read, a delete of an
  absent key, a CAS that did not swap) and is legal now is linearized now
  without branching: moving it earlier breaks no real-time constraint
  (it is a candidate) and changes no result;
* *dead values*: if the state is about to leave ``s`` while an unplaced
  operation still needs ``s`` (a read of it, a CAS expecting it) and no
  unplaced operation can produce ``s`` again, the branch is dead at once,
  instead of thousands of steps later when that operation's deadline
  passes -- with unique written values this prunes almost every wrong
  write order immediately;
* state-changing candidates are tried earliest deadline first.

*Outcomes.*  ``FAIL`` operations are dropped: no effect, nothing returned.
``UNKNOWN`` operations have no completion: they may be linearized anywhere
after their invocation, or not at all.  They live in a second list, are
tried only once the OK candidates are exhausted, and the search succeeds
as soon as every OK operation is placed -- which is exactly "the remaining
unknown operations are left out".  Unknown GETs cannot matter and are
dropped.  Pruning rules keep the ambiguity from multiplying the search:

1. an unknown operation that would not change the state is not placed
   (leaving it unplaced keeps strictly more options open);
2. unknown operations with identical effect are interchangeable, so they
   are placed in invocation order only;
3. right after an unknown operation moved the state from ``s``, no
   operation that was already legal in ``s`` and sets the state regardless
   of it (a PUT, a blind unknown write, ...) is placed: it would erase the
   unknown effect unobserved, which the sibling branch without the unknown
   operation already covers.

Values nothing ever compares against (written, but never read nor
expected by a CAS) are interned to one "unobserved value" state; the model
cannot tell them apart, and merging them lets the cache and rule 1 see
more equivalent configurations.

*Equal timestamps.*  Real-time order requires ``a.complete < b.invoke``
strictly: operations completing and being invoked at the same instant are
concurrent (call entries sort before completion entries at equal times).
Simulator clocks are discrete and wall clocks coarse, so an anomaly that
hinges on an exact tie would more often be a false alarm than a bug.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from rangekv.check.component_explain import explain_component
from rangekv.check.component_search import ComponentSearch
from rangekv.check.history import Operation, Outcome
from rangekv.check.model import (
    ABSENT,
    T_CAS_NO,
    T_CAS_NO_SAW,
    T_CAS_YES,
    T_DEL_NO,
    T_DEL_YES,
    T_GET,
    T_SET,
    KeyModel,
    step,
)
from rangekv.check.partition import Component, partition
from rangekv.check.wgl import CHECK_CLOCK_EVERY, Failure, SearchTimeout, build_lists, explain

__all__ = ["CheckResult", "check_history"]

# Search modes and the ways an operation can have been placed.
_M_READS, _M_WRITES, _M_UNKNOWN, _M_BACKTRACK = range(4)
_FORCED, _BRANCH, _UNKNOWN = range(3)


@dataclass(frozen=True, slots=True)
class CheckResult:
    """Verdict of :func:`check_history`.

    ``ok`` is ``True`` (linearizable), ``False`` (not) or ``None`` (the
    timeout expired before a verdict; nothing can be concluded).
    ``failed_keys`` are the keys of the first component found
    non-linearizable -- one key, or the keys scans tie together -- and
    ``failed_key`` the smallest of them; ``explanation`` says what went
    wrong there in terms a human can chase.  ``keys_checked`` counts the
    keys of the components that passed (and of the failing one).
    """

    ok: bool | None
    keys_checked: int
    failed_key: bytes | None
    explanation: str
    elapsed: float
    failed_keys: tuple[bytes, ...] = ()


class _KeySearch(KeyModel):
    """The search for one key, over its compiled model.  Built once, run once."""

    def __init__(self, ops: Sequence[Operation], key: bytes | None = None) -> None:
        super().__init__(ops, key)
        self._build_lists()
        self.deepest: tuple[list[tuple[int, int, int, int, int, int]], int, int] | None = None

    def _build_lists(self) -> None:
        for o in self.ok_ops:
            if not o.complete >= o.invoke:
                raise ValueError(f"operation completes before it is invoked: {o.describe()}")
        lists = build_lists(
            [o.invoke for o in self.ok_ops],
            [o.complete for o in self.ok_ops],
            [o.invoke for o in self.unk_ops],
        )
        self.head, self.tail = lists.head, lists.tail
        self.nxt, self.prv = lists.nxt, lists.prv
        self.node_op, self.node_call = lists.node_op, lists.node_call
        self.match, self.rank, self.call_node = lists.match, lists.rank, lists.call_node
        # Unknown list: nodes 1..k in invocation order, head 0, tail k+1.
        k = len(self.unk_ops)
        self.unk_rank = [0, *lists.unk_rank, lists.rank[lists.tail]]
        self.unxt = [*range(1, k + 2), k + 1]
        self.uprv = [0, *range(0, k + 1)]

    # -- search ---------------------------------------------------------

    def run(self, deadline: float | None, clock: Callable[[], float]) -> bool:  # noqa: C901, PLR0912, PLR0915 -- the checker's depth-first search, inlined on purpose: it is the hot loop of every chaos and simulator run
        """Depth-first search; True if a linearization exists."""
        m = len(self.ok_ops)
        if m == 0:
            return True
        nxt, prv, node_op, node_call, match = (
            self.nxt,
            self.prv,
            self.node_op,
            self.node_call,
            self.match,
        )
        unxt, uprv, unk_rank, rank = self.unxt, self.uprv, self.unk_rank, self.rank
        ok_code, ok_a, ok_b = self.ok_code, self.ok_a, self.ok_b
        unk_code, unk_a, unk_b = self.unk_code, self.unk_a, self.unk_b
        unk_class, unk_class_rank = self.unk_class, self.unk_class_rank
        class_placed = [0] * self.n_classes
        ok_cons, ok_prod, unk_prod = self.ok_cons, self.ok_prod, self.unk_prod
        # Unplaced ops that need / can create each state.  Leaving state s
        # while some op still needs s and none can recreate it is a dead end
        # found at once, instead of when that op's deadline passes.
        cons_left = [0] * (len(self.names) + 1)
        prod_left = [0] * (len(self.names) + 1)
        for c in ok_cons:
            cons_left[c] += 1
        for c in ok_prod:
            prod_left[c] += 1
        for c in unk_prod:
            prod_left[c] += 1
        utail = len(self.unk_ops) + 1
        head = self.head

        state = ABSENT
        ok_bits = 0
        unk_bits = 0
        low = 0  # every OK op with index < low is linearized
        placed = bytearray(m + 1)  # placed[m] stays 0 as a sentinel
        ok_left = m
        cache: set[tuple[int, ...]] = set()
        # Frame: (node, how it was placed, previous state, previous low,
        # stuck node, candidates left to try).
        stack: list[tuple[int, int, int, int, int, int]] = []
        best_depth = -1
        steps = 0

        mode = _M_READS
        node = nxt[head]
        stuck = 0
        left = 0
        while True:
            steps += 1
            if deadline is not None and steps % CHECK_CLOCK_EVERY == 0 and clock() > deadline:
                raise SearchTimeout

            if mode == _M_READS:
                # Partial-order reduction: an operation that leaves the state
                # alone and is legal now can be linearized now without loss
                # of generality (moving it earlier breaks no real-time
                # constraint, because it is a candidate, and changes no
                # result), so it is placed without branching.
                left = 0
                while node_call[node]:
                    i = node_op[node]
                    code = ok_code[i]
                    if code == T_GET:
                        if state == ok_a[i]:
                            break
                    elif code == T_DEL_NO:
                        if state == ABSENT:
                            break
                    elif code == T_CAS_NO:
                        if state != ok_a[i]:
                            break
                    elif code == T_CAS_NO_SAW and state == ok_b[i] and state != ok_a[i]:
                        break
                    left += 1
                    node = nxt[node]
                if not node_call[node]:
                    # The first completion: `left` ops were invoked before it.
                    stuck = node
                    mode = _M_WRITES
                    continue
                ns = state
                how = _FORCED
            elif mode == _M_WRITES:
                # Candidates are tried earliest deadline first: walk the
                # completions from `stuck` on, skipping those of ops invoked
                # after it, until all `left` candidates have been seen.
                if left == 0:
                    # Before giving up, try the unknown ops invoked in time.
                    node = unxt[0]
                    mode = _M_UNKNOWN
                    continue
                if node_call[node] or rank[match[node]] > rank[stuck]:
                    node = nxt[node]
                    continue
                left -= 1
                i = node_op[node]
                code = ok_code[i]
                if code == T_SET:
                    ns = ok_a[i]
                elif code == T_CAS_YES and state == ok_a[i]:
                    ns = ok_b[i]
                elif code == T_DEL_YES and state != ABSENT:
                    ns = ABSENT
                else:  # illegal, or a state-preserving op already ruled out
                    node = nxt[node]
                    continue
                if stack and stack[-1][1] == _UNKNOWN:
                    # Rule 3: after an unknown op took the state from `before`,
                    # an op that was already legal in `before` and sets the
                    # state regardless of it would erase the unknown op's
                    # effect unobserved; that branch is dominated.
                    before = stack[-1][2]
                    if (
                        code == T_SET
                        or (code == T_DEL_YES and before != ABSENT)
                        or (code == T_CAS_YES and before == ok_a[i])
                    ):
                        node = nxt[node]
                        continue
                how = _BRANCH
                node = match[node]  # placement works on the call node
            elif mode == _M_UNKNOWN:
                if node == utail or unk_rank[node] > rank[stuck]:
                    # Every candidate failed from this configuration.
                    if len(stack) > best_depth:
                        # Cheap snapshot, turned into an explanation on failure.
                        best_depth = len(stack)
                        self.deepest = (stack[:], state, stuck)
                    mode = _M_BACKTRACK
                    continue
                u = node - 1
                code = unk_code[u]
                if code == T_SET:
                    ns = unk_a[u]
                elif state == unk_a[u]:  # T_CAS_MAYBE that swaps
                    ns = unk_b[u]
                else:
                    ns = state
                if (
                    ns == state  # rule 1
                    or unk_class_rank[u] != class_placed[unk_class[u]]  # rule 2
                    or (code == T_SET and stack and stack[-1][1] == _UNKNOWN)  # rule 3
                ):
                    node = unxt[node]
                    continue
                new_unk = unk_bits | (1 << u)
                # Rule 3 makes what is explored after an unknown op depend on
                # the state before it, so that state is part of the key.
                ukey = (low, ok_bits >> low, new_unk, ns, state)
                if ukey in cache or (cons_left[state] and not prod_left[state]):
                    node = unxt[node]
                    continue
                cache.add(ukey)
                stack.append((node, _UNKNOWN, state, low, stuck, 0))
                state, unk_bits = ns, new_unk
                prod_left[unk_prod[u]] -= 1
                class_placed[unk_class[u]] += 1
                unxt[uprv[node]] = unxt[node]
                uprv[unxt[node]] = uprv[node]
                mode = _M_READS
                node = nxt[head]
                continue
            else:  # _M_BACKTRACK: this configuration is dead
                if not stack:
                    return False
                top, how, state, low, stuck, left = stack.pop()
                if how == _UNKNOWN:
                    u = top - 1
                    unk_bits ^= 1 << u
                    prod_left[unk_prod[u]] += 1
                    class_placed[unk_class[u]] -= 1
                    unxt[uprv[top]] = top
                    uprv[unxt[top]] = top
                    node = unxt[top]
                    mode = _M_UNKNOWN
                    continue
                i = node_op[top]
                ok_bits ^= 1 << i
                placed[i] = 0
                cons_left[ok_cons[i]] += 1
                prod_left[ok_prod[i]] += 1
                ret = match[top]
                nxt[prv[ret]] = ret
                prv[nxt[ret]] = ret
                nxt[prv[top]] = top
                prv[nxt[top]] = top
                ok_left += 1
                if how == _BRANCH:
                    node = nxt[ret]
                    mode = _M_WRITES
                # A forced placement failing means its parent fails too.
                continue

            # Linearize OK operation i (at `node`) giving state ns, unless the
            # resulting configuration is already known to be a dead end.
            placed[i] = 1
            new_low = low
            while placed[new_low]:
                new_low += 1
            new_bits = ok_bits | (1 << i)
            key = (new_low, new_bits >> new_low, unk_bits, ns)
            if key in cache or (
                ns != state and not prod_left[state] and cons_left[state] > (ok_cons[i] == state)
            ):
                placed[i] = 0
                if how == _FORCED:
                    mode = _M_BACKTRACK
                else:
                    node = nxt[match[node]]
                continue
            cache.add(key)
            stack.append((node, how, state, low, stuck, left))
            state, ok_bits, low = ns, new_bits, new_low
            cons_left[ok_cons[i]] -= 1
            prod_left[ok_prod[i]] -= 1
            ret = match[node]
            nxt[prv[node]] = nxt[node]
            prv[nxt[node]] = prv[node]
            nxt[prv[ret]] = nxt[ret]
            prv[nxt[ret]] = prv[ret]
            ok_left -= 1
            if ok_left == 0:
                return True
            mode = _M_READS
            node = nxt[head]

    def failure(self) -> Failure:
        """Describe the deepest dead end the last :meth:`run` reached."""
        assert self.deepest is not None, "run() found no dead end"
        stack, state, stuck = self.deepest
        placed_ok = {self.node_op[n] for n, how, *_ in stack if how != _UNKNOWN}
        placed_unk = {n - 1 for n, how, *_ in stack if how == _UNKNOWN}
        limit = self.rank[stuck]
        free_ok = [i for i in range(len(self.ok_ops)) if i not in placed_ok]
        free_unk = [u for u in range(len(self.unk_ops)) if u not in placed_unk]
        needers = [self.ok_ops[i] for i in free_ok if self.ok_cons[i] == state]
        recreatable = any(self.ok_prod[i] == state for i in free_ok) or any(
            self.unk_prod[u] == state for u in free_unk
        )

        def why(code: int, a: int, b: int, op: Operation) -> str:
            legal, ns = step(code, a, b, state)
            if not legal:
                return "illegal in that state"
            if ns == state:
                return "changes nothing" if op.outcome is Outcome.UNKNOWN else "explored, fails"
            others = [o for o in needers if o is not op]
            if others and not recreatable:
                lost = self.names[state]
                return f"would lose {lost} for good, yet {others[0].describe()} needs it"
            return "every continuation was explored and fails"

        candidates = [
            (o, why(self.ok_code[i], self.ok_a[i], self.ok_b[i], o))
            for i, o in enumerate(self.ok_ops)
            if i not in placed_ok and self.rank[self.call_node[i]] < limit
        ]
        candidates += [
            (o, why(self.unk_code[u], self.unk_a[u], self.unk_b[u], o))
            for u, o in enumerate(self.unk_ops)
            if u not in placed_unk and self.unk_rank[u + 1] < limit
        ]
        candidates.sort(key=lambda c: c[0].invoke)
        return Failure(
            placed=[
                self.unk_ops[n - 1] if how == _UNKNOWN else self.ok_ops[self.node_op[n]]
                for n, how, *_ in stack
            ],
            state=self.names[state],
            stuck=self.ok_ops[self.node_op[stuck]],
            candidates=candidates,
            total=len(self.ok_ops),
        )


def check_history(
    ops: Iterable[Operation],
    *,
    timeout: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> CheckResult:
    """Decide whether ``ops`` is linearizable for a key-value store.

    Keys are checked independently -- one register per key -- except keys
    that scans tie together, which are checked jointly (see
    :mod:`rangekv.check.partition`); components go in order of their
    smallest key, and the first non-linearizable one stops the check.
    ``timeout`` (seconds, measured with ``clock``) bounds the whole check;
    on expiry ``ok`` is ``None`` unless a violation was already found.
    Raises ``ValueError`` for malformed operations (an OK/FAIL operation
    completing before it was invoked, a PUT without a value, a scan with
    an empty span or rows out of order or outside its span).
    """
    start = clock()
    deadline = None if timeout is None else start + timeout
    checked = 0
    for component in partition(ops):
        keys = component.keys
        if deadline is not None and clock() > deadline:
            return _timed_out(keys, checked, start, clock)
        try:
            failure = _judge(component, deadline, clock)
        except SearchTimeout:
            return _timed_out(keys, checked, start, clock)
        checked += len(keys)
        if failure is not None:
            failed_keys, explanation = failure
            return CheckResult(
                ok=False,
                keys_checked=checked,
                failed_key=failed_keys[0],
                explanation=explanation,
                elapsed=clock() - start,
                failed_keys=failed_keys,
            )
    return CheckResult(
        ok=True,
        keys_checked=checked,
        failed_key=None,
        explanation=f"linearizable: {checked} key(s) checked",
        elapsed=clock() - start,
    )


def _judge(
    component: Component, deadline: float | None, clock: Callable[[], float]
) -> tuple[tuple[bytes, ...], str] | None:
    """None if the component is linearizable, else the keys at fault and why.

    Keys tied by scans are first checked one by one, each scan counting as a
    read of every key it covers: necessary, and cheap, and it refutes a
    scan that saw a stale or impossible value of some key in a fraction of
    the time the joint search needs to exhaust every alternative.  Raises
    :class:`SearchTimeout` past ``deadline``.
    """
    keys = component.keys
    for key in keys:
        own = [o for o in component.ops if o.covers(key)] if component.joint else component.ops
        search = _KeySearch(own, key)
        if not search.run(deadline, clock):
            headline = f"key {key!r} is not linearizable."
            if component.joint:
                headline += " (Scans that cover it count as reads of it.)"
            return (key,), explain(headline, "the key", search.failure())
    if not component.joint:
        return None
    joint = ComponentSearch(keys, component.ops)
    began = clock()
    if joint.run(deadline, clock):
        return None
    # Finding the culprit reruns the search on shorter histories; it may
    # take a few times what the refutation took, and never the caller's time.
    budget = clock() + 3 * (clock() - began) + 1.0
    budget = budget if deadline is None else min(budget, deadline)
    headline = f"keys {_show_keys(keys)} (read together by scans) are not linearizable."
    return keys, explain_component(keys, component.ops, joint, headline, budget, clock)


def _show_keys(keys: Sequence[bytes], show: int = 8) -> str:
    shown = [repr(k) for k in keys[:show]]
    if len(keys) > show:
        shown.append(f"... {len(keys) - show} more")
    return "[" + ", ".join(shown) + "]"


def _timed_out(
    keys: Sequence[bytes], checked: int, start: float, clock: Callable[[], float]
) -> CheckResult:
    what = f"key {keys[0]!r}" if len(keys) == 1 else f"keys {_show_keys(keys)}"
    return CheckResult(
        ok=None,
        keys_checked=checked,
        failed_key=None,
        explanation=f"timed out while checking {what} after {checked} key(s) passed; no verdict",
        elapsed=clock() - start,
    )
