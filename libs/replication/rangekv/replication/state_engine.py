"""The state-machine engine: one ordered store (RocksDB on disk) for MANY ranges.

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
`rangekv.domain.keys` (order preserving, prefix free) and `~timestamp` is
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

Durability: `commit` fsyncs according to the `FsmSyncMode`; `sync()` makes
everything committed durable. In NOSYNC mode, `sync()` MUST be called before the raft log
of any range is truncated: the raft log is the durability boundary of
unsynced applies, and truncating it past what the state engine has durably
applied would lose acknowledged writes forever after a machine crash.

Storage: the engine is written against `kv.KVStore`: RocksDB on disk
(`open`), `memory_kv.MemoryKV` in a simulation (`in_memory`); the rules above
hold on both. Snapshots are the store's point-in-time views.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from rangekv.replication.kv import Held, KVBatch, KVSnapshot, KVStore
from rangekv.replication.memory_kv import MemoryDisk, MemoryKV
from rangekv.replication.rocks import RocksKV, wal_syncs_of
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
#: An upper bound on the timestamps of the range's MVCC versions (rangekv.raftnode's
#: `RangeStateMachine`): replicated state, written by apply like the rest.
VERSION_CEILING: Final = RangeLocalKind(b"v")


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
    """The state machines of all ranges on this node, over one `KVStore`."""

    def __init__(self, kv: KVStore, sync_mode: FsmSyncMode, *, path: Path | None = None) -> None:
        self._kv = Held(kv, lambda: StateEngineClosedError(f"state engine at {path} is closed"))
        self._path = path
        self._sync_mode = sync_mode
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
        """Open the engine on RocksDB; `statistics` enables `rocksdb_wal_syncs()` (some
        overhead); `power_loss` is the test-only power-cut emulation (`rocks`)."""
        path = Path(path)
        kv = RocksKV(path, statistics=statistics, power_loss=power_loss)
        return cls(kv, sync_mode, path=path)

    @classmethod
    def in_memory(cls, disk: MemoryDisk, sync_mode: FsmSyncMode) -> StateEngine:
        """The engine on a simulated disk (`memory_kv`), with the same durability rules."""
        return cls(MemoryKV(disk), sync_mode)

    def rocksdb_wal_syncs(self) -> int:
        """RocksDB's own count of WAL fsyncs (engine opened with statistics=True)."""
        return wal_syncs_of(self._live())

    # -- lifecycle ---------------------------------------------------------

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def sync_mode(self) -> FsmSyncMode:
        return self._sync_mode

    def close(self) -> None:
        """Close the store. Unsynced NOSYNC writes are handed to the OS, not fsynced."""
        kv = self._kv.release()
        if kv is not None:
            kv.close()

    def __enter__(self) -> StateEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _live(self) -> KVStore:
        return self._kv.get()

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
        self._live().write(wb, sync=sync)
        self.commits += 1
        if sync:
            self.synced_commits += 1

    def sync(self) -> None:
        """Make every committed batch durable.

        Must precede raft log truncation in NOSYNC mode (module docstring).
        """
        self._live().sync()
        self.wal_syncs += 1

    # -- reads (live) ------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        return self._live().get(key)

    def iterate(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        return self._live().iterate(start, end)

    def snapshot(self) -> StateSnapshot:
        """A consistent point-in-time view; `close()` it promptly (it pins files)."""
        return StateSnapshot(self._live().snapshot())

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
    not exposed by rocksdict, and the store's batches are write-only).
    """

    def __init__(self, engine: StateEngine) -> None:
        self.engine = engine
        self._wb = Held(
            engine._live().new_batch(),
            lambda: BatchAlreadyCommittedError("StateBatch was already committed"),
        )
        self._overlay: dict[bytes, bytes | None] = {}
        self._sorted: list[bytes] | None = []
        self._range_tombstones: list[tuple[bytes, bytes]] = []
        self._ops = 0

    def _batch(self) -> KVBatch:
        return self._wb.get()

    def _seal(self) -> KVBatch:
        return self._wb.take()

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
    """A point-in-time view of the whole engine (the store's snapshot)."""

    def __init__(self, view: KVSnapshot) -> None:
        self._view: KVSnapshot | None = view

    def _open(self) -> KVSnapshot:
        if self._view is None:
            raise StateEngineClosedError("snapshot is closed")
        return self._view

    def close(self) -> None:
        if self._view is not None:
            self._view.close()
            self._view = None

    def __enter__(self) -> StateSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, key: bytes) -> bytes | None:
        return self._open().get(key)

    def iterate(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        return self._open().iterate(start, end)

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
