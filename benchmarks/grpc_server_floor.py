"""Which Python gRPC server costs less CPU per call: grpc.aio or the threaded one (by hand).

    python benchmarks/grpc_server_floor.py [--duration 5] [--warmup 1] [--idle 2]
                                           [--variants aio,threaded-8,threaded-64]
                                           [--concurrency 1,64] [--method get|put]
                                           [--rounds 1] [--json]

Why it exists: the gateway's client-facing hop is a Python gRPC server, and on
the target machine (2 cores shared by 7 processes) what it costs is CPU, not
headroom. This measures the floor of that hop -- a server implementing
`rangekv.v1.KV` whose `Get` and `Put` do nothing -- for each server flavour:

* `aio`          grpc.aio.server() on the default asyncio loop;
* `aio+uvloop`   the same on uvloop (only offered when uvloop is importable);
* `threaded-N`   grpc.server(ThreadPoolExecutor(max_workers=N)), with
                 maximum_concurrent_rpcs unset so that calls queue for a worker
                 instead of being rejected when more than N are in flight.

Each server runs in its own process (this script re-executed with `--serve`),
so its CPU can be read from /proc/<pid>/stat (utime + stime, all threads)
before and after the measured window. The parent drives it with a grpc.aio
client over one channel: `--concurrency` closed-loop callers, a `--warmup`
phase that is not counted, then `--duration` seconds measured. Before any
traffic the server sits idle for `--idle` seconds to show what it costs doing
nothing (poller threads, timers).

The figure that matters is server CPU microseconds per call. ops/s and the
latencies are reported too but depend on the client (which shares the machine
and is usually the bottleneck) and on whatever else is running; the load
average at start and end is printed so noisy runs can be told apart. /proc
counts CPU in clock ticks (10 ms on most kernels), so a window must hold
enough work for the per-call figure to mean something: keep --duration >= 3.
`--rounds N` repeats every cell N times, variants interleaved, and reports
medians. Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc

from rangekv.v1 import kv_pb2, kv_pb2_grpc

CLK_TCK = os.sysconf("SC_CLK_TCK")
CALL_TIMEOUT_S = 10.0


# --------------------------------------------------------------------------- server side


class AioKV(kv_pb2_grpc.KVServicer):
    """No-op KV for grpc.aio."""

    async def Get(self, request: kv_pb2.GetRequest, context: Any) -> kv_pb2.GetResponse:
        return kv_pb2.GetResponse()

    async def Put(self, request: kv_pb2.PutRequest, context: Any) -> kv_pb2.PutResponse:
        return kv_pb2.PutResponse()


class SyncKV(kv_pb2_grpc.KVServicer):
    """No-op KV for the threaded server."""

    def Get(self, request: kv_pb2.GetRequest, context: Any) -> kv_pb2.GetResponse:
        return kv_pb2.GetResponse()

    def Put(self, request: kv_pb2.PutRequest, context: Any) -> kv_pb2.PutResponse:
        return kv_pb2.PutResponse()


def announce(port: int) -> None:
    """Tell the parent which port we listen on (first stdout line)."""
    sys.stdout.write(f"PORT {port}\n")
    sys.stdout.flush()


async def serve_aio() -> None:
    server = grpc.aio.server()
    kv_pb2_grpc.add_KVServicer_to_server(AioKV(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    announce(port)
    # Run until the parent closes our stdin (or dies); add_reader costs no thread.
    loop = asyncio.get_running_loop()
    eof = asyncio.Event()
    fd = sys.stdin.fileno()

    def on_readable() -> None:
        if not os.read(fd, 4096):
            loop.remove_reader(fd)
            eof.set()

    loop.add_reader(fd, on_readable)
    await eof.wait()
    await server.stop(0)


def serve_threaded(workers: int) -> None:
    server = grpc.server(ThreadPoolExecutor(max_workers=workers), maximum_concurrent_rpcs=None)
    kv_pb2_grpc.add_KVServicer_to_server(SyncKV(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    announce(port)
    sys.stdin.buffer.read()  # until the parent closes our stdin
    server.stop(0).wait()


def serve(variant: str) -> None:
    if variant == "aio":
        asyncio.run(serve_aio())
    elif variant == "aio+uvloop":
        import uvloop

        uvloop.run(serve_aio())
    elif variant.startswith("threaded-"):
        serve_threaded(int(variant.removeprefix("threaded-")))
    else:
        raise SystemExit(f"unknown variant {variant!r}")


# --------------------------------------------------------------------------- client side


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the parenthesised comm; utime and stime are fields 14 and 15.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def self_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class ServerProcess:
    """This script re-executed with --serve VARIANT; stops when its stdin closes."""

    def __init__(self, variant: str) -> None:
        self.variant = variant
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", variant],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError(f"{variant}: server did not start (got {line!r})")
        self.port = int(line.split()[1])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return proc_cpu_seconds(self.proc.pid)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Cell:
    """One (variant, concurrency) measurement."""

    variant: str
    concurrency: int
    calls: int
    errors: int
    seconds: float
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    server_cpu_s: float
    server_us_per_call: float
    server_cpu_util: float  # server CPU seconds per wall second (1.0 = one core)
    server_idle_util: float  # same, with no traffic
    client_us_per_call: float


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    idx = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[idx]


async def drive(
    server: ServerProcess,
    channel: grpc.aio.Channel,
    concurrency: int,
    method: str,
    warmup: float,
    duration: float,
    idle_util: float,
) -> Cell:
    stub = kv_pb2_grpc.KVStub(channel)
    if method == "get":
        call = stub.Get
        request: Any = kv_pb2.GetRequest(key=b"bench-key")
    else:
        call = stub.Put
        request = kv_pb2.PutRequest(key=b"bench-key", value=b"v" * 16)

    recording = False
    stop = False
    latencies: list[float] = []
    errors = 0

    async def caller() -> None:
        nonlocal errors
        while not stop:
            start = time.perf_counter()
            try:
                await call(request, timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError:
                if recording:
                    errors += 1
                continue
            if recording:
                latencies.append(time.perf_counter() - start)

    tasks = [asyncio.create_task(caller()) for _ in range(concurrency)]
    await asyncio.sleep(warmup)
    # No await between the snapshots and the flag flips, so no call slips in between.
    cpu0, client0, t0 = server.cpu(), self_cpu_seconds(), time.perf_counter()
    recording = True
    await asyncio.sleep(duration)
    cpu1, client1, t1 = server.cpu(), self_cpu_seconds(), time.perf_counter()
    recording = False
    stop = True
    await asyncio.gather(*tasks)

    calls = len(latencies)
    elapsed = t1 - t0
    server_cpu = cpu1 - cpu0
    latencies.sort()
    return Cell(
        variant=server.variant,
        concurrency=concurrency,
        calls=calls,
        errors=errors,
        seconds=round(elapsed, 3),
        ops_per_s=calls / elapsed,
        p50_ms=percentile(latencies, 0.50) * 1e3,
        p99_ms=percentile(latencies, 0.99) * 1e3,
        server_cpu_s=server_cpu,
        server_us_per_call=server_cpu / calls * 1e6 if calls else float("nan"),
        server_cpu_util=server_cpu / elapsed,
        server_idle_util=idle_util,
        client_us_per_call=(client1 - client0) / calls * 1e6 if calls else float("nan"),
    )


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def run_variant(variant: str, args: argparse.Namespace) -> list[Cell]:
    server = ServerProcess(variant)
    cells: list[Cell] = []
    try:
        log(f"[{variant}] server pid {server.pid} on port {server.port}; idle {args.idle:g}s")
        await asyncio.sleep(0.5)  # let start-up settle before the idle window
        cpu0, t0 = server.cpu(), time.perf_counter()
        await asyncio.sleep(args.idle)
        idle_util = (server.cpu() - cpu0) / (time.perf_counter() - t0)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), timeout=10)
            for conc in args.concurrency:
                log(f"[{variant}] c={conc}: warm-up {args.warmup:g}s, measure {args.duration:g}s")
                cell = await drive(
                    server, channel, conc, args.method, args.warmup, args.duration, idle_util
                )
                log(
                    f"[{variant}] c={conc}: {cell.ops_per_s:,.0f} ops/s, "
                    f"p50 {cell.p50_ms:.2f} ms, p99 {cell.p99_ms:.2f} ms, "
                    f"server {cell.server_us_per_call:.0f} us/call "
                    f"({cell.server_cpu_util:.2f} cores), errors {cell.errors}"
                )
                cells.append(cell)
    finally:
        server.close()
    return cells


def median_cell(cells: list[Cell]) -> Cell:
    """Per-field median of the repeats of one (variant, concurrency)."""
    first = cells[0]
    out: dict[str, Any] = {"variant": first.variant, "concurrency": first.concurrency}
    for name, value in asdict(first).items():
        if name in out:
            continue
        med = statistics.median(getattr(c, name) for c in cells)
        out[name] = int(med) if isinstance(value, int) else med
    return Cell(**out)


def markdown(cells: list[Cell]) -> str:
    header = (
        "| variant | conc | ops/s | p50 ms | p99 ms | server µs/call | server cores "
        "| server idle cores | client µs/call | errors |"
    )
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in cells:
        lines.append(
            f"| {c.variant} | {c.concurrency} | {c.ops_per_s:,.0f} | {c.p50_ms:.2f} "
            f"| {c.p99_ms:.2f} | {c.server_us_per_call:.0f} | {c.server_cpu_util:.2f} "
            f"| {c.server_idle_util:.3f} | {c.client_us_per_call:.0f} | {c.errors} |"
        )
    return "\n".join(lines)


def default_variants() -> list[str]:
    variants = ["aio"]
    if importlib.util.find_spec("uvloop") is not None:
        variants.append("aio+uvloop")
    return [*variants, "threaded-8", "threaded-64"]


async def bench(args: argparse.Namespace) -> None:
    load_start = os.getloadavg()
    log(
        f"cpus {os.cpu_count()}, loadavg {load_start[0]:.2f} {load_start[1]:.2f} "
        f"{load_start[2]:.2f}; variants {','.join(args.variants)}; "
        f"concurrency {','.join(map(str, args.concurrency))}; method {args.method}"
    )
    by_key: dict[tuple[str, int], list[Cell]] = {}
    for rnd in range(args.rounds):
        # Rotate the order each round so no variant always runs first or last.
        shift = rnd % len(args.variants)
        order = args.variants[shift:] + args.variants[:shift]
        if args.rounds > 1:
            log(f"round {rnd + 1}/{args.rounds}: {','.join(order)}")
        for variant in order:
            for cell in await run_variant(variant, args):
                by_key.setdefault((cell.variant, cell.concurrency), []).append(cell)
    cells = [
        median_cell(by_key[(v, c)])
        for v in args.variants
        for c in args.concurrency
        if (v, c) in by_key
    ]
    load_end = os.getloadavg()

    if args.json:
        print(
            json.dumps(
                {
                    "python": platform.python_version(),
                    "grpcio": grpc.__version__,
                    "cpus": os.cpu_count(),
                    "loadavg_start": load_start,
                    "loadavg_end": load_end,
                    "method": args.method,
                    "duration_s": args.duration,
                    "warmup_s": args.warmup,
                    "rounds": args.rounds,
                    "cells": [asdict(c) for c in cells],
                },
                indent=2,
            )
        )
        return
    print(
        f"grpcio {grpc.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} cpus, method {args.method}, {args.duration:g}s/cell"
        + (f", median of {args.rounds} rounds" if args.rounds > 1 else "")
    )
    print(
        f"loadavg start {' '.join(f'{x:.2f}' for x in load_start)}, "
        f"end {' '.join(f'{x:.2f}' for x in load_end)}"
    )
    print()
    print(markdown(cells))


def parse_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", metavar="VARIANT", help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=1.0, help="uncounted seconds per cell")
    parser.add_argument("--idle", type=float, default=2.0, help="idle seconds per server")
    parser.add_argument(
        "--variants",
        type=parse_list,
        default=None,
        help="comma-separated: aio, aio+uvloop, threaded-N (default: all available)",
    )
    parser.add_argument(
        "--concurrency",
        type=lambda s: [int(x) for x in parse_list(s)],
        default=[1, 64],
        help="comma-separated in-flight calls (default 1,64)",
    )
    parser.add_argument("--method", choices=("get", "put"), default="get")
    parser.add_argument("--rounds", type=int, default=1, help="repeat cells; report medians")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()

    if args.serve:
        serve(args.serve)
        return
    if args.variants is None:
        args.variants = default_variants()
    if "aio+uvloop" in args.variants and importlib.util.find_spec("uvloop") is None:
        parser.error("aio+uvloop needs uvloop installed")
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
