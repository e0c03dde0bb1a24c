"""Transactions over descriptors: their ids, their status, and the intents they write.

A descriptor transaction (a split or a replica change) keeps its record on the
range holding ``TxnMeta.record_key`` and writes intents into the meta range;
every intent names its transaction so that a reader can push it. These values
travel on the wire (``rangekv.v1.TxnMeta``, ``DescriptorIntent``), are stored by
the meta range and by the storage nodes, and are judged by the gateway: they are
declared here once, with their one wire conversion.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from rangekv.common.descriptors import RangeDescriptor
from rangekv.common.errors import InvalidArgument
from rangekv.v1 import meta_pb2, types_pb2

__all__ = ["TXN_ID_LEN", "Intent", "TxnMeta", "TxnStatus", "check_txn_id"]

#: Bytes of a transaction id.
TXN_ID_LEN: Final = 16


class TxnStatus(enum.IntEnum):
    """A transaction's state; values are the wire enum's numbers (``TxnRecord.status``)."""

    PENDING = types_pb2.TXN_STATUS_PENDING
    COMMITTED = types_pb2.TXN_STATUS_COMMITTED
    ABORTED = types_pb2.TXN_STATUS_ABORTED

    @property
    def final(self) -> bool:
        return self is not TxnStatus.PENDING


def check_txn_id(field: str, txn_id: bytes) -> None:
    """InvalidArgument unless `txn_id` is a transaction id (the one message for it)."""
    if len(txn_id) != TXN_ID_LEN:
        raise InvalidArgument(field, f"must be {TXN_ID_LEN} bytes, got {len(txn_id)}")


@dataclass(frozen=True, slots=True)
class TxnMeta:
    """Who wrote an intent and where its record lives (``record_key``'s range)."""

    id: bytes
    record_key: bytes
    kind: str = ""

    def __post_init__(self) -> None:
        check_txn_id("txn.id", self.id)

    def to_proto(self) -> types_pb2.TxnMeta:
        return types_pb2.TxnMeta(id=self.id, record_key=self.record_key, kind=self.kind)

    @staticmethod
    def from_proto(pb: types_pb2.TxnMeta) -> TxnMeta:
        return TxnMeta(id=pb.id, record_key=pb.record_key, kind=pb.kind)


@dataclass(frozen=True, slots=True)
class Intent:
    """An uncommitted descriptor at ``meta_key`` (= meta(descriptor.end_key))."""

    meta_key: bytes
    descriptor: RangeDescriptor
    txn: TxnMeta

    def to_proto(self) -> meta_pb2.DescriptorIntent:
        return meta_pb2.DescriptorIntent(
            meta_key=self.meta_key, descriptor=self.descriptor.to_proto(), txn=self.txn.to_proto()
        )

    @staticmethod
    def from_proto(pb: meta_pb2.DescriptorIntent) -> Intent:
        return Intent(
            meta_key=pb.meta_key,
            descriptor=RangeDescriptor.from_proto(pb.descriptor),
            txn=TxnMeta.from_proto(pb.txn),
        )
