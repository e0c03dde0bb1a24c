"""Certificates, identities, the role table, the security settings, reloading
credentials, and the server limits, each checked in one process (real TLS where
a server is involved)."""

from __future__ import annotations

import asyncio
import datetime
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from rangekv.cli import cert as cert_cli
from rangekv.common import certs
from rangekv.common import errors as E
from rangekv.common.auth import Authorizer, required_role
from rangekv.common.certs import NODE_CERT, NODE_KEY, Identity, Role
from rangekv.common.config import ConfigError, SecurityConfig, ServerConfig, from_args
from rangekv.common.server import ServiceServer
from rangekv.common.telemetry import Telemetry
from rangekv.common.tls import (
    ServerCredentialsSource,
    client_channels,
    node_channels,
    read_material,
)

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


@pytest.fixture
def certs_dir(tmp_path: Path) -> Path:
    d = tmp_path / "certs"
    certs.ensure_dev_certs(d, datetime.datetime.now(datetime.UTC))
    return d


# --- identities ---------------------------------------------------------------------------


def test_identities_round_trip_through_certificates() -> None:
    ca = certs.create_ca(NOW)
    node = certs.create_node(ca, "n1", ["*.rk.ns.svc.cluster.local", "10.1.2.3"], NOW)
    assert certs.identity_of(node.cert) == Identity("n1", Role.NODE)
    for role in certs.CLIENT_ROLES:
        client = certs.create_client(ca, "alice", role, NOW)
        assert certs.identity_of(client.cert) == Identity("alice", role)
    assert certs.identity_from_uri("urn:rangekv:client:root:alice") is None
    assert certs.identity_from_uri("urn:rangekv:node:bad name") is None
    assert certs.identity_from_uri("spiffe://x/node/n1") is None
    with pytest.raises(ValueError, match="bad name"):
        certs.create_client(ca, "../evil", Role.READ, NOW)
    with pytest.raises(ValueError, match="unknown role"):
        certs.parse_role("root")


def test_role_table_is_longest_prefix_and_closed_by_default() -> None:
    assert required_role("/rangekv.v1.KV/Get") is Role.READ
    assert required_role("/rangekv.v1.KV/Scan") is Role.READ
    assert required_role("/rangekv.v1.KV/Put") is Role.WRITE
    assert required_role("/rangekv.v1.KV/Batch") is Role.WRITE
    # Reads and writes on one call: the gateway checks each write (tests/unit/test_kv_stream_session.py).
    assert required_role("/rangekv.v1.KV/Stream") is Role.READ
    assert required_role("/rangekv.v1.Admin/Decommission") is Role.ADMIN
    assert required_role("/rangekv.v1.Replica/AdminSplit") is Role.ADMIN
    assert required_role("/rangekv.v1.Replica/Batch") is Role.NODE
    assert required_role("/rangekv.v1.Replica/EndTxn") is Role.NODE
    assert required_role("/rangekv.v1.RaftTransport/RaftStream") is Role.NODE
    assert required_role("/rangekv.v1.Meta/WriteIntent") is Role.NODE
    assert required_role("/grpc.health.v1.Health/Check") is Role.READ
    assert required_role("/somebody.Else/Method") is Role.NODE


class _Context:
    def __init__(self, auth: dict[str, list[bytes]]) -> None:
        self._auth = auth

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth


def test_authorizer_says_what_is_missing_and_counts() -> None:
    telemetry = Telemetry("authtest")
    authorizer = Authorizer(telemetry)
    ctx: Any = _Context({"transport_security_type": [b"ssl"], "peer_uri": [b"https://x"]})
    with pytest.raises(E.Unauthenticated, match="names no rangekv identity"):
        authorizer.check("/rangekv.v1.KV/Get", Role.READ, ctx)
    with pytest.raises(E.Unauthenticated, match="no TLS client certificate"):
        authorizer.check("/rangekv.v1.KV/Get", Role.READ, _Context({}))  # type: ignore[arg-type]
    reader: Any = _Context({"peer_uri": [b"urn:rangekv:client:read:bob"]})
    assert authorizer.check("/rangekv.v1.KV/Get", Role.READ, reader).name == "bob"
    with pytest.raises(E.PermissionDenied, match="needs role write or higher; client bob"):
        authorizer.check("/rangekv.v1.KV/Put", Role.WRITE, reader)
    node: Any = _Context({"peer_uri": [b"urn:rangekv:node:n1"]})
    assert authorizer.check("/rangekv.v1.Replica/Batch", Role.NODE, node).is_node
    telemetry.shutdown()


# --- settings -----------------------------------------------------------------------------


def test_security_config_is_secure_or_explicitly_insecure(tmp_path: Path) -> None:
    import argparse

    from rangekv.common.config import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser, SecurityConfig)
    with pytest.raises(ConfigError) as exc:
        from_args(SecurityConfig, parser.parse_args([]), {})
    assert "--certs-dir" in str(exc.value) and "--insecure" in str(exc.value)
    with pytest.raises(ConfigError, match="cannot be combined"):
        from_args(SecurityConfig, parser.parse_args(["--insecure"]), {"RANGEKV_CERTS_DIR": "x"})
    env_cfg = from_args(SecurityConfig, parser.parse_args([]), {"RANGEKV_CERTS_DIR": "/c"})
    assert env_cfg.node_files().cert == Path("/c/node.crt")
    explicit = from_args(
        SecurityConfig,
        parser.parse_args(["--certs-dir", "/c", "--cert", "/x.crt", "--key", "/x.key"]),
        {},
    )
    files = explicit.node_files()
    assert (files.ca, files.cert, files.key) == (Path("/c/ca.crt"), Path("/x.crt"), Path("/x.key"))
    assert from_args(SecurityConfig, parser.parse_args([]), {"RANGEKV_INSECURE": "1"}).insecure


def test_material_is_checked(certs_dir: Path) -> None:
    files = SecurityConfig(certs_dir=certs_dir).node_files()
    read_material(files)
    other = certs.create_node(certs.load_ca(certs_dir), "x", [], NOW)
    (certs_dir / NODE_KEY).write_bytes(other.key_pem)
    with pytest.raises(ConfigError, match="is not the key of"):
        read_material(files)
    (certs_dir / NODE_CERT).write_bytes(b"junk")
    with pytest.raises(ConfigError, match="holds no PEM certificate"):
        read_material(files)


def test_server_credentials_follow_the_files_but_never_a_half_swap(certs_dir: Path) -> None:
    source = ServerCredentialsSource(SecurityConfig(certs_dir=certs_dir).node_files())
    assert source._fetch() is None  # unchanged
    fresh = certs.create_node(certs.load_ca(certs_dir), "fresh", [], NOW)
    certs.write_atomic(certs_dir / NODE_CERT, fresh.cert_pem, 0o644)  # key not yet swapped
    assert source._fetch() is None and source.reloads == 0
    certs.write_atomic(certs_dir / NODE_KEY, fresh.key_pem, 0o600)
    assert source._fetch() is not None and source.reloads == 1
    assert source.material.cert_pem == fresh.cert_pem
    assert source._fetch() is None


# --- the cert verbs -----------------------------------------------------------------------


def test_cert_verbs_write_safe_files_and_never_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = str(tmp_path / "c")
    assert cert_cli.main(["create-ca", "--certs-dir", d]) == 0
    assert cert_cli.main(["create-ca", "--certs-dir", d]) == 1
    assert "pass --overwrite" in capsys.readouterr().err
    hosts = ["--host", "*.rk.ns.svc.cluster.local", "--host", "10.0.0.7"]
    assert cert_cli.main(["create-node", "n1", *hosts, "--certs-dir", d]) == 0
    assert cert_cli.main(["create-client", "bob", "--role", "read", "--certs-dir", d]) == 0
    for name in ("ca.key", "node.key", "client.bob.key"):
        assert stat.S_IMODE((tmp_path / "c" / name).stat().st_mode) == 0o600
    capsys.readouterr()
    assert cert_cli.main(["list", "--certs-dir", d]) == 0
    listing = capsys.readouterr().out
    assert "client bob (role read)" in listing
    assert "*.rk.ns.svc.cluster.local,10.0.0.7" in listing
    with pytest.raises(SystemExit):
        cert_cli.main(["create-client", "eve", "--role", "root", "--certs-dir", d])


# --- limits on a real (in-process) secure server --------------------------------------------


async def _serve(
    certs_dir: Path, body: Callable[[ServiceServer], Awaitable[None]], **config: Any
) -> None:
    async def wait(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.Event().wait()
        return b""

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    handlers = {
        "Wait": grpc.unary_unary_rpc_method_handler(wait),
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
    }

    def register(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.T", handlers),))

    server_config = ServerConfig(
        metrics_port=-1, security=SecurityConfig(certs_dir=certs_dir), **config
    )
    telemetry = Telemetry("limits")
    server = ServiceServer(
        "limits", server_config, telemetry, register=register, service_names=["t.T"]
    )
    async with server:
        await body(server)
    telemetry.shutdown()


async def test_default_deadline_and_message_limit_and_closed_default(certs_dir: Path) -> None:
    security = SecurityConfig(certs_dir=certs_dir)

    async def body(server: ServiceServer) -> None:
        async with client_channels(security, "admin")(server.address) as ch:
            err = await _error(ch.unary_unary("/t.T/Wait")(b""))
            # An admin client: /t.T/ is in no table entry, so it needs a node.
            assert err.code() is grpc.StatusCode.PERMISSION_DENIED, err
        async with node_channels(security)(server.address) as ch:
            err = await _error(ch.unary_unary("/t.T/Wait")(b""))
            assert err.code() is grpc.StatusCode.DEADLINE_EXCEEDED, err
            assert "default of 0.3s" in (err.details() or "")
            err = await _error(ch.unary_unary("/t.T/Echo")(b"x" * (5 << 20), timeout=10))
            assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, err
            assert await ch.unary_unary("/t.T/Echo")(b"ok", timeout=10) == b"ok"

    await _serve(certs_dir, body, default_deadline_seconds=0.3, max_message_bytes=4 * 1024 * 1024)


async def _error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError("the call succeeded")


def test_dev_screen_prints_tls_flags_or_a_loud_warning(tmp_path: Path) -> None:
    from rangekv.cli.cluster import LocalCluster
    from rangekv.cli.dev import screen

    secure = LocalCluster(tmp_path / "s", gateway_ports=[20001], say=lambda _line: None)
    text = screen(secure)
    d = tmp_path / "s" / "certs"
    assert (
        f"grpcurl -cacert {d}/ca.crt -cert {d}/client.admin.crt -key {d}/client.admin.key" in text
    )
    assert (d / "client.admin.key").exists() and "INSECURE" not in text
    before = (d / "ca.crt").read_bytes()
    LocalCluster(tmp_path / "s", gateway_ports=[20001], say=lambda _line: None)
    assert (d / "ca.crt").read_bytes() == before  # reused, not remade
    insecure = LocalCluster(tmp_path / "i", gateway_ports=[20002], insecure=True)
    text = screen(insecure)
    assert "INSECURE MODE" in text and "grpcurl -plaintext" in text
    assert not (tmp_path / "i" / "certs").exists()
    assert all("--insecure" in c.args for c in insecure.children)
    assert all("--certs-dir" in c.args for c in secure.children)
