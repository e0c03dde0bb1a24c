"""Gateway -> node framing, A/B in one cluster: the same load through a gateway that
sends `Replica.BatchFrames` and one that sends `Replica.BatchStream`, interleaved.

    python benchmarks/frames_ab.py                      # 64 ranges, unary put and get x64
    python benchmarks/frames_ab.py --ranges 1 --rounds 5 --seconds 5

One `rangekv dev`-like cluster (--insecure) with TWO gateways: one frames (the
default), the other runs with RANGEKV_BATCH_FRAMES=0 (--framed-gateway says which:
gateway 1 also preloads the keys, so swapping them shows what that costs). The bench keyspace is
split into --ranges ranges with leases spread over the nodes; then every round
runs each op through both gateways, the order alternating. Per run: ops/s, p50,
and CPU per operation (µs, from /proc/PID/stat) of the gateway used, of the
three raftnodes together, and of the load generator; medians over rounds. The
idle gateway's CPU is not counted. The machine's load average is printed: the
figures compare the two gateways within this run, nothing more.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_etcd import cpu_seconds, say, split_and_spread
from testkit.cluster import Cluster, ClusterSpec

from rangekv.cli.bench import Bench, measure, preload
from rangekv.cli.bench_ops import UNARY_CHANNEL_OPTIONS, UnaryOps
from rangekv.cli.dev import wait_until_serving
from rangekv.v1 import kv_pb2_grpc


async def run(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="frames-ab-"))
    lc = Cluster(base, ClusterSpec(insecure=True, n_gateways=2), say=say)
    framed, unframed = (0, 1) if args.framed_gateway == 1 else (1, 0)
    lc.gateways[unframed].env = {**lc.gateways[unframed].env, "RANGEKV_BATCH_FRAMES": "0"}
    load0 = os.getloadavg()
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        await lc.start()
        for g in lc.gateways:
            await wait_until_serving(g.address, lc.client_channels())
        if args.ranges > 1:
            await split_and_spread(lc, args.keys, args.ranges)
        ops = {}
        for name, g in (("frames", lc.gateways[framed]), ("stream", lc.gateways[unframed])):
            ch = lc.client_channels()(g.address, UNARY_CHANNEL_OPTIONS)
            await asyncio.wait_for(ch.channel_ready(), 30)
            ops[name] = (UnaryOps(kv_pb2_grpc.KVStub(ch)), int(g.proc.pid))
        await preload([ops["frames"][0]], Bench("get", 1, 1, 0, 100, args.keys, 1.0, 30.0))
        nodes = [int(n.proc.pid) for n in lc.nodes]
        for rnd in range(args.rounds):
            for op in args.ops:
                order = ["frames", "stream"] if rnd % 2 == 0 else ["stream", "frames"]
                for name in order:
                    kv, gw = ops[name]
                    bench = Bench(
                        op, args.clients, args.seconds, 0, 100, args.keys,
                        1.0 if op == "get" else 0.0, 10.0,
                    )  # fmt: skip
                    before = {p: cpu_seconds(p) for p in [gw, *nodes]}
                    await measure(bench, [kv], seed=rnd, preload_keys=False, progress="never")
                    after = {p: cpu_seconds(p) for p in [gw, *nodes]}
                    s = bench.summary()
                    n = max(1, s["ops"])
                    row = {
                        "ops_per_s": s["ops_per_s"],
                        "p50_ms": s["latency_ms"]["p50"] or 0.0,
                        "gateway_us": (after[gw] - before[gw]) / n * 1e6,
                        "nodes_us": sum(after[p] - before[p] for p in nodes) / n * 1e6,
                        "client_us": bench.client_cpu / n * 1e6,
                    }
                    results.setdefault((op, name), []).append(row)
                    say(
                        f"round {rnd + 1} {op} x{args.clients} via {name}: "
                        f"{row['ops_per_s']:.0f} ops/s, p50 {row['p50_ms']:.1f} ms, gateway "
                        f"{row['gateway_us']:.0f} us/op, nodes {row['nodes_us']:.0f} us/op, "
                        f"load {os.getloadavg()[0]:.1f}"
                    )
    finally:
        await lc.stop()
    print(
        f"frames A/B: {args.ranges} range(s), {args.clients} unary clients, {args.seconds:g} s "
        f"runs, BatchFrames on gateway {args.framed_gateway} (the one that preloaded: 1), "
        f"medians of {args.rounds} interleaved rounds; load average "
        f"{' '.join(f'{x:.2f}' for x in load0)} at the start, "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end\n"
    )
    print("| op | gateway talks | ops/s | p50 ms | gateway µs/op | nodes µs/op | client µs/op |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for (op, name), rows in results.items():
        m = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(
            f"| {op} | {'BatchFrames' if name == 'frames' else 'BatchStream'} | "
            f"{m['ops_per_s']:,.0f} | {m['p50_ms']:.1f} | {m['gateway_us']:,.0f} | "
            f"{m['nodes_us']:,.0f} | {m['client_us']:,.0f} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranges", type=int, default=64)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--keys", type=int, default=10_000)
    p.add_argument("--ops", default="put,get")
    p.add_argument(
        "--framed-gateway", type=int, choices=(1, 2), default=1, help="which gateway frames"
    )
    args = p.parse_args()
    args.ops = [o for o in args.ops.split(",") if o in ("put", "get")]
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
