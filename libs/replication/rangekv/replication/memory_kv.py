"""The in-memory twin of `RocksKV`: an ordered map that keeps RocksDB's durability rules.

A `MemoryDisk` is what survives a process: the data, and the part of it that
is durable. A `MemoryKV` is an open handle on a disk (an engine opens one, a
restarted process opens another on the same disk). What each event loses:

* the death of the process (`close` without a sync, or simply dropping the
  handle): nothing -- every write reached the "page cache", as on disk;
* `MemoryDisk.power_cut()`: every write since the last synced write or
  `sync()`, exactly what a power cut may lose on disk (a synced write makes
  every write before it durable, as a WAL fsync does).

Snapshots are copy-on-write: taking one costs nothing, and the first write
after it copies the map once.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["MemoryBatch", "MemoryDisk", "MemoryKV", "MemorySnapshot"]

_Op = tuple[str, bytes, bytes]  # ("put", key, value) | ("del", key, b"") | ("range", start, end)


class MemoryBatch:
    """Writes for one atomic `MemoryKV.write` (the `KVBatch` twin)."""

    __slots__ = ("ops",)

    def __init__(self) -> None:
        self.ops: list[_Op] = []

    def put(self, key: bytes, value: bytes) -> None:
        self.ops.append(("put", bytes(key), bytes(value)))

    def delete(self, key: bytes) -> None:
        self.ops.append(("del", bytes(key), b""))

    def delete_range(self, start: bytes, end: bytes) -> None:
        self.ops.append(("range", bytes(start), bytes(end)))


@dataclass
class _Table:
    """A sorted map: `keys` in order, `values` by key."""

    keys: list[bytes] = field(default_factory=list)
    values: dict[bytes, bytes] = field(default_factory=dict)

    def copy(self) -> _Table:
        return _Table(list(self.keys), dict(self.values))

    def apply(self, ops: list[_Op]) -> None:
        for kind, a, b in ops:
            if kind == "put":
                if a not in self.values:
                    bisect.insort(self.keys, a)
                self.values[a] = b
            elif kind == "del":
                if self.values.pop(a, None) is not None:
                    del self.keys[bisect.bisect_left(self.keys, a)]
            elif a < b:
                lo, hi = bisect.bisect_left(self.keys, a), bisect.bisect_left(self.keys, b)
                for key in self.keys[lo:hi]:
                    del self.values[key]
                del self.keys[lo:hi]

    def iterate(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        i = bisect.bisect_left(self.keys, start)
        while i < len(self.keys):
            key = self.keys[i]
            if end is not None and key >= end:
                return
            yield key, self.values[key]
            i += 1


class MemoryDisk:
    """What a simulated machine keeps across process restarts (see the module docstring)."""

    def __init__(self) -> None:
        self._live = _Table()
        self._durable = _Table()
        #: Batches written since the last sync, in order (what a power cut loses).
        self._unsynced: list[list[_Op]] = []
        #: A snapshot shares `_live` until the next write copies it.
        self._shared = False
        #: Engines commit from worker threads while the event loop reads.
        self._lock = threading.Lock()
        self.writes = 0
        self.synced_writes = 0
        self.power_cuts = 0

    def _write(self, ops: list[_Op], sync: bool) -> None:
        with self._lock:
            if self._shared:
                self._live = self._live.copy()
                self._shared = False
            self._live.apply(ops)
            self.writes += 1
            self._unsynced.append(ops)
            if sync:
                self._sync()

    def _snapshot(self) -> _Table:
        with self._lock:
            self._shared = True
            return self._live

    def sync(self) -> None:
        with self._lock:
            self._sync()

    def _sync(self) -> None:
        for ops in self._unsynced:
            self._durable.apply(ops)
        self._unsynced.clear()
        self.synced_writes += 1

    def power_cut(self) -> int:
        """Lose every write since the last sync; returns how many batches were lost."""
        with self._lock:
            lost = len(self._unsynced)
            self._unsynced.clear()
            self._live = self._durable.copy()
            self._shared = False
            self.power_cuts += 1
            return lost

    @property
    def unsynced_writes(self) -> int:
        return len(self._unsynced)

    def open(self) -> MemoryKV:
        return MemoryKV(self)


class MemoryKV:
    """An open handle on a `MemoryDisk` (the `KVStore` twin of `RocksKV`)."""

    def __init__(self, disk: MemoryDisk) -> None:
        self.disk: MemoryDisk | None = disk

    def _disk(self) -> MemoryDisk:
        if self.disk is None:
            raise RuntimeError("memory store is closed")
        return self.disk

    def get(self, key: bytes) -> bytes | None:
        return self._disk()._live.values.get(key)

    def iterate(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        # Over a snapshot of the table: a write while the caller iterates must not
        # shift the positions under it (RocksDB's iterators pin their view too).
        yield from self.snapshot().iterate(start, end)

    def last_at_or_before(self, key: bytes) -> tuple[bytes, bytes] | None:
        table = self._disk()._snapshot()
        i = bisect.bisect_right(table.keys, key)
        if i == 0:
            return None
        found = table.keys[i - 1]
        return found, table.values[found]

    def new_batch(self) -> MemoryBatch:
        return MemoryBatch()

    def write(self, batch: object, *, sync: bool) -> None:
        assert isinstance(batch, MemoryBatch)
        self._disk()._write(batch.ops, sync)
        batch.ops = []

    def sync(self) -> None:
        self._disk().sync()

    def snapshot(self) -> MemorySnapshot:
        return MemorySnapshot(self._disk()._snapshot())

    def close(self) -> None:
        self.disk = None


class MemorySnapshot:
    """A point-in-time view of a `MemoryDisk` (the twin of `RocksSnapshot`)."""

    def __init__(self, table: _Table) -> None:
        self._table: _Table | None = table

    def _view(self) -> _Table:
        if self._table is None:
            raise RuntimeError("snapshot is closed")
        return self._table

    def get(self, key: bytes) -> bytes | None:
        return self._view().values.get(key)

    def iterate(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        yield from self._view().iterate(start, end)

    def close(self) -> None:
        self._table = None
