"""Engines on simulated disks, for re-running the engines' own tests on the twin.

`StateEngine.open` / `RaftLogEngine.open` are answered by `MemoryKV` over one
`MemoryDisk` per path (reopening a path finds its disk), so the engines' code
is the same and only the store under it differs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rangekv.replication.log_engine import RaftLogEngine
from rangekv.replication.memory_kv import MemoryDisk, MemoryKV
from rangekv.replication.state_engine import StateEngine
from rangekv.replication.sync_mode import FsmSyncMode


@pytest.fixture(autouse=True)
def memory_engines(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[Path, MemoryDisk]]:
    """`open(path, ...)` gives an engine on the simulated disk of `path`."""
    disks: dict[Path, MemoryDisk] = {}

    def disk(path: str | Path) -> MemoryDisk:
        return disks.setdefault(Path(path).resolve(), MemoryDisk())

    def open_state(path: str | Path, sync_mode: FsmSyncMode, **_kw: Any) -> StateEngine:
        return StateEngine(MemoryKV(disk(path)), sync_mode, path=Path(path))

    def open_log(path: str | Path, **_kw: Any) -> RaftLogEngine:
        return RaftLogEngine(MemoryKV(disk(path)), path=Path(path))

    monkeypatch.setattr(StateEngine, "open", staticmethod(open_state))
    monkeypatch.setattr(RaftLogEngine, "open", staticmethod(open_log))
    yield disks
