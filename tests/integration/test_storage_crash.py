"""kill -9 a process that is writing both engines; everything reported durable must be there.

The child (storage_crash_child.py) prints a line after each write returns.
The parent reads those lines (waiting on the pipe with a deadline, never
sleeping), SIGKILLs the child after a random number of them, drains what was
already printed, then reopens both engines and checks:

- raft log: every entry reported committed ("L i") is present in every
  group with the right bytes, and the HardState commit covers it (the log
  is always synced);
- state engine: the applied index is at least the last "A i" in sync mode
  and the last "S i" (explicit sync) in nosync mode; effects are present
  exactly up to the applied index (applied index and effects are atomic);
- the log still holds every entry after the applied index (truncation never
  outran durable apply), and replaying them rebuilds the full state.

Note: SIGKILL loses no page-cache data, so an unsynced nosync write usually
survives too; the assertions are the guarantees, not what a power cut does.
"""

from __future__ import annotations

import importlib.util
import os
import random
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from rangekv.common.hlc import Timestamp
from rangekv.raftnode import mvcc
from rangekv.replication.log_engine import RaftLogEngine
from rangekv.replication.state_engine import AppliedState, StateEngine
from rangekv.replication.sync_mode import FsmSyncMode

CHILD = Path(__file__).parent / "storage_crash_child.py"


def _load_child() -> ModuleType:
    """The child script as a module, for its key/value/command helpers."""
    spec = importlib.util.spec_from_file_location("storage_crash_child", CHILD)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


child = _load_child()
DEADLINE_S = 30.0


def _run_and_kill(root: Path, mode: FsmSyncMode, kill_after_lines: int) -> list[str]:
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(root), mode.value],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    buf = b""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + DEADLINE_S
    try:
        while len(lines) < kill_after_lines:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"child printed only {len(lines)} lines before the deadline")
            if not sel.select(timeout=remaining):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"child exited early ({proc.wait()}): {err}")
            buf += chunk
            *done, buf = buf.split(b"\n")
            lines += [d.decode() for d in done]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        sel.close()
        if proc.poll() is None:
            proc.kill()
        # whatever reached the pipe was printed after its write returned: it counts
        rest = proc.stdout.read()
        proc.wait(timeout=DEADLINE_S)
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    buf += rest
    lines += [d.decode() for d in buf.split(b"\n")[:-1]]  # drop a torn last line
    return lines


def _last(lines: list[str], tag: str) -> int:
    return max((int(line.split()[1]) for line in lines if line.startswith(tag + " ")), default=0)


def _compaction_made_durable(lines: list[str]) -> int:
    """The last truncation point followed by a reported synced log write (0 if none)."""
    best = pending = 0
    for line in lines:
        tag, _, num = line.partition(" ")
        if tag == "C":
            pending = int(num)
        elif tag == "L":
            best = pending
    return best


@pytest.mark.parametrize("mode", list(FsmSyncMode), ids=lambda m: m.value)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill9_loses_nothing_reported_durable(tmp_path: Path, mode: FsmSyncMode, seed: int) -> None:
    rng = random.Random(seed * 1000 + (mode is FsmSyncMode.NOSYNC))
    lines = _run_and_kill(tmp_path, mode, rng.randint(20, 400))
    logged, applied_reported = _last(lines, "L"), _last(lines, "A")
    synced = _last(lines, "S")
    compacted_durable = _compaction_made_durable(lines)
    assert logged > 0

    log = RaftLogEngine.open(tmp_path / "log")
    state = StateEngine.open(tmp_path / "state", mode)
    try:
        for g in child.GROUPS:
            storage = log.storage(g)
            last = storage.last_index()
            assert last >= logged
            assert storage.initial_state()[0].commit >= logged
            assert storage.first_index() >= 1
            # truncation is written unsynced, but the next synced log write makes it durable
            assert storage.first_index() >= compacted_durable + 1
            applied = state.applied_state(g)
            assert applied is not None
            durable_floor = applied_reported if mode is FsmSyncMode.SYNC else synced
            assert applied.index >= durable_floor
            assert applied.index <= last
            # atomic apply: effects exactly up to the applied index
            for i in range(max(1, applied.index - 20), applied.index + 3):
                got, _ = mvcc.get(state, child.key(g, i), Timestamp.MAX)
                assert (got is not None) == (i <= applied.index), (g, i, applied)
            # replayable: the log covers everything after the applied index
            assert storage.first_index() <= applied.index + 1
            entries = storage.entries(applied.index + 1, last + 1, 1 << 40)
            assert [e.index for e in entries] == list(range(applied.index + 1, last + 1))
            batch = state.new_batch()
            for e in entries:
                assert e.data == child.command(g, e.index)
                ts, k, v = child.decode_command(e.data)
                mvcc.put(batch, k, v, ts)
            batch.set_applied_state(g, AppliedState(last, child.TERM))
            state.commit(batch)
            rows = mvcc.scan(state, b"g%d/" % g, b"g%d0" % g, Timestamp.MAX, 1 << 30)
            assert rows == [(child.key(g, i), child.value(g, i)) for i in range(1, last + 1)]
    finally:
        log.close()
        state.close()
