"""A secure cluster for a test module, and the certificates tests present.

The cluster is the test kit's (tests/testkit): 3 metarange replicas, 3
raftnodes, 1 gateway; mutual TLS on every link; a plaintext health-only port
on every process. It runs on an event loop in a thread of its own for the
whole module, so the children's stderr is always drained, even while a
synchronous test (the hypothesis fuzzer) holds the main thread: `async def`
tests talk to it from their own loop (channels come from openers, made where
they are used), synchronous ones submit coroutines with :meth:`SecureCluster.run`.
"""

from __future__ import annotations

import asyncio
import datetime
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from testkit.cluster import Cluster, ClusterSpec

from rangekv.cli.cluster import Child, LocalCluster
from rangekv.common import certs
from rangekv.common.certs import NODE_SERVER_NAME, KeyPair, Role
from rangekv.common.config import SecurityConfig
from rangekv.common.tls import ChannelOpener, TLSChannels, client_channels

T = TypeVar("T")

NOW = datetime.datetime.now(datetime.UTC)


class LoopThread:
    """An asyncio loop running in a daemon thread until closed."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class SecureCluster:
    """A secure cluster on its own loop thread and ways to reach it with various identities."""

    def __init__(self, base: Path, loop: LoopThread) -> None:
        self.loop = loop
        self.cluster = Cluster(base / "data", ClusterSpec(env={"RANGEKV_HEALTH_PORT": "0"}))
        self.lc: LocalCluster = self.cluster.lc
        assert self.lc.certs_dir is not None
        self.certs_dir: Path = self.lc.certs_dir
        self.ca = certs.load_ca(self.certs_dir)
        self.extra = base / "extra-certs"

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        return self.loop.run(coro, timeout)

    @property
    def gateway(self) -> Child:
        return self.lc.gateways[0]

    def client(self, name: str, role: Role) -> ChannelOpener:
        """Channels as a client NAME with ROLE (its certificate made on first use)."""
        crt, key = certs.client_files(name)
        if not (self.certs_dir / crt).exists():
            pair = certs.create_client(self.ca, name, role, NOW)
            certs.write_pair(self.certs_dir, crt, key, pair, overwrite=False)
        return client_channels(
            SecurityConfig(certs_dir=self.certs_dir), name, server_name=NODE_SERVER_NAME
        )

    def node(self) -> ChannelOpener:
        return self.lc.node_channels()

    def foreign(self, stem: str, pair: KeyPair, ca_pem: bytes | None = None) -> ChannelOpener:
        """Channels presenting ``pair`` (trusting this cluster's CA unless ``ca_pem``)."""
        d = self.extra / stem
        d.mkdir(parents=True, exist_ok=True)
        (d / "ca.crt").write_bytes(ca_pem or self.ca.cert_pem)
        certs.write_pair(d, "id.crt", "id.key", pair, overwrite=True)
        files = SecurityConfig(
            ca_cert_path=d / "ca.crt", cert_path=d / "id.crt", key_path=d / "id.key"
        ).node_files()
        return TLSChannels(files, NODE_SERVER_NAME)
