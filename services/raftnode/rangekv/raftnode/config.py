"""Configuration of a storage node: one frozen dataclass, read from flags and env in one place."""

from __future__ import annotations

from dataclasses import dataclass

from rangekv.common.config import require, setting
from rangekv.domain.limits import (
    MAX_BATCH_OPS,
    KeyValueLimits,
    max_key_bytes_setting,
    max_value_bytes_setting,
)
from rangekv.domain.peers import parse_node_ids, parse_peers
from rangekv.raftnode.change import ReplicaChangeConfig
from rangekv.raftnode.fences import FenceLimits
from rangekv.raftnode.requests import ReplicaLimits
from rangekv.raftnode.shutdown import ShutdownConfig
from rangekv.raftnode.split import SplitConfig
from rangekv.replication.timing import RaftTiming


@dataclass(frozen=True)
class RaftnodeConfig:
    """What a raftnode needs beyond the generic ServerConfig."""

    peers: str = setting(
        "",
        help="static addresses of the storage nodes, NODE=HOST:PORT,... "
        "(used until the meta range's store registry is available)",
    )
    meta_addrs: str = setting(
        "",
        help="metarange replicas, HOST:PORT,...: the node registers its address there "
        "and learns its peers' addresses from the store registry",
    )
    serve_kv: bool = setting(
        True,
        help="also serve the public KV API on this node's port, routed as a gateway "
        "routes it (needs --meta-addrs): a request sent to the node holding its range's "
        "lease skips the gateway hop",
    )
    kv_max_inflight_ops: int = setting(
        10_000,
        help="client operations the node's KV API serves at once; more are refused with "
        "RESOURCE_EXHAUSTED (and a retry delay), nothing written",
    )
    kv_request_timeout: float = setting(
        10.0, help="seconds a call to the node's KV API may take before it gives up"
    )
    registry_interval: float = setting(
        2.0, help="seconds between store-registry heartbeats and address refreshes"
    )
    advertise_host: str = setting(
        "", help="host peers and gateways reach this node at (default: the listen host)"
    )
    bootstrap_nodes: str = setting(
        "",
        help="node ids of the first range's replicas, e.g. 1,2,3; a node listed here "
        "creates the first range on first start (idempotent)",
    )
    fsm_sync_mode: str = setting(
        "nosync",
        help="sync|nosync: fsync state-machine commits, or rely on the synced raft log "
        "and replay it after a power loss (unknown values fall back to sync with a warning)",
    )
    tick_interval: float = setting(0.1, help="seconds per raft tick")
    heartbeat_ticks: int = setting(1, help="raft ticks between leader heartbeats")
    election_ticks: int = setting(10, help="raft ticks without a leader before an election")
    max_clock_drift: float = setting(
        0.05, help="bound on clock rate drift between nodes (fraction); shortens the lease"
    )
    max_clock_offset: float = setting(
        0.5,
        help="seconds two clocks of the cluster may differ by; a timestamp (or a peer's "
        "clock) further ahead of this node's clock is refused",
    )
    log_retain_entries: int = setting(
        2000, help="raft log entries kept below the applied index after truncation"
    )
    truncate_interval: float = setting(5.0, help="seconds between raft log truncation passes")
    quiesce_after_ticks: int = setting(
        3,
        help="raft ticks a range's leader must be idle (nothing proposed, nothing in "
        "flight, every replica caught up) before the range quiesces: no ticks, no "
        "heartbeats, its lease kept by node-level liveness (0: never quiesce)",
    )
    lazy_commit: bool = setting(
        True,
        help="followers learn a moved commit index from the next append or heartbeat, "
        "not from an empty append of its own (half the raft messages of a lone write; "
        "splits are still published at once); off: etcd's eager way",
    )
    lazy_heartbeat: bool = setting(
        True,
        help="a range's leader sends no heartbeat to a follower it sent an append since "
        "the last one and that answered it (the appends carry the term, the commit "
        "index and the lease round); off: a heartbeat to every follower every interval",
    )
    raft_gather_turns: int = setting(
        16,
        help="when the raft scheduler finds inputs waiting as an iteration ends (a busy "
        "node), event-loop turns it may yield first, while each brings more, so that "
        "ranges' entries share one log write and one frame per peer (0: never)",
    )
    frame_gather_turns: int = setting(
        16,
        help="when a BatchFrames stream is busy (items queued while the last frame was "
        "written) and its queued items are all reads or answers to reads, event-loop turns "
        "the next frame may wait while each brings more, so that the reads of many ranges "
        "share one frame (0: never; writes never wait); for the answers this node sends, "
        "its KV API's batches to other nodes and its KV API's KV/Stream answers",
    )
    max_key_bytes: int = max_key_bytes_setting()
    max_value_bytes: int = max_value_bytes_setting()
    gc_ttl: float = setting(
        600.0, help="seconds MVCC versions stay readable after being overwritten"
    )
    gc_interval: float = setting(60.0, help="seconds between MVCC garbage-collection passes")
    read_index_timeout: float = setting(
        2.0, help="seconds a read-index may take before UNAVAILABLE"
    )
    write_timeout: float = setting(5.0, help="seconds a write may take to apply before UNAVAILABLE")
    max_queued_writes: int = setting(
        20_000,
        help="write operations one range may queue before new ones get RESOURCE_EXHAUSTED",
    )
    max_uncommitted_bytes: int = setting(
        64 << 20,
        help="bytes of proposals a range's leader holds uncommitted before refusing more "
        "(RESOURCE_EXHAUSTED)",
    )
    max_scan_page_bytes: int = setting(
        1 << 20, help="bytes of keys and values one scan page (one node answer) may carry"
    )
    max_read_response_bytes: int = setting(
        16 << 20,
        help="bytes one batch of reads may answer; a bigger answer is refused "
        "(RESOURCE_EXHAUSTED) and the gateway splits the batch",
    )
    max_stream_inflight: int = setting(
        1024, help="batches of one gateway stream served at once (the rest wait)"
    )
    max_scan_fences: int = setting(1024, help="scan fences one range may hold at once")
    txn_expiry: float = setting(
        5.0,
        help="seconds a split transaction's record may go without a heartbeat before a push "
        "aborts it",
    )
    split_size_threshold: int = setting(
        64 << 20, help="split a range once its MVCC data exceeds this many bytes (0: never)"
    )
    split_check_interval: float = setting(
        10.0, help="seconds between range size checks and txn record cleanups"
    )

    replication_factor: int = setting(3, help="voters every range should have (rebalancer)")
    dead_after: float = setting(
        60.0,
        help="seconds a node may be not live in the store registry before the rebalancer "
        "replaces its replicas",
    )
    rebalance_interval: float = setting(
        5.0, help="seconds between rebalancer / replica GC passes (0: off)"
    )
    rebalance: bool = setting(
        True,
        help="leaseholders change replicas and move leases on their own, to keep every "
        "range at the replication factor and spread the load; off (--no-rebalance): "
        "every change is an operator's, and only replica GC runs",
    )
    rebalance_cooldown: float = setting(
        30.0,
        help="seconds after a node's rebalancer moved a range's replica or lease to spread "
        "the load during which that node does not move the range again for spreading "
        "(0: no cool-down)",
    )
    catchup_timeout: float = setting(
        60.0, help="seconds a new learner may take to catch up before the add gives up"
    )

    pod_namespace: str = setting(
        "",
        help="the pod's namespace (downward API metadata.namespace); with --pod-name, turns "
        "on the Kubernetes lifecycle: on SIGTERM a pod whose ordinal is at or above its "
        "StatefulSet's spec.replicas decommissions before it exits (unset: off)",
    )
    decommission_timeout: float = setting(
        240.0,
        help="on a scale-down, seconds the decommission may take before the node exits "
        "anyway (keep it below the pod's terminationGracePeriodSeconds)",
    )
    handoff_timeout: float = setting(
        5.0, help="on SIGTERM, seconds the node may take to hand its leases to other nodes"
    )

    def __post_init__(self) -> None:
        require(
            1 <= self.kv_max_inflight_ops <= MAX_BATCH_OPS,
            "kv_max_inflight_ops",
            f"must be in [1, {MAX_BATCH_OPS}] (the operations of one node batch, which "
            "may merge every operation in flight)",
        )
        require(self.kv_request_timeout > 0, "kv_request_timeout", "must be > 0")
        require(self.decommission_timeout > 0, "decommission_timeout", "must be > 0")
        require(self.handoff_timeout >= 0, "handoff_timeout", "must be >= 0")
        try:
            parse_peers(self.peers)
        except ValueError as exc:
            require(False, "peers", str(exc))
        try:
            parse_node_ids(self.bootstrap_nodes)
        except ValueError as exc:
            require(False, "bootstrap_nodes", str(exc))
        try:
            timing = self.timing()
        except ValueError as exc:
            require(False, "election_ticks", str(exc))
        else:
            if self.lazy_heartbeat:
                try:
                    timing.check_lazy_heartbeat()
                except ValueError as exc:
                    require(False, "heartbeat_ticks", f"{exc} (--no-lazy-heartbeat)")
        require(self.log_retain_entries >= 0, "log_retain_entries", "must be >= 0")
        require(self.max_key_bytes > 0, "max_key_bytes", "must be > 0")
        require(self.max_value_bytes > 0, "max_value_bytes", "must be > 0")
        require(self.max_clock_offset > 0, "max_clock_offset", "must be > 0")
        for name in (
            "max_queued_writes",
            "max_uncommitted_bytes",
            "max_scan_page_bytes",
            "max_read_response_bytes",
            "max_stream_inflight",
            "max_scan_fences",
        ):
            require(getattr(self, name) > 0, name, "must be > 0")
        require(self.gc_ttl > 0, "gc_ttl", "must be > 0")
        require(self.gc_interval > 0, "gc_interval", "must be > 0")
        require(self.txn_expiry > 0, "txn_expiry", "must be > 0")
        require(self.split_size_threshold >= 0, "split_size_threshold", "must be >= 0")
        require(self.quiesce_after_ticks >= 0, "quiesce_after_ticks", "must be >= 0")
        require(self.raft_gather_turns >= 0, "raft_gather_turns", "must be >= 0")
        require(self.frame_gather_turns >= 0, "frame_gather_turns", "must be >= 0")
        require(self.split_check_interval > 0, "split_check_interval", "must be > 0")
        require(self.rebalance_cooldown >= 0, "rebalance_cooldown", "must be >= 0")
        try:
            self.replica_changes()
        except ValueError as exc:
            require(False, "replication_factor", str(exc))

    def timing(self) -> RaftTiming:
        return RaftTiming(
            tick_interval=self.tick_interval,
            heartbeat_ticks=self.heartbeat_ticks,
            election_ticks=self.election_ticks,
            max_clock_drift=self.max_clock_drift,
        )

    def limits(self) -> ReplicaLimits:
        return ReplicaLimits(
            kv=KeyValueLimits(self.max_key_bytes, self.max_value_bytes),
            read_index_timeout=self.read_index_timeout,
            write_timeout=self.write_timeout,
            gc_ttl=self.gc_ttl,
            max_queued_writes=self.max_queued_writes,
            max_scan_page_bytes=self.max_scan_page_bytes,
            max_read_response_bytes=self.max_read_response_bytes,
            fences=FenceLimits(max_fences=self.max_scan_fences),
        )

    def replica_changes(self) -> ReplicaChangeConfig:
        return ReplicaChangeConfig(
            replication_factor=self.replication_factor,
            dead_after=self.dead_after,
            check_interval=self.rebalance_interval,
            rebalance=self.rebalance,
            rebalance_cooldown=self.rebalance_cooldown,
            catchup_timeout=self.catchup_timeout,
        )

    def shutdown(self) -> ShutdownConfig:
        return ShutdownConfig(
            decommission_timeout=self.decommission_timeout, handoff_timeout=self.handoff_timeout
        )

    def split(self) -> SplitConfig:
        return SplitConfig(
            txn_expiry=self.txn_expiry,
            size_threshold=self.split_size_threshold,
            check_interval=self.split_check_interval,
        )
