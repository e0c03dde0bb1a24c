"""rangekv beside a 3-member etcd on this machine: one load generator, interleaved runs, medians.

    python benchmarks/compare_etcd.py                       # rangekv --insecure, as etcd runs
    python benchmarks/compare_etcd.py --secure              # rangekv with mutual TLS
    python benchmarks/compare_etcd.py --seconds 5 --rounds 3 --clients 1,64 --paths unary,node,stream,direct

What runs: etcd from Debian's `etcd-server` package (installed with apt-get when
missing, if this process may; else the script says why and exits 0), three
members on loopback ports with etcd's defaults (an fsync per raft write); and a
`rangekv dev`-like cluster (3 metarange replicas, 3 raftnodes, 1 gateway; the
FSM sync mode is the default) started by the script under --data. Both are
stopped at the end.

The load: `rangekv bench`'s closed loop (rangekv.cli.bench.measure), N clients
each waiting for its answer before the next, 100-byte values over 10,000 keys
(read workloads preload every key first), all requests to etcd's leader or to
rangekv's gateway. Puts, and linearizable gets (etcd: a Range that is not
serializable; rangekv: a Get at the default consistency). Paths of rangekv:
`unary` (one gRPC call per operation, like the etcd client here), `node`
(the same unary calls to the KV API of the raftnode holding the lease of the
bench's first key, as etcd's are sent to its leader: no gateway hop), `stream`
(rangekv.client over KV/Stream) and `direct` (rangekv.client routing in the
load generator's process, no gateway).

Phases: first the cluster as it starts (the bench keys in one range), then the
bench keyspace split into --ranges ranges with their leases spread round-robin
over the nodes. Within a phase, every round runs each (op, clients) on every
system, the order rotated each round; a row's figures are medians over rounds,
and "rangekv / etcd" compares with etcd's median in the same phase.

Measured per run: ops/s and p50 latency; the CPU of every cluster process from
/proc/PID/stat (utime + stime) and of the load generator's process over the run,
per operation; per stage (client, gateway, leaseholder, followers, meta / etcd
leader, followers); and for rangekv puts, operations per raft entry and log
syncs per node per entry (the raftnodes' rangekv_raft_entries_applied_total and
rangekv_raft_log_syncs_total), and the raft messages sent between the nodes per
entry and per stream write (rangekv_raft_messages_sent_total,
rangekv_raft_frames_sent_total), and the share of those messages on the
heartbeat lane (heartbeats and their answers; votes and read-index traffic
too). The tables go to stdout, progress to stderr;
--out FILE.json keeps every sample.

Everything shares this machine's cores with the load generator (and here with
whatever else runs): figures are for comparing within one run, not absolute.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from etcd_cluster import EtcdCluster, EtcdOps, find_etcd
from testkit.cluster import Cluster, ClusterSpec

from rangekv.cli.bench import Bench, measure, preload
from rangekv.cli.bench_ops import (
    UNARY_CHANNEL_OPTIONS,
    BenchOps,
    UnaryOps,
    open_client_ops,
)
from rangekv.cli.dev import wait_until_serving
from rangekv.v1 import admin_pb2, admin_pb2_grpc, kv_pb2_grpc

CLK_TCK = os.sysconf("SC_CLK_TCK")
PATHS = ("unary", "node", "stream", "direct")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds; 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class Sample:
    """One measured run."""

    phase: str
    system: str  # etcd | rangekv
    path: str  # unary | stream | direct
    op: str
    clients: int
    ops_per_s: float
    p50_ms: float
    errors: int
    cluster_cpu_us: float
    client_cpu_us: float
    #: CPU per operation by stage (µs).
    stages: dict[str, float] = field(default_factory=dict)
    #: rangekv only: operations per raft entry, log syncs per node per entry.
    ops_per_entry: float | None = None
    syncs_per_node_entry: float | None = None
    #: rangekv puts: raft messages sent between nodes per entry, and per stream write.
    messages_per_entry: float | None = None
    messages_per_frame: float | None = None
    #: rangekv puts: the share of those on the heartbeat lane (mostly heartbeats and answers).
    heartbeat_share: float | None = None
    #: The machine's 1-minute load average when the run ended (others share it).
    load1: float = 0.0


@dataclass
class Target:
    """One system's way in (a path) and the processes whose CPU is its cluster's."""

    system: str
    path: str
    ops: list[BenchOps]
    stages: dict[str, list[int]]
    metrics: list[str] = field(default_factory=list)
    close: Callable[[], Any] | None = None

    @property
    def label(self) -> str:
        return "etcd" if self.system == "etcd" else f"rangekv {self.path}"


#: The raftnode counters a run reads before and after (summed over the nodes and labels).
RAFT_COUNTERS = (
    "rangekv_raft_entries_applied_total",
    "rangekv_raft_log_syncs_total",
    "rangekv_raft_frames_sent_total",
    "rangekv_raft_messages_sent_total",
)


#: The raft messages of the heartbeat lane, a key of `scrape`'s answer.
HEARTBEAT_MESSAGES = 'rangekv_raft_messages_sent_total{lane="heartbeat"}'


def scrape(endpoints: Sequence[str]) -> dict[str, float]:
    """RAFT_COUNTERS (and HEARTBEAT_MESSAGES) summed over the raftnodes' metrics endpoints."""
    out = dict.fromkeys((*RAFT_COUNTERS, HEARTBEAT_MESSAGES), 0.0)
    for address in endpoints:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        for line in text.splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in out:
                out[name] += float(line.split()[-1])
            if line.startswith(HEARTBEAT_MESSAGES):
                out[HEARTBEAT_MESSAGES] += float(line.split()[-1])
    return out


async def run_one(
    target: Target, phase: str, op: str, clients: int, args: argparse.Namespace
) -> Sample:
    bench = Bench(
        workload=op,
        concurrency=clients,
        duration=args.seconds,
        max_ops=0,
        value_size=args.value_size,
        keys=args.keys,
        read_fraction=1.0 if op == "get" else 0.0,
        timeout=10.0,
        client=target.path,
    )
    pids = [p for group in target.stages.values() for p in group]
    before = {p: cpu_seconds(p) for p in pids}
    raft0 = await asyncio.to_thread(scrape, target.metrics) if target.metrics else None
    await measure(bench, target.ops, seed=1, preload_keys=False, progress="never")
    after = {p: cpu_seconds(p) for p in pids}
    raft1 = await asyncio.to_thread(scrape, target.metrics) if target.metrics else None
    summary = bench.summary()
    ops = max(1, summary["ops"])
    stages = {
        name: round(sum(after[p] - before[p] for p in group) / ops * 1e6, 1)
        for name, group in target.stages.items()
    }
    stages["client"] = round(bench.client_cpu / ops * 1e6, 1)
    sample = Sample(
        phase=phase,
        system=target.system,
        path=target.path,
        op=op,
        clients=clients,
        ops_per_s=summary["ops_per_s"],
        p50_ms=summary["latency_ms"]["p50"] or 0.0,
        errors=summary["errors"],
        cluster_cpu_us=round(sum(after[p] - before[p] for p in pids) / ops * 1e6, 1),
        client_cpu_us=stages["client"],
        stages=stages,
        load1=round(os.getloadavg()[0], 2),
    )
    if raft0 is not None and raft1 is not None and op == "put":
        delta = {k: raft1[k] - raft0[k] for k in (*RAFT_COUNTERS, HEARTBEAT_MESSAGES)}
        # Every entry is applied by three replicas.
        entries = delta["rangekv_raft_entries_applied_total"] / 3
        if entries > 0:
            sample.ops_per_entry = round(summary["ops"] / entries, 2)
            syncs = delta["rangekv_raft_log_syncs_total"]
            sample.syncs_per_node_entry = round(syncs / 3 / entries, 2)
            messages = delta["rangekv_raft_messages_sent_total"]
            sample.messages_per_entry = round(messages / entries, 1)
            frames = delta["rangekv_raft_frames_sent_total"]
            sample.messages_per_frame = round(messages / frames, 1) if frames else None
            if messages:
                sample.heartbeat_share = round(delta[HEARTBEAT_MESSAGES] / messages, 2)
    return sample


# --- the clusters ------------------------------------------------------------------------


async def split_and_spread(lc: Cluster, keys: int, ranges: int) -> None:
    """Split the bench keyspace into `ranges` ranges; leases round-robin over the nodes."""
    bench = Bench("put", 1, 1, 0, 0, keys, 0.0, 10.0)
    split_keys = [bench.key(i * keys // ranges) for i in range(1, ranges)]
    async with lc.client_channels()(lc.gateways[0].address) as ch:
        admin = admin_pb2_grpc.AdminStub(ch)
        for n, key in enumerate(split_keys, 1):
            await admin.SplitRange(admin_pb2.AdminSplitRangeRequest(split_key=key), timeout=60)
            if n % 8 == 0 or n == len(split_keys):
                say(f"  split {n}/{len(split_keys)}")
        listed = await admin.ListRanges(admin_pb2.AdminListRangesRequest(), timeout=60)
        first, last = bench.key(0), bench.key(keys - 1)
        ours = [
            r.descriptor
            for r in listed.ranges
            if (not r.descriptor.end_key or r.descriptor.end_key > first)
            and r.descriptor.start_key <= last
        ]
        nodes = sorted({rep.node_id for d in ours for rep in d.replicas})
        for i, desc in enumerate(ours):
            target = nodes[i % len(nodes)]
            req = admin_pb2.AdminTransferLeaseRequest(range_id=desc.range_id, target_node_id=target)
            await admin.TransferLease(req, timeout=60)
        say(f"  {len(ours)} ranges hold the bench keys; leases spread over nodes {nodes}")


async def leaseholders(lc: Cluster, first_key: bytes) -> set[int]:
    async with lc.client_channels()(lc.gateways[0].address) as ch:
        listed = await admin_pb2_grpc.AdminStub(ch).ListRanges(
            admin_pb2.AdminListRangesRequest(), timeout=30
        )
    return {
        r.leaseholder_node_id
        for r in listed.ranges
        if r.leaseholder_node_id  # 0: no valid lease at the moment
        and r.descriptor.start_key <= first_key
        and (not r.descriptor.end_key or r.descriptor.end_key > first_key)
    }


def rangekv_stages(lc: Cluster, holders: set[int] | None) -> dict[str, list[int]]:
    def pid(child: Any) -> int:
        return int(child.proc.pid)

    stages = {
        "gateway": [pid(g) for g in lc.gateways],
        "meta": [pid(m) for m in lc.meta],
    }
    if holders:
        stages["leaseholder"] = [pid(n) for i, n in enumerate(lc.nodes, 1) if i in holders]
        stages["followers"] = [pid(n) for i, n in enumerate(lc.nodes, 1) if i not in holders]
    else:
        stages["nodes"] = [pid(n) for n in lc.nodes]
    return stages


async def rangekv_targets(
    lc: Cluster, paths: Sequence[str], holders: set[int] | None, first_holder: int
) -> list[Target]:
    """`first_holder`: the node holding the lease of the bench's first key (`node`)."""
    gateway = lc.gateways[0].address
    metrics = [n.metrics for n in lc.nodes if n.metrics]
    stages = rangekv_stages(lc, holders)
    out = []
    for path in paths:
        if path in ("unary", "node"):
            to = gateway if path == "unary" else lc.nodes[first_holder - 1].address
            ch = lc.client_channels()(to, UNARY_CHANNEL_OPTIONS)
            await asyncio.wait_for(ch.channel_ready(), 30)
            ops: BenchOps = UnaryOps(kv_pb2_grpc.KVStub(ch))
            close: Callable[[], Any] = ch.close
        else:
            client_ops = await open_client_ops(
                path,
                addr=gateway,
                meta_addrs=",".join(lc.meta_addrs),
                connections=1,
                timeout=10.0,
                security=lc.security,
                client_name="admin",
                channels=lc.node_channels() if path == "direct" else lc.client_channels(),
            )
            ops, close = client_ops, client_ops.client.close
        # Direct: the gateway's work happens in the client; the gateway process idles.
        out.append(Target("rangekv", path, [ops], stages, metrics, close))
    return out


async def etcd_target(etcd: EtcdCluster) -> Target:
    import grpc

    leader = await etcd.leader()
    ch = grpc.aio.insecure_channel(leader, options=list(UNARY_CHANNEL_OPTIONS))
    await asyncio.wait_for(ch.channel_ready(), 30)
    index = etcd.client_addresses.index(leader)
    stages = {
        "leader": [etcd.pids[index]],
        "followers": [p for i, p in enumerate(etcd.pids) if i != index],
    }
    return Target("etcd", "unary", [EtcdOps(ch)], stages, [], ch.close)


# --- the runs ----------------------------------------------------------------------------


async def run_phase(
    phase: str, targets: list[Target], args: argparse.Namespace, counter: list[int], total: int
) -> list[Sample]:
    configs = [(op, c) for op in args.ops for c in args.clients]
    for target in targets:
        if "get" in args.ops:
            say(f"[{phase}] {target.label}: writing {args.keys} keys")
            await preload(target.ops, Bench("get", 1, 1, 0, args.value_size, args.keys, 1.0, 30.0))
        if args.warmup > 0:
            say(f"[{phase}] {target.label}: warming up {args.warmup:g}s")
            warm = argparse.Namespace(**{**vars(args), "seconds": args.warmup})
            await run_one(target, phase, "put", max(args.clients), warm)
    samples = []
    for rnd in range(args.rounds):
        for op, clients in configs:
            shift = rnd % len(targets)
            for target in targets[shift:] + targets[:shift]:
                counter[0] += 1
                s = await run_one(target, phase, op, clients, args)
                samples.append(s)
                say(
                    f"[{counter[0]}/{total}] {phase} round {rnd + 1} {op} x{clients} "
                    f"{target.label}: {s.ops_per_s:.0f} ops/s, p50 {s.p50_ms:.2f} ms, cluster "
                    f"{s.cluster_cpu_us:.0f} us/op, client {s.client_cpu_us:.0f} us/op, "
                    f"load {s.load1:.2f}" + (f", {s.errors} errors" if s.errors else "")
                )
    return samples


def median_of(samples: list[Sample], **match: Any) -> dict[str, Any] | None:
    chosen = [s for s in samples if all(getattr(s, k) == v for k, v in match.items())]
    if not chosen:
        return None

    def med(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    stage_names = sorted({k for s in chosen for k in s.stages})
    return {
        "ops_per_s": med([s.ops_per_s for s in chosen]),
        "p50_ms": med([s.p50_ms for s in chosen]),
        "cluster_cpu_us": med([s.cluster_cpu_us for s in chosen]),
        "client_cpu_us": med([s.client_cpu_us for s in chosen]),
        "stages": {k: med([s.stages.get(k) for s in chosen]) for k in stage_names},
        "ops_per_entry": med([s.ops_per_entry for s in chosen]),
        "syncs_per_node_entry": med([s.syncs_per_node_entry for s in chosen]),
        "messages_per_entry": med([s.messages_per_entry for s in chosen]),
        "messages_per_frame": med([s.messages_per_frame for s in chosen]),
        "heartbeat_share": med([s.heartbeat_share for s in chosen]),
        "runs": len(chosen),
        "errors": sum(s.errors for s in chosen),
    }


def tables(samples: list[Sample], args: argparse.Namespace, phases: list[str]) -> str:
    def f(v: float | None, digits: int = 0) -> str:
        return "-" if v is None else f"{v:,.{digits}f}"

    lines = [
        "| op | clients | rangekv path | ranges | rangekv / etcd | ops/s etcd / rangekv "
        "| p50 ms etcd / rangekv | cluster CPU µs per op etcd / rangekv "
        "| client CPU µs per op etcd / rangekv | vs 1 range |",
        "|---|---:|---|---|---:|---|---|---|---|---:|",
    ]
    stage_lines = [
        "| op | clients | system | ranges | client | gateway | leaseholder | followers | nodes "
        "| meta | etcd leader | etcd followers | ops per raft entry | syncs per node per entry "
        "| raft messages per entry | raft messages per frame | heartbeat share of messages |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for phase in phases:
        for op in args.ops:
            for clients in args.clients:
                etcd = median_of(samples, phase=phase, system="etcd", op=op, clients=clients)
                for path in args.paths:
                    rk = median_of(
                        samples, phase=phase, system="rangekv", path=path, op=op, clients=clients
                    )
                    if etcd is None or rk is None:
                        continue
                    ratio = rk["ops_per_s"] / etcd["ops_per_s"] if etcd["ops_per_s"] else None
                    base = median_of(
                        samples,
                        phase=phases[0],
                        system="rangekv",
                        path=path,
                        op=op,
                        clients=clients,
                    )
                    vs = (
                        rk["ops_per_s"] / base["ops_per_s"]
                        if phase != phases[0] and base and base["ops_per_s"]
                        else None
                    )
                    lines.append(
                        f"| {'linearizable get' if op == 'get' else op} | {clients} | {path} | "
                        f"{phase} | {f(ratio, 2)} | {f(etcd['ops_per_s'])} / {f(rk['ops_per_s'])} | "
                        f"{f(etcd['p50_ms'], 2)} / {f(rk['p50_ms'], 2)} | "
                        f"{f(etcd['cluster_cpu_us'])} / {f(rk['cluster_cpu_us'])} | "
                        f"{f(etcd['client_cpu_us'])} / {f(rk['client_cpu_us'])} | {f(vs, 2)} |"
                    )
                for system, path in [("etcd", "unary")] + [("rangekv", p) for p in args.paths]:
                    m = median_of(
                        samples, phase=phase, system=system, path=path, op=op, clients=clients
                    )
                    if m is None:
                        continue
                    st = m["stages"]
                    name = "etcd" if system == "etcd" else f"rangekv {path}"
                    stage_lines.append(
                        f"| {op} | {clients} | {name} | {phase} | {f(st.get('client'))} | "
                        f"{f(st.get('gateway'))} | {f(st.get('leaseholder'))} | "
                        f"{f(st.get('followers') if system == 'rangekv' else None)} | "
                        f"{f(st.get('nodes'))} | {f(st.get('meta'))} | {f(st.get('leader'))} | "
                        f"{f(st.get('followers') if system == 'etcd' else None)} | "
                        f"{f(m['ops_per_entry'], 1)} | {f(m['syncs_per_node_entry'], 2)} | "
                        f"{f(m['messages_per_entry'], 1)} | {f(m['messages_per_frame'], 1)} | "
                        f"{f(m['heartbeat_share'], 2)} |"
                    )
    return "\n".join(
        [
            *lines,
            "",
            "CPU per operation by stage (µs; medians):",
            "",
            *stage_lines,
        ]
    )


async def main_async(args: argparse.Namespace) -> int:
    binary, why = find_etcd(not args.no_install, say)
    if binary is None:
        print(f"compare_etcd: SKIPPED: {why}", flush=True)
        return 0
    base = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="compare-etcd-"))
    if base.exists() and any(base.iterdir()):
        print(f"compare_etcd: {base} is not empty; give an empty or new --data", flush=True)
        return 2
    base.mkdir(parents=True, exist_ok=True)
    say(f"compare_etcd: data and logs under {base}")
    load_at_start = os.getloadavg()
    etcd = EtcdCluster(binary, base / "etcd", say)
    lc = Cluster(base / "rangekv", ClusterSpec(insecure=not args.secure), say=say)
    targets: list[Target] = []
    samples: list[Sample] = []
    phases = ["1 range"] + ([f"{args.ranges} ranges"] if args.ranges > 1 else [])
    per_phase = args.rounds * len(args.ops) * len(args.clients) * (1 + len(args.paths))
    counter = [0]
    try:
        etcd.start()
        await lc.start()
        await wait_until_serving(lc.gateways[0].address, lc.client_channels())
        first = Bench("put", 1, 1, 0, 0, args.keys, 0.0, 1.0).key(0)
        for phase in phases:
            if phase != phases[0]:
                say(f"compare_etcd: splitting the bench keyspace into {args.ranges} ranges")
                await split_and_spread(lc, args.keys, args.ranges)
            first_holders = await leaseholders(lc, first)
            holders = first_holders if phase == phases[0] else None
            targets = [
                await etcd_target(etcd),
                *await rangekv_targets(lc, args.paths, holders, min(first_holders, default=1)),
            ]
            samples += await run_phase(phase, targets, args, counter, per_phase * len(phases))
            for t in targets:
                if t.close is not None:
                    await t.close()
            targets = []
    finally:
        for t in targets:
            if t.close is not None:
                await t.close()
        await lc.stop()  # gracefully: the logs end as in a real shutdown
        etcd.stop()
    if not args.data:
        shutil.rmtree(base, ignore_errors=True)  # the logs of a failed run stay (raised above)
    header = (
        f"rangekv ({'mutual TLS' if args.secure else 'insecure'}) vs etcd (plaintext), "
        f"{args.value_size}-byte values over {args.keys} keys, {args.seconds:g} s runs, "
        f"medians of {args.rounds} interleaved rounds; {os.cpu_count()} cores shared by "
        "everything (noisy); load average (1, 5, 15 min) "
        f"{' '.join(f'{x:.2f}' for x in load_at_start)} at the start, "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end"
    )
    print(header + "\n\n" + tables(samples, args, phases), flush=True)
    if args.out is not None:
        args.out.write_text(
            json.dumps({"config": header, "samples": [asdict(s) for s in samples]}, indent=2)
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0, help="seconds per run (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per system")
    p.add_argument("--clients", default="1,64", help="concurrent clients (default 1,64)")
    p.add_argument("--ops", default="put,get", help="put, get (linearizable) (default both)")
    p.add_argument("--paths", default="unary,node,stream,direct", help="rangekv paths to measure")
    p.add_argument("--ranges", type=int, default=64, help="ranges of the second phase (1: none)")
    p.add_argument("--keys", type=int, default=10_000)
    p.add_argument("--value-size", type=int, default=100)
    p.add_argument("--secure", action="store_true", help="rangekv with mutual TLS")
    p.add_argument("--no-install", action="store_true", help="never apt-get install etcd")
    p.add_argument("--data", help="folder for data and logs (default: a new temporary one)")
    p.add_argument("--out", type=Path, help="write every sample as JSON")
    args = p.parse_args(argv)
    args.clients = [int(c) for c in str(args.clients).split(",") if c]
    args.ops = [o for o in str(args.ops).split(",") if o]
    args.paths = [x for x in str(args.paths).split(",") if x]
    if any(o not in ("put", "get") for o in args.ops) or any(x not in PATHS for x in args.paths):
        p.error(f"--ops takes put,get and --paths {','.join(PATHS)}")
    if args.rounds < 1 or args.seconds <= 0 or not args.clients or min(args.clients) < 1:
        p.error("--rounds >= 1, --seconds > 0, --clients >= 1")
    started = time.monotonic()
    code = asyncio.run(main_async(args))
    say(f"compare_etcd: done in {time.monotonic() - started:.0f}s")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
