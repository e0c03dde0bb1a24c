"""rangekv.common.metrics: cheap recording, exact exposition at scrape time."""

from __future__ import annotations

import threading

import pytest

from rangekv.common.metrics import Histogram
from rangekv.common.telemetry import Telemetry


def test_value_on_a_bound_lands_in_that_bucket() -> None:
    h = Histogram("rangekv_x_seconds", "x", (), buckets=(0.1, 1.0), clock=lambda: 0.0)
    for value in (0.1, 0.10000001, 1.0, 7.0, -1.0):
        h.record(value)
    family = h.family()
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}
    assert buckets == {"0.1": 2.0, "1.0": 4.0, "+Inf": 5.0}  # cumulative, le semantics
    count = next(s.value for s in family.samples if s.name.endswith("_count"))
    total = next(s.value for s in family.samples if s.name.endswith("_sum"))
    assert count == 5.0 and total == pytest.approx(0.1 + 0.10000001 + 1.0 + 7.0 - 1.0)


def test_bounds_must_increase() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        Histogram("rangekv_x_seconds", "x", (), buckets=(1.0, 0.5), clock=lambda: 0.0)


def test_exposition_through_the_registry(telemetry: Telemetry) -> None:
    inflight = telemetry.up_down_counter("rangekv_test_inflight", "in flight", labels=("op",))
    inflight.add(2, op="get")
    inflight.bind(op="get").add(-3)
    latency = telemetry.histogram("rangekv_test_rpc_seconds", "latency", labels=("method",))
    bound = latency.bind(method="Put")
    bound.record(0.002)
    bound.record(0.2)
    assert telemetry.registry.get_sample_value("rangekv_test_inflight", {"op": "get"}) == -1.0
    sample = telemetry.registry.get_sample_value
    assert sample("rangekv_test_rpc_seconds_count", {"method": "Put"}) == 2.0
    assert sample("rangekv_test_rpc_seconds_sum", {"method": "Put"}) == pytest.approx(0.202)
    assert sample("rangekv_test_rpc_seconds_bucket", {"method": "Put", "le": "0.0025"}) == 1.0
    with pytest.raises(ValueError, match="do not match"):
        latency.record(1.0, code="OK")


def test_records_from_many_threads_are_all_counted(telemetry: Telemetry) -> None:
    ops = telemetry.counter("rangekv_test_ops", "ops").bind()
    sizes = telemetry.histogram("rangekv_test_sizes_bytes", "sizes", unit="By").bind()

    def work() -> None:
        for _ in range(20_000):
            ops.add()
            sizes.record(100)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert telemetry.registry.get_sample_value("rangekv_test_ops_total") == 80_000
    assert telemetry.registry.get_sample_value("rangekv_test_sizes_bytes_count") == 80_000
