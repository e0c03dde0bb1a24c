"""Scans in the linearizability checker, cross-checked against independent references.

The joint search prunes hard (see rangekv.check.component_search), and a
wrong pruning rule shows up as a linearizable history rejected -- or, with
a bug in the model, a bad one accepted.  Hand-built cases cannot cover the
interleavings, so random histories with scans, unknown and failed outcomes
are judged twice and the verdicts must agree: by a brute-force checker
that tries every order respecting real time (small histories), and by a
plain memoized search with no pruning at all (histories of a few dozen
operations from a simulated store, some corrupted).
"""

from __future__ import annotations

import functools
import math
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rangekv.check import Operation, OpKind, Outcome, check_history, generate_kv_history, to_json

GET, PUT, DELETE, CAS, SCAN = OpKind.GET, OpKind.PUT, OpKind.DELETE, OpKind.CAS, OpKind.SCAN
OK, FAIL, UNKNOWN = Outcome.OK, Outcome.FAIL, Outcome.UNKNOWN
INF = math.inf
A, B, C = b"a", b"b", b"c"

# --------------------------------------------------------------------------
# A brute-force reference checker over all keys at once
# --------------------------------------------------------------------------

State = frozenset[tuple[bytes, bytes]]


def _apply(state: dict[bytes, bytes], o: Operation) -> tuple[bool, dict[bytes, bytes]]:
    """The store's semantics, written independently of the checker."""
    current = state.get(o.key)
    if o.kind is SCAN:
        if o.outcome is not OK:
            return True, state
        seen = {k: v for k, v in state.items() if o.covers(k)}
        return seen == dict(o.rows), state
    if o.kind is GET:
        return (o.outcome is not OK or current == o.read), state
    after = dict(state)
    if o.kind is PUT:
        assert o.value is not None
        after[o.key] = o.value
        return True, after
    if o.kind is DELETE:
        after.pop(o.key, None)
        return (o.outcome is not OK or (current is not None) == o.succeeded), after
    swapped = current == o.expected
    if swapped:
        if o.value is None:
            after.pop(o.key, None)
        else:
            after[o.key] = o.value
    if o.outcome is not OK:
        return True, after
    if o.succeeded:
        return swapped, after
    return (not swapped and (o.read is None or o.read == current)), state


def brute_force(ops: list[Operation]) -> bool:
    live = tuple(o for o in ops if o.outcome is not FAIL)

    @functools.cache
    def search(remaining: frozenset[int], state: State) -> bool:
        if all(live[i].outcome is not OK for i in remaining):
            return True
        for i in remaining:
            o = live[i]
            if any(live[j].complete < o.invoke for j in remaining):
                continue  # something must be linearized before it
            legal, after = _apply(dict(state), o)
            if legal and search(remaining - {i}, frozenset(after.items())):
                return True
        return False

    return search(frozenset(range(len(live))), frozenset())


KEYS = [A, B, C]
VALUES = st.sampled_from([None, b"1", b"2"])
BOUNDS = [b"", A, A + b"\x00", B, B + b"\x00", C, b"d"]


@st.composite
def small_histories(draw: st.DrawFn) -> list[Operation]:
    ops = []
    for client in range(draw(st.integers(1, 7))):
        kind = draw(st.sampled_from([GET, PUT, DELETE, CAS, SCAN, SCAN, SCAN]))
        outcome = draw(st.sampled_from([OK, OK, OK, OK, FAIL, UNKNOWN]))
        start = draw(st.integers(0, 8))  # small integers: many exact ties
        end = INF if outcome is UNKNOWN else start + draw(st.integers(0, 4))
        key = draw(st.sampled_from(KEYS))
        if kind is SCAN:
            first = draw(st.sampled_from(BOUNDS[:-1]))
            last = draw(st.sampled_from([None, *(b for b in BOUNDS if b > first)]))
            op = Operation(client, SCAN, first, float(start), float(end), outcome, end=last)
            if outcome is OK:
                rows = tuple(
                    (k, draw(st.sampled_from([b"1", b"2"])))
                    for k in KEYS
                    if op.covers(k) and draw(st.booleans())
                )
                op = replace(op, rows=rows)
            ops.append(op)
            continue
        value = draw(st.sampled_from([b"1", b"2"])) if kind is PUT else draw(VALUES)
        ops.append(
            Operation(
                client,
                kind,
                key,
                float(start),
                float(end),
                outcome,
                value=value if kind in (PUT, CAS) else None,
                expected=draw(VALUES) if kind is CAS else None,
                read=draw(VALUES) if outcome is OK and kind in (GET, CAS) else None,
                succeeded=draw(st.booleans()) if outcome is OK else True,
            )
        )
    return ops


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_histories())
def test_agrees_with_brute_force(ops: list[Operation]) -> None:
    assert check_history(ops).ok == brute_force(ops), to_json(ops)


@st.composite
def sequential_histories(draw: st.DrawFn) -> tuple[list[Operation], bool]:
    """Ops executed one by one on a dict, with intervals drawn around each op's
    position; then, sometimes, one scan's rows replaced by random ones.
    Returns the history and whether it is untouched (known linearizable)."""
    store: dict[bytes, bytes] = {}
    ops: list[Operation] = []
    for i in range(draw(st.integers(1, 8))):
        point = 2.0 * i
        start = point - draw(st.integers(0, 5))
        end = point + draw(st.integers(0, 5))
        kind = draw(st.sampled_from([PUT, PUT, DELETE, CAS, SCAN, SCAN, GET]))
        outcome = draw(st.sampled_from([OK] * 6 + [FAIL, UNKNOWN]))
        effective = outcome is OK or (outcome is UNKNOWN and draw(st.booleans()))
        key = draw(st.sampled_from(KEYS))
        value = b"v%d" % i
        first = draw(st.sampled_from(BOUNDS[:-1]))
        last = draw(st.sampled_from([None, *(b for b in BOUNDS if b > first)]))
        if kind is SCAN:
            op = Operation(i % 4, SCAN, first, start, end, outcome, end=last)
            if effective and outcome is OK:
                rows = tuple(sorted((k, v) for k, v in store.items() if op.covers(k)))
                op = Operation(i % 4, SCAN, first, start, end, outcome, end=last, rows=rows)
        else:
            expected = store.get(key) if draw(st.booleans()) else None
            read, succeeded = None, True
            if effective:
                current = store.get(key)
                if kind is GET:
                    read = current
                elif kind is PUT:
                    store[key] = value
                elif kind is DELETE:
                    succeeded = store.pop(key, None) is not None
                elif current == expected:
                    store[key] = value
                else:
                    succeeded = False
            if outcome is not OK:
                read, succeeded = None, True
            op = Operation(i % 4, kind, key, start, end, outcome, value, expected, read, succeeded)
        if outcome is UNKNOWN:
            op = replace(op, complete=INF, read=None, succeeded=True, rows=())
        ops.append(op)
    scans = [i for i, o in enumerate(ops) if o.kind is SCAN and o.outcome is OK]
    if scans and draw(st.booleans()):
        i = draw(st.sampled_from(scans))
        o = ops[i]
        rows = tuple(
            (k, draw(st.sampled_from([b"v0", b"v1", b"v3"])))
            for k in KEYS
            if o.covers(k) and draw(st.booleans())
        )
        ops[i] = replace(o, rows=rows)
        return ops, False
    return ops, True


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequential_histories())
def test_sequential_executions_with_scans_agree_with_brute_force(
    drawn: tuple[list[Operation], bool],
) -> None:
    ops, untouched = drawn
    expected = brute_force(ops)
    if untouched:
        assert expected is True
    assert check_history(ops).ok == expected, to_json(ops)


# --------------------------------------------------------------------------
# A plain memoized search, for histories too long to brute-force
# --------------------------------------------------------------------------


def plain_search(ops: list[Operation]) -> bool:
    """Wing & Gong's search with a memo of (placed OK ops, placed unknown ops,
    state) and nothing else: any unplaced op invoked before the first
    completion may go next, unknown ones included."""
    live = [o for o in ops if o.outcome is not FAIL]
    done = [o for o in live if o.outcome is OK]
    maybe = [o for o in live if o.outcome is UNKNOWN and o.kind in (PUT, DELETE, CAS)]
    full = (1 << len(done)) - 1

    @functools.cache
    def search(placed: int, used: int, state: State) -> bool:
        if placed == full:
            return True
        deadline = min(o.complete for i, o in enumerate(done) if not placed >> i & 1)
        current = dict(state)
        for i, o in enumerate(done):
            if not placed >> i & 1 and o.invoke <= deadline:
                legal, after = _apply(current, o)
                if legal and search(placed | 1 << i, used, frozenset(after.items())):
                    return True
        for u, o in enumerate(maybe):
            if not used >> u & 1 and o.invoke <= deadline:
                _, after = _apply(current, o)
                if search(placed, used | 1 << u, frozenset(after.items())):
                    return True
        return False

    return search(0, 0, frozenset())


@st.composite
def generated_histories(draw: st.DrawFn) -> list[Operation]:
    """A simulated store's history (at most 6 unknown ops), then up to two
    corruptions: a scan row dropped or swapped for another written value, a
    read of another value, an interval shifted."""
    ops = generate_kv_history(
        seed=draw(st.integers(0, 2**32)),
        n_ops=draw(st.integers(6, 30)),
        clients=draw(st.integers(2, 6)),
        keys=draw(st.integers(2, 4)),
        scan_rate=draw(st.sampled_from([0.1, 0.3])),
        unknown_rate=draw(st.sampled_from([0.05, 0.15])),
        fail_rate=0.05,
        mix=(0.3, 0.3, 0.3, 0.1),
    )
    for i in [i for i, o in enumerate(ops) if o.outcome is UNKNOWN][6:]:
        ops[i] = replace(ops[i], outcome=FAIL, complete=ops[i].invoke + 1)
    for _ in range(draw(st.integers(0, 2))):
        i = draw(st.integers(0, len(ops) - 1))
        o = ops[i]
        if o.outcome is not OK:
            continue
        written = [x.value for x in ops if x.value is not None]
        if o.kind is SCAN and o.rows:
            j = draw(st.integers(0, len(o.rows) - 1))
            key = o.rows[j][0]
            keep = o.rows[:j] + o.rows[j + 1 :]
            if draw(st.booleans()):
                keep = tuple(sorted((*keep, (key, draw(st.sampled_from(written))))))
            ops[i] = replace(o, rows=keep)
        elif o.kind is GET:
            ops[i] = replace(o, read=draw(st.sampled_from([None, *written])))
        else:
            shift = draw(st.floats(-1.5, 1.5))
            ops[i] = replace(o, invoke=o.invoke + shift, complete=o.complete + shift)
    return ops


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(generated_histories())
def test_agrees_with_a_plain_search_on_generated_histories(ops: list[Operation]) -> None:
    assert check_history(ops).ok == plain_search(ops), to_json(ops)
