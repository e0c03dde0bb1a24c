"""Reading the meta state: records, range lookups, range listings, the registry.

Every function takes a `Reader` (the live engine, a batch view or a snapshot),
so the same code serves a leaseholder's consistent read, a follower's
inconsistent read, and the apply path (which reads through its batch).

Lookup ("scan forward from meta(k)"): the range covering `k` is stored at the
smallest meta key above `k`, so the scan starts at `lookup_start(k)` and walks
meta keys in order, each meta key being a *group* (its intent, then its
committed value). The scan has two phases:

* covering phase: groups are returned until one holds a committed descriptor,
  or one holds an intent that starts after `k`. Every record met has an end
  key above `k`, so a record either covers `k` or lies wholly after it; with
  splits and replica changes only (no merges), nothing after the first
  committed record can be truer for `k` than what the phase already returned
  (OVERVIEW.md, "why the scan may stop"). A defensive cap bounds the phase.
* prefetch phase: up to `prefetch` further groups, for the caller's cache.

CONSISTENT mode sees committed records only (intent-only groups do not
exist for it) unless the caller asks for intents too; INCONSISTENT mode
returns intents as well, separately, each with its transaction, so the caller
can push them (`resolution`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from rangekv.common.descriptors import RangeDescriptor
from rangekv.domain.keys import lookup_start
from rangekv.domain.txn import Intent
from rangekv.metarange.keys import (
    BOOTSTRAP_KEY,
    RecordKind,
    counter_key,
    decode_record_key,
    node_key,
    node_span,
    record_key,
    records_span,
)
from rangekv.metarange.records import (
    CorruptRecordError,
    IdKind,
    NodeRecord,
    NodeStatus,
    decode_value,
    descriptor_from_json,
    intent_from_json,
    node_from_json,
)
from rangekv.replication.state_engine import Reader
from rangekv.v1 import meta_pb2

__all__ = [
    "MAX_COVERING_SCAN",
    "LookupMode",
    "LookupResult",
    "MetaGroup",
    "first_range",
    "get_committed",
    "get_intent",
    "get_node",
    "is_bootstrapped",
    "iter_groups",
    "list_nodes",
    "list_ranges",
    "lookup",
    "next_id",
    "ranges_on_node",
]

#: Most groups the covering phase reads before giving up (a corrupt layout).
MAX_COVERING_SCAN: Final = 10_000


class LookupMode(enum.IntEnum):
    """Values are the wire enum's; UNSPECIFIED on the wire means CONSISTENT."""

    CONSISTENT = meta_pb2.LOOKUP_MODE_CONSISTENT
    INCONSISTENT = meta_pb2.LOOKUP_MODE_INCONSISTENT

    @staticmethod
    def from_wire(value: int) -> LookupMode:
        return (
            LookupMode.INCONSISTENT if value == LookupMode.INCONSISTENT else LookupMode.CONSISTENT
        )


@dataclass(frozen=True, slots=True)
class MetaGroup:
    """Everything stored at one meta key."""

    meta_key: bytes
    committed: RangeDescriptor | None
    intent: Intent | None


@dataclass(frozen=True, slots=True)
class LookupResult:
    """Committed descriptors and intents, each in scan order, kept apart."""

    descriptors: tuple[RangeDescriptor, ...]
    intents: tuple[Intent, ...]

    def to_lookup_proto(self) -> meta_pb2.LookupRangeResponse:
        return meta_pb2.LookupRangeResponse(
            descriptors=[d.to_proto() for d in self.descriptors],
            intents=[i.to_proto() for i in self.intents],
        )

    def to_list_proto(self) -> meta_pb2.ListRangesResponse:
        return meta_pb2.ListRangesResponse(
            descriptors=[d.to_proto() for d in self.descriptors],
            intents=[i.to_proto() for i in self.intents],
        )


# --- records ----------------------------------------------------------------------------


def _decode_committed(stored: bytes, raw: bytes) -> RangeDescriptor:
    try:
        return descriptor_from_json(decode_value(raw))
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptRecordError(f"committed record {stored!r}: {exc}") from None


def _decode_intent(mk: bytes, stored: bytes, raw: bytes) -> Intent:
    try:
        return intent_from_json(mk, decode_value(raw))
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptRecordError(f"intent record {stored!r}: {exc}") from None


def get_committed(reader: Reader, mk: bytes) -> RangeDescriptor | None:
    stored = record_key(mk, RecordKind.COMMITTED)
    raw = reader.get(stored)
    return None if raw is None else _decode_committed(stored, raw)


def get_intent(reader: Reader, mk: bytes) -> Intent | None:
    stored = record_key(mk, RecordKind.INTENT)
    raw = reader.get(stored)
    return None if raw is None else _decode_intent(mk, stored, raw)


def iter_groups(
    reader: Reader, start_mk: bytes = b"", end_mk: bytes | None = None
) -> Iterator[MetaGroup]:
    """The groups at logical meta keys in [start_mk, end_mk), in key order."""
    current: bytes | None = None
    committed: RangeDescriptor | None = None
    intent: Intent | None = None
    for stored, raw in reader.iterate(*records_span(start_mk, end_mk)):
        mk, kind = decode_record_key(stored)
        if mk != current:
            if current is not None:
                yield MetaGroup(current, committed, intent)
            current, committed, intent = mk, None, None
        if kind is RecordKind.COMMITTED:
            committed = _decode_committed(stored, raw)
        else:
            intent = _decode_intent(mk, stored, raw)
    if current is not None:
        yield MetaGroup(current, committed, intent)


def is_bootstrapped(reader: Reader) -> bool:
    return reader.get(BOOTSTRAP_KEY) is not None


def first_range(reader: Reader) -> RangeDescriptor | None:
    """The range the cluster was bootstrapped with (None before bootstrap)."""
    raw = reader.get(BOOTSTRAP_KEY)
    return None if raw is None else _decode_committed(BOOTSTRAP_KEY, raw)


def next_id(reader: Reader, kind: IdKind) -> int:
    """The next id `AllocateIds` would hand out for `kind` (ids start at 1)."""
    raw = reader.get(counter_key(kind))
    return 1 if raw is None else int.from_bytes(raw, "big")


# --- lookups ----------------------------------------------------------------------------


def lookup(
    reader: Reader, key: bytes, prefetch: int, mode: LookupMode, include_intents: bool = False
) -> LookupResult:
    """The records covering `key`, then up to `prefetch` following groups (module doc).

    `include_intents` makes a CONSISTENT lookup see intents as an INCONSISTENT one does.
    """
    with_intents = mode is LookupMode.INCONSISTENT or include_intents
    descriptors: list[RangeDescriptor] = []
    intents: list[Intent] = []
    covering = True
    remaining = max(prefetch, 0)
    scanned = 0
    for group in iter_groups(reader, lookup_start(key)):
        intent = group.intent if with_intents else None
        if group.committed is None and intent is None:
            continue
        if not covering:
            if remaining == 0:
                break
            remaining -= 1
        if intent is not None:
            intents.append(intent)
        if group.committed is not None:
            descriptors.append(group.committed)
        if covering:
            scanned += 1
            after_key = intent is not None and intent.descriptor.start_key > key
            if group.committed is not None or after_key or scanned >= MAX_COVERING_SCAN:
                covering = False
    return LookupResult(tuple(descriptors), tuple(intents))


def list_ranges(
    reader: Reader, start_key: bytes, limit: int, include_intents: bool
) -> LookupResult:
    """Committed descriptors (and optionally intents) of ranges ending after
    `start_key`, in key order; `limit` counts meta keys returned (<= 0: all)."""
    descriptors: list[RangeDescriptor] = []
    intents: list[Intent] = []
    returned = 0
    for group in iter_groups(reader, lookup_start(start_key)):
        intent = group.intent if include_intents else None
        if group.committed is None and intent is None:
            continue
        if 0 < limit <= returned:
            break
        returned += 1
        if intent is not None:
            intents.append(intent)
        if group.committed is not None:
            descriptors.append(group.committed)
    return LookupResult(tuple(descriptors), tuple(intents))


# --- registry ---------------------------------------------------------------------------


def _decode_node(stored: bytes, raw: bytes) -> NodeRecord:
    try:
        return node_from_json(decode_value(raw))
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptRecordError(f"node record {stored!r}: {exc}") from None


def get_node(reader: Reader, node_id: int) -> NodeRecord | None:
    stored = node_key(node_id)
    raw = reader.get(stored)
    return None if raw is None else _decode_node(stored, raw)


def list_nodes(reader: Reader, now: int, ttl: int) -> list[NodeStatus]:
    """Every registered node, by id; live iff its last heartbeat is within `ttl`
    nanoseconds of `now` (the reader's clock: liveness is never stored)."""
    return [_decode_node(k, v).status(now, ttl) for k, v in reader.iterate(*node_span())]


def ranges_on_node(reader: Reader, node_id: int) -> list[int]:
    """Ids of the ranges whose committed descriptor or intent names `node_id`.

    What a decommission waits for: a node is empty once no record, settled or
    in flight, gives it a replica. One pass over the meta records (one per range).
    """
    found: list[int] = []
    for group in iter_groups(reader):
        for desc in (group.committed, group.intent.descriptor if group.intent else None):
            if desc is not None and desc.replica_on(node_id) is not None:
                found.append(desc.range_id)
                break
    return found
