"""Telemetry: private registries, fixed names and labels, /metrics, event-loop lag."""

from __future__ import annotations

import time
import urllib.request

import pytest

from rangekv.common.telemetry import EVENT_LOOP_LAG, Telemetry


def test_counter_with_fixed_labels_reaches_prometheus_text(telemetry: Telemetry) -> None:
    reads = telemetry.counter("rangekv_test_reads", "reads by outcome", labels=("outcome",))
    reads.add(outcome="lease")
    reads.add(2, outcome="lease")
    reads.bind(outcome="read_index").add()
    text = telemetry.metrics_text()
    assert 'rangekv_test_reads_total{outcome="lease"} 3.0' in text
    assert 'rangekv_test_reads_total{outcome="read_index"} 1.0' in text
    with pytest.raises(
        ValueError, match=r"labels \['kind'\] do not match the declared \['outcome'\]"
    ):
        reads.add(kind="x")
    with pytest.raises(ValueError, match="do not match"):
        reads.add()


def test_declarations_are_cached_and_checked(telemetry: Telemetry) -> None:
    first = telemetry.counter("rangekv_test_ops", "ops", labels=("op",))
    assert telemetry.counter("rangekv_test_ops", "ops", labels=("op",)) is first
    with pytest.raises(ValueError, match="already declared as counter"):
        telemetry.histogram("rangekv_test_ops", "ops")
    with pytest.raises(ValueError, match="already declared"):
        telemetry.counter("rangekv_test_ops", "ops", labels=("other",))
    with pytest.raises(ValueError, match="rangekv_<snake_case>"):
        telemetry.counter("ops", "ops")
    with pytest.raises(ValueError, match="leave _total off"):
        telemetry.counter("rangekv_test_ops_total", "ops")
    with pytest.raises(ValueError, match="must end in _seconds"):
        telemetry.histogram("rangekv_test_latency", "latency", unit="s")
    with pytest.raises(ValueError, match="bad label name"):
        telemetry.counter("rangekv_test_x", "x", labels=("Bad-Label",))


def test_histogram_gauges_and_up_down_counter(telemetry: Telemetry) -> None:
    latency = telemetry.histogram("rangekv_test_apply_seconds", "apply latency", labels=("lane",))
    latency.record(0.003, lane="append")
    latency.record(0.2, lane="append")
    inflight = telemetry.up_down_counter("rangekv_test_inflight", "in-flight proposals")
    inflight.add(3)
    inflight.add(-1)
    leaders = [5.0]
    telemetry.observable_gauge(
        "rangekv_test_replicas",
        "replicas by role",
        lambda: {("leader",): leaders[0], ("follower",): 2.0},
        labels=("role",),
    )
    telemetry.observable_gauge("rangekv_test_ranges", "ranges", lambda: 7)
    text = telemetry.metrics_text()
    assert 'rangekv_test_apply_seconds_bucket{lane="append",le="0.005"} 1.0' in text
    assert 'rangekv_test_apply_seconds_count{lane="append"} 2.0' in text
    assert "rangekv_test_inflight 2.0" in text
    assert 'rangekv_test_replicas{role="leader"} 5.0' in text
    assert 'rangekv_test_replicas{role="follower"} 2.0' in text
    assert "rangekv_test_ranges 7.0" in text


def test_two_telemetry_objects_do_not_share_metrics() -> None:
    a, b = Telemetry("a", node_id=1), Telemetry("b", node_id=2)
    try:
        a.counter("rangekv_test_shared", "shared name").add(5)
        b.counter("rangekv_test_shared", "shared name").add(1)
        assert "rangekv_test_shared_total 5.0" in a.metrics_text()
        assert "rangekv_test_shared_total 1.0" in b.metrics_text()
    finally:
        a.shutdown()
        b.shutdown()


def test_metrics_endpoint_serves_prometheus_text(telemetry: Telemetry) -> None:
    telemetry.counter("rangekv_test_scraped", "scraped").add(4)
    port = telemetry.serve_metrics(0)
    assert port > 0
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        body = response.read().decode()
    assert "rangekv_test_scraped_total 4.0" in body
    telemetry.stop_metrics_server()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


class _ScriptedClock:
    """Returns the scripted readings, then advances exactly one interval per call pair."""

    def __init__(self, readings: list[float]) -> None:
        self._readings = list(readings)
        self._now = readings[-1]

    def __call__(self) -> float:
        if self._readings:
            return self._readings.pop(0)
        self._now += 0.005
        return self._now


async def test_lag_is_measured_with_the_injected_clock() -> None:
    # Monitor reads the clock before (due = t + interval) and after each wake-up.
    # First wake-up: due 0.0 + 0.01, woke at 0.26 -> lag 0.25.
    clock = _ScriptedClock([0.0, 0.26])
    telemetry = Telemetry("test", clock=clock)
    try:
        monitor = telemetry.start_event_loop_monitor(interval=0.01)
        try:
            await monitor.wait_until(lambda m: m.samples >= 1, timeout=5)
            assert monitor.max_lag == pytest.approx(0.25)
        finally:
            await monitor.stop()
        assert telemetry.registry.get_sample_value(f"{EVENT_LOOP_LAG}_sum") == pytest.approx(0.25)
    finally:
        telemetry.shutdown()


async def test_blocked_loop_shows_up_in_lag_histogram(telemetry: Telemetry) -> None:
    monitor = telemetry.start_event_loop_monitor()
    try:
        await monitor.wait_until(lambda m: m.samples >= 1, timeout=5)
        before = monitor.samples
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:  # block the loop synchronously
            pass
        await monitor.wait_until(lambda m: m.samples > before, timeout=5)
        max_lag = monitor.max_lag
    finally:
        await monitor.stop()
    assert max_lag >= 0.15
    lag_sum = telemetry.registry.get_sample_value(f"{EVENT_LOOP_LAG}_sum")
    count = telemetry.registry.get_sample_value(f"{EVENT_LOOP_LAG}_count")
    assert lag_sum is not None and lag_sum >= 0.15
    assert count is not None and count >= 2
    # The blocked wake-up lands above the 0.1s bucket; the idle ones below it.
    below = telemetry.registry.get_sample_value(f"{EVENT_LOOP_LAG}_bucket", {"le": "0.1"})
    assert below is not None and below < count
