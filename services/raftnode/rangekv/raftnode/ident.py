"""A store's identity: which node id its data belongs to, and whether it was retired.

Kept in ``DATA/store.json``, written (fsync, rename, fsync of the folder)
before the node first serves, so a data folder always names its node:

    {"node_id": 4, "decommissioned": false}

Why a node id is stored rather than derived each time: in Kubernetes the pod
ordinal only names the *first* identity of a volume. The first range's nodes
take the ids ``--bootstrap-nodes`` lists, by ordinal; every other new store
asks the meta range for a fresh id, so a pod that comes back on an empty
volume after its predecessor was decommissioned is a new node, while a
retained volume of a decommissioned node is refused (``StoreRetired``) with a
message saying what to do.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from rangekv.common.config import ConfigError

log = logging.getLogger(__name__)

STORE_FILE = "store.json"


class StoreRetired(ConfigError):
    """This data folder belongs to a decommissioned node: it must never serve again."""

    def __init__(self, node_id: int, data_dir: Path) -> None:
        super().__init__(
            "data_dir",
            f"{data_dir} holds the store of node {node_id}, which was decommissioned: "
            "a decommissioned store never rejoins. Delete the folder (in Kubernetes: "
            "the pod's PersistentVolumeClaim) to start a new node in its place",
        )
        self.node_id = node_id


@dataclass(frozen=True)
class StoreIdent:
    node_id: int
    decommissioned: bool = False

    @staticmethod
    def load(data_dir: Path) -> StoreIdent | None:
        path = data_dir / STORE_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ConfigError("data_dir", f"{path} is unreadable: {exc}") from None
        node_id = raw.get("node_id") if isinstance(raw, dict) else None
        if not isinstance(node_id, int) or node_id <= 0:
            raise ConfigError("data_dir", f"{path} names no node id: {raw!r}")
        return StoreIdent(node_id, bool(raw.get("decommissioned", False)))

    def save(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = data_dir / (STORE_FILE + ".tmp")
        body = json.dumps({"node_id": self.node_id, "decommissioned": self.decommissioned})
        with open(tmp, "w") as f:
            f.write(body + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, data_dir / STORE_FILE)
        fd = os.open(data_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def retired(self) -> StoreIdent:
        return replace(self, decommissioned=True)


async def resolve_identity(
    data_dir: Path,
    *,
    configured: int,
    ordinal: int | None,
    bootstrap_nodes: Sequence[int],
    allocate: Callable[[], Awaitable[int]],
    registered: Callable[[int], Awaitable[bool | None]] | None = None,
) -> StoreIdent:
    """The node id this process runs as, saved in the data folder (module doc).

    Order: the stored identity (a configured id must agree with it); a
    configured ``--node-id``; a StatefulSet ordinal below the number of
    bootstrap nodes takes that bootstrap id; otherwise a fresh id from the meta
    range (``allocate``). A retired store raises StoreRetired.

    A bootstrap id that the store registry already knows (``registered``) while
    the folder holds no identity means the node's volume was lost: starting it
    empty under its old id could let it vote with a log it no longer has, so the
    store starts as a new node with a fresh id instead (None from
    ``registered``: the registry cannot say yet, as on a first install, and the
    bootstrap id is taken).
    """
    stored = StoreIdent.load(data_dir)
    if stored is not None:
        if configured and configured != stored.node_id:
            raise ConfigError(
                "node_id",
                f"--node-id {configured}, but {data_dir} holds the store of node {stored.node_id}",
            )
        if stored.decommissioned:
            raise StoreRetired(stored.node_id, data_dir)
        return stored
    if configured:
        node_id = configured
    elif ordinal is not None and ordinal < len(bootstrap_nodes):
        node_id = bootstrap_nodes[ordinal]
        if registered is not None and await registered(node_id):
            lost = node_id
            node_id = await allocate()
            log.warning(
                "%s holds no store, but node %d is in the store registry: its volume was "
                "lost. This store starts as a new node, %d; node %d's replicas are replaced "
                "once it is dead (or now: rangekv node decommission %d)",
                data_dir,
                lost,
                node_id,
                lost,
                lost,
            )
    elif ordinal is not None:
        node_id = await allocate()
    else:
        raise ConfigError("node_id", "a raftnode needs --node-id (or --pod-name in a StatefulSet)")
    ident = StoreIdent(node_id)
    ident.save(data_dir)
    return ident


__all__ = ["STORE_FILE", "StoreIdent", "StoreRetired", "resolve_identity"]
