"""A process's two engines, and the openers a `GroupHost` is given.

Every raft-hosting process has one raft-log engine (always synced) and one
state engine (FSM sync mode). `GroupHost` does not open them itself: it calls
the `EngineOpener` it was given. The services' entry points give `RocksEngines`
(RocksDB under the data directory); a simulation gives `MemoryEngines`, whose
`MemoryDisk`s outlive the process that opened them, so a restart finds what
was durable -- and a power cut loses what was not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from rangekv.replication.log_engine import RaftLogEngine
from rangekv.replication.memory_kv import MemoryDisk
from rangekv.replication.state_engine import StateEngine
from rangekv.replication.sync_mode import FsmSyncMode

__all__ = ["EngineOpener", "Engines", "MemoryEngines", "RocksEngines"]

Engines = tuple[RaftLogEngine, StateEngine]


class EngineOpener(Protocol):
    """Opens a process's engines (once per process start)."""

    #: Whether the engines' writes block on a disk: then they run in worker
    #: threads, beside the event loop; otherwise inline (a simulation stays
    #: single-threaded, so its runs are reproducible).
    @property
    def blocking(self) -> bool: ...

    def __call__(self, sync_mode: FsmSyncMode) -> Engines: ...


@dataclass(frozen=True)
class RocksEngines:
    """The engines on RocksDB under `data_dir` (raftlog/, state/).

    `power_loss` is test-only: kill -9 then loses unsynced state writes as a
    power cut would (RANGEKV_TEST_POWER_LOSS; `rocks` explains)."""

    data_dir: Path
    power_loss: bool = False
    blocking: bool = True

    def __call__(self, sync_mode: FsmSyncMode) -> Engines:
        log_engine = RaftLogEngine.open(self.data_dir / "raftlog")
        state_engine = StateEngine.open(
            self.data_dir / "state", sync_mode, power_loss=self.power_loss
        )
        return log_engine, state_engine


@dataclass
class MemoryEngines:
    """The engines on simulated disks: one machine's storage, kept across restarts."""

    log_disk: MemoryDisk = field(default_factory=MemoryDisk)
    state_disk: MemoryDisk = field(default_factory=MemoryDisk)
    #: Commit inline: no thread, so a simulation is reproducible. A test that
    #: wants the real interleaving of worker-thread commits sets it.
    blocking: bool = False

    def __call__(self, sync_mode: FsmSyncMode) -> Engines:
        return RaftLogEngine.in_memory(self.log_disk), StateEngine.in_memory(
            self.state_disk, sync_mode
        )

    def power_cut(self) -> int:
        """Both disks lose what was not durable; returns the state batches lost."""
        self.log_disk.power_cut()
        return self.state_disk.power_cut()
