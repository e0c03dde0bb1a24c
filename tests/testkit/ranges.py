"""Meta and the raftnodes agreeing on a range layout: what split and replica-change
tests wait for and check after every step.

A layout is settled when meta holds committed descriptors only (no intents
left) and every node holds exactly the replicas those descriptors give it,
with the same ids and generations; a key is routed right when the one range
meta says owns it is the range that holds it on every node.
"""

from __future__ import annotations

from rangekv.common.descriptors import RangeDescriptor
from rangekv.metarange.client import MetaClient
from testkit.meta import meta_layout
from testkit.replicas import Replicas
from testkit.waiting import async_wait_for

__all__ = ["bounds_layout", "check_routing", "nodes_hold", "settled", "spans", "wait_layout"]


def spans(descs: list[RangeDescriptor]) -> list[tuple[bytes, bytes]]:
    return sorted((d.start_key, d.end_key) for d in descs)


def bounds_layout(bounds: list[bytes]) -> list[tuple[bytes, bytes]]:
    """The spans that sorted split points (starting with b"") cut the keyspace into."""
    return [*zip(bounds, [*bounds[1:], b""], strict=True)]


def nodes_hold(nodes: dict[int, list[RangeDescriptor]], committed: list[RangeDescriptor]) -> bool:
    """Whether every node holds exactly the `committed` ranges (ids, start keys and
    generations as meta has them)."""
    want = sorted((d.range_id, d.start_key, d.generation) for d in committed)
    return all(
        sorted((d.range_id, d.start_key, d.generation) for d in descs) == want
        for descs in nodes.values()
    )


async def wait_layout(
    replicas: Replicas,
    meta: MetaClient,
    expected: list[tuple[bytes, bytes]],
    timeout: float = 45,
) -> list[RangeDescriptor]:
    """Wait until meta holds exactly the spans `expected` with no intents left, and every
    node holds exactly those ranges (same ids and generations as meta)."""
    last = ""

    async def agreed() -> list[RangeDescriptor] | None:
        nonlocal last
        committed, n_intents = await meta_layout(meta)
        nodes = await replicas.layouts()
        held = None if nodes is None else {n: spans(d) for n, d in nodes.items()}
        last = f"meta {spans(committed)} + {n_intents} intents; nodes {held}"
        if n_intents or spans(committed) != expected or nodes is None:
            return None
        return committed if nodes_hold(nodes, committed) else None

    return await async_wait_for(agreed, timeout, f"layout {expected}", seen=lambda: last)


async def settled(replicas: Replicas, meta: MetaClient) -> list[RangeDescriptor] | None:
    """Meta's committed layout when it has no intents and every running node's
    replicas agree with it exactly (each node holds the ranges naming it)."""
    committed, n_intents = await meta_layout(meta)
    if n_intents:
        return None
    nodes = await replicas.layouts(replicas.cluster.running_node_ids())
    if nodes is None:
        return None
    for node_id, descs in nodes.items():
        held = sorted((d.range_id, d.generation) for d in descs)
        want = sorted((d.range_id, d.generation) for d in committed if d.replica_on(node_id))
        if held != want:
            return None
    return committed


async def check_routing(
    replicas: Replicas, layout: list[RangeDescriptor], keys: list[bytes]
) -> None:
    """Each key's owner per meta is the range that holds it on every node."""
    for key in keys:
        owners = [d for d in layout if d.contains_key(key)]
        assert len(owners) == 1, f"{key!r} is covered by {owners}"
        nodes = await replicas.layouts()
        assert nodes is not None
        for node_id, descs in nodes.items():
            held = [d.range_id for d in descs if d.contains_key(key)]
            assert held == [owners[0].range_id], f"node {node_id}: {key!r} in ranges {held}"
