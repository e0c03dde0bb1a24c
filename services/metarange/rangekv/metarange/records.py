"""The values the meta state machine stores and answers with, and their encoding.

Transaction metadata and descriptor intents are shared with every service
(`rangekv.domain.txn`); this module owns their stored form.

Stored values and raft commands use one protobuf-free encoding: a format byte
followed by compact JSON (sorted keys, bytes as lowercase hex). Why not the
wire protos: a raft log outlives any one release, so its payload format is
owned here, versioned explicitly, and readable with nothing but a JSON parser
(``python -c 'import json,sys; ...'`` on a dumped entry). Format 1 is::

    descriptor  {"id": u64, "s": hex, "e": hex, "g": u64, "n": u64,
                 "r": [[node_id, replica_id, type], ...]}       type: 1 voter, 2 learner
    txn         {"id": hex (16 bytes), "rk": hex record key, "k": str kind}
    intent      {"d": descriptor, "t": txn}
    node        {"id": u64, "a": str address, "m": str metrics address, "hb": i64 wall ns,
                 "st": state}     st: 2 decommissioning, 3 decommissioned; absent: active

Conversions to and from the wire protos live here too, so a service handler
is a thin shell around `state` and `reads`.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any, Final, cast

from rangekv.common.descriptors import RangeDescriptor, ReplicaDescriptor, ReplicaType
from rangekv.domain.txn import Intent, TxnMeta
from rangekv.v1 import meta_pb2, types_pb2

__all__ = [
    "FORMAT",
    "NODE_STATE_CHANGES",
    "CorruptRecordError",
    "IdKind",
    "NodeDescriptor",
    "NodeRecord",
    "NodeState",
    "NodeStatus",
    "decode_value",
    "descriptor_from_json",
    "descriptor_to_json",
    "encode_value",
    "intent_from_json",
    "intent_to_json",
    "node_from_json",
    "node_to_json",
    "txn_from_json",
    "txn_to_json",
]

#: Format byte in front of every stored value and command.
FORMAT: Final = 1


class CorruptRecordError(ValueError):
    """A stored meta value does not decode (a bug or disk corruption, never input)."""


class IdKind(enum.IntEnum):
    """An id sequence; values are the wire enum's numbers (and the counter key byte)."""

    RANGE = meta_pb2.ID_KIND_RANGE
    NODE = meta_pb2.ID_KIND_NODE


class NodeState(enum.IntEnum):
    """Where a storage node is in its life; values are the wire enum's numbers.

    ACTIVE -> DECOMMISSIONING -> DECOMMISSIONED, and DECOMMISSIONING -> ACTIVE
    (recommission). DECOMMISSIONED is final: the state machine refuses to leave
    it, refuses the node's heartbeats, and the node's store refuses to start.
    """

    ACTIVE = meta_pb2.NODE_STATE_ACTIVE
    DECOMMISSIONING = meta_pb2.NODE_STATE_DECOMMISSIONING
    DECOMMISSIONED = meta_pb2.NODE_STATE_DECOMMISSIONED

    @property
    def label(self) -> str:
        return self.name.lower()


#: The state changes the registry accepts (anything else is FAILED_PRECONDITION).
NODE_STATE_CHANGES = frozenset(
    {
        (NodeState.ACTIVE, NodeState.DECOMMISSIONING),
        (NodeState.DECOMMISSIONING, NodeState.ACTIVE),
        (NodeState.DECOMMISSIONING, NodeState.DECOMMISSIONED),
    }
)


@dataclass(frozen=True, slots=True)
class NodeDescriptor:
    """A store's identity and where to reach it (its address may change on restart)."""

    node_id: int
    address: str
    metrics_address: str = ""

    def to_proto(self) -> types_pb2.NodeDescriptor:
        return types_pb2.NodeDescriptor(
            node_id=self.node_id, address=self.address, metrics_address=self.metrics_address
        )

    @staticmethod
    def from_proto(pb: types_pb2.NodeDescriptor) -> NodeDescriptor:
        return NodeDescriptor(pb.node_id, pb.address, pb.metrics_address)


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """A registry entry as stored: the node, its last applied heartbeat, its state."""

    node: NodeDescriptor
    last_heartbeat: int
    state: NodeState = NodeState.ACTIVE

    def status(self, now: int, ttl: int) -> NodeStatus:
        live = now - self.last_heartbeat <= ttl
        return NodeStatus(self.node, live, self.last_heartbeat, self.state)


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """A registry entry as read: liveness is judged at read time against `now`."""

    node: NodeDescriptor
    live: bool
    last_heartbeat_wall_time: int
    state: NodeState = NodeState.ACTIVE

    def to_proto(self) -> meta_pb2.NodeStatus:
        return meta_pb2.NodeStatus(
            node=self.node.to_proto(),
            live=self.live,
            last_heartbeat_wall_time=self.last_heartbeat_wall_time,
            state=self.state.value,  # type: ignore[arg-type]
        )


# --- JSON forms ---------------------------------------------------------------------


def _hex(raw: bytes) -> str:
    return raw.hex()


def _unhex(obj: Any, what: str) -> bytes:
    if not isinstance(obj, str):
        raise ValueError(f"{what}: expected a hex string, got {obj!r}")
    return bytes.fromhex(obj)


def _uint(obj: Any, what: str) -> int:
    if not isinstance(obj, int) or isinstance(obj, bool) or obj < 0:
        raise ValueError(f"{what}: expected an unsigned integer, got {obj!r}")
    return obj


def descriptor_to_json(d: RangeDescriptor) -> dict[str, Any]:
    return {
        "id": d.range_id,
        "s": _hex(d.start_key),
        "e": _hex(d.end_key),
        "g": d.generation,
        "n": d.next_replica_id,
        "r": [[r.node_id, r.replica_id, int(r.type)] for r in d.replicas],
    }


def descriptor_from_json(obj: Any) -> RangeDescriptor:
    if not isinstance(obj, dict):
        raise ValueError(f"descriptor: expected an object, got {obj!r}")
    replicas = []
    for item in obj["r"]:
        node_id, replica_id, kind = item
        replicas.append(
            ReplicaDescriptor(
                _uint(node_id, "node_id"), _uint(replica_id, "replica_id"), ReplicaType(kind)
            )
        )
    return RangeDescriptor(
        range_id=_uint(obj["id"], "range_id"),
        start_key=_unhex(obj["s"], "start_key"),
        end_key=_unhex(obj["e"], "end_key"),
        replicas=tuple(replicas),
        generation=_uint(obj["g"], "generation"),
        next_replica_id=_uint(obj["n"], "next_replica_id"),
    )


def txn_to_json(t: TxnMeta) -> dict[str, Any]:
    return {"id": _hex(t.id), "rk": _hex(t.record_key), "k": t.kind}


def txn_from_json(obj: Any) -> TxnMeta:
    kind = obj["k"]
    if not isinstance(kind, str):
        raise ValueError(f"txn kind: expected a string, got {kind!r}")
    return TxnMeta(_unhex(obj["id"], "txn.id"), _unhex(obj["rk"], "txn.record_key"), kind)


def intent_to_json(descriptor: RangeDescriptor, txn: TxnMeta) -> dict[str, Any]:
    return {"d": descriptor_to_json(descriptor), "t": txn_to_json(txn)}


def intent_from_json(mk: bytes, obj: Any) -> Intent:
    return Intent(mk, descriptor_from_json(obj["d"]), txn_from_json(obj["t"]))


def node_to_json(rec: NodeRecord) -> dict[str, Any]:
    n = rec.node
    out: dict[str, Any] = {
        "id": n.node_id,
        "a": n.address,
        "m": n.metrics_address,
        "hb": rec.last_heartbeat,
    }
    if rec.state is not NodeState.ACTIVE:  # an active node's record reads as it always did
        out["st"] = int(rec.state)
    return out


def node_from_json(obj: Any) -> NodeRecord:
    address, metrics, hb = obj["a"], obj["m"], obj["hb"]
    if not (isinstance(address, str) and isinstance(metrics, str) and isinstance(hb, int)):
        raise ValueError(f"node record: bad field types in {obj!r}")
    state = NodeState(obj.get("st", NodeState.ACTIVE))
    return NodeRecord(NodeDescriptor(_uint(obj["id"], "node_id"), address, metrics), hb, state)


def encode_value(obj: dict[str, Any]) -> bytes:
    """Format byte + compact, key-sorted JSON: byte-identical for equal values."""
    body = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return bytes([FORMAT]) + body.encode("ascii")


def decode_value(raw: bytes) -> dict[str, Any]:
    """The JSON object behind `encode_value`; ValueError if it is not one."""
    if not raw or raw[0] != FORMAT:
        raise ValueError(f"unknown value format {raw[:1]!r} (this build reads {FORMAT})")
    try:
        obj = json.loads(raw[1:].decode("ascii"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"value is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"value is not a JSON object: {obj!r}")
    return cast(dict[str, Any], obj)
