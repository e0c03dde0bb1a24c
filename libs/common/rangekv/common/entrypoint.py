"""The one way a rangekv service process starts: flags + env -> frozen configs -> asyncio.

Every service (`rangekv raftnode`, `metarange`, `gateway`) parses the generic
ServerConfig, the SecurityConfig (TLS; secure unless --insecure) and its own
config dataclass in one place, sets up logging, and
runs its `serve` coroutine; a configuration error is one line and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from rangekv.common.config import (
    ConfigError,
    SecurityConfig,
    ServerConfig,
    add_arguments,
    from_args_or_exit,
)
from rangekv.common.logs import setup_logging_from_config
from rangekv.common.tls import warn_if_insecure

C = TypeVar("C")


def service_main(
    argv: Sequence[str] | None,
    *,
    service: str,
    description: str,
    config_cls: type[C],
    serve: Callable[[ServerConfig, C], Coroutine[Any, Any, None]],
    needs_node_id: bool,
) -> int:
    parser = argparse.ArgumentParser(prog=f"rangekv {service}", description=description)
    add_arguments(parser, ServerConfig)
    add_arguments(parser, SecurityConfig)
    add_arguments(parser, config_cls)
    args = parser.parse_args(argv)
    server_config = from_args_or_exit(parser, ServerConfig, args, os.environ)
    security = from_args_or_exit(parser, SecurityConfig, args, os.environ)
    server_config = dataclasses.replace(server_config, security=security)
    config = from_args_or_exit(parser, config_cls, args, os.environ)
    if needs_node_id and server_config.node_id <= 0 and server_config.ordinal is not None:
        # A StatefulSet pod: its ordinal is its identity (node ids start at 1).
        server_config = dataclasses.replace(server_config, node_id=server_config.ordinal + 1)
    if needs_node_id and server_config.node_id <= 0:
        parser.exit(
            2,
            f"{parser.prog}: error: --node-id must be a positive integer "
            "(or --pod-name a StatefulSet pod's name)\n",
        )
    setup_logging_from_config(service, server_config)
    warn_if_insecure(security, logging.getLogger(f"rangekv.{service}"))
    try:
        with asyncio.Runner(loop_factory=loop_factory(server_config.event_loop)) as runner:
            runner.run(serve(server_config, config))
    except ConfigError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    return 0


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop constructor ``ServerConfig.event_loop`` names.

    uvloop because every service is bound by the CPU its event loop and gRPC
    spend per message: a no-op grpc.aio server costs about a fifth less CPU per
    call on uvloop (benchmarks/grpc_server_floor.py). The standard loop stays
    one setting away, for platforms without uvloop or to rule it out.
    """
    if name == "uvloop":
        try:
            import uvloop
        except ImportError:
            logging.getLogger(__name__).warning(
                "uvloop is not installed; running on the standard asyncio loop"
            )
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop
