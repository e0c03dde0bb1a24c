"""The storage node's stored keys: MVCC versions and transaction records.

User keys are stored in the escaped, terminated encoding of
`rangekv.domain.keys` (order preserving, prefix free), so all versions of one
user key are adjacent with no other key's versions between them, whatever
bytes the keys contain. The version suffix is the 12-byte timestamp encoding with every
bit inverted, so versions of a key sort newest first and "the newest version
at or below ts" is the first key at or after `version_key(key, ts)`.
"""

from __future__ import annotations

from typing import Final

from rangekv.common.hlc import ENCODED_TIMESTAMP_LEN, Timestamp
from rangekv.domain.keys import KeyDecodeError, decode_user_key, encode_user_key
from rangekv.domain.txn import TXN_ID_LEN
from rangekv.replication.state_engine import DATA_PREFIX, TXN_PREFIX, prefix_end

__all__ = [
    "data_span",
    "decode_version_key",
    "txn_record_key",
    "txn_record_span",
    "version_key",
    "version_prefix",
]

_INVERT: Final = bytes(range(255, -1, -1))  # translate table: b -> 255 - b


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
