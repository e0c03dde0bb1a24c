"""RocksDB as the engines' `KVStore`, and the rocksdict pitfalls it works around.

Both engines open RocksDB the same way: raw bytes mode (no pickling, no type
tag in front of keys), created if missing, optionally with statistics so
tests and benchmarks can read RocksDB's own count of WAL fsyncs instead of
trusting ours.

Behaviour of rocksdict 0.3.29 that this code works around (each was checked
against the installed binary):

- `Snapshot.iter()/items()/keys()` IGNORE the snapshot: the binding sets the
  snapshot on one native ReadOptions and then builds the iterator from a
  fresh copy. Only `Snapshot[key]` reads the snapshot. A plain
  `Rdict.iter()` iterator, however, pins an implicit snapshot when created,
  so a point-in-time view (`RocksSnapshot`) uses one long-lived iterator.
- `ReadOptions.set_iterate_lower_bound()` stores the UPPER bound. Only
  `set_iterate_upper_bound()` is used; lower bounds come from `seek`.
- `ReadOptions()` takes no `raw_mode` argument although its docstring says
  it must match the DB's; bytes bounds work as-is on a raw-mode DB.
- A `WriteBatch` is consumed by `Rdict.write()`; any later use, even
  `len()`, raises a bare `Exception`.
- `Snapshot[missing]` raises a bare `Exception("key not found")`, while
  `Rdict[missing]` raises `KeyError`; we use `Rdict.get` (None when absent).
- `WriteOptions.sync` is a property (`opts.sync = True`), not a setter
  method; without it a write only reaches the OS page cache, which survives
  kill -9 of the process but not a machine crash.
- `Rdict.write()` with `sync` HOLDS the GIL through the fsync: a worker thread
  doing it stops the process's event loop for the whole fsync (measured:
  `benchmarks/fsync_loop_stall.py`). `Rdict.flush_wal(True)` releases it while
  it syncs, and `sync()` uses it. Synced writes were tried as an unsynced write
  plus `flush_wal(True)` (as durable: RocksDB counts it in
  `rocksdb.wal.synced`) and reverted: throughput moved within the noise, and
  the in-process cluster's tick counts stopped being deterministic
  (`tests/integration/test_split_leader.py`: 4 failures in 12 runs against 0
  in 12), a sign that the extra concurrency changes orderings the tests rely
  on; that is to be understood before the change is made again.

Test-only power-loss emulation (`power_loss=True`; RANGEKV_TEST_POWER_LOSS):
an unsynced write normally reaches the WAL in the OS page cache, which survives
the death of the process, so no process-kill test can show what a power cut
loses. With it, unsynced writes bypass the WAL (memtable only: gone with the
process), and synced writes and `sync()` first flush the memtable, so that
exactly what was written since the last sync is lost -- what a real power cut
may lose, and in the same order.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final, cast

import rocksdict

__all__ = [
    "CLOSED_ERRORS",
    "KVClosedError",
    "RocksKV",
    "RocksSnapshot",
    "StatisticsDisabledError",
    "wal_syncs_of",
]

_WAL_SYNCED: Final = re.compile(r"^rocksdb\.wal\.synced COUNT : (\d+)$", re.MULTILINE)


class StatisticsDisabledError(RuntimeError):
    """RocksDB statistics were requested from a DB opened without them."""


class KVClosedError(RuntimeError):
    """A store or snapshot was used after `close()`."""


#: What using a closed store raises: ours, or rocksdict's own when another thread
#: closed the DB between our check and the call (the one list of them).
CLOSED_ERRORS: Final = (KVClosedError, rocksdict.DbClosedError)


class RocksKV:
    """A raw-bytes RocksDB at `path` (created if needed)."""

    def __init__(self, path: Path, *, statistics: bool = False, power_loss: bool = False) -> None:
        path.mkdir(parents=True, exist_ok=True)
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        if statistics:
            options.enable_statistics()
        self.path = path
        self._options = options
        self._statistics = statistics
        self._db: rocksdict.Rdict | None = rocksdict.Rdict(str(path), options)
        #: TEST ONLY: see the module docstring.
        self.power_loss = power_loss
        self._synced = rocksdict.WriteOptions()
        self._synced.sync = True
        self._unsynced = rocksdict.WriteOptions()
        self._unsynced.sync = False
        if power_loss:
            # (a property at runtime; the bundled stub calls it a method)
            self._unsynced.disable_wal = True  # type: ignore[method-assign,assignment]
        self._idle = threading.Condition()
        self._writers = 0  # writes and syncs under way (`_writing`)

    def _live(self) -> rocksdict.Rdict:
        if self._db is None:
            raise KVClosedError(f"RocksDB at {self.path} is closed")
        return self._db

    def wal_syncs(self) -> int:
        """RocksDB's own count of WAL fsyncs since open (needs statistics)."""
        if not self._statistics:
            raise StatisticsDisabledError("open the engine with statistics=True")
        text = self._options.get_statistics() or ""
        match = _WAL_SYNCED.search(text)
        if match is None:
            raise StatisticsDisabledError("rocksdb.wal.synced missing from statistics")
        return int(match.group(1))

    # --- reads ------------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        value = self._live().get(key)
        assert value is None or isinstance(value, bytes)
        return value

    def iterate(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        read_opts = rocksdict.ReadOptions()
        if end is not None:
            # Only the upper bound (see the module docstring); `from_key` bounds the bottom.
            read_opts.set_iterate_upper_bound(end)
        for key, value in self._live().items(from_key=start, read_opt=read_opts):
            assert isinstance(key, bytes) and isinstance(value, bytes)
            yield key, value

    def last_at_or_before(self, key: bytes) -> tuple[bytes, bytes] | None:
        for found, value in self._live().items(backwards=True, from_key=key):
            assert isinstance(found, bytes) and isinstance(value, bytes)
            return found, value
        return None

    def snapshot(self) -> RocksSnapshot:
        return RocksSnapshot(self._live().iter())

    # --- writes -----------------------------------------------------------------------

    def new_batch(self) -> rocksdict.WriteBatch:
        return rocksdict.WriteBatch(raw_mode=True)

    @contextmanager
    def _writing(self) -> Iterator[rocksdict.Rdict]:
        """The open DB, which `close` waits for until the sync (or the power-loss
        mode's synced write) is done: a `flush_wal` or a memtable `flush` releases
        the GIL with the DB borrowed, and closing it meanwhile would fail
        ("Already borrowed") and leave it open."""
        with self._idle:
            db = self._live()
            self._writers += 1
        try:
            yield db
        finally:
            with self._idle:
                self._writers -= 1
                if not self._writers:
                    self._idle.notify_all()

    def write(self, batch: object, *, sync: bool) -> None:
        wb = cast(rocksdict.WriteBatch, batch)
        if not (sync and self.power_loss):
            # A `write`, synced or not, holds the GIL throughout (measured; module
            # docstring), so `close` cannot run meanwhile: no `_writing` on the
            # paths every apply and every raft-log write take.
            self._live().write(wb, self._synced if sync else self._unsynced)
            return
        with self._writing() as db:
            db.flush(True)  # what came before is durable before this is
            db.write(wb, self._synced)

    def sync(self) -> None:
        with self._writing() as db:
            if self.power_loss:
                db.flush(True)
            db.flush_wal(True)

    def close(self) -> None:
        """Close the DB once no write or sync is under way (they may be running in
        worker threads). Unsynced writes are handed to the OS, not fsynced."""
        with self._idle:
            while self._writers:
                self._idle.wait()
            if self._db is not None:
                self._db.close()
                self._db = None


class RocksSnapshot:
    """A point-in-time view of the whole DB, pinned by one RocksDB iterator.

    All reads share the iterator's cursor; each `iterate` generator remembers
    its position and re-seeks if another read moved the cursor meanwhile.
    """

    def __init__(self, it: rocksdict.RdictIter) -> None:
        self._it: rocksdict.RdictIter | None = it
        self._owner: object | None = None

    def _cursor(self) -> rocksdict.RdictIter:
        if self._it is None:
            raise KVClosedError("snapshot is closed")
        return self._it

    def close(self) -> None:
        self._it = None

    def get(self, key: bytes) -> bytes | None:
        it = self._cursor()
        self._owner = None
        it.seek(key)
        if it.valid() and it.key() == key:
            value = it.value()
            assert isinstance(value, bytes)
            return value
        return None

    def iterate(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        token = object()
        it = self._cursor()
        self._owner = token
        it.seek(start)
        last: bytes | None = None
        while True:
            it = self._cursor()
            if self._owner is not token:
                # someone else moved the cursor: go back to where we were
                assert last is not None
                self._owner = token
                it.seek(last)
                if it.valid() and it.key() == last:
                    it.next()
            if not it.valid():
                return
            key = it.key()
            assert isinstance(key, bytes)
            if end is not None and key >= end:
                return
            value = it.value()
            assert isinstance(value, bytes)
            last = key
            yield key, value
            if self._owner is token:
                self._cursor().next()


def wal_syncs_of(kv: object) -> int:
    """RocksDB's own count of WAL fsyncs under an engine (its store opened with
    statistics); a store that is not RocksDB has none to count."""
    if not isinstance(kv, RocksKV):
        raise StatisticsDisabledError("only a RocksDB engine counts WAL syncs")
    return kv.wal_syncs()
