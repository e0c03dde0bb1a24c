"""What a storage node hands the KV API it serves in its own process.

The storage node (`rangekv.raftnode.frontend`, the seam) and the gateway
(`rangekv.gateway.embedded`, the implementation) may not import each other, so
the value passed between them lives here, below both (plumbing: handles the
node already holds, and a few numbers).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from rangekv.common.clock import Clock
from rangekv.common.telemetry import Telemetry
from rangekv.common.tls import ChannelOpener

__all__ = ["FrontendContext"]


@dataclass(frozen=True)
class FrontendContext:
    """What the node hands a frontend: the same parts a standalone gateway reads
    from its flags, with this node's identity and limits."""

    #: The metarange replicas, HOST:PORT,... (never empty).
    meta_addrs: str
    #: How other nodes and the meta range are dialled (this node's identity under TLS).
    channels: ChannelOpener
    telemetry: Telemetry
    #: The node's key and value limits: the KV API refuses what the node would.
    max_key_bytes: int
    max_value_bytes: int
    #: Client operations served at once (more: RESOURCE_EXHAUSTED, nothing written).
    max_inflight_ops: int
    #: Seconds a call may take before it gives up.
    request_timeout: float
    #: The server's message bound, so that no stream answer exceeds it.
    max_message_bytes: int
    #: Event-loop turns a busy node stream's frame of reads may wait for more (the
    #: node's own --frame-gather-turns: one flag for both directions of a node).
    frame_gather_turns: int
    clock: Clock
    rng: random.Random
