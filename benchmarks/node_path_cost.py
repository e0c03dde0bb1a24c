"""CPU the storage nodes spend per put and per raft entry, without gRPC: one range
against many.

    python benchmarks/node_path_cost.py [--ranges 1,64] [--callers 64] [--seconds 4] [--rounds 3]

Three real stores run in this one process (the test kit's `InProcCluster`:
RocksDB engines on disk, the real raft scheduler with group commit and its fsync
threads, real replicas answering `RangeReplica.batch`), with raft messages handed
from store to store in memory. `--callers` closed-loop callers put 100-byte
values, caller i always to range i mod N, on that range's leaseholder (leases
spread over the three stores). Time does not move (no ticks, so no heartbeats and
no lease renewals): what is measured is only the path every write takes, from
the replica's batch call through proposal, log append and fsync, the followers'
append and answer, commit and apply on all three stores.

Why it exists: with one range, one raft entry carries the puts of every caller
that arrived together, so what an entry costs is shared; over many ranges each
entry carries about one put, and the per-entry cost is paid per put. This script
shows both figures (process CPU per put, per raft entry over all three stores,
and puts per entry) with no gRPC or other processes in the way. Compare builds
by running it on each; one run's medians compare with each other, nothing more.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from testkit.inproc import InProcCluster, layout, started

from rangekv.replication.sync_mode import FsmSyncMode

KEYS = 10_000


@dataclass(frozen=True)
class Round:
    puts: int
    seconds: float
    cpu_seconds: float
    entries: int  # raft entries written, counted once (not once per store)

    @property
    def puts_per_s(self) -> float:
        return self.puts / self.seconds

    @property
    def cpu_us_per_put(self) -> float:
        return self.cpu_seconds / self.puts * 1e6

    @property
    def cpu_us_per_entry(self) -> float:
        return self.cpu_seconds / max(self.entries, 1) * 1e6

    @property
    def puts_per_entry(self) -> float:
        return self.puts / max(self.entries, 1)


def entries_written(cluster: InProcCluster) -> int:
    return sum(s.log_engine.entries_written for s in cluster.stores.values())


async def one_round(
    cluster: InProcCluster, targets: list[tuple[int, int, bytes]], callers: int, seconds: float
) -> Round:
    stop = asyncio.Event()
    puts = 0

    async def caller(i: int) -> None:
        nonlocal puts
        node, range_id, prefix = targets[i % len(targets)]
        n = 0
        while not stop.is_set():
            await cluster.put(node, range_id, prefix + b"/%d/%d" % (i, n % 64), b"v" * 100)
            n += 1
            puts += 1

    entries0, cpu0, t0 = entries_written(cluster), time.process_time(), time.perf_counter()
    tasks = [asyncio.create_task(caller(i)) for i in range(callers)]
    await asyncio.sleep(seconds)  # the measured interval, not a synchronisation
    stop.set()
    await asyncio.gather(*tasks)
    return Round(
        puts=puts,
        seconds=time.perf_counter() - t0,
        cpu_seconds=time.process_time() - cpu0,
        entries=(entries_written(cluster) - entries0) // 3,
    )


async def measure(ranges: int, args: argparse.Namespace) -> list[Round]:
    split_keys = [b"bench/%05d" % (i * KEYS // ranges) for i in range(1, ranges)]
    descs = layout(*split_keys)
    leaders = {d.range_id: (i % 3) + 1 for i, d in enumerate(descs)}
    targets = [(leaders[d.range_id], d.range_id, d.start_key or b"bench/") for d in descs]
    out: list[Round] = []
    with tempfile.TemporaryDirectory(prefix="node-path-cost-") as tmp:
        async with started(
            Path(tmp), descs, leaders=leaders, sync_mode=FsmSyncMode.NOSYNC
        ) as cluster:
            await one_round(cluster, targets, args.callers, min(1.0, args.seconds))  # warm-up
            for r in range(args.rounds):
                got = await one_round(cluster, targets, args.callers, args.seconds)
                print(
                    f"  {ranges} ranges, round {r + 1}/{args.rounds}: {got.puts_per_s:,.0f} puts/s, "
                    f"{got.cpu_us_per_put:.0f} us CPU per put, "
                    f"{got.cpu_us_per_entry:.0f} per entry, {got.puts_per_entry:.2f} puts per entry",
                    flush=True,
                )
                out.append(got)
    return out


def positive_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be positive")
    return values


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranges", type=positive_ints, default=[1, 64], help="range counts to run")
    p.add_argument("--callers", type=int, default=64)
    p.add_argument("--seconds", type=float, default=4.0, help="length of one measured round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    if args.callers < 1 or args.rounds < 1 or args.seconds <= 0:
        p.error("--callers, --rounds and --seconds must be positive")
    if max(args.ranges) > KEYS // 2:
        p.error(f"--ranges must be at most {KEYS // 2}")
    results = {}
    for ranges in args.ranges:
        print(f"node_path_cost: {ranges} ranges, {args.callers} callers", flush=True)
        results[ranges] = asyncio.run(measure(ranges, args))
    print("medians:")
    for ranges, rounds in results.items():
        print(
            f"  {ranges} ranges: {statistics.median(r.puts_per_s for r in rounds):,.0f} puts/s, "
            f"{statistics.median(r.cpu_us_per_put for r in rounds):.0f} us CPU per put, "
            f"{statistics.median(r.cpu_us_per_entry for r in rounds):.0f} per entry, "
            f"{statistics.median(r.puts_per_entry for r in rounds):.2f} puts per entry"
        )


if __name__ == "__main__":
    main()
