"""Every RPC of every service of a real secure cluster, fed random and malformed requests.

As an authorized caller (the admin client for the gateway's KV API, a node
certificate for the internal APIs), one call at a time:

1. a sweep: every method gets a fixed set of broken payloads (empty, random
   bytes, an invalid wire type, a truncated encoding, a field with the wrong
   wire type), so no RPC goes unvisited;
2. hypothesis: requests drawn from each method's descriptor (extremes, empty and
   maximal keys, huge repeated fields, unknown enum values, several oneof
   members), sent faithfully or broken.

Checked: every answer is a proper status (never UNKNOWN, INTERNAL or DATA_LOSS);
no process exits or logs a traceback; nothing partial is written: the KV calls
the fuzzer made are replayed on a model (an acknowledged write applies, a refused
one applies nothing, an uncertain one may or may not), and a scan of the whole
keyspace afterwards must be one the model allows. KV/Stream is modelled request
by request from its tagged answers (an answer's google.rpc.Status must be proper
too; requests of one call run concurrently, so keys they share are uncertain).

Internal calls that could change cluster state legitimately (raft messages,
replica batches, splits, lease and replica changes, txn records) are aimed at a
node or range that does not exist, so what they exercise is decoding and
validation; meta's WriteIntent and Heartbeat get only undecodable payloads.

RANGEKV_FUZZ_EXAMPLES (default 300; e.g. 20000 for a long run) sets the hypothesis examples; the counts are
printed and written to RANGEKV_FUZZ_REPORT (default: the test's tmp folder).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from fuzz_messages import draw_message, draw_payload
from google.protobuf.descriptor import Descriptor, MethodDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from secure_cluster import SecureCluster

from rangekv.common.certs import Role
from rangekv.common.tls import ChannelOpener
from rangekv.v1 import kv_pb2, meta_pb2, raft_pb2, replica_pb2

EXAMPLES = int(os.environ.get("RANGEKV_FUZZ_EXAMPLES", "300"))
IMPROPER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS}
#: Codes after which a write may have been applied.
UNCERTAIN = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    *IMPROPER,
}
CORE_RESET = "Internal error from Core"
NOWHERE = 2**40  # a node id / range id no cluster here has

PINNED = {
    "rangekv.v1.Replica": {
        "Batch",
        "BatchStream",
        "BatchFrames",
        "AdminSplit",
        "TransferLease",
        "ChangeReplicas",
        "PushTxn",
        "QueryTxn",
        "EndTxn",
    },
    "rangekv.v1.RaftTransport": {"RaftStream", "SendSnapshot"},
}
UNDECODABLE_ONLY = {"rangekv.v1.Meta": {"WriteIntent", "Heartbeat"}}
MODEL = {"Put", "Delete", "CompareAndSwap", "Batch", "Stream"}


@dataclass(frozen=True)
class Target:
    where: str  # gateway | node | meta
    method: MethodDescriptor

    @property
    def service(self) -> str:
        return self.method.containing_service.full_name

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.method.name}"

    @property
    def request_type(self) -> Descriptor:
        return self.method.input_type

    @property
    def mode(self) -> str:
        if self.service == "rangekv.v1.KV" and self.method.name in MODEL:
            return "model"
        if self.method.name in PINNED.get(self.service, ()):
            return "pinned"
        if self.method.name in UNDECODABLE_ONLY.get(self.service, ()):
            return "undecodable"
        return "free"

    def __str__(self) -> str:
        return f"{self.where}:{self.path}"


def _methods(file_desc: Any, service: str) -> list[MethodDescriptor]:
    return list(file_desc.services_by_name[service].methods)


TARGETS = [
    *(Target("gateway", m) for m in _methods(kv_pb2.DESCRIPTOR, "KV")),
    *(Target("node", m) for m in _methods(replica_pb2.DESCRIPTOR, "Replica")),
    *(Target("node", m) for m in _methods(raft_pb2.DESCRIPTOR, "RaftTransport")),
    *(Target("meta", m) for m in _methods(meta_pb2.DESCRIPTOR, "Meta")),
    *(Target("meta", m) for m in _methods(raft_pb2.DESCRIPTOR, "RaftTransport")),
    *(
        Target(w, m)
        for w in ("gateway", "node", "meta")
        for m in _methods(health_pb2.DESCRIPTOR, "Health")
    ),
]


KV_WRITES = [t for t in TARGETS if t.mode == "model"]


@dataclass
class Stats:
    calls: int = 0
    messages: int = 0
    rpcs: set[str] = field(default_factory=set)
    codes: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    improper: list[str] = field(default_factory=list)
    uncertain_writes: int = 0
    resets_after_answer: int = 0

    def report(self) -> dict[str, Any]:
        return {
            "rpcs": len(self.rpcs),
            "calls": self.calls,
            "messages_sent": self.messages,
            "improper_statuses": len(self.improper),
            "payload_kinds": dict(self.kinds),
            "status_codes": dict(self.codes),
            "uncertain_writes": self.uncertain_writes,
            "client_stream_resets_after_answer": self.resets_after_answer,
        }


class KeyspaceModel:
    """What the keyspace may hold: per key, the set of values allowed (None: absent)."""

    def __init__(self) -> None:
        self.allowed: dict[bytes, set[bytes | None]] = {}

    def _set(self, key: bytes, value: bytes | None, certain: bool) -> None:
        if certain:
            self.allowed[key] = {value}
        else:
            self.allowed.setdefault(key, {None}).add(value)

    def apply(self, method: str, request: Message, response: Message | None, certain: bool) -> None:
        """``response`` None and ``certain``: refused (nothing applied); None and not
        certain: may have been applied."""
        if response is None and certain:
            return
        if method == "Batch":
            assert isinstance(request, kv_pb2.BatchRequest)
            items = list(request.requests)
            keys = [_item_key(i) for i in items]
            dup = {k for k in keys if k is not None and keys.count(k) > 1}
            results = list(response.responses) if isinstance(response, kv_pb2.BatchResponse) else []
            for n, item in enumerate(items):
                result = results[n] if n < len(results) else None
                key = keys[n]
                if key is not None:
                    self._item(item, result, certain and result is not None and key not in dup)
            return
        self._item(_as_item(method, request), _as_result(method, response), certain)

    def _item(self, item: kv_pb2.BatchRequestItem, result: Any, certain: bool) -> None:
        which = item.WhichOneof("request")
        if which == "put":
            self._set(item.put.key, item.put.value, certain)
        elif which == "delete":
            self._set(item.delete.key, None, certain)
        elif which == "compare_and_swap":
            cas = item.compare_and_swap
            if result is not None and certain:
                if result.compare_and_swap.succeeded:
                    self._set(cas.key, cas.new_value, True)
            else:
                self._set(cas.key, cas.new_value, False)

    def check(self, keyspace: dict[bytes, bytes]) -> list[str]:
        problems = []
        for key, value in keyspace.items():
            if key.startswith(b"\x00rangekv-dev-probe"):
                continue
            allowed = self.allowed.get(key)
            if allowed is None or value not in allowed:
                problems.append(f"{key[:40]!r} holds {value[:40]!r}; allowed {allowed}")
        for key, allowed in self.allowed.items():
            if key not in keyspace and None not in allowed:
                problems.append(f"{key[:40]!r} is missing; allowed {allowed}")
        return problems


def _item_key(item: kv_pb2.BatchRequestItem) -> bytes | None:
    which = item.WhichOneof("request")
    return None if which in (None, "get") else getattr(item, which).key


def _stream_item_keys(item: kv_pb2.StreamRequestItem) -> list[bytes]:
    """The keys a KV/Stream request writes."""
    kind = item.WhichOneof("request")
    if kind == "batch":
        return [k for b in item.batch.requests if (k := _item_key(b)) is not None]
    if kind in (None, "get"):
        return []
    return [getattr(item, kind).key]


def _code(number: int) -> grpc.StatusCode:
    return next((c for c in grpc.StatusCode if c.value[0] == number), grpc.StatusCode.UNKNOWN)


def _as_item(method: str, request: Message) -> kv_pb2.BatchRequestItem:
    item = kv_pb2.BatchRequestItem()
    name = {"Put": "put", "Delete": "delete", "CompareAndSwap": "compare_and_swap"}[method]
    getattr(item, name).CopyFrom(request)
    return item


def _as_result(method: str, response: Message | None) -> Any:
    if response is None:
        return None
    item = kv_pb2.BatchResponseItem()
    name = {"Put": "put", "Delete": "delete", "CompareAndSwap": "compare_and_swap"}[method]
    getattr(item, name).CopyFrom(response)
    return item


def _pin(msg: Message, salt: int) -> None:
    """Aim a decodable internal request at a range / node that does not exist."""
    for f in msg.DESCRIPTOR.fields:
        if f.name in ("range_id", "to_node_id") and not f.is_repeated:
            setattr(msg, f.name, NOWHERE + salt)
        elif f.message_type is not None and not f.is_repeated and msg.HasField(f.name):
            _pin(getattr(msg, f.name), salt)


def _decode(desc: Descriptor, payload: bytes) -> Message | None:
    try:
        return GetMessageClass(desc).FromString(payload)
    except DecodeError:
        return None


def shape(target: Target, kind: str, payload: bytes, salt: int) -> bytes:
    """The payload made safe for the target's mode (see the module docstring)."""
    if target.mode not in ("pinned", "undecodable"):
        return payload
    decoded = _decode(target.request_type, payload)
    if decoded is None:
        return payload
    if target.mode == "undecodable":
        return payload + b"\x0f"  # field 1 with wire type 7: never decodes
    _pin(decoded, salt)
    return decoded.SerializeToString()


class Fuzzer:
    def __init__(self, cluster: SecureCluster) -> None:
        self.cluster = cluster
        self.stats = Stats()
        self.model = KeyspaceModel()
        self.admin: ChannelOpener = cluster.client("fuzzer", Role.ADMIN)
        self.node: ChannelOpener = cluster.node()
        self._channels: dict[tuple[str, str], grpc.aio.Channel] = {}

    def address(self, where: str) -> str:
        lc = self.cluster.lc
        child = {"gateway": lc.gateways[0], "node": lc.nodes[0], "meta": lc.meta[0]}[where]
        return child.address

    def channel(self, target: Target) -> grpc.aio.Channel:
        who = "admin" if target.service == "rangekv.v1.KV" else "node"
        key = (who, target.where)
        ch = self._channels.get(key)
        if ch is None:
            opener = self.admin if who == "admin" else self.node
            ch = self._channels[key] = opener(self.address(target.where))
        return ch

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()

    async def call(self, target: Target, payloads: list[tuple[str, bytes]]) -> None:
        ch = self.channel(target)
        m = target.method
        timeout = 1.0 if m.name == "Watch" else 10.0
        ident = lambda b: b  # noqa: E731 -- bytes in, bytes out
        self.stats.calls += 1
        self.stats.messages += len(payloads)
        self.stats.rpcs.add(str(target))
        for kind, _ in payloads:
            self.stats.kinds[kind] += 1
        response: bytes | None = None
        answers: list[bytes] = []
        code = grpc.StatusCode.OK
        details = ""
        try:
            if m.client_streaming:
                stream_call: Any = (
                    ch.stream_stream(
                        target.path, request_serializer=ident, response_deserializer=ident
                    )
                    if m.server_streaming
                    else ch.stream_unary(
                        target.path, request_serializer=ident, response_deserializer=ident
                    )
                )
                # Written one by one, stopping once the server has answered: a server
                # may end the call at a bad message while the client still writes.
                call = stream_call(timeout=timeout)
                for _kind, p in payloads:
                    if call.done():
                        break
                    try:
                        await call.write(p)
                    except grpc.aio.UsageError:
                        break
                if not call.done():
                    with contextlib.suppress(grpc.aio.UsageError):
                        await call.done_writing()
                if m.server_streaming:
                    async for answer in call:
                        answers.append(answer)
                else:
                    response = await call
            elif m.server_streaming:
                call = ch.unary_stream(
                    target.path, request_serializer=ident, response_deserializer=ident
                )(payloads[0][1], timeout=timeout)
                n = 0
                async for _ in call:
                    n += 1
                    if n > 1000:
                        call.cancel()
                        break
            else:
                response = await ch.unary_unary(
                    target.path, request_serializer=ident, response_deserializer=ident
                )(payloads[0][1], timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
        if (
            m.client_streaming
            and code is grpc.StatusCode.INTERNAL
            and details == CORE_RESET
            and len(payloads) > 1
        ):
            # gRPC's client core reports this when the server ended the call (with a
            # proper status) while this client still had messages in flight; seen with
            # plaintext too, and never with a single message. Counted apart.
            self.stats.resets_after_answer += 1
            return
        self.stats.codes[code.name] += 1
        if code in IMPROPER:
            self.stats.improper.append(f"{target} {payloads[0][0]}: {code.name} {details[:200]}")
        if target.mode == "model" and target.method.name == "Stream":
            self._record_stream(target, [p for _k, p in payloads], answers)
        elif target.mode == "model":
            self._record(target, payloads[0][1], response, code)

    def _record(
        self, target: Target, payload: bytes, response: bytes | None, code: grpc.StatusCode
    ) -> None:
        request = _decode(target.request_type, payload)
        if request is None:
            return  # refused before anything could be applied
        out = _decode(target.method.output_type, response) if response is not None else None
        certain = code not in UNCERTAIN
        if not certain:
            self.stats.uncertain_writes += 1
        self.model.apply(target.method.name, request, out, certain)

    def _record_stream(self, target: Target, payloads: list[bytes], answers: list[bytes]) -> None:
        """Replay a KV/Stream call on the model, request by request (module docstring)."""
        items: list[kv_pb2.StreamRequestItem] = []
        for payload in payloads:
            decoded = _decode(target.request_type, payload)
            if decoded is None:
                break  # the gateway read nothing after an undecodable message
            assert isinstance(decoded, kv_pb2.StreamRequest)
            items.extend(decoded.requests)
        by_id: dict[int, kv_pb2.StreamResponseItem] = {}
        for raw in answers:
            for answer in kv_pb2.StreamResponse.FromString(raw).responses:
                by_id[answer.request_id] = answer
                if answer.HasField("error"):
                    code = _code(answer.error.code)
                    self.stats.codes[f"stream:{code.name}"] += 1
                    if code in IMPROPER:
                        self.stats.improper.append(
                            f"{target} request {answer.request_id}: {code.name} "
                            f"{answer.error.message[:200]}"
                        )
        ids = [i.request_id for i in items]
        keys = [k for i in items for k in _stream_item_keys(i)]
        shared = {k for k in keys if keys.count(k) > 1}
        for item in items:
            kind = item.WhichOneof("request")
            if kind in (None, "get"):
                continue
            answer = by_id.get(item.request_id) if ids.count(item.request_id) == 1 else None
            result = answer.WhichOneof("response") if answer is not None else None
            refused = (
                answer is not None
                and result == "error"
                and _code(answer.error.code) not in UNCERTAIN
            )
            certain = refused or (
                result not in (None, "error") and not shared & set(_stream_item_keys(item))
            )
            if not certain:
                self.stats.uncertain_writes += 1
            response = getattr(answer, kind) if result == kind and answer is not None else None
            if kind == "batch":
                self.model.apply("Batch", item.batch, response, certain)
            else:
                method = {"put": "Put", "delete": "Delete", "compare_and_swap": "CompareAndSwap"}
                self.model.apply(method[kind], getattr(item, kind), response, certain)

    async def keyspace(self) -> dict[bytes, bytes]:
        async with self.admin(self.address("gateway")) as ch:
            call = ch.unary_stream(
                "/rangekv.v1.KV/Scan",
                request_serializer=kv_pb2.ScanRequest.SerializeToString,
                response_deserializer=kv_pb2.ScanResponse.FromString,
            )(kv_pb2.ScanRequest(), timeout=60)
            out: dict[bytes, bytes] = {}
            async for resp in call:
                for kv in resp.kvs:
                    out[kv.key] = kv.value
            return out


@pytest.fixture(scope="module")
def fuzzer(secure_cluster: SecureCluster) -> Fuzzer:
    return Fuzzer(secure_cluster)


BROKEN = [
    ("empty", b""),
    ("random", bytes(range(256))[::7] * 3),
    ("bad-wire-type", b"\x0f\x01"),
    ("truncated", b"\x0a\x40abc"),
    ("wrong-type", b"\x0a\x05hello\x0a\x85\x80\x80\x80\x01"),
]


def test_every_rpc_refuses_broken_payloads(fuzzer: Fuzzer) -> None:
    async def sweep() -> None:
        for n, target in enumerate(TARGETS):
            for kind, raw in BROKEN:
                payload = shape(target, kind, raw, n)
                count = 2 if target.method.client_streaming else 1
                await fuzzer.call(target, [(kind, payload)] * count)

    fuzzer.cluster.run(sweep(), timeout=600)
    assert fuzzer.stats.rpcs == {str(t) for t in TARGETS}
    assert not fuzzer.stats.improper, "\n".join(fuzzer.stats.improper[:20])


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_random_requests_get_proper_statuses(fuzzer: Fuzzer, data: st.DataObject) -> None:
    # Half the calls write through the gateway, so the keyspace check has substance.
    target = data.draw(st.one_of(st.sampled_from(KV_WRITES), st.sampled_from(TARGETS)))
    count = data.draw(st.integers(1, 3)) if target.method.client_streaming else 1
    payloads = []
    for i in range(count):
        msg = draw_message(data, target.request_type)
        kind, raw = draw_payload(data, msg)
        payloads.append((kind, shape(target, kind, raw, fuzzer.stats.calls * 4 + i)))
    before = len(fuzzer.stats.improper)
    fuzzer.cluster.run(fuzzer.call(target, payloads), timeout=120)
    assert len(fuzzer.stats.improper) == before, fuzzer.stats.improper[-1]


def test_no_crash_no_traceback_nothing_partial(
    fuzzer: Fuzzer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cluster = fuzzer.cluster
    keyspace = cluster.run(fuzzer.keyspace())
    cluster.run(fuzzer.close())
    problems = fuzzer.model.check(keyspace)
    exited = [
        c.name for c in cluster.lc.children if c.proc is None or c.proc.returncode is not None
    ]
    tracebacks = []
    for log in sorted((cluster.lc.data / "logs").glob("*.log")):
        text = log.read_text(errors="replace")
        tracebacks += [
            f"{log.name}: ...{text[max(0, i - 300) : i + 600]}" for i in _find(text, "Traceback")
        ]
    report = {
        **fuzzer.stats.report(),
        "crashes": len(exited),
        "tracebacks": len(tracebacks),
        "partial_writes": len(problems),
        "keys_written": len(fuzzer.model.allowed),
        "keys_in_keyspace": len(keyspace),
    }
    out = Path(
        os.environ.get("RANGEKV_FUZZ_REPORT") or tmp_path_factory.mktemp("fuzz") / "fuzz.json"
    )
    out.write_text(json.dumps(report, indent=2))
    print("\nfuzz report:", json.dumps(report, indent=2))
    assert not exited, exited
    assert not tracebacks, "\n\n".join(tracebacks[:3])
    assert not problems, "\n".join(problems[:20])
    assert not fuzzer.stats.improper, "\n".join(fuzzer.stats.improper[:20])


def _find(text: str, needle: str) -> list[int]:
    out, i = [], text.find(needle)
    while i >= 0 and len(out) < 20:
        out.append(i)
        i = text.find(needle, i + 1)
    return out
