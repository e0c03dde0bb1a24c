"""The key and value size limits, declared once and validated with one set of messages.

The gateway refuses an oversized key or value before anything is sent; a storage
node refuses it again (a node may be reached by other clients, and its limit is
its own). Both read the same flags (`max_key_bytes_setting`,
`max_value_bytes_setting`) and validate through `KeyValueLimits`, so a client
sees the same INVALID_ARGUMENT message whichever process refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from rangekv.common.config import setting
from rangekv.common.errors import InvalidArgument

__all__ = [
    "DEFAULT_MAX_KEY_BYTES",
    "DEFAULT_MAX_VALUE_BYTES",
    "MAX_BATCH_OPS",
    "KeyValueLimits",
    "max_key_bytes_setting",
    "max_value_bytes_setting",
]

DEFAULT_MAX_KEY_BYTES: Final = 4096
#: The most operations one storage-node batch may carry (a node refuses more with
#: INVALID_ARGUMENT). A gateway merges the concurrent operations of its clients into
#: node batches, so its budget of operations in flight may not exceed it: a merged
#: batch of valid operations must never be refused as invalid.
MAX_BATCH_OPS: Final = 10_000
DEFAULT_MAX_VALUE_BYTES: Final = 1 << 20


def max_key_bytes_setting() -> Any:
    """The `--max-key-bytes` field of a service's config."""
    return setting(DEFAULT_MAX_KEY_BYTES, help="largest key accepted")


def max_value_bytes_setting() -> Any:
    """The `--max-value-bytes` field of a service's config."""
    return setting(DEFAULT_MAX_VALUE_BYTES, help="largest value accepted")


@dataclass(frozen=True, slots=True)
class KeyValueLimits:
    """How large a key and a value may be."""

    max_key_bytes: int = DEFAULT_MAX_KEY_BYTES
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES

    def __post_init__(self) -> None:
        if self.max_key_bytes <= 0 or self.max_value_bytes <= 0:
            raise ValueError("max_key_bytes and max_value_bytes must be > 0")

    def check_key(self, field: str, key: bytes) -> None:
        """InvalidArgument naming `field` unless `key` is a non-empty key within the limit."""
        if not key:
            raise InvalidArgument(field, "must not be empty")
        if len(key) > self.max_key_bytes:
            raise InvalidArgument(
                field, f"{len(key)} bytes exceeds the limit of {self.max_key_bytes}"
            )

    def check_value(self, field: str, value: bytes) -> None:
        """InvalidArgument naming `field` unless `value` is within the limit."""
        if len(value) > self.max_value_bytes:
            raise InvalidArgument(
                field, f"{len(value)} bytes exceeds the limit of {self.max_value_bytes}"
            )
