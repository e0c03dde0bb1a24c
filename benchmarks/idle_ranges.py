"""What idle ranges cost: CPU and memory of a `rangekv dev` cluster at 1, 100 and 1,000 ranges.

Starts `rangekv dev` (3 metarange replicas, 3 raftnodes, 1 gateway) in a
temporary directory, then for each range count in `--ranges` (default
1,100,1000):

1. pre-splits the bench keyspace (`bench/00000000`..) into that many ranges
   with `Admin.SplitRange` calls of up to 100 keys each (each split answers once
   its right-hand range serves, so no call is retried);
2. spreads the leases: range i's lease goes to node (i mod 3) + 1
   (`Admin.TransferLease`, a few at a time);
3. lets the cluster settle (`--settle` s: idle ranges quiesce), then measures
   idle CPU over `--window` s: utime + stime of EVERY process of the cluster
   (the dev supervisor and all its descendants, from /proc/PID/stat), in cores;
   and the RSS of each process (/proc/PID/status VmRSS);
4. at 1 range and at the largest count, runs `rangekv bench --workload mixed`
   at `--clients` (64) concurrent clients over `--keys` keys (spread over every
   range) and reports ops/s and latency.

The quiescence counters (`rangekv_ranges_quiesced`, per raftnode, scraped from
the metrics endpoints) are printed beside each measurement.

Target (issue 20): 1,000 idle ranges <= 0.15 cores for the whole cluster. The
machine this runs on may be shared: idle CPU is a small number measured next to
whatever else runs, so run it on a quiet machine and read it as an upper bound.

`--quiesce-after-ticks 0` runs the same cluster with quiescence off, for comparison.

Run:  python benchmarks/idle_ranges.py [--ranges 1,100,1000] [--window 30] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from rangekv.cli.cluster import free_port
from rangekv.common.config import SecurityConfig
from rangekv.common.tls import client_channels
from rangekv.v1 import admin_pb2, admin_pb2_grpc

READY_LINE = "Stop: Ctrl-C"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SPLITS_PER_CALL = 100


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- the processes --------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds used: user + system) of a live process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK


def cluster_pids(root: int) -> list[int]:
    """`root` and all its descendants."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                parents.setdefault(st[0], []).append(int(entry))
    out, todo = [root], [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def cpu_seconds(pids: list[int]) -> float:
    return sum(st[1] for st in map(_stat, pids) if st is not None)


def rss_mib(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    found = re.search(r"VmRSS:\s+(\d+) kB", text)
    return int(found.group(1)) / 1024 if found else 0.0


def process_name(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(a.decode(errors="replace") for a in argv if a)
    for kind in ("raftnode", "metarange", "gateway"):
        if f"rangekv.{kind}" in text or f" {kind}" in text:
            node = re.search(r"--node-id[ =](\d+)|--replica-id[ =](\d+)", text)
            suffix = next((g for g in node.groups() if g), "") if node else ""
            return f"{kind}{suffix}"
    return "dev" if " dev " in f" {text} " else text[:40]


# --- the cluster ----------------------------------------------------------------------


class Dev:
    """`rangekv dev` in a directory, started and stopped by this benchmark."""

    def __init__(self, data: Path, quiesce_after_ticks: int | None = None) -> None:
        """`quiesce_after_ticks`: the raftnodes' RANGEKV_QUIESCE_AFTER_TICKS (None: default)."""
        self.data = data
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "rangekv.cli.main", "dev", "--data", str(data)]
        cmd += ["--port", str(self.port)]
        self.log = (data.parent / "dev.log").open("w")
        env = dict(os.environ)
        if quiesce_after_ticks is not None:
            env["RANGEKV_QUIESCE_AFTER_TICKS"] = str(quiesce_after_ticks)
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env
        )

    def wait_ready(self, timeout: float = 180.0) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        for line in self.proc.stdout:
            if READY_LINE in line:
                return
            if time.monotonic() > deadline:
                break
        raise RuntimeError(f"rangekv dev not ready; see {self.log.name}")

    def metrics_urls(self) -> list[str]:
        layout = json.loads((self.data / "cluster.json").read_text())
        ports = layout.get("metrics", {})
        return [f"http://127.0.0.1:{p}/metrics" for k, p in sorted(ports.items()) if "node" in k]

    def stop(self) -> None:
        self.proc.send_signal(2)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def quiesced_counts(urls: list[str]) -> list[float]:
    out = []
    for url in urls:
        try:
            body = urllib.request.urlopen(url, timeout=5).read().decode()
        except OSError:
            continue
        found = re.search(r"^rangekv_ranges_quiesced(?:\{[^}]*\})? ([0-9.e+]+)$", body, re.M)
        if found:
            out.append(float(found.group(1)))
    return out


def bench_key(i: int) -> bytes:
    return b"bench/%08d" % i


async def presplit(admin: admin_pb2_grpc.AdminStub, ranges: int, keys: int) -> int:
    """Split the keyspace into `ranges` ranges (keys already starting one are skipped)."""
    listed = await admin.ListRanges(admin_pb2.AdminListRangesRequest(limit=10_000), timeout=60)
    starts = {r.descriptor.start_key for r in listed.ranges}
    want = [bench_key(i * keys // ranges) for i in range(1, ranges)]
    todo = [k for k in want if k not in starts]
    done = 0
    for at in range(0, len(todo), SPLITS_PER_CALL):
        chunk = todo[at : at + SPLITS_PER_CALL]
        req = admin_pb2.AdminSplitRangeRequest(split_key=chunk[0], more_split_keys=chunk[1:])
        await admin.SplitRange(req, timeout=600)
        done += len(chunk)
        say(f"  split {done}/{len(todo)}")
    return done


async def spread_leases(admin: admin_pb2_grpc.AdminStub, nodes: list[int]) -> int:
    listed = await admin.ListRanges(admin_pb2.AdminListRangesRequest(limit=10_000), timeout=60)
    moves = []
    for i, r in enumerate(sorted(listed.ranges, key=lambda r: r.descriptor.start_key)):
        target = nodes[i % len(nodes)]
        if r.leaseholder_node_id != target:
            moves.append((r.descriptor.range_id, target))
    sem = asyncio.Semaphore(8)
    moved = 0

    async def move(range_id: int, target: int) -> None:
        nonlocal moved
        async with sem:
            req = admin_pb2.AdminTransferLeaseRequest(range_id=range_id, target_node_id=target)
            try:
                await admin.TransferLease(req, timeout=30)
            except Exception as exc:  # a refused transfer leaves that lease where it was
                say(f"  transfer of r{range_id} to n{target}: {exc}")
            moved += 1
            if moved % 100 == 0 or moved == len(moves):
                say(f"  leases moved {moved}/{len(moves)}")

    await asyncio.gather(*(move(r, t) for r, t in moves))
    return len(moves)


def run_bench(dev: Dev, clients: int, keys: int, duration: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "rangekv.cli.main", "bench", "--addr", dev.addr]
    cmd += ["--data", str(dev.data), "--workload", "mixed", "--concurrency", str(clients)]
    cmd += ["--keys", str(keys), "--duration", str(duration), "--json", "--progress", "never"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 300, check=False)
    if out.returncode != 0:
        tail = out.stderr.strip().splitlines()[-3:]
        say(f"  bench failed (exit {out.returncode}): {' | '.join(tail)}")
        return {"failed": out.returncode, "stderr_tail": tail, "stdout": out.stdout[-2000:]}
    return dict(json.loads(out.stdout))


def idle_figures(dev: Dev, window: float) -> dict[str, Any]:
    pids = cluster_pids(dev.proc.pid)
    before = {pid: cpu_seconds([pid]) for pid in pids}
    start = time.monotonic()
    time.sleep(window)  # the measurement window itself: nothing to wait for
    elapsed = time.monotonic() - start
    per_process = {}
    total = 0.0
    for pid in pids:
        used = cpu_seconds([pid]) - before[pid]
        total += used
        per_process[f"{process_name(pid)}[{pid}]"] = {
            "cores": round(used / elapsed, 4),
            "rss_mib": round(rss_mib(pid), 1),
        }
    return {"cores": round(total / elapsed, 4), "processes": per_process}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="rangekv-idle-"))
    dev = Dev(base / "data", args.quiesce_after_ticks)
    say(f"starting rangekv dev in {base} ...")
    dev.wait_ready()
    results: dict[str, Any] = {"ranges": {}, "bench": {}}
    opener = client_channels(SecurityConfig(certs_dir=dev.data / "certs"), "admin")
    try:
        async with opener(dev.addr) as ch:
            admin = admin_pb2_grpc.AdminStub(ch)
            nodes_resp = await admin.ListNodes(admin_pb2.AdminListNodesRequest(), timeout=30)
            nodes = sorted(n.status.node.node_id for n in nodes_resp.nodes)
            counts = [int(x) for x in args.ranges.split(",")]
            for count in counts:
                say(f"== {count} ranges: pre-splitting")
                t0 = time.monotonic()
                splits = await presplit(admin, count, args.keys)
                split_s = time.monotonic() - t0
                say(f"== {count} ranges: spreading leases over nodes {nodes}")
                moved = await spread_leases(admin, nodes)
                if count == 1:
                    say("== 1 range: put/get bench")
                    results["bench"]["1"] = run_bench(dev, args.clients, args.keys, args.duration)
                say(f"== {count} ranges: settling {args.settle:.0f}s, then {args.window:.0f}s idle")
                await asyncio.sleep(args.settle)
                figures = idle_figures(dev, args.window)
                figures.update(
                    splits=splits,
                    split_seconds=round(split_s, 1),
                    leases_moved=moved,
                    quiesced_per_node=quiesced_counts(dev.metrics_urls()),
                )
                results["ranges"][str(count)] = figures
                say(
                    f"   idle: {figures['cores']:.3f} cores; quiesced {figures['quiesced_per_node']}"
                )
            last = str(counts[-1])
            if last != "1":
                say(f"== {last} ranges: put/get bench")
                results["bench"][last] = run_bench(dev, args.clients, args.keys, args.duration)
    finally:
        dev.stop()
    return results


def print_table(results: dict[str, Any]) -> None:
    print("ranges  idle cores  RSS MiB per process")
    for count, fig in results["ranges"].items():
        rss = ", ".join(
            f"{name.split('[')[0]}={p['rss_mib']:.0f}"
            for name, p in sorted(fig["processes"].items())
        )
        print(f"{count:>6}  {fig['cores']:>10.3f}  {rss}")
    for count, bench in results["bench"].items():
        print(f"bench at {count} ranges: {json.dumps(bench)[:400]}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranges", default="1,100,1000", help="range counts, ascending")
    p.add_argument("--window", type=float, default=30.0, help="idle measurement seconds")
    p.add_argument("--settle", type=float, default=10.0, help="seconds before measuring")
    p.add_argument("--clients", type=int, default=64, help="bench clients")
    p.add_argument("--keys", type=int, default=10_000, help="bench keyspace")
    p.add_argument("--duration", type=float, default=15.0, help="bench seconds")
    p.add_argument(
        "--quiesce-after-ticks",
        type=int,
        default=None,
        help="the raftnodes' idle ticks before a range quiesces (0: never; default: theirs)",
    )
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args()
    results = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
