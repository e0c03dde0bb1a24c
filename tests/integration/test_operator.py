"""What an operator with one gateway address gets, against one `rangekv dev` cluster.

- every CLI verb works with `--addr GATEWAY` alone (the Admin API on the
  gateway does the rest), and its `--json` output parses;
- `rangekv bench --plot` draws a PNG and `--out` keeps the timeline;
- the Grafana dashboard asks only for metrics the processes really export
  (scraped from the live cluster's metrics endpoints);
- the metrics endpoints sit on the ports kept in cluster.json.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from dev_process import DevCluster, ok, one_error_line, rangekv

from rangekv.cli.cluster import LISTEN_PORTS
from rangekv.cli.main import VERBS
from rangekv.v1 import kv_pb2, kv_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "helm" / "rangekv" / "dashboards" / "rangekv.json"
CONFIGMAP = ROOT / "helm" / "rangekv" / "templates" / "dashboard-configmap.yaml"
#: Verbs that run a process rather than talk to a cluster.
PROCESS_VERBS = {"raftnode", "metarange", "gateway", "dev"}
#: Verbs that work on local files, not on a cluster (checked on their own below).
LOCAL_VERBS = {"cert"}


def certs(dev_cluster: DevCluster) -> list[str]:
    """The dev cluster's admin client certificates (who the CLI is, not where)."""
    return ["--certs-dir", str(dev_cluster.data / "certs")]


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result))


def test_every_verb_with_addr_alone(dev_cluster: DevCluster, tmp_path: Path) -> None:
    """Each verb gets `--addr` and nothing else that names the cluster (no --data, no
    --meta); the client's identity comes from its certificates, as any client's would."""
    a = ["--addr", dev_cluster.addr, *certs(dev_cluster), "--json", "--timeout", "20"]
    ran: set[str] = set()

    def cli(verb: str, *args: str) -> subprocess.CompletedProcess[str]:
        ran.add(verb)
        # An empty working directory: no ./data/dev to fall back on.
        return subprocess.run(
            [*_exe(), verb, *args, *a], capture_output=True, text=True, timeout=120, cwd=tmp_path
        )

    assert as_json(cli("put", "op/a", "1"))["version"]["wall_time"] > 0
    assert as_json(cli("get", "op/a"))["value"] == "1"
    assert as_json(cli("cas", "op/a", "2", "--expect", "1"))["succeeded"] is True
    rows = [json.loads(line) for line in ok(cli("scan", "--prefix", "op/")).splitlines()]
    assert rows == [{"key": "op/a", "value": "2"}]
    assert as_json(cli("del", "op/a"))["deleted"] is True

    nodes = as_json(cli("nodes"))["nodes"]
    assert [n["node_id"] for n in nodes] == [1, 2, 3]
    assert all(n["live"] and n["reachable"] for n in nodes)
    assert sorted(n["address"] for n in nodes) == sorted(dev_cluster.addresses("nodes"))

    split = as_json(cli("split", "op/m"))
    left, right = split["left"]["range_id"], split["right"]["range_id"]
    assert left != right
    ranges = as_json(cli("ranges"))
    assert ranges["unreachable_nodes"] == []
    (mine,) = [r for r in ranges["ranges"] if r["range_id"] == right]
    assert mine["start_key"] == "op/m" and sorted(x["node_id"] for x in mine["replicas"]) == [
        1,
        2,
        3,
    ]

    holder = _wait_for_leaseholder(dev_cluster, right)
    target = 1 + holder % 3
    moved = as_json(cli("transfer-lease", str(right), str(target)))
    assert moved["range_id"] == right and moved["to"] == target and moved["moved"] is True

    # Remove a follower's replica of the new range, then add it back.
    holder = _wait_for_leaseholder(dev_cluster, right)
    follower = 1 + holder % 3
    removed = as_json(cli("change-replicas", str(right), "remove", str(follower)))
    assert follower not in [r["node_id"] for r in removed["replicas"]]
    added = as_json(cli("change-replicas", str(right), "add", str(follower)))
    assert follower in [r["node_id"] for r in added["replicas"] if r["voter"]]

    # Three nodes and three replicas per range: node 3's replicas have nowhere to go, so
    # the decommission stays in progress (until its deadline), and is then called off.
    decommission = as_json(cli("decommission", "3"))
    assert decommission["node_id"] == 3 and decommission["replicas_remaining"] > 0
    assert as_json(cli("node", "recommission", "3"))["state"] == "active"

    bench = as_json(cli("bench", "--ops", "30", "--concurrency", "3", "--keys", "20"))
    assert bench["ops"] == 30 and bench["errors"] == 0

    admin_and_data = {v for v in VERBS if v not in PROCESS_VERBS | LOCAL_VERBS}
    assert ran == admin_and_data, f"verbs not exercised: {admin_and_data - ran}"
    # The local verb works on the certificate folder alone.
    listed = subprocess.run(
        [*_exe(), "cert", "list", *certs(dev_cluster)], capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0 and "admin" in listed.stdout, listed


def _exe() -> list[str]:
    import sys

    return [sys.executable, "-m", "rangekv.cli.main"]


def _wait_for_leaseholder(dev_cluster: DevCluster, range_id: int, timeout: float = 30.0) -> int:
    """The node holding a valid lease of `range_id` (a new range elects first)."""
    deadline = time.monotonic() + timeout
    while True:
        ranges = json.loads(
            ok(rangekv("ranges", "--json", "--addr", dev_cluster.addr, *certs(dev_cluster)))
        )["ranges"]
        (r,) = [r for r in ranges if r["range_id"] == range_id]
        if r["leaseholder"] and r["lease_valid"]:
            return int(r["leaseholder"])
        assert time.monotonic() < deadline, f"range {range_id} never had a valid lease: {r}"


def test_admin_errors_are_one_line_with_a_status(dev_cluster: DevCluster) -> None:
    a = ["--addr", dev_cluster.addr, *certs(dev_cluster)]
    missing = one_error_line(rangekv("transfer-lease", "999", "1", *a))
    assert missing.startswith("rangekv: NOT_FOUND: no node hosts range 999"), missing
    unknown = one_error_line(rangekv("transfer-lease", "1", "9", *a))
    assert unknown.startswith("rangekv: NOT_FOUND: node 9 is not in the registry"), unknown
    down = one_error_line(
        rangekv("ranges", "--addr", "127.0.0.1:1", *certs(dev_cluster), "--timeout", "3")
    )
    assert down.startswith("rangekv: UNAVAILABLE: cannot reach 127.0.0.1:1"), down


def test_bench_out_and_plot(dev_cluster: DevCluster, tmp_path: Path) -> None:
    png, out = tmp_path / "run.png", tmp_path / "run.json"
    result = rangekv(
        "bench",
        "--addr",
        dev_cluster.addr,
        *certs(dev_cluster),
        "--duration",
        "2",
        "--interval",
        "0.5",
        "--concurrency",
        "4",
        "--out",
        str(out),
        "--plot",
        str(png),
        timeout=120,
    )
    ok(result)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    saved = json.loads(out.read_text())
    assert saved["ops"] > 0 and saved["interval_s"] == 0.5
    timeline = saved["timeline"]
    assert len(timeline) >= 4 and sum(w["ops"] for w in timeline) == saved["ops"]
    assert any(w["p99_ms"] for w in timeline)


def _scrape(address: str) -> set[str]:
    """The sample names (`name` of `name{labels} value`) a metrics endpoint exports."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def _dashboard_queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in board["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


async def test_dashboard_queries_name_exported_metrics(dev_cluster: DevCluster) -> None:
    # Traffic first, so that the request, raft and cache histograms hold samples.
    async with dev_cluster.client_channels()(dev_cluster.addr) as ch:
        stub = kv_pb2_grpc.KVStub(ch)
        for i in range(20):
            await stub.Put(kv_pb2.PutRequest(key=b"dash/%d" % i, value=b"v"), timeout=20)
            await stub.Get(kv_pb2.GetRequest(key=b"dash/%d" % i), timeout=20)
    metrics = dev_cluster.layout()["metrics"]
    assert isinstance(metrics, dict)
    exported: set[str] = set()
    for port in metrics.values():
        exported |= _scrape(f"127.0.0.1:{port}")
    queries = _dashboard_queries()
    panels = {title for title, _ in queries}
    named = {name for _, expr in queries for name in re.findall(r"\brangekv_[a-z0-9_]+", expr)}
    missing = sorted(named - exported)
    assert not missing, f"dashboard queries name metrics no process exports: {missing}"
    assert len(panels) >= 15 and len(named) >= 15
    print(f"dashboard: {len(panels)} panels, {len(named)} metric names, all found in a live scrape")
    for required in (
        "rangekv_rpc_server_duration_seconds_count",
        "rangekv_lease_read_total",
        "rangekv_raft_persist_seconds_bucket",
        "rangekv_raft_apply_seconds_bucket",
        "rangekv_raft_dispatch_drop_total",
        "rangekv_gateway_cache_hits_total",
        "rangekv_gateway_cache_misses_total",
        "rangekv_gateway_cache_evictions_total",
        "rangekv_ranges",
        "rangekv_leases_valid",
        "rangekv_event_loop_lag_seconds_bucket",
    ):
        assert required in named, f"the dashboard has no panel over {required}"
    template = CONFIGMAP.read_text()
    assert '.Files.Get "dashboards/rangekv.json"' in template
    assert "$dashboards.enabled" in template


def test_metrics_ports_are_the_kept_ones(dev_cluster: DevCluster) -> None:
    """The ready screen's metrics endpoints are cluster.json's, below the ephemeral range."""
    assert dev_cluster.process is not None
    shown = {
        int(m)
        for m in re.findall(r"metrics http://127\.0\.0\.1:(\d+)/", dev_cluster.process.output)
    }
    kept = dev_cluster.layout()["metrics"]
    assert isinstance(kept, dict)
    assert shown == set(kept.values()) and len(shown) == 7
    assert all(p in LISTEN_PORTS for p in shown)
