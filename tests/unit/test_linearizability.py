"""Tests for the history model and the linearizability checker.

The checker is what every consistency claim of rangekv rests on, so it is
tested from three sides: hand-built histories with a known verdict (each
anomaly a replicated store can plausibly exhibit), generated histories that
are linearizable by construction (and must stop being so once corrupted),
and a brute-force reference checker on small random histories, which
catches unsound pruning that the other two could miss.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import math
import pathlib
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rangekv.check import (
    HistoryRecorder,
    Operation,
    OpKind,
    Outcome,
    check_history,
    from_json,
    generate_register_history,
    load_history,
    save_history,
    to_json,
)

GET, PUT, DELETE, CAS = OpKind.GET, OpKind.PUT, OpKind.DELETE, OpKind.CAS
OK, FAIL, UNKNOWN = Outcome.OK, Outcome.FAIL, Outcome.UNKNOWN
INF = math.inf
K = b"k"


def op(
    kind: OpKind,
    start: float,
    end: float,
    *,
    client: int = 0,
    key: bytes = K,
    outcome: Outcome = OK,
    value: bytes | None = None,
    expected: bytes | None = None,
    read: bytes | None = None,
    succeeded: bool = True,
) -> Operation:
    if outcome is UNKNOWN:
        end = INF
    return Operation(client, kind, key, start, end, outcome, value, expected, read, succeeded)


def put(start: float, end: float, value: bytes, **kw: object) -> Operation:
    return op(PUT, start, end, value=value, **kw)  # type: ignore[arg-type]


def get(start: float, end: float, read: bytes | None, **kw: object) -> Operation:
    return op(GET, start, end, read=read, **kw)  # type: ignore[arg-type]


def verdict(ops: list[Operation]) -> bool | None:
    return check_history(ops, timeout=20).ok


# --------------------------------------------------------------------------
# Hand-built histories that must be rejected
# --------------------------------------------------------------------------

REJECTED: dict[str, list[Operation]] = {
    "stale read after completed write": [
        put(0, 1, b"a"),
        put(2, 3, b"b"),
        get(4, 5, b"a"),
    ],
    "two concurrent CAS from the same expected value both succeed": [
        put(0, 1, b"x"),
        op(CAS, 2, 4, client=1, expected=b"x", value=b"y"),
        op(CAS, 2.5, 4.5, client=2, expected=b"x", value=b"z"),
    ],
    "read of a value never written": [
        put(0, 1, b"a"),
        get(0.5, 3, b"ghost"),
    ],
    "lost acknowledged write": [
        put(0, 1, b"a"),
        get(2, 3, None),
    ],
    "delete reports deleted on an absent key": [
        op(DELETE, 0, 1, succeeded=True),
    ],
    "delete reports deleted after a completed delete": [
        put(0, 1, b"a"),
        op(DELETE, 2, 3, succeeded=True),
        op(DELETE, 4, 5, client=1, succeeded=True),
    ],
    "read goes back in time across two readers": [
        put(0, 1, b"a"),
        put(2, 10, b"b", client=1),
        get(3, 4, b"b", client=2),
        get(5, 6, b"a", client=3),
    ],
    "failed write observed": [
        put(0, 1, b"a"),
        put(2, 3, b"b", outcome=FAIL),
        get(4, 5, b"b"),
    ],
    "unknown write observed, then overwritten value returns": [
        put(0, 1, b"a"),
        put(2, INF, b"b", client=1, outcome=UNKNOWN),
        get(3, 4, b"b"),
        get(5, 6, b"a"),
    ],
    "CAS that did not swap saw the expected value": [
        put(0, 1, b"a"),
        op(CAS, 2, 3, expected=b"a", value=b"b", succeeded=False, read=b"a"),
    ],
    "delete reports nothing to delete on a present key": [
        put(0, 1, b"a"),
        op(DELETE, 2, 3, succeeded=False),
    ],
    "touching intervals cannot save a read after a strictly earlier write": [
        put(0, 1, b"a"),
        get(1.0001, 2, None),
    ],
}


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_rejects(name: str) -> None:
    result = check_history(REJECTED[name])
    assert result.ok is False, result.explanation
    assert result.failed_key == K
    assert "not linearizable" in result.explanation


def test_failure_explanation_names_the_stuck_operation() -> None:
    result = check_history(REJECTED["stale read after completed write"])
    assert result.ok is False
    assert "read=b'a'" in result.explanation
    assert "b'b'" in result.explanation  # the state it got stuck in


# --------------------------------------------------------------------------
# Hand-built histories that must be accepted
# --------------------------------------------------------------------------

ACCEPTED: dict[str, list[Operation]] = {
    "empty": [],
    "concurrent overlapping writes, reads see either order": [
        put(0, 5, b"a", client=1),
        put(1, 6, b"b", client=2),
        get(2, 7, b"a", client=3),
        get(3, 8, b"b", client=4),
    ],
    "concurrent overlapping writes, reads see the other order": [
        put(0, 5, b"a", client=1),
        put(1, 6, b"b", client=2),
        get(2, 7, b"b", client=3),
        get(3, 8, b"a", client=4),
    ],
    "unknown-outcome write observed later": [
        put(0, INF, b"a", outcome=UNKNOWN),
        get(5, 6, b"a", client=1),
    ],
    "unknown-outcome write never observed": [
        put(0, 1, b"a"),
        put(2, INF, b"b", outcome=UNKNOWN),
        get(3, 4, b"a", client=1),
        get(10, 11, b"a", client=1),
    ],
    "failed write never observed": [
        put(0, 1, b"a"),
        put(2, 3, b"b", outcome=FAIL),
        get(4, 5, b"a"),
    ],
    "unknown write enables a later delete": [
        put(0, INF, b"a", outcome=UNKNOWN),
        op(DELETE, 5, 6, client=1, succeeded=True),
        get(7, 8, None, client=1),
    ],
    "unknown CAS observed": [
        put(0, 1, b"a"),
        op(CAS, 2, INF, outcome=UNKNOWN, expected=b"a", value=b"b"),
        get(3, 4, b"b", client=1),
    ],
    "unknown delete observed": [
        put(0, 1, b"a"),
        op(DELETE, 2, INF, outcome=UNKNOWN),
        get(3, 4, None, client=1),
    ],
    "two unknown writes, the later-invoked one takes effect first": [
        put(0, INF, b"a", outcome=UNKNOWN),
        put(1, INF, b"b", client=1, outcome=UNKNOWN),
        get(2, 3, b"b", client=2),
        get(4, 5, b"a", client=2),
    ],
    "delete of an absent key reports nothing deleted": [
        op(DELETE, 0, 1, succeeded=False),
        get(2, 3, None),
    ],
    "CAS expecting absence, then a failed CAS that saw the new value": [
        op(CAS, 0, 1, expected=None, value=b"a"),
        op(CAS, 2, 3, expected=None, value=b"b", succeeded=False, read=b"a"),
    ],
    "touching intervals are concurrent": [
        put(0, 1, b"a"),
        get(1, 2, None, client=1),
    ],
    "unknown get is ignored": [
        get(0, INF, b"never", outcome=UNKNOWN),
    ],
    "read goes back in time only across overlapping readers": [
        put(0, 1, b"a"),
        put(2, 10, b"b", client=1),
        get(3, 4, b"b", client=2),
        get(3.5, 6, b"a", client=3),
    ],
}


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_accepts(name: str) -> None:
    result = check_history(ACCEPTED[name])
    assert result.ok is True, result.explanation
    assert result.failed_key is None


def test_keys_are_checked_independently() -> None:
    ops = [
        put(0, 1, b"a", key=b"x"),
        get(2, 3, b"a", key=b"x"),
        put(0, 1, b"a", key=b"y"),
        put(2, 3, b"b", key=b"y"),
        get(4, 5, b"a", key=b"y"),
        # On key z the same stale-looking read is fine: nothing else was written.
        put(0, 1, b"a", key=b"z"),
        get(4, 5, b"a", key=b"z"),
    ]
    result = check_history(ops)
    assert result.ok is False
    assert result.failed_key == b"y"
    assert check_history([o for o in ops if o.key != b"y"]).keys_checked == 2


def test_timeout_gives_no_verdict() -> None:
    ticks = itertools.count()
    clock: Callable[[], float] = lambda: float(next(ticks))  # noqa: E731
    ops = generate_register_history(seed=1, n_ops=200)
    result = check_history(ops, timeout=0.5, clock=clock)
    assert result.ok is None
    assert "timed out" in result.explanation


def test_malformed_operation_is_rejected_loudly() -> None:
    with pytest.raises(ValueError):
        check_history([put(2, 1, b"a")])


# --------------------------------------------------------------------------
# A brute-force reference checker, for cross-checking the pruning
# --------------------------------------------------------------------------


def _apply(state: bytes | None, o: Operation) -> tuple[bool, bytes | None]:
    """The register semantics, written independently of the checker."""
    if o.kind is GET:
        return (o.outcome is not OK or state == o.read), state
    if o.kind is PUT:
        return True, o.value
    if o.kind is DELETE:
        if o.outcome is not OK:
            return True, None
        return (state is not None) == o.succeeded, None
    swapped = state == o.expected
    if o.outcome is not OK:
        return True, o.value if swapped else state
    if o.succeeded:
        return swapped, o.value
    return (not swapped and (o.read is None or o.read == state)), state


def brute_force(ops: list[Operation]) -> bool:
    for key in {o.key for o in ops}:
        live = tuple(o for o in ops if o.key == key and o.outcome is not FAIL)

        @functools.cache
        def search(remaining: frozenset[int], state: bytes | None, live: tuple = live) -> bool:
            if all(live[i].outcome is not OK for i in remaining):
                return True
            for i in remaining:
                o = live[i]
                if any(live[j].complete < o.invoke for j in remaining):
                    continue  # something must be linearized before it
                legal, new = _apply(state, o)
                if legal and search(remaining - {i}, new):
                    return True
            return False

        if not search(frozenset(range(len(live))), None):
            return False
    return True


VALUES = st.sampled_from([None, b"a", b"b", b"c"])


@st.composite
def small_histories(draw: st.DrawFn) -> list[Operation]:
    ops = []
    for client in range(draw(st.integers(1, 7))):
        kind = draw(st.sampled_from([GET, PUT, DELETE, CAS]))
        outcome = draw(st.sampled_from([OK, OK, OK, FAIL, UNKNOWN]))
        start = draw(st.integers(0, 8))  # small integers: many exact ties
        end = INF if outcome is UNKNOWN else start + draw(st.integers(0, 4))
        value = draw(st.sampled_from([b"a", b"b", b"c"])) if kind is PUT else draw(VALUES)
        read = draw(VALUES) if outcome is OK and kind in (GET, CAS) else None
        succeeded = draw(st.booleans()) if outcome is OK else True
        key = draw(st.sampled_from([b"k", b"k", b"j"]))
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
                read=read,
                succeeded=succeeded,
            )
        )
    return ops


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_histories())
def test_agrees_with_brute_force(ops: list[Operation]) -> None:
    assert check_history(ops).ok == brute_force(ops), to_json(ops)


# --------------------------------------------------------------------------
# Histories from an actual sequential execution
# --------------------------------------------------------------------------


@st.composite
def sequential_histories(draw: st.DrawFn) -> list[Operation]:
    """Execute random ops one by one on a dict, then draw real-time intervals
    around each op's linearization point (its position in the execution)."""
    store: bytes | None = None
    domain = draw(st.sampled_from([3, 1000]))  # repeated values, or mostly unique
    ops: list[Operation] = []
    for i in range(draw(st.integers(1, 40))):
        point = 2.0 * i
        start = point - draw(st.integers(0, 12))
        end = point + draw(st.integers(0, 12))
        kind = draw(st.sampled_from([GET, GET, PUT, PUT, CAS, DELETE]))
        outcome = draw(st.sampled_from([OK] * 8 + [FAIL, UNKNOWN]))
        effective = outcome is OK or (outcome is UNKNOWN and draw(st.booleans()))
        value = b"v%d" % draw(st.integers(0, domain)) if kind in (PUT, CAS) else None
        expected = None
        if kind is CAS:
            expected = store if draw(st.booleans()) else draw(st.sampled_from([None, b"v0"]))
        read, succeeded = None, True
        if effective:
            if kind is GET:
                read = store
            elif kind is PUT:
                store = value
            elif kind is DELETE:
                succeeded, store = store is not None, None
            else:
                succeeded = store == expected
                if succeeded:
                    store = value
                elif draw(st.booleans()):
                    read = store
        if outcome is not OK:
            read, succeeded = None, True
        if outcome is UNKNOWN:
            end = INF
        ops.append(Operation(i % 5, kind, K, start, end, outcome, value, expected, read, succeeded))
    return ops


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequential_histories(), st.data())
def test_sequential_executions_are_accepted_and_corruption_rejected(
    ops: list[Operation], data: st.DataObject
) -> None:
    result = check_history(ops)
    assert result.ok is True, result.explanation + "\n" + to_json(ops)

    reads = [i for i, o in enumerate(ops) if o.kind is GET and o.outcome is OK]
    corrupted = list(ops)
    if reads:
        i = data.draw(st.sampled_from(reads))
        o = ops[i]
        corrupted[i] = Operation(o.client, GET, K, o.invoke, o.complete, OK, read=b"never-written")
    else:
        corrupted.append(get(1000, 1001, b"never-written"))
    assert check_history(corrupted).ok is False


@pytest.mark.parametrize("seed", range(6))
def test_simulated_register_histories(seed: int) -> None:
    ops = generate_register_history(seed=seed, n_ops=600, clients=8, keys=3, unknown_rate=0.03)
    assert check_history(ops).ok is True
    # Corrupt one read to a value that was written, but long ago.
    reads = [i for i, o in enumerate(ops) if o.kind is GET and o.outcome is OK and o.read]
    first = next(o for o in ops if o.kind is PUT and o.key == ops[reads[-1]].key)
    o = ops[reads[-1]]
    ops[reads[-1]] = Operation(o.client, GET, o.key, o.invoke, o.complete, OK, read=first.value)
    result = check_history(ops)
    assert result.ok is False
    assert result.failed_key == o.key


def test_ten_thousand_operations_check_quickly() -> None:
    ops = generate_register_history(seed=7, n_ops=10_000, clients=16)
    assert sum(o.outcome is UNKNOWN for o in ops) > 10
    start = time.perf_counter()
    result = check_history(ops)
    elapsed = time.perf_counter() - start
    print(f"\n10,000-op single-key history checked in {elapsed:.2f}s")
    assert result.ok is True, result.explanation
    assert elapsed < 30


# --------------------------------------------------------------------------
# Recorder and serialisation
# --------------------------------------------------------------------------


def fake_clock() -> Callable[[], float]:
    ticks: Iterator[int] = itertools.count()
    return lambda: float(next(ticks))


def test_recorder_records_outcomes_and_pending_as_unknown() -> None:
    rec = HistoryRecorder(clock=fake_clock())
    h1 = rec.invoke(1, PUT, K, value=b"a")
    h2 = rec.invoke(2, CAS, K, value=b"b", expected=b"a")
    h3 = rec.invoke(3, GET, K)
    h4 = rec.invoke(4, DELETE, K)
    rec.ok(h1)
    rec.ok(h2, succeeded=False, read=b"z")
    rec.fail(h3)
    ops = rec.operations()
    assert [o.client for o in ops] == [1, 2, 3, 4]
    assert ops[0] == Operation(1, PUT, K, 0.0, 4.0, OK, value=b"a")
    assert ops[1].succeeded is False and ops[1].read == b"z" and ops[1].expected == b"a"
    assert ops[2].outcome is FAIL
    assert ops[3].outcome is UNKNOWN and ops[3].complete == INF
    rec.unknown(h4)
    assert rec.operations()[3].complete == INF
    with pytest.raises(ValueError):
        rec.ok(h1)
    assert len(rec) == 4


def test_recorder_is_thread_safe() -> None:
    rec = HistoryRecorder()

    def client(c: int) -> None:
        for i in range(300):
            h = rec.invoke(c, PUT, b"t%d" % c, value=b"%d" % i)
            rec.ok(h)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ops = rec.operations()
    assert len(ops) == 2400
    assert all(o.outcome is OK and o.complete >= o.invoke for o in ops)
    assert check_history(ops).ok is True


def test_recorder_from_asyncio() -> None:
    loop_time = [0.0]
    rec = HistoryRecorder(clock=lambda: loop_time[0])
    store: dict[bytes, bytes] = {}

    async def client(c: int) -> None:
        for i in range(20):
            h = rec.invoke(c, PUT, K, value=b"%d-%d" % (c, i))
            await asyncio.sleep(0)
            store[K] = b"%d-%d" % (c, i)
            loop_time[0] += 1
            rec.ok(h)
            h = rec.invoke(c, GET, K)
            await asyncio.sleep(0)
            rec.ok(h, read=store.get(K))
            loop_time[0] += 1

    async def main() -> None:
        await asyncio.gather(*(client(c) for c in range(4)))

    asyncio.run(main())
    assert check_history(rec.operations()).ok is True


def test_json_round_trip(tmp_path: pathlib.Path) -> None:
    ops = [
        Operation(1, CAS, b"\x00\xffkey", 0.5, INF, UNKNOWN, value=b"\x01", expected=None),
        Operation(2, GET, b"k", 1.0, 2.0, OK, read=None),
        Operation(3, DELETE, b"k", 1.0, 2.0, OK, succeeded=False),
        *generate_register_history(seed=3, n_ops=50, unknown_rate=0.1),
    ]
    assert from_json(to_json(ops)) == ops
    save_history(tmp_path / "h.json", ops)
    assert load_history(tmp_path / "h.json") == ops
    with pytest.raises(ValueError):
        from_json('{"format": "other"}')
