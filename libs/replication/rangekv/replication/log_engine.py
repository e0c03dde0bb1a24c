"""The raft-log engine: one ordered store (RocksDB on disk) holding the logs and
hard states of MANY groups.

A node hosts hundreds of raft groups (one per range replica). Giving each its
own file would cost one fsync per group per Ready round; here all groups share
one RocksDB, and the scheduler collects the Ready output of every group into
ONE `LogBatch` that `commit` writes with ONE synced RocksDB write (group
commit): the fsync count per round is 1, whatever the number of groups and
entries. `synced_writes` counts them so benchmarks can report fsyncs/entry.

Every write that raft relies on is synced: entries and the HardState (vote,
term) must be durable before any message that depends on them leaves the
node. This engine is also the durability boundary of the state engine in
`nosync` mode (see `sync_mode`), so it never runs unsynced for those writes.

The key layout and value encodings are `log_format`'s. `truncated` is the (index, term) of the entry just before the first retained
one: the last snapshot or compaction point, MemoryStorage's dummy entry.

Snapshots: only the metadata is stored here. `GroupStorage.snapshot()`
returns it with empty `data`; the snapshot's content is the range's span of
the state engine, streamed from a `StateSnapshot` by the transport.

Each group's storage keeps its first/last index, last term, truncated state,
snapshot metadata and HardState in memory (loaded lazily on first use), so
`term(last_index())`, `first_index()` etc. never touch the disk.

Entries themselves are read from the store, even those just written (apply
reads each committed entry back). Measured, and left so: an in-memory tail of
each group's latest entries that served every such read (none reached the
store) changed neither put throughput nor CPU per put, at 1 client on one
range or 64 clients over 64 ranges. Entries that recent are in RocksDB's
memtable, and the read is a small part of a round.

Storage: written against `kv.KVStore`: RocksDB on disk (`open`),
`memory_kv.MemoryKV` in a simulation (`in_memory`).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rangekv.raft import (
    Compacted,
    ConfState,
    Entry,
    HardState,
    InvariantViolation,
    Snapshot,
    SnapshotMetadata,
    SnapshotOutOfDate,
    Unavailable,
    with_commit_floor,
)
from rangekv.replication import log_format as F
from rangekv.replication.kv import Held, KVBatch, KVStore
from rangekv.replication.log_format import LogCorruptionError
from rangekv.replication.memory_kv import MemoryDisk, MemoryKV
from rangekv.replication.rocks import RocksKV, wal_syncs_of

__all__ = [
    "ConcurrentBatchError",
    "GroupStorage",
    "LogBatch",
    "LogCorruptionError",
    "LogEngineClosedError",
    "RaftLogEngine",
]


class LogEngineClosedError(RuntimeError):
    """The engine was used after `close()`."""


class ConcurrentBatchError(RuntimeError):
    """Another batch touching the same group was committed after this one began."""


# -- per-group cached state -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class _GroupState:
    """What the engine knows about a group without reading the disk."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: SnapshotMetadata = field(default_factory=SnapshotMetadata)
    truncated_index: int = 0
    truncated_term: int = 0
    last_index: int = 0
    last_term: int = 0
    # One version per aspect a LogBatch can depend on, bumped when a commit
    # writes it (and all by destroy). Compaction bumps none: a batch built
    # before a compaction can still be committed. A batch is refused only if
    # an aspect it read or wrote changed since it began (ConcurrentBatchError),
    # so the scheduler's append/hard-state batch never conflicts with the
    # truncation path's create_snapshot.
    log_version: int = 0
    hs_version: int = 0
    snap_version: int = 0

    @property
    def first_index(self) -> int:
        return self.truncated_index + 1

    def after_round(
        self,
        hard_state: HardState,
        last_index: int,
        last_term: int,
        log_version: int,
        hs_version: int,
    ) -> _GroupState:
        """This state with the fields a raft round changes (the log's end, the hard
        state, their versions) replaced, the rest kept. Built directly: it runs for
        every group in every round, and `dataclasses.replace` costs twice as much."""
        return _GroupState(
            hard_state=hard_state,
            snapshot=self.snapshot,
            truncated_index=self.truncated_index,
            truncated_term=self.truncated_term,
            last_index=last_index,
            last_term=last_term,
            log_version=log_version,
            hs_version=hs_version,
            snap_version=self.snap_version,
        )


class RaftLogEngine:
    """Raft logs for all groups on a node, over one `KVStore`, with group commit."""

    def __init__(self, kv: KVStore, *, path: Path | None = None) -> None:
        self._kv = Held(kv, lambda: LogEngineClosedError(f"raft log engine at {path} is closed"))
        self._path = path
        self._groups: dict[int, _GroupState] = {}
        self._lock = threading.Lock()
        #: synced writes (= fsyncs) issued, batches committed, entries written.
        self.synced_writes = 0
        self.batches_committed = 0
        self.entries_written = 0

    @classmethod
    def open(cls, path: str | Path, *, statistics: bool = False) -> RaftLogEngine:
        """Open the engine on RocksDB; `statistics` enables `rocksdb_wal_syncs()` (some overhead)."""
        path = Path(path)
        return cls(RocksKV(path, statistics=statistics), path=path)

    @classmethod
    def in_memory(cls, disk: MemoryDisk) -> RaftLogEngine:
        """The engine on a simulated disk (`memory_kv`), with the same durability rules."""
        return cls(MemoryKV(disk))

    def rocksdb_wal_syncs(self) -> int:
        """RocksDB's own count of WAL fsyncs (engine opened with statistics=True)."""
        return wal_syncs_of(self._live())

    @property
    def path(self) -> Path | None:
        return self._path

    def close(self) -> None:
        kv = self._kv.release()
        if kv is not None:
            kv.close()
            self._groups.clear()

    def __enter__(self) -> RaftLogEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _live(self) -> KVStore:
        return self._kv.get()

    # -- reading -------------------------------------------------------------

    def _get(self, key: bytes) -> bytes | None:
        return self._live().get(key)

    def _state(self, group_id: int) -> _GroupState:
        st = self._groups.get(group_id)
        if st is None:
            st = self._load(group_id)
            self._groups[group_id] = st
        return st

    def _load(self, group_id: int) -> _GroupState:
        prefix = F.group_prefix(group_id)
        raw_hs = self._get(prefix + F.HARD_STATE)
        raw_snap = self._get(prefix + F.SNAPSHOT)
        raw_trunc = self._get(prefix + F.TRUNCATED)
        t_index = t_term = 0
        if raw_trunc is not None:
            t_index, t_term = F.decode_truncated(group_id, raw_trunc)
        last_index, last_term = t_index, t_term
        entry_prefix = prefix + F.ENTRY
        found = self._live().last_at_or_before(entry_prefix + b"\xff" * 8)
        if found is not None and found[0].startswith(entry_prefix):
            e = F.decode_entry(*found)
            if e.index > t_index:
                last_index, last_term = e.index, e.term
        return _GroupState(
            hard_state=HardState() if raw_hs is None else F.decode_hard_state(raw_hs),
            snapshot=SnapshotMetadata() if raw_snap is None else F.decode_snapshot_meta(raw_snap),
            truncated_index=t_index,
            truncated_term=t_term,
            last_index=last_index,
            last_term=last_term,
        )

    def _iter_entries(self, group_id: int, lo: int, hi: int) -> Iterator[Entry]:
        expect = lo
        for key, raw in self._live().iterate(F.entry_key(group_id, lo), F.entry_key(group_id, hi)):
            e = F.decode_entry(key, raw)
            if e.index != expect:
                raise LogCorruptionError(
                    f"group {group_id}: expected entry {expect}, found {e.index}"
                )
            expect += 1
            yield e
        if expect != hi:
            raise LogCorruptionError(f"group {group_id}: log ends at {expect - 1}, wanted {hi - 1}")

    def _term(self, group_id: int, st: _GroupState, i: int) -> int:
        if i < st.truncated_index:
            raise Compacted(f"group {group_id}: term of {i}, compacted up to {st.truncated_index}")
        if i > st.last_index:
            raise Unavailable(f"group {group_id}: term of {i}, last index is {st.last_index}")
        if i == st.truncated_index:
            return st.truncated_term
        if i == st.last_index:
            return st.last_term
        raw = self._get(F.entry_key(group_id, i))
        if raw is None:
            raise LogCorruptionError(f"group {group_id}: entry {i} missing")
        return F.decode_entry(F.entry_key(group_id, i), raw).term

    def storage(self, group_id: int) -> GroupStorage:
        """The rangekv.raft `Storage` view of one group's log."""
        return GroupStorage(self, group_id)

    def group_ids(self) -> list[int]:
        """Ids of every group with anything stored (one seek per group)."""
        out: list[int] = []
        kv = self._live()
        seek = F.GROUP_PREFIX
        while True:
            first = next(iter(kv.iterate(seek, None)), None)
            if first is None or not first[0].startswith(F.GROUP_PREFIX):
                return out
            key = first[0]
            gid = F.decode_group_id(key)
            out.append(gid)
            if gid == F.MAX_U64:
                return out
            seek = F.group_prefix(gid + 1)

    # -- writing -------------------------------------------------------------

    def new_batch(self) -> LogBatch:
        return LogBatch(self)

    def commit(self, batch: LogBatch, *, sync: bool = True) -> None:
        """Write everything in `batch` for all its groups in ONE write, synced
        unless `sync` is False (only for what may be lost in an OS crash: a
        hard state whose only change is its commit index)."""
        if batch.engine is not self:
            raise ValueError("batch belongs to a different RaftLogEngine")
        with self._lock:
            if not batch._views:
                batch._seal()
                return
            merged = {gid: self._merge(gid, batch) for gid in batch._views}
            wb = batch._seal()
            self._live().write(wb, sync=sync)
            if sync:
                self.synced_writes += 1
            self.batches_committed += 1
            self.entries_written += batch.entry_count
            self._groups.update(merged)

    def _merge(self, gid: int, batch: LogBatch) -> _GroupState:
        """The group's state after `batch` commits, or ConcurrentBatchError."""
        cur, base, view = self._state(gid), batch._bases[gid], batch._views[gid]
        for aspect in sorted(batch._deps[gid]):
            if getattr(cur, aspect) != getattr(base, aspect):
                raise ConcurrentBatchError(f"group {gid}: {aspect} changed since this batch began")
        writes = batch._writes[gid]
        compacted = cur.truncated_index != base.truncated_index
        out = cur
        if "log_version" in writes:
            out = out.after_round(
                out.hard_state, view.last_index, view.last_term, cur.log_version + 1, out.hs_version
            )
            if gid in batch._snapshotted:
                # the snapshot replaces the whole log, including any compaction
                if compacted and cur.truncated_index > view.truncated_index:
                    raise ConcurrentBatchError(
                        f"group {gid}: compacted to {cur.truncated_index}, beyond the "
                        f"snapshot {view.truncated_index} this batch applies"
                    )
                out = dataclasses.replace(
                    out, truncated_index=view.truncated_index, truncated_term=view.truncated_term
                )
            elif compacted and cur.truncated_index > view.last_index:
                raise InvariantViolation(
                    f"group {gid}: compacted to {cur.truncated_index} beyond the batch's "
                    f"last index {view.last_index}"
                )
        if "hs_version" in writes:
            out = out.after_round(
                view.hard_state, out.last_index, out.last_term, out.log_version, cur.hs_version + 1
            )
        if "snap_version" in writes:
            out = dataclasses.replace(
                out, snapshot=view.snapshot, snap_version=cur.snap_version + 1
            )
        return out

    def compact(self, group_id: int, index: int) -> None:
        """Delete entries up to and including `index` (raft log truncation).

        The caller must have made the state machine durable through `index`
        first (`StateEngine.sync()` in NOSYNC mode). The write is not fsynced:
        if it is lost, the old entries are simply still there.
        """
        with self._lock:
            st = self._state(group_id)
            if index <= st.truncated_index:
                raise Compacted(
                    f"group {group_id}: compact {index}, already compacted up to "
                    f"{st.truncated_index}"
                )
            if index > st.last_index:
                raise Unavailable(f"group {group_id}: compact {index}, last index {st.last_index}")
            term = self._term(group_id, st, index)
            wb = self._live().new_batch()
            wb.delete_range(F.entry_key(group_id, 0), F.entry_key(group_id, index + 1))
            wb.put(F.group_prefix(group_id) + F.TRUNCATED, F.encode_truncated(index, term))
            self._live().write(wb, sync=False)
            self._groups[group_id] = dataclasses.replace(
                st, truncated_index=index, truncated_term=term
            )

    def destroy(self, group_id: int) -> None:
        """Remove every trace of a group (replica removed from this node); synced."""
        with self._lock:
            prefix = F.group_prefix(group_id)
            wb = self._live().new_batch()
            end = F.group_prefix(group_id + 1) if group_id < F.MAX_U64 else b"\x02"
            wb.delete_range(prefix, end)
            self._live().write(wb, sync=True)
            self.synced_writes += 1
            old = self._groups.pop(group_id, None)
            if old is not None:
                # a batch built before the destroy must not resurrect the group
                self._groups[group_id] = _GroupState(
                    log_version=old.log_version + 1,
                    hs_version=old.hs_version + 1,
                    snap_version=old.snap_version + 1,
                )


class GroupStorage:
    """`rangekv.raft.Storage` for one group, served from the engine's cache and DB."""

    __slots__ = ("_engine", "group_id")

    def __init__(self, engine: RaftLogEngine, group_id: int) -> None:
        self._engine = engine
        self.group_id = group_id

    @property
    def hard_state(self) -> HardState:
        return self._engine._state(self.group_id).hard_state

    def initial_state(self) -> tuple[HardState, ConfState]:
        st = self._engine._state(self.group_id)
        # The stored commit can lie below the snapshot (see `with_commit_floor`; the
        # 30-minute chaos soak found a node stored at commit 42 under a snapshot at
        # 44 that could never restart).
        return with_commit_floor(st.hard_state, st.snapshot.index), st.snapshot.conf_state

    def entries(self, lo: int, hi: int, max_size: int) -> list[Entry]:
        st = self._engine._state(self.group_id)
        if lo <= st.truncated_index:
            raise Compacted(
                f"group {self.group_id}: entries from {lo}, compacted up to {st.truncated_index}"
            )
        if hi > st.last_index + 1:
            raise Unavailable(
                f"group {self.group_id}: entries up to {hi}, last index is {st.last_index}"
            )
        out: list[Entry] = []
        size = 0
        if lo >= hi:
            return out
        it = self._engine._iter_entries(self.group_id, lo, hi)
        for e in it:
            size += len(e.data)
            if size > max_size and out:
                break
            out.append(e)
        return out

    def term(self, i: int) -> int:
        st = self._engine._state(self.group_id)
        return self._engine._term(self.group_id, st, i)

    def first_index(self) -> int:
        return self._engine._state(self.group_id).first_index

    def last_index(self) -> int:
        return self._engine._state(self.group_id).last_index

    def snapshot(self) -> Snapshot:
        """Metadata of the latest snapshot; `data` is empty (see module docstring)."""
        return Snapshot(self._engine._state(self.group_id).snapshot)


class LogBatch:
    """Appends, hard states and snapshots for any number of groups, written by one commit.

    Operations are validated against a per-group view that already includes
    the earlier operations of this batch, and recorded in call order in one
    write batch of the store.
    """

    def __init__(self, engine: RaftLogEngine) -> None:
        self.engine = engine
        self._wb = Held(
            engine._live().new_batch(), lambda: RuntimeError("LogBatch was already committed")
        )
        self._views: dict[int, _GroupState] = {}
        self._bases: dict[int, _GroupState] = {}
        self._deps: dict[int, set[str]] = {}
        self._writes: dict[int, set[str]] = {}
        self._pending_terms: dict[int, dict[int, int]] = {}
        self._snapshotted: set[int] = set()
        self.entry_count = 0

    def _batch(self) -> KVBatch:
        return self._wb.get()

    def _seal(self) -> KVBatch:
        return self._wb.take()

    def _view(self, group_id: int, deps: tuple[str, ...], writes: tuple[str, ...]) -> _GroupState:
        view = self._views.get(group_id)
        if view is None:
            view = self.engine._state(group_id)
            self._views[group_id] = view
            self._bases[group_id] = view
            self._deps[group_id] = set()
            self._writes[group_id] = set()
        self._deps[group_id].update(deps, writes)
        self._writes[group_id].update(writes)
        return view

    @property
    def group_count(self) -> int:
        return len(self._views)

    @property
    def group_ids(self) -> tuple[int, ...]:
        """The groups this batch writes to."""
        return tuple(self._views)

    def append(self, group_id: int, entries: Sequence[Entry]) -> None:
        """Append `entries`, replacing any conflicting suffix (MemoryStorage.append)."""
        wb = self._batch()
        if not entries:
            return
        view = self._view(group_id, (), ("log_version",))
        first = view.first_index
        if entries[-1].index < first:
            return
        if entries[0].index < first:
            entries = entries[first - entries[0].index :]
        start = entries[0].index
        if start > view.last_index + 1:
            raise InvariantViolation(
                f"group {group_id}: append at {start} leaves a gap after last index "
                f"{view.last_index}"
            )
        for k, e in enumerate(entries):
            if e.index != start + k:
                raise InvariantViolation(f"group {group_id}: entries not contiguous at {e.index}")
        new_last = entries[-1].index
        if new_last < view.last_index:
            wb.delete_range(F.entry_key(group_id, new_last + 1), F.entry_key(group_id, F.MAX_U64))
        terms = self._pending_terms.setdefault(group_id, {})
        for stale in [i for i in terms if i >= start]:
            del terms[stale]
        for e in entries:
            wb.put(F.entry_key(group_id, e.index), F.encode_entry(e))
            terms[e.index] = e.term
        self.entry_count += len(entries)
        self._views[group_id] = view.after_round(
            view.hard_state, new_last, entries[-1].term, view.log_version, view.hs_version
        )

    def set_hard_state(self, group_id: int, hs: HardState) -> None:
        wb = self._batch()
        view = self._view(group_id, (), ("hs_version",))
        wb.put(F.group_prefix(group_id) + F.HARD_STATE, F.encode_hard_state(hs))
        self._views[group_id] = view.after_round(
            hs, view.last_index, view.last_term, view.log_version, view.hs_version
        )

    def apply_snapshot(self, group_id: int, snap: Snapshot) -> None:
        """Replace the group's whole log by `snap` (MemoryStorage.apply_snapshot)."""
        wb = self._batch()
        view = self._view(group_id, (), ("log_version", "snap_version"))
        if snap.index <= view.snapshot.index:
            raise SnapshotOutOfDate(
                f"group {group_id}: snapshot {snap.index} <= held {view.snapshot.index}"
            )
        prefix = F.group_prefix(group_id)
        wb.delete_range(F.entry_key(group_id, 0), F.entry_key(group_id, F.MAX_U64))
        wb.put(prefix + F.SNAPSHOT, F.encode_snapshot_meta(snap.metadata))
        wb.put(prefix + F.TRUNCATED, F.encode_truncated(snap.index, snap.term))
        self._pending_terms[group_id] = {}
        self._snapshotted.add(group_id)
        self._views[group_id] = dataclasses.replace(
            view,
            snapshot=snap.metadata,
            truncated_index=snap.index,
            truncated_term=snap.term,
            last_index=snap.index,
            last_term=snap.term,
        )

    def create_snapshot(self, group_id: int, index: int, conf_state: ConfState) -> SnapshotMetadata:
        """Record snapshot metadata as of `index` (MemoryStorage.create_snapshot)."""
        wb = self._batch()
        view = self._view(group_id, ("log_version",), ("snap_version",))
        if index <= view.snapshot.index:
            raise SnapshotOutOfDate(
                f"group {group_id}: snapshot {index} <= held {view.snapshot.index}"
            )
        if index > view.last_index:
            raise Unavailable(f"group {group_id}: snapshot {index} beyond last {view.last_index}")
        term = self._pending_terms.get(group_id, {}).get(index)
        if term is None:
            term = self.engine._term(group_id, view, index)
        meta = SnapshotMetadata(index, term, conf_state)
        wb.put(F.group_prefix(group_id) + F.SNAPSHOT, F.encode_snapshot_meta(meta))
        self._views[group_id] = dataclasses.replace(view, snapshot=meta)
        return meta
