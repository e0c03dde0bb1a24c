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
from rangekv.raftnode.main import main as raftnode_main


def main(argv: Sequence[str] | None = None) -> int:
    # EmbeddedGateway(ctx) is the FrontendFactory: it takes the node's FrontendContext.
    return raftnode_main(argv, frontend=EmbeddedGateway)
