"""Storage engine micro-benchmark: group commit of the raft log, FSM sync vs nosync.

    python benchmarks/engine_bench.py [--dir DIR] [--seconds S] [--reps N]

Log engine: each commit is one LogBatch carrying `batch` entries spread over
`groups` raft groups (plus each touched group's HardState), written with ONE
synced RocksDB write. Reports entries/s and fsyncs per entry, the latter
both from the engine's counter and from RocksDB's own statistics
(rocksdb.wal.synced), so the group-commit claim is checked, not assumed.

State engine: each commit applies 16 MVCC puts of one range plus its applied
index, in SYNC mode (fsync per commit) and NOSYNC mode. Reports batches/s
and the NOSYNC/SYNC ratio.

Every figure is the median of `--reps` runs of `--seconds` each. Runs on the
filesystem of `--dir` (default: a fresh temp dir); fsync cost depends on it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rangekv.common.hlc import Timestamp
from rangekv.raft import Entry, HardState
from rangekv.raftnode import mvcc
from rangekv.replication.log_engine import RaftLogEngine
from rangekv.replication.state_engine import AppliedState, StateEngine
from rangekv.replication.sync_mode import FsmSyncMode

PAYLOAD = b"p" * 100
PUTS_PER_APPLY = 16


@dataclass(frozen=True, slots=True)
class LogResult:
    entries_per_s: float
    fsyncs_per_entry: float
    rocksdb_fsyncs_per_entry: float


def _timed(seconds: float, step: Callable[[], None]) -> tuple[int, float]:
    """Call `step` until `seconds` elapse; returns (calls, elapsed)."""
    calls = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        step()
        calls += 1
        now = time.perf_counter()
        if now >= deadline:
            return calls, now - start


def bench_log(root: Path, batch: int, groups: int, seconds: float) -> LogResult:
    eng = RaftLogEngine.open(root, statistics=True)
    try:
        next_index = dict.fromkeys(range(1, groups + 1), 1)
        gids = list(next_index)
        cursor = 0

        def commit_one() -> None:
            nonlocal cursor
            per_group: dict[int, int] = {}
            for _ in range(batch):  # round-robin the entries over the groups
                g = gids[cursor % groups]
                cursor += 1
                per_group[g] = per_group.get(g, 0) + 1
            lb = eng.new_batch()
            for g, n in per_group.items():
                lo = next_index[g]
                lb.append(g, [Entry(1, i, data=PAYLOAD) for i in range(lo, lo + n)])
                lb.set_hard_state(g, HardState(1, 1, lo + n - 1))
                next_index[g] = lo + n
            eng.commit(lb)

        wal_before = eng.rocksdb_wal_syncs()
        _, elapsed = _timed(seconds, commit_one)
        entries = eng.entries_written
        return LogResult(
            entries / elapsed,
            eng.synced_writes / entries,
            (eng.rocksdb_wal_syncs() - wal_before) / entries,
        )
    finally:
        eng.close()


def bench_state(root: Path, mode: FsmSyncMode, seconds: float) -> float:
    eng = StateEngine.open(root, mode)
    try:
        counter = 0

        def apply_one() -> None:
            nonlocal counter
            counter += 1
            b = eng.new_batch()
            for j in range(PUTS_PER_APPLY):
                mvcc.put(
                    b, b"key%06d" % ((counter * 31 + j) % 100_000), PAYLOAD, Timestamp(counter)
                )
            b.set_applied_state(1, AppliedState(counter, 1))
            eng.commit(b)

        calls, elapsed = _timed(seconds, apply_one)
        return calls / elapsed
    finally:
        eng.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        run = 0

        def fresh() -> Path:
            nonlocal run
            run += 1
            return root / f"run{run}"

        print(f"raft log engine: group commit ({args.reps} x {args.seconds:.1f}s, medians)")
        print(
            f"{'entries/batch':>13} {'groups':>6} {'entries/s':>11} {'fsync/entry':>12} "
            f"{'rocksdb fsync/entry':>20}"
        )
        for groups in (1, 64):
            for batch in (1, 16, 256):
                rs = [bench_log(fresh(), batch, groups, args.seconds) for _ in range(args.reps)]
                print(
                    f"{batch:>13} {groups:>6} "
                    f"{statistics.median(r.entries_per_s for r in rs):>11,.0f} "
                    f"{statistics.median(r.fsyncs_per_entry for r in rs):>12.4f} "
                    f"{statistics.median(r.rocksdb_fsyncs_per_entry for r in rs):>20.4f}"
                )
        print()
        print(f"state engine: apply batches of {PUTS_PER_APPLY} MVCC puts + applied index")
        rates: dict[FsmSyncMode, float] = {}
        for mode in FsmSyncMode:
            rs2 = [bench_state(fresh(), mode, args.seconds) for _ in range(args.reps)]
            rates[mode] = statistics.median(rs2)
            print(f"{mode.value:>8}: {rates[mode]:>10,.0f} batches/s")
        ratio = rates[FsmSyncMode.NOSYNC] / rates[FsmSyncMode.SYNC]
        print(f"nosync/sync ratio: {ratio:.1f}x")


if __name__ == "__main__":
    main()
