"""The state engine's in-memory twin is faithful: it passes the engine's own tests,
and a power cut loses exactly what RocksDB may lose.

Every test of `test_state_engine` runs here again over `MemoryKV` (see
`memory_disks`); the tests below pin what only the twin can show in-process.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from memory_disks import memory_engines  # noqa: F401 -- autouse: engines on simulated disks
from test_state_engine import *  # noqa: F403 -- every state-engine test, on the twin

from rangekv.replication.engines import MemoryEngines
from rangekv.replication.memory_kv import MemoryDisk, MemoryKV
from rangekv.replication.state_engine import StateEngine
from rangekv.replication.sync_mode import FsmSyncMode


def test_the_engines_here_are_on_simulated_disks(tmp_path: Path) -> None:
    engine = StateEngine.open(tmp_path / "state", FsmSyncMode.SYNC)
    assert isinstance(engine._live(), MemoryKV)
    engine.close()


def _put(engine: StateEngine, key: bytes, value: bytes, *, force_sync: bool = False) -> None:
    batch = engine.new_batch()
    batch.put(key, value)
    engine.commit(batch, force_sync=force_sync)


def test_a_power_cut_loses_exactly_the_unsynced_writes() -> None:
    disk = MemoryDisk()
    engine = StateEngine.in_memory(disk, FsmSyncMode.NOSYNC)
    _put(engine, b"a", b"1")
    _put(engine, b"b", b"2", force_sync=True)  # makes a durable too, as a WAL fsync would
    _put(engine, b"c", b"3")
    batch = engine.new_batch()
    batch.delete_range(b"a", b"b\x00")
    engine.commit(batch)
    assert list(engine.iterate(b"", None)) == [(b"c", b"3")]
    engine.close()  # the process dies: everything survives
    engine = StateEngine.in_memory(disk, FsmSyncMode.NOSYNC)
    assert list(engine.iterate(b"", None)) == [(b"c", b"3")]
    assert disk.power_cut() == 2  # the machine dies: the two unsynced batches go
    assert list(engine.iterate(b"", None)) == [(b"a", b"1"), (b"b", b"2")]
    _put(engine, b"d", b"4")
    engine.sync()
    assert disk.power_cut() == 0
    assert engine.get(b"d") == b"4"


def test_sync_mode_commits_are_durable_at_once() -> None:
    disk = MemoryDisk()
    engine = StateEngine.in_memory(disk, FsmSyncMode.SYNC)
    _put(engine, b"k", b"v")
    assert disk.unsynced_writes == 0
    disk.power_cut()
    assert engine.get(b"k") == b"v"


def test_a_snapshot_and_an_iteration_keep_their_view_while_writes_go_on() -> None:
    engine = StateEngine.in_memory(MemoryDisk(), FsmSyncMode.SYNC)
    for i in range(5):
        _put(engine, bytes([i]), b"old")
    it = engine.iterate(b"", None)
    first = next(it)
    with engine.snapshot() as snap:
        _put(engine, b"\x02", b"new")
        batch = engine.new_batch()
        batch.delete(b"\x03")
        engine.commit(batch)
        assert snap.get(b"\x02") == b"old"
        assert [k for k, _ in snap.iterate(b"", None)] == [bytes([i]) for i in range(5)]
    assert [first, *it] == [(bytes([i]), b"old") for i in range(5)]
    assert engine.get(b"\x02") == b"new" and engine.get(b"\x03") is None


def test_memory_engines_reopen_on_the_same_disks_and_lose_a_power_cut() -> None:
    engines = MemoryEngines()
    log, state = engines(FsmSyncMode.NOSYNC)
    _put(state, b"x", b"1")
    log.close()
    state.close()
    _log2, state2 = engines(FsmSyncMode.NOSYNC)
    assert state2.get(b"x") == b"1"
    assert engines.power_cut() == 1
    assert state2.get(b"x") is None


def test_commits_from_a_worker_thread_are_atomic_for_readers() -> None:
    """The scheduler commits from a worker thread while the loop reads: a reader sees
    a whole batch or none of it."""
    engine = StateEngine.in_memory(MemoryDisk(), FsmSyncMode.SYNC)
    keys = [b"k%03d" % i for i in range(200)]

    async def main() -> None:
        for round_ in range(20):
            batch = engine.new_batch()
            for key in keys:
                batch.put(key, b"%d" % round_)
            done = asyncio.ensure_future(asyncio.to_thread(engine.commit, batch))
            while not done.done():
                seen = {v for _k, v in engine.iterate(b"", None)}
                assert len(seen) <= 1, seen
                await asyncio.sleep(0)
            await done

    asyncio.run(main())
