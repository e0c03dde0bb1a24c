"""Structured, one-line log records and the one "ready" line every service prints.

Why one line per record: the dev launcher, the integration tests and any log
collector split on newlines; a multi-line traceback would be read as several
unrelated records. Tracebacks therefore travel inside the record (escaped in the
text format, a JSON string in the json format).

Every record carries ``service``, ``node_id`` and ``range_id``:

- ``service`` and ``node_id`` are process-wide defaults given to
  :func:`setup_logging`; a record may override them (several nodes in one test
  process each log through ``bind(logger, node_id=n)``).
- ``range_id`` is per piece of work: either bound on an adapter
  (``bind(logger, range_id=7)``) or set for the current asyncio task with
  ``with range_scope(7): ...`` (a ``contextvars`` value, so concurrent tasks
  serving different ranges never see each other's id).

The ready line (:func:`log_ready`) is what the launcher and tests wait for; it is
emitted whatever the configured level, and :func:`parse_ready_line` reads it back
from either format.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import IO, Any

from rangekv.common.config import ServerConfig

# A ContextVar is a key into the per-task context, not shared mutable state: each
# asyncio task sees the value set in its own context only.
_RANGE_ID: ContextVar[int | None] = ContextVar("rangekv_range_id", default=None)

_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)
_CONTEXT_ATTRS = ("service", "node_id", "range_id")
_HANDLER_MARK = "_rangekv_handler"

READY_PATTERN = re.compile(
    r"rangekv (?P<service>[\w.-]+) ready: (?P<fields>[^\s\"=]+=[^\s\"]*(?: [^\s\"=]+=[^\s\"]*)*)"
)
"""Matches the ready line inside a text or JSON record (see :func:`parse_ready_line`)."""


@contextlib.contextmanager
def range_scope(range_id: int) -> Iterator[None]:
    """Tag every record logged in this block (in this task) with ``range_id``."""
    token = _RANGE_ID.set(range_id)
    try:
        yield
    finally:
        _RANGE_ID.reset(token)


class FieldsAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger with fixed fields (``node_id``, ``range_id``, ...) on every record.

    Unlike the stock adapter, fields passed per call in ``extra=`` are merged with
    the bound ones instead of being replaced by them.
    """

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


def bind(logger: logging.Logger | logging.LoggerAdapter, **fields: Any) -> FieldsAdapter:  # type: ignore[type-arg]
    """A logger whose records all carry ``fields`` (merged over any already bound)."""
    if isinstance(logger, logging.LoggerAdapter):
        fields = {**(logger.extra or {}), **fields}
        logger = logger.logger
    return FieldsAdapter(logger, fields)


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(c.isspace() or c in '="' for c in text):
        return json.dumps(text)
    return text


class StructuredFormatter(logging.Formatter):
    """Formats a record as one line of text or one JSON object.

    Text: ``2025-01-02T03:04:05.678Z INFO  raftnode n1 r7 rangekv.raftnode.replica: msg k=v``
    JSON: ``{"ts": ..., "level": ..., "service": ..., "node_id": ..., "range_id": ...,
    "logger": ..., "msg": ..., <extra fields>, "exc": ...}``
    """

    def __init__(self, service: str, node_id: int = 0, fmt: str = "text") -> None:
        super().__init__()
        if fmt not in ("text", "json"):
            raise ValueError(f"log format must be text or json, got {fmt!r}")
        self.service = service
        self.node_id = node_id
        self.json = fmt == "json"

    def _context(self, record: logging.LogRecord) -> tuple[str, int, int | None]:
        service = getattr(record, "service", None) or self.service
        node_id = getattr(record, "node_id", None) or self.node_id
        range_id = getattr(record, "range_id", None)
        if range_id is None:
            range_id = _RANGE_ID.get()
        return service, node_id, range_id

    @staticmethod
    def _extras(record: logging.LogRecord) -> dict[str, Any]:
        return {
            key: value
            for key, value in record.__dict__.items()
            if key not in _STANDARD_ATTRS and key not in _CONTEXT_ATTRS and not key.startswith("_")
        }

    def _exception_text(self, record: logging.LogRecord) -> str | None:
        parts = []
        if record.exc_info:
            parts.append(self.formatException(record.exc_info))
        if record.stack_info:
            parts.append(self.formatStack(record.stack_info))
        return "\n".join(parts) if parts else None

    def format(self, record: logging.LogRecord) -> str:
        service, node_id, range_id = self._context(record)
        message = record.getMessage()
        extras = self._extras(record)
        exc = self._exception_text(record)
        if self.json:
            doc: dict[str, Any] = {
                "ts": _timestamp(record),
                "level": record.levelname,
                "service": service,
                "node_id": node_id,
                "range_id": range_id,
                "logger": record.name,
                "msg": message,
            }
            doc.update({k: v for k, v in extras.items() if k not in doc})
            if exc is not None:
                doc["exc"] = exc
            # ensure_ascii: \u2028 and friends would otherwise split the line for
            # readers that honour Unicode line breaks.
            return json.dumps(doc, default=str, ensure_ascii=True)
        head = f"{_timestamp(record)} {record.levelname:<5} {service}"
        if node_id:
            head += f" n{node_id}"
        if range_id is not None:
            head += f" r{range_id}"
        line = f"{head} {record.name}: {message}"
        if extras:
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in extras.items())
        if exc is not None:
            line += " exc=" + json.dumps(exc)
        return line.replace("\r", "\\r").replace("\n", "\\n")


def setup_logging(
    service: str,
    *,
    node_id: int = 0,
    level: str = "INFO",
    fmt: str = "text",
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Route every record of the process to ``stream`` (stderr) as structured lines.

    Installs one handler on the root logger, replacing the one a previous call
    installed (so calling it twice, e.g. in tests, never duplicates lines), and
    sets the root level. Returns the handler so a test can remove it again.
    """
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, _HANDLER_MARK, False):
            root.removeHandler(existing)
            existing.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(StructuredFormatter(service, node_id, fmt))
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler


def setup_logging_from_config(
    service: str, config: ServerConfig, stream: IO[str] | None = None
) -> logging.Handler:
    """:func:`setup_logging` with the level, format and node id of a ``ServerConfig``."""
    return setup_logging(
        service,
        node_id=config.node_id,
        level=config.log_level,
        fmt=config.log_format,
        stream=stream,
    )


def format_ready(service: str, address: str, **extra: Any) -> str:
    """``rangekv <service> ready: [node=N] grpc=<address> [k=v ...]``.

    ``node`` comes first when given, then the gRPC address, then the rest in the
    order given, so the line reads the same for every service.
    """
    fields: dict[str, Any] = {}
    if "node" in extra:
        fields["node"] = extra.pop("node")
    fields["grpc"] = address
    fields.update(extra)
    body = " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
    return f"rangekv {service} ready: {body}"


def fault_banner(what: str, setting: str, effect: str) -> str:
    """The loud startup line of an active test-only fault (a mutation, a skewed
    clock, power-loss emulation, ...): one shape for all of them, so that a log
    reader -- or a grep for "!!!!! TEST" -- never misses one."""
    return f"!!!!! TEST {what}: {setting} -- {effect} !!!!!"


def log_ready(
    logger: logging.Logger | logging.LoggerAdapter,  # type: ignore[type-arg]
    service: str,
    address: str,
    **extra: Any,
) -> str:
    """Emit the ready line once, whatever the log level, and return it.

    The line bypasses the logger's level (an operator running at WARNING still
    needs the launcher to see it) but goes through the configured handlers, so
    it has the same shape as every other record. With no handler configured at
    all it is written to stderr directly rather than lost.
    """
    line = format_ready(service, address, **extra)
    bound: Mapping[str, Any] = {}
    target: logging.Logger
    if isinstance(logger, logging.LoggerAdapter):
        bound = logger.extra or {}
        target = logger.logger
    else:
        target = logger
    if not target.hasHandlers():
        print(line, file=sys.stderr, flush=True)
        return line
    record = target.makeRecord(
        target.name, logging.INFO, "(ready)", 0, line, (), None, extra=dict(bound)
    )
    target.handle(record)
    return line


def parse_ready_line(line: str) -> dict[str, str] | None:
    """The fields of a ready line (plus ``service``), or None if ``line`` is not one."""
    match = READY_PATTERN.search(line)
    if match is None:
        return None
    fields = {"service": match.group("service")}
    for pair in match.group("fields").split(" "):
        key, _, value = pair.partition("=")
        fields[key] = value
    return fields


__all__ = [
    "READY_PATTERN",
    "FieldsAdapter",
    "StructuredFormatter",
    "bind",
    "fault_banner",
    "format_ready",
    "log_ready",
    "parse_ready_line",
    "range_scope",
    "setup_logging",
    "setup_logging_from_config",
]
