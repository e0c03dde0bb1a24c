"""Seeded histories that are linearizable by construction.

The checker's tests and benchmarks need large, realistic inputs whose
verdict is known without a running cluster.  Both generators here simulate
an atomic store: every operation gets a random real-time interval and a
*linearization point* inside it; the operations are then executed against
a plain dict in linearization-point order -- which is by definition a
valid linearization -- and the results are written back into the history.
``UNKNOWN`` operations take effect with probability 1/2 (their clients time
out and move on), ``FAIL`` operations never take effect.  Values are unique
per write, so reads pin the order down: the hard case for a checker.

* :func:`generate_register_history` -- single-key operations (GET, PUT,
  CAS, DELETE) over one or a few keys.
* :func:`generate_kv_history` -- the same plus SCANs over random sub-spans
  of the keys (some cut short by a limit), which tie keys together.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, replace

from rangekv.check.history import Operation, OpKind, Outcome

__all__ = ["generate_kv_history", "generate_register_history"]


@dataclass(slots=True)
class _Planned:
    op: Operation
    point: float  # linearization point (or when it would have been)
    effective: bool  # whether it actually takes effect
    limit: int = 0  # a SCAN's limit (0: none)


def generate_register_history(
    *,
    seed: int,
    n_ops: int,
    clients: int = 16,
    keys: int = 1,
    unknown_rate: float = 0.005,
    fail_rate: float = 0.005,
    mix: tuple[float, float, float, float] = (0.4, 0.3, 0.2, 0.1),
) -> list[Operation]:
    """A linearizable history of single-key operations on ``keys`` keys.

    Each client issues operations one after another.  ``mix`` is the
    (get, put, cas, delete) proportion.
    """
    return generate_kv_history(
        seed=seed,
        n_ops=n_ops,
        clients=clients,
        keys=keys,
        unknown_rate=unknown_rate,
        fail_rate=fail_rate,
        mix=mix,
        scan_rate=0.0,
    )


def generate_kv_history(
    *,
    seed: int,
    n_ops: int,
    clients: int = 16,
    keys: int = 6,
    scan_rate: float = 0.055,
    limit_rate: float = 0.25,
    unknown_rate: float = 0.005,
    fail_rate: float = 0.005,
    mix: tuple[float, float, float, float] = (0.4, 0.3, 0.2, 0.1),
) -> list[Operation]:
    """A linearizable history of single-key operations and scans.

    Keys are ``b"k0"``, ``b"k1"``, ...  A fraction ``scan_rate`` of the
    operations are scans of a random sub-span of the keys (unbounded when
    the span reaches past the last key); a fraction ``limit_rate`` of those
    carry a limit of 1 to 3 rows and, when cut short, are recorded the way
    :class:`~rangekv.check.history.Operation` says (``end`` = last row's key
    + ``b"\\x00"``).  The other operations follow ``mix``, the (get, put,
    cas, delete) proportion.  With ``scan_rate=0`` this draws exactly the
    same random numbers as the register generator always did, so seeded
    histories stay what they were.
    """
    rng = random.Random(seed)
    key_names = [b"k%d" % i for i in range(keys)]
    recent: dict[bytes, list[bytes]] = {k: [] for k in key_names}
    kinds = [OpKind.GET, OpKind.PUT, OpKind.CAS, OpKind.DELETE]
    plans: list[_Planned] = []
    ready = [(rng.uniform(0.0, 1.0), c) for c in range(clients)]
    heapq.heapify(ready)
    written = 0
    for _ in range(n_ops):
        start, client = heapq.heappop(ready)
        limit = 0
        end: bytes | None = None
        value: bytes | None = None
        expected: bytes | None = None
        if scan_rate and rng.random() < scan_rate:
            kind = OpKind.SCAN
            first = rng.randrange(keys)
            last = rng.randrange(first + 1, keys + 1)
            key = key_names[first] if first or rng.random() < 0.5 else b""
            end = key_names[last] if last < keys else None
            if rng.random() < limit_rate:
                limit = rng.randint(1, 3)
        else:
            key = rng.choice(key_names)
            kind = rng.choices(kinds, weights=mix)[0]
            if kind in (OpKind.PUT, OpKind.CAS):
                written += 1
                value = b"v%d" % written
            if kind is OpKind.CAS:
                pool = recent[key]
                expected = rng.choice(pool) if pool and rng.random() < 0.9 else None
            if value is not None:
                recent[key] = (recent[key] + [value])[-4:]
        point = start + rng.uniform(0.0, 1.0)
        complete = point + rng.uniform(0.0, 1.0)
        roll = rng.random()
        if roll < unknown_rate:
            outcome, effective, complete = Outcome.UNKNOWN, rng.random() < 0.5, math.inf
            next_start = point + 3.0  # the client times out and moves on
        elif roll < unknown_rate + fail_rate:
            outcome, effective = Outcome.FAIL, False
            next_start = complete
        else:
            outcome, effective = Outcome.OK, True
            next_start = complete
        heapq.heappush(ready, (next_start + rng.uniform(0.0, 0.2), client))
        op = Operation(client, kind, key, start, complete, outcome, value, expected, end=end)
        plans.append(_Planned(op, point, effective, limit))
    return _execute(plans)


def _execute(plans: list[_Planned]) -> list[Operation]:
    """Run the planned operations on a dict in linearization-point order."""
    store: dict[bytes, bytes] = {}
    result: list[Operation] = []
    for plan in sorted(plans, key=lambda p: p.point):
        op = plan.op
        current = store.get(op.key)
        if plan.effective:
            if op.kind is OpKind.GET:
                op = replace(op, read=current)
            elif op.kind is OpKind.SCAN:
                rows = tuple(sorted((k, v) for k, v in store.items() if op.covers(k)))
                if plan.limit and len(rows) >= plan.limit:
                    rows = rows[: plan.limit]
                    op = replace(op, end=rows[-1][0] + b"\x00")
                op = replace(op, rows=rows)
            elif op.kind is OpKind.PUT:
                assert op.value is not None
                store[op.key] = op.value
            elif op.kind is OpKind.DELETE:
                op = replace(op, succeeded=store.pop(op.key, None) is not None)
            else:
                swapped = current == op.expected
                if swapped:
                    if op.value is None:
                        store.pop(op.key, None)
                    else:
                        store[op.key] = op.value
                op = replace(op, succeeded=swapped, read=None if swapped else current)
            if op.outcome is not Outcome.OK:
                op = replace(op, read=None, succeeded=True, rows=())
        result.append(op)
    result.sort(key=lambda o: (o.invoke, o.client))
    return result
