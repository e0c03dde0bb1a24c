"""Child process for test_storage_crash: commits batches until it is SIGKILLed.

Usage: storage_crash_child.py DIR FSM_MODE

Each round i writes, for every group, raft entry i (its data is the command
"put key(g, i) = value(g, i) at ts i") plus HardState(commit=i) in ONE synced
log batch, prints "L i"; then applies entry i of every group to the state
engine in ONE batch with the applied indexes, prints "A i". Every 16 rounds
it makes the state engine durable (`sync()` in nosync mode), prints "S i",
then truncates the raft logs up to i - 8 and prints "C i-8". A line is printed
only after the write it reports returned.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

from rangekv.common.hlc import Timestamp
from rangekv.raft import Entry, HardState
from rangekv.raftnode import mvcc
from rangekv.replication.log_engine import RaftLogEngine
from rangekv.replication.state_engine import AppliedState, StateEngine
from rangekv.replication.sync_mode import FsmSyncMode

GROUPS = (1, 2, 3, 4)
TERM = 1
_CMD = struct.Struct(">Q")


def key(group: int, i: int) -> bytes:
    return b"g%d/k%08d" % (group, i)


def value(group: int, i: int) -> bytes:
    return b"v%d-%d-" % (group, i) + b"x" * (i % 50)


def command(group: int, i: int) -> bytes:
    """The raft entry payload: ts, key length, key, value."""
    k = key(group, i)
    return _CMD.pack(i) + bytes([len(k)]) + k + value(group, i)


def decode_command(data: bytes) -> tuple[Timestamp, bytes, bytes]:
    (ts,) = _CMD.unpack_from(data)
    klen = data[_CMD.size]
    k = data[_CMD.size + 1 : _CMD.size + 1 + klen]
    return Timestamp(ts), k, data[_CMD.size + 1 + klen :]


def main() -> None:
    root = Path(sys.argv[1])
    mode = FsmSyncMode(sys.argv[2])
    log = RaftLogEngine.open(root / "log")
    state = StateEngine.open(root / "state", mode)
    out = sys.stdout
    i = 0
    while True:
        i += 1
        lb = log.new_batch()
        for g in GROUPS:
            lb.append(g, [Entry(TERM, i, data=command(g, i))])
            lb.set_hard_state(g, HardState(TERM, 1, i))
        log.commit(lb)
        out.write(f"L {i}\n")
        out.flush()
        sb = state.new_batch()
        for g in GROUPS:
            ts, k, v = decode_command(command(g, i))
            mvcc.put(sb, k, v, ts)
            sb.set_applied_state(g, AppliedState(i, TERM))
        state.commit(sb)
        out.write(f"A {i}\n")
        out.flush()
        if i % 16 == 0:
            if mode is FsmSyncMode.NOSYNC:
                state.sync()  # truncating the log needs the applies durable first
            out.write(f"S {i}\n")
            out.flush()
            for g in GROUPS:
                log.compact(g, i - 8)
            out.write(f"C {i - 8}\n")
            out.flush()


if __name__ == "__main__":
    main()
