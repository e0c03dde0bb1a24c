"""`rangekv bench`: a closed-loop load generator against a gateway.

N concurrent loops (`--concurrency`) on grpc.aio channels each issue one
operation, wait for its answer, and issue the next, until `--duration` seconds
or `--ops` operations, whichever comes first. Closed-loop on purpose: the
latency it reports is what a client waiting on each answer sees, and ops/s at
concurrency N is the throughput N such clients get.

Workloads: `put` (random keys of a keyspace of `--keys`), `get` (the keyspace
is written first with Batch calls, so gets find values) and `mixed`
(`--read-fraction` gets, the rest puts). A progress bar goes to stderr (~5
updates a second; rich on a terminal, a plain line with --progress always
elsewhere); the final table (rich on a terminal, plain text when piped, or
`--json`) goes to stdout. Latency percentiles come from HdrHistograms.

`--out FILE.json` keeps the figures plus a timeline (throughput, p50 and p99
per `--interval` seconds); `--plot FILE.png` draws that timeline (needs
matplotlib: `pip install 'rangekv[plot]'`).

The client shares the machine with the cluster it measures: its own CPU cost
per call counts. `--channels` spreads the loops over several HTTP/2
connections.

`--client` picks the path (rangekv.cli.bench_ops): `unary` (one gRPC call per
operation, the default), `stream` (rangekv.client: operations multiplexed on
KV/Stream through the gateway) or `direct` (rangekv.client routing in this
process straight to the leaseholders; the meta range from `--meta-addrs` or
`--data`'s cluster.json, and a node certificate when secure). The TLS client
certificate's name is `--client-name` here.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from hdrh.histogram import HdrHistogram
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from rangekv.cli.bench_ops import (
    CLIENTS,
    UNARY_CHANNEL_OPTIONS,
    BenchOps,
    UnaryOps,
    error_code,
    open_client_ops,
)
from rangekv.cli.bench_report import format_table, report, table_rows, write_out
from rangekv.cli.kv import (
    DEFAULT_ADDR,
    DEFAULT_DATA,
    CLIError,
    add_security,
    channel_opener,
    fail,
    rpc_error_line,
    security,
)
from rangekv.cli.output import Output
from rangekv.cli.plot import plot_missing, plot_run
from rangekv.common import errors as E
from rangekv.v1 import kv_pb2_grpc

PRELOAD_BATCH = 200
#: Most timeline windows a run may have (--duration / --interval), so --out stays bounded.
MAX_WINDOWS = 100_000


#: Latencies are recorded in microseconds, from 1 us to 60 s, to 3 significant digits.
LOWEST_US = 1
HIGHEST_US = 60_000_000
DIGITS = 3


def _histogram(digits: int = DIGITS) -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, digits)


def _record(hist: HdrHistogram, latency_ns: int) -> None:
    hist.record_value(min(HIGHEST_US, max(LOWEST_US, latency_ns // 1000)))


def _ms(hist: HdrHistogram, percentile: float) -> float:
    return round(hist.get_value_at_percentile(percentile) / 1000, 3)


@dataclass
class OpStats:
    """Latencies of the successful operations of one kind (an HdrHistogram), failures by code.

    An HdrHistogram keeps every latency within 0.1% in a fixed few hundred KiB,
    however long the run, instead of a list of every sample.
    """

    histogram: HdrHistogram = field(default_factory=_histogram)
    errors: Counter[str] = field(default_factory=Counter)

    def record(self, latency_ns: int) -> None:
        _record(self.histogram, latency_ns)

    def merge(self, other: OpStats) -> None:
        self.histogram.add(other.histogram)
        self.errors.update(other.errors)

    def summary(self, elapsed: float) -> dict[str, Any]:
        h = self.histogram
        n = int(h.get_total_count())
        return {
            "ops": n,
            "ops_per_s": round(n / elapsed, 1) if elapsed > 0 else 0.0,
            "latency_ms": {
                "mean": round(h.get_mean_value() / 1000, 3) if n else None,
                "p50": _ms(h, 50) if n else None,
                "p99": _ms(h, 99) if n else None,
                "p99.9": _ms(h, 99.9) if n else None,
                "max": round(h.get_max_value() / 1000, 3) if n else None,
            },
            "errors": sum(self.errors.values()),
            "errors_by_code": dict(self.errors),
        }


@dataclass
class Timeline:
    """Throughput and latency percentiles per `interval` seconds of a run, for --out and --plot.

    Records arrive in completion order (one event loop, one clock), so a window
    is summarised as soon as a record lands in a later one, and only the current
    window keeps a histogram (2 significant digits: a plot needs no more).
    """

    interval: float = 1.0
    windows: list[dict[str, Any]] = field(default_factory=list)
    _index: int = 0
    _current: HdrHistogram = field(default_factory=lambda: _histogram(2))
    _errors: int = 0

    def record(self, at: float, latency_ns: int | None) -> None:
        """An operation that finished `at` seconds into the run (None latency: it failed)."""
        index = max(0, int(at / self.interval))
        while index > self._index:
            self._close()
        if latency_ns is None:
            self._errors += 1
        else:
            _record(self._current, latency_ns)

    def _close(self) -> None:
        h = self._current
        n = int(h.get_total_count())
        self.windows.append(
            {
                "t_s": round((self._index + 1) * self.interval, 3),
                "ops": n,
                "ops_per_s": round(n / self.interval, 1),
                "p50_ms": _ms(h, 50) if n else None,
                "p99_ms": _ms(h, 99) if n else None,
                "errors": self._errors,
            }
        )
        h.reset()
        self._errors = 0
        self._index += 1

    def finish(self, elapsed: float) -> list[dict[str, Any]]:
        """Close every window up to `elapsed` (the last one may be partial) and return them."""
        while self._index * self.interval < elapsed:
            last_fraction = min(1.0, (elapsed - self._index * self.interval) / self.interval)
            self._close()
            if last_fraction < 1.0 and self.windows:
                # A partial last window: its rate is over the time it covered.
                w = self.windows[-1]
                w["t_s"] = round(elapsed, 3)
                w["ops_per_s"] = round(w["ops"] / (last_fraction * self.interval), 1)
        return self.windows


@dataclass
class Bench:
    """One run: its parameters, shared counters, per-operation stats and the timeline."""

    workload: str
    concurrency: int
    duration: float
    max_ops: int
    value_size: int
    keys: int
    read_fraction: float
    timeout: float
    interval: float = 1.0
    #: The path measured (rangekv.cli.bench_ops.CLIENTS, or another name a script uses).
    client: str = "unary"
    #: The clock latencies and the timeline are measured with (nanoseconds).
    clock_ns: Callable[[], int] = time.perf_counter_ns
    stats: dict[str, OpStats] = field(default_factory=dict)
    timeline: Timeline = field(default_factory=Timeline)
    issued: int = 0
    done: int = 0
    failed: int = 0
    stopping: bool = False
    started_ns: int = 0
    elapsed: float = 0.0
    client_cpu: float = 0.0

    def __post_init__(self) -> None:
        self.timeline = Timeline(self.interval)

    def key(self, i: int) -> bytes:
        return b"bench/%08d" % i

    def budget_left(self) -> bool:
        return not self.stopping and (self.max_ops <= 0 or self.issued < self.max_ops)

    def since_start(self) -> float:
        return (self.clock_ns() - self.started_ns) / 1e9

    async def loop(self, ops: BenchOps, seed: int) -> None:
        """One closed-loop client: one operation in flight at a time."""
        rng = random.Random(seed)
        value = rng.randbytes(self.value_size)
        gets = self.stats.setdefault("get", OpStats())
        puts = self.stats.setdefault("put", OpStats())
        read_fraction = {"get": 1.0, "put": 0.0}.get(self.workload, self.read_fraction)
        clock = self.clock_ns
        while self.budget_left():
            self.issued += 1
            key = self.key(rng.randrange(self.keys))
            is_read = rng.random() < read_fraction
            stats = gets if is_read else puts
            t0 = clock()
            try:
                if is_read:
                    await ops.get(key, self.timeout)
                else:
                    await ops.put(key, value, self.timeout)
            except (grpc.aio.AioRpcError, E.RangeKVError) as exc:
                code = error_code(exc) or "UNKNOWN"
                stats.errors[code] += 1
                self.failed += 1
                self.timeline.record((clock() - self.started_ns) / 1e9, None)
                if code in ("UNAVAILABLE", "RESOURCE_EXHAUSTED"):
                    # Do not spin on a cluster that is down; back off a little.
                    await asyncio.sleep(0.05)
                continue
            t1 = clock()
            stats.record(t1 - t0)
            self.timeline.record((t1 - self.started_ns) / 1e9, t1 - t0)
            self.done += 1

    def summary(self) -> dict[str, Any]:
        """The figures `--json` prints (a stable format: scripts depend on it)."""
        total = OpStats()
        for s in self.stats.values():
            total.merge(s)
        ops = int(total.histogram.get_total_count())
        return {
            "workload": self.workload,
            "client": self.client,
            "concurrency": self.concurrency,
            "value_size": self.value_size,
            "keys": self.keys,
            "elapsed_s": round(self.elapsed, 3),
            **total.summary(self.elapsed),
            # This process's own CPU per operation: the share of the machine
            # the load generator took from the cluster it measures.
            "client_cpu_us_per_op": (round(self.client_cpu / ops * 1e6, 1) if ops else None),
            "by_op": {
                name: s.summary(self.elapsed)
                for name, s in sorted(self.stats.items())
                if s.histogram.get_total_count() or s.errors
            },
        }


def _bar(bench: Bench, width: int = 30) -> str:
    """The plain progress line (`--progress always` when stderr is not a terminal)."""
    elapsed = bench.since_start()
    frac = _fraction(bench, elapsed)
    filled = int(frac * width)
    rate = bench.done / elapsed if elapsed > 0 else 0.0
    return (
        f"\r[{'#' * filled}{'.' * (width - filled)}] {elapsed:5.1f}s  "
        f"{bench.done:>8} ops  {rate:>8.0f} ops/s  errors {bench.failed}"
    )


def _fraction(bench: Bench, elapsed: float) -> float:
    frac = min(1.0, elapsed / bench.duration) if bench.duration > 0 else 0.0
    if bench.max_ops > 0:
        frac = max(frac, min(1.0, bench.issued / bench.max_ops))
    return frac


async def _plain_progress(bench: Bench, stop: asyncio.Event) -> None:
    while not stop.is_set():
        sys.stderr.write(_bar(bench))
        sys.stderr.flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)
    sys.stderr.write(_bar(bench) + "\n")
    sys.stderr.flush()


async def _rich_progress(bench: Bench, stop: asyncio.Event) -> None:
    """A live bar on the terminal: elapsed, operations, rate and errors."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[ops]:>8} ops  {task.fields[rate]:>7.0f} ops/s"),
        TextColumn("[red]{task.fields[errors]} errors"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(bench.workload, total=1.0, ops=0, rate=0.0, errors=0)
        while True:
            elapsed = bench.since_start()
            progress.update(
                task,
                completed=_fraction(bench, elapsed),
                ops=bench.done,
                rate=bench.done / elapsed if elapsed > 0 else 0.0,
                errors=bench.failed,
            )
            if stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)


async def preload(ops: Sequence[BenchOps], bench: Bench) -> None:
    """Write every key once (in batches), so that gets read real values."""
    value = os.urandom(bench.value_size)
    chunks = [
        range(i, min(bench.keys, i + PRELOAD_BATCH)) for i in range(0, bench.keys, PRELOAD_BATCH)
    ]
    sem = asyncio.Semaphore(4)

    async def write(n: int, chunk: range) -> None:
        async with sem:
            keys = [bench.key(i) for i in chunk]
            await ops[n % len(ops)].put_many(keys, value, max(30.0, bench.timeout))

    await asyncio.gather(*(write(n, c) for n, c in enumerate(chunks)))


async def measure(
    bench: Bench, ops: Sequence[BenchOps], *, seed: int, preload_keys: bool, progress: str
) -> None:
    """Preload (for reads) and run ``bench``'s loops over ``ops`` (loop i uses ops[i % n]),
    showing progress on stderr as ``progress`` says (auto, always, never)."""
    on_terminal = sys.stderr.isatty()
    show_progress = progress == "always" or (progress == "auto" and on_terminal)
    if bench.workload in ("get", "mixed") and preload_keys:
        if show_progress:
            print(f"writing {bench.keys} keys first...", file=sys.stderr, flush=True)
        await preload(ops, bench)
    stop = asyncio.Event()
    cpu0 = time.process_time()
    bench.started_ns = bench.clock_ns()
    drawing = None
    if show_progress:
        draw = _rich_progress if on_terminal else _plain_progress
        drawing = asyncio.ensure_future(draw(bench, stop))
    loops = [
        asyncio.ensure_future(bench.loop(ops[i % len(ops)], seed=seed + i))
        for i in range(bench.concurrency)
    ]
    waiter = asyncio.gather(*loops)
    try:
        await asyncio.wait_for(asyncio.shield(waiter), bench.duration)
    except TimeoutError:
        bench.stopping = True  # every loop finishes its operation in flight
        await waiter
    bench.elapsed = bench.since_start()
    bench.client_cpu = time.process_time() - cpu0
    stop.set()
    if drawing is not None:
        await drawing


def _meta_addrs(args: argparse.Namespace) -> str:
    """--meta-addrs, else the meta range of the `rangekv dev` cluster in --data."""
    if args.meta_addrs:
        return str(args.meta_addrs)
    path = Path(args.data) / "cluster.json"
    try:
        ports = json.loads(path.read_text())["meta"].values()
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        raise CLIError(
            f"--client direct needs --meta-addrs HOST:PORT,... (or --data DIR of a "
            f"`rangekv dev` cluster; {path}: {exc})",
            code=2,
        ) from None
    return ",".join(f"127.0.0.1:{int(p)}" for p in ports)


async def run(args: argparse.Namespace) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One run against `args.addr`: the summary and the timeline."""
    bench = Bench(
        workload=args.workload,
        concurrency=args.concurrency,
        duration=args.duration,
        max_ops=args.ops,
        value_size=args.value_size,
        keys=args.keys,
        read_fraction=args.read_fraction,
        timeout=args.timeout,
        interval=args.interval,
        client=args.client,
    )
    connections = max(1, min(args.channels, args.concurrency))
    if args.client != "unary":
        try:
            client_ops = await open_client_ops(
                args.client,
                addr=args.addr,
                meta_addrs=_meta_addrs(args) if args.client == "direct" else "",
                connections=connections,
                timeout=args.timeout,
                security=security(args),
                client_name=args.client_name,
            )
        except E.Unavailable as exc:
            raise ConnectionError(exc.message) from None
        try:
            await measure(
                bench,
                [client_ops],
                seed=args.seed,
                preload_keys=not args.no_preload,
                progress=args.progress,
            )
        finally:
            await client_ops.client.close()
        return bench.summary(), bench.timeline.finish(bench.elapsed)
    opener = channel_opener(args)
    channels = [opener(args.addr, UNARY_CHANNEL_OPTIONS) for _ in range(connections)]
    try:
        for ch in channels:
            await asyncio.wait_for(ch.channel_ready(), args.timeout)
    except TimeoutError:
        for ch in channels:
            await ch.close()
        raise ConnectionError(f"cannot reach {args.addr} within {args.timeout}s") from None
    try:
        ops = [UnaryOps(kv_pb2_grpc.KVStub(ch)) for ch in channels]
        await measure(
            bench, ops, seed=args.seed, preload_keys=not args.no_preload, progress=args.progress
        )
    finally:
        for ch in channels:
            await ch.close()
    return bench.summary(), bench.timeline.finish(bench.elapsed)


def main(argv: Sequence[str] | None = None) -> int:  # noqa: C901 -- the CLI verb's flow: parse, run, print, write --out/--plot
    p = argparse.ArgumentParser(prog="rangekv bench", description=__doc__.splitlines()[0])
    p.add_argument("--addr", default=os.environ.get("RANGEKV_ADDR", DEFAULT_ADDR))
    p.add_argument("--workload", choices=("put", "get", "mixed"), default="put")
    p.add_argument(
        "--client",
        choices=CLIENTS,
        default="unary",
        help="unary: a gRPC call per operation (default); stream: rangekv.client over "
        "KV/Stream; direct: rangekv.client routing in-process to the leaseholders",
    )
    p.add_argument(
        "--meta-addrs",
        default=os.environ.get("RANGEKV_CLIENT_META_ADDRS", ""),
        help="metarange replicas HOST:PORT,... for --client direct (default: from --data)",
    )
    p.add_argument("--concurrency", type=int, default=16, help="concurrent clients (default 16)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds (default 10)")
    p.add_argument("--ops", type=int, default=0, help="stop after N operations (default: none)")
    p.add_argument("--value-size", type=int, default=100, help="bytes per value (default 100)")
    p.add_argument("--keys", type=int, default=1000, help="keyspace size (default 1000)")
    p.add_argument("--read-fraction", type=float, default=0.5, help="gets in `mixed` (default 0.5)")
    p.add_argument(
        "--channels",
        type=int,
        default=1,
        help="gRPC connections to the gateway (unary, stream; default 1)",
    )
    p.add_argument("--no-preload", action="store_true", help="do not write the keyspace first")
    p.add_argument("--progress", choices=("auto", "always", "never"), default="auto")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=5.0, help="per-operation deadline (s)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument(
        "--out", type=Path, help="also write the figures and the per-interval timeline as JSON"
    )
    p.add_argument(
        "--plot", type=Path, help="draw throughput and p50/p99 over time into a PNG file"
    )
    p.add_argument(
        "--interval", type=float, default=1.0, help="timeline resolution in seconds (default 1)"
    )
    p.add_argument(
        "--data",
        default=DEFAULT_DATA,
        help=f"data folder of a `rangekv dev` cluster, for its certs/ (default {DEFAULT_DATA})",
    )
    add_security(p, client_flag="--client-name")
    args = p.parse_args(argv)
    if args.concurrency < 1 or args.keys < 1 or args.value_size < 0 or args.duration <= 0:
        p.error("--concurrency and --keys must be >= 1, --duration > 0, --value-size >= 0")
    if not 0.0 <= args.read_fraction <= 1.0:
        p.error("--read-fraction must be in [0, 1]")
    if args.interval <= 0 or args.duration / args.interval > MAX_WINDOWS:
        p.error(f"--interval must be > 0 and leave at most {MAX_WINDOWS} windows in --duration")
    if args.plot is not None:
        missing = plot_missing()
        if missing:
            fail(missing)
            return 1
    try:
        result, timeline = asyncio.run(run(args))
    except grpc.aio.AioRpcError as exc:
        fail(rpc_error_line(exc, args.addr))
        return 1
    except E.RangeKVError as exc:
        fail(f"{exc.code.name}: {exc.message}")
        return 1
    except (ConnectionError, OSError) as exc:
        fail(f"UNAVAILABLE: {exc}")
        return 1
    except CLIError as exc:
        fail(exc.message)
        return exc.code
    try:
        if args.out is not None:
            write_out(args.out, result, timeline, args.interval)
        if args.plot is not None:
            plot_run(result, timeline, args.plot)
    except OSError as exc:
        fail(f"cannot write the bench's files: {exc}")
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        report(result, Output.for_stream())
    return 0 if result["ops"] else 1


__all__ = [
    "Bench",
    "OpStats",
    "Timeline",
    "format_table",
    "main",
    "measure",
    "preload",
    "run",
    "table_rows",
    "write_out",
]
