"""What lease moves (and splits) cost the gateway: meta lookups and redirects per 1,000 requests.

    python benchmarks/gateway_bench.py [--seconds 20] [--move-every 2] [--split-every 0]
                                       [--clients 16] [--write-fraction 0.1] [--keys 1000]

Starts the test kit's cluster (tests/testkit: 3 metarange, 3 raftnodes, 2
gateways) in a temp dir,
loads `--keys` keys, then runs closed-loop clients that read (and, with
`--write-fraction`, write) random keys through both gateways while, every
`--move-every` seconds, the lease of a range moves to the next replica. With
`--split-every S` a range is also split every S seconds at a random key, so
the workload mixes lease moves with descriptor changes: the lease that moves
is then the one of the range owning a random key.

Why these figures: a gateway that trusts NotLeaseHolder hints should pay
about one redirect per client call in flight when the lease moves and no meta
lookup at all (the descriptor did not change, only the leaseholder), so
lookups per 1,000 requests should stay near zero and redirects per 1,000
requests should be of the order of (moves x concurrency) / requests. A split
costs each gateway a RangeKeyMismatch per range it had cached (whose
descriptors route the retry) and rarely a lookup. The counters come from the
gateways' Prometheus endpoints (rangekv_gateway_meta_lookups_total by mode,
rangekv_gateway_redirects, rangekv_gateway_retries{reason},
rangekv_gateway_backoffs{reason}, rangekv_gateway_cache_evictions_total{reason}),
read before and after the measured window so start-up and the load phase are
not counted; a counter an older gateway does not export reads as 0.

The clients run in this process and share the machine's cores with eight
server processes; on a small machine ops/s is a floor, not a ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import grpc
from testkit.cluster import ClusterSpec, running_cluster
from testkit.kv import kv_stubs, load
from testkit.metrics import gateway_counters
from testkit.replicas import Replicas

from rangekv.v1 import kv_pb2, kv_pb2_grpc

#: The gateway counters summed into the report: metric -> report key.
SUMMED = {
    "rangekv_gateway_meta_lookups_coalesced_total": "coalesced",
    "rangekv_gateway_cache_misses_total": "cache_misses",
    "rangekv_gateway_redirects": "redirects",
}
#: The labelled gateway counters summed into the report: (metric, label) -> report prefix.
LABELLED = {
    ("rangekv_gateway_retries", "reason"): "retries",
    ("rangekv_gateway_backoffs", "reason"): "backoffs",
    ("rangekv_gateway_cache_evictions_total", "reason"): "evictions",
    ("rangekv_gateway_meta_lookups_total", "mode"): "lookups",
}


@dataclass
class Load:
    """Client-side tallies of the measured window."""

    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return self.ok + sum(self.errors.values())


@dataclass
class NemesisTally:
    """What the lease mover and the splitter did during the window."""

    moves: list[float] = field(default_factory=list)
    splits: list[float] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)


# ----------------------------------------------------------------------------- the nemesis


async def move_lease(replicas: Replicas, key: bytes, nemesis: NemesisTally) -> None:
    """Move the lease of the range owning `key` to its next replica; wait until it holds."""
    began = time.monotonic()
    range_id, holder = await replicas.leaseholder_of(key)
    desc = await replicas.newest(range_id)
    if holder is None or desc is None:
        nemesis.refused["move: no leaseholder"] += 1
        return
    nodes = [r.node_id for r in desc.replicas]
    target = nodes[(nodes.index(holder) + 1) % len(nodes)]
    try:
        await replicas.transfer_lease(range_id, target, timeout=15.0)
    except TimeoutError:
        nemesis.refused["move: not held in 15 s"] += 1
        return
    nemesis.moves.append(time.monotonic() - began)


async def split_range_at(replicas: Replicas, key: bytes, nemesis: NemesisTally) -> None:
    """Split the range owning `key` at `key` (AdminSplit on its leader)."""
    began = time.monotonic()
    range_id, _leader = await replicas.owner(key)
    desc = await replicas.newest(range_id)
    if desc is None or desc.start_key == key:
        nemesis.refused["split: no range or already a boundary"] += 1
        return
    if isinstance(await replicas.split(range_id, key), str):
        nemesis.refused["split: refused"] += 1
        return
    nemesis.splits.append(time.monotonic() - began)


async def every(seconds: float, stop: asyncio.Event, action: Callable[[], Awaitable[None]]) -> None:
    """Run `action()` every `seconds` until `stop` (0: never)."""
    if seconds <= 0:
        return
    while True:
        try:
            await asyncio.wait_for(stop.wait(), seconds)  # the workload's schedule
            return
        except TimeoutError:
            pass
        try:
            await action()
        except grpc.aio.AioRpcError as err:
            print(f"  nemesis: {err.code().name}: {err.details()}", file=sys.stderr)


# ----------------------------------------------------------------------------- the load


async def client(
    cid: int,
    stubs: list[kv_pb2_grpc.KVStub],
    keys: list[bytes],
    write_fraction: float,
    load: Load,
    stop: asyncio.Event,
) -> None:
    rng = random.Random(cid)
    n = 0
    while not stop.is_set():
        n += 1
        kv = stubs[n % len(stubs)]
        key = rng.choice(keys)
        began = time.monotonic()
        try:
            if rng.random() < write_fraction:
                await kv.Put(kv_pb2.PutRequest(key=key, value=b"w%d-%d" % (cid, n)), timeout=15)
            else:
                await kv.Get(kv_pb2.GetRequest(key=key), timeout=15)
        except grpc.aio.AioRpcError as err:
            load.errors[err.code().name] += 1
        else:
            load.ok += 1
            load.latencies.append(time.monotonic() - began)


def to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


async def bench(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        async with (
            running_cluster(Path(tmp), ClusterSpec(n_gateways=2), say=to_stderr) as cluster,
            kv_stubs(cluster) as stubs,
        ):
            replicas = Replicas(cluster)
            keys = [b"bench/%06d" % i for i in range(args.keys)]
            await load(stubs[0], [(k, b"v") for k in keys])
            for kv in stubs:  # warm both caches, so the window measures moves, not start-up
                await kv.Get(kv_pb2.GetRequest(key=keys[0]), timeout=15)

            split_keys = rng.sample(keys[1:], k=len(keys) - 1)
            before = await gateway_counters(cluster, SUMMED, LABELLED)
            load_ = Load()
            nemesis = NemesisTally()
            stop = asyncio.Event()
            workers = [
                asyncio.create_task(client(c, stubs, keys, args.write_fraction, load_, stop))
                for c in range(args.clients)
            ]
            movers = [
                asyncio.create_task(
                    every(
                        args.move_every,
                        stop,
                        lambda: move_lease(replicas, rng.choice(keys), nemesis),
                    )
                ),
                asyncio.create_task(
                    every(
                        args.split_every,
                        stop,
                        lambda: split_range_at(replicas, split_keys.pop(), nemesis),
                    )
                ),
            ]
            began = time.monotonic()
            try:
                await asyncio.sleep(args.seconds)  # the measured window
            finally:
                stop.set()
                await asyncio.gather(*workers, *movers)
            elapsed = time.monotonic() - began
            after = await gateway_counters(cluster, SUMMED, LABELLED)
    report(args, load_, nemesis, after - before, elapsed)


def report(
    args: argparse.Namespace, load: Load, nemesis: NemesisTally, delta: Counter[str], elapsed: float
) -> None:
    requests = load.requests
    per_k = 1000.0 / max(requests, 1)

    def by(prefix: str) -> dict[str, int]:
        return {k.split(":", 1)[1]: v for k, v in delta.items() if k.startswith(prefix + ":") and v}

    def line(label: str, n: int, detail: dict[str, int] | str = "") -> None:
        extra = f"  {detail}" if detail else ""
        print(f"  {label:<21} {n}  = {n * per_k:.2f} per 1,000 requests{extra}")

    lat = sorted(load.latencies) or [0.0]
    parts = [
        name
        for name, on in (("lease moves", args.move_every > 0), ("splits", args.split_every > 0))
        if on
    ]
    mode = " + ".join(parts) or "no nemesis"
    print(
        f"gateway_bench ({mode}): {args.clients} clients over 2 gateways, "
        f"{args.write_fraction:.0%} writes, {args.keys} keys, {elapsed:.1f}s, "
        f"{len(nemesis.moves)} lease moves (each held after "
        f"{statistics.median(nemesis.moves) if nemesis.moves else 0:.2f}s median), "
        f"{len(nemesis.splits)} splits"
        + (f", nemesis refusals {dict(nemesis.refused)}" if nemesis.refused else "")
    )
    print(f"  requests              {requests}  ({load.ok} ok, errors {dict(load.errors) or 0})")
    print(f"  ops/s                 {load.ok / elapsed:.0f}")
    print(
        f"  latency ms            p50 {lat[len(lat) // 2] * 1e3:.1f}  "
        f"p99 {lat[int(len(lat) * 0.99)] * 1e3:.1f}  max {lat[-1] * 1e3:.0f}"
    )
    lookups = by("lookups")
    line(
        "meta lookups",
        sum(lookups.values()),
        f"{lookups or {}} (cache misses {delta['cache_misses']}, coalesced {delta['coalesced']})",
    )
    line("redirects (NLH)", delta["redirects"])
    retries = by("retries")
    line("other retries", sum(retries.values()), retries)
    backoffs = by("backoffs")
    line("backoffs", sum(backoffs.values()), backoffs)
    evictions = by("evictions")
    line("cache evictions", sum(evictions.values()), evictions)
    line("redirects + retries", delta["redirects"] + sum(retries.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the measured window")
    parser.add_argument("--move-every", type=float, default=2.0, help="seconds between lease moves")
    parser.add_argument(
        "--split-every", type=float, default=0.0, help="seconds between splits (0: no splits)"
    )
    parser.add_argument("--clients", type=int, default=16, help="concurrent closed-loop clients")
    parser.add_argument("--write-fraction", type=float, default=0.1, help="share of Puts")
    parser.add_argument("--keys", type=int, default=1000, help="keys loaded and read")
    parser.add_argument("--seed", type=int, default=1, help="seeds which range moves and splits")
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
