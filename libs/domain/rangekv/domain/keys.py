"""Order-preserving key encodings shared by the storage nodes and the meta range.

User keys are arbitrary bytes. Stored keys must (1) sort exactly like the user
keys and (2) keep everything stored under one user key adjacent, with nothing of
another key in between, whatever bytes the keys contain. A plain concatenation
``user_key + suffix`` breaks (2): ``b"a" + s`` and ``b"a\\x00" + s`` interleave.
So user keys are escaped and terminated::

    0x00 -> 0x00 0xFF        (every 0x00 in the key)
    terminator: 0x00 0x01

Inside an escaped body a 0x00 is always followed by 0xFF, so the terminator
``00 01`` cannot occur there and sorts below any continuation (``00 FF`` or any
byte >= 0x01): a key sorts before every key it is a proper prefix of, and the
encoding is prefix free, so two encoded keys compare before any suffix.

Logical meta keys (what the wire carries in ``DescriptorIntent.meta_key`` and
``ResolveIntentRequest.meta_key``) name the descriptor ending at a key::

    meta(k) = 0x01 | enc(k)     for a non-empty end key
    meta(b"") = 0x02            the end of the keyspace sorts after every key

They sort exactly like end keys with the unbounded end last (a lookup is a
forward scan), and are prefix free (a one-byte suffix keeps the records of one
meta key adjacent in the meta range's storage).
"""

from __future__ import annotations

from typing import Final

from rangekv.common.errors import InvalidArgument

__all__ = [
    "KeyDecodeError",
    "decode_meta_key",
    "decode_user_key",
    "encode_user_key",
    "lookup_start",
    "meta_key",
    "meta_span_end",
    "min_end",
]

_ESCAPE: Final = b"\x00\xff"
_TERMINATOR: Final = b"\x00\x01"
_BOUNDED: Final = b"\x01"
_UNBOUNDED: Final = b"\x02"


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


def meta_key(end_key: bytes) -> bytes:
    """The logical meta key of the descriptor ending at `end_key` (b"" = unbounded)."""
    return _BOUNDED + encode_user_key(end_key) if end_key else _UNBOUNDED


def decode_meta_key(mk: bytes) -> bytes:
    """The end key a logical meta key stands for; InvalidArgument if malformed.

    Meta keys arrive from the wire (ResolveIntent), so malformed input is a
    caller error, not corruption.
    """
    if mk == _UNBOUNDED:
        return b""
    if mk.startswith(_BOUNDED):
        try:
            end_key, pos = decode_user_key(mk, 1)
        except KeyDecodeError as exc:
            raise InvalidArgument("meta_key", str(exc)) from None
        if pos == len(mk) and end_key:
            return end_key
    raise InvalidArgument("meta_key", f"not a meta key: {mk!r}")


def lookup_start(key: bytes) -> bytes:
    """The first meta key a lookup of `key` must read.

    The range covering `key` is the one with the smallest end key strictly
    greater than `key` (or the unbounded one), so the scan starts at
    ``meta(key + 0x00)``: ``key + 0x00`` is the smallest key above `key`, and
    the record at ``meta(key)`` itself, a range ending AT `key`, is skipped.
    """
    return meta_key(key + b"\x00")


def meta_span_end(end_key: bytes) -> bytes:
    """Exclusive upper bound, in logical meta keys, of meta keys <= meta(end_key)."""
    if not end_key:
        return _UNBOUNDED + b"\x00"
    return meta_key(end_key + b"\x00")


def min_end(a: bytes, b: bytes) -> bytes:
    """The smaller of two exclusive span ends, where empty means unbounded."""
    if not a:
        return b
    if not b:
        return a
    return min(a, b)
