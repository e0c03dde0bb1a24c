"""Decommissioning a storage node: the one async function the CLI and the Admin API call.

A decommission is driven by the meta range's store registry, not by the node
(`Meta.Decommission`): the node becomes DECOMMISSIONING, every leaseholder's
rebalancer then moves the node's replicas and leases elsewhere
(`rangekv.raftnode.change.plan_action`), and once no range names the node the
registry marks it DECOMMISSIONED for good. This module only starts that and
follows it to the end, so that it works whether the node is up, down, or is
the process asking (a raftnode scaled away on SIGTERM).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from rangekv.common import errors as E
from rangekv.metarange.client import MetaClient
from rangekv.metarange.records import NodeState
from rangekv.v1 import admin_pb2, meta_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecommissionProgress:
    """How far a node's decommission is (one answer of Meta.Decommission)."""

    node_id: int
    state: NodeState
    live: bool
    #: Ranges that still name the node (committed descriptors and intents).
    replicas: int
    #: Some of those ranges (the registry lists at most 100).
    range_ids: tuple[int, ...]
    #: The registry entry as the meta range answered it.
    status: meta_pb2.NodeStatus

    @property
    def done(self) -> bool:
        return self.state is NodeState.DECOMMISSIONED

    @staticmethod
    def from_proto(resp: meta_pb2.DecommissionResponse) -> DecommissionProgress:
        return DecommissionProgress(
            node_id=resp.node.node.node_id,
            state=NodeState(resp.node.state or NodeState.ACTIVE),
            live=resp.node.live,
            replicas=resp.replicas,
            range_ids=tuple(resp.range_ids),
            status=resp.node,
        )

    def describe(self) -> str:
        if self.done:
            return f"node {self.node_id}: decommissioned"
        some = ", ".join(f"r{r}" for r in self.range_ids[:5])
        more = "" if len(self.range_ids) <= 5 else ", ..."
        return f"node {self.node_id}: {self.state.label}, {self.replicas} replica(s) left" + (
            f" ({some}{more})" if some else ""
        )


async def decommission_node(
    meta: MetaClient,
    node_id: int,
    *,
    wait: bool = True,
    timeout: float = 600.0,
    poll_interval: float = 1.0,
    on_progress: Callable[[DecommissionProgress], None] | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> DecommissionProgress:
    """Decommission `node_id` and, with `wait`, follow it until DECOMMISSIONED.

    Idempotent: calling it for a node already leaving (or gone) just reports.
    Without `wait` it returns after the first answer (the move goes on in the
    cluster). Raises NotFound for an unknown node, and DeadlineExceeded if the
    node still holds replicas after `timeout` seconds (the decommission goes on;
    call again to keep following it). An unavailable meta range is retried
    until then. `on_progress` sees every answer.
    """
    deadline = monotonic() + timeout
    while True:
        try:
            progress = DecommissionProgress.from_proto(await meta.decommission(node_id))
        except E.Unavailable as exc:
            # The meta range is electing or unreachable for now: keep trying (the
            # call is idempotent) until the deadline, unless asked not to wait.
            if not wait or monotonic() >= deadline:
                raise
            log.info("decommission of node %d: meta range unavailable: %s", node_id, exc)
            await sleep(min(poll_interval, max(0.0, deadline - monotonic())))
            continue
        if on_progress is not None:
            on_progress(progress)
        if progress.done or not wait:
            return progress
        if monotonic() >= deadline:
            raise E.DeadlineExceeded(
                f"{progress.describe()} after {timeout:.0f}s; the decommission goes on "
                "in the cluster (is there a live node to take its replicas?)"
            )
        # Polling the registry: progress is made by the rebalancers, not by this call.
        await sleep(min(poll_interval, max(0.0, deadline - monotonic())))


async def decommission_for_admin(
    meta: MetaClient, request: admin_pb2.AdminDecommissionRequest, timeout: float
) -> admin_pb2.AdminDecommissionResponse:
    """`rangekv.v1.Admin/Decommission` (the gateway's DecommissionFn): start the
    decommission and follow it until it is done or the request's deadline is
    near, then answer how far it got (the move goes on; ask again to follow it)."""
    seen: list[DecommissionProgress] = []
    budget = max(0.0, timeout - min(1.0, timeout / 4))  # answer before the caller's deadline
    # Not done by then: the last progress is the answer.
    with contextlib.suppress(E.DeadlineExceeded):
        await decommission_node(
            meta, request.node_id, timeout=budget, poll_interval=0.5, on_progress=seen.append
        )
    last = seen[-1]
    return admin_pb2.AdminDecommissionResponse(status=last.status, replicas_remaining=last.replicas)


async def recommission_node(meta: MetaClient, node_id: int) -> meta_pb2.NodeStatus:
    """Take a DECOMMISSIONING node back to ACTIVE (FailedPrecondition once it is gone)."""
    return (await meta.recommission(node_id)).node


async def recommission_for_admin(
    meta: MetaClient, request: admin_pb2.AdminRecommissionRequest, timeout: float
) -> admin_pb2.AdminRecommissionResponse:
    """`rangekv.v1.Admin/Recommission` (the gateway's RecommissionFn)."""
    return admin_pb2.AdminRecommissionResponse(
        status=await recommission_node(meta, request.node_id)
    )


__all__ = [
    "DecommissionProgress",
    "decommission_for_admin",
    "decommission_node",
    "recommission_for_admin",
    "recommission_node",
]
