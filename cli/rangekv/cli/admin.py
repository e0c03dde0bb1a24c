"""The admin verbs: ranges, nodes, split, transfer-lease, change-replicas, decommission.

Each is one call (or, for `ranges`, one call per page) of the `rangekv.v1.Admin`
API, through a gateway given by `--addr` alone; `--data` and `--meta` are the
alternatives `rangekv.cli.target` describes. Output and error conventions are
those of `rangekv.cli.kv`; tables are drawn by `rangekv.cli.output` (rich on a
terminal, plain text when piped), and `--json` is the stable, scripted form.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

from rangekv.cli.kv import (
    CLIError,
    add_common,
    add_hex,
    emit_json,
    json_bytes,
    run,
    show,
    to_bytes,
)
from rangekv.cli.output import Output, table
from rangekv.cli.target import admin_api, describe_target
from rangekv.v1 import admin_pb2, meta_pb2, replica_pb2, types_pb2

PAGE = 1000


def _parser(verb: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"rangekv {verb}", description=description)


def _span_text(args: argparse.Namespace, d: types_pb2.RangeDescriptor) -> tuple[str, str]:
    start = show(args, d.start_key) if d.start_key else "-inf"
    end = show(args, d.end_key) if d.end_key else "+inf"
    return start, end


def _replicas_text(d: types_pb2.RangeDescriptor) -> str:
    parts = []
    for r in d.replicas:
        learner = r.type == types_pb2.REPLICA_TYPE_LEARNER
        parts.append(f"n{r.node_id}{'(learner)' if learner else ''}")
    return ",".join(parts)


def size_text(size: int) -> str:
    """Bytes for people: `-` for unknown, then B, KiB, MiB, GiB."""
    if not size:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def range_record(args: argparse.Namespace, r: admin_pb2.RangeStatus) -> dict[str, Any]:
    """One range in `ranges --json` (a stable format: scripts depend on it)."""
    d = r.descriptor
    return {
        "range_id": d.range_id,
        "start_key": json_bytes(args, d.start_key),
        "end_key": json_bytes(args, d.end_key),
        "replicas": [
            {
                "node_id": rep.node_id,
                "replica_id": rep.replica_id,
                "type": types_pb2.ReplicaType.Name(rep.type),
            }
            for rep in d.replicas
        ],
        "leaseholder": r.leaseholder_node_id or None,
        "lease_valid": bool(r.leaseholder_node_id and r.lease_valid),
        "generation": d.generation,
        "applied_index": r.applied_index if r.leaseholder_node_id else None,
        "size_bytes": r.approximate_size_bytes or None,
    }


def range_row(args: argparse.Namespace, r: admin_pb2.RangeStatus) -> list[str]:
    d = r.descriptor
    start, end = _span_text(args, d)
    holder = "-"
    if r.leaseholder_node_id:
        holder = f"n{r.leaseholder_node_id}" + ("" if r.lease_valid else " (no lease)")
    return [
        str(d.range_id),
        start,
        end,
        _replicas_text(d),
        holder,
        str(d.generation),
        str(r.applied_index) if r.leaseholder_node_id else "-",
        size_text(r.approximate_size_bytes),
    ]


RANGE_HEADERS = ["RANGE", "START", "END", "REPLICAS", "LEASEHOLDER", "GEN", "APPLIED", "SIZE"]


def ranges_main(argv: Sequence[str]) -> int:
    p = _parser(
        "ranges",
        "A table of ranges: id, span, replicas, leaseholder, generation, applied index, size.",
    )
    p.add_argument("--start", default="", help="first key to list from (default: keyspace start)")
    p.add_argument("--limit", type=int, default=0, help="at most N ranges (default: all)")
    add_hex(p)
    add_common(p, admin=True)
    args = p.parse_args(argv)
    if args.limit < 0:
        p.error("--limit must be >= 0")

    async def main() -> int:
        statuses: list[admin_pb2.RangeStatus] = []
        unreachable: dict[int, admin_pb2.UnreachableNode] = {}
        start = to_bytes(args, args.start, "start key")
        async with admin_api(args) as api:
            while True:
                want = PAGE if not args.limit else min(PAGE, args.limit - len(statuses))
                resp = await api.list_ranges(
                    admin_pb2.AdminListRangesRequest(start_key=start, limit=want), args.timeout
                )
                statuses.extend(resp.ranges)
                for n in resp.unreachable_nodes:
                    unreachable.setdefault(n.node_id, n)
                done = args.limit and len(statuses) >= args.limit
                if not resp.next_start_key or done or resp.next_start_key <= start:
                    break
                start = resp.next_start_key
        if args.json:
            emit_json(
                {
                    "ranges": [range_record(args, r) for r in statuses],
                    "unreachable_nodes": [
                        {"node_id": n.node_id, "error": n.error} for n in unreachable.values()
                    ],
                }
            )
            return 0
        out = Output.for_stream()
        out.table(
            RANGE_HEADERS,
            [range_row(args, r) for r in statuses],
            right=[True, False, False, False, False, True, True, True],
        )
        for n in unreachable.values():
            out.line(f"(node {n.node_id} at {n.address} did not answer: {n.error})", style="yellow")
        return 0

    return run(main, describe_target(args))


def node_record(n: admin_pb2.NodeSummary, now_ns: int) -> dict[str, Any]:
    """One node in `nodes --json` (a stable format: scripts depend on it)."""
    hb = n.status.last_heartbeat_wall_time
    age = (now_ns - hb) / 1e9 if hb else None
    return {
        "node_id": n.status.node.node_id,
        "address": n.status.node.address,
        "metrics_address": n.status.node.metrics_address,
        "live": n.status.live,
        "state": meta_pb2.NodeState.Name(n.status.state or meta_pb2.NODE_STATE_ACTIVE)
        .removeprefix("NODE_STATE_")
        .lower(),
        "last_heartbeat_age_s": None if age is None else round(age, 3),
        "reachable": n.reachable,
        "replicas": n.replica_count if n.reachable else None,
        "leases": n.lease_count if n.reachable else None,
        "error": n.error or None,
    }


NODE_HEADERS = [
    "NODE",
    "ADDRESS",
    "LIVENESS",
    "STATE",
    "HEARTBEAT",
    "REPLICAS",
    "LEASES",
    "REACHABLE",
    "METRICS",
]


def node_row(r: dict[str, Any]) -> list[str]:
    age = r["last_heartbeat_age_s"]
    return [
        str(r["node_id"]),
        str(r["address"]),
        "live" if r["live"] else "DEAD",
        str(r["state"]),
        "-" if age is None else f"{age:.1f}s ago",
        "-" if r["error"] else str(r["replicas"]),
        "-" if r["error"] else str(r["leases"]),
        "yes" if r["reachable"] else "NO",
        str(r["metrics_address"] or "-"),
    ]


def nodes_main(argv: Sequence[str]) -> int:
    p = _parser("nodes", "The store registry with liveness, and what each node hosts.")
    add_common(p, admin=True)
    args = p.parse_args(argv)

    async def main() -> int:
        async with admin_api(args) as api:
            resp = await api.list_nodes(admin_pb2.AdminListNodesRequest(), args.timeout)
        now_ns = time.time_ns()
        records = [node_record(n, now_ns) for n in resp.nodes]
        if args.json:
            emit_json({"nodes": records})
            return 0
        out = Output.for_stream()
        out.table(NODE_HEADERS, [node_row(r) for r in records])
        for r in records:
            if r["error"]:
                out.line(f"(node {r['node_id']}: {r['error']})", style="yellow")
        return 0

    return run(main, describe_target(args))


def transfer_lease_main(argv: Sequence[str]) -> int:
    p = _parser(
        "transfer-lease",
        "Move the lease of RANGE_ID to NODE_ID (asks the current leaseholder).",
    )
    p.add_argument("range_id", type=int)
    p.add_argument("node_id", type=int)
    add_common(p, admin=True)
    args = p.parse_args(argv)

    async def main() -> int:
        req = admin_pb2.AdminTransferLeaseRequest(
            range_id=args.range_id, target_node_id=args.node_id
        )
        async with admin_api(args) as api:
            resp = await api.transfer_lease(req, args.timeout)
        if args.json:
            out: dict[str, Any] = {
                "range_id": resp.range_id,
                "from": resp.from_node_id,
                "to": resp.to_node_id,
                "moved": resp.moved,
            }
            if resp.moved:
                out["lease_sequence"] = resp.lease_sequence
            emit_json(out)
        elif not resp.moved:
            print(f"node {args.node_id} already holds the lease of range {args.range_id}")
        else:
            print(
                f"range {args.range_id}: lease moved from node {resp.from_node_id} "
                f"to node {resp.to_node_id} (sequence {resp.lease_sequence})"
            )
        return 0

    return run(main, describe_target(args))


def split_main(argv: Sequence[str]) -> int:
    p = _parser(
        "split",
        "Split the range holding each KEY so that KEY starts a new range. Several keys "
        "are split in ascending order, each once the previous right-hand range serves; "
        "a bad key (empty, repeated, already a range start) refuses them all.",
    )
    p.add_argument("keys", nargs="+", metavar="KEY")
    add_hex(p)
    add_common(p, admin=True)
    args = p.parse_args(argv)

    async def main() -> int:
        keys = [to_bytes(args, k, "key") for k in args.keys]
        if not all(keys):
            raise CLIError("INVALID_ARGUMENT: split key must not be empty", code=2)
        req = admin_pb2.AdminSplitRangeRequest(split_key=keys[0], more_split_keys=keys[1:])
        async with admin_api(args) as api:
            resp = await api.split_range(req, args.timeout)
        splits = list(resp.splits) or [
            admin_pb2.AdminSplit(split_key=keys[0], left=resp.left, right=resp.right)
        ]
        if args.json:

            def half(d: types_pb2.RangeDescriptor) -> dict[str, int]:
                return {"range_id": d.range_id, "generation": d.generation}

            emit_json(
                {
                    "left": half(resp.left),
                    "right": half(resp.right),
                    "splits": [
                        {
                            "key": json_bytes(args, s.split_key),
                            "left": half(s.left),
                            "right": half(s.right),
                        }
                        for s in splits
                    ],
                }
            )
        else:
            for s in splits:
                print(
                    f"split at {show(args, s.split_key)}: "
                    f"left r{s.left.range_id}, right r{s.right.range_id}"
                )
        return 0

    return run(main, describe_target(args))


CHANGES = {
    "add": [
        replica_pb2.REPLICA_CHANGE_TYPE_ADD_LEARNER,
        replica_pb2.REPLICA_CHANGE_TYPE_PROMOTE_VOTER,
    ],
    "add-learner": [replica_pb2.REPLICA_CHANGE_TYPE_ADD_LEARNER],
    "promote": [replica_pb2.REPLICA_CHANGE_TYPE_PROMOTE_VOTER],
    "remove": [replica_pb2.REPLICA_CHANGE_TYPE_REMOVE],
}


def change_replicas_main(argv: Sequence[str]) -> int:
    p = _parser(
        "change-replicas",
        "Add (learner, catch-up, promotion) or remove the replica of RANGE_ID on NODE_ID "
        "(asks the leaseholder; the leaseholder's own replica cannot be removed).",
    )
    p.add_argument("range_id", type=int)
    p.add_argument("action", choices=sorted(CHANGES))
    p.add_argument("node_id", type=int)
    add_common(p, admin=True)
    args = p.parse_args(argv)

    async def main() -> int:
        changes = [
            replica_pb2.ReplicaChange(type=t, node_id=args.node_id) for t in CHANGES[args.action]
        ]
        req = admin_pb2.AdminChangeReplicasRequest(range_id=args.range_id, changes=changes)
        async with admin_api(args) as api:
            resp = await api.change_replicas(req, args.timeout)
        d = resp.descriptor
        if args.json:
            emit_json(
                {
                    "range_id": d.range_id,
                    "generation": d.generation,
                    "replicas": [
                        {
                            "node_id": r.node_id,
                            "replica_id": r.replica_id,
                            "voter": r.type == types_pb2.REPLICA_TYPE_VOTER,
                        }
                        for r in d.replicas
                    ],
                }
            )
        else:
            print(f"range {d.range_id} (generation {d.generation}): {_replicas_text(d)}")
        return 0

    return run(main, describe_target(args))


def decommission_main(argv: Sequence[str]) -> int:
    p = _parser(
        "decommission",
        "Move every replica off NODE_ID so that the node can be retired.",
    )
    p.add_argument("node_id", type=int)
    add_common(p, admin=True)
    args = p.parse_args(argv)

    async def main() -> int:
        async with admin_api(args) as api:
            resp = await api.decommission(
                admin_pb2.AdminDecommissionRequest(node_id=args.node_id), args.timeout
            )
        if args.json:
            emit_json(
                {
                    "node_id": args.node_id,
                    "live": resp.status.live,
                    "replicas_remaining": resp.replicas_remaining,
                }
            )
        else:
            print(f"node {args.node_id}: {resp.replicas_remaining} replicas remaining")
        return 0

    return run(main, describe_target(args))


__all__ = [
    "CHANGES",
    "change_replicas_main",
    "decommission_main",
    "node_record",
    "nodes_main",
    "range_record",
    "ranges_main",
    "size_text",
    "split_main",
    "table",
    "transfer_lease_main",
]
