"""Kinds of the events in the cluster's queue (plain ints: cheap to push and compare)."""

from __future__ import annotations

from typing import Final

TICK: Final = 0
"""A node's clock reached its next tick boundary: ``(node_id, incarnation, clock_epoch)``."""
READY: Final = 1
"""A node's driver handles one Ready: ``(node_id, incarnation)``."""
DELIVER: Final = 2
"""A message arrives: the ``Message``."""
CLIENT: Final = 3
"""A client slot starts its next operation: ``slot``."""
CLIENT_TIMEOUT: Final = 4
"""A client gives up waiting: ``("w", request_id)`` or ``("r", read_ctx)``."""
NEMESIS: Final = 5
"""The nemesis acts: ``None``."""
HEAL: Final = 6
"""A partition heals: the partition's sequence number."""
RESTART: Final = 7
"""A crashed node restarts: ``node_id``."""
SNAP_STATUS: Final = 8
"""The transport reports a snapshot send: ``(leader_id, to, failed)``."""
SHUTDOWN: Final = 9
"""A node removed from the cluster is stopped for good: ``node_id``."""
UNREACHABLE: Final = 10
"""The transport tells a sender a peer is unreachable: ``(sender_id, to)``."""
LIVENESS: Final = 11
"""A node-level liveness heartbeat or answer arrives: a ``LivenessBeat`` or ``LivenessAnswer``."""
