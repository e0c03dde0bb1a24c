"""The byte format of a streamed replica snapshot: state-engine key/value pairs in chunks.

A snapshot of a range is every state-engine key the range owns (its range-local
keys, its transaction records, its MVCC data), read from ONE consistent
RocksDB snapshot and cut into chunks of about `chunk_bytes`. Each chunk is a
sequence of ``u32 key length | key | u32 value length | value``. The receiver
ingests the pairs into one batch that first clears the same spans, so a
snapshot fully replaces what the replica had.

The state in the snapshot may be newer than the raft snapshot index the leader
announced (the engine moved on between the two): that is safe because the
ingested applied index travels with the data, and apply skips entries at or
below it (see RaftGroup.apply_entries).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import Final

_LEN: Final = struct.Struct(">I")
DEFAULT_CHUNK_BYTES: Final = 1 << 20


class SnapshotFormatError(ValueError):
    """A snapshot chunk does not decode."""


def encode_chunks(
    pairs: Iterable[tuple[bytes, bytes]], chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[bytes]:
    """Cut `pairs` into encoded chunks of about `chunk_bytes` (at least one chunk)."""
    parts: list[bytes] = []
    size = 0
    emitted = False
    pack = _LEN.pack
    for key, value in pairs:
        parts.append(pack(len(key)))
        parts.append(key)
        parts.append(pack(len(value)))
        parts.append(value)
        size += 8 + len(key) + len(value)
        if size >= chunk_bytes:
            yield b"".join(parts)
            emitted = True
            parts, size = [], 0
    if parts or not emitted:
        yield b"".join(parts)


def decode_chunk(chunk: bytes) -> Iterator[tuple[bytes, bytes]]:
    """The pairs of one chunk, in order."""
    view = memoryview(chunk)
    pos, end = 0, len(chunk)
    unpack = _LEN.unpack_from
    while pos < end:
        if pos + 4 > end:
            raise SnapshotFormatError(f"truncated key length at offset {pos}")
        (klen,) = unpack(view, pos)
        pos += 4
        key = bytes(view[pos : pos + klen])
        pos += klen
        if pos + 4 > end:
            raise SnapshotFormatError(f"truncated value length at offset {pos}")
        (vlen,) = unpack(view, pos)
        pos += 4
        if pos + vlen > end:
            raise SnapshotFormatError(f"truncated value at offset {pos}")
        value = bytes(view[pos : pos + vlen])
        pos += vlen
        yield key, value
