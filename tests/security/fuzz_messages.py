"""Hypothesis strategies for protobuf requests: well-formed, odd and malformed.

`draw_message` fills any message type from its descriptor: each field set or not,
extremes for numbers, empty and maximal keys for bytes, unknown enum values,
several members of one oneof (the last wins), nested messages to a bounded depth
and, now and then, a huge repeated field (at most one per drawn request, so a
huge field never holds huge fields: 2,000 x 2,000 nested elements of kilobytes
each took a fuzz run past 20 GB). `draw_payload` turns one into wire
bytes, either faithfully or broken on purpose: random bytes, a truncated
encoding, a tag with an invalid wire type, or a known field number sent with the
wrong wire type (a oneof's message member as a varint, say).
"""

from __future__ import annotations

import contextlib
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

MAX_KEY = 4096
HUGE_REPEATED = 2000

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}

BYTES = st.one_of(
    st.binary(max_size=12),
    st.sampled_from(
        [b"", b"\x00", b"\xff" * 8, b"k" * MAX_KEY, b"k" * (MAX_KEY + 1), b"\x00rangekv"]
    ),
    st.binary(min_size=100, max_size=5000),
)


def _int(lo: int, hi: int) -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(0, 10).filter(lambda v: lo <= v <= hi),
        st.sampled_from([lo, hi, 1, 2**31 - 1 if hi >= 2**31 - 1 else hi]),
        st.integers(lo, hi),
    )


def _scalar(data: st.DataObject, field: FieldDescriptor) -> Any:
    t = field.type
    if t in _INT_RANGES:
        return data.draw(_int(*_INT_RANGES[t]))
    if t == FieldDescriptor.TYPE_BOOL:
        return data.draw(st.booleans())
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return data.draw(st.floats(allow_nan=True, width=32))
    if t == FieldDescriptor.TYPE_STRING:
        return data.draw(st.text(max_size=20))
    if t == FieldDescriptor.TYPE_BYTES:
        return data.draw(BYTES)
    if t == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return data.draw(st.one_of(st.sampled_from(known), st.integers(-5, 1000)))
    raise TypeError(f"unhandled field type {t}")


def draw_message(
    data: st.DataObject, desc: Descriptor, depth: int = 0, huge_left: list[int] | None = None
) -> Message:
    """One message of type `desc`; `huge_left` is the request's budget of huge
    repeated fields (one), shared by every nested message drawn for it."""
    huge_left = [1] if huge_left is None else huge_left
    msg = GetMessageClass(desc)()
    for field in desc.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            continue
        if not data.draw(st.booleans(), label=f"set {field.name}"):
            continue
        if field.is_repeated:
            huge = depth < 2 and huge_left[0] > 0 and data.draw(st.integers(0, 40)) == 0
            if huge:
                huge_left[0] -= 1
            n = HUGE_REPEATED if huge else data.draw(st.integers(0, 3))
            target = getattr(msg, field.name)
            if field.message_type is not None:
                if depth >= 3:
                    continue
                if huge:  # one drawn element, many times: big without costing the draw
                    item = draw_message(data, field.message_type, depth + 1, huge_left)
                    for _ in range(n):
                        target.add().CopyFrom(item)
                else:
                    for _ in range(n):
                        target.add().CopyFrom(
                            draw_message(data, field.message_type, depth + 1, huge_left)
                        )
            else:
                item = _scalar(data, field)
                values = [item] * n if huge else [_scalar(data, field) for _ in range(n)]
                target.extend(values)
        elif field.message_type is not None:
            if depth < 3:
                getattr(msg, field.name).CopyFrom(
                    draw_message(data, field.message_type, depth + 1, huge_left)
                )
        else:
            with contextlib.suppress(ValueError, TypeError):  # e.g. out of float32's range
                setattr(msg, field.name, _scalar(data, field))
    return msg


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def draw_payload(data: st.DataObject, msg: Message) -> tuple[str, bytes]:
    """(kind, wire bytes): ``valid``, ``random``, ``truncated``, ``bad-wire-type`` or
    ``wrong-type`` (a known field number with the wrong wire type)."""
    raw = msg.SerializeToString()
    kind = data.draw(
        st.sampled_from(
            ["valid", "valid", "valid", "random", "truncated", "bad-wire-type", "wrong-type"]
        )
    )
    if kind == "random":
        return kind, data.draw(st.binary(max_size=256))
    if kind == "truncated" and len(raw) > 1:
        return kind, raw[: data.draw(st.integers(1, len(raw) - 1))]
    if kind == "bad-wire-type":
        number = data.draw(st.integers(1, 40))
        return kind, raw + _varint(number << 3 | data.draw(st.sampled_from([6, 7])))
    if kind == "wrong-type" and msg.DESCRIPTOR.fields:
        field = data.draw(st.sampled_from(list(msg.DESCRIPTOR.fields)))
        if field.type in (
            FieldDescriptor.TYPE_MESSAGE,
            FieldDescriptor.TYPE_BYTES,
            FieldDescriptor.TYPE_STRING,
        ):
            return kind, raw + _varint(field.number << 3 | 0) + _varint(
                data.draw(st.integers(0, 2**40))
            )
        return kind, raw + _varint(field.number << 3 | 2) + _varint(3) + b"\xff\x00\x01"
    return "valid", raw


__all__ = ["BYTES", "MAX_KEY", "draw_message", "draw_payload"]
