"""The admin verbs: ranges, nodes, transfer-lease, split and change-replicas.

They need what a gateway does not expose: the meta range (`--meta`, or the
ports a `rangekv dev` cluster keeps in DATA/cluster.json) for descriptors and
the store registry, and each storage node's `rangekv.v1.Replica` service
(RangeInfo, TransferLease, AdminSplit, ChangeReplicas) at the address the registry gives.
Output and error conventions are those of `rangekv.cli.kv`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from rangekv.cli.kv import (
    CLIError,
    add_common,
    add_hex,
    channel,
    channel_opener,
    emit_json,
    json_bytes,
    rpc_error_line,
    run,
    show,
    to_bytes,
)
from rangekv.common import errors as E
from rangekv.common.tls import ChannelOpener
from rangekv.metarange.client import MetaClient
from rangekv.v1 import meta_pb2, replica_pb2, replica_pb2_grpc, types_pb2


def _parser(verb: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"rangekv {verb}", description=description)


def meta_addresses(args: argparse.Namespace) -> list[str]:
    """--meta, else the metarange ports a `rangekv dev` cluster keeps in DATA/cluster.json."""
    if args.meta:
        return [a.strip() for a in args.meta.split(",") if a.strip()]
    path = Path(args.data) / "cluster.json"
    try:
        raw = json.loads(path.read_text())
        return [f"127.0.0.1:{port}" for port in raw["meta"].values()]
    except FileNotFoundError:
        raise CLIError(
            f"no metarange addresses: pass --meta HOST:PORT,... or --data DIR of a "
            f"`rangekv dev` cluster ({path} does not exist)"
        ) from None
    except (ValueError, KeyError, AttributeError) as exc:
        raise CLIError(f"{path} is not a rangekv dev cluster layout ({exc})") from None


@dataclass
class NodeView:
    """What the registry says of one node, and what the node says of itself."""

    status: meta_pb2.NodeStatus
    replicas: list[replica_pb2.ReplicaInfo] = field(default_factory=list)
    error: str = ""

    @property
    def node_id(self) -> int:
        return self.status.node.node_id

    @property
    def address(self) -> str:
        return self.status.node.address


@dataclass
class ClusterView:
    """One snapshot of the committed descriptors and every node's replicas."""

    ranges: list[types_pb2.RangeDescriptor]
    nodes: list[NodeView]

    def infos(self, range_id: int) -> list[tuple[NodeView, replica_pb2.ReplicaInfo]]:
        return [(n, r) for n in self.nodes for r in n.replicas if r.descriptor.range_id == range_id]

    def leaseholder(self, range_id: int) -> tuple[NodeView, replica_pb2.ReplicaInfo] | None:
        """The node whose replica leads the range, a valid lease preferred."""
        leaders = [(n, r) for n, r in self.infos(range_id) if r.is_leader]
        leaders.sort(key=lambda nr: (not nr[1].lease_valid, -nr[1].lease_sequence))
        return leaders[0] if leaders else None

    def node(self, node_id: int) -> NodeView | None:
        return next((n for n in self.nodes if n.node_id == node_id), None)

    def range_for(self, key: bytes) -> types_pb2.RangeDescriptor | None:
        for d in self.ranges:
            if d.start_key <= key and (not d.end_key or key < d.end_key):
                return d
        return None


async def range_info(
    opener: ChannelOpener, address: str, timeout: float
) -> replica_pb2.RangeInfoResponse:
    async with opener(address) as ch:
        return await replica_pb2_grpc.ReplicaStub(ch).RangeInfo(
            replica_pb2.RangeInfoRequest(), timeout=timeout
        )


async def cluster_view(
    meta: MetaClient, timeout: float, *, with_ranges: bool = True, opener: ChannelOpener
) -> ClusterView:
    """Descriptors from meta, the registry, and RangeInfo from every node in parallel.

    A node that does not answer is reported, not fatal: `ranges` and `nodes`
    are what one reaches for when something is down.
    """
    ranges: dict[int, types_pb2.RangeDescriptor] = {}
    if with_ranges:
        start = b""
        while True:
            resp = await meta.list_ranges(start_key=start, limit=1000)
            new = [d for d in resp.descriptors if d.range_id not in ranges]
            for d in new:
                ranges[d.range_id] = d
            last = resp.descriptors[-1] if resp.descriptors else None
            if not new or len(resp.descriptors) < 1000 or last is None or not last.end_key:
                break
            start = last.end_key
    statuses = (await meta.list_nodes()).nodes
    views = [NodeView(s) for s in sorted(statuses, key=lambda s: s.node.node_id)]

    async def fill(view: NodeView) -> None:
        try:
            view.replicas = list((await range_info(opener, view.address, timeout)).replicas)
        except grpc.aio.AioRpcError as exc:
            view.error = rpc_error_line(exc, view.address)

    await asyncio.gather(*(fill(v) for v in views))
    ordered = sorted(ranges.values(), key=lambda d: d.start_key)
    return ClusterView(ordered, views)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


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


def _size_text(size: int) -> str:
    if not size:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    return str(size)


def _meta_client(args: argparse.Namespace) -> MetaClient:
    addresses = meta_addresses(args)  # first: no layout is the clearer error
    opener = channel_opener(args, internal=True)
    return MetaClient(addresses, timeout=args.timeout, channels=opener)


def ranges_main(argv: Sequence[str]) -> int:
    p = _parser(
        "ranges",
        "A table of ranges: id, span, replicas, leaseholder, generation, applied index, size.",
    )
    add_hex(p)
    add_common(p, gateway=False)
    args = p.parse_args(argv)

    async def main() -> int:
        meta = _meta_client(args)
        try:
            view = await cluster_view(meta, args.timeout, opener=meta.opener)
        finally:
            await meta.close()
        records: list[dict[str, Any]] = []
        for d in view.ranges:
            lh = view.leaseholder(d.range_id)
            infos = view.infos(d.range_id)
            size = max((r.approximate_size_bytes for _n, r in infos), default=0)
            start, end = _span_text(args, d)
            records.append(
                {
                    "range_id": d.range_id,
                    "start_key": json_bytes(args, d.start_key),
                    "end_key": json_bytes(args, d.end_key),
                    "replicas": [
                        {
                            "node_id": r.node_id,
                            "replica_id": r.replica_id,
                            "type": types_pb2.ReplicaType.Name(r.type),
                        }
                        for r in d.replicas
                    ],
                    "leaseholder": lh[0].node_id if lh else None,
                    "lease_valid": bool(lh and lh[1].lease_valid),
                    "generation": d.generation,
                    "applied_index": lh[1].applied_index if lh else None,
                    "size_bytes": size or None,
                    "_human": [
                        str(d.range_id),
                        start,
                        end,
                        _replicas_text(d),
                        "-"
                        if lh is None
                        else f"n{lh[0].node_id}" + ("" if lh[1].lease_valid else " (no lease)"),
                        str(d.generation),
                        "-" if lh is None else str(lh[1].applied_index),
                        _size_text(size),
                    ],
                }
            )
        unreachable = [n for n in view.nodes if n.error]
        if args.json:
            for r in records:
                r.pop("_human")
            emit_json(
                {
                    "ranges": records,
                    "unreachable_nodes": [
                        {"node_id": n.node_id, "error": n.error} for n in unreachable
                    ],
                }
            )
            return 0
        headers = ["RANGE", "START", "END", "REPLICAS", "LEASEHOLDER", "GEN", "APPLIED", "SIZE"]
        print(table(headers, [r["_human"] for r in records]))
        for n in unreachable:
            print(f"(node {n.node_id} at {n.address} did not answer: {n.error})")
        return 0

    return run(main)


def nodes_main(argv: Sequence[str]) -> int:
    p = _parser("nodes", "The store registry with liveness, and what each node hosts.")
    add_common(p, gateway=False)
    args = p.parse_args(argv)

    async def main() -> int:
        meta = _meta_client(args)
        try:
            view = await cluster_view(meta, args.timeout, with_ranges=False, opener=meta.opener)
        finally:
            await meta.close()
        now_ns = time.time_ns()
        records: list[dict[str, Any]] = []
        for n in view.nodes:
            hb = n.status.last_heartbeat_wall_time
            age = (now_ns - hb) / 1e9 if hb else None
            leases = sum(1 for r in n.replicas if r.is_leader and r.lease_valid)
            records.append(
                {
                    "node_id": n.node_id,
                    "address": n.address,
                    "metrics_address": n.status.node.metrics_address,
                    "live": n.status.live,
                    "last_heartbeat_age_s": None if age is None else round(age, 3),
                    "reachable": not n.error,
                    "replicas": None if n.error else len(n.replicas),
                    "leases": None if n.error else leases,
                    "error": n.error or None,
                }
            )
        if args.json:
            emit_json({"nodes": records})
            return 0
        rows = [
            [
                str(r["node_id"]),
                str(r["address"]),
                "live" if r["live"] else "DEAD",
                "-"
                if r["last_heartbeat_age_s"] is None
                else f"{r['last_heartbeat_age_s']:.1f}s ago",
                "-" if r["error"] else str(r["replicas"]),
                "-" if r["error"] else str(r["leases"]),
                "yes" if r["reachable"] else "NO",
                str(r["metrics_address"] or "-"),
            ]
            for r in records
        ]
        headers = [
            "NODE",
            "ADDRESS",
            "LIVENESS",
            "HEARTBEAT",
            "REPLICAS",
            "LEASES",
            "REACHABLE",
            "METRICS",
        ]
        print(table(headers, rows))
        for r in records:
            if r["error"]:
                print(f"(node {r['node_id']}: {r['error']})")
        return 0

    return run(main)


async def _leaseholder_of(
    meta: MetaClient, range_id: int, timeout: float
) -> tuple[ClusterView, NodeView]:
    view = await cluster_view(meta, timeout, with_ranges=False, opener=meta.opener)
    lh = view.leaseholder(range_id)
    if lh is None:
        if not view.infos(range_id):
            raise CLIError(f"NOT_FOUND: no node hosts range {range_id}")
        raise CLIError(f"UNAVAILABLE: range {range_id} has no leader right now; try again")
    return view, lh[0]


def transfer_lease_main(argv: Sequence[str]) -> int:
    p = _parser(
        "transfer-lease",
        "Move the lease of RANGE_ID to NODE_ID (asks the current leaseholder).",
    )
    p.add_argument("range_id", type=int)
    p.add_argument("node_id", type=int)
    add_common(p, gateway=False)
    args = p.parse_args(argv)

    async def main() -> int:
        meta = _meta_client(args)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + args.timeout
        try:
            while True:
                view, holder = await _leaseholder_of(meta, args.range_id, args.timeout)
                if holder.node_id == args.node_id:
                    result = {"range_id": args.range_id, "from": holder.node_id, "to": args.node_id}
                    if args.json:
                        emit_json({**result, "moved": False})
                    else:
                        print(
                            f"node {args.node_id} already holds the lease of range {args.range_id}"
                        )
                    return 0
                if view.node(args.node_id) is None:
                    raise CLIError(f"INVALID_ARGUMENT: node {args.node_id} is not in the registry")
                remaining = max(0.1, deadline - loop.time())
                async with channel(args, holder.address, internal=True) as ch:
                    resp = await replica_pb2_grpc.ReplicaStub(ch).TransferLease(
                        replica_pb2.TransferLeaseRequest(
                            range_id=args.range_id, target_node_id=args.node_id
                        ),
                        timeout=remaining,
                    )
                if resp.HasField("error"):
                    err = E.from_replica_error(resp.error)
                    # The lease moved between our look and our ask: look again.
                    if isinstance(err, E.NotLeaseHolder) and loop.time() < deadline:
                        continue
                    raise err
                if args.json:
                    emit_json(
                        {
                            "range_id": args.range_id,
                            "from": holder.node_id,
                            "to": args.node_id,
                            "moved": True,
                            "lease_sequence": resp.lease_sequence,
                        }
                    )
                else:
                    print(
                        f"range {args.range_id}: lease moved from node {holder.node_id} "
                        f"to node {args.node_id} (sequence {resp.lease_sequence})"
                    )
                return 0
        finally:
            await meta.close()

    return run(main)


def split_main(argv: Sequence[str]) -> int:
    p = _parser("split", "Split the range holding KEY so that KEY starts a new range.")
    p.add_argument("key")
    add_hex(p)
    add_common(p, gateway=False)
    args = p.parse_args(argv)

    async def main() -> int:
        key = to_bytes(args, args.key, "key")
        if not key:
            raise CLIError("INVALID_ARGUMENT: split key must not be empty", code=2)
        meta = _meta_client(args)
        try:
            view = await cluster_view(meta, args.timeout, opener=meta.opener)
        finally:
            await meta.close()
        desc = view.range_for(key)
        if desc is None:
            raise CLIError(f"NOT_FOUND: no range holds key {show(args, key)}")
        if desc.start_key == key:
            raise CLIError(f"range {desc.range_id} already starts at {show(args, key)}")
        lh = view.leaseholder(desc.range_id)
        if lh is None:
            raise CLIError(f"UNAVAILABLE: range {desc.range_id} has no leader right now; try again")
        try:
            async with channel(args, lh[0].address, internal=True) as ch:
                resp = await replica_pb2_grpc.ReplicaStub(ch).AdminSplit(
                    replica_pb2.AdminSplitRequest(range_id=desc.range_id, split_key=key),
                    timeout=args.timeout,
                )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise CLIError(
                    f"UNIMPLEMENTED: node {lh[0].node_id} cannot split ranges yet "
                    "(Replica.AdminSplit is not implemented in this version)"
                ) from None
            raise
        if resp.HasField("error"):
            raise E.from_replica_error(resp.error)
        if args.json:
            emit_json(
                {
                    "left": {"range_id": resp.left.range_id, "generation": resp.left.generation},
                    "right": {"range_id": resp.right.range_id, "generation": resp.right.generation},
                }
            )
        else:
            print(
                f"split range {desc.range_id} at {show(args, key)}: "
                f"left r{resp.left.range_id}, right r{resp.right.range_id}"
            )
        return 0

    return run(main)


_CHANGES = {
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
    p.add_argument("action", choices=sorted(_CHANGES))
    p.add_argument("node_id", type=int)
    add_common(p, gateway=False)
    args = p.parse_args(argv)

    async def main() -> int:
        meta = _meta_client(args)
        try:
            _view, holder = await _leaseholder_of(meta, args.range_id, args.timeout)
        finally:
            await meta.close()
        changes = [
            replica_pb2.ReplicaChange(type=t, node_id=args.node_id) for t in _CHANGES[args.action]
        ]
        async with channel(args, holder.address, internal=True) as ch:
            resp = await replica_pb2_grpc.ReplicaStub(ch).ChangeReplicas(
                replica_pb2.ChangeReplicasRequest(range_id=args.range_id, changes=changes),
                timeout=args.timeout,
            )
        if resp.HasField("error"):
            raise E.from_replica_error(resp.error)
        d = resp.descriptor
        if args.json:
            emit_json(
                {
                    "range_id": d.range_id,
                    "generation": d.generation,
                    "replicas": [
                        {"node_id": r.node_id, "replica_id": r.replica_id, "voter": r.type == 1}
                        for r in d.replicas
                    ],
                }
            )
        else:
            print(f"range {d.range_id} (generation {d.generation}): {_replicas_text(d)}")
        return 0

    return run(main)


__all__ = [
    "ClusterView",
    "change_replicas_main",
    "cluster_view",
    "meta_addresses",
    "nodes_main",
    "ranges_main",
    "split_main",
    "transfer_lease_main",
]
