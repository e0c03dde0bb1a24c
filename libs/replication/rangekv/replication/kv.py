"""The ordered key-value store under both engines: the storage seam, and its rules.

`RaftLogEngine` and `StateEngine` are written once, against `KVStore`. On disk
the store is RocksDB (`rocks.RocksKV`); in memory it is `memory_kv.MemoryKV`,
its twin, which keeps RocksDB's durability rules so that the real engines,
scheduler and state machines run unchanged in a deterministic simulation.

The rules both keep:

* a write is atomic (all of a batch or none of it, also across a crash);
* `write(batch, sync=True)` returns once the batch AND every write before it is
  durable (a synced write-ahead log write flushes what precedes it);
* `write(batch, sync=False)` survives the death of the process (it is in the
  OS's page cache) but may be lost by a power cut, until a later synced write
  or `sync()`;
* a snapshot is a point-in-time view: writes after it are invisible to it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar

__all__ = ["Held", "KVBatch", "KVSnapshot", "KVStore"]

T = TypeVar("T")


class KVBatch(Protocol):
    """Writes collected for one atomic `KVStore.write`."""

    def put(self, key: bytes, value: bytes) -> None: ...

    def delete(self, key: bytes) -> None: ...

    def delete_range(self, start: bytes, end: bytes) -> None:
        """Delete every key in [start, end)."""
        ...


class KVSnapshot(Protocol):
    """A point-in-time view; `close` it promptly (on disk it pins files)."""

    def get(self, key: bytes) -> bytes | None: ...

    def iterate(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        """Keys in [start, end) ascending; `end=None` is unbounded. Iterations
        may interleave with each other and with `get`."""
        ...

    def close(self) -> None: ...


class KVStore(Protocol):
    """An ordered map of bytes with atomic batches, durability and snapshots."""

    def get(self, key: bytes) -> bytes | None: ...

    def iterate(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        """Live keys in [start, end) ascending; `end=None` is unbounded."""
        ...

    def last_at_or_before(self, key: bytes) -> tuple[bytes, bytes] | None:
        """The greatest stored key <= `key`, with its value (None: there is none)."""
        ...

    def new_batch(self) -> KVBatch: ...

    def write(self, batch: KVBatch, *, sync: bool) -> None:
        """Apply `batch` atomically; durable on return iff `sync` (see the module rules)."""
        ...

    def sync(self) -> None:
        """Make every write so far durable."""
        ...

    def snapshot(self) -> KVSnapshot: ...

    def close(self) -> None: ...


class Held(Generic[T]):
    """Something an engine uses until it lets it go: its store until it closes, a
    batch until its one write. `get` after `release` raises `gone()` (a closed
    store or a consumed batch is a bug to report, not a value to pass on)."""

    __slots__ = ("_gone", "_value")

    def __init__(self, value: T, gone: Callable[[], Exception]) -> None:
        self._value: T | None = value
        self._gone = gone

    def get(self) -> T:
        if self._value is None:
            raise self._gone()
        return self._value

    def release(self) -> T | None:
        """Let it go; returns it (None when it was let go already)."""
        value, self._value = self._value, None
        return value

    def take(self) -> T:
        """`get` it one last time and let it go (a batch handed to its write)."""
        value = self.get()
        self._value = None
        return value
