"""What lease moves cost the gateway: meta lookups and retries per 1,000 requests (by hand).

    python benchmarks/gateway_bench.py [--seconds 20] [--move-every 2] [--clients 16]
                                       [--write-fraction 0.1] [--keys 1000]

Starts a `LocalCluster` (3 metarange, 3 raftnodes, 2 gateways) in a temp dir,
loads `--keys` keys, then runs closed-loop clients that read (and, with
`--write-fraction`, write) random keys through both gateways while the lease
of the (only) range moves to the next node every `--move-every` seconds.

Why these figures: a gateway that trusts NotLeaseHolder hints should pay
about one redirect per client call in flight when the lease moves and no meta
lookup at all (the descriptor did not change, only the leaseholder), so
lookups per 1,000 requests should stay near zero and redirects per 1,000
requests should be of the order of (moves x concurrency) / requests. The
counters come from the gateways' Prometheus endpoints
(rangekv_gateway_meta_lookups_total, rangekv_gateway_redirects,
rangekv_gateway_retries{reason}), read before and after the measured window so
start-up and the load phase are not counted. Splits join the workload when
the splits issue lands.

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
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

import grpc
from raftnode_cluster import async_wait_for, free_ports, metric_value

from rangekv.cli.cluster import LocalCluster
from rangekv.v1 import kv_pb2, kv_pb2_grpc, replica_pb2, replica_pb2_grpc

RANGE_ID = 1
RETRY_REASONS = ("unavailable", "no_address", "range_key_mismatch", "range_not_found")


@dataclass
class Load:
    """Client-side tallies of the measured window."""

    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return self.ok + sum(self.errors.values())


def fetch_metrics(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


async def gateway_counters(cluster: LocalCluster) -> Counter[str]:
    """The gateway counters this benchmark reports, summed over both gateways."""
    out: Counter[str] = Counter()
    for gw in cluster.gateways:
        text = await asyncio.to_thread(fetch_metrics, gw.metrics)
        out["meta_lookups"] += int(metric_value(text, "rangekv_gateway_meta_lookups_total"))
        out["coalesced"] += int(metric_value(text, "rangekv_gateway_meta_lookups_coalesced_total"))
        out["cache_misses"] += int(metric_value(text, "rangekv_gateway_cache_misses_total"))
        out["redirects"] += int(metric_value(text, "rangekv_gateway_redirects"))
        for reason in RETRY_REASONS:
            out[f"retries:{reason}"] += int(
                metric_value(text, "rangekv_gateway_retries", reason=reason)
            )
    return out


async def range_info(cluster: LocalCluster, address: str) -> replica_pb2.ReplicaInfo | None:
    try:
        async with cluster.node_channels()(address) as ch:
            resp = await replica_pb2_grpc.ReplicaStub(ch).RangeInfo(
                replica_pb2.RangeInfoRequest(range_ids=[RANGE_ID]), timeout=2.0
            )
    except grpc.aio.AioRpcError:
        return None
    return resp.replicas[0] if resp.replicas else None


async def leaseholder(cluster: LocalCluster) -> int | None:
    for nid, child in zip(cluster.layout.nodes, cluster.nodes, strict=True):
        info = await range_info(cluster, child.address)
        if info is not None and info.is_leader and info.lease_valid:
            return nid
    return None


async def move_lease(cluster: LocalCluster, timeout: float = 15.0) -> float:
    """Move the lease to the next node; returns how long it took to hold there."""
    ids = list(cluster.layout.nodes)
    began = time.monotonic()
    holder = await async_wait_for(lambda: leaseholder(cluster), timeout, "a leaseholder")
    target = ids[(ids.index(holder) + 1) % len(ids)]
    async with cluster.node_channels()(cluster.nodes[ids.index(holder)].address) as ch:
        resp = await replica_pb2_grpc.ReplicaStub(ch).TransferLease(
            replica_pb2.TransferLeaseRequest(range_id=RANGE_ID, target_node_id=target),
            timeout=timeout,
        )
    if resp.HasField("error"):
        raise RuntimeError(f"TransferLease to node {target} refused: {resp.error}")

    async def moved() -> bool:
        info = await range_info(cluster, cluster.nodes[ids.index(target)].address)
        return info is not None and info.is_leader and info.lease_valid

    await async_wait_for(moved, timeout, f"node {target} to hold the lease")
    return time.monotonic() - began


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


async def bench(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        cluster = LocalCluster(
            Path(tmp), gateway_ports=free_ports(2), say=lambda line: print(line, file=sys.stderr)
        )
        try:
            await cluster.start()
            channels = [cluster.client_channels()(g.address) for g in cluster.gateways]
            stubs = [kv_pb2_grpc.KVStub(ch) for ch in channels]
            keys = [b"bench/%06d" % i for i in range(args.keys)]
            item = kv_pb2.BatchRequestItem
            for i in range(0, len(keys), 500):
                await stubs[0].Batch(
                    kv_pb2.BatchRequest(
                        requests=[
                            item(put=kv_pb2.PutRequest(key=k, value=b"v"))
                            for k in keys[i : i + 500]
                        ]
                    ),
                    timeout=30,
                )
            for kv in stubs:  # warm both caches, so the window measures moves, not start-up
                await kv.Get(kv_pb2.GetRequest(key=keys[0]), timeout=15)

            before = await gateway_counters(cluster)
            load = Load()
            stop = asyncio.Event()
            workers = [
                asyncio.create_task(client(c, stubs, keys, args.write_fraction, load, stop))
                for c in range(args.clients)
            ]
            began = time.monotonic()
            moves: list[float] = []
            try:
                while time.monotonic() - began < args.seconds:
                    await asyncio.sleep(args.move_every)  # the workload's schedule of lease moves
                    if time.monotonic() - began >= args.seconds:
                        break
                    moves.append(await move_lease(cluster))
            finally:
                stop.set()
                await asyncio.gather(*workers)
            elapsed = time.monotonic() - began
            after = await gateway_counters(cluster)
            for ch in channels:
                await ch.close()
        finally:
            await cluster.stop()

    delta = after - before
    delta.update({k: 0 for k in after if k not in delta})
    requests = load.requests
    per_k = 1000.0 / max(requests, 1)
    retries = sum(v for k, v in delta.items() if k.startswith("retries:"))
    lat = sorted(load.latencies) or [0.0]
    print(
        f"gateway_bench: {args.clients} clients over 2 gateways, {args.write_fraction:.0%} writes, "
        f"{args.keys} keys, {elapsed:.1f}s, {len(moves)} lease moves "
        f"(each held after {statistics.median(moves) if moves else 0:.2f}s median)"
    )
    print(f"  requests              {requests}  ({load.ok} ok, errors {dict(load.errors) or 0})")
    print(f"  ops/s                 {load.ok / elapsed:.0f}")
    print(
        f"  latency ms            p50 {lat[len(lat) // 2] * 1e3:.1f}  "
        f"p99 {lat[int(len(lat) * 0.99)] * 1e3:.1f}  max {lat[-1] * 1e3:.0f}"
    )
    print(
        f"  meta lookups          {delta['meta_lookups']}  = {delta['meta_lookups'] * per_k:.2f} "
        f"per 1,000 requests  (cache misses {delta['cache_misses']}, "
        f"coalesced {delta['coalesced']})"
    )
    print(
        f"  redirects (NLH)       {delta['redirects']}  = {delta['redirects'] * per_k:.2f} "
        "per 1,000 requests"
    )
    reasons = {k.split(":", 1)[1]: v for k, v in delta.items() if k.startswith("retries:") and v}
    by_reason = f"  {reasons}" if reasons else ""
    print(
        f"  other retries         {retries}  = {retries * per_k:.2f} per 1,000 requests{by_reason}"
    )
    print(
        f"  redirects + retries   {(delta['redirects'] + retries) * per_k:.2f} per 1,000 requests"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the measured window")
    parser.add_argument("--move-every", type=float, default=2.0, help="seconds between lease moves")
    parser.add_argument("--clients", type=int, default=16, help="concurrent closed-loop clients")
    parser.add_argument("--write-fraction", type=float, default=0.1, help="share of Puts")
    parser.add_argument("--keys", type=int, default=1000, help="keys loaded and read")
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
