"""DistSender and KV-service behaviours found by the real-process gateway test, in miniature.

Each test pins one finding of tests/integration/test_gateway.py (and the
benchmark) with in-process fakes, so it runs in milliseconds and says exactly
what is wrong. Tests marked xfail(strict=True) are open bugs: they start
passing (and so failing the suite) the day the bug is fixed, which is the
signal to drop the marker.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import pytest

from rangekv.common import errors as E
from rangekv.common.descriptors import RangeDescriptor, ReplicaDescriptor
from rangekv.domain.txn import TxnStatus
from rangekv.gateway.cache_types import LookupResult
from rangekv.gateway.dist_sender import DistSender, NodeDirectory
from rangekv.gateway.kv_service import KVService
from rangekv.gateway.node_client import BatchReply, NodeClients
from rangekv.gateway.range_cache import RangeCache
from rangekv.v1 import kv_pb2, replica_pb2, types_pb2

N1, N2, N3 = (ReplicaDescriptor(n, n) for n in (1, 2, 3))
WHOLE = RangeDescriptor(1, b"", b"", (N1, N2, N3), generation=1)
GET = replica_pb2.ReplicaOp(get=replica_pb2.GetOp(key=b"k"))

Answer = Callable[[str], BatchReply | E.RangeKVError]


class FakeNodes:
    """NodeClients' `submit`, answered by `answer(address)`; counts the calls."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.calls: list[str] = []

    def submit(self, address: str, range_id: int, ops: list[Any], **_: Any) -> asyncio.Future[Any]:
        self.calls.append(address)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        result = self.answer(address)
        if isinstance(result, E.RangeKVError):
            fut.set_exception(result)
        else:
            fut.set_result(result)
        return fut


def reply() -> BatchReply:
    result = replica_pb2.ReplicaOpResult(get=replica_pb2.GetResult(found=False))
    return BatchReply([result], WHOLE.to_proto(), types_pb2.Timestamp(wall_time=1), 1)


def make_sender(
    nodes: FakeNodes,
    lookup: Callable[[bytes, int], Any] | None = None,
    timeout: float = 0.5,
    read_attempt_timeout: float = 1.5,
) -> DistSender:
    async def meta_lookup(key: bytes, prefetch: int) -> LookupResult:
        if lookup is not None:
            return await lookup(key, prefetch)
        return LookupResult(descriptors=(WHOLE,))

    async def push(*_: Any) -> TxnStatus:
        return TxnStatus.PENDING

    cache = RangeCache(meta_lookup, push, lambda *_: None, prefetch=0)

    async def no_registry() -> Any:
        raise E.Unavailable("no registry in this test")

    directory = NodeDirectory(no_registry)
    for n in (1, 2, 3):
        directory.set(n, f"n{n}")
    return DistSender(
        cache,
        nodes,  # type: ignore[arg-type]
        directory,
        timeout=timeout,
        read_attempt_timeout=read_attempt_timeout,
    )


async def test_a_meta_lookup_without_answer_is_retried_until_the_deadline() -> None:
    """Right after start the meta range may not be bootstrapped (or a lagging replica
    answers an inconsistent lookup with nothing): the call must wait for it within its
    deadline, not fail at once. (Fixed in DistSender.send; found by the benchmark,
    whose first Batch failed with "meta lookup found no descriptor".)"""
    answers = [LookupResult(), LookupResult(), LookupResult(descriptors=(WHOLE,))]

    async def lookup(key: bytes, prefetch: int) -> LookupResult:
        return answers.pop(0)

    sender = make_sender(FakeNodes(lambda _addr: reply()), lookup, timeout=5.0)
    got = await sender.send(b"k", GET, is_write=False)
    assert not got.results[0].get.found
    assert not answers


def leaderless(address: str) -> E.RangeKVError:
    """Every replica is a follower that knows no leader (an election is under way)."""
    return E.NotLeaseHolder(1, None, "", 7, WHOLE)


def hint_to_dead_node(address: str) -> E.RangeKVError:
    """Node 1 is down (its channel refuses); the others name it as the leaseholder,
    which is what the gateway sees right after a lease moved to a restarted node."""
    if address == "n1":
        return E.Unavailable("failed to connect: connection refused")
    return E.NotLeaseHolder(1, N1, "n1", 7, WHOLE)


@pytest.mark.parametrize("answer", [leaderless, hint_to_dead_node], ids=["no-hint", "dead-hint"])
async def test_not_lease_holder_without_a_usable_hint_backs_off(answer: Answer) -> None:
    nodes = FakeNodes(answer)
    sender = make_sender(nodes, timeout=0.5)
    with pytest.raises(E.Unavailable):
        await sender.send(b"k", GET, is_write=False)
    # Capped exponential backoff from 20 ms over 0.5 s is a handful of rounds of
    # three replicas; a hot loop makes thousands of calls.
    assert len(nodes.calls) < 100, f"{len(nodes.calls)} RPCs in 0.5 s"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_write_to_a_node_that_refuses_the_connection_was_not_applied() -> None:
    nodes = NodeClients()
    put = replica_pb2.ReplicaOp(put=replica_pb2.PutOp(key=b"k", value=b"v"))
    try:
        with pytest.raises(E.Unavailable) as info:
            await asyncio.wait_for(
                nodes.submit(f"127.0.0.1:{closed_port()}", 1, [put], has_writes=True), 10
            )
    finally:
        await nodes.close()
    assert info.value.outcome == E.WriteOutcome.NOT_APPLIED, info.value.message


class PartlyFailingSender:
    """`send` succeeds for key b"ok" and fails cleanly (NOT_APPLIED) for any other key."""

    async def send(self, key: bytes, op: Any, **_: Any) -> BatchReply:
        if key != b"ok":
            raise E.Unavailable("no leaseholder", outcome=E.WriteOutcome.NOT_APPLIED)
        result = replica_pb2.ReplicaOpResult(
            put=replica_pb2.PutResult(version=types_pb2.Timestamp(wall_time=1))
        )
        return BatchReply([result], WHOLE.to_proto(), types_pb2.Timestamp(wall_time=1), 1)


async def test_a_batch_with_one_applied_write_is_not_reported_as_not_applied() -> None:
    service = KVService(PartlyFailingSender())  # type: ignore[arg-type]
    item = kv_pb2.BatchRequestItem
    request = kv_pb2.BatchRequest(
        requests=[
            item(put=kv_pb2.PutRequest(key=b"ok", value=b"v")),
            item(put=kv_pb2.PutRequest(key=b"other", value=b"v")),
        ]
    )
    with pytest.raises(E.Unavailable) as info:
        await service.Batch(request, None)  # type: ignore[arg-type]
    assert info.value.outcome == E.WriteOutcome.UNKNOWN


class SilentFirstNode(FakeNodes):
    """Node 1 (the cached leaseholder) never answers: its process is paused, or a cut
    link holds the request. Nodes 2 and 3 answer with `then(address)`."""

    def __init__(self, then: Answer) -> None:
        super().__init__(then)
        self.held: list[asyncio.Future[Any]] = []

    def submit(self, address: str, range_id: int, ops: list[Any], **_: Any) -> asyncio.Future[Any]:
        if address != "n1":
            return super().submit(address, range_id, ops)
        self.calls.append(address)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.held.append(fut)
        return fut


PUT = replica_pb2.ReplicaOp(put=replica_pb2.PutOp(key=b"k", value=b"v"))


async def test_a_read_moves_on_from_a_replica_that_does_not_answer() -> None:
    """The chaos suite saw reads wait their whole deadline on a paused leaseholder
    while another replica had long taken the lease."""
    nodes = SilentFirstNode(lambda _addr: reply())
    sender = make_sender(nodes, timeout=5.0, read_attempt_timeout=0.1)
    await sender.cache.lookup(b"k")
    loop = asyncio.get_running_loop()
    start = loop.time()
    got = await sender.send(b"k", GET, is_write=False)
    assert not got.results[0].get.found
    assert nodes.calls == ["n1", "n2"]
    assert loop.time() - start < 2.0  # not the 5 s deadline
    assert nodes.held[0].cancelled()  # its place in the batch is given up
    assert sender.counters.retries.get("slow_replica") == 1


async def test_a_write_to_a_replica_that_does_not_answer_is_never_sent_elsewhere() -> None:
    """Once sent, a write may still apply (the paused leader wakes up and commits it),
    so sending it to another replica could apply it twice."""
    nodes = SilentFirstNode(lambda _addr: reply())
    sender = make_sender(nodes, timeout=0.5, read_attempt_timeout=0.05)
    with pytest.raises(E.DeadlineExceeded) as info:
        await sender.send(b"k", PUT, is_write=True)
    assert info.value.outcome is E.WriteOutcome.UNKNOWN
    assert nodes.calls == ["n1"]


def test_read_attempt_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="read_attempt_timeout"):
        make_sender(FakeNodes(lambda _addr: reply()), read_attempt_timeout=0)


# --- issue 14: redirects by lease sequence, the deadline ---------------------------------


class ScriptedAnswers(FakeNodes):
    """Each address answers with its next scripted answer (the last one repeats)."""

    def __init__(self, script: dict[str, list[BatchReply | E.RangeKVError]]) -> None:
        super().__init__(self._next)
        self.script = script

    def _next(self, address: str) -> BatchReply | E.RangeKVError:
        answers = self.script[address]
        return answers.pop(0) if len(answers) > 1 else answers[0]


def nlh(holder: ReplicaDescriptor, seq: int) -> E.NotLeaseHolder:
    return E.NotLeaseHolder(1, holder, f"n{holder.node_id}", seq, WHOLE)


def slow_backoff_sender(nodes: FakeNodes) -> DistSender:
    """Any backoff would sleep at least half of the 2 s deadline."""
    sender = make_sender(nodes, timeout=2.0)
    sender._backoff_initial = sender._backoff_max = 30.0
    return sender


async def test_redirects_to_ever_higher_lease_sequences_are_followed_at_once() -> None:
    """Issue 14, item 7: the lease moves n2 -> n3 -> n1 -> n2 while the request chases it.
    Every redirect names a higher lease sequence than any seen, so none waits, even
    when it leads back to a node already asked ("already hinted" backed off there)."""
    nodes = ScriptedAnswers(
        {
            "n1": [nlh(N2, 6), nlh(N2, 9)],
            "n2": [nlh(N3, 7), reply()],
            "n3": [nlh(N1, 8)],
        }
    )
    sender = slow_backoff_sender(nodes)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await sender.send(b"k", GET, is_write=False)
    assert loop.time() - began < 0.5, "a backoff was taken"
    assert nodes.calls == ["n1", "n2", "n3", "n1", "n2"]
    assert sender.counters.redirects == 4 and not sender.counters.backoffs


async def test_a_hint_no_newer_than_one_followed_moves_on_to_a_replica_not_yet_asked() -> None:
    """Issue 14, items 1 and 7: n1 and n2 name each other at the same lease sequence.
    Going back to n1 would spin; the next replica (n3) has not been asked yet."""
    nodes = ScriptedAnswers({"n1": [nlh(N2, 5)], "n2": [nlh(N1, 5)], "n3": [reply()]})
    sender = slow_backoff_sender(nodes)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await sender.send(b"k", GET, is_write=False)
    assert loop.time() - began < 0.5, "a backoff was taken"
    assert nodes.calls == ["n1", "n2", "n3"]
    assert sender.counters.retries == {"lease_not_newer": 1}


class FakeClock:
    """`monotonic` and `sleep` for a DistSender: sleeping advances the clock at once."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay
        await asyncio.sleep(0)


async def test_a_flapping_lease_backs_off_after_each_pass() -> None:
    """Every replica names another at one lease sequence, forever: each pass asks each
    replica once, then the request backs off (capped exponential with jitter)."""

    nodes = ScriptedAnswers({"n1": [nlh(N2, 5)], "n2": [nlh(N1, 5)], "n3": [nlh(N1, 5)]})
    clock = FakeClock()
    sender = make_sender(nodes, timeout=5.0)
    sender._clock = clock
    with pytest.raises(E.Unavailable) as info:
        await sender.send(b"k", PUT, is_write=True)
    assert info.value.outcome is E.WriteOutcome.NOT_APPLIED
    passes = len(clock.sleeps)
    assert 4 <= passes <= 12, clock.sleeps
    assert len(nodes.calls) <= 3 * (passes + 1), (len(nodes.calls), passes)
    assert sender.counters.backoffs == {"lease_not_newer": passes}
    assert all(b <= 1.5 for b in clock.sleeps)  # capped at 1 s, jitter below 1.5x


async def test_a_meta_lookup_that_does_not_answer_is_bounded_by_the_deadline() -> None:
    """The meta client's own timeout (5 s) must not outlast the request's deadline."""
    never = asyncio.Event()

    async def hung(key: bytes, prefetch: int) -> LookupResult:
        await never.wait()
        raise AssertionError("unreachable")

    sender = make_sender(FakeNodes(lambda _addr: reply()), hung, timeout=0.3)
    with pytest.raises(E.Unavailable) as info:
        await asyncio.wait_for(sender.send(b"k", PUT, is_write=True), 3.0)
    assert info.value.outcome is E.WriteOutcome.NOT_APPLIED
    assert "did not answer the lookup in time" in info.value.message
