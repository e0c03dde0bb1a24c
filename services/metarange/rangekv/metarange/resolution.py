"""Reader-side resolution: which descriptor is the truth for a key.

A lookup (INCONSISTENT mode) hands back committed descriptors and intents; on
their own neither is coherent (OVERVIEW.md says why). This module turns them into
THE descriptor covering a key, given a way to learn a transaction's status
(`push`: ask the transaction record, aborting it if it is expired and still
pending). It is pure, so the gateway's range cache, the raftnode split
coordinator and the tests share one implementation.

The rule (OVERVIEW.md, "Readers find the truth"): walk the meta keys in scan order, each
key's intent before its committed value. For an intent covering the key, push
its transaction:

* COMMITTED - the intent is the truth (its committed value is stale);
* ABORTED   - discard it and keep walking;
* PENDING   - the change has not happened yet: keep walking, the committed
  value is the truth for now.

The first committed descriptor covering the key that was not superseded by a
committed intent is the truth. Every COMMITTED/ABORTED intent met is reported
in `to_resolve`, so the caller can clean up what it learned (resolve is
idempotent, so racing resolvers are harmless).

Why this is right rests on the lock-first protocol (`rangekv.domain.descriptor_txn`): intents of
different unresolved transactions never overlap, and a committed value at a
key with no live intent is current. OVERVIEW.md spells out the argument; the
property tests check it against a model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from rangekv.common.descriptors import RangeDescriptor
from rangekv.domain.descriptor_txn import (
    ResolveIntent,
)
from rangekv.domain.keys import meta_key
from rangekv.domain.txn import Intent, TxnMeta, TxnStatus

__all__ = [
    "PushFn",
    "Resolution",
    "Resolved",
    "resolve_descriptor",
    "scan_groups",
]

#: Learn a transaction's status; aborts it when expired and still pending.
PushFn = Callable[[TxnMeta], TxnStatus]


@dataclass(frozen=True, slots=True)
class Resolution:
    """An intent whose transaction is known to be final: resolve it."""

    meta_key: bytes
    txn_id: bytes
    status: TxnStatus

    def command(self) -> ResolveIntent:
        return ResolveIntent(self.meta_key, self.txn_id, self.status)


class Resolved(NamedTuple):
    """The truth for a key (None: the records given do not reach it) and the
    intents the walk learned to be final."""

    descriptor: RangeDescriptor | None
    to_resolve: list[Resolution]


def scan_groups(
    committed: Iterable[RangeDescriptor], intents: Iterable[Intent]
) -> list[tuple[bytes, Intent | None, RangeDescriptor | None]]:
    """(meta key, intent, committed) per meta key, in scan order.

    A lookup returns the two kinds separately; the walk needs them merged
    back, and a committed descriptor's meta key is meta(its end key).
    """
    by_key: dict[bytes, tuple[Intent | None, RangeDescriptor | None]] = {}
    for d in committed:
        mk = meta_key(d.end_key)
        by_key[mk] = (by_key.get(mk, (None, None))[0], d)
    for i in intents:
        by_key[i.meta_key] = (i, by_key.get(i.meta_key, (None, None))[1])
    return [(mk, *by_key[mk]) for mk in sorted(by_key)]


def resolve_descriptor(
    key: bytes,
    committed: Sequence[RangeDescriptor],
    intents: Sequence[Intent],
    push: PushFn,
) -> Resolved:
    """The descriptor covering `key` according to the rule in the module doc.

    `push` is called at most once per transaction. Records that do not cover
    `key` are passed over (a consistent-mode caller may hand in records from a
    wider scan).
    """
    statuses: dict[bytes, TxnStatus] = {}
    to_resolve: list[Resolution] = []
    for mk, intent, desc in scan_groups(committed, intents):
        if intent is not None and intent.descriptor.contains_key(key):
            status = statuses.get(intent.txn.id)
            if status is None:
                status = statuses[intent.txn.id] = push(intent.txn)
            if status is TxnStatus.COMMITTED:
                to_resolve.append(Resolution(mk, intent.txn.id, status))
                return Resolved(intent.descriptor, to_resolve)
            if status is TxnStatus.ABORTED:
                to_resolve.append(Resolution(mk, intent.txn.id, status))
        if desc is not None and desc.contains_key(key):
            return Resolved(desc, to_resolve)
    return Resolved(None, to_resolve)
