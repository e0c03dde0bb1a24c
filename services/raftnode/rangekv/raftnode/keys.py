"""Order-preserving encoding of user keys and MVCC version keys.

User keys are arbitrary bytes. Stored keys must (1) sort exactly like the
user keys and (2) keep all versions of one user key adjacent, with no other
key's versions between them, whatever bytes the keys contain. A plain
concatenation `user_key + timestamp` breaks (2): `b"a" + ts` and `b"a\\x00" + ts`
interleave. So user keys are escaped and terminated:

    0x00 -> 0x00 0xFF        (every 0x00 in the key)
    terminator: 0x00 0x01

Inside an escaped body a 0x00 is always followed by 0xFF, so the terminator
`00 01` cannot occur there and sorts below any continuation (`00 FF` or any
byte >= 0x01): a key sorts before every key it is a proper prefix of, and the
encoding is prefix free, so comparison of two encoded keys is decided before
any suffix. The version suffix is the 12-byte timestamp encoding with every
bit inverted, so versions of a key sort newest first and "the newest version
at or below ts" is the first key at or after `version_key(key, ts)`.
"""

from __future__ import annotations

from typing import Final

from rangekv.common.hlc import ENCODED_TIMESTAMP_LEN, Timestamp
from rangekv.replication.state_engine import DATA_PREFIX, TXN_PREFIX, prefix_end

__all__ = [
    "KeyDecodeError",
    "data_span",
    "decode_user_key",
    "decode_version_key",
    "encode_user_key",
    "txn_record_key",
    "txn_record_span",
    "version_key",
    "version_prefix",
]

_ESCAPE: Final = b"\x00\xff"
_TERMINATOR: Final = b"\x00\x01"
_INVERT: Final = bytes(range(255, -1, -1))  # translate table: b -> 255 - b
TXN_ID_LEN: Final = 16


class KeyDecodeError(ValueError):
    """Stored bytes are not a valid encoded key."""


def encode_user_key(user_key: bytes) -> bytes:
    """Escaped, terminated encoding; order preserving and prefix free."""
    return user_key.replace(b"\x00", _ESCAPE) + _TERMINATOR


def decode_user_key(buf: bytes, pos: int = 0) -> tuple[bytes, int]:
    """Decode an encoded user key at `buf[pos:]`; returns (user key, end offset)."""
    out = bytearray()
    while True:
        zero = buf.find(b"\x00", pos)
        if zero < 0 or zero + 1 >= len(buf):
            raise KeyDecodeError(f"unterminated encoded key: {buf!r}")
        out += buf[pos:zero]
        marker = buf[zero + 1]
        if marker == 0x01:
            return bytes(out), zero + 2
        if marker != 0xFF:
            raise KeyDecodeError(f"bad escape 00 {marker:02x} at {zero} in {buf!r}")
        out.append(0)
        pos = zero + 2


def version_prefix(user_key: bytes) -> bytes:
    """The stored-key prefix shared by all versions of `user_key` (and only them)."""
    return DATA_PREFIX + encode_user_key(user_key)


def version_key(user_key: bytes, ts: Timestamp) -> bytes:
    return version_prefix(user_key) + ts.encode().translate(_INVERT)


def decode_version_key(stored: bytes) -> tuple[bytes, Timestamp]:
    """(user key, version timestamp) of a stored MVCC key."""
    if not stored.startswith(DATA_PREFIX):
        raise KeyDecodeError(f"not an MVCC key (prefix {DATA_PREFIX!r}): {stored!r}")
    user_key, end = decode_user_key(stored, len(DATA_PREFIX))
    suffix = stored[end:]
    if len(suffix) != ENCODED_TIMESTAMP_LEN:
        raise KeyDecodeError(f"MVCC key has a {len(suffix)}-byte version suffix: {stored!r}")
    return user_key, Timestamp.decode(suffix.translate(_INVERT))


def data_span(start: bytes, end: bytes) -> tuple[bytes, bytes]:
    """Stored-key span [lo, hi) of user keys in [start, end); `end=b""` is unbounded."""
    lo = version_prefix(start)
    if end:
        return lo, version_prefix(end)
    hi = prefix_end(DATA_PREFIX)
    assert hi is not None
    return lo, hi


def txn_record_key(anchor: bytes, txn_id: bytes) -> bytes:
    """Txn records sort by anchor key, so a range's records form one span."""
    if len(txn_id) != TXN_ID_LEN:
        raise ValueError(f"txn id must be {TXN_ID_LEN} bytes, got {len(txn_id)}")
    return TXN_PREFIX + encode_user_key(anchor) + txn_id


def txn_record_span(start: bytes, end: bytes) -> tuple[bytes, bytes]:
    """Stored-key span of txn records anchored in [start, end); `end=b""` is unbounded."""
    lo = TXN_PREFIX + encode_user_key(start)
    if end:
        return lo, TXN_PREFIX + encode_user_key(end)
    hi = prefix_end(TXN_PREFIX)
    assert hi is not None
    return lo, hi
