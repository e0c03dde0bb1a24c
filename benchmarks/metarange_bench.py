"""Range lookups per second against a 3-replica meta range (run by hand, not in CI).

    python benchmarks/metarange_bench.py [--seconds 5] [--concurrency 1,16]
                                         [--ranges 64] [--prefetch 8]

Starts three `rangekv metarange` processes in a temp dir (the harness of
tests/integration/metarange_cluster.py), splits the keyspace into `--ranges`
committed ranges (so every lookup scans real descriptor groups and returns
`--prefetch` following ones, as a gateway's cache miss does), and measures
LookupRange from ONE client - one `MetaClient`, i.e. one channel per replica
shared by every coroutine, the way a gateway holds it - with closed-loop
coroutines at each concurrency:

  * consistent: committed records, through the leader (lease read, or a
    read-index round trip when the lease is not valid);
  * inconsistent: committed records and intents from any replica; MetaClient
    picks a random replica per call, so the load spreads over all three;
  * inconsistent-follower: the same read pinned to one follower (raw stub), to
    compare one serving process with one serving process.

Each cell reports the median of its per-second completion counts, p50/p99
latency, and which replicas served it (the replicas' rangekv_meta_lookups
gauges, before and after). Only calls started after a warm-up count.

The client runs in this process and shares the machine's cores with the three
replicas; on a small machine the figures are a floor, not a ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from metarange_cluster import MetaCluster, commit_split
from raftnode_cluster import fetch_metrics, metric_value

from rangekv.common.descriptors import RangeDescriptor, first_range
from rangekv.metarange.client import MetaClient
from rangekv.v1 import meta_pb2

T0 = time.monotonic()


def progress(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


@dataclass
class Cell:
    """One measured cell: per-second completion counts and every latency."""

    mode: str
    concurrency: int
    per_second: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    served: dict[int, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return statistics.median(self.per_second) if self.per_second else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        data = sorted(self.latencies)
        return data[min(len(data) - 1, int(q * len(data)))] * 1000.0


Lookup = Callable[[bytes], Awaitable[meta_pb2.LookupRangeResponse]]


async def closed_loop(
    lookup: Lookup, keys: list[bytes], concurrency: int, seconds: float, warmup: float = 0.5
) -> Cell:
    """`concurrency` coroutines, each a loop of lookups of random keys, for
    `warmup + seconds`; only calls started after the warm-up are counted."""
    cell = Cell("", concurrency)
    loop = asyncio.get_running_loop()
    start = loop.time() + warmup
    end = start + seconds
    buckets = [0] * int(seconds)
    rng = random.Random(concurrency)

    async def one() -> None:
        while True:
            t0 = loop.time()
            if t0 >= end:
                return
            try:
                resp = await lookup(keys[rng.randrange(len(keys))])
                failed = not resp.descriptors and not resp.intents
            except Exception:
                failed = True
            t1 = loop.time()
            if t0 < start:
                continue
            if failed:
                cell.errors += 1
                continue
            cell.latencies.append(t1 - t0)
            second = int(t1 - start)
            if second < len(buckets):
                buckets[second] += 1

    await asyncio.gather(*(one() for _ in range(concurrency)))
    cell.per_second = buckets
    return cell


async def lookups_served(cluster: MetaCluster) -> dict[int, float]:
    """Lookups each replica has served so far (its rangekv_meta_lookups gauge)."""
    out = {}
    for i in cluster.ids:
        text = await asyncio.to_thread(fetch_metrics, cluster.children[i].metrics)
        out[i] = metric_value(text, "rangekv_meta_lookups")
    return out


async def split_into(client: MetaClient, ranges: int) -> list[RangeDescriptor]:
    """Split the first range into `ranges` committed ranges at evenly spaced keys."""
    layout = [first_range((1, 2, 3))]
    for n in range(1, ranges):
        key = b"k%05d" % (n * 100_000 // ranges)
        original = next(d for d in layout if d.contains_key(key))
        txn = await commit_split(client, original, key)
        layout.remove(original)
        layout.extend(txn.updates)
    return sorted(layout, key=lambda d: d.start_key)


async def benchmark(args: argparse.Namespace, base: Path) -> list[Cell]:
    cluster = MetaCluster(base, args=["--shutdown-grace-seconds", "1"])
    progress(f"starting 3 metarange replicas in {base}")
    await cluster.start()
    cells: list[Cell] = []
    try:
        leader = await cluster.wait_leader()
        client = cluster.client()
        layout = await split_into(client, args.ranges)
        progress(f"leader is replica {leader}; {len(layout)} committed ranges")
        follower = next(i for i in cluster.ids if i != leader)
        keys = [b"k%05d" % random.Random(7).randrange(100_000) for _ in range(4096)]
        follower_stub = cluster.stub(follower)
        modes: dict[str, Lookup] = {
            "consistent": lambda k: client.lookup_range(k, prefetch=args.prefetch, consistent=True),
            "inconsistent": lambda k: client.lookup_range(
                k, prefetch=args.prefetch, consistent=False
            ),
            f"inconsistent-follower(r{follower})": lambda k: follower_stub.LookupRange(
                meta_pb2.LookupRangeRequest(
                    key=k, prefetch=args.prefetch, mode=meta_pb2.LOOKUP_MODE_INCONSISTENT
                ),
                timeout=5,
            ),
        }
        for mode, lookup in modes.items():
            for c in args.concurrency:
                before = await lookups_served(cluster)
                cell = await closed_loop(lookup, keys, c, args.seconds)
                after = await lookups_served(cluster)
                cell.mode = mode
                cell.served = {i: after[i] - before[i] for i in cluster.ids}
                cells.append(cell)
                progress(
                    f"{mode:<28} c={c:<3} {cell.rate:7.0f} lookups/s  p50 {cell.pct(0.5):6.2f} ms"
                    f"  p99 {cell.pct(0.99):6.2f} ms  errors {cell.errors}"
                )
        await client.close()
    finally:
        await cluster.close()
    return cells


def table(cells: list[Cell], leader_note: str) -> str:
    head = (
        f"| {'mode':<28} | conc | lookups/s (median) | p50 ms | p99 ms | errors "
        f"| served by r1/r2/r3 |"
    )
    rule = "|" + "|".join("-" * (len(part)) for part in head.split("|")[1:-1]) + "|"
    rows = [head, rule]
    for c in cells:
        served = "/".join(f"{c.served.get(i, 0):.0f}" for i in (1, 2, 3))
        rows.append(
            f"| {c.mode:<28} | {c.concurrency:>4} | {c.rate:>18.0f} | {c.pct(0.5):>6.2f} "
            f"| {c.pct(0.99):>6.2f} | {c.errors:>6} | {served:>18} |"
        )
    return "\n".join([*rows, leader_note])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell")
    parser.add_argument(
        "--concurrency",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 16],
        help="comma-separated coroutine counts",
    )
    parser.add_argument("--ranges", type=int, default=64, help="committed ranges to create")
    parser.add_argument(
        "--prefetch", type=int, default=8, help="descriptors after the covering one"
    )
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="metarange-bench-") as tmp:
        cells = asyncio.run(benchmark(args, Path(tmp)))
    note = (
        f"\n{len(cells)} cells x {args.seconds:.0f} s; {args.ranges} ranges, prefetch "
        f"{args.prefetch}; one MetaClient in this process; 'served by' counts every call "
        f"of the cell, warm-up included.\n{os.cpu_count()} CPUs; 1-min load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (other work on the "
        f"machine skews the figures)."
    )
    print(table(cells, note))


if __name__ == "__main__":
    main()
