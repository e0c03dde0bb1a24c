"""Peer lists on the command line: ``NODE=HOST:PORT,...`` and ``NODE,...``.

Storage nodes and meta replicas are both named by positive node ids; their
flags (`--peers`, `--bootstrap-nodes`, `--first-range-nodes`) share one parser
and one set of messages.
"""

from __future__ import annotations

__all__ = ["parse_node_ids", "parse_peers"]


def parse_peers(text: str) -> dict[int, str]:
    """``"1=127.0.0.1:7001,2=127.0.0.1:7002"`` -> ``{1: "127.0.0.1:7001", 2: ...}``."""
    peers: dict[int, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        node, sep, address = part.partition("=")
        if not sep or not node.strip().isdigit() or not address.strip():
            raise ValueError(f"peer {part!r} is not NODE_ID=HOST:PORT")
        peers[int(node)] = address.strip()
    return peers


def parse_node_ids(text: str) -> tuple[int, ...]:
    """``"1,2,3"`` -> ``(1, 2, 3)``; every id a positive integer."""
    ids = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if not part.isdigit() or int(part) <= 0:
            raise ValueError(f"node id {part!r} is not a positive integer")
        ids.append(int(part))
    return tuple(ids)
