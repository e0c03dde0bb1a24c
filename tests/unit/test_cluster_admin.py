"""The Admin API's logic (rangekv.gateway.cluster_admin) against in-memory twins.

The twins stand for the meta range (descriptors, registry) and the nodes'
Replica admin RPCs; the real path (gateway -> meta and raftnodes over gRPC)
is exercised by tests/integration/test_cli_addr_only.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from rangekv.common import errors as E
from rangekv.common.descriptors import ReplicaDescriptor
from rangekv.gateway.admin_service import decommission
from rangekv.gateway.cluster_admin import ClusterAdmin
from rangekv.v1 import admin_pb2, meta_pb2, replica_pb2, types_pb2


def desc(
    range_id: int, start: bytes, end: bytes, nodes: Sequence[int]
) -> types_pb2.RangeDescriptor:
    return types_pb2.RangeDescriptor(
        range_id=range_id,
        start_key=start,
        end_key=end,
        generation=range_id,
        replicas=[
            types_pb2.ReplicaDescriptor(node_id=n, replica_id=n, type=types_pb2.REPLICA_TYPE_VOTER)
            for n in nodes
        ],
    )


@dataclass
class MetaTwin:
    """The meta range: committed descriptors and the registry."""

    ranges: list[types_pb2.RangeDescriptor]
    nodes: list[int]

    async def list_ranges(
        self, start_key: bytes = b"", limit: int = 0, include_intents: bool = False
    ) -> meta_pb2.ListRangesResponse:
        out = [d for d in self.ranges if not d.end_key or d.end_key > start_key]
        return meta_pb2.ListRangesResponse(descriptors=out[: limit or None])

    async def list_nodes(self) -> meta_pb2.ListNodesResponse:
        return meta_pb2.ListNodesResponse(
            nodes=[
                meta_pb2.NodeStatus(
                    node=types_pb2.NodeDescriptor(node_id=n, address=f"n{n}"),
                    live=True,
                    last_heartbeat_wall_time=1,
                )
                for n in self.nodes
            ]
        )


@dataclass
class NodesTwin:
    """Every node's replicas: which it leads (with a valid lease), and scripted failures."""

    meta: MetaTwin
    leader: dict[int, int]  # range id -> node id leading it
    down: set[int] = field(default_factory=set)
    hung: set[int] = field(default_factory=set)  # nodes that never answer
    invalid_lease: set[int] = field(default_factory=set)  # range ids
    #: NotLeaseHolder answers a node gives before doing what it is asked.
    refusals: int = 0
    calls: list[tuple[str, int]] = field(default_factory=list)
    #: Splits change the meta twin (the right-hand range led where the left is).
    apply_splits: bool = False

    def _node(self, address: str) -> int:
        node = int(address[1:])
        if node in self.down:
            raise E.Unavailable(f"node {node} is down")
        return node

    async def range_info(
        self, address: str, range_ids: Sequence[int], timeout: float
    ) -> replica_pb2.RangeInfoResponse:
        node = self._node(address)
        if node in self.hung:
            await asyncio.Event().wait()
        infos = [
            replica_pb2.ReplicaInfo(
                descriptor=d,
                replica_id=node,
                is_leader=self.leader.get(d.range_id) == node,
                lease_valid=d.range_id not in self.invalid_lease,
                lease_sequence=7,
                applied_index=100 + d.range_id,
                approximate_size_bytes=1000 * node,
            )
            for d in self.meta.ranges
            if any(r.node_id == node for r in d.replicas)
            and (not range_ids or d.range_id in range_ids)
        ]
        return replica_pb2.RangeInfoResponse(node_id=node, replicas=infos)

    def _refuse(self, node: int, range_id: int) -> replica_pb2.ReplicaBatchResponse | None:
        if self.refusals:
            self.refusals -= 1
            err = E.NotLeaseHolder(range_id, ReplicaDescriptor(node, node), f"n{node}", 7, None)
            return E.to_replica_error(err)  # type: ignore[return-value]
        return None

    async def admin_split(
        self, address: str, req: replica_pb2.AdminSplitRequest, timeout: float
    ) -> replica_pb2.AdminSplitResponse:
        node = self._node(address)
        self.calls.append(("split", node))
        refused = self._refuse(node, req.range_id)
        if refused is not None:
            return replica_pb2.AdminSplitResponse(error=refused)  # type: ignore[arg-type]
        (d,) = [d for d in self.meta.ranges if d.range_id == req.range_id]
        left = desc(d.range_id, d.start_key, req.split_key, [r.node_id for r in d.replicas])
        right_id = max(r.range_id for r in self.meta.ranges) + 1 if self.apply_splits else 99
        right = desc(right_id, req.split_key, d.end_key, [r.node_id for r in d.replicas])
        if self.apply_splits:
            at = self.meta.ranges.index(d)
            self.meta.ranges[at : at + 1] = [left, right]
            self.leader[right_id] = node
        return replica_pb2.AdminSplitResponse(left=left, right=right)

    async def transfer_lease(
        self, address: str, req: replica_pb2.TransferLeaseRequest, timeout: float
    ) -> replica_pb2.TransferLeaseResponse:
        node = self._node(address)
        self.calls.append(("transfer", node))
        refused = self._refuse(node, req.range_id)
        if refused is not None:
            return replica_pb2.TransferLeaseResponse(error=refused)  # type: ignore[arg-type]
        self.leader[req.range_id] = req.target_node_id
        return replica_pb2.TransferLeaseResponse(lease_sequence=8)

    async def change_replicas(
        self, address: str, req: replica_pb2.ChangeReplicasRequest, timeout: float
    ) -> replica_pb2.ChangeReplicasResponse:
        node = self._node(address)
        self.calls.append(("change", node))
        (d,) = [d for d in self.meta.ranges if d.range_id == req.range_id]
        return replica_pb2.ChangeReplicasResponse(descriptor=d)


def cluster(**nodes_kw: object) -> tuple[ClusterAdmin, MetaTwin, NodesTwin]:
    meta = MetaTwin(
        ranges=[desc(1, b"", b"m", [1, 2, 3]), desc(2, b"m", b"", [1, 2, 3])],
        nodes=[1, 2, 3],
    )
    nodes = NodesTwin(meta, leader={1: 1, 2: 2}, **nodes_kw)  # type: ignore[arg-type]
    return ClusterAdmin(meta, nodes, retry_pause=0.001), meta, nodes


async def test_list_ranges_names_leaseholders_sizes_and_unreachable_nodes() -> None:
    admin, _meta, _nodes = cluster(down={3}, invalid_lease={2})
    resp = await admin.list_ranges(admin_pb2.AdminListRangesRequest(), 1.0)
    assert isinstance(resp, admin_pb2.AdminListRangesResponse)
    assert [r.descriptor.range_id for r in resp.ranges] == [1, 2]
    first, second = resp.ranges
    assert (first.leaseholder_node_id, first.lease_valid, first.applied_index) == (1, True, 101)
    assert (second.leaseholder_node_id, second.lease_valid) == (2, False)
    assert first.approximate_size_bytes == 2000  # the largest of the replicas that answered
    assert [(n.node_id, n.error.split(":")[0]) for n in resp.unreachable_nodes] == [
        (3, "UNAVAILABLE")
    ]
    assert resp.next_start_key == b""


async def test_a_node_that_hangs_is_reported_within_the_deadline() -> None:
    admin, _meta, _nodes = cluster(hung={2})
    resp = await admin.list_ranges(admin_pb2.AdminListRangesRequest(), 0.2)
    assert isinstance(resp, admin_pb2.AdminListRangesResponse)
    assert [r.descriptor.range_id for r in resp.ranges] == [1, 2]
    assert resp.ranges[0].leaseholder_node_id == 1 and resp.ranges[1].leaseholder_node_id == 0
    (down,) = resp.unreachable_nodes
    assert down.node_id == 2 and down.error.startswith("DEADLINE_EXCEEDED")


async def test_list_ranges_pages_and_bounds_its_limit() -> None:
    admin, _meta, _nodes = cluster()
    page = await admin.list_ranges(admin_pb2.AdminListRangesRequest(limit=1), 1.0)
    assert isinstance(page, admin_pb2.AdminListRangesResponse)
    assert [r.descriptor.range_id for r in page.ranges] == [1]
    assert page.next_start_key == b"m"
    with pytest.raises(E.InvalidArgument, match="limit"):
        await admin.list_ranges(admin_pb2.AdminListRangesRequest(limit=10_001), 1.0)


async def test_list_nodes_counts_replicas_and_leases() -> None:
    admin, _meta, _nodes = cluster(down={3})
    resp = await admin.list_nodes(admin_pb2.AdminListNodesRequest(), 1.0)
    assert isinstance(resp, admin_pb2.AdminListNodesResponse)
    got = [(n.status.node.node_id, n.reachable, n.replica_count, n.lease_count) for n in resp.nodes]
    assert got == [(1, True, 2, 1), (2, True, 2, 1), (3, False, 0, 0)]
    assert resp.nodes[2].error.startswith("UNAVAILABLE: node 3 is down")


async def test_transfer_lease_looks_again_when_the_lease_moved_meanwhile() -> None:
    admin, _meta, nodes = cluster(refusals=2)
    req = admin_pb2.AdminTransferLeaseRequest(range_id=1, target_node_id=3)
    resp = await admin.transfer_lease(req, 2.0)
    assert isinstance(resp, admin_pb2.AdminTransferLeaseResponse)
    assert (resp.from_node_id, resp.to_node_id, resp.moved, resp.lease_sequence) == (1, 3, True, 8)
    assert nodes.calls == [("transfer", 1)] * 3
    again = await admin.transfer_lease(req, 2.0)
    assert isinstance(again, admin_pb2.AdminTransferLeaseResponse)
    assert not again.moved and again.from_node_id == 3


async def test_transfer_lease_errors_name_what_is_missing() -> None:
    admin, _meta, _nodes = cluster()
    with pytest.raises(E.NotFound, match="node 9 is not in the registry"):
        await admin.transfer_lease(
            admin_pb2.AdminTransferLeaseRequest(range_id=1, target_node_id=9), 1
        )
    with pytest.raises(E.NotFound, match="no node hosts range 999"):
        await admin.transfer_lease(
            admin_pb2.AdminTransferLeaseRequest(range_id=999, target_node_id=1), 1
        )
    with pytest.raises(E.InvalidArgument, match="range_id"):
        await admin.transfer_lease(admin_pb2.AdminTransferLeaseRequest(target_node_id=1), 1)


async def test_no_leader_until_the_deadline_is_unavailable() -> None:
    admin, _meta, nodes = cluster()
    nodes.leader.clear()
    req = admin_pb2.AdminTransferLeaseRequest(range_id=1, target_node_id=2)
    with pytest.raises(E.Unavailable, match="gave up"):
        await admin.transfer_lease(req, 0.05)


async def test_split_validates_and_asks_the_leaseholder() -> None:
    admin, _meta, nodes = cluster(refusals=1)
    with pytest.raises(E.InvalidArgument, match="split_key"):
        await admin.split_range(admin_pb2.AdminSplitRangeRequest(), 1.0)
    with pytest.raises(E.FailedPrecondition, match="already starts"):
        await admin.split_range(admin_pb2.AdminSplitRangeRequest(split_key=b"m"), 1.0)
    resp = await admin.split_range(admin_pb2.AdminSplitRangeRequest(split_key=b"t"), 1.0)
    assert isinstance(resp, admin_pb2.AdminSplitRangeResponse)
    assert (resp.left.end_key, resp.right.start_key) == (b"t", b"t")
    assert nodes.calls == [("split", 2), ("split", 2)]


async def test_split_at_several_keys_in_order_or_not_at_all() -> None:
    admin, meta, nodes = cluster(apply_splits=True)
    bad = [
        (admin_pb2.AdminSplitRangeRequest(split_key=b"b", more_split_keys=[b""]), "more_split"),
        (admin_pb2.AdminSplitRangeRequest(split_key=b"b", more_split_keys=[b"b"]), "more than"),
        (
            admin_pb2.AdminSplitRangeRequest(split_key=b"b", more_split_keys=[b"x"] * 1024),
            "at most",
        ),
    ]
    for req, why in bad:
        with pytest.raises(E.InvalidArgument, match=why):
            await admin.split_range(req, 1.0)
    # One key already starts a range: nothing is split.
    with pytest.raises(E.FailedPrecondition, match="already starts"):
        await admin.split_range(
            admin_pb2.AdminSplitRangeRequest(split_key=b"c", more_split_keys=[b"m"]), 1.0
        )
    assert nodes.calls == []
    req = admin_pb2.AdminSplitRangeRequest(split_key=b"t", more_split_keys=[b"c", b"p", b"x"])
    resp = await admin.split_range(req, 1.0)
    assert isinstance(resp, admin_pb2.AdminSplitRangeResponse)
    assert [s.split_key for s in resp.splits] == [b"c", b"p", b"t", b"x"]
    assert [(s.left.end_key, s.right.start_key) for s in resp.splits] == [
        (b"c", b"c"),
        (b"p", b"p"),
        (b"t", b"t"),
        (b"x", b"x"),
    ]
    assert resp.right == resp.splits[-1].right
    bounds = [(d.start_key, d.end_key) for d in meta.ranges]
    ends = [b"c", b"m", b"p", b"t", b"x", b""]
    assert bounds == list(zip([b"", *ends[:-1]], ends, strict=True))


async def test_change_replicas_validates_every_change() -> None:
    admin, _meta, nodes = cluster()
    change = replica_pb2.ReplicaChange(type=replica_pb2.REPLICA_CHANGE_TYPE_REMOVE, node_id=3)
    with pytest.raises(E.InvalidArgument, match="changes"):
        await admin.change_replicas(admin_pb2.AdminChangeReplicasRequest(range_id=1), 1.0)
    bad = admin_pb2.AdminChangeReplicasRequest(
        range_id=1, changes=[change, replica_pb2.ReplicaChange(node_id=2)]
    )
    with pytest.raises(E.InvalidArgument, match=r"changes\[1\].type"):
        await admin.change_replicas(bad, 1.0)
    ok = admin_pb2.AdminChangeReplicasRequest(range_id=2, changes=[change])
    resp = await admin.change_replicas(ok, 1.0)
    assert isinstance(resp, admin_pb2.AdminChangeReplicasResponse)
    assert resp.descriptor.range_id == 2 and nodes.calls == [("change", 2)]


async def test_decommission_says_it_is_not_available_yet() -> None:
    with pytest.raises(E.Unimplemented, match="not available in this version"):
        await decommission(None, admin_pb2.AdminDecommissionRequest(node_id=2), 1.0)
    with pytest.raises(E.InvalidArgument, match="node_id"):
        await decommission(None, admin_pb2.AdminDecommissionRequest(), 1.0)
