"""`rangekv node decommission|recommission N`: retire a storage node, or take it back.

`decommission` asks the Admin API (a gateway by `--addr`, or the same code in
this process with `--meta`, as the other admin verbs do) and follows the move
of the node's replicas and leases until the store registry marks it
DECOMMISSIONED (`--no-wait` returns after the first answer). Run it before
removing a node for good, e.g. before scaling a raftnode StatefulSet down by
hand (a raftnode scaled away does it by itself on SIGTERM).

`recommission` takes back a node that is still DECOMMISSIONING.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from rangekv.cli.kv import CLIError, add_common, emit_json, run
from rangekv.cli.target import admin_api, describe_target
from rangekv.metarange.records import NodeState
from rangekv.v1 import admin_pb2

ACTIONS = ("decommission", "recommission")


def _state(value: int) -> NodeState:
    return NodeState(value or NodeState.ACTIVE)


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
    add_common(p, admin=True)
    args = p.parse_args(argv)
    if args.node_id <= 0:
        p.error("node_id must be a positive integer")
    verb = _recommission if args.action == "recommission" else _decommission
    return run(lambda: verb(args), describe_target(args))


async def _decommission(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.wait_timeout
    last = ""
    req = admin_pb2.AdminDecommissionRequest(node_id=args.node_id)
    async with admin_api(args) as api:
        while True:
            # Each call follows the move for up to --timeout and says how far it got.
            resp = await api.decommission(req, args.timeout)
            state = _state(resp.status.state)
            done = state is NodeState.DECOMMISSIONED
            line = (
                f"node {args.node_id}: decommissioned"
                if done
                else f"node {args.node_id}: {state.label}, "
                f"{resp.replicas_remaining} replica(s) left"
            )
            if not args.json and line != last:
                print(line, file=sys.stdout if done or args.no_wait else sys.stderr, flush=True)
            last = line
            if done or args.no_wait:
                break
            if loop.time() >= deadline:
                raise CLIError(
                    f"{line} after {args.wait_timeout:.0f}s; the decommission goes on in "
                    "the cluster (run this again to follow it)"
                )
    if args.json:
        emit_json(
            {
                "node_id": args.node_id,
                "state": state.label,
                "live": resp.status.live,
                "replicas_remaining": resp.replicas_remaining,
            }
        )
    return 0


async def _recommission(args: argparse.Namespace) -> int:
    async with admin_api(args) as api:
        resp = await api.recommission(
            admin_pb2.AdminRecommissionRequest(node_id=args.node_id), args.timeout
        )
    state = _state(resp.status.state)
    if args.json:
        emit_json({"node_id": args.node_id, "state": state.label})
    else:
        print(f"node {args.node_id}: {state.label}")
    return 0
