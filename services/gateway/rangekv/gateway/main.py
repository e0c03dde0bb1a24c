"""`rangekv gateway`: serve the public KV API and the Admin API (stateless; run as many as you like).

rangekv gateway --listen-port 50051 --meta-addrs 127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from rangekv.common.clock import Clock, SystemClock
from rangekv.common.config import (
    ServerConfig,
    require,
    setting,
)
from rangekv.common.descriptors import RangeDescriptor
from rangekv.common.entrypoint import service_main
from rangekv.common.server import ServiceServer
from rangekv.common.telemetry import Telemetry
from rangekv.common.tls import ChannelOpener, node_channels
from rangekv.domain.limits import (
    MAX_BATCH_OPS,
    KeyValueLimits,
    max_key_bytes_setting,
    max_value_bytes_setting,
)
from rangekv.domain.txn import TxnMeta, TxnStatus
from rangekv.gateway.admin_service import ADMIN_SERVICE, AdminService
from rangekv.gateway.cache_types import LookupResult, TelemetryCacheMetrics
from rangekv.gateway.cluster_admin import ClusterAdmin, GrpcNodeAdmin
from rangekv.gateway.dist_sender import (
    DEFAULT_READ_ATTEMPT_TIMEOUT,
    DistSender,
    NodeDirectory,
    RetryCounters,
)
from rangekv.gateway.kv_service import KVLimits, KVService
from rangekv.gateway.kv_stream import StreamLimits
from rangekv.gateway.node_client import DEFAULT_MAX_INFLIGHT, NodeClients
from rangekv.gateway.pusher import ReplicaTxnPusher
from rangekv.gateway.range_cache import RangeCache
from rangekv.gateway.scan import ScanConfig
from rangekv.metarange.client import MetaClient, decommission_for_admin, recommission_for_admin
from rangekv.v1 import admin_pb2_grpc, kv_pb2_grpc

log = logging.getLogger("rangekv.gateway")


@dataclass(frozen=True)
class GatewayConfig:
    """What a gateway needs beyond the generic ServerConfig."""

    meta_addrs: str = setting("", help="metarange replicas, HOST:PORT,... (required)")
    prefetch: int = setting(8, help="descriptors prefetched after the one a lookup needs")
    cache_size: int = setting(65_536, help="most range descriptors cached")
    request_timeout: float = setting(10.0, help="seconds a call may take before it gives up")
    max_key_bytes: int = max_key_bytes_setting()
    max_value_bytes: int = max_value_bytes_setting()
    read_attempt_timeout: float = setting(
        DEFAULT_READ_ATTEMPT_TIMEOUT,
        help="seconds a read waits for one replica before asking the next (a paused or "
        "cut-off leaseholder must not hold reads until their deadline; writes never move)",
    )
    max_inflight_ops: int = setting(
        10_000,
        help="client operations served at once; more are refused with RESOURCE_EXHAUSTED "
        "(and a retry delay), nothing written",
    )
    scan_page_bytes: int = setting(256 << 10, help="bytes of rows a scan asks a node for per page")
    scan_buffer_bytes: int = setting(
        1 << 20,
        help="bytes of a scan's rows held back before the first is sent, so that a small "
        "scan whose snapshot is lost restarts invisibly",
    )
    stream_max_inflight: int = setting(
        1000,
        help="requests one KV/Stream call may have open (running, or answered and not yet "
        "sent); at the bound the gateway stops reading that stream, so a client that sends "
        "faster than it reads is slowed down, not buffered",
    )
    max_inflight_batches: int = setting(
        DEFAULT_MAX_INFLIGHT,
        help="node batches per (node, range, mode) on the wire at once; more ops wait "
        "and join the next batch (bigger batches under load, no wait when idle)",
    )
    batch_frames: bool = setting(
        True,
        help="send a node every batch of one event-loop turn (all its ranges) in one "
        "Replica.BatchFrames message; off: one Replica.BatchStream message per batch",
    )

    frame_gather_turns: int = setting(
        16,
        help="when a node stream is busy (batches queued while the last frame was written) "
        "and its queued batches hold only reads, event-loop turns its next frame may wait "
        "while each brings more reads, so that reads of many ranges share one frame; the "
        "same for the answers of a busy KV/Stream (0: never; writes never wait)",
    )

    def __post_init__(self) -> None:
        require(bool(self.addresses()), "meta_addrs", "name at least one metarange replica")
        require(self.frame_gather_turns >= 0, "frame_gather_turns", "must be >= 0")
        require(0 <= self.prefetch <= 1000, "prefetch", "must be in [0, 1000]")
        require(self.cache_size >= 1, "cache_size", "must be >= 1")
        require(self.request_timeout > 0, "request_timeout", "must be > 0")
        require(self.read_attempt_timeout > 0, "read_attempt_timeout", "must be > 0")
        require(self.max_inflight_batches >= 1, "max_inflight_batches", "must be >= 1")
        require(
            1 <= self.max_inflight_ops <= MAX_BATCH_OPS,
            "max_inflight_ops",
            f"must be in [1, {MAX_BATCH_OPS}] (the operations of one node batch, which "
            "may merge every operation in flight)",
        )
        require(self.stream_max_inflight >= 1, "stream_max_inflight", "must be >= 1")
        require(self.scan_page_bytes >= 1, "scan_page_bytes", "must be >= 1")
        require(self.scan_buffer_bytes >= 0, "scan_buffer_bytes", "must be >= 0")

    def addresses(self) -> list[str]:
        return [a.strip() for a in self.meta_addrs.split(",") if a.strip()]


def build(
    cfg: GatewayConfig,
    telemetry: Telemetry | None = None,
    channels: ChannelOpener | None = None,
    *,
    max_message_bytes: int = ServerConfig.max_message_bytes,
    clock: Clock | None = None,
    rng: random.Random | None = None,
) -> tuple[KVService, MetaClient, NodeClients]:
    """Wire a gateway's parts (also used by tests that run one in-process).

    ``channels`` dial the meta range and the nodes (plaintext if None);
    ``max_message_bytes``: the server's, so that no stream answer exceeds it;
    ``clock`` and ``rng`` are the system's unless given (entry point: read once, here)."""
    clock = clock if clock is not None else SystemClock()
    rng = rng if rng is not None else random.Random()
    meta = MetaClient(
        cfg.addresses(), channels=channels, clock=clock, rng=random.Random(rng.random())
    )
    nodes = NodeClients(
        max_inflight=cfg.max_inflight_batches,
        channels=channels,
        framed=cfg.batch_frames,
        frame_gather_turns=cfg.frame_gather_turns,
    )

    async def meta_lookup(key: bytes, prefetch: int, *, consistent: bool = False) -> LookupResult:
        # A consistent lookup is the cache's re-read at the meta leader (rule R): with
        # intents, so that a committed but unresolved change can be pushed.
        resp = await meta.lookup_range(
            key, prefetch=prefetch, consistent=consistent, include_intents=consistent
        )
        return LookupResult.from_proto(resp)

    async def push(
        txn: TxnMeta,
        intent_descriptor: RangeDescriptor,
        committed_descriptor: RangeDescriptor | None,
    ) -> TxnStatus:
        # Replica.PushTxn to the range holding the txn record (rangekv.gateway.pusher).
        return await pusher(txn, intent_descriptor, committed_descriptor)

    def resolve_intent(meta_key: bytes, txn_id: bytes, status: TxnStatus) -> None:
        task = asyncio.ensure_future(meta.resolve_intent(meta_key, txn_id, int(status)))
        task.add_done_callback(lambda t: t.exception())

    cache = RangeCache(
        meta_lookup,
        push,
        resolve_intent,
        max_entries=cfg.cache_size,
        prefetch=cfg.prefetch,
        metrics=TelemetryCacheMetrics(telemetry) if telemetry is not None else None,
    )
    directory = NodeDirectory(meta.list_nodes, clock=clock)
    pusher = ReplicaTxnPusher(
        nodes, directory, lambda k: meta.lookup_range(k, prefetch=0), clock=clock
    )
    sender = DistSender(
        cache,
        nodes,
        directory,
        rng=random.Random(rng.random()),
        clock=clock,
        timeout=cfg.request_timeout,
        read_attempt_timeout=cfg.read_attempt_timeout,
        tracer=telemetry.active_tracer if telemetry is not None else None,
        scan_config=ScanConfig(page_bytes=cfg.scan_page_bytes, buffer_bytes=cfg.scan_buffer_bytes),
    )
    service = KVService(
        sender,
        KVLimits(KeyValueLimits(cfg.max_key_bytes, cfg.max_value_bytes), cfg.max_inflight_ops),
        StreamLimits(
            max_inflight=cfg.stream_max_inflight,
            request_timeout=cfg.request_timeout,
            max_message_bytes=max_message_bytes,
            gather_turns=cfg.frame_gather_turns,
        ),
    )
    if telemetry is not None:
        export_retry_counters(telemetry, sender.counters)
        export_scan_and_load_counters(telemetry, sender, service, nodes)
    return service, meta, nodes


def build_admin(cfg: GatewayConfig, meta: MetaClient, nodes: NodeClients) -> AdminService:
    """The Admin API over the gateway's own meta client and node channels."""
    admin = ClusterAdmin(meta, GrpcNodeAdmin(nodes.stub))
    return AdminService(
        admin,
        request_timeout=cfg.request_timeout,
        decommission=functools.partial(decommission_for_admin, meta),
        recommission=functools.partial(recommission_for_admin, meta),
    )


def export_retry_counters(telemetry: Telemetry, counters: RetryCounters) -> None:
    """Expose the DistSender's retry counters, so redirects per request can be measured.

    They are observable gauges read at scrape time (on the metrics thread): the
    DistSender keeps plain ints, and `dict(...)` copies the reasons atomically
    under the GIL, so the scrape never sees a dict changing size mid-iteration.
    """
    telemetry.observable_gauge(
        "rangekv_gateway_retries",
        "Routing retries since start, by reason (monotonic).",
        lambda: {(reason,): float(n) for reason, n in dict(counters.retries).items()},
        labels=("reason",),
    )
    telemetry.observable_gauge(
        "rangekv_gateway_backoffs",
        "Backoffs a request waited out since start, by reason (monotonic).",
        lambda: {(reason,): float(n) for reason, n in dict(counters.backoffs).items()},
        labels=("reason",),
    )
    telemetry.observable_gauge(
        "rangekv_gateway_redirects",
        "NotLeaseHolder redirects followed since start (monotonic).",
        lambda: float(counters.redirects),
    )


def export_scan_and_load_counters(
    telemetry: Telemetry, sender: DistSender, kv: KVService, nodes: NodeClients
) -> None:
    """Scans (and their restarts by reason), split read batches, refused calls."""
    stats = sender.scanner.stats
    telemetry.observable_gauge(
        "rangekv_gateway_scans", "Scans since start (monotonic).", lambda: float(stats.scans)
    )
    telemetry.observable_gauge(
        "rangekv_gateway_scan_restarts",
        "Scans started over since start, by reason (monotonic): the snapshot was lost "
        "(lease moved, range split, fence lapsed) or a clock was refused.",
        lambda: {(r,): float(stats.restarts.get(r, 0)) for r in ("fence_lost", "clock_offset")},
        labels=("reason",),
    )
    telemetry.observable_gauge(
        "rangekv_gateway_scans_aborted",
        "Scans that lost their snapshot after rows were sent (answered ABORTED).",
        lambda: float(stats.aborted),
    )
    telemetry.observable_gauge(
        "rangekv_gateway_split_batches",
        "Node read batches split because their answer would have been too large.",
        lambda: float(nodes.split_batches),
    )
    telemetry.observable_gauge(
        "rangekv_gateway_node_batches",
        "Batches sent to storage nodes since start (monotonic); with "
        "rangekv_gateway_node_ops, the merging achieved (operations per batch).",
        lambda: float(nodes.batches_sent),
    )
    telemetry.observable_gauge(
        "rangekv_gateway_frame_gather_turns",
        "Event-loop turns the gateway's busy node streams waited for more reads before "
        "a frame (monotonic; see --frame-gather-turns).",
        lambda: float(nodes.frame_gather_turns),
    )
    telemetry.observable_gauge(
        "rangekv_gateway_node_ops",
        "Operations sent to storage nodes in batches since start (monotonic).",
        lambda: float(nodes.ops_sent),
    )
    telemetry.observable_gauge(
        "rangekv_gateway_refused",
        "Client calls refused at admission (RESOURCE_EXHAUSTED), since start.",
        lambda: float(kv.admission.refused),
    )
    streams = kv.stream_stats
    telemetry.observable_gauge(
        "rangekv_gateway_streams_open", "KV/Stream calls open now.", lambda: float(streams.open)
    )
    telemetry.observable_gauge(
        "rangekv_gateway_stream_requests",
        "Requests received on KV/Stream calls since start (monotonic).",
        lambda: float(streams.requests),
    )
    telemetry.observable_gauge(
        "rangekv_gateway_stream_messages",
        "KV/Stream messages since start, by direction (monotonic): requests and answers "
        "share messages, so requests per message is the batching achieved.",
        lambda: {("in",): float(streams.messages_in), ("out",): float(streams.messages_out)},
        labels=("direction",),
    )
    telemetry.observable_gauge(
        "rangekv_gateway_stream_gather_turns",
        "Event-loop turns busy KV/Stream writers waited for more answers of reads before "
        "a message (monotonic; see --frame-gather-turns).",
        lambda: float(streams.gather_turns),
    )
    telemetry.observable_gauge(
        "rangekv_gateway_stream_failures",
        "KV/Stream requests answered with an error since start, by code (monotonic).",
        lambda: {(code,): float(n) for code, n in dict(streams.failed).items()},
        labels=("code",),
    )


async def serve(server_config: ServerConfig, cfg: GatewayConfig) -> None:
    telemetry = Telemetry("gateway", otlp_endpoint=server_config.otlp_endpoint)
    service, meta, nodes = build(
        cfg,
        telemetry,
        node_channels(server_config.security),
        max_message_bytes=server_config.max_message_bytes,
    )
    admin = build_admin(cfg, meta, nodes)

    def register(server: grpc.aio.Server) -> None:
        kv_pb2_grpc.add_KVServicer_to_server(service, server)
        admin_pb2_grpc.add_AdminServicer_to_server(admin, server)

    server = ServiceServer(
        "gateway",
        server_config,
        telemetry,
        register=register,
        service_names=("rangekv.v1.KV", ADMIN_SERVICE),
        logger=log,
    )
    await server.start()
    try:
        await server.run_until_signalled()
    finally:
        await nodes.close()
        await meta.close()
        telemetry.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    return service_main(
        argv,
        service="gateway",
        description=__doc__.splitlines()[0],
        config_cls=GatewayConfig,
        serve=serve,
        needs_node_id=False,
    )
