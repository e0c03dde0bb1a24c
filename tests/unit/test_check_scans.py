"""Tests for scans in the history model and the linearizability checker.

A scan claims that every key of its span held what it returned -- its value,
or absent -- at one instant inside its interval.  The checker judges keys
that scans tie together jointly, with its own pruning rules, so it is tested
like the single-key checker: hand-built histories with a known verdict (the
anomaly that made us add scans first: a scan that is not a snapshot),
histories generated from an atomic store (accepted, and rejected once a scan
is corrupted), and an independent brute-force checker on small random
histories, which catches unsound pruning.
"""

from __future__ import annotations

import itertools
import math
import pathlib
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from rangekv.check import (
    HistoryRecorder,
    Operation,
    OpKind,
    Outcome,
    check_history,
    from_json,
    generate_kv_history,
    load_history,
    save_history,
    to_json,
)

GET, PUT, DELETE, CAS, SCAN = OpKind.GET, OpKind.PUT, OpKind.DELETE, OpKind.CAS, OpKind.SCAN
OK, FAIL, UNKNOWN = Outcome.OK, Outcome.FAIL, Outcome.UNKNOWN
INF = math.inf
A, B, C = b"a", b"b", b"c"


def put(
    key: bytes, start: float, end: float, value: bytes, *, client: int = 0, outcome: Outcome = OK
) -> Operation:
    if outcome is UNKNOWN:
        end = INF
    return Operation(client, PUT, key, start, end, outcome, value=value)


def get(key: bytes, start: float, end: float, read: bytes | None, client: int = 0) -> Operation:
    return Operation(client, GET, key, start, end, OK, read=read)


def delete(
    key: bytes, start: float, end: float, *, succeeded: bool = True, outcome: Outcome = OK
) -> Operation:
    if outcome is UNKNOWN:
        end = INF
    return Operation(0, DELETE, key, start, end, outcome, succeeded=succeeded)


def scan(
    start: float,
    end: float,
    rows: dict[bytes, bytes],
    *,
    first: bytes = A,
    last: bytes | None = b"d",
    client: int = 9,
    outcome: Outcome = OK,
) -> Operation:
    if outcome is UNKNOWN:
        end = INF
    return Operation(
        client, SCAN, first, start, end, outcome, end=last, rows=tuple(sorted(rows.items()))
    )


def verdict(ops: list[Operation]) -> bool | None:
    return check_history(ops, timeout=20).ok


# --------------------------------------------------------------------------
# The non-snapshot scan, and its legal variants
# --------------------------------------------------------------------------

W_A = put(A, 0, 2, b"1", client=1)  # completes at t=2
W_B = put(B, 3, 4, b"1", client=1)  # invoked at t=3, after W_A completed


def test_a_scan_that_is_not_a_snapshot_is_rejected() -> None:
    # Concurrent with both writes, it returns b's new value but a's old one
    # (absent), although W_A finished before W_B began.
    torn = scan(1, 5, {B: b"1"}, first=A, last=C)
    result = check_history([W_A, W_B, torn])
    assert result.ok is False, result.explanation
    assert result.failed_keys == (A, B)
    assert result.failed_key == A
    assert "not linearizable" in result.explanation
    assert "SCAN [b'a', b'c')" in result.explanation  # names the scan
    assert "rows={b'b': b'1'}" in result.explanation
    # Each key alone is fine: only the joint check sees it.
    assert verdict([W_A, get(A, 1, 5, None, client=9)]) is True
    assert verdict([W_B, get(B, 1, 5, b"1", client=9)]) is True


@pytest.mark.parametrize(
    "rows",
    [
        {A: b"1", B: b"1"},  # both writes
        {},  # neither: the scan may take effect before W_A (invoked at 1 < 2)
        {A: b"1"},  # a's write only
    ],
)
def test_a_snapshot_scan_concurrent_with_both_writes_is_accepted(rows: dict[bytes, bytes]) -> None:
    result = check_history([W_A, W_B, scan(1, 5, rows, first=A, last=C)])
    assert result.ok is True, result.explanation
    assert result.keys_checked == 2


def test_neither_write_is_rejected_when_the_scan_starts_after_the_first() -> None:
    assert verdict([W_A, W_B, scan(2.5, 5, {}, first=A, last=C)]) is False
    assert verdict([W_A, W_B, scan(2.5, 5, {A: b"1"}, first=A, last=C)]) is True


def test_two_scans_that_disagree_on_the_order_of_two_writes() -> None:
    # Every op overlaps every other, so each key alone is fine; but one scan
    # says a was written first, the other b.
    ops = [
        put(A, 0, 10, b"1", client=1),
        put(B, 0, 10, b"1", client=2),
        scan(1, 9, {A: b"1"}, client=3),
        scan(1, 9, {B: b"1"}, client=4),
    ]
    result = check_history(ops)
    assert result.ok is False
    assert result.explanation.count("SCAN") >= 2
    ops[3] = scan(1, 9, {A: b"1", B: b"1"}, client=4)
    assert verdict(ops) is True


# --------------------------------------------------------------------------
# Other hand-built histories
# --------------------------------------------------------------------------

REJECTED: dict[str, list[Operation]] = {
    "scan sees a value nobody wrote": [
        put(A, 0, 1, b"1"),
        scan(2, 3, {A: b"1", B: b"ghost"}),
    ],
    "scan sees a value nobody wrote, on a key nobody touched": [
        put(A, 0, 1, b"1"),
        scan(2, 3, {A: b"1", C: b"ghost"}),
    ],
    "scan misses a key that was definitely present": [
        put(A, 0, 1, b"1"),
        put(B, 0, 1, b"1"),
        scan(2, 3, {B: b"1"}),
    ],
    "scan sees a key that was definitely deleted": [
        put(A, 0, 1, b"1"),
        put(B, 0, 1, b"1"),
        delete(A, 1.5, 1.8),
        scan(2, 3, {A: b"1", B: b"1"}),
    ],
    "scan sees a failed write": [
        put(A, 0, 1, b"1"),
        put(B, 0, 1, b"2", outcome=FAIL),
        scan(2, 3, {A: b"1", B: b"2"}),
    ],
    "unknown write seen by a scan, then gone": [
        put(A, 0, 1, b"1"),
        put(B, 0, 0, b"1", outcome=UNKNOWN),
        scan(2, 3, {A: b"1", B: b"1"}),
        get(B, 4, 5, None),
    ],
    "unbounded scan misses a key after the limit-free end": [
        put(A, 0, 1, b"1"),
        put(B, 0, 1, b"1"),
        put(C, 0, 1, b"1"),
        scan(2, 3, {A: b"1", B: b"1"}, last=None),
    ],
    "scan from the first key misses a present key": [
        put(A, 0, 1, b"1"),
        put(C, 0, 1, b"1"),
        scan(2, 3, {C: b"1"}, first=b"", last=None),
    ],
    "scan of a single key misses it": [
        put(A, 0, 1, b"1"),
        put(C, 0, 1, b"1"),
        scan(2, 3, {}, first=A, last=B),
    ],
    "a read after a scan goes back in time": [
        put(A, 0, 1, b"1"),
        put(B, 0, 1, b"1"),
        put(A, 2, 6, b"2", client=1),
        scan(3, 4, {A: b"2", B: b"1"}, client=2),
        get(A, 5, 6, b"1", client=3),
    ],
}


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_rejects(name: str) -> None:
    result = check_history(REJECTED[name])
    assert result.ok is False, result.explanation
    assert "not linearizable" in result.explanation
    assert "SCAN" in result.explanation


ACCEPTED: dict[str, list[Operation]] = {
    "unknown write explains a scan's view": [
        put(A, 0, 1, b"1"),
        put(B, 0, 0, b"1", outcome=UNKNOWN),
        scan(2, 3, {A: b"1", B: b"1"}),
        get(B, 4, 5, b"1"),
    ],
    "unknown write never seen by scans": [
        put(A, 0, 1, b"1"),
        put(B, 0.5, 0, b"1", outcome=UNKNOWN),
        scan(2, 3, {A: b"1"}),
        scan(4, 5, {A: b"1"}),
    ],
    "unknown delete explains a scan's missing key": [
        put(A, 0, 1, b"1"),
        put(B, 0, 1, b"1"),
        delete(B, 1.5, 0, outcome=UNKNOWN),
        scan(2, 3, {A: b"1"}),
    ],
    "limit-style scan stops at its last row": [
        put(A, 0, 1, b"1"),
        put(B, 0, 1, b"1"),
        put(C, 0, 1, b"1"),
        scan(2, 3, {A: b"1", B: b"1"}, last=B + b"\x00"),
    ],
    "failed and unknown scans constrain nothing": [
        put(A, 0, 1, b"1"),
        scan(2, 3, {A: b"nonsense"}, outcome=FAIL),
        scan(2, 3, {B: b"nonsense"}, outcome=UNKNOWN),
    ],
    "scan over keys nobody wrote": [
        scan(0, 1, {}, first=b"", last=None),
        put(A, 2, 3, b"1"),
        scan(4, 5, {A: b"1"}, first=b"", last=None),
    ],
    "scan sees a CAS and a delete in the order they happened": [
        put(A, 0, 1, b"1"),
        put(B, 0, 1, b"1"),
        Operation(1, CAS, A, 2, 4, OK, value=b"2", expected=b"1"),
        delete(B, 2, 4),
        scan(3, 5, {A: b"2"}, client=2),
        scan(3, 5, {A: b"1", B: b"1"}, client=3),
    ],
    "scans tie some keys, other keys are checked alone": [
        put(A, 0, 1, b"1"),
        put(B, 0, 1, b"1"),
        scan(2, 3, {A: b"1", B: b"1"}, last=C),
        put(b"x", 0, 1, b"1"),
        get(b"x", 2, 3, b"1"),
    ],
}


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_accepts(name: str) -> None:
    result = check_history(ACCEPTED[name])
    assert result.ok is True, result.explanation


def test_limit_style_scan_recorded_with_the_requested_end_is_rejected() -> None:
    # The same rows with the scan's requested (unbounded) end claim c absent.
    ops = ACCEPTED["limit-style scan stops at its last row"][:3]
    assert verdict([*ops, scan(2, 3, {A: b"1", B: b"1"}, last=None)]) is False


def test_keys_counted_and_failure_in_a_scan_free_key_reported_alone() -> None:
    ops = [*ACCEPTED["scans tie some keys, other keys are checked alone"], get(b"x", 4, 5, None)]
    result = check_history(ops)
    assert result.ok is False
    assert result.failed_key == b"x" and result.failed_keys == (b"x",)
    assert result.keys_checked == 3
    assert result.explanation.startswith("key b'x' is not linearizable")


@pytest.mark.parametrize(
    "bad",
    [
        Operation(0, SCAN, B, 0, 1, OK, end=B),  # empty span
        Operation(0, SCAN, B, 0, 1, OK, end=A),  # end before start
        Operation(0, SCAN, A, 0, 1, OK, end=C, rows=((B, b"1"), (A, b"1"))),  # out of order
        Operation(0, SCAN, A, 0, 1, OK, end=C, rows=((A, b"1"), (A, b"2"))),  # a key twice
        Operation(0, SCAN, A, 0, 1, OK, end=B, rows=((B, b"1"),)),  # outside the span
        Operation(0, SCAN, A, 2, 1, OK, end=B),  # completes before invoked
    ],
)
def test_malformed_scans_are_rejected_loudly(bad: Operation) -> None:
    with pytest.raises(ValueError):
        check_history([put(A, 0, 1, b"1"), bad])


def test_describe_renders_scans_readably() -> None:
    rows = {b"k%d" % i: b"v%d" % i for i in range(10)}
    text = scan(1, 2, rows, first=b"k", last=None).describe()
    assert text.startswith("client 9 SCAN [b'k', <end of keyspace>) [1, 2] OK rows={")
    assert "b'k0': b'v0'" in text and "b'k5': b'v5'" in text
    assert "b'k6'" not in text and "... 4 more" in text
    assert "rows" not in scan(1, 2, {}, outcome=UNKNOWN).describe()


# --------------------------------------------------------------------------
# Generated histories
# --------------------------------------------------------------------------


def tearable(ops: list[Operation]) -> tuple[int, bytes]:
    """A scan and a row it returned such that the key was certainly present
    all through the scan: written by an OK operation that completed before
    the scan began, and nothing that could remove it (a DELETE, a CAS to
    absent, whatever its outcome) could take effect between the two.
    Dropping that row makes the scan claim the key absent: never legal."""
    for i in range(len(ops) - 1, -1, -1):
        s = ops[i]
        if s.kind is not SCAN or s.outcome is not OK:
            continue
        for key, value in s.rows:
            writers = [
                o
                for o in ops
                if o.key == key
                and o.kind in (PUT, CAS)
                and o.value == value
                and o.outcome is OK
                and o.succeeded
            ]
            if not writers or writers[0].complete >= s.invoke:
                continue
            removers = [
                o
                for o in ops
                if o.key == key
                and o.kind is not SCAN
                and o.outcome is not FAIL
                and (o.kind is DELETE or (o.kind is CAS and o.value is None))
            ]
            if all(o.complete < writers[0].invoke or o.invoke > s.complete for o in removers):
                return i, key
    raise AssertionError("no scan to tear")


@pytest.mark.parametrize("seed", range(4))
def test_generated_kv_histories_are_accepted_and_a_torn_scan_rejected(seed: int) -> None:
    ops = generate_kv_history(seed=seed, n_ops=1500, clients=8, keys=6, unknown_rate=0.02)
    assert sum(o.kind is SCAN for o in ops) > 40
    assert sum(o.outcome is UNKNOWN for o in ops) > 10
    result = check_history(ops)
    assert result.ok is True, result.explanation
    i, key = tearable(ops)
    ops[i] = replace(ops[i], rows=tuple(r for r in ops[i].rows if r[0] != key))
    result = check_history(ops, timeout=60)
    assert result.ok is False, f"seed {seed}: torn scan {ops[i].describe()} accepted"
    assert "SCAN" in result.explanation


def not_a_snapshot(ops: list[Operation]) -> Iterator[tuple[int, Operation]]:
    """Scans S (last first) made to see a write W_b but not a write W_a that
    finished before W_b began, both on keys S covers: S sees, on W_a's key,
    the value of the last PUT that completed before W_a began (unique, so
    W_a overwrote it for good: S precedes W_a) and W_b's value (S follows
    W_b, which began after W_a ended).  Yields an index and the new scan."""
    puts = [o for o in ops if o.kind is PUT and o.outcome is OK]
    for i in range(len(ops) - 1, -1, -1):
        s = ops[i]
        if s.kind is not SCAN or s.outcome is not OK:
            continue
        for w_a in (p for p in puts if s.covers(p.key) and s.invoke < p.complete < s.complete):
            before = [p for p in puts if p.key == w_a.key and p.complete < w_a.invoke]
            for w_b in puts:
                if (
                    before
                    and w_b.key != w_a.key
                    and s.covers(w_b.key)
                    and w_a.complete < w_b.invoke
                    and w_b.complete < s.complete
                ):
                    rows = dict(s.rows)
                    assert before[-1].value is not None and w_b.value is not None
                    rows[w_a.key], rows[w_b.key] = before[-1].value, w_b.value
                    yield i, replace(s, rows=tuple(sorted(rows.items())))


def key_by_key(ops: list[Operation]) -> list[Operation]:
    """Every scan split into one scan per key it covers: the keys judged alone."""
    keys = sorted({o.key for o in ops if o.kind is not SCAN})
    out = []
    for o in ops:
        if o.kind is not SCAN:
            out.append(o)
            continue
        rows = dict(o.rows)
        for k in (k for k in keys if o.covers(k)):
            seen = ((k, rows[k]),) if k in rows else ()
            out.append(replace(o, key=k, end=k + b"\x00", rows=seen))
    return out


@pytest.mark.parametrize("seed", [0, 4, 10])
def test_a_scan_that_is_not_a_snapshot_is_found_in_a_generated_history(seed: int) -> None:
    ops = generate_kv_history(seed=seed, n_ops=1000, clients=16, keys=5, unknown_rate=0.01)
    assert check_history(ops).ok is True
    for i, bad in itertools.islice(not_a_snapshot(ops), 30):
        torn = [*ops[:i], bad, *ops[i + 1 :]]
        if check_history(key_by_key(torn)).ok:  # every key alone is still fine
            break
    else:
        raise AssertionError(f"seed {seed}: no scan to make non-snapshot")
    # The culprit search's budget is a multiple of the refutation's time, so a
    # loaded machine can cut the explanation short; a clock that stands still
    # lets the culprit search run to its end (it always ends: the cuts are finite).
    result = check_history(torn, clock=lambda: 0.0)
    assert result.ok is False, f"seed {seed}: {bad.describe()} accepted"
    assert len(result.failed_keys) > 1
    assert f"What completed then:\n  {bad.describe()}" in result.explanation


def test_seven_thousand_ops_with_scans_check_quickly() -> None:
    ops = generate_kv_history(seed=11, n_ops=7_000, keys=6, unknown_rate=0.003)
    scans = sum(o.kind is SCAN for o in ops)
    unknown = sum(o.outcome is UNKNOWN for o in ops)
    assert scans > 300 and unknown > 10
    start = time.perf_counter()
    result = check_history(ops)
    elapsed = time.perf_counter() - start
    print(f"\n7,000 ops ({scans} scans, {unknown} unknown) over 6 keys checked in {elapsed:.2f}s")
    assert result.ok is True, result.explanation
    assert result.keys_checked == 6
    assert elapsed < 20  # about 0.1 s alone; generous for a shared CPU


def test_register_generator_is_unchanged_without_scans() -> None:
    ops = generate_kv_history(seed=5, n_ops=300, keys=3, scan_rate=0.0)
    assert not any(o.kind is SCAN for o in ops)


# --------------------------------------------------------------------------
# Recorder and serialisation
# --------------------------------------------------------------------------


def test_recorder_records_scans() -> None:
    ticks = iter(range(100))
    rec = HistoryRecorder(clock=lambda: float(next(ticks)))
    h1 = rec.invoke(1, SCAN, A, end=C)
    rec.invoke(2, SCAN, b"", end=None)
    h3 = rec.invoke(3, SCAN, A, end=B)
    rec.ok(h1, rows=[(A, b"1"), (B, b"2")])
    rec.fail(h3)
    ops = rec.operations()
    assert ops[0] == Operation(1, SCAN, A, 0.0, 3.0, OK, end=C, rows=((A, b"1"), (B, b"2")))
    assert ops[1].outcome is UNKNOWN and ops[1].end is None and ops[1].rows == ()
    assert ops[2].outcome is FAIL and ops[2].end == B and ops[2].rows == ()
    assert check_history(ops).ok is False  # a and b were never written


def test_json_round_trip_with_scans(tmp_path: pathlib.Path) -> None:
    ops = [
        Operation(1, SCAN, b"", 0.5, 1.5, OK, end=None, rows=((b"\x00\xff", b"\x01"), (A, b""))),
        Operation(2, SCAN, A, 1.0, INF, UNKNOWN, end=b"z"),
        Operation(3, SCAN, A, 1.0, 2.0, FAIL, end=B + b"\x00"),
        Operation(4, PUT, A, 0.0, 1.0, OK, value=b"1"),
        *generate_kv_history(seed=3, n_ops=200, unknown_rate=0.05),
    ]
    assert sum(o.kind is SCAN for o in ops) > 5
    assert from_json(to_json(ops)) == ops
    save_history(tmp_path / "h.json", ops)
    assert load_history(tmp_path / "h.json") == ops


OLD_JSON = """{"format": "rangekv-history", "version": 1, "operations": [
 {"client": 1, "kind": "PUT", "key": "6b", "invoke": 0.0, "complete": 1.0, "outcome": "OK",
  "value": "31", "expected": null, "read": null, "succeeded": true},
 {"client": 2, "kind": "GET", "key": "6b", "invoke": 2.0, "complete": 3.0, "outcome": "OK",
  "value": null, "expected": null, "read": "31", "succeeded": true},
 {"client": 3, "kind": "CAS", "key": "6b", "invoke": 2.0, "complete": null,
  "outcome": "UNKNOWN", "value": "32", "expected": "31", "read": null, "succeeded": true}]}"""


def test_old_json_without_scan_fields_still_loads() -> None:
    ops = from_json(OLD_JSON)
    assert ops == [
        Operation(1, PUT, b"k", 0.0, 1.0, OK, value=b"1"),
        Operation(2, GET, b"k", 2.0, 3.0, OK, read=b"1"),
        Operation(3, CAS, b"k", 2.0, INF, UNKNOWN, value=b"2", expected=b"1"),
    ]
    assert check_history(ops).ok is True
    with pytest.raises(ValueError):
        from_json(OLD_JSON.replace('"version": 1', '"version": 99'))


@pytest.mark.parametrize("rows", ['"nope"', '[["61"]]', '[["61", null]]', '[[1, "62"]]'])
def test_malformed_rows_in_json_are_rejected(rows: str) -> None:
    doc = (
        '{"format": "rangekv-history", "version": 2, "operations": [{"client": 1, '
        '"kind": "SCAN", "key": "61", "invoke": 0.0, "complete": 1.0, "outcome": "OK", '
        f'"end": null, "rows": {rows}}}]}}'
    )
    with pytest.raises(ValueError):
        from_json(doc)
