"""How long a process's event loop stalls while a worker thread makes a synced write.

    python benchmarks/fsync_loop_stall.py [--dir DIR] [--writes N]

The raft scheduler commits the raft log (and, in FSM sync mode `sync`, the
state engine) from a worker thread. The event loop could keep serving peers'
messages and clients' batches during the fsync only if the write let go of
the GIL while it syncs. This script measures it: a worker
thread makes `--writes` synced 200-byte writes (one every 2 ms) while the main
thread spins, recording every moment it runs; for each write it reports how
long the write took and the main thread's longest pause during it.

Two ways to make the write durable:

- `rocksdict write(sync=True)`: one call. The main thread's pause is as long as
  the write: the binding holds the GIL through the fsync.
- an unsynced write, then `flush_wal(True)` (what `RocksKV.sync` does; tried
  for synced writes and reverted: `rangekv.replication.rocks` says why), which
  releases the GIL while it syncs. The main thread's
  pause is what the unsynced write costs; the worker thread's write takes
  longer here because it must win the GIL back from a main thread that never
  blocks (a real event loop blocks in its poll, and gives it up sooner).

Prints medians and the 90th percentile. The fsync cost depends on the
filesystem of `--dir` (default: a fresh temp dir).
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import rocksdict

from rangekv.replication.rocks import RocksKV

VALUE = b"v" * 200


def measure(write: Callable[[int], None], writes: int) -> tuple[list[float], list[float]]:
    """(each write's duration, the main thread's longest pause during it), in µs."""
    spans: list[tuple[float, float]] = []

    def writer() -> None:
        for i in range(writes):
            t0 = time.perf_counter()
            write(i)
            spans.append((t0, time.perf_counter()))
            time.sleep(0.002)

    thread = threading.Thread(target=writer)
    thread.start()
    stamps: list[float] = []
    while thread.is_alive():
        stamps.append(time.perf_counter())
    durations, pauses = [], []
    for start, end in spans[10:]:  # the first writes warm the WAL up
        lo = max(bisect.bisect_left(stamps, start) - 1, 0)
        hi = bisect.bisect_right(stamps, end) + 1
        seen = stamps[lo:hi]
        gaps = [b - a for a, b in itertools.pairwise(seen)]
        durations.append((end - start) * 1e6)
        pauses.append(max(gaps, default=0.0) * 1e6)
    return durations, pauses


def raw_synced(path: Path) -> tuple[Callable[[int], None], Callable[[], None]]:
    options = rocksdict.Options(raw_mode=True)
    options.create_if_missing(True)
    db = rocksdict.Rdict(str(path), options)
    synced = rocksdict.WriteOptions()
    synced.sync = True

    def write(i: int) -> None:
        wb = rocksdict.WriteBatch(raw_mode=True)
        wb.put(b"k%d" % i, VALUE)
        db.write(wb, synced)

    return write, db.close


def write_then_flush(path: Path) -> tuple[Callable[[int], None], Callable[[], None]]:
    kv = RocksKV(path)

    def write(i: int) -> None:
        wb = kv.new_batch()
        wb.put(b"k%d" % i, VALUE)
        kv.write(wb, sync=False)
        kv.sync()

    return write, kv.close


def p(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * q))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--writes", type=int, default=300)
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="rangekv-stall-"))
    print(f"{args.writes} synced writes on {root}, one every 2 ms, main thread spinning")
    print(f"{'how':32s} {'write p50 µs':>13s} {'main pause p50 µs':>18s} {'p90':>8s}")
    for n, (name, make) in enumerate(
        [
            ("rocksdict write(sync=True)", raw_synced),
            ("write, then flush_wal(True)", write_then_flush),
        ]
    ):
        write, close = make(root / f"db{n}")
        try:
            durations, pauses = measure(write, args.writes)
        finally:
            close()
        print(
            f"{name:32s} {statistics.median(durations):13.0f} "
            f"{statistics.median(pauses):18.0f} {p(pauses, 0.9):8.0f}"
        )


if __name__ == "__main__":
    main()
