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

Validation that does not depend on state happens when a command is built, so
a proposer learns of bad input before anything reaches the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from rangekv.common.descriptors import RangeDescriptor
from rangekv.common.errors import InvalidArgument
from rangekv.metarange.keys import decode_meta_key, meta_key
from rangekv.metarange.records import (
    TXN_ID_LEN,
    IdKind,
    NodeDescriptor,
    NodeRecord,
    NodeState,
    TxnMeta,
    TxnStatus,
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
    "ResolveIntent",
    "ResolveIntentResult",
    "SetNodeState",
    "SetNodeStateResult",
    "WriteIntent",
    "WriteIntentResult",
    "decode_command",
    "encode_command",
]

#: Upper bound on one AllocateIds; keeps a typo from burning the id space.
MAX_ALLOCATE: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class WriteIntent:
    """Write `descriptor` as `txn`'s intent at meta(descriptor.end_key).

    Conditional on the committed value there: equal to `expected`, or absent
    when `expect_absent`; exactly one of the two must be given. `lock_key`,
    when set, is the meta key of the transaction's lock (the intent it wrote
    first): the write also requires that key to still hold an intent of this
    transaction, so a coordinator whose transaction was aborted and whose lock
    was resolved away cannot add intents behind a newer transaction's back.
    """

    txn: TxnMeta
    descriptor: RangeDescriptor
    expected: RangeDescriptor | None = None
    expect_absent: bool = False
    lock_key: bytes | None = None

    def __post_init__(self) -> None:
        if (self.expected is None) != self.expect_absent:
            raise InvalidArgument(
                "expected", "give exactly one of an expected descriptor or expect_absent"
            )
        if self.expected is not None and self.expected.end_key != self.descriptor.end_key:
            raise InvalidArgument(
                "expected", "the expected descriptor must end where the new one ends"
            )
        if self.descriptor.range_id == 0:
            raise InvalidArgument("descriptor.range_id", "must be non-zero")
        if self.lock_key is not None:
            decode_meta_key(self.lock_key)

    @property
    def meta_key(self) -> bytes:
        return meta_key(self.descriptor.end_key)


@dataclass(frozen=True, slots=True)
class ResolveIntent:
    """Commit or abort `txn_id`'s intent at `meta_key`; a no-op if it is not there."""

    meta_key: bytes
    txn_id: bytes
    status: TxnStatus

    def __post_init__(self) -> None:
        decode_meta_key(self.meta_key)
        if len(self.txn_id) != TXN_ID_LEN:
            raise InvalidArgument("txn_id", f"must be {TXN_ID_LEN} bytes")
        if self.status not in (TxnStatus.COMMITTED, TxnStatus.ABORTED):
            raise InvalidArgument("status", "must be COMMITTED or ABORTED")


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
