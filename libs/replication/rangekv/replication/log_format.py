"""The raft-log engine's storage format: its keys and its values.

Key layout (integers big-endian, so byte order is numeric order)::

    0x01 | group u64 | 'e' | index u64   -> entry        fmt u8, term u64, type u8, data
    0x01 | group u64 | 'h'               -> HardState    fmt u8, term, vote, commit (u64)
    0x01 | group u64 | 's'               -> snapshot     fmt u8, index, term, conf state
    0x01 | group u64 | 't'               -> truncated    fmt u8, index, term

Values start with a format byte so the layout can evolve; encoding uses
`struct` (a protobuf round trip per entry would dominate the write path).
"""

from __future__ import annotations

import struct
from typing import Final

from rangekv.raft import ConfState, Entry, EntryType, HardState, SnapshotMetadata

__all__ = [
    "ENTRY",
    "GROUP_PREFIX",
    "HARD_STATE",
    "MAX_U64",
    "SNAPSHOT",
    "TRUNCATED",
    "LogCorruptionError",
    "decode_entry",
    "decode_group_id",
    "decode_hard_state",
    "decode_snapshot_meta",
    "decode_truncated",
    "encode_entry",
    "encode_hard_state",
    "encode_snapshot_meta",
    "encode_truncated",
    "entry_key",
    "group_prefix",
]

GROUP_PREFIX: Final = b"\x01"
ENTRY: Final = b"e"
HARD_STATE: Final = b"h"
SNAPSHOT: Final = b"s"
TRUNCATED: Final = b"t"
_FORMAT: Final = 1
_U64: Final = struct.Struct(">Q")
_ENTRY_HDR: Final = struct.Struct(">BQB")
_HARD: Final = struct.Struct(">BQQQ")
_SNAP_HDR: Final = struct.Struct(">BQQII")
_TRUNC: Final = struct.Struct(">BQQ")
MAX_U64: Final = (1 << 64) - 1


class LogCorruptionError(ValueError):
    """A stored value does not decode or the log has a hole; names the key."""


def group_prefix(group_id: int) -> bytes:
    return GROUP_PREFIX + _U64.pack(group_id)


def entry_key(group_id: int, index: int) -> bytes:
    return group_prefix(group_id) + ENTRY + _U64.pack(index)


def encode_entry(e: Entry) -> bytes:
    return _ENTRY_HDR.pack(_FORMAT, e.term, e.type.value) + e.data


def decode_entry(key: bytes, raw: bytes) -> Entry:
    if len(raw) < _ENTRY_HDR.size or raw[0] != _FORMAT:
        raise LogCorruptionError(f"bad entry value at {key!r}: {raw[:16]!r}")
    _, term, etype = _ENTRY_HDR.unpack_from(raw)
    (index,) = _U64.unpack_from(key, len(key) - 8)
    return Entry(term, index, EntryType(etype), raw[_ENTRY_HDR.size :])


def encode_hard_state(hs: HardState) -> bytes:
    return _HARD.pack(_FORMAT, hs.term, hs.vote, hs.commit)


def decode_hard_state(raw: bytes) -> HardState:
    if len(raw) != _HARD.size or raw[0] != _FORMAT:
        raise LogCorruptionError(f"bad HardState value: {raw!r}")
    _, term, vote, commit = _HARD.unpack(raw)
    return HardState(term, vote, commit)


def encode_snapshot_meta(m: SnapshotMetadata) -> bytes:
    cs = m.conf_state
    head = _SNAP_HDR.pack(_FORMAT, m.index, m.term, len(cs.voters), len(cs.learners))
    ids = (*cs.voters, *cs.learners)
    return head + struct.pack(f">{len(ids)}Q", *ids)


def decode_snapshot_meta(raw: bytes) -> SnapshotMetadata:
    if len(raw) < _SNAP_HDR.size or raw[0] != _FORMAT:
        raise LogCorruptionError(f"bad snapshot metadata value: {raw!r}")
    _, index, term, nv, nl = _SNAP_HDR.unpack_from(raw)
    if len(raw) != _SNAP_HDR.size + 8 * (nv + nl):
        raise LogCorruptionError(f"snapshot metadata length mismatch: {raw!r}")
    ids = struct.unpack_from(f">{nv + nl}Q", raw, _SNAP_HDR.size)
    return SnapshotMetadata(index, term, ConfState(tuple(ids[:nv]), tuple(ids[nv:])))


def encode_truncated(index: int, term: int) -> bytes:
    return _TRUNC.pack(_FORMAT, index, term)


def decode_truncated(group_id: int, raw: bytes) -> tuple[int, int]:
    """(index, term) of the entry just before the group's first retained one."""
    if len(raw) != _TRUNC.size or raw[0] != _FORMAT:
        raise LogCorruptionError(f"bad truncated state of group {group_id}: {raw!r}")
    _, index, term = _TRUNC.unpack(raw)
    return index, term


def decode_group_id(key: bytes) -> int:
    """The group a stored key belongs to."""
    (gid,) = _U64.unpack_from(key, 1)
    return int(gid)
