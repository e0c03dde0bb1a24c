"""`rangekv metarange`: run one replica of the meta range.

    rangekv metarange --node-id 1 --listen-port 7101 --data-dir data/m1 \\
        --peers 1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103 --first-range-nodes 1,2,3

The meta group's voters are the nodes named in --peers. On first start the
group is created from that list; once it has a leader, the leader records the
first range (the whole keyspace on --first-range-nodes) unless meta already
holds records: bootstrap is idempotent and safe when all replicas start at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from rangekv.common.clock import Clock, SystemClock, test_clock_offset_ns
from rangekv.common.config import (
    ConfigError,
    ServerConfig,
    require,
    setting,
)
from rangekv.common.descriptors import first_range
from rangekv.common.entrypoint import service_main
from rangekv.common.server import ServiceServer
from rangekv.common.tasks import cancel_and_wait
from rangekv.common.telemetry import Telemetry
from rangekv.common.tls import node_channels
from rangekv.domain.peers import parse_node_ids, parse_peers
from rangekv.metarange.commands import Bootstrap
from rangekv.metarange.replica import MetaHost
from rangekv.metarange.service import MetaService
from rangekv.metarange.state import MetaStateMachine
from rangekv.replication.engines import RocksEngines
from rangekv.replication.host import HostConfig, HostSeams
from rangekv.replication.lanes import TelemetryTransportMetrics
from rangekv.replication.mutations import TestFaults
from rangekv.replication.raft_codec import message_from_proto
from rangekv.replication.sync_mode import parse_fsm_sync_mode
from rangekv.replication.timing import RaftTiming
from rangekv.replication.transport import transport_for
from rangekv.replication.transport_server import RaftTransportServicer
from rangekv.v1 import meta_pb2_grpc, raft_pb2

log = logging.getLogger("rangekv.metarange")

SERVICE_NAMES = ("rangekv.v1.Meta", "rangekv.v1.RaftTransport")


@dataclass(frozen=True)
class MetarangeConfig:
    """What a metarange replica needs beyond the generic ServerConfig."""

    peers: str = setting(
        "", help="every metarange replica, NODE=HOST:PORT,...; they are the meta group's voters"
    )
    first_range_nodes: str = setting(
        "", help="storage node ids holding the first range, e.g. 1,2,3 (used once, at bootstrap)"
    )
    fsm_sync_mode: str = setting(
        "sync", help="sync|nosync (see raftnode; the meta range's default stays sync)"
    )
    tick_interval: float = setting(0.1, help="seconds per raft tick")
    election_ticks: int = setting(10, help="raft ticks without a leader before an election")
    max_clock_drift: float = setting(0.05, help="bound on clock rate drift between nodes")
    liveness_ttl: float = setting(10.0, help="seconds a storage node stays live after a heartbeat")
    log_retain_entries: int = setting(2000, help="raft log entries kept after truncation")

    def __post_init__(self) -> None:
        try:
            peers = parse_peers(self.peers)
        except ValueError as exc:
            raise ConfigError("peers", str(exc)) from None
        require(bool(peers), "peers", "name every metarange replica, including this one")
        try:
            parse_node_ids(self.first_range_nodes)
        except ValueError as exc:
            raise ConfigError("first_range_nodes", str(exc)) from None
        require(self.liveness_ttl > 0, "liveness_ttl", "must be > 0")


async def _bootstrap_when_leader(host: MetaHost, nodes: tuple[int, ...], clock: Clock) -> None:
    """Record the first range once this replica leads, unless meta already has it."""
    if not nodes:
        return
    while True:
        if host.is_leader():
            if MetaStateMachine.first_range(host.state_engine) is not None:
                return
            try:
                result = await host.execute(Bootstrap(first_range(nodes)))
            except Exception as exc:  # leadership moved, or no quorum yet: try again
                log.info("bootstrap not done yet: %s", exc)
            else:
                log.info("bootstrap: created=%s", result.created)
                return
        await clock.sleep(0.2)  # polling leadership; a new leader will do it if we lose it


async def serve(server_config: ServerConfig, cfg: MetarangeConfig) -> None:
    node_id = server_config.node_id
    if server_config.data_dir is None:
        raise ConfigError("data_dir", "a metarange replica needs --data-dir")
    peers = parse_peers(cfg.peers)
    if node_id not in peers:
        raise ConfigError("peers", f"must include this replica (node {node_id})")
    mode, warning = parse_fsm_sync_mode(cfg.fsm_sync_mode)
    if warning:
        log.warning("%s", warning)
    # Test-only settings: read once, here. A meta replica acts on the clock offset alone
    # (mutations, power loss and slow snapshots are the storage nodes' faults).
    faults = TestFaults(clock_offset_ns=test_clock_offset_ns())
    for loud in faults.warnings():
        for _ in range(3):
            log.warning("%s", loud)
    clock = SystemClock(faults.clock_offset_ns)
    rng = random.Random()  # seeded from the OS: incarnations differ across starts
    telemetry = Telemetry("metarange", node_id=node_id, otlp_endpoint=server_config.otlp_endpoint)
    host_ref: list[MetaHost] = []
    transport = transport_for(
        node_id,
        peers.get,
        lambda: host_ref[0],
        clock=clock,
        rng=random.Random(rng.random()),
        metrics=TelemetryTransportMetrics(telemetry),
        channels=node_channels(server_config.security),
    )
    host = MetaHost(
        HostConfig(
            node_id=node_id,
            timing=RaftTiming(
                tick_interval=cfg.tick_interval,
                election_ticks=cfg.election_ticks,
                max_clock_drift=cfg.max_clock_drift,
            ),
            fsm_sync_mode=mode,
            log_retain_entries=cfg.log_retain_entries,
        ),
        HostSeams(
            sender=transport,
            open_engines=RocksEngines(Path(server_config.data_dir)),
            clock=clock,
            rng=random.Random(rng.random()),
        ),
        peers=peers,
    )
    host_ref.append(host)
    host.open_replica(tuple(sorted(peers)))
    telemetry.observable_gauge(
        "rangekv_meta_lookups",
        "Range lookups served, by mode",
        lambda: {(m,): float(n) for m, n in host.counters.lookups.items()},
        labels=("mode",),
    )

    async def handle_snapshot(
        header: raft_pb2.SnapshotHeader, chunks: AsyncIterator[bytes]
    ) -> bool:
        group_id, msg, _desc = message_from_proto(header.message)
        return await host.handle_snapshot(group_id, msg, None, chunks)

    raft_service = RaftTransportServicer(node_id, host.handle_raft, handle_snapshot)
    meta_service = MetaService(host, clock=clock, liveness_ttl_ns=int(cfg.liveness_ttl * 1e9))

    def register(server: grpc.aio.Server) -> None:
        meta_pb2_grpc.add_MetaServicer_to_server(meta_service, server)
        raft_service.add_to_server(server)

    server = ServiceServer(
        "metarange",
        server_config,
        telemetry,
        register=register,
        service_names=SERVICE_NAMES,
        logger=log,
    )
    host.start()
    bootstrap = asyncio.ensure_future(
        _bootstrap_when_leader(host, parse_node_ids(cfg.first_range_nodes), clock)
    )
    await server.start()
    try:
        await server.run_until_signalled()
    finally:
        await cancel_and_wait([bootstrap])
        await transport.close()
        await host.stop()
        telemetry.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    return service_main(
        argv,
        service="metarange",
        description=__doc__.splitlines()[0],
        config_cls=MetarangeConfig,
        serve=serve,
        needs_node_id=True,
    )
