"""Multi-version key-value data over the state engine.

Each write creates a new version of a key at an HLC timestamp; a read at
`read_ts` sees, per key, the newest version at or below `read_ts`. Deletes
write a tombstone version, so reads at older timestamps still see the old
value (multi-range scans read every range at one gateway-chosen timestamp).

Why reads take a `Reader` and writes a `StateBatch`: a raft replica applies a
run of committed entries as ONE batch together with its applied index (see
`rangekv.replication.state_engine`), so replaying after a crash is
idempotent - a version key is fully determined by (key, ts) and rewriting it
with the same value changes nothing. Commands later in the same batch must
see earlier ones (a CAS after a put), hence `StateBatch.reader()`; lease reads
use the engine or a `StateSnapshot` directly.

Storage format: see `rangekv.raftnode.keys` for keys; a value is one tag byte
(0x01 live value, 0x00 tombstone) followed by the user value.

Write-too-old checks (refusing a write below `latest_commit_ts`) belong to
command evaluation on the leaseholder, not here: apply must accept whatever
was committed to the log.

GC: versions that no read at or above the GC threshold can observe are
removed. The threshold is `now - gc_ttl` (`MvccConfig.gc_ttl_ns`); the
replica must refuse reads below the threshold it has collected up to.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from rangekv.common.hlc import ENCODED_TIMESTAMP_LEN, Timestamp
from rangekv.domain.keys import KeyDecodeError, decode_user_key
from rangekv.raftnode.keys import data_span, version_key, version_prefix
from rangekv.replication.state_engine import DATA_PREFIX, Reader, StateBatch, prefix_end

__all__ = [
    "CasResult",
    "GcStats",
    "MvccConfig",
    "VersionValueError",
    "delete",
    "evaluate_cas",
    "gc",
    "gc_threshold",
    "get",
    "latest_commit_ts",
    "live_rows",
    "put",
    "scan",
    "scan_page",
]

_LIVE: Final = b"\x01"
_TOMBSTONE: Final = b"\x00"
_INVERT: Final = bytes(range(255, -1, -1))


class VersionValueError(ValueError):
    """A stored MVCC value has no valid tag byte."""


@dataclass(frozen=True, slots=True)
class MvccConfig:
    """MVCC settings (from the node's config, never from the environment)."""

    gc_ttl_ns: int
    max_scan_limit: int = 100_000

    def __post_init__(self) -> None:
        if self.gc_ttl_ns < 0:
            raise ValueError(f"gc_ttl_ns must be >= 0, got {self.gc_ttl_ns}")
        if self.max_scan_limit <= 0:
            raise ValueError(f"max_scan_limit must be > 0, got {self.max_scan_limit}")


@dataclass(frozen=True, slots=True)
class CasResult:
    """Outcome of evaluating a compare-and-set at a read timestamp."""

    succeeded: bool
    actual: bytes | None
    actual_ts: Timestamp | None


@dataclass(frozen=True, slots=True)
class GcStats:
    keys_examined: int
    versions_removed: int


def _decode_value(stored_key: bytes, raw: bytes) -> bytes | None:
    tag = raw[:1]
    if tag == _LIVE:
        return raw[1:]
    if tag == _TOMBSTONE and len(raw) == 1:
        return None
    raise VersionValueError(f"bad MVCC value {raw!r} at {stored_key!r}")


def _suffix_ts(stored_key: bytes, prefix_len: int) -> Timestamp:
    suffix = stored_key[prefix_len:]
    if len(suffix) != ENCODED_TIMESTAMP_LEN:
        raise KeyDecodeError(f"MVCC key has a {len(suffix)}-byte version suffix: {stored_key!r}")
    return Timestamp.decode(suffix.translate(_INVERT))


# -- writes ---------------------------------------------------------------


def put(batch: StateBatch, key: bytes, value: bytes, ts: Timestamp) -> None:
    """Write `value` as the version of `key` at `ts`."""
    batch.put(version_key(key, ts), _LIVE + value)


def delete(batch: StateBatch, key: bytes, ts: Timestamp) -> None:
    """Write a tombstone: reads at or above `ts` see no value."""
    batch.put(version_key(key, ts), _TOMBSTONE)


# -- reads ----------------------------------------------------------------


def get(reader: Reader, key: bytes, read_ts: Timestamp) -> tuple[bytes | None, Timestamp | None]:
    """(value, version ts) of the newest version at or below `read_ts`.

    A tombstone yields (None, its ts); no version at all yields (None, None).
    """
    prefix = version_prefix(key)
    for stored, raw in reader.iterate(version_key(key, read_ts), prefix_end(prefix)):
        return _decode_value(stored, raw), _suffix_ts(stored, len(prefix))
    return None, None


def latest_commit_ts(reader: Reader, key: bytes) -> Timestamp | None:
    """Timestamp of the newest version of `key` (tombstones included)."""
    _, ts = get(reader, key, Timestamp.MAX)
    return ts


def scan(
    reader: Reader, start: bytes, end: bytes, read_ts: Timestamp, limit: int
) -> list[tuple[bytes, bytes]]:
    """Live (key, value) pairs in [start, end) at `read_ts`, ascending, at most `limit`.

    `end == b""` means unbounded.
    """
    if limit <= 0:
        raise ValueError(f"limit must be > 0, got {limit}")
    return list(itertools.islice(live_rows(reader, start, end, read_ts), limit))


def scan_page(
    reader: Reader, start: bytes, end: bytes, read_ts: Timestamp, limit: int, max_bytes: int
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """One page of a scan: at most `limit` rows and about `max_bytes` of keys and
    values (a page holds at least one row, and stops after the row that reaches
    the budget). Returns the rows and the key to resume at (b"": nothing is left)."""
    if limit <= 0 or max_bytes <= 0:
        raise ValueError(f"limit and max_bytes must be > 0, got {limit} and {max_bytes}")
    rows: list[tuple[bytes, bytes]] = []
    size = 0
    it = live_rows(reader, start, end, read_ts)
    for key, value in it:
        if len(rows) >= limit or size >= max_bytes:
            return rows, rows[-1][0] + b"\x00"
        rows.append((key, value))
        size += len(key) + len(value)
    return rows, b""


def live_rows(
    reader: Reader, start: bytes, end: bytes, read_ts: Timestamp
) -> Iterator[tuple[bytes, bytes]]:
    """Live (key, value) pairs in [start, end) at `read_ts`, ascending, lazily.

    Every version is visited (no skip-seek), which GC keeps cheap by bounding
    the number of versions per key.
    """
    lo, hi = data_span(start, end)
    cur_prefix = b""
    cur_key = b""
    resolved = True
    for stored, raw in reader.iterate(lo, hi):
        if not (cur_prefix and stored.startswith(cur_prefix)):
            cur_key, end_pos = decode_user_key(stored, len(DATA_PREFIX))
            cur_prefix = stored[:end_pos]
            resolved = False
        elif resolved:
            continue
        if _suffix_ts(stored, len(cur_prefix)) > read_ts:
            continue
        resolved = True
        value = _decode_value(stored, raw)
        if value is not None:
            yield cur_key, value


def evaluate_cas(
    reader: Reader, key: bytes, expected: bytes | None, read_ts: Timestamp
) -> CasResult:
    """Does the value of `key` at `read_ts` equal `expected` (None = absent)?"""
    actual, actual_ts = get(reader, key, read_ts)
    return CasResult(actual == expected, actual, actual_ts)


# -- garbage collection -----------------------------------------------------


def gc_threshold(now: Timestamp, config: MvccConfig) -> Timestamp:
    """Versions shadowed at or before this timestamp may be collected."""
    return Timestamp(max(0, now.wall_time - config.gc_ttl_ns), 0)


def gc(
    reader: Reader,
    batch: StateBatch,
    before_ts: Timestamp,
    start: bytes = b"",
    end: bytes = b"",
) -> GcStats:
    """Queue deletion of versions invisible to every read at or above `before_ts`.

    Per key, the newest version at or below `before_ts` is what those reads
    see: everything older goes, and that version goes too if it is a
    tombstone (a missing key reads the same as a deleted one). Read from the
    engine or a snapshot, not from `batch.reader()`.
    """
    lo, hi = data_span(start, end)
    keys = removed = 0
    cur_prefix = b""
    found = False  # already passed this key's newest version <= before_ts
    for stored, raw in reader.iterate(lo, hi):
        if not (cur_prefix and stored.startswith(cur_prefix)):
            _, end_pos = decode_user_key(stored, len(DATA_PREFIX))
            cur_prefix = stored[:end_pos]
            found = False
            keys += 1
        if found:
            batch.delete(stored)
            removed += 1
            continue
        if _suffix_ts(stored, len(cur_prefix)) <= before_ts:
            found = True
            if _decode_value(stored, raw) is None:
                batch.delete(stored)
                removed += 1
    return GcStats(keys, removed)
