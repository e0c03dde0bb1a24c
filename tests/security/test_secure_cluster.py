"""A secure cluster of real processes refuses what it must and serves what it should.

Plaintext on every gRPC port, a certificate from another CA and an expired one
are refused at the handshake; a `read` client cannot Put, a `write` client
cannot split, client certificates (even `admin`) cannot call raft or the
internal Replica/Meta methods, a node certificate can; refusals say what is
missing and are counted; the plaintext health port serves health and nothing
else; swapping a node's certificate files changes what new connections see
without a restart.
"""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
import subprocess
import sys

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc
from secure_cluster import NOW, SecureCluster
from testkit.kv import rpc_error
from testkit.metrics import fetch_metrics, metric_value

from rangekv.cli.cluster import Child
from rangekv.common import certs
from rangekv.common.certs import NODE_CERT, NODE_KEY, NODE_SERVER_NAME, Role
from rangekv.common.tls import ChannelOpener, PlaintextChannels
from rangekv.v1 import (
    kv_pb2,
    kv_pb2_grpc,
    meta_pb2,
    meta_pb2_grpc,
    raft_pb2,
    raft_pb2_grpc,
    replica_pb2,
    replica_pb2_grpc,
)


async def health_check(opener: ChannelOpener, address: str) -> grpc.StatusCode:
    """OK, or the status code a Health/Check got."""
    async with opener(address) as ch:
        try:
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def test_plaintext_is_refused_on_every_port(secure_cluster: SecureCluster) -> None:
    for child in secure_cluster.lc.children:
        code = await health_check(PlaintextChannels(), child.address)
        assert code is grpc.StatusCode.UNAVAILABLE, (child.name, code)
        # The same call with a node certificate is answered.
        assert await health_check(secure_cluster.node(), child.address) is grpc.StatusCode.OK


async def test_health_port_is_plaintext_and_serves_health_only(
    secure_cluster: SecureCluster,
) -> None:
    for child in secure_cluster.lc.children:
        assert child.ready is not None and child.ready.get("tls") == "mtls", child.ready
        health = child.ready["health"]
        assert await health_check(PlaintextChannels(), health) is grpc.StatusCode.OK
        async with grpc.aio.insecure_channel(health) as ch:
            named = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="rangekv.v1.KV")
                if child in secure_cluster.lc.gateways
                else health_pb2.HealthCheckRequest(),
                timeout=5,
            )
            assert named.status == health_pb2.HealthCheckResponse.SERVING
            err = await rpc_error(
                kv_pb2_grpc.KVStub(ch).Get(kv_pb2.GetRequest(key=b"k"), timeout=5)
            )
            assert err is not None and err.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_certificate_of_another_ca_is_refused(secure_cluster: SecureCluster) -> None:
    other_ca = certs.create_ca(NOW, name="someone else's CA")
    intruder = certs.create_node(other_ca, "intruder", ["localhost"], NOW)
    # Trusting our CA but presenting theirs: the server refuses the client.
    theirs = secure_cluster.foreign("other-ca", intruder)
    # Trusting only their CA: the client refuses our servers.
    mutual = secure_cluster.foreign("other-ca-trust", intruder, ca_pem=other_ca.cert_pem)
    for child in (secure_cluster.gateway, *secure_cluster.lc.nodes, *secure_cluster.lc.meta):
        assert await health_check(theirs, child.address) is grpc.StatusCode.UNAVAILABLE
        assert await health_check(mutual, child.address) is grpc.StatusCode.UNAVAILABLE


async def test_expired_certificate_is_refused(secure_cluster: SecureCluster) -> None:
    past = NOW - datetime.timedelta(days=30)
    expired = certs.create_client(
        secure_cluster.ca, "expired", Role.ADMIN, past, not_after=NOW - datetime.timedelta(days=1)
    )
    opener = secure_cluster.foreign("expired", expired)
    for child in (secure_cluster.gateway, secure_cluster.lc.nodes[0]):
        assert await health_check(opener, child.address) is grpc.StatusCode.UNAVAILABLE


async def test_read_client_cannot_put(secure_cluster: SecureCluster) -> None:
    """On a gateway and on a storage node's own KV API alike."""
    reader = secure_cluster.client("reader", Role.READ)
    writer = secure_cluster.client("writer", Role.WRITE)
    for address in (secure_cluster.gateway.address, secure_cluster.lc.nodes[0].address):
        async with writer(address) as ch:
            await kv_pb2_grpc.KVStub(ch).Put(
                kv_pb2.PutRequest(key=b"sec/a", value=b"1"), timeout=10
            )
        async with reader(address) as ch:
            kv = kv_pb2_grpc.KVStub(ch)
            got = await kv.Get(kv_pb2.GetRequest(key=b"sec/a"), timeout=10)
            assert got.kv.value == b"1"
            for call in (
                kv.Put(kv_pb2.PutRequest(key=b"sec/a", value=b"2"), timeout=10),
                kv.Delete(kv_pb2.DeleteRequest(key=b"sec/a"), timeout=10),
                kv.Batch(kv_pb2.BatchRequest(), timeout=10),
            ):
                err = await rpc_error(call)
                assert err is not None and err.code() is grpc.StatusCode.PERMISSION_DENIED
                assert "needs role write or higher" in (err.details() or ""), err.details()
                assert "client reader (role read)" in (err.details() or ""), err.details()
            got = await kv.Get(kv_pb2.GetRequest(key=b"sec/a"), timeout=10)
            assert got.kv.value == b"1"  # nothing was written
    refused = await asyncio.to_thread(permission_refusals, secure_cluster, "/rangekv.v1.KV/Put")
    assert refused >= 1, refused
    on_node = await asyncio.to_thread(
        permission_refusals, secure_cluster, "/rangekv.v1.KV/Put", secure_cluster.lc.nodes[0]
    )
    assert on_node >= 1, on_node


async def test_read_client_sends_only_reads_on_the_stream(secure_cluster: SecureCluster) -> None:
    """KV/Stream is open to a read client, and each write on it is refused alone
    (PERMISSION_DENIED for that request, counted), never written, the stream going on."""
    reader = secure_cluster.client("reader", Role.READ)
    writer = secure_cluster.client("writer", Role.WRITE)

    def op(rid: int, **body: object) -> kv_pb2.StreamRequestItem:
        return kv_pb2.StreamRequestItem(request_id=rid, **body)  # type: ignore[arg-type]

    async with writer(secure_cluster.gateway.address) as ch:
        await kv_pb2_grpc.KVStub(ch).Put(kv_pb2.PutRequest(key=b"sec/s", value=b"1"), timeout=10)
    gets = kv_pb2.BatchRequest(
        requests=[kv_pb2.BatchRequestItem(get=kv_pb2.GetRequest(key=b"sec/s"))]
    )
    puts = kv_pb2.BatchRequest(
        requests=[kv_pb2.BatchRequestItem(put=kv_pb2.PutRequest(key=b"sec/s", value=b"3"))]
    )
    requests = [
        op(1, get=kv_pb2.GetRequest(key=b"sec/s")),
        op(2, put=kv_pb2.PutRequest(key=b"sec/s", value=b"2")),
        op(3, delete=kv_pb2.DeleteRequest(key=b"sec/s")),
        op(4, compare_and_swap=kv_pb2.CompareAndSwapRequest(key=b"sec/s", new_value=b"2")),
        op(5, batch=gets),
        op(6, batch=puts),
    ]
    async with reader(secure_cluster.gateway.address) as ch:
        kv = kv_pb2_grpc.KVStub(ch)
        call = kv.Stream(timeout=30)
        await call.write(kv_pb2.StreamRequest(requests=requests))
        await call.done_writing()
        got = {}
        while (message := await call.read()) is not grpc.aio.EOF:
            got.update({a.request_id: a for a in message.responses})
        assert await call.code() is grpc.StatusCode.OK
        assert sorted(got) == [1, 2, 3, 4, 5, 6]
        assert got[1].get.kv.value == b"1" and got[5].batch.responses[0].get.found
        for rid in (2, 3, 4, 6):
            status = got[rid].error
            assert status.code == grpc.StatusCode.PERMISSION_DENIED.value[0], got[rid]
            assert "needs role write or higher" in status.message, status.message
            assert "client reader (role read)" in status.message, status.message
        after = await kv.Get(kv_pb2.GetRequest(key=b"sec/s"), timeout=10)
        assert after.kv.value == b"1"  # nothing was written
    refused = await asyncio.to_thread(permission_refusals, secure_cluster, "/rangekv.v1.KV/Stream")
    assert refused >= 4, refused


def permission_refusals(cluster: SecureCluster, method: str, child: Child | None = None) -> float:
    """rangekv_auth_refusals_total{method, code=PERMISSION_DENIED} of `child` (the gateway)."""
    text = fetch_metrics((child or cluster.gateway).metrics)
    return metric_value(
        text, "rangekv_auth_refusals_total", method=method, code="PERMISSION_DENIED"
    )


async def _leader_address(opener: ChannelOpener, cluster: SecureCluster) -> str:
    for child in cluster.lc.nodes:
        async with opener(child.address) as ch:
            info = await replica_pb2_grpc.ReplicaStub(ch).RangeInfo(
                replica_pb2.RangeInfoRequest(), timeout=5
            )
        if any(r.is_leader and r.descriptor.range_id == 1 for r in info.replicas):
            return child.address
    raise AssertionError("no leader of range 1")


async def test_write_client_cannot_split_admin_can(secure_cluster: SecureCluster) -> None:
    writer = secure_cluster.client("writer", Role.WRITE)
    admin = secure_cluster.client("operator", Role.ADMIN)
    address = await _leader_address(admin, secure_cluster)
    request = replica_pb2.AdminSplitRequest(range_id=1, split_key=b"sec/split")
    async with writer(address) as ch:
        err = await rpc_error(replica_pb2_grpc.ReplicaStub(ch).AdminSplit(request, timeout=10))
        assert err is not None and err.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "AdminSplit needs role admin" in (err.details() or ""), err.details()
    async with admin(address) as ch:
        resp = await replica_pb2_grpc.ReplicaStub(ch).AdminSplit(request, timeout=30)
        assert resp.right.start_key == b"sec/split", resp


async def test_client_certificates_cannot_call_internal_apis_node_can(
    secure_cluster: SecureCluster,
) -> None:
    admin = secure_cluster.client("operator", Role.ADMIN)
    node = secure_cluster.node()
    node_address = secure_cluster.lc.nodes[0].address
    meta_address = secure_cluster.lc.meta[0].address

    async def internal_calls(opener: ChannelOpener) -> list[grpc.aio.AioRpcError | None]:
        out = []
        async with opener(node_address) as ch:
            replica = replica_pb2_grpc.ReplicaStub(ch)
            out.append(await rpc_error(replica.Batch(replica_pb2.ReplicaBatchRequest(), timeout=5)))
            out.append(await rpc_error(replica.PushTxn(replica_pb2.PushTxnRequest(), timeout=5)))
            raft = raft_pb2_grpc.RaftTransportStub(ch)
            out.append(await rpc_error(_raft_stream(raft)))
        async with opener(meta_address) as ch:
            meta = meta_pb2_grpc.MetaStub(ch)
            out.append(
                await rpc_error(meta.AllocateIds(meta_pb2.AllocateIdsRequest(count=1), timeout=5))
            )
        return out

    for err in await internal_calls(admin):
        assert err is not None and err.code() is grpc.StatusCode.PERMISSION_DENIED, err
        assert "needs a node certificate" in (err.details() or ""), err.details()
    for err in await internal_calls(node):
        # Answered by the service itself (an error about the request at most).
        assert err is None or err.code() is not grpc.StatusCode.PERMISSION_DENIED, err


async def _raft_stream(raft: raft_pb2_grpc.RaftTransportStub) -> None:
    """One (wrongly addressed) raft batch; the call's error, if any, raised."""
    stream = raft.RaftStream(timeout=5)
    # A refused stream's status is only reliable if nothing is sent before it
    # arrives (gRPC Python reports a send racing the end as INTERNAL); the node
    # sends initial metadata at once when it serves the stream.
    await stream.initial_metadata()
    if not stream.done():
        await stream.write(raft_pb2.RaftStreamRequest(from_node_id=99, to_node_id=1))
        await stream.done_writing()
    async for _ in stream:  # raises the call's error, a refusal included
        pass


def _served_certificate(address: str, cluster: SecureCluster) -> x509.Certificate:
    """The certificate a fresh TLS connection to ``address`` is shown (client: admin)."""
    host, port = address.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=str(cluster.certs_dir / "ca.crt"))
    crt, key = certs.client_files("admin")
    ctx.load_cert_chain(cluster.certs_dir / crt, cluster.certs_dir / key)
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=NODE_SERVER_NAME) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


async def test_rotation_is_a_file_swap(secure_cluster: SecureCluster) -> None:
    d = secure_cluster.certs_dir
    targets = [secure_cluster.gateway, secure_cluster.lc.nodes[1]]
    pids = [c.proc.pid for c in targets if c.proc is not None]
    before = [_served_certificate(c.address, secure_cluster).serial_number for c in targets]
    old = x509.load_pem_x509_certificate((d / NODE_CERT).read_bytes())
    assert before == [old.serial_number] * len(targets)

    fresh = certs.create_node(secure_cluster.ca, "rotated", ["localhost", "127.0.0.1"], NOW)
    # The swap an operator (or cert-manager) does: new files renamed over the old ones.
    certs.write_pair(d, NODE_CERT, NODE_KEY, fresh, overwrite=True)

    after = [_served_certificate(c.address, secure_cluster).serial_number for c in targets]
    assert after == [fresh.cert.serial_number] * len(targets)
    assert [c.proc.pid for c in targets if c.proc is not None] == pids
    assert all(c.proc is not None and c.proc.returncode is None for c in targets)

    async def still_serving() -> None:
        admin = secure_cluster.client("operator", Role.ADMIN)
        async with admin(secure_cluster.gateway.address) as ch:
            kv = kv_pb2_grpc.KVStub(ch)
            await kv.Put(kv_pb2.PutRequest(key=b"sec/rotated", value=b"yes"), timeout=20)
            got = await kv.Get(kv_pb2.GetRequest(key=b"sec/rotated"), timeout=20)
            assert got.kv.value == b"yes"

    await still_serving()


@pytest.mark.parametrize("verb", ["gateway", "raftnode", "metarange"])
def test_a_service_without_certificates_or_insecure_refuses_to_start(verb: str) -> None:
    env = {"PATH": "/usr/bin:/bin"}
    args = {
        "gateway": ["--meta-addrs", "127.0.0.1:1"],
        "raftnode": ["--node-id", "1", "--data-dir", "/nonexistent"],
        "metarange": ["--node-id", "1", "--data-dir", "/nonexistent", "--peers", "1=x:1"],
    }[verb]
    done = subprocess.run(
        [sys.executable, "-m", "rangekv.cli.main", verb, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 2, done
    assert "--certs-dir" in done.stderr and "--insecure" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


async def _ready_line(argv: list[str]) -> tuple[str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stderr=asyncio.subprocess.PIPE, env={"PATH": "/usr/bin:/bin"}
    )
    assert proc.stderr is not None
    seen = []
    try:
        while True:
            line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
            assert line, "".join(seen)
            seen.append(line)
            if " ready: " in line:
                return "".join(seen), line
    finally:
        proc.terminate()
        await proc.wait()


async def test_insecure_is_explicit_and_loud() -> None:
    text, ready = await _ready_line(
        [
            *(sys.executable, "-m", "rangekv.cli.main", "gateway"),
            *("--meta-addrs", "127.0.0.1:1", "--insecure", "--metrics-port", "-1"),
        ]
    )
    assert text.count("INSECURE MODE") >= 3, text
    assert "tls=off" in ready
