"""What a raftnode does between SIGTERM and exit.

A rolling restart must cost no request a client could not safely retry, and
a scale-down must lose no replica. So on SIGTERM, before the server stops:

1. Scaled away? In a StatefulSet (pod name and namespace known) the node asks
   the API server for its StatefulSet's ``spec.replicas``; an ordinal at or
   above it means this pod is removed for good, not restarted. Then it
   decommissions (`decommission_node`): the registry marks it DECOMMISSIONING,
   the rebalancers (its own included, still running) add replacements, move
   its leases and remove its replicas; once no range names it the registry
   marks it DECOMMISSIONED and the data folder is marked retired. This is
   bounded by ``decommission_timeout`` (less than the pod's
   terminationGracePeriodSeconds); if the API server cannot answer, the node
   restarts rather than guesses (a decommission cannot be undone).
2. Hand off: readiness goes NOT_SERVING, peers stop handing this node leases
   (``RangeInfo.draining``), the rebalancer and split queues stop, and every
   range this node leads transfers its leadership (and so its lease) to an
   up-to-date voter, until none is led here or ``handoff_timeout`` passes.
   Requests that still arrive are answered NotLeaseHolder, which the gateway
   follows at once; nothing is cut off mid-way.
3. The server stops, giving in-flight RPCs the configured grace.

Liveness stays SERVING throughout: a long decommission must not look like a
hung process to the kubelet.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rangekv.common import errors as E
from rangekv.common.clock import Clock
from rangekv.common.descriptors import ReplicaType
from rangekv.common.kube import KubeError, PodIdentity, StatefulSets, scaled_away
from rangekv.common.server import ServiceServer
from rangekv.metarange.client import DecommissionProgress, MetaApi, decommission_node
from rangekv.raftnode.ident import StoreIdent
from rangekv.raftnode.replica import RangeReplica
from rangekv.raftnode.store import INITIAL_INDEX, Store

log = logging.getLogger("rangekv.raftnode")


@dataclass(frozen=True)
class ShutdownConfig:
    #: How long a scale-down decommission may take before the node exits anyway.
    decommission_timeout: float = 240.0
    #: How long leaderships may take to move away.
    handoff_timeout: float = 5.0
    #: Seconds between decommission progress polls and handoff checks.
    poll_interval: float = 0.5


class BackgroundQueue(Protocol):
    """A queue that starts changes on its own (split queue, rebalancer)."""

    async def stop(self) -> None: ...


class GracefulShutdown:
    """Runs steps 1-2 of the module doc; the server's own stop is step 3."""

    def __init__(
        self,
        *,
        store: Store,
        server: ServiceServer,
        queues: Sequence[BackgroundQueue],
        meta: MetaApi | None,
        pod: PodIdentity,
        statefulsets: StatefulSets | None,
        data_dir: Path,
        config: ShutdownConfig,
        clock: Clock,
    ) -> None:
        self.store = store
        self.server = server
        self.queues = tuple(queues)
        self.meta = meta
        self.pod = pod
        self.statefulsets = statefulsets
        self.data_dir = data_dir
        self.config = config
        self._clock = clock
        self.decommissioned = False

    async def run(self) -> None:
        node = self.store.node_id
        if await self._scaled_away():
            log.info("node %d: pod %s is scaled away: decommissioning", node, self.pod.pod_name)
            await self.server.begin_drain()
            await self.decommission()
        await self.hand_off()

    async def _scaled_away(self) -> bool:
        if self.statefulsets is None or not self.pod.in_cluster or self.meta is None:
            return False
        try:
            return await scaled_away(self.pod, self.statefulsets)
        except KubeError as exc:
            log.warning("cannot tell a scale-down from a restart (%s): restarting", exc)
            return False

    async def decommission(self) -> None:
        """Step 1 (module doc); returns when done or when decommission_timeout passed."""
        assert self.meta is not None
        self.store.draining = True

        def report(progress: DecommissionProgress) -> None:
            log.info("decommission: %s", progress.describe())

        try:
            await decommission_node(
                self.meta,
                self.store.node_id,
                timeout=self.config.decommission_timeout,
                poll_interval=self.config.poll_interval,
                on_progress=report,
                monotonic=self._clock.monotonic,
                sleep=self._clock.sleep,
            )
        except E.RangeKVError as exc:
            log.error("decommission of node %d unfinished: %s", self.store.node_id, exc)
            return
        self.mark_retired()

    def mark_retired(self) -> None:
        """Record in the data folder that this store may never serve again."""
        if not self.decommissioned:
            StoreIdent(self.store.node_id).retired().save(self.data_dir)
            self.decommissioned = True
            log.info("node %d is decommissioned; its store is retired", self.store.node_id)

    async def hand_off(self) -> None:
        """Step 2 (module doc)."""
        self.store.draining = True
        await self.server.begin_drain()
        for queue in self.queues:
            await queue.stop()
        deadline = self._clock.monotonic() + self.config.handoff_timeout
        asked: dict[int, float] = {}
        while True:
            led = self._led()
            if not led:
                log.info("node %d: no lease left here", self.store.node_id)
                return
            now = self._clock.monotonic()
            if now >= deadline:
                log.warning(
                    "node %d: %d range(s) still led here after %.1fs: %s",
                    self.store.node_id,
                    len(led),
                    self.config.handoff_timeout,
                    ", ".join(f"r{r.range_id}" for r in led[:10]),
                )
                return
            for replica in led:
                # A transfer the core dropped (the target was behind) is asked again.
                if now - asked.get(replica.range_id, -1e9) >= 1.0:
                    target = _handoff_target(replica)
                    if target is not None:
                        replica.transfer_leadership(target)
                        asked[replica.range_id] = now
            # Polling raft state until the transfers took effect.
            await self._clock.sleep(min(0.05, self.config.poll_interval))

    def _led(self) -> list[RangeReplica]:
        return [
            r
            for r in self.store.replicas()
            if not r.removed and r.applied_index >= INITIAL_INDEX and r.is_leader
        ]


def _handoff_target(replica: RangeReplica) -> int | None:
    """The voter (replica id) to lead next: one that answered recently (a peer
    that is itself restarting cannot take over), with the most of the log."""
    progress = replica.raft_status().progress
    best: tuple[bool, int, int] | None = None
    for r in replica.descriptor.replicas:
        if r.replica_id == replica.replica_id or r.type != ReplicaType.VOTER:
            continue
        pr = progress.get(r.replica_id)
        key = (pr.recent_active, pr.match) if pr is not None else (False, 0)
        if best is None or key > best[:2]:
            best = (*key, r.replica_id)
    return None if best is None else best[2]


__all__ = ["GracefulShutdown", "ShutdownConfig"]
