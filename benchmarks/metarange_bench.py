"""Range lookups per second against a 3-replica meta range (run by hand, not in CI).

    python benchmarks/metarange_bench.py [--seconds 5] [--concurrency 1,16]
                                         [--ranges 64] [--prefetch 8]

Starts three `rangekv metarange` processes in a temp dir (the test kit's
cluster, tests/testkit, meta range only), splits the keyspace into `--ranges`
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
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from closed_loop import Cell, closed_loop, progress
from testkit.cluster import META_ONLY, Cluster, running_cluster
from testkit.meta import MetaReplicas, commit_split
from testkit.metrics import metric_value

from rangekv.common.descriptors import RangeDescriptor, first_range
from rangekv.metarange.client import MetaClient
from rangekv.v1 import meta_pb2

Lookup = Callable[[bytes], Awaitable[meta_pb2.LookupRangeResponse]]


async def lookup_cell(
    lookup: Lookup, keys: list[bytes], concurrency: int, seconds: float, mode: str
) -> Cell:
    """`concurrency` closed loops of lookups of random keys (see closed_loop.py)."""
    rng = random.Random(concurrency)

    async def call(_c: int, _i: int) -> bool:
        resp = await lookup(keys[rng.randrange(len(keys))])
        return bool(resp.descriptors or resp.intents)

    return await closed_loop(call, concurrency, seconds, mode)


async def lookups_served(cluster: Cluster) -> dict[int, float]:
    """Lookups each replica has served so far (its rangekv_meta_lookups gauge)."""
    out = {}
    for i in cluster.meta_ids:
        text = await cluster.metrics(cluster.meta_replica(i))
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
    progress(f"starting 3 metarange replicas in {base}")
    cells: list[Cell] = []
    async with (
        running_cluster(base, META_ONLY, say=progress) as cluster,
        MetaReplicas(cluster) as replicas,
    ):
        leader = await replicas.wait_leader()
        client = replicas.client()
        layout = await split_into(client, args.ranges)
        progress(f"leader is replica {leader}; {len(layout)} committed ranges")
        follower = next(i for i in replicas.ids if i != leader)
        keys = [b"k%05d" % random.Random(7).randrange(100_000) for _ in range(4096)]
        follower_stub = replicas.stub(follower)
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
                cell = await lookup_cell(lookup, keys, c, args.seconds, mode)
                after = await lookups_served(cluster)
                cell.extra.update({f"served:{i}": after[i] - before[i] for i in replicas.ids})
                cells.append(cell)
                progress(
                    f"{mode:<28} c={c:<3} {cell.rate:7.0f} lookups/s  p50 {cell.pct(0.5):6.2f} ms"
                    f"  p99 {cell.pct(0.99):6.2f} ms  errors {cell.errors}"
                )
        await client.close()
    return cells


def table(cells: list[Cell], leader_note: str) -> str:
    head = (
        f"| {'mode':<28} | conc | lookups/s (median) | p50 ms | p99 ms | errors "
        f"| served by r1/r2/r3 |"
    )
    rule = "|" + "|".join("-" * (len(part)) for part in head.split("|")[1:-1]) + "|"
    rows = [head, rule]
    for c in cells:
        served = "/".join(f"{c.extra.get(f'served:{i}', 0):.0f}" for i in (1, 2, 3))
        rows.append(
            f"| {c.label:<28} | {c.clients:>4} | {c.rate:>18.0f} | {c.pct(0.5):>6.2f} "
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
