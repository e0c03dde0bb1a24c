"""The state-machine engine: one RocksDB (rocksdict, raw bytes) for MANY ranges.

Everything a replica's state machine owns lives here: MVCC user data, each
range's applied index/term, descriptor and lease, and transaction records.
Raft logs and hard states live in a different engine (`log_engine`), because
they are written with a different durability policy (always fsynced).

Key layout (first byte is the span; all integers big-endian so byte order is
numeric order)::

    0x01 | range_id u64 | kind u8                 range-local metadata
         kind 'a' applied state  -> AppliedState (index, raft term of that entry)
         kind 'd' descriptor     -> opaque bytes (serialized RangeDescriptor)
         kind 'l' lease          -> opaque bytes
         kind 'g' GC threshold   -> opaque bytes (encoded Timestamp)
    0x02 | enc(anchor user key) | txn_id          transaction records
    0x03 | enc(user key) | ~timestamp             MVCC versions (global)

`enc` is the escaped, terminated user-key encoding of
`rangekv.raftnode.keys` (order preserving, prefix free) and `~timestamp` is
the bitwise-inverted 12-byte HLC timestamp, so the versions of one key are
adjacent and newest first. User data is ordered by user key for the whole
store, hence a range `[start, end)` is ONE contiguous span of 0x03 keys and
its txn records (anchored at keys inside the range) one contiguous span of
0x02 keys: splitting, snapshotting or clearing a range is a span operation
and needs no rewrite. Range-local metadata is per range id so it does not
move when the key span changes.

Atomicity and replay: applying raft entries builds ONE `StateBatch` holding
their effects AND the new applied state of the range (`set_applied_state`).
Either both reach disk or neither, so after a crash the stored applied index
says exactly which entries' effects are present, and re-applying the entries
after it is idempotent. The batch offers a read view (`StateBatch.reader`)
that sees its own pending writes over the engine, so a later command in the
same batch (e.g. a CAS) observes an earlier one.

Durability: `commit` fsyncs according to the `FsmSyncMode`; `sync()` forces
the WAL to disk. In NOSYNC mode, `sync()` MUST be called before the raft log
of any range is truncated: the raft log is the durability boundary of
unsynced applies, and truncating it past what the state engine has durably
applied would lose acknowledged writes forever after a machine crash.

Snapshots: rocksdict 0.3.29's `Snapshot` honours its snapshot only for point
gets; its `iter()/items()` silently read LIVE data (see `rocks`). A RocksDB
iterator, however, pins an implicit snapshot at creation. `StateSnapshot`
therefore holds ONE iterator and serves gets (seek) and span iteration from
it; interleaved iterations re-seek transparently.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import rocksdict

from rangekv.replication.rocks import RocksHandle, open_raw
from rangekv.replication.sync_mode import FsmSyncMode

__all__ = [
    "DATA_PREFIX",
    "LOCAL_PREFIX",
    "TXN_PREFIX",
    "AppliedState",
    "BatchAlreadyCommittedError",
    "CorruptValueError",
    "RangeLocalKind",
    "Reader",
    "SnapshotChunk",
    "StateBatch",
    "StateEngine",
    "StateEngineClosedError",
    "StateSnapshot",
    "prefix_end",
    "range_local_key",
    "range_local_span",
]

LOCAL_PREFIX: Final = b"\x01"
TXN_PREFIX: Final = b"\x02"
DATA_PREFIX: Final = b"\x03"

_U64: Final = struct.Struct(">Q")
_APPLIED: Final = struct.Struct(">BQQ")
_APPLIED_FORMAT: Final = 1


class StateEngineClosedError(RuntimeError):
    """The engine was used after `close()`."""


class BatchAlreadyCommittedError(RuntimeError):
    """A `StateBatch` was written to or committed after it was committed."""


class CorruptValueError(ValueError):
    """A stored value does not decode; names the key so it can be inspected."""


class RangeLocalKind(bytes):
    """The kind byte of a range-local key (a `bytes` of length 1)."""


APPLIED_STATE: Final = RangeLocalKind(b"a")
DESCRIPTOR: Final = RangeLocalKind(b"d")
LEASE: Final = RangeLocalKind(b"l")
GC_THRESHOLD: Final = RangeLocalKind(b"g")


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with `prefix` (None: none)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def range_local_key(range_id: int, kind: RangeLocalKind) -> bytes:
    if len(kind) != 1:
        raise ValueError(f"range-local kind must be one byte, got {kind!r}")
    return LOCAL_PREFIX + _U64.pack(range_id) + kind


def range_local_span(range_id: int) -> tuple[bytes, bytes]:
    """[start, end) of all range-local keys of `range_id`."""
    start = LOCAL_PREFIX + _U64.pack(range_id)
    end = prefix_end(start)
    assert end is not None  # the prefix starts with 0x01
    return start, end


@dataclass(frozen=True, slots=True)
class AppliedState:
    """How far a range's state machine has applied its raft log."""

    index: int
    term: int

    def encode(self) -> bytes:
        return _APPLIED.pack(_APPLIED_FORMAT, self.index, self.term)

    @classmethod
    def decode(cls, data: bytes) -> AppliedState:
        if len(data) != _APPLIED.size or data[0] != _APPLIED_FORMAT:
            raise CorruptValueError(f"not an AppliedState (format {_APPLIED_FORMAT}): {data!r}")
        _, index, term = _APPLIED.unpack(data)
        return cls(index, term)


class Reader(Protocol):
    """Read access to state-engine keys: live engine, batch view or snapshot."""

    def get(self, key: bytes) -> bytes | None: ...

    def iterate(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        """Keys in [start, end) in ascending order; `end=None` is unbounded."""
        ...


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    """One piece of a streamed snapshot; `resume_key` is None when the span is done."""

    items: tuple[tuple[bytes, bytes], ...]
    resume_key: bytes | None

    @property
    def size_bytes(self) -> int:
        return sum(len(k) + len(v) for k, v in self.items)


class StateEngine:
    """RocksDB holding the state machines of all ranges on this node."""

    def __init__(
        self, handle: RocksHandle, path: Path, sync_mode: FsmSyncMode, *, power_loss: bool = False
    ) -> None:
        self._handle = handle
        self._db: rocksdict.Rdict | None = handle.db
        self._path = path
        self._sync_mode = sync_mode
        #: TEST ONLY (RANGEKV_TEST_POWER_LOSS): see `open`.
        self.power_loss = power_loss
        self._write_opts = rocksdict.WriteOptions()
        self._write_opts.sync = sync_mode is FsmSyncMode.SYNC
        if power_loss and sync_mode is FsmSyncMode.NOSYNC:
            # Unsynced writes skip the WAL: they live in the memtable only, so a
            # kill -9 loses them, as a power cut loses what the OS had not written.
            # (a property at runtime; the bundled stub calls it a method)
            self._write_opts.disable_wal = True  # type: ignore[method-assign,assignment]
        self._synced_opts = rocksdict.WriteOptions()
        self._synced_opts.sync = True
        #: commits written, commits written with sync=True, explicit WAL syncs.
        self.commits = 0
        self.synced_commits = 0
        self.wal_syncs = 0

    @classmethod
    def open(
        cls,
        path: str | Path,
        sync_mode: FsmSyncMode,
        *,
        statistics: bool = False,
        power_loss: bool = False,
    ) -> StateEngine:
        """Open the engine; `statistics` enables `rocksdb_wal_syncs()` (some overhead).

        `power_loss` (TEST ONLY): in NOSYNC mode, make kill -9 behave like a power
        cut. An unsynced commit normally reaches the WAL in the OS page cache, which
        survives the death of the process, so no process-kill test can show what a
        power cut loses. With `power_loss`, unsynced commits bypass the WAL (memtable
        only: gone with the process), and `sync()` and synced commits first flush
        the memtable, so that exactly what was written since the last sync is lost
        -- what a real power cut may lose, and in the same order."""
        path = Path(path)
        return cls(open_raw(path, statistics=statistics), path, sync_mode, power_loss=power_loss)

    def rocksdb_wal_syncs(self) -> int:
        """RocksDB's own count of WAL fsyncs (engine opened with statistics=True)."""
        return self._handle.wal_syncs()

    # -- lifecycle ---------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def sync_mode(self) -> FsmSyncMode:
        return self._sync_mode

    def close(self) -> None:
        """Close the DB. Unsynced NOSYNC writes are flushed to the OS, not fsynced."""
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> StateEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _live(self) -> rocksdict.Rdict:
        if self._db is None:
            raise StateEngineClosedError(f"state engine at {self._path} is closed")
        return self._db

    # -- writes ------------------------------------------------------------

    def new_batch(self) -> StateBatch:
        return StateBatch(self)

    def commit(self, batch: StateBatch, *, force_sync: bool = False) -> None:
        """Write `batch` atomically, fsynced iff SYNC mode or `force_sync`.

        `force_sync` is for writes that are their own durability boundary
        rather than replayable from the raft log (e.g. ingesting a snapshot
        just before the log is reset to it).
        """
        if batch.engine is not self:
            raise ValueError("batch belongs to a different StateEngine")
        wb = batch._seal()
        sync = force_sync or self._sync_mode is FsmSyncMode.SYNC
        if sync and self.power_loss:
            self._live().flush(True)  # what came before is durable before this is
        self._live().write(wb, self._synced_opts if sync else self._write_opts)
        self.commits += 1
        if sync:
            self.synced_commits += 1

    def sync(self) -> None:
        """Fsync the WAL so every committed batch is durable.

        Must precede raft log truncation in NOSYNC mode (module docstring).
        """
        if self.power_loss:
            self._live().flush(True)
        self._live().flush_wal(True)
        self.wal_syncs += 1

    # -- reads (live) ------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        value = self._live().get(key)
        assert value is None or isinstance(value, bytes)
        return value

    def iterate(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        read_opts = rocksdict.ReadOptions()
        if end is not None:
            # NB: only the upper bound; rocksdict 0.3.29's set_iterate_lower_bound
            # actually sets the upper bound. Seeking to `start` bounds the bottom.
            read_opts.set_iterate_upper_bound(end)
        for key, value in self._live().items(from_key=start, read_opt=read_opts):
            assert isinstance(key, bytes) and isinstance(value, bytes)
            yield key, value

    def snapshot(self) -> StateSnapshot:
        """A consistent point-in-time view; `close()` it promptly (it pins files)."""
        db = self._live()
        return StateSnapshot(db.iter(), db.latest_sequence_number())

    # -- range-local metadata ---------------------------------------------

    def applied_state(self, range_id: int, reader: Reader | None = None) -> AppliedState | None:
        raw = (reader or self).get(range_local_key(range_id, APPLIED_STATE))
        return None if raw is None else AppliedState.decode(raw)

    def get_local(self, range_id: int, kind: RangeLocalKind) -> bytes | None:
        return self.get(range_local_key(range_id, kind))


class StateBatch:
    """Pending writes, committed atomically by `StateEngine.commit`.

    Mirrors every operation into an in-memory overlay so `reader()` can show
    the batch's own writes over the engine (RocksDB's WriteBatchWithIndex is
    not exposed by rocksdict).
    """

    def __init__(self, engine: StateEngine) -> None:
        self.engine = engine
        self._wb: rocksdict.WriteBatch | None = rocksdict.WriteBatch(raw_mode=True)
        self._overlay: dict[bytes, bytes | None] = {}
        self._sorted: list[bytes] | None = []
        self._range_tombstones: list[tuple[bytes, bytes]] = []
        self._ops = 0

    def _batch(self) -> rocksdict.WriteBatch:
        if self._wb is None:
            raise BatchAlreadyCommittedError("StateBatch was already committed")
        return self._wb

    def _seal(self) -> rocksdict.WriteBatch:
        wb = self._batch()
        self._wb = None
        return wb

    def _touch(self, key: bytes, value: bytes | None) -> None:
        if key not in self._overlay and self._sorted is not None:
            # Kept sorted incrementally: applying a batch of n writes reads the
            # overlay before every write, and re-sorting each time made that
            # quadratic in n (an O(n) insort is a memmove).
            bisect.insort(self._sorted, key)
        self._overlay[key] = value

    def __len__(self) -> int:
        return self._ops

    def put(self, key: bytes, value: bytes) -> None:
        self._batch().put(key, value)
        self._touch(key, value)
        self._ops += 1

    def delete(self, key: bytes) -> None:
        self._batch().delete(key)
        self._touch(key, None)
        self._ops += 1

    def delete_range(self, start: bytes, end: bytes) -> None:
        """Delete every key in [start, end) (a RocksDB range tombstone)."""
        if start >= end:
            return
        self._batch().delete_range(start, end)
        for key in [k for k in self._overlay if start <= k < end]:
            del self._overlay[key]
        self._sorted = None
        self._range_tombstones.append((start, end))
        self._ops += 1

    def set_applied_state(self, range_id: int, state: AppliedState) -> None:
        """Record the applied index/term; put it in the SAME batch as the effects."""
        self.put(range_local_key(range_id, APPLIED_STATE), state.encode())

    def put_local(self, range_id: int, kind: RangeLocalKind, value: bytes) -> None:
        self.put(range_local_key(range_id, kind), value)

    def clear_range_local(self, range_id: int) -> None:
        self.delete_range(*range_local_span(range_id))

    def reader(self) -> BatchReader:
        return BatchReader(self)

    def written_keys(self) -> list[bytes]:
        """The keys this batch puts or deletes one by one (range deletes aside)."""
        return list(self._overlay)

    def deleted_ranges(self) -> list[tuple[bytes, bytes]]:
        """The [start, end) spans this batch deletes."""
        return list(self._range_tombstones)

    # overlay queries used by BatchReader
    def _shadowed(self, key: bytes) -> bool:
        return any(s <= key < e for s, e in self._range_tombstones)

    def _overlay_keys(self) -> list[bytes]:
        if self._sorted is None:
            self._sorted = sorted(self._overlay)
        return self._sorted


class BatchReader:
    """Reads a batch's pending writes layered over the live engine."""

    def __init__(self, batch: StateBatch) -> None:
        self._batch = batch

    def get(self, key: bytes) -> bytes | None:
        b = self._batch
        if key in b._overlay:
            return b._overlay[key]
        if b._shadowed(key):
            return None
        return b.engine.get(key)

    def iterate(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        b = self._batch
        keys = b._overlay_keys()
        lo = bisect.bisect_left(keys, start)
        hi = len(keys) if end is None else bisect.bisect_left(keys, end)
        pending = keys[lo:hi]
        i = 0
        for key, value in b.engine.iterate(start, end):
            while i < len(pending) and pending[i] <= key:
                ov = b._overlay.get(pending[i])
                if ov is not None:
                    yield pending[i], ov
                i += 1
            if key in b._overlay or b._shadowed(key):
                continue
            yield key, value
        while i < len(pending):
            ov = b._overlay.get(pending[i])
            if ov is not None:
                yield pending[i], ov
            i += 1


class StateSnapshot:
    """A point-in-time view of the whole engine, pinned by one RocksDB iterator.

    All reads share the iterator's cursor; each `iterate` generator remembers
    its position and re-seeks if another read moved the cursor meanwhile.
    """

    def __init__(self, it: rocksdict.RdictIter, sequence_number: int) -> None:
        self._it: rocksdict.RdictIter | None = it
        self._owner: object | None = None
        self.sequence_number = sequence_number

    def _cursor(self) -> rocksdict.RdictIter:
        if self._it is None:
            raise StateEngineClosedError("snapshot is closed")
        return self._it

    def close(self) -> None:
        self._it = None

    def __enter__(self) -> StateSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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

    def scan_chunk(
        self, start: bytes, end: bytes | None, *, max_bytes: int, max_keys: int = 1 << 30
    ) -> SnapshotChunk:
        """Up to `max_bytes` (at least one key) of [start, end), for streaming.

        The next chunk starts at `resume_key`; all chunks read the same point
        in time however long the stream takes.
        """
        if max_bytes <= 0 or max_keys <= 0:
            raise ValueError("max_bytes and max_keys must be positive")
        items: list[tuple[bytes, bytes]] = []
        size = 0
        for key, value in self.iterate(start, end):
            if items and (size + len(key) + len(value) > max_bytes or len(items) >= max_keys):
                return SnapshotChunk(tuple(items), key)
            items.append((key, value))
            size += len(key) + len(value)
        return SnapshotChunk(tuple(items), None)
