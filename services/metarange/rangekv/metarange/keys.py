"""The metarange process's keyspace inside its state engine.

The state engine documents three spans for range replicas (``0x01`` range-local
metadata, ``0x02`` txn records, ``0x03`` MVCC data). A metarange replica runs
on the same engine type, so its own records live under a separate first byte,
``0x10``, that nothing else writes: the meta state machine can scan its
records without filtering, and its raft group's applied state may still use
the engine's ordinary ``0x01`` range-local key (same batch, same replay rule)::

    0x10 0x01                                     bootstrap marker -> first range descriptor
    0x10 0x02 | kind u8                           id counter       -> next id, u64 big-endian
    0x10 0x03 | node_id u64                       store registry   -> node record
    0x10 0x04 | meta(end_key) | 'c'               committed descriptor at meta(end_key)
    0x10 0x04 | meta(end_key) | 'i'               the (single) intent at meta(end_key)

``meta(end_key)`` is the *logical* meta key, the one the wire carries
(``DescriptorIntent.meta_key``, ``ResolveIntentRequest.meta_key``), declared
with the user-key encoding it builds on in `rangekv.domain.keys`::

    meta(k) = 0x01 | enc(k)     for a non-empty end key
    meta(b"") = 0x02            the end of the keyspace sorts after every key

Why this shape: (1) meta keys must sort exactly like end keys, whatever bytes they
hold (``0x00`` and ``0xff`` included), with the unbounded end last, because a
lookup is a forward scan; (2) ``meta`` must be prefix free so that the one-byte
sub-key suffix keeps the committed value and the intent of one meta key
adjacent, with no other meta key's records between them. ``enc`` gives both
for non-empty keys, and ``0x02`` is a lone byte no ``0x01 ...`` key can extend.
Because each meta key has exactly one intent slot, "at most one intent per
key" holds by construction of the layout.
"""

from __future__ import annotations

import enum
import struct
from typing import Final

from rangekv.replication.state_engine import prefix_end

__all__ = [
    "BOOTSTRAP_KEY",
    "META_GROUP_ID",
    "META_PREFIX",
    "RECORD_PREFIX",
    "RecordKind",
    "counter_key",
    "decode_record_key",
    "node_key",
    "node_span",
    "record_key",
    "records_span",
]

#: The meta range's raft group id (its applied state is range-local to it).
META_GROUP_ID: Final = 1
#: First byte of every key the metarange state machine writes.
META_PREFIX: Final = b"\x10"
BOOTSTRAP_KEY: Final = META_PREFIX + b"\x01"
COUNTER_PREFIX: Final = META_PREFIX + b"\x02"
NODE_PREFIX: Final = META_PREFIX + b"\x03"
RECORD_PREFIX: Final = META_PREFIX + b"\x04"

_U64: Final = struct.Struct(">Q")


class RecordKind(bytes, enum.Enum):
    """The sub-key of a descriptor record: the committed value or the intent."""

    COMMITTED = b"c"
    INTENT = b"i"


def record_key(mk: bytes, kind: RecordKind) -> bytes:
    """The stored key of the committed value or the intent at logical meta key `mk`."""
    return RECORD_PREFIX + mk + kind.value


def decode_record_key(stored: bytes) -> tuple[bytes, RecordKind]:
    """(logical meta key, kind) of a stored record key."""
    if not stored.startswith(RECORD_PREFIX) or len(stored) < len(RECORD_PREFIX) + 2:
        raise ValueError(f"not a meta record key: {stored!r}")
    return stored[len(RECORD_PREFIX) : -1], RecordKind(stored[-1:])


def records_span(start_mk: bytes = b"", end_mk: bytes | None = None) -> tuple[bytes, bytes]:
    """Stored-key span of the records at logical meta keys in [start_mk, end_mk)."""
    lo = RECORD_PREFIX + start_mk
    if end_mk is not None:
        return lo, RECORD_PREFIX + end_mk
    hi = prefix_end(RECORD_PREFIX)
    assert hi is not None
    return lo, hi


def counter_key(kind: int) -> bytes:
    if not 0 < kind < 256:
        raise ValueError(f"id kind must be in 1..255, got {kind}")
    return COUNTER_PREFIX + bytes([kind])


def node_key(node_id: int) -> bytes:
    return NODE_PREFIX + _U64.pack(node_id)


def node_span() -> tuple[bytes, bytes]:
    hi = prefix_end(NODE_PREFIX)
    assert hi is not None
    return NODE_PREFIX, hi
