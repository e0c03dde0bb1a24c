"""A running cluster's raftnodes, seen and steered through the Replica API.

Who holds a range's lease, which range owns a key, moving a lease, splitting a
range, changing its replicas: what the gateway, split, replica-change and
chaos tests and the gateway benchmark all need from the nodes themselves.

Every call opens a fresh channel: a long-lived channel to a node that was
killed would sit in gRPC's reconnect backoff after the node came back. A node
that is dead, paused (SIGSTOP) or does not answer is simply not asked or
reported as not knowing (None), so observers never hang on a stopped process.
Retried operations retry until a deadline and then fail saying what they saw
last.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from rangekv.common import errors as E
from rangekv.common.descriptors import RangeDescriptor
from rangekv.replication.checksum import MAX_CHECKSUMS_PER_REQUEST, ChecksumLedger
from rangekv.v1 import replica_pb2, replica_pb2_grpc
from testkit.cluster import Cluster
from testkit.waiting import async_wait_for

__all__ = ["Replicas"]

#: ChangeReplicas change types (for callers building `changes`).
ADD_LEARNER = replica_pb2.REPLICA_CHANGE_TYPE_ADD_LEARNER
PROMOTE = replica_pb2.REPLICA_CHANGE_TYPE_PROMOTE_VOTER
REMOVE = replica_pb2.REPLICA_CHANGE_TYPE_REMOVE


def error_text(resp: Any) -> str:
    """What an in-band ReplicaError says, or "ok"."""
    return str(E.from_replica_error(resp.error)) if resp.HasField("error") else "ok"


class Replicas:
    """The raftnodes of `cluster`; see the module docstring."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    # --- raw calls --------------------------------------------------------------------

    async def call(self, node_id: int, method: str, request: Any, timeout: float = 5.0) -> Any:
        """One Replica RPC to node `node_id` on a fresh channel; gRPC errors raise."""
        address = self.cluster.node_address(node_id)
        async with self.cluster.node_channels()(address) as ch:
            return await getattr(replica_pb2_grpc.ReplicaStub(ch), method)(request, timeout=timeout)

    async def infos(
        self, node_id: int, range_ids: Sequence[int] = (), *, checksums: bool = False
    ) -> list[replica_pb2.ReplicaInfo] | None:
        """Node `node_id`'s replicas (all, or `range_ids`), with their state checksums if
        `checksums`; None if it cannot answer."""
        if not self.cluster.usable(self.cluster.node(node_id)):
            return None
        request = replica_pb2.RangeInfoRequest(range_ids=range_ids, checksums=checksums)
        try:
            resp = await self.call(node_id, "RangeInfo", request, 10.0 if checksums else 2.0)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.INVALID_ARGUMENT:
                raise  # the request is wrong, not the node unable to answer
            return None
        return list(resp.replicas)

    async def info(self, node_id: int, range_id: int = 1) -> replica_pb2.ReplicaInfo | None:
        """Node `node_id`'s view of one range, or None."""
        infos = await self.infos(node_id, [range_id])
        return infos[0] if infos else None

    async def range_infos(
        self, range_id: int, node_ids: Sequence[int]
    ) -> list[replica_pb2.ReplicaInfo]:
        """Range `range_id` as each of `node_ids` that answers sees it (in that order)."""
        found = []
        for node_id in node_ids:
            info = await self.info(node_id, range_id)
            if info is not None:
                found.append(info)
        return found

    async def inconsistent_get(self, node_id: int, range_id: int, key: bytes) -> bytes | None:
        """What node `node_id`'s own replica holds for `key` (no lease check); None when
        absent or refused."""
        req = replica_pb2.ReplicaBatchRequest(
            range_id=range_id,
            inconsistent=True,
            ops=[replica_pb2.ReplicaOp(get=replica_pb2.GetOp(key=key))],
        )
        resp = await self.call(node_id, "Batch", req)
        if resp.HasField("error"):
            return None
        got = resp.results[0].get
        return got.kv.value if got.found else None

    # --- who holds what ---------------------------------------------------------------

    async def leaseholder(
        self, range_id: int = 1, *, exclude: int | None = None, valid_lease: bool = True
    ) -> int | None:
        """The first node (in id order) leading `range_id` with a valid lease, if any.

        `valid_lease=False`: the raft leader, whose lease may be momentarily invalid
        (e.g. while a transfer is in flight), which AdminSplit and TransferLease do
        not need."""
        for node_id in self.cluster.node_ids:
            if node_id == exclude:
                continue
            for info in await self.infos(node_id, [range_id]) or []:
                if info.is_leader and (info.lease_valid or not valid_lease):
                    return node_id
        return None

    async def wait_leaseholder(
        self, range_id: int = 1, *, exclude: int | None = None, timeout: float = 20.0
    ) -> int:
        holder: int = await async_wait_for(
            lambda: self.leaseholder(range_id, exclude=exclude),
            timeout,
            f"a leaseholder of range {range_id}" + (f" other than {exclude}" if exclude else ""),
        )
        return holder

    async def wait_leaseholder_of(
        self, key: bytes, timeout: float, *, exclude: int | None = None, interval: float = 0.05
    ) -> tuple[int, int]:
        """(the range holding `key`, its leaseholder other than `exclude`), waiting up to
        `timeout` seconds for one (e.g. a range split a moment ago, before its first
        heartbeat round came back, or a lease moving away from a node cut off).
        TimeoutError, with what every node says about the range, when none appears."""
        range_id = 0

        async def found() -> tuple[int, int] | None:
            nonlocal range_id
            range_id, holder = await self.leaseholder_of(key, exclude=exclude)
            return (range_id, holder) if holder is not None else None

        other = f" other than node {exclude}" if exclude is not None else ""
        try:
            pair: tuple[int, int] = await async_wait_for(
                found, timeout, f"a leaseholder{other} of the range holding {key!r}", interval
            )
        except TimeoutError as err:
            seen = await self.describe(range_id) if range_id else "no node answered"
            raise TimeoutError(f"range {range_id}: {err}; {seen}") from None
        return pair

    async def owner(self, key: bytes) -> tuple[int, int | None]:
        """(the range holding `key`, its raft leader or None), as the nodes see it:
        the newest generation any initialized replica reports wins (a node may lag a
        split); (0, None) when nobody answers."""
        best: tuple[int, int] | None = None  # (generation, range id)
        leader: dict[int, int] = {}
        for node_id in self.cluster.node_ids:
            for info in await self.infos(node_id) or []:
                d = info.descriptor
                if not info.applied_index:
                    continue
                covers = d.start_key <= key and (not d.end_key or key < d.end_key)
                if covers and (best is None or d.generation > best[0]):
                    best = (d.generation, d.range_id)
                if info.is_leader:
                    leader[d.range_id] = node_id
        if best is None:
            return 0, None
        return best[1], leader.get(best[1])

    async def leaseholder_of(
        self, key: bytes, exclude: int | None = None
    ) -> tuple[int, int | None]:
        """(the range holding `key`, a node other than `exclude` with a valid lease on it)."""
        range_id, _leader = await self.owner(key)
        return range_id, await self.leaseholder(range_id, exclude=exclude)

    async def newest(self, range_id: int) -> RangeDescriptor | None:
        """The newest descriptor of `range_id` any node holds."""
        best: RangeDescriptor | None = None
        for node_id in self.cluster.node_ids:
            for info in await self.infos(node_id) or []:
                d = RangeDescriptor.from_proto(info.descriptor)
                if d.range_id == range_id and (best is None or d.generation > best.generation):
                    best = d
        return best

    async def voters(self, range_id: int) -> list[int]:
        """The voters of `range_id` as the newest descriptor any node holds says."""
        d = await self.newest(range_id)
        return list(d.voter_node_ids) if d is not None else []

    async def layouts(
        self, node_ids: Sequence[int] | None = None
    ) -> dict[int, list[RangeDescriptor]] | None:
        """The initialized replicas' descriptors of every node in `node_ids` (default:
        all of them), or None if one of them does not answer."""
        out = {}
        for node_id in self.cluster.node_ids if node_ids is None else node_ids:
            infos = await self.infos(node_id)
            if infos is None:
                return None
            out[node_id] = [
                RangeDescriptor.from_proto(i.descriptor) for i in infos if i.applied_index
            ]
        return out

    async def lagging(self, timeout: float) -> list[str]:
        """Replicas that did not apply what their range's leader had committed: [] once
        every replica caught up, else one line per replica still behind.

        For each range, the first leader seen fixes the target: its commit index
        then, and the replicas its descriptor lists (voters and learners). Every one
        of them must report an applied index at or past that target within
        `timeout` seconds. A replica that stays behind -- a raft lane to its node
        that never recovers, a snapshot that never lands -- is invisible to the
        linearizability checker while the others still make a quorum, and is one
        fault away from an unavailable range; so the chaos suite asks this after
        every run."""
        targets: dict[int, tuple[int, int, list[int]]] = {}  # range: (commit, leader, nodes)
        behind: list[str] = []

        async def converged() -> bool:
            views: dict[int, dict[int, replica_pb2.ReplicaInfo]] = {}
            silent = set()
            for node_id in self.cluster.node_ids:
                infos = await self.infos(node_id)
                if infos is None:
                    silent.add(node_id)
                    continue
                for info in infos:
                    views.setdefault(info.descriptor.range_id, {})[node_id] = info
            behind.clear()
            for range_id, seen in sorted(views.items()):
                if range_id not in targets:
                    lead = next((n for n, i in seen.items() if i.is_leader), None)
                    if lead is None:
                        behind.append(f"range {range_id}: no leader")
                        continue
                    info = seen[lead]
                    nodes = [r.node_id for r in info.descriptor.replicas]
                    targets[range_id] = (info.commit_index, lead, nodes)
                commit, lead, nodes = targets[range_id]
                for node_id in nodes:
                    mine = seen.get(node_id)
                    if mine is not None and mine.applied_index >= commit:
                        continue
                    where = (
                        "did not answer"
                        if node_id in silent
                        else "holds no replica"
                        if mine is None
                        else f"applied {mine.applied_index}"
                    )
                    behind.append(
                        f"range {range_id}: node {node_id} {where}; node {lead} had "
                        f"committed {commit}"
                    )
            return not behind

        try:
            await async_wait_for(converged, timeout, "every replica to catch up", 0.25)
        except TimeoutError:
            return list(behind)
        return []

    async def record_checksums(
        self, ledger: ChecksumLedger, members: dict[int, list[int]] | None = None
    ) -> set[int]:
        """One poll: the checksum of every initialized replica of every node that
        answers, into `ledger`; the ranges seen. `members` (if given) learns each
        range's replicas from its leader's descriptor."""
        ranges: set[int] = set()
        for node_id in self.cluster.node_ids:
            listed = await self.infos(node_id) or []
            ids = [info.descriptor.range_id for info in listed]
            found: list[replica_pb2.ReplicaInfo] = []
            for at in range(0, len(ids), MAX_CHECKSUMS_PER_REQUEST):
                chunk = ids[at : at + MAX_CHECKSUMS_PER_REQUEST]
                found += await self.infos(node_id, chunk, checksums=True) or []
            for info in found:
                range_id = info.descriptor.range_id
                ranges.add(range_id)
                if info.is_leader and members is not None:
                    members[range_id] = [r.node_id for r in info.descriptor.replicas]
                if info.HasField("checksum"):  # else not initialized yet
                    ledger.record(range_id, node_id, info.checksum)
        return ranges

    async def diverged(self, timeout: float, ledger: ChecksumLedger | None = None) -> list[str]:
        """Replicas whose state differs from another replica's of the same range at the
        same applied index: [] once every range's replicas were compared and agree.

        Raft's promise, checked on the nodes' real engines
        (`rangekv.replication.checksum`): the reads of a workload go to
        leaseholders, so a follower that lost or skipped an effect stays invisible
        to the linearizability checker until the lease moves to it. Every poll asks
        each node for the checksum of each of its replicas and files it under
        (range, applied index) in `ledger` (which may hold earlier polls': the
        chaos suite polls during its run too); two different digests under one key
        are a divergence, reported at once (one line per range and index, the nodes
        grouped by what they hold). A range is compared once every replica its
        leader's descriptor lists has reported at one common index (they line up
        once writes stop). A range never compared within `timeout` seconds is
        reported too: a check that compared nothing has not passed."""
        ledger = ChecksumLedger() if ledger is None else ledger
        members: dict[int, list[int]] = {}  # range: the nodes its leader's descriptor lists
        pending: list[str] = []

        async def settled() -> bool:
            ranges = await self.record_checksums(ledger, members)
            if ledger.divergences():
                return True
            pending[:] = [
                f"range {range_id}: its replicas never reported one common applied index"
                for range_id in sorted(ranges)
                if not ledger.compared(range_id, members.get(range_id, []))
            ]
            return not pending

        try:
            await async_wait_for(settled, timeout, "every range's replicas to be compared", 0.25)
        except TimeoutError:
            return list(pending)
        return ledger.divergences("range")

    async def describe(self, range_id: int) -> str:
        """What every node says about one range (for failure messages)."""
        out = []
        for node_id in self.cluster.node_ids:
            for i in await self.infos(node_id, [range_id]) or []:
                out.append(
                    f"n{node_id}: leader={i.is_leader} lease={i.lease_valid} "
                    f"lead={i.leader_replica_id} applied={i.applied_index} commit={i.commit_index}"
                )
        return "; ".join(out)

    # --- steering ---------------------------------------------------------------------

    async def transfer_lease(
        self, range_id: int, target: int, *, valid_lease: bool = True, timeout: float = 30.0
    ) -> None:
        """Move `range_id`'s lease to node `target` and wait until it holds it (leads
        with a valid lease; with `valid_lease=False`, leads). The holder may change
        under us (elections), so each attempt asks whoever holds it now."""
        request = replica_pb2.TransferLeaseRequest(range_id=range_id, target_node_id=target)
        last = "no attempt"

        async def moved() -> bool:
            nonlocal last
            holder = await self.leaseholder(range_id, valid_lease=valid_lease)
            if holder == target:
                return True
            if holder is not None:
                try:
                    last = error_text(await self.call(holder, "TransferLease", request))
                except grpc.aio.AioRpcError as exc:
                    last = f"{exc.code().name}: {exc.details()}"
            return False

        try:
            await async_wait_for(
                moved, timeout, f"the lease of range {range_id} to move to node {target}", 0.1
            )
        except TimeoutError as exc:
            seen = await self.describe(range_id)
            raise TimeoutError(f"{exc} (last: {last}); replicas: {seen}") from None

    async def split(
        self, range_id: int, key: bytes, timeout: float = 15.0
    ) -> replica_pb2.AdminSplitResponse | str:
        """One AdminSplit of `range_id` at `key` on its leader: the response, or what
        stood in the way (no leader, an RPC error, the in-band refusal)."""
        holder = await self.leaseholder(range_id, valid_lease=False)
        if holder is None:
            return f"range {range_id} has no leader"
        request = replica_pb2.AdminSplitRequest(range_id=range_id, split_key=key)
        try:
            resp: replica_pb2.AdminSplitResponse = await self.call(
                holder, "AdminSplit", request, timeout
            )
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
        return resp if not resp.HasField("error") else error_text(resp)

    async def admin_split(
        self, range_id: int, key: bytes, timeout: float = 30.0
    ) -> replica_pb2.AdminSplitResponse:
        """AdminSplit on the range's leader, retried while the lease moves or the split
        is refused for a still-pending leftover, until the deadline."""
        last = "no attempt"

        async def attempt() -> replica_pb2.AdminSplitResponse | None:
            nonlocal last
            got = await self.split(range_id, key)
            if isinstance(got, str):
                last = got
                return None
            return got

        what = f"a split of range {range_id} at {key!r}"
        return await async_wait_for(attempt, timeout, what, seen=lambda: last)

    async def change_replicas(
        self,
        range_id: int,
        changes: Sequence[tuple[replica_pb2.ReplicaChangeType, int]],
        timeout: float = 60.0,
    ) -> RangeDescriptor:
        """ChangeReplicas (`changes`: (change type, node id) pairs) on the range's
        leader, retried while the lease moves, until the deadline; the new descriptor."""
        request = replica_pb2.ChangeReplicasRequest(
            range_id=range_id,
            changes=[replica_pb2.ReplicaChange(type=t, node_id=n) for t, n in changes],
        )
        last = "no attempt"

        async def attempt() -> RangeDescriptor | None:
            nonlocal last
            holder = await self.leaseholder(range_id, valid_lease=False)
            if holder is None:
                last = "no leader"
                return None
            try:
                resp = await self.call(holder, "ChangeReplicas", request, timeout=45.0)
            except grpc.aio.AioRpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
                return None
            if resp.HasField("error"):
                last = error_text(resp)
                return None
            return RangeDescriptor.from_proto(resp.descriptor)

        what = f"replica change of range {range_id}"
        return await async_wait_for(attempt, timeout, what, seen=lambda: last)
