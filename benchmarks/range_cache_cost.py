"""What the gateway's descriptor cache costs per routed operation, in process.

    python benchmarks/range_cache_cost.py [--ranges 1,64] [--ops 2000] [--rounds 7]

Every operation the gateway routes asks its `RangeCache` three things: the entry
covering the key (`hit`), then, once a replica answered, rule V (`maybe_confirm`)
and rule L3 (`maybe_learn_leaseholder`). This times exactly that sequence on a
cache filled with `--ranges` committed ranges that split the keyspace evenly,
each with a known leaseholder, for keys spread over all of them: no meta range,
no gRPC, no event loop. It prints the median over `--rounds` rounds of
microseconds per operation for each range count.

Why a figure of its own: in the full path these calls are a few percent to a
fifth of the gateway's CPU (more on the streaming path, where no per-call gRPC
cost hides them), too little to see through the noise of a cluster benchmark
but enough to matter; this shows a change to the cache by itself.
"""

from __future__ import annotations

import argparse
import statistics
import time

from rangekv.common.descriptors import RangeDescriptor, ReplicaDescriptor
from rangekv.gateway.cache_types import CacheEntry
from rangekv.gateway.range_cache import RangeCache


async def _never(*_args: object) -> object:
    raise AssertionError("the benchmark's cache never looks anything up")


def filled_cache(ranges: int, keys: int) -> tuple[RangeCache, ReplicaDescriptor]:
    """A cache holding `ranges` ranges over keys k00000..k{keys}, each led by node 1."""
    replicas = tuple(ReplicaDescriptor(n, n) for n in (1, 2, 3))
    cache = RangeCache(_never, _never, lambda *_: None)  # type: ignore[arg-type]
    bounds = [b""] + [b"k%05d" % (i * keys // ranges) for i in range(1, ranges)] + [b""]
    for i in range(ranges):
        d = RangeDescriptor(i + 1, bounds[i], bounds[i + 1], replicas, 3, 4)
        cache.maybe_insert(CacheEntry(d, replicas[0], "n1", 5))
    return cache, replicas[0]


def per_op_us(cache: RangeCache, leaseholder: ReplicaDescriptor, keys: list[bytes]) -> float:
    started = time.perf_counter()
    for key in keys:
        found = cache.hit(key)
        assert found is not None
        _entry, token = found
        cache.maybe_confirm(token)
        cache.maybe_learn_leaseholder(token, leaseholder, "n1", 5)
    return (time.perf_counter() - started) / len(keys) * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ranges", default="1,64", help="range counts to measure, comma-separated")
    p.add_argument("--ops", type=int, default=2000, help="operations per round")
    p.add_argument("--rounds", type=int, default=7, help="rounds per range count")
    args = p.parse_args()
    span = 10_000
    keys = [b"k%05d" % (i * 7919 % span) for i in range(args.ops)]
    print("ranges  hit+confirm+learn, us/op (median)  min..max")
    for ranges in (int(r) for r in args.ranges.split(",")):
        cache, leaseholder = filled_cache(ranges, span)
        per_op_us(cache, leaseholder, keys)  # warm up
        rounds = [per_op_us(cache, leaseholder, keys) for _ in range(args.rounds)]
        print(
            f"{ranges:>6}  {statistics.median(rounds):>33.2f}  "
            f"{min(rounds):.2f}..{max(rounds):.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
