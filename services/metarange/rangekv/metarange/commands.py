"""Meta commands: the payloads of the meta range's raft log, and their results.

A command is proposed by one replica and applied by all of them, possibly
again after a crash (replay), possibly by a build newer than the proposer's.
Hence: (1) everything apply needs is IN the command (a heartbeat carries its
wall time; apply never reads a clock); (2) the encoding is stable, versioned
and documented (`records.encode_value`: format byte 1 + JSON)::

    {"op": "write_intent",   "txn": txn, "d": descriptor, "exp": descriptor | null,
                             "absent": bool, "lock": hex | null}
    {"op": "resolve_intent", "mk": hex, "txn": hex, "st": 2 | 3}
    {"op": "heartbeat",      "node": {"id", "a", "m"}, "wall": i64 ns}
    {"op": "allocate_ids",   "kind": 1 | 2, "n": u32}
    {"op": "bootstrap",      "d": descriptor}
    {"op": "set_node_state", "node": u64, "st": 1 | 2 | 3}

A decoder meeting an unknown ``op`` or format refuses the command (the
refusal is deterministic on every replica) instead of guessing.

Why JSON here while a range's raft commands are protobuf (`raftcmd.proto`):
the meta range's existing logs hold format-1 JSON entries, and a replica
applies whatever the leader proposed. A build that proposed protobuf entries
would have them refused (as an unknown format) by any replica still running an
older build, while the upgraded replicas applied them: the replicas' states
would diverge in the middle of a rolling upgrade. Switching needs a
cluster-wide version gate first (every replica able to decode the new format
before any leader writes it); until then the format stays as it is.

Validation that does not depend on state happens when a command is built, so
a proposer learns of bad input before anything reaches the log. The two intent
commands, `WriteIntent` and `ResolveIntent`, are the descriptor-transaction
protocol's own values (`rangekv.domain.descriptor_txn`); this module owns their
encoding in the meta range's log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from rangekv.common.descriptors import RangeDescriptor
from rangekv.common.errors import InvalidArgument
from rangekv.domain.descriptor_txn import ResolveIntent, WriteIntent
from rangekv.domain.txn import TxnStatus
from rangekv.metarange.records import (
    IdKind,
    NodeDescriptor,
    NodeRecord,
    NodeState,
    decode_value,
    descriptor_from_json,
    descriptor_to_json,
    encode_value,
    txn_from_json,
    txn_to_json,
)

__all__ = [
    "MAX_ALLOCATE",
    "AllocateIds",
    "AllocateIdsResult",
    "Bootstrap",
    "BootstrapResult",
    "Command",
    "CommandResult",
    "Heartbeat",
    "HeartbeatResult",
    "ResolveIntentResult",
    "SetNodeState",
    "SetNodeStateResult",
    "WriteIntentResult",
    "decode_command",
    "encode_command",
]

#: Upper bound on one AllocateIds; keeps a typo from burning the id space.
MAX_ALLOCATE: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Upsert `node` in the registry as alive at `wall_time_ns` (the sender's clock)."""

    node: NodeDescriptor
    wall_time_ns: int

    def __post_init__(self) -> None:
        if self.node.node_id <= 0:
            raise InvalidArgument("node.node_id", "must be positive")
        if not self.node.address:
            raise InvalidArgument("node.address", "must not be empty")


@dataclass(frozen=True, slots=True)
class AllocateIds:
    kind: IdKind
    count: int

    def __post_init__(self) -> None:
        if not 0 < self.count <= MAX_ALLOCATE:
            raise InvalidArgument("count", f"must be in 1..{MAX_ALLOCATE}")


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """Create the first range, covering the whole keyspace, if meta is empty."""

    first: RangeDescriptor

    def __post_init__(self) -> None:
        if self.first.start_key or self.first.end_key:
            raise InvalidArgument("first_range", "must cover the whole keyspace")
        if self.first.range_id == 0:
            raise InvalidArgument("first_range.range_id", "must be non-zero")


@dataclass(frozen=True, slots=True)
class SetNodeState:
    """Move a registered node to `state` (records.NODE_STATE_CHANGES say which
    moves are allowed; DECOMMISSIONED also needs that no range names the node)."""

    node_id: int
    state: NodeState

    def __post_init__(self) -> None:
        if self.node_id <= 0:
            raise InvalidArgument("node_id", "must be positive")


Command = WriteIntent | ResolveIntent | Heartbeat | AllocateIds | Bootstrap | SetNodeState


@dataclass(frozen=True, slots=True)
class WriteIntentResult:
    meta_key: bytes


@dataclass(frozen=True, slots=True)
class ResolveIntentResult:
    resolved: bool


@dataclass(frozen=True, slots=True)
class HeartbeatResult:
    """The registry entry after the heartbeat (a stale heartbeat changes nothing)."""

    node: NodeDescriptor
    last_heartbeat: int


@dataclass(frozen=True, slots=True)
class AllocateIdsResult:
    first: int
    count: int


@dataclass(frozen=True, slots=True)
class BootstrapResult:
    """`created` is False when meta already held records; `first_range` is then
    the range recorded by the bootstrap that did happen (None if unknown)."""

    created: bool
    first_range: RangeDescriptor | None


@dataclass(frozen=True, slots=True)
class SetNodeStateResult:
    """The registry entry after the change (unchanged when it was already there)."""

    record: NodeRecord


CommandResult = (
    WriteIntentResult
    | ResolveIntentResult
    | HeartbeatResult
    | AllocateIdsResult
    | BootstrapResult
    | SetNodeStateResult
)


# --- encoding ---------------------------------------------------------------------------


def _to_json(cmd: Command) -> dict[str, Any]:
    if isinstance(cmd, WriteIntent):
        return {
            "op": "write_intent",
            "txn": txn_to_json(cmd.txn),
            "d": descriptor_to_json(cmd.descriptor),
            "exp": None if cmd.expected is None else descriptor_to_json(cmd.expected),
            "absent": cmd.expect_absent,
            "lock": None if cmd.lock_key is None else cmd.lock_key.hex(),
        }
    if isinstance(cmd, ResolveIntent):
        return {
            "op": "resolve_intent",
            "mk": cmd.meta_key.hex(),
            "txn": cmd.txn_id.hex(),
            "st": int(cmd.status),
        }
    if isinstance(cmd, Heartbeat):
        n = cmd.node
        return {
            "op": "heartbeat",
            "node": {"id": n.node_id, "a": n.address, "m": n.metrics_address},
            "wall": cmd.wall_time_ns,
        }
    if isinstance(cmd, AllocateIds):
        return {"op": "allocate_ids", "kind": int(cmd.kind), "n": cmd.count}
    if isinstance(cmd, SetNodeState):
        return {"op": "set_node_state", "node": cmd.node_id, "st": int(cmd.state)}
    return {"op": "bootstrap", "d": descriptor_to_json(cmd.first)}


def encode_command(cmd: Command) -> bytes:
    return encode_value(_to_json(cmd))


def _from_json(obj: dict[str, Any]) -> Command:
    op = obj.get("op")
    if op == "write_intent":
        exp, lock = obj["exp"], obj["lock"]
        return WriteIntent(
            txn=txn_from_json(obj["txn"]),
            descriptor=descriptor_from_json(obj["d"]),
            expected=None if exp is None else descriptor_from_json(exp),
            expect_absent=bool(obj["absent"]),
            lock_key=None if lock is None else bytes.fromhex(lock),
        )
    if op == "resolve_intent":
        return ResolveIntent(
            bytes.fromhex(obj["mk"]), bytes.fromhex(obj["txn"]), TxnStatus(obj["st"])
        )
    if op == "heartbeat":
        n = obj["node"]
        wall = obj["wall"]
        if not isinstance(wall, int):
            raise ValueError(f"heartbeat wall time: expected an integer, got {wall!r}")
        return Heartbeat(NodeDescriptor(int(n["id"]), str(n["a"]), str(n["m"])), wall)
    if op == "allocate_ids":
        return AllocateIds(IdKind(obj["kind"]), int(obj["n"]))
    if op == "bootstrap":
        return Bootstrap(descriptor_from_json(obj["d"]))
    if op == "set_node_state":
        node = obj["node"]
        if not isinstance(node, int) or isinstance(node, bool):
            raise ValueError(f"set_node_state node: expected an integer, got {node!r}")
        return SetNodeState(node, NodeState(obj["st"]))
    raise ValueError(f"unknown meta command op {op!r}")


def decode_command(raw: bytes) -> Command:
    """The command `raw` encodes; InvalidArgument if it is malformed or unknown."""
    try:
        return _from_json(decode_value(raw))
    except InvalidArgument:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument("command", f"undecodable meta command: {exc}") from None
