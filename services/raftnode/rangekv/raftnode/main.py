"""`rangekv raftnode`: run one storage node.

    rangekv raftnode --node-id 1 --listen-port 7001 --data-dir data/n1 \\
        --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 --bootstrap-nodes 1,2,3

With --meta-addrs the node also serves the public KV API on its port, routing
like a gateway (rangekv.raftnode.frontend; the `rangekv raftnode` verb supplies
the gateway's implementation; --no-serve-kv turns it off).

In a StatefulSet, --pod-name replaces --node-id (rangekv.raftnode.ident) and,
with --pod-namespace, turns on the SIGTERM lifecycle (rangekv.raftnode.shutdown).

Flags and RANGEKV_* environment variables are read here and nowhere else; the
resulting frozen configs are passed down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rangekv.common import errors as E
from rangekv.common.clock import Clock, SystemClock
from rangekv.common.config import ConfigError, ServerConfig
from rangekv.common.descriptors import first_range
from rangekv.common.entrypoint import service_main
from rangekv.common.kube import KubeError, KubeStatefulSets, PodIdentity, StatefulSets
from rangekv.common.logs import setup_logging_from_config
from rangekv.common.server import ServiceServer
from rangekv.common.tasks import cancel_and_wait
from rangekv.common.telemetry import Telemetry
from rangekv.common.tls import ChannelOpener, node_channels
from rangekv.domain.peers import parse_node_ids, parse_peers
from rangekv.metarange.client import MetaApi, MetaClient
from rangekv.raftnode.change import ReplicaChanger
from rangekv.raftnode.config import RaftnodeConfig
from rangekv.raftnode.descriptor_txn import DescriptorTxns
from rangekv.raftnode.frontend import Frontend, FrontendContext, FrontendFactory
from rangekv.raftnode.ident import StoreIdent, StoreRetired, resolve_identity
from rangekv.raftnode.rebalancer import Rebalancer
from rangekv.raftnode.service import ReplicaService
from rangekv.raftnode.shutdown import GracefulShutdown
from rangekv.raftnode.split import SplitCoordinator, SplitQueue
from rangekv.raftnode.store import Store, StoreConfig
from rangekv.raftnode.telemetry import NodeMetrics
from rangekv.raftnode.txn_push import Peers, TxnPusher
from rangekv.replication.engines import RocksEngines
from rangekv.replication.host import HostConfig, HostSeams
from rangekv.replication.mutations import TestFaults
from rangekv.replication.raft_codec import message_from_proto
from rangekv.replication.sync_mode import parse_fsm_sync_mode
from rangekv.replication.transport import RaftTransport, transport_for
from rangekv.replication.transport_server import RaftTransportServicer
from rangekv.v1 import meta_pb2, raft_pb2, replica_pb2_grpc

log = logging.getLogger("rangekv.raftnode")

SERVICE_NAMES = ("rangekv.v1.Replica", "rangekv.v1.RaftTransport")


@dataclass
class _Node:
    """A storage node's parts, wired (`_assemble`) and not started yet."""

    store: Store
    transport: RaftTransport
    meta: MetaApi | None
    peers: Peers
    split_queue: SplitQueue
    rebalancer: Rebalancer
    service: ReplicaService
    raft_service: RaftTransportServicer
    telemetry: Telemetry
    #: The KV API served on this node's port (None: not served).
    frontend: Frontend | None


def _assemble(
    server_config: ServerConfig,
    node_config: RaftnodeConfig,
    faults: TestFaults,
    clock: Clock,
    rng: random.Random,
    peers: dict[int, str],
    meta: MetaApi | None,
    frontend: FrontendFactory | None = None,
) -> _Node:
    """Build every part of the node from its configuration and the seams it is given."""
    node_id = server_config.node_id
    assert server_config.data_dir is not None
    mode, warning = parse_fsm_sync_mode(node_config.fsm_sync_mode)
    if warning:
        log.warning("%s", warning)
    channels = node_channels(server_config.security)
    telemetry = Telemetry("raftnode", node_id=node_id, otlp_endpoint=server_config.otlp_endpoint)
    metrics = NodeMetrics(telemetry, mode)
    store_ref: list[Store] = []
    transport = transport_for(
        node_id,
        peers.get,
        lambda: store_ref[0],
        clock=clock,
        rng=random.Random(rng.random()),
        metrics=metrics.transport,
        stamp=lambda: store_ref[0].clock_now(),
        channels=channels,
        mutation=faults.mutation,
    )
    store = Store(
        StoreConfig(
            host=HostConfig(
                node_id=node_id,
                timing=node_config.timing(),
                fsm_sync_mode=mode,
                log_retain_entries=node_config.log_retain_entries,
                truncate_interval=node_config.truncate_interval,
                max_uncommitted_bytes=node_config.max_uncommitted_bytes,
                quiesce_after_ticks=node_config.quiesce_after_ticks,
                lazy_commit=node_config.lazy_commit,
                lazy_heartbeat=node_config.lazy_heartbeat,
                gather_turns=node_config.raft_gather_turns,
            ),
            limits=node_config.limits(),
            gc_interval=node_config.gc_interval,
            max_clock_offset_ns=int(node_config.max_clock_offset * 1e9),
        ),
        HostSeams(
            sender=transport,
            open_engines=RocksEngines(Path(server_config.data_dir), power_loss=faults.power_loss),
            clock=clock,
            rng=random.Random(rng.random()),
            faults=faults,
            scheduler_metrics=metrics.scheduler,
        ),
        resolve_address=lambda n: peers.get(n, ""),
    )
    store_ref.append(store)
    metrics.attach(store)
    store.ctx.tracer = telemetry.active_tracer

    async def handle_snapshot(
        header: raft_pb2.SnapshotHeader, chunks: AsyncIterator[bytes]
    ) -> bool:
        group_id, msg, _desc = message_from_proto(header.message)
        return await store.handle_snapshot(group_id, msg, header.descriptor, chunks)

    raft_service = RaftTransportServicer(
        node_id,
        store.handle_raft,
        handle_snapshot,
        admit_clock=store.admit_clock,
        refusing=faults.refusing_raft(),
    )
    split_config = node_config.split()
    node_peers = Peers(store, channels)
    pusher = TxnPusher(
        store,
        node_peers,
        clock,
        expiry=split_config.txn_expiry,
        rpc_timeout=split_config.rpc_timeout,
    )
    txns = DescriptorTxns(store, meta, pusher, clock, random.Random(rng.random()))
    splits = SplitCoordinator(
        txns, crash_after=faults.split_crash_after, rhs_serve_wait=split_config.rhs_serve_wait
    )
    change_config = node_config.replica_changes()
    changes = ReplicaChanger(txns, change_config, clock)
    kv_frontend = _kv_frontend(
        frontend, server_config, node_config, channels, telemetry, clock, rng
    )
    return _Node(
        store=store,
        transport=transport,
        meta=meta,
        peers=node_peers,
        split_queue=SplitQueue(splits, split_config, clock),
        rebalancer=Rebalancer(changes, meta, node_peers, change_config, clock),
        service=ReplicaService(
            store,
            splits=splits,
            changes=changes,
            max_stream_inflight=node_config.max_stream_inflight,
            frame_gather_turns=node_config.frame_gather_turns,
            on_frame_gather=metrics.frame_gather_turns.add,
        ),
        raft_service=raft_service,
        telemetry=telemetry,
        frontend=kv_frontend,
    )


def _kv_frontend(
    frontend: FrontendFactory | None,
    server_config: ServerConfig,
    node_config: RaftnodeConfig,
    channels: ChannelOpener,
    telemetry: Telemetry,
    clock: Clock,
    rng: random.Random,
) -> Frontend | None:
    """The KV API this node serves too, if it can (rangekv.raftnode.frontend)."""
    if not node_config.serve_kv:
        return None
    if frontend is None:
        log.info("no KV API on this node: no implementation given (`rangekv raftnode` gives one)")
        return None
    if not node_config.meta_addrs.strip():
        log.info("no KV API on this node: no --meta-addrs to route with")
        return None
    return frontend(
        FrontendContext(
            meta_addrs=node_config.meta_addrs,
            channels=channels,
            telemetry=telemetry,
            max_key_bytes=node_config.max_key_bytes,
            max_value_bytes=node_config.max_value_bytes,
            max_inflight_ops=node_config.kv_max_inflight_ops,
            request_timeout=node_config.kv_request_timeout,
            max_message_bytes=server_config.max_message_bytes,
            frame_gather_turns=node_config.frame_gather_turns,
            clock=clock,
            rng=random.Random(rng.random()),
        )
    )


async def serve(
    server_config: ServerConfig,
    node_config: RaftnodeConfig,
    *,
    frontend: FrontendFactory | None = None,
) -> None:
    """Run the node until signalled; `frontend` builds the KV API it also serves."""
    if server_config.data_dir is None:
        raise ConfigError("data_dir", "a raftnode needs --data-dir")
    data_dir = Path(server_config.data_dir)
    # Test-only settings: read once, here, then passed down; each one is loud.
    faults = TestFaults.from_env()
    for loud in faults.warnings():
        for _ in range(3):
            log.warning("%s", loud)
    clock = SystemClock(faults.clock_offset_ns)
    rng = random.Random()  # seeded from the OS: ids and incarnations differ across starts
    meta_addrs = [a.strip() for a in node_config.meta_addrs.split(",") if a.strip()]
    meta = (
        MetaClient(
            meta_addrs,
            channels=node_channels(server_config.security),
            clock=clock,
            rng=random.Random(rng.random()),
        )
        if meta_addrs
        else None
    )
    bootstrap_ids = parse_node_ids(node_config.bootstrap_nodes)
    ident = await _identity(server_config, data_dir, bootstrap_ids, meta, clock)
    if ident.node_id != server_config.node_id:
        server_config = dataclasses.replace(server_config, node_id=ident.node_id)
        setup_logging_from_config("raftnode", server_config)  # log lines name the node
    node_id = ident.node_id
    peers = parse_peers(node_config.peers)
    node = _assemble(server_config, node_config, faults, clock, rng, peers, meta, frontend)
    store = node.store
    kv = node.frontend

    def register(server: object) -> None:
        replica_pb2_grpc.add_ReplicaServicer_to_server(node.service, server)
        node.raft_service.add_to_server(server)  # type: ignore[arg-type]
        if kv is not None:
            kv.register(server)  # type: ignore[arg-type]

    loaded = store.load_replicas()
    if not loaded and bootstrap_ids and node_id in bootstrap_ids:
        store.bootstrap(first_range(bootstrap_ids))
    server = ServiceServer(
        "raftnode",
        server_config,
        node.telemetry,
        register=register,  # type: ignore[arg-type]
        service_names=SERVICE_NAMES + (kv.service_names if kv is not None else ()),
        logger=log,
    )
    pod = PodIdentity(server_config.pod_name, node_config.pod_namespace)
    shutdown = GracefulShutdown(
        store=store,
        server=server,
        queues=(node.rebalancer, node.split_queue),
        meta=meta,
        pod=pod,
        statefulsets=_statefulsets(pod),
        data_dir=data_dir,
        config=node_config.shutdown(),
        clock=clock,
    )
    store.start()
    node.split_queue.start()
    node.rebalancer.start()
    await server.start()
    host = node_config.advertise_host or server_config.listen_host
    address = f"{host}:{server.port}"
    if kv is not None:
        kv.serve_locally(address, node.service.serve_batch)
        log.info("KV API served at %s too (batches for this node's ranges in process)", address)
    registry: asyncio.Task[None] | None = None
    if meta is not None:
        registry = asyncio.ensure_future(
            _registry_loop(
                meta,
                node_id,
                address,
                server.metrics_address or "",
                peers,
                node_config,
                clock,
                server,
                shutdown,
            )
        )
    try:
        await server.run_until_signalled(before_stop=shutdown.run)
    finally:
        await cancel_and_wait([registry])
        if kv is not None:
            await kv.close()  # first: what it still serves needs the store running
        await node.rebalancer.stop()
        await node.split_queue.stop()
        await node.peers.close()
        if meta is not None:
            await meta.close()
        await node.transport.close()
        await store.stop()
        node.telemetry.shutdown()


async def _identity(
    server_config: ServerConfig,
    data_dir: Path,
    bootstrap_ids: Sequence[int],
    meta: MetaApi | None,
    clock: Clock,
) -> StoreIdent:
    """This store's node id (configured, kept in its folder, or allocated by the
    meta range); a retired store refuses to start. Closes `meta` on failure."""
    try:
        ident = await resolve_identity(
            data_dir,
            configured=server_config.node_id,
            ordinal=server_config.ordinal,
            bootstrap_nodes=bootstrap_ids,
            allocate=lambda: _allocate_node_id(meta, clock),
            registered=lambda node_id: _registered(meta, node_id),
        )
        if meta is not None:
            await _refuse_if_retired(meta, ident, data_dir)
    except BaseException:
        if meta is not None:
            await meta.close()
        raise
    return ident


def _statefulsets(pod: PodIdentity) -> StatefulSets | None:
    """The API server, when this pod is in a StatefulSet; None (lifecycle off) otherwise."""
    if not pod.in_cluster:
        return None
    try:
        return KubeStatefulSets.connect()
    except KubeError as exc:
        log.warning("Kubernetes lifecycle off: %s", exc)
        return None


async def _allocate_node_id(meta: MetaApi | None, clock: Clock) -> int:
    """A fresh node id from the meta range, waiting until it is bootstrapped."""
    if meta is None:
        raise ConfigError("meta_addrs", "a new node without a bootstrap id needs --meta-addrs")
    while True:
        try:
            resp = await meta.allocate_ids(meta_pb2.ID_KIND_NODE, 1)
        except E.Unavailable as exc:
            log.info("waiting for the meta range to hand out a node id: %s", exc.message)
            # Polling: the meta range answers once it is bootstrapped.
            await clock.sleep(1.0)
            continue
        log.info("new store: node id %d from the meta range", resp.first)
        return int(resp.first)


async def _registered(meta: MetaApi | None, node_id: int) -> bool | None:
    """Whether the store registry knows `node_id` (None: no meta range to ask now)."""
    if meta is None:
        return None
    try:
        nodes = await meta.list_nodes()
    except E.RangeKVError:
        return None
    return any(st.node.node_id == node_id for st in nodes.nodes)


async def _refuse_if_retired(meta: MetaApi, ident: StoreIdent, data_dir: Path) -> None:
    """A store the registry says is DECOMMISSIONED never serves again (even if the
    marker in its folder was lost); meta being unreachable is no reason not to start."""
    try:
        nodes = await meta.list_nodes()
    except E.RangeKVError as exc:
        log.warning("store registry not reachable at startup: %s", exc)
        return
    for st in nodes.nodes:
        if st.node.node_id == ident.node_id and st.state == meta_pb2.NODE_STATE_DECOMMISSIONED:
            ident.retired().save(data_dir)
            raise StoreRetired(ident.node_id, data_dir)


async def _registry_loop(
    meta: MetaApi,
    node_id: int,
    address: str,
    metrics_address: str,
    peers: dict[int, str],
    cfg: RaftnodeConfig,
    clock: Clock,
    server: ServiceServer,
    shutdown: GracefulShutdown,
) -> None:
    """Keep this node registered (and live) in meta, and `peers` fresh from it.

    Addresses may change across restarts; the registry is the truth once it
    answers, the static --peers map is only the starting point. A refused
    heartbeat means the node was decommissioned while running: it then holds
    nothing, marks its store retired and stops being ready, and waits to be
    stopped (it does not exit: a StatefulSet would only restart it).
    """
    while True:
        try:
            await meta.heartbeat(node_id, address, metrics_address)
            nodes = await meta.list_nodes()
            for status in nodes.nodes:
                if status.node.address:
                    peers[status.node.node_id] = status.node.address
        except E.FailedPrecondition as exc:
            if not shutdown.decommissioned:
                log.warning("%s", exc.message)
                shutdown.mark_retired()
                await server.begin_drain()
        except Exception as exc:  # meta unreachable for now: keep serving, try again
            log.warning("store registry heartbeat failed: %s", exc)
        await clock.sleep(cfg.registry_interval)


def main(argv: Sequence[str] | None = None, *, frontend: FrontendFactory | None = None) -> int:
    """`frontend`: how to build the KV API the node serves too (None: it serves none)."""
    return service_main(
        argv,
        service="raftnode",
        description=__doc__.splitlines()[0],
        config_cls=RaftnodeConfig,
        serve=functools.partial(serve, frontend=frontend),
        needs_node_id=False,  # resolved by `serve` (rangekv.raftnode.ident)
    )
