"""The raft-log engine's in-memory twin passes the engine's own tests.

Every test of `test_log_engine` runs here again over `MemoryKV` (see
`memory_disks`); only RocksDB's own fsync count has no twin.
"""

from __future__ import annotations

from pathlib import Path

from memory_disks import memory_engines  # noqa: F401 -- autouse: engines on simulated disks
from test_log_engine import *  # noqa: F403 -- every log-engine test, on the twin

from rangekv.replication.log_engine import RaftLogEngine
from rangekv.replication.memory_kv import MemoryKV

# RocksDB's own statistics have no in-memory twin.
del test_one_commit_for_50_groups_is_one_synced_write  # type: ignore[name-defined]  # noqa: F821


def test_the_engines_here_are_on_simulated_disks(tmp_path: Path) -> None:
    engine = RaftLogEngine.open(tmp_path / "log")
    assert isinstance(engine._live(), MemoryKV)
    engine.close()
