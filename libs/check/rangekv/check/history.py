"""The history model that every consistency check in rangekv is fed with.

A *history* is the list of client operations observed against the store:
what each client asked for, when it asked (``invoke``), when it heard back
(``complete``) and what it heard.  The deterministic Raft simulator, the
integration tests and the chaos harness (real processes, real clocks) all
record into this one shape, so that the single linearizability checker in
:mod:`rangekv.check.linearizability` can judge all of them, and so that a
failing history can be written to disk (:func:`to_json`) and replayed
(:func:`from_json`) long after the run that produced it.

Outcomes carry the information a client really has.  ``OK`` means the
client saw the reply; ``FAIL`` means the store *guaranteed* that the
operation had no effect (for example a request rejected before it was
proposed); ``UNKNOWN`` means the client cannot tell -- a timeout, a dropped
connection, a leader that crashed after proposing -- so the operation may
have taken effect at any instant after its invocation, or never.  Treating
an ambiguous reply as ``FAIL`` would make the checker report false
anomalies; treating it as ``OK`` is impossible because there is no reply to
check.  Hence three outcomes, and ``complete = math.inf`` for ``UNKNOWN``.

This module also holds :func:`generate_register_history`, a seeded
generator of histories that are linearizable by construction.  It exists
so the checker's own tests and benchmark exercise realistic, large inputs
without a running cluster.
"""

from __future__ import annotations

import enum
import heapq
import json
import math
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

__all__ = [
    "HistoryRecorder",
    "OpHandle",
    "OpKind",
    "Operation",
    "Outcome",
    "from_json",
    "generate_register_history",
    "load_history",
    "save_history",
    "to_json",
]


class OpKind(enum.Enum):
    """What a client asked the store to do with one key."""

    GET = "GET"
    PUT = "PUT"
    DELETE = "DELETE"
    CAS = "CAS"


class Outcome(enum.Enum):
    """What the client knows about whether its operation took effect."""

    OK = "OK"
    """A reply was received; its contents are in the operation's result fields."""
    FAIL = "FAIL"
    """The operation definitely did not take effect."""
    UNKNOWN = "UNKNOWN"
    """It may have taken effect at any time after invoke, or never."""


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation on one key, with its real-time interval.

    Field meanings by kind (``None`` always stands for "key absent" except
    where noted):

    * ``GET``: ``read`` is the value observed (OK only).
    * ``PUT``: ``value`` is the value written.
    * ``DELETE``: ``succeeded`` tells whether a key existed and was removed
      (a delete of an absent key reports ``False``).
    * ``CAS``: ``expected`` is the value the key must hold (``None``: must
      be absent) and ``value`` the new value (``None``: delete).  For an OK
      CAS, ``succeeded`` says whether it swapped; a CAS that did not swap
      may report the value it saw in ``read``.  Because ``None`` there means
      "not reported", an unswapped CAS cannot report "absent".
    """

    client: int
    kind: OpKind
    key: bytes
    invoke: float
    complete: float
    outcome: Outcome
    value: bytes | None = None
    expected: bytes | None = None
    read: bytes | None = None
    succeeded: bool = True

    def describe(self) -> str:
        """A one-line human-readable rendering used in checker explanations."""
        parts = [f"client {self.client} {self.kind.value}"]
        if self.kind is OpKind.PUT:
            parts.append(f"{_show(self.value)}")
        elif self.kind is OpKind.CAS:
            parts.append(f"{_show(self.expected)}->{_show(self.value)}")
        end = "inf" if math.isinf(self.complete) else f"{self.complete:.6g}"
        parts.append(f"[{self.invoke:.6g}, {end}] {self.outcome.value}")
        if self.outcome is Outcome.OK:
            if self.kind is OpKind.GET:
                parts.append(f"read={_show(self.read)}")
            elif self.kind in (OpKind.CAS, OpKind.DELETE):
                parts.append(f"succeeded={self.succeeded}")
                if self.kind is OpKind.CAS and not self.succeeded and self.read is not None:
                    parts.append(f"read={_show(self.read)}")
        return " ".join(parts)


def _show(value: bytes | None) -> str:
    """Render a value compactly; ``None`` (absent) is shown as ``<absent>``."""
    if value is None:
        return "<absent>"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpHandle:
    """Opaque ticket returned by :meth:`HistoryRecorder.invoke`."""

    index: int


@dataclass(slots=True)
class _Pending:
    client: int
    kind: OpKind
    key: bytes
    invoke: float
    value: bytes | None
    expected: bytes | None


class HistoryRecorder:
    """Thread-safe recorder of a history, usable from threads and asyncio.

    The clock is injected so the deterministic simulator can record virtual
    time; real harnesses use the default monotonic clock.  Timestamps are
    taken conservatively: the invocation time is read *before* taking the
    lock and the completion time *after* taking it, so lock contention can
    only widen an operation's interval -- which can hide an anomaly on a
    boundary but never invent one.

    All methods are short and non-blocking apart from the lock, so calling
    them from an event loop is fine.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._done: dict[int, Operation] = {}
        self._next = 0

    def invoke(
        self,
        client: int,
        kind: OpKind,
        key: bytes,
        *,
        value: bytes | None = None,
        expected: bytes | None = None,
    ) -> OpHandle:
        """Record that ``client`` is about to send an operation; returns its handle."""
        now = self._clock()
        with self._lock:
            handle = OpHandle(self._next)
            self._next += 1
            self._pending[handle.index] = _Pending(client, kind, key, now, value, expected)
        return handle

    def ok(
        self, handle: OpHandle, *, read: bytes | None = None, succeeded: bool = True
    ) -> Operation:
        """Record a reply; ``read``/``succeeded`` carry its contents."""
        return self._complete(handle, Outcome.OK, read=read, succeeded=succeeded)

    def fail(self, handle: OpHandle) -> Operation:
        """Record that the operation definitely did not take effect."""
        return self._complete(handle, Outcome.FAIL)

    def unknown(self, handle: OpHandle) -> Operation:
        """Record that the client gave up without knowing the operation's fate."""
        return self._complete(handle, Outcome.UNKNOWN)

    def _complete(
        self,
        handle: OpHandle,
        outcome: Outcome,
        *,
        read: bytes | None = None,
        succeeded: bool = True,
    ) -> Operation:
        with self._lock:
            pending = self._pending.pop(handle.index, None)
            if pending is None:
                state = "completed" if handle.index in self._done else "unknown"
                raise ValueError(f"operation handle {handle.index} is {state}")
            complete = math.inf if outcome is Outcome.UNKNOWN else self._clock()
            op = Operation(
                client=pending.client,
                kind=pending.kind,
                key=pending.key,
                invoke=pending.invoke,
                complete=complete,
                outcome=outcome,
                value=pending.value,
                expected=pending.expected,
                read=read if outcome is Outcome.OK else None,
                succeeded=succeeded if outcome is Outcome.OK else True,
            )
            self._done[handle.index] = op
            return op

    def operations(self) -> list[Operation]:
        """Snapshot of the history in invocation order.

        Operations still in flight are reported as ``UNKNOWN``: at the time of
        the snapshot nobody can say whether they took effect.
        """
        with self._lock:
            items: list[tuple[int, Operation]] = list(self._done.items())
            for index, p in self._pending.items():
                op = Operation(
                    client=p.client,
                    kind=p.kind,
                    key=p.key,
                    invoke=p.invoke,
                    complete=math.inf,
                    outcome=Outcome.UNKNOWN,
                    value=p.value,
                    expected=p.expected,
                )
                items.append((index, op))
        items.sort(key=lambda item: item[0])
        return [op for _, op in items]

    def __len__(self) -> int:
        with self._lock:
            return len(self._done) + len(self._pending)


# --------------------------------------------------------------------------
# Serialisation
# --------------------------------------------------------------------------

_FORMAT = "rangekv-history"
_VERSION = 1


def _hex(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def _unhex(value: Any) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected a hex string or null, got {value!r}")
    return bytes.fromhex(value)


def to_json(ops: Iterable[Operation], *, indent: int | None = None) -> str:
    """Serialise a history; bytes become hex and an infinite completion ``null``.

    JSON has no infinity, and hex keeps arbitrary binary keys and values
    exact, so a saved history replays bit for bit.
    """
    records = []
    for op in ops:
        records.append(
            {
                "client": op.client,
                "kind": op.kind.value,
                "key": op.key.hex(),
                "invoke": op.invoke,
                "complete": None if math.isinf(op.complete) else op.complete,
                "outcome": op.outcome.value,
                "value": _hex(op.value),
                "expected": _hex(op.expected),
                "read": _hex(op.read),
                "succeeded": op.succeeded,
            }
        )
    doc = {"format": _FORMAT, "version": _VERSION, "operations": records}
    return json.dumps(doc, indent=indent, allow_nan=False)


def from_json(text: str) -> list[Operation]:
    """Parse a history written by :func:`to_json`."""
    doc = json.loads(text)
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise ValueError("not a rangekv history document")
    if doc.get("version") != _VERSION:
        raise ValueError(f"unsupported history version {doc.get('version')!r}")
    ops: list[Operation] = []
    for rec in doc["operations"]:
        complete = rec["complete"]
        key = _unhex(rec["key"])
        if key is None:
            raise ValueError("operation without a key")
        ops.append(
            Operation(
                client=int(rec["client"]),
                kind=OpKind(rec["kind"]),
                key=key,
                invoke=float(rec["invoke"]),
                complete=math.inf if complete is None else float(complete),
                outcome=Outcome(rec["outcome"]),
                value=_unhex(rec.get("value")),
                expected=_unhex(rec.get("expected")),
                read=_unhex(rec.get("read")),
                succeeded=bool(rec.get("succeeded", True)),
            )
        )
    return ops


def save_history(path: str | Path, ops: Iterable[Operation]) -> None:
    """Write a history to ``path`` (pretty-printed, for humans and diffs)."""
    Path(path).write_text(to_json(ops, indent=1) + "\n", encoding="utf-8")


def load_history(path: str | Path) -> list[Operation]:
    """Read a history written by :func:`save_history`."""
    return from_json(Path(path).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------
# Synthetic histories
# --------------------------------------------------------------------------


@dataclass(slots=True)
class _Planned:
    op: Operation
    point: float  # linearization point (or when it would have been)
    effective: bool  # whether it actually takes effect


def generate_register_history(  # noqa: C901, PLR0912, PLR0915 -- a seeded random workload generator: one loop choosing among the op kinds
    *,
    seed: int,
    n_ops: int,
    clients: int = 16,
    keys: int = 1,
    unknown_rate: float = 0.005,
    fail_rate: float = 0.005,
    mix: tuple[float, float, float, float] = (0.4, 0.3, 0.2, 0.1),
) -> list[Operation]:
    """A linearizable history produced by a simulated atomic register store.

    Each client issues operations one after another.  Every operation gets
    a random interval and a linearization point inside it; the operations
    are then executed against a plain dict in linearization-point order,
    which is by definition a valid linearization, and the results are
    written back.  ``UNKNOWN`` operations take effect with probability 1/2
    and their clients move on after a timeout; ``FAIL`` operations never
    take effect.  ``mix`` is the (get, put, cas, delete) proportion.
    Values are unique per write, so reads pin the order down, which is the
    hard case for a checker.
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
        key = rng.choice(key_names)
        kind = rng.choices(kinds, weights=mix)[0]
        value: bytes | None = None
        expected: bytes | None = None
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
        op = Operation(client, kind, key, start, complete, outcome, value, expected)
        plans.append(_Planned(op, point, effective))

    store: dict[bytes, bytes] = {}
    result: list[Operation] = []
    for plan in sorted(plans, key=lambda p: p.point):
        op = plan.op
        current = store.get(op.key)
        if plan.effective:
            if op.kind is OpKind.GET:
                op = replace(op, read=current)
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
                op = replace(op, read=None, succeeded=True)
        result.append(op)
    result.sort(key=lambda o: (o.invoke, o.client))
    return result
