"""The `rangekv` CLI verbs, run as subprocesses against one `rangekv dev` cluster.

What a user and a script rely on: human output by default, `--json` that
parses, one-line errors on stderr with exit status 1 (2 for usage), and the
admin verbs (`ranges`, `nodes`, `transfer-lease`) agreeing with the cluster.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from dev_process import DevCluster, ok, one_error_line, rangekv
from testkit.kv import load

from rangekv.v1 import kv_pb2_grpc


def test_put_get_del(dev_cluster: DevCluster) -> None:
    a = ["--addr", dev_cluster.addr, "--data", str(dev_cluster.data)]
    assert ok(rangekv("put", "cli/k1", "hello world", *a)).strip() == "OK"
    assert ok(rangekv("get", "cli/k1", *a)) == "hello world\n"
    got = json.loads(ok(rangekv("get", "cli/k1", "--json", *a)))
    assert got["found"] is True and got["value"] == "hello world"
    assert got["version"]["wall_time"] > 0
    put = json.loads(ok(rangekv("put", "cli/k1", "v2", "--json", *a)))
    assert put["version"]["wall_time"] > got["version"]["wall_time"]
    # --hex on both sides round-trips bytes that are not text.
    ok(rangekv("put", "00ff", "c3", "--hex", *a))
    assert ok(rangekv("get", "00ff", "--hex", *a)).strip() == "c3"

    assert ok(rangekv("del", "cli/k1", *a)).strip() == "deleted"
    assert json.loads(ok(rangekv("del", "cli/k1", "--json", *a)))["deleted"] is False
    missing = rangekv("get", "cli/k1", *a)
    assert one_error_line(missing) == "rangekv: not found: cli/k1"
    assert missing.stdout == ""
    missing_json = rangekv("get", "cli/k1", "--json", *a)
    assert missing_json.returncode == 1
    assert json.loads(missing_json.stdout) == {"key": "cli/k1", "found": False}


def test_cas(dev_cluster: DevCluster) -> None:
    a = ["--addr", dev_cluster.addr, "--data", str(dev_cluster.data)]
    assert ok(rangekv("cas", "cli/cas", "v1", "--expect-absent", *a)).strip() == "OK"
    failed = rangekv("cas", "cli/cas", "v2", "--expect-absent", *a)
    assert "cas failed: current value is v1" in one_error_line(failed)
    failed = rangekv("cas", "cli/cas", "v2", "--expect", "nope", "--json", *a)
    assert failed.returncode == 1
    assert json.loads(failed.stdout) == {"key": "cli/cas", "succeeded": False, "current": "v1"}
    swapped = json.loads(ok(rangekv("cas", "cli/cas", "v2", "--expect", "v1", "--json", *a)))
    assert swapped["succeeded"] is True
    assert ok(rangekv("get", "cli/cas", *a)).strip() == "v2"


async def test_scan(dev_cluster: DevCluster) -> None:
    keys = [f"cli/scan/{i:03d}".encode() for i in range(25)]
    async with dev_cluster.client_channels()(dev_cluster.addr) as ch:
        await load(kv_pb2_grpc.KVStub(ch), [(k, b"v\t" + k) for k in keys], per_batch=100)
    a = ["--addr", dev_cluster.addr, "--data", str(dev_cluster.data)]
    lines = ok(rangekv("scan", "--prefix", "cli/scan/", *a)).splitlines()
    # One key<TAB>value per line, in key order; the tab inside the value is escaped.
    assert lines == [f"{k.decode()}\tv\\t{k.decode()}" for k in keys]
    limited = ok(rangekv("scan", "--prefix", "cli/scan/", "--limit", "3", *a)).splitlines()
    assert [line.split("\t")[0] for line in limited] == [k.decode() for k in keys[:3]]
    span = ok(rangekv("scan", "cli/scan/010", "cli/scan/013", "--keys-only", *a)).split()
    assert span == ["cli/scan/010", "cli/scan/011", "cli/scan/012"]
    rows = [
        json.loads(x)
        for x in ok(rangekv("scan", "--prefix", "cli/scan/", "--json", *a)).splitlines()
    ]
    assert [r["key"] for r in rows] == [k.decode() for k in keys]
    assert rows[0]["value"] == "v\tcli/scan/000"


def test_ranges_and_nodes(dev_cluster: DevCluster) -> None:
    d = ["--data", str(dev_cluster.data)]
    table = ok(rangekv("ranges", *d)).splitlines()
    assert table[0].split() == [
        "RANGE",
        "START",
        "END",
        "REPLICAS",
        "LEASEHOLDER",
        "GEN",
        "APPLIED",
        "SIZE",
    ]
    ranges = json.loads(ok(rangekv("ranges", "--json", *d)))["ranges"]
    assert ranges and ranges[0]["start_key"] == "" and ranges[-1]["end_key"] == ""
    assert sorted(r["node_id"] for r in ranges[0]["replicas"]) == [1, 2, 3]
    # --meta works as well as the dev layout.
    meta = ",".join(dev_cluster.addresses("meta"))
    assert (
        json.loads(
            ok(
                rangekv(
                    "ranges",
                    "--json",
                    "--meta",
                    meta,
                    "--certs-dir",
                    str(dev_cluster.data / "certs"),
                )
            )
        )["ranges"][0]["range_id"]
        == ranges[0]["range_id"]
    )

    nodes = json.loads(ok(rangekv("nodes", "--json", *d)))["nodes"]
    assert [n["node_id"] for n in nodes] == [1, 2, 3]
    assert all(n["live"] and n["reachable"] and n["replicas"] >= 1 for n in nodes)
    assert sorted(n["address"] for n in nodes) == sorted(dev_cluster.addresses("nodes"))
    assert ok(rangekv("nodes", *d)).splitlines()[0].split()[:3] == ["NODE", "ADDRESS", "LIVENESS"]


def _leaseholder(dev_cluster: DevCluster, range_id: int) -> int | None:
    ranges = json.loads(ok(rangekv("ranges", "--json", "--data", str(dev_cluster.data))))["ranges"]
    (r,) = [r for r in ranges if r["range_id"] == range_id]
    return r["leaseholder"] if r["lease_valid"] else None


def test_transfer_lease(dev_cluster: DevCluster) -> None:
    d = ["--data", str(dev_cluster.data)]
    deadline = time.monotonic() + 30
    holder = _leaseholder(dev_cluster, 1)
    while holder is None:
        assert time.monotonic() < deadline, "range 1 never had a valid lease"
        holder = _leaseholder(dev_cluster, 1)
    target = 1 + holder % 3
    moved = json.loads(
        ok(rangekv("transfer-lease", "1", str(target), "--json", "--timeout", "10", *d))
    )
    assert moved["moved"] is True and moved["to"] == target
    # The new leaseholder needs a quorum ack before its lease is valid: poll, with a deadline.
    while _leaseholder(dev_cluster, 1) != target:
        assert time.monotonic() < deadline, "the lease did not settle on the target"
    assert "already holds the lease" in ok(rangekv("transfer-lease", "1", str(target), *d))
    # The gateway follows the move.
    ok(
        rangekv(
            "put",
            "cli/after-transfer",
            "x",
            "--addr",
            dev_cluster.addr,
            "--data",
            str(dev_cluster.data),
            "--timeout",
            "10",
        )
    )
    assert (
        ok(
            rangekv(
                "get",
                "cli/after-transfer",
                "--addr",
                dev_cluster.addr,
                "--data",
                str(dev_cluster.data),
            )
        ).strip()
        == "x"
    )

    err = one_error_line(rangekv("transfer-lease", "1", "9", *d))
    assert "node 9" in err
    assert "range 999" in one_error_line(rangekv("transfer-lease", "999", "1", *d))


def test_errors_are_one_line(dev_cluster: DevCluster, tmp_path: Path) -> None:
    unreachable = one_error_line(
        rangekv(
            "get", "k", "--addr", "127.0.0.1:1", "--timeout", "3", "--data", str(dev_cluster.data)
        )
    )
    assert unreachable.startswith("rangekv: UNAVAILABLE: cannot reach 127.0.0.1:1"), unreachable
    empty = one_error_line(
        rangekv("put", "", "v", "--addr", dev_cluster.addr, "--data", str(dev_cluster.data))
    )
    assert empty.startswith("rangekv: INVALID_ARGUMENT:"), empty
    assert one_error_line(
        rangekv("get", "zz", "--hex", "--addr", dev_cluster.addr, "--data", str(dev_cluster.data)),
        code=2,
    )
    usage = rangekv(
        "cas", "k", "v", "--addr", dev_cluster.addr, "--data", str(dev_cluster.data)
    )  # neither --expect nor --expect-absent
    assert usage.returncode == 2
    assert rangekv("no-such-verb").returncode == 2
    no_layout = one_error_line(rangekv("ranges", "--data", str(tmp_path)))
    assert "--meta" in no_layout

    split = rangekv("split", "m", "--data", str(dev_cluster.data))
    if split.returncode != 0:  # AdminSplit arrives with a later issue
        assert one_error_line(split).startswith("rangekv: UNIMPLEMENTED:")


def test_bench(dev_cluster: DevCluster) -> None:
    result = rangekv(
        "bench",
        "--addr",
        dev_cluster.addr,
        "--data",
        str(dev_cluster.data),
        "--duration",
        "3",
        "--concurrency",
        "8",
        timeout=60,
    )
    out = ok(result)
    lines = out.strip().splitlines()
    (at,) = [i for i, line in enumerate(lines) if line.split()[:2] == ["op", "ops"]]
    header, row = lines[at], lines[at + 1]
    assert "us/op" in lines[-1]  # the client's own CPU cost is reported
    assert header.split() == [
        "op",
        "ops",
        "ops/s",
        "p50",
        "ms",
        "p99",
        "ms",
        "p99.9",
        "ms",
        "max",
        "ms",
        "errors",
    ]
    fields = row.split()
    assert fields[0] == "put" and int(fields[1]) > 0 and float(fields[3]) > 0

    mixed = json.loads(
        ok(
            rangekv(
                "bench",
                "--addr",
                dev_cluster.addr,
                "--data",
                str(dev_cluster.data),
                "--workload",
                "mixed",
                "--duration",
                "1",
                "--concurrency",
                "4",
                "--keys",
                "50",
                "--json",
                timeout=60,
            )
        )
    )
    assert mixed["ops"] > 0 and mixed["errors"] == 0
    assert set(mixed["by_op"]) == {"get", "put"}
    lat = mixed["latency_ms"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
    bounded = json.loads(
        ok(
            rangekv(
                "bench",
                "--addr",
                dev_cluster.addr,
                "--data",
                str(dev_cluster.data),
                "--ops",
                "20",
                "--concurrency",
                "4",
                "--json",
            )
        )
    )
    assert bounded["ops"] == 20


@pytest.mark.parametrize("client", ["stream", "direct"])
def test_bench_through_the_client_library(dev_cluster: DevCluster, client: str) -> None:
    """`--client stream` (KV/Stream through the gateway) and `--client direct` (routing in
    the bench's process, the meta range found from --data) measure the same way."""
    result = json.loads(
        ok(
            rangekv(
                "bench",
                "--addr",
                dev_cluster.addr,
                "--data",
                str(dev_cluster.data),
                "--client",
                client,
                "--workload",
                "mixed",
                "--keys",
                "50",
                "--duration",
                "2",
                "--concurrency",
                "8",
                "--json",
                timeout=90,
            )
        )
    )
    assert result["client"] == client
    assert result["ops"] > 0 and result["errors"] == 0, result
    assert set(result["by_op"]) == {"get", "put"}
