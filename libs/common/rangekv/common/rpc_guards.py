"""What the server interceptor puts around every handler, besides the role check.

- Requests that are not valid protobuf for their method: gRPC would answer UNKNOWN
  and log a traceback for a deserializer that raises, so deserializers are wrapped
  (:func:`tolerant_deserializer`) to hand the handler wrapper an :class:`Undecodable`,
  answered INVALID_ARGUMENT; a request stream ends the same way at its first bad
  message (:func:`checked_stream`).
- The default deadline of a unary-request call that carries none becomes
  DEADLINE_EXCEEDED saying so (:func:`default_deadline_error`).
- Synchronous unary handlers (grpc's aio ``Health.List`` is one) run on the loop
  behind the same checks (:func:`on_loop`).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from rangekv.common.errors import DeadlineExceeded, InvalidArgument

_MAX_DETAIL = 200


class Undecodable:
    """What a request that is not valid protobuf for its method deserializes to.

    gRPC would answer UNKNOWN and log a traceback for a deserializer that raises;
    the interceptor turns this into INVALID_ARGUMENT naming the method instead.
    """

    __slots__ = ("method", "reason")

    def __init__(self, method: str, reason: str) -> None:
        self.method = method
        self.reason = reason

    def error(self) -> InvalidArgument:
        return InvalidArgument(
            "", f"{self.method}: the request is not valid protobuf: {self.reason}"
        )


def tolerant_deserializer(
    deserialize: Callable[[bytes], Any] | None, method: str
) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # DecodeError, or anything a custom deserializer raises
            return Undecodable(method, str(exc)[:_MAX_DETAIL])

    return decode


def on_loop(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        result = behavior(request, context)
        return await result if inspect.isawaitable(result) else result

    return call


async def checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A request stream that ends in INVALID_ARGUMENT at the first undecodable message."""
    async for request in requests:
        if isinstance(request, Undecodable):
            raise request.error()
        yield request


def default_deadline_error(
    exc: Exception, bound: object, method: str, deadline: float | None
) -> Exception:
    """The default deadline's TimeoutError as DEADLINE_EXCEEDED; any other error as is."""
    if isinstance(exc, TimeoutError) and isinstance(bound, asyncio.Timeout) and bound.expired():
        return DeadlineExceeded(
            f"{method}: no deadline was set and the default of {deadline:g}s passed"
        )
    return exc


__all__ = [
    "Undecodable",
    "checked_stream",
    "default_deadline_error",
    "on_loop",
    "tolerant_deserializer",
]
