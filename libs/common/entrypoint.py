"""The one way a rangekv service process starts: flags + env -> frozen configs -> asyncio.

Every service (`rangekv raftnode`, `metarange`, `gateway`) parses the generic
ServerConfig plus its own config dataclass in one place, sets up logging, and
runs its `serve` coroutine; a configuration error is one line and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from rangekv.common.config import ConfigError, ServerConfig, add_arguments, from_args_or_exit
from rangekv.common.logs import setup_logging_from_config

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
    add_arguments(parser, config_cls)
    args = parser.parse_args(argv)
    server_config = from_args_or_exit(parser, ServerConfig, args, os.environ)
    config = from_args_or_exit(parser, config_cls, args, os.environ)
    if needs_node_id and server_config.node_id <= 0:
        parser.exit(2, f"{parser.prog}: error: --node-id must be a positive integer\n")
    setup_logging_from_config(service, server_config)
    try:
        asyncio.run(serve(server_config, config))
    except ConfigError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    return 0
