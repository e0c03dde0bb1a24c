"""Cost of one metric record: OpenTelemetry's synchronous SDK vs rangekv.common.metrics.

Why this exists: the request path is CPU bound, and every process records a
handful of counters and histograms per request. Prints the median cost per
call over several rounds.

    python benchmarks/metrics_cost.py [--calls 50000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry

from rangekv.common.telemetry import Telemetry


def per_call_us(fn: Callable[[int], None], calls: int, rounds: int) -> float:
    costs = []
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(calls):
            fn(i)
        costs.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(costs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    provider = MeterProvider(
        metric_readers=[
            PrometheusMetricReader(registry=CollectorRegistry(), scope_info_enabled=False)
        ]
    )
    meter = provider.get_meter("bench")
    sdk_counter = meter.create_counter("rangekv_bench_ops")
    sdk_histogram = meter.create_histogram("rangekv_bench_seconds", unit="s")
    attrs = {"method": "Put", "code": "OK"}

    telemetry = Telemetry("bench")
    counter = telemetry.counter("rangekv_bench_ops", "ops", labels=("method", "code"))
    histogram = telemetry.histogram("rangekv_bench_seconds", "latency", labels=("method", "code"))
    bound_counter = counter.bind(method="Put", code="OK")
    bound_histogram = histogram.bind(method="Put", code="OK")

    rows = [
        ("otel sdk counter.add", lambda i: sdk_counter.add(1, attrs)),
        ("rangekv counter.add(labels)", lambda i: counter.add(1, method="Put", code="OK")),
        ("rangekv bound counter.add", lambda i: bound_counter.add(1)),
        ("otel sdk histogram.record", lambda i: sdk_histogram.record(i * 1e-6, attrs)),
        (
            "rangekv histogram.record(labels)",
            lambda i: histogram.record(i * 1e-6, method="Put", code="OK"),
        ),
        ("rangekv bound histogram.record", lambda i: bound_histogram.record(i * 1e-6)),
    ]
    print(f"{'instrument call':36s} {'us/call (median of rounds)':>28s}")
    for name, fn in rows:
        print(f"{name:36s} {per_call_us(fn, args.calls, args.rounds):28.2f}", flush=True)
    telemetry.shutdown()
    provider.shutdown()


if __name__ == "__main__":
    main()
