"""`rangekv bench`: a closed-loop load generator against a gateway.

N concurrent loops (`--concurrency`) on grpc.aio channels each issue one
operation, wait for its answer, and issue the next, until `--duration` seconds
or `--ops` operations, whichever comes first. Closed-loop on purpose: the
latency it reports is what a client waiting on each answer sees, and ops/s at
concurrency N is the throughput N such clients get.

Workloads: `put` (random keys of a keyspace of `--keys`), `get` (the keyspace
is written first with Batch calls, so gets find values) and `mixed`
(`--read-fraction` gets, the rest puts). A progress bar goes to stderr (~5
updates a second, on a terminal or with --progress always); the final table
(or `--json`) goes to stdout.

The client shares the machine with the cluster it measures: its own CPU cost
per call counts. `--channels` spreads the loops over several HTTP/2
connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from rangekv.cli.kv import (
    DEFAULT_ADDR,
    DEFAULT_DATA,
    CLIError,
    add_security,
    channel_opener,
    fail,
    rpc_error_line,
)
from rangekv.v1 import kv_pb2, kv_pb2_grpc

PRELOAD_BATCH = 200
CHANNEL_OPTIONS = (("grpc.use_local_subchannel_pool", 1),)


@dataclass
class OpStats:
    """Latencies (ns) of the successful operations of one kind, and failures by code."""

    latencies: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def summary(self, elapsed: float) -> dict[str, Any]:
        lat = sorted(self.latencies)
        n = len(lat)

        def pct(q: float) -> float | None:
            if not n:
                return None
            return round(lat[min(n - 1, int(q * n))] / 1e6, 3)

        return {
            "ops": n,
            "ops_per_s": round(n / elapsed, 1) if elapsed > 0 else 0.0,
            "latency_ms": {
                "mean": round(sum(lat) / n / 1e6, 3) if n else None,
                "p50": pct(0.50),
                "p99": pct(0.99),
                "p99.9": pct(0.999),
                "max": round(lat[-1] / 1e6, 3) if n else None,
            },
            "errors": sum(self.errors.values()),
            "errors_by_code": dict(self.errors),
        }


@dataclass
class Bench:
    """One run: its parameters, shared counters, and per-operation stats."""

    workload: str
    concurrency: int
    duration: float
    max_ops: int
    value_size: int
    keys: int
    read_fraction: float
    timeout: float
    stats: dict[str, OpStats] = field(default_factory=dict)
    issued: int = 0
    done: int = 0
    failed: int = 0
    stopping: bool = False
    started: float = 0.0
    elapsed: float = 0.0
    client_cpu: float = 0.0

    def key(self, i: int) -> bytes:
        return b"bench/%08d" % i

    def budget_left(self) -> bool:
        return not self.stopping and (self.max_ops <= 0 or self.issued < self.max_ops)

    async def loop(self, stub: kv_pb2_grpc.KVStub, seed: int) -> None:
        """One closed-loop client: one operation in flight at a time."""
        rng = random.Random(seed)
        value = os.urandom(self.value_size)
        gets = self.stats.setdefault("get", OpStats())
        puts = self.stats.setdefault("put", OpStats())
        read_fraction = {"get": 1.0, "put": 0.0}.get(self.workload, self.read_fraction)
        clock = time.perf_counter_ns
        while self.budget_left():
            self.issued += 1
            key = self.key(rng.randrange(self.keys))
            is_read = rng.random() < read_fraction
            stats = gets if is_read else puts
            t0 = clock()
            try:
                if is_read:
                    await stub.Get(kv_pb2.GetRequest(key=key), timeout=self.timeout)
                else:
                    await stub.Put(kv_pb2.PutRequest(key=key, value=value), timeout=self.timeout)
            except grpc.aio.AioRpcError as exc:
                stats.errors[exc.code().name] += 1
                self.failed += 1
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
                    # Do not spin on a cluster that is down; back off a little.
                    await asyncio.sleep(0.05)
                continue
            stats.latencies.append(clock() - t0)
            self.done += 1

    def summary(self) -> dict[str, Any]:
        total = OpStats()
        for s in self.stats.values():
            total.latencies.extend(s.latencies)
            total.errors.update(s.errors)
        return {
            "workload": self.workload,
            "concurrency": self.concurrency,
            "value_size": self.value_size,
            "keys": self.keys,
            "elapsed_s": round(self.elapsed, 3),
            **total.summary(self.elapsed),
            # This process's own CPU per operation: the share of the machine
            # the load generator took from the cluster it measures.
            "client_cpu_us_per_op": (
                round(self.client_cpu / len(total.latencies) * 1e6, 1) if total.latencies else None
            ),
            "by_op": {
                name: s.summary(self.elapsed)
                for name, s in sorted(self.stats.items())
                if s.latencies or s.errors
            },
        }


def _bar(bench: Bench, width: int = 30) -> str:
    elapsed = time.monotonic() - bench.started
    frac = min(1.0, elapsed / bench.duration) if bench.duration > 0 else 0.0
    if bench.max_ops > 0:
        frac = max(frac, min(1.0, bench.issued / bench.max_ops))
    filled = int(frac * width)
    rate = bench.done / elapsed if elapsed > 0 else 0.0
    return (
        f"\r[{'#' * filled}{'.' * (width - filled)}] {elapsed:5.1f}s  "
        f"{bench.done:>8} ops  {rate:>8.0f} ops/s  errors {bench.failed}"
    )


async def _progress(bench: Bench, stop: asyncio.Event) -> None:
    while not stop.is_set():
        sys.stderr.write(_bar(bench))
        sys.stderr.flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)
    sys.stderr.write(_bar(bench) + "\n")
    sys.stderr.flush()


async def preload(stubs: list[kv_pb2_grpc.KVStub], bench: Bench) -> None:
    """Write every key once (Batch calls), so that gets read real values."""
    value = os.urandom(bench.value_size)
    chunks = [
        range(i, min(bench.keys, i + PRELOAD_BATCH)) for i in range(0, bench.keys, PRELOAD_BATCH)
    ]
    sem = asyncio.Semaphore(4)

    async def write(n: int, chunk: range) -> None:
        req = kv_pb2.BatchRequest(
            requests=[
                kv_pb2.BatchRequestItem(put=kv_pb2.PutRequest(key=bench.key(i), value=value))
                for i in chunk
            ]
        )
        async with sem:
            await stubs[n % len(stubs)].Batch(req, timeout=max(30.0, bench.timeout))

    await asyncio.gather(*(write(n, c) for n, c in enumerate(chunks)))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    bench = Bench(
        workload=args.workload,
        concurrency=args.concurrency,
        duration=args.duration,
        max_ops=args.ops,
        value_size=args.value_size,
        keys=args.keys,
        read_fraction=args.read_fraction,
        timeout=args.timeout,
    )
    opener = channel_opener(args)
    channels = [
        opener(args.addr, CHANNEL_OPTIONS)
        for _ in range(max(1, min(args.channels, args.concurrency)))
    ]
    try:
        for ch in channels:
            await asyncio.wait_for(ch.channel_ready(), args.timeout)
    except TimeoutError:
        for ch in channels:
            await ch.close()
        raise ConnectionError(f"cannot reach {args.addr} within {args.timeout}s") from None
    stubs = [kv_pb2_grpc.KVStub(ch) for ch in channels]
    show_progress = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
    try:
        if args.workload in ("get", "mixed") and not args.no_preload:
            if show_progress:
                print(f"writing {args.keys} keys first...", file=sys.stderr, flush=True)
            await preload(stubs, bench)
        stop = asyncio.Event()
        cpu0 = time.process_time()
        bench.started = time.monotonic()
        progress = asyncio.ensure_future(_progress(bench, stop)) if show_progress else None
        loops = [
            asyncio.ensure_future(bench.loop(stubs[i % len(stubs)], seed=args.seed + i))
            for i in range(args.concurrency)
        ]
        waiter = asyncio.gather(*loops)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), args.duration)
        except TimeoutError:
            bench.stopping = True  # every loop finishes its operation in flight
            await waiter
        bench.elapsed = time.monotonic() - bench.started
        bench.client_cpu = time.process_time() - cpu0
        stop.set()
        if progress is not None:
            await progress
    finally:
        for ch in channels:
            await ch.close()
    return bench.summary()


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def format_table(result: dict[str, Any]) -> str:
    head = (
        f"workload {result['workload']}  concurrency {result['concurrency']}  "
        f"value {result['value_size']} B  keys {result['keys']}  "
        f"elapsed {result['elapsed_s']:.1f} s"
    )
    headers = ["op", "ops", "ops/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "errors"]
    rows = []
    named = [(name, s) for name, s in result["by_op"].items()]
    if len(named) != 1:
        named.append(("total", result))
    for name, s in named:
        lat = s["latency_ms"]
        rows.append(
            [
                name,
                str(s["ops"]),
                f"{s['ops_per_s']:.0f}",
                _ms(lat["p50"]),
                _ms(lat["p99"]),
                _ms(lat["p99.9"]),
                _ms(lat["max"]),
                str(s["errors"]),
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [head, ""]
    lines.append("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    if result.get("client_cpu_us_per_op") is not None:
        lines.append(f"client CPU {result['client_cpu_us_per_op']:.0f} us/op")
    errors = result.get("errors_by_code") or {}
    if errors:
        lines.append("errors: " + ", ".join(f"{k} {v}" for k, v in sorted(errors.items())))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rangekv bench", description=__doc__.splitlines()[0])
    p.add_argument("--addr", default=os.environ.get("RANGEKV_ADDR", DEFAULT_ADDR))
    p.add_argument("--workload", choices=("put", "get", "mixed"), default="put")
    p.add_argument("--concurrency", type=int, default=16, help="concurrent clients (default 16)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds (default 10)")
    p.add_argument("--ops", type=int, default=0, help="stop after N operations (default: none)")
    p.add_argument("--value-size", type=int, default=100, help="bytes per value (default 100)")
    p.add_argument("--keys", type=int, default=1000, help="keyspace size (default 1000)")
    p.add_argument("--read-fraction", type=float, default=0.5, help="gets in `mixed` (default 0.5)")
    p.add_argument("--channels", type=int, default=1, help="gRPC connections (default 1)")
    p.add_argument("--no-preload", action="store_true", help="do not write the keyspace first")
    p.add_argument("--progress", choices=("auto", "always", "never"), default="auto")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=5.0, help="per-operation deadline (s)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument(
        "--data",
        default=DEFAULT_DATA,
        help=f"data folder of a `rangekv dev` cluster, for its certs/ (default {DEFAULT_DATA})",
    )
    add_security(p)
    args = p.parse_args(argv)
    if args.concurrency < 1 or args.keys < 1 or args.value_size < 0 or args.duration <= 0:
        p.error("--concurrency and --keys must be >= 1, --duration > 0, --value-size >= 0")
    if not 0.0 <= args.read_fraction <= 1.0:
        p.error("--read-fraction must be in [0, 1]")
    try:
        result = asyncio.run(run(args))
    except grpc.aio.AioRpcError as exc:
        fail(rpc_error_line(exc, args.addr))
        return 1
    except (ConnectionError, OSError) as exc:
        fail(f"UNAVAILABLE: {exc}")
        return 1
    except CLIError as exc:
        fail(exc.message)
        return exc.code
    if args.json:
        print(json.dumps(result))
    else:
        print(format_table(result))
    return 0 if result["ops"] else 1


__all__ = ["Bench", "OpStats", "format_table", "main", "run"]
