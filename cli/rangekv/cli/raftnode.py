"""`rangekv raftnode`: a storage node that also serves the public KV API.

The storage node (`rangekv.raftnode.main`) and the gateway are separate
services that do not import each other's internals; this verb joins them: the
node gets a factory (`rangekv.raftnode.frontend.FrontendFactory`) that builds
the gateway's KV API inside it (`rangekv.gateway.embedded`). Flags are the
node's (`rangekv raftnode --help`; `--no-serve-kv` turns the KV API off).
"""

from __future__ import annotations

from collections.abc import Sequence

from rangekv.gateway.embedded import EmbeddedGateway
from rangekv.raftnode.frontend import FrontendContext
from rangekv.raftnode.main import main as raftnode_main


def embedded_gateway(ctx: FrontendContext) -> EmbeddedGateway:
    """The KV API of the node described by `ctx`."""
    return EmbeddedGateway(
        meta_addrs=ctx.meta_addrs,
        channels=ctx.channels,
        telemetry=ctx.telemetry,
        limits=ctx.limits,
        max_inflight_ops=ctx.max_inflight_ops,
        request_timeout=ctx.request_timeout,
        max_message_bytes=ctx.max_message_bytes,
        clock=ctx.clock,
        rng=ctx.rng,
    )


def main(argv: Sequence[str] | None = None) -> int:
    return raftnode_main(argv, frontend=embedded_gateway)
