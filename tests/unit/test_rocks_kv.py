"""RocksKV's synced writes: durable and counted by RocksDB, and never closed under."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from rangekv.replication.rocks import KVClosedError, RocksKV


def test_a_synced_write_is_one_wal_sync_and_survives_reopening(tmp_path: Path) -> None:
    kv = RocksKV(tmp_path / "db", statistics=True)
    before = kv.wal_syncs()
    batch = kv.new_batch()
    batch.put(b"k", b"v")
    kv.write(batch, sync=True)
    assert kv.wal_syncs() == before + 1  # RocksDB's own count, not ours
    unsynced = kv.new_batch()
    unsynced.put(b"k2", b"v2")
    kv.write(unsynced, sync=False)
    assert kv.wal_syncs() == before + 1
    kv.close()
    again = RocksKV(tmp_path / "db")
    assert again.get(b"k") == b"v"
    again.close()


def test_close_waits_for_a_write_under_way(tmp_path: Path) -> None:
    """A sync in a worker thread holds the DB (a `flush_wal` releases the GIL with it
    borrowed): `close` from another thread waits for it to end, then closes; the
    writer's next write finds the store closed."""
    kv = RocksKV(tmp_path / "db")
    inside, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        with kv._writing() as db:  # what sync() holds
            inside.set()
            release.wait()
            db.flush_wal(True)

    def closer() -> None:
        try:
            kv.close()
        except BaseException as exc:  # pragma: no cover - the failure being tested
            errors.append(exc)

    w = threading.Thread(target=writer)
    w.start()
    inside.wait()
    c = threading.Thread(target=closer)
    c.start()
    c.join(0.2)
    waited = c.is_alive()
    release.set()  # before asserting: a failed test must not leave the writer blocked
    w.join()
    c.join()
    assert waited, "close did not wait for the write under way"
    assert errors == []
    batch = kv.new_batch()
    batch.put(b"k", b"v")
    with pytest.raises(KVClosedError):
        kv.write(batch, sync=True)
