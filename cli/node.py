"""`rangekv node decommission|recommission N`: retire a storage node, or take it back.

Talks to the meta range (`--meta`, or a `rangekv dev` cluster's DATA/cluster.json),
as the other admin verbs do. `decommission` follows the move of the node's
replicas and leases until the registry marks it DECOMMISSIONED (`--no-wait`
returns at once); run it before removing a node for good, e.g. before scaling a
raftnode StatefulSet down (a raftnode scaled away does it by itself on SIGTERM).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rangekv.cli.admin import meta_addresses
from rangekv.cli.kv import add_common, emit_json, run
from rangekv.metarange.client import MetaClient
from rangekv.metarange.decommission import (
    DecommissionProgress,
    decommission_node,
    recommission_node,
)
from rangekv.metarange.records import NodeState

ACTIONS = ("decommission", "recommission")


def _progress_json(p: DecommissionProgress) -> dict[str, object]:
    return {
        "node_id": p.node_id,
        "state": p.state.label,
        "live": p.live,
        "replicas": p.replicas,
        "range_ids": list(p.range_ids),
    }


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="rangekv node", description=__doc__.splitlines()[0])
    p.add_argument("action", choices=ACTIONS)
    p.add_argument("node_id", type=int)
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="decommission: start it and return (default: follow it to the end)",
    )
    p.add_argument(
        "--wait-timeout",
        type=float,
        default=600.0,
        help="decommission: seconds to follow it before giving up (default 600)",
    )
    add_common(p, gateway=False)
    args = p.parse_args(argv)
    if args.node_id <= 0:
        p.error("node_id must be a positive integer")

    async def body() -> int:
        meta = MetaClient(meta_addresses(args), timeout=args.timeout)
        try:
            if args.action == "recommission":
                status = await recommission_node(meta, args.node_id)
                state = NodeState(status.state or NodeState.ACTIVE)
                if args.json:
                    emit_json({"node_id": args.node_id, "state": state.label})
                else:
                    print(f"node {args.node_id}: {state.label}")
                return 0
            last: list[str] = []

            def show(progress: DecommissionProgress) -> None:
                line = progress.describe()
                if not args.json and (not last or last[-1] != line):
                    print(line, file=sys.stderr if not progress.done else sys.stdout, flush=True)
                last.append(line)

            progress = await decommission_node(
                meta,
                args.node_id,
                wait=not args.no_wait,
                timeout=args.wait_timeout,
                on_progress=show,
            )
            if args.json:
                emit_json(_progress_json(progress))
            elif not progress.done:
                print(progress.describe())
            return 0
        finally:
            await meta.close()

    return run(body)
