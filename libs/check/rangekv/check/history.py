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

A ``SCAN`` is the one operation that spans keys: it observed every key of
its span at one instant, and the checker holds it to exactly that (see
:class:`Operation`).  Seeded generators of histories that are linearizable
by construction live in :mod:`rangekv.check.generate`.
"""

from __future__ import annotations

import enum
import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "HistoryRecorder",
    "OpHandle",
    "OpKind",
    "Operation",
    "Outcome",
    "Row",
    "from_json",
    "load_history",
    "save_history",
    "to_json",
]


class OpKind(enum.Enum):
    """What a client asked the store to do: one key, or (``SCAN``) a span of keys."""

    GET = "GET"
    PUT = "PUT"
    DELETE = "DELETE"
    CAS = "CAS"
    SCAN = "SCAN"


Row = tuple[bytes, bytes]
"""One live key and its value, as a scan returned it."""


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
    """One client operation on one key (or a span of keys), with its real-time interval.

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
    * ``SCAN``: ``key`` is the first key of the span (inclusive) and ``end``
      its exclusive end; ``end=None`` means unbounded (to the end of the
      keyspace -- what the wire's empty ``end_key`` means), otherwise ``end``
      must be greater than ``key``.  ``rows`` (OK only) are the live
      key/value pairs the scan returned, in strictly increasing key order,
      every key inside the span.  An OK scan asserts that at ONE instant
      inside ``[invoke, complete]`` every key of the span listed in ``rows``
      held that value and every other key of the span was absent.  A scan
      that FAILED or is UNKNOWN constrains nothing.  A scan cut short by a
      limit (it returned ``limit`` rows) saw nothing after its last row, so
      its caller records ``end = last returned key + b"\\x00"`` (the
      smallest key after it); a limited scan that returned fewer rows than
      the limit saw its whole span and keeps the requested ``end``.
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
    end: bytes | None = None
    rows: tuple[Row, ...] = ()

    def covers(self, key: bytes) -> bool:
        """Whether this operation touches ``key``: a SCAN every key of its
        span ``[self.key, self.end)``, any other operation its one key."""
        if self.kind is not OpKind.SCAN:
            return key == self.key
        return self.key <= key and (self.end is None or key < self.end)

    def describe(self) -> str:
        """A one-line human-readable rendering used in checker explanations."""
        parts = [f"client {self.client} {self.kind.value}"]
        if self.kind is OpKind.SCAN:
            parts.append(f"[{_show_key(self.key)}, {_show_end(self.end)})")
        else:
            parts.append(_show_key(self.key))
        if self.kind is OpKind.PUT:
            parts.append(f"{_show(self.value)}")
        elif self.kind is OpKind.CAS:
            parts.append(f"{_show(self.expected)}->{_show(self.value)}")
        end = "inf" if math.isinf(self.complete) else f"{self.complete:.6g}"
        parts.append(f"[{self.invoke:.6g}, {end}] {self.outcome.value}")
        if self.outcome is Outcome.OK:
            if self.kind is OpKind.GET:
                parts.append(f"read={_show(self.read)}")
            elif self.kind is OpKind.SCAN:
                parts.append(f"rows={_show_rows(self.rows)}")
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


def _show_key(key: bytes) -> str:
    text = repr(key)
    return text if len(text) <= 40 else text[:37] + "..."


def _show_end(end: bytes | None) -> str:
    return "<end of keyspace>" if end is None else _show_key(end)


def _show_rows(rows: Sequence[Row], show: int = 6) -> str:
    """``{k: v, ...}``, at most ``show`` rows, then how many more there are."""
    items = [f"{_show_key(k)}: {_show(v)}" for k, v in rows[:show]]
    if len(rows) > show:
        items.append(f"... {len(rows) - show} more")
    return "{" + ", ".join(items) + "}"


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
    end: bytes | None


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

    A scan is recorded like any other operation:
    ``invoke(client, OpKind.SCAN, start, end=end)`` (``end=None``:
    unbounded), then ``ok(handle, rows=..., truncated=...)`` with the rows
    it returned; ``truncated=True`` says it stopped at its limit, and the
    recorded span then ends just after its last row (see :class:`Operation`).
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
        end: bytes | None = None,
    ) -> OpHandle:
        """Record that ``client`` is about to send an operation; returns its handle.

        ``end`` is a SCAN's exclusive end (``None``: unbounded).
        """
        now = self._clock()
        with self._lock:
            handle = OpHandle(self._next)
            self._next += 1
            self._pending[handle.index] = _Pending(client, kind, key, now, value, expected, end)
        return handle

    def ok(
        self,
        handle: OpHandle,
        *,
        read: bytes | None = None,
        succeeded: bool = True,
        rows: Iterable[Row] = (),
        truncated: bool = False,
    ) -> Operation:
        """Record a reply; ``read``/``succeeded``/``rows`` carry its contents.

        ``truncated``: a SCAN returned as many rows as its limit allowed, so it
        saw nothing past its last row.
        """
        return self._complete(
            handle, Outcome.OK, read=read, succeeded=succeeded, rows=rows, truncated=truncated
        )

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
        rows: Iterable[Row] = (),
        truncated: bool = False,
    ) -> Operation:
        got_rows = tuple((bytes(k), bytes(v)) for k, v in rows)
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
                end=got_rows[-1][0] + b"\x00" if truncated and got_rows else pending.end,
                rows=got_rows if outcome is Outcome.OK else (),
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
                    end=p.end,
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
_VERSION = 2
"""Version 2 added scans (``end`` and ``rows``, written for SCAN records
only); version 1 documents are still read (they hold no scans)."""
_READABLE = (1, 2)


def _hex(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def _unhex(value: Any) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected a hex string or null, got {value!r}")
    return bytes.fromhex(value)


def _unhex_rows(value: Any) -> tuple[Row, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError(f"expected a list of [key, value] rows, got {value!r}")
    rows: list[Row] = []
    for item in value:
        if not (isinstance(item, list) and len(item) == 2):
            raise ValueError(f"expected a [key, value] row, got {item!r}")
        k, v = _unhex(item[0]), _unhex(item[1])
        if k is None or v is None:
            raise ValueError(f"a row needs a key and a value, got {item!r}")
        rows.append((k, v))
    return tuple(rows)


def to_json(ops: Iterable[Operation], *, indent: int | None = None) -> str:
    """Serialise a history; bytes become hex and an infinite completion ``null``.

    JSON has no infinity, and hex keeps arbitrary binary keys and values
    exact, so a saved history replays bit for bit.
    """
    records = []
    for op in ops:
        record: dict[str, Any] = {
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
        if op.kind is OpKind.SCAN:
            record["end"] = _hex(op.end)
            record["rows"] = [[k.hex(), v.hex()] for k, v in op.rows]
        records.append(record)
    doc = {"format": _FORMAT, "version": _VERSION, "operations": records}
    return json.dumps(doc, indent=indent, allow_nan=False)


def from_json(text: str) -> list[Operation]:
    """Parse a history written by :func:`to_json` (this version or an older one)."""
    doc = json.loads(text)
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise ValueError("not a rangekv history document")
    if doc.get("version") not in _READABLE:
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
                end=_unhex(rec.get("end")),
                rows=_unhex_rows(rec.get("rows")),
            )
        )
    return ops


def save_history(path: str | Path, ops: Iterable[Operation]) -> None:
    """Write a history to ``path`` (pretty-printed, for humans and diffs)."""
    Path(path).write_text(to_json(ops, indent=1) + "\n", encoding="utf-8")


def load_history(path: str | Path) -> list[Operation]:
    """Read a history written by :func:`save_history`."""
    return from_json(Path(path).read_text(encoding="utf-8"))
