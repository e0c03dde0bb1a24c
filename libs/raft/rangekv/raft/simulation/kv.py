"""The tiny key-value state machine replicated by the simulated cluster.

Commands are byte strings in the log, so the encoding must be deterministic:
the same command must produce the same bytes on every run (the trace hash and
the state-machine-safety check compare them).  The state machine is a plain
dict; its snapshot is that dict serialized with sorted keys, so two nodes at
the same applied index produce byte-identical snapshots.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum


class CommandKind(Enum):
    """The write operations the simulated clients issue."""

    PUT = "put"
    DELETE = "delete"
    CAS = "cas"


def _hex(b: bytes | None) -> str | None:
    return None if b is None else b.hex()


def _unhex(s: str | None) -> bytes | None:
    return None if s is None else bytes.fromhex(s)


@dataclass(frozen=True, slots=True)
class Command:
    """One write.  ``request_id`` is unique per run; it lets the proposer
    recognise its own entry when it applies it (Raft returns no index on
    propose)."""

    request_id: int
    kind: CommandKind
    key: bytes
    value: bytes | None = None
    """PUT value or CAS new value (``None`` for a CAS means delete)."""
    expected: bytes | None = None
    """CAS only: the value the key must hold; ``None`` means it must be absent."""

    def encode(self) -> bytes:
        """Deterministic bytes for the log."""
        doc = {
            "id": self.request_id,
            "op": self.kind.value,
            "k": self.key.hex(),
            "v": _hex(self.value),
            "e": _hex(self.expected),
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Command:
        """Inverse of :meth:`encode`."""
        doc = json.loads(data)
        key = _unhex(doc["k"])
        assert key is not None
        return cls(
            request_id=int(doc["id"]),
            kind=CommandKind(doc["op"]),
            key=key,
            value=_unhex(doc["v"]),
            expected=_unhex(doc["e"]),
        )


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What applying a command did: whether it took effect, and what it saw."""

    succeeded: bool
    """PUT: always True; DELETE: the key existed; CAS: it swapped."""
    previous: bytes | None
    """The value before the command (reported by an unswapped CAS)."""


class KVStateMachine:
    """A dict from key to value, mutated only by committed commands."""

    __slots__ = ("data",)

    def __init__(self, data: dict[bytes, bytes] | None = None) -> None:
        self.data: dict[bytes, bytes] = dict(data or {})

    def apply(self, cmd: Command) -> ApplyResult:
        """Apply one committed command (deterministic, total)."""
        prev = self.data.get(cmd.key)
        if cmd.kind is CommandKind.PUT:
            assert cmd.value is not None
            self.data[cmd.key] = cmd.value
            return ApplyResult(True, prev)
        if cmd.kind is CommandKind.DELETE:
            existed = self.data.pop(cmd.key, None) is not None
            return ApplyResult(existed, prev)
        if prev != cmd.expected:
            return ApplyResult(False, prev)
        if cmd.value is None:
            self.data.pop(cmd.key, None)
        else:
            self.data[cmd.key] = cmd.value
        return ApplyResult(True, prev)

    def get(self, key: bytes) -> bytes | None:
        """The current value of ``key`` (``None`` when absent)."""
        return self.data.get(key)

    def serialize(self) -> bytes:
        """Snapshot bytes: sorted, so equal states give equal bytes."""
        doc = {k.hex(): v.hex() for k, v in sorted(self.data.items())}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def deserialize(cls, blob: bytes) -> KVStateMachine:
        """Inverse of :meth:`serialize`; empty bytes is the empty store."""
        if not blob:
            return cls()
        doc = json.loads(blob)
        return cls({bytes.fromhex(k): bytes.fromhex(v) for k, v in doc.items()})

    def fingerprint(self) -> tuple[tuple[bytes, bytes], ...]:
        """A comparable, hashable image of the state (cheap for a handful of keys)."""
        return tuple(sorted(self.data.items()))
