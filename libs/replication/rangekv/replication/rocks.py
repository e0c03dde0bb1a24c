"""rocksdict plumbing shared by the log and state engines, and its pitfalls.

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
  so point-in-time iteration uses one long-lived iterator.
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
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import rocksdict

__all__ = ["RocksHandle", "StatisticsDisabledError", "open_raw"]

_WAL_SYNCED: Final = re.compile(r"^rocksdb\.wal\.synced COUNT : (\d+)$", re.MULTILINE)


class StatisticsDisabledError(RuntimeError):
    """RocksDB statistics were requested from a DB opened without them."""


@dataclass(frozen=True, slots=True)
class RocksHandle:
    """An open raw-mode DB together with the Options it was opened with."""

    db: rocksdict.Rdict
    options: rocksdict.Options
    statistics: bool

    def wal_syncs(self) -> int:
        """RocksDB's own count of WAL fsyncs since open (needs statistics)."""
        if not self.statistics:
            raise StatisticsDisabledError("open the engine with statistics=True")
        text = self.options.get_statistics() or ""
        match = _WAL_SYNCED.search(text)
        if match is None:
            raise StatisticsDisabledError("rocksdb.wal.synced missing from statistics")
        return int(match.group(1))


def open_raw(path: Path, *, statistics: bool = False) -> RocksHandle:
    """Open (creating if needed) a raw-bytes RocksDB at `path`."""
    path.mkdir(parents=True, exist_ok=True)
    options = rocksdict.Options(raw_mode=True)
    options.create_if_missing(True)
    if statistics:
        options.enable_statistics()
    return RocksHandle(rocksdict.Rdict(str(path), options), options, statistics)
