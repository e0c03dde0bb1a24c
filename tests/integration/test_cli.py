"""The `rangekv` CLI verbs, run as subprocesses against one `rangekv dev` cluster.

What a user and a script rely on: human output by default, `--json` that
parses, one-line errors on stderr with exit status 1 (2 for usage), and the
admin verbs (`ranges`, `nodes`, `transfer-lease`) agreeing with the cluster.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dev_process import DevCluster, rangekv

from rangekv.v1 import kv_pb2, kv_pb2_grpc


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    c = DevCluster(tmp_path_factory.mktemp("cli") / "data")
    try:
        yield c.start()
    finally:
        c.close()


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    return result.stdout


def one_error_line(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The failure contract: status `code`, exactly one `rangekv: ...` line on stderr."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("rangekv: "), lines[0]
    return lines[0]


def test_put_get_del(cluster: DevCluster) -> None:
    a = ["--addr", cluster.addr, "--data", str(cluster.data)]
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


def test_cas(cluster: DevCluster) -> None:
    a = ["--addr", cluster.addr, "--data", str(cluster.data)]
    assert ok(rangekv("cas", "cli/cas", "v1", "--expect-absent", *a)).strip() == "OK"
    failed = rangekv("cas", "cli/cas", "v2", "--expect-absent", *a)
    assert "cas failed: current value is v1" in one_error_line(failed)
    failed = rangekv("cas", "cli/cas", "v2", "--expect", "nope", "--json", *a)
    assert failed.returncode == 1
    assert json.loads(failed.stdout) == {"key": "cli/cas", "succeeded": False, "current": "v1"}
    swapped = json.loads(ok(rangekv("cas", "cli/cas", "v2", "--expect", "v1", "--json", *a)))
    assert swapped["succeeded"] is True
    assert ok(rangekv("get", "cli/cas", *a)).strip() == "v2"


def test_scan(cluster: DevCluster) -> None:
    keys = [f"cli/scan/{i:03d}".encode() for i in range(25)]

    async def load() -> None:
        async with cluster.client_channels()(cluster.addr) as ch:
            req = kv_pb2.BatchRequest(
                requests=[
                    kv_pb2.BatchRequestItem(put=kv_pb2.PutRequest(key=k, value=b"v\t" + k))
                    for k in keys
                ]
            )
            await kv_pb2_grpc.KVStub(ch).Batch(req, timeout=30)

    asyncio.run(load())
    a = ["--addr", cluster.addr, "--data", str(cluster.data)]
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


def test_ranges_and_nodes(cluster: DevCluster) -> None:
    d = ["--data", str(cluster.data)]
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
    meta = ",".join(cluster.addresses("meta"))
    assert (
        json.loads(
            ok(
                rangekv(
                    "ranges", "--json", "--meta", meta, "--certs-dir", str(cluster.data / "certs")
                )
            )
        )["ranges"][0]["range_id"]
        == ranges[0]["range_id"]
    )

    nodes = json.loads(ok(rangekv("nodes", "--json", *d)))["nodes"]
    assert [n["node_id"] for n in nodes] == [1, 2, 3]
    assert all(n["live"] and n["reachable"] and n["replicas"] >= 1 for n in nodes)
    assert sorted(n["address"] for n in nodes) == sorted(cluster.addresses("nodes"))
    assert ok(rangekv("nodes", *d)).splitlines()[0].split()[:3] == ["NODE", "ADDRESS", "LIVENESS"]


def _leaseholder(cluster: DevCluster, range_id: int) -> int | None:
    ranges = json.loads(ok(rangekv("ranges", "--json", "--data", str(cluster.data))))["ranges"]
    (r,) = [r for r in ranges if r["range_id"] == range_id]
    return r["leaseholder"] if r["lease_valid"] else None


def test_transfer_lease(cluster: DevCluster) -> None:
    d = ["--data", str(cluster.data)]
    deadline = time.monotonic() + 30
    holder = _leaseholder(cluster, 1)
    while holder is None:
        assert time.monotonic() < deadline, "range 1 never had a valid lease"
        holder = _leaseholder(cluster, 1)
    target = 1 + holder % 3
    moved = json.loads(
        ok(rangekv("transfer-lease", "1", str(target), "--json", "--timeout", "10", *d))
    )
    assert moved["moved"] is True and moved["to"] == target
    # The new leaseholder needs a quorum ack before its lease is valid: poll, with a deadline.
    while _leaseholder(cluster, 1) != target:
        assert time.monotonic() < deadline, "the lease did not settle on the target"
    assert "already holds the lease" in ok(rangekv("transfer-lease", "1", str(target), *d))
    # The gateway follows the move.
    ok(
        rangekv(
            "put",
            "cli/after-transfer",
            "x",
            "--addr",
            cluster.addr,
            "--data",
            str(cluster.data),
            "--timeout",
            "10",
        )
    )
    assert (
        ok(
            rangekv(
                "get", "cli/after-transfer", "--addr", cluster.addr, "--data", str(cluster.data)
            )
        ).strip()
        == "x"
    )

    err = one_error_line(rangekv("transfer-lease", "1", "9", *d))
    assert "node 9" in err
    assert "range 999" in one_error_line(rangekv("transfer-lease", "999", "1", *d))


def test_errors_are_one_line(cluster: DevCluster, tmp_path: Path) -> None:
    unreachable = one_error_line(
        rangekv("get", "k", "--addr", "127.0.0.1:1", "--timeout", "3", "--data", str(cluster.data))
    )
    assert unreachable.startswith("rangekv: UNAVAILABLE: cannot reach 127.0.0.1:1"), unreachable
    empty = one_error_line(
        rangekv("put", "", "v", "--addr", cluster.addr, "--data", str(cluster.data))
    )
    assert empty.startswith("rangekv: INVALID_ARGUMENT:"), empty
    assert one_error_line(
        rangekv("get", "zz", "--hex", "--addr", cluster.addr, "--data", str(cluster.data)), code=2
    )
    usage = rangekv(
        "cas", "k", "v", "--addr", cluster.addr, "--data", str(cluster.data)
    )  # neither --expect nor --expect-absent
    assert usage.returncode == 2
    assert rangekv("no-such-verb").returncode == 2
    no_layout = one_error_line(rangekv("ranges", "--data", str(tmp_path)))
    assert "--meta" in no_layout

    split = rangekv("split", "m", "--data", str(cluster.data))
    if split.returncode != 0:  # AdminSplit arrives with a later issue
        assert one_error_line(split).startswith("rangekv: UNIMPLEMENTED:")


def test_bench(cluster: DevCluster) -> None:
    result = rangekv(
        "bench",
        "--addr",
        cluster.addr,
        "--data",
        str(cluster.data),
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
                cluster.addr,
                "--data",
                str(cluster.data),
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
                cluster.addr,
                "--data",
                str(cluster.data),
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
def test_bench_through_the_client_library(cluster: DevCluster, client: str) -> None:
    """`--client stream` (KV/Stream through the gateway) and `--client direct` (routing in
    the bench's process, the meta range found from --data) measure the same way."""
    result = json.loads(
        ok(
            rangekv(
                "bench",
                "--addr",
                cluster.addr,
                "--data",
                str(cluster.data),
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
