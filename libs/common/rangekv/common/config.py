"""Per-component configuration: one frozen dataclass, filled from flags and environment.

Every rangekv process is configured the same way so that an operator learns it
once: each component declares ONE frozen dataclass whose fields carry their own
documentation (``setting(...)``). From that single declaration we derive

- the command-line flag (``node_id`` -> ``--node-id``),
- the environment variable (``RANGEKV_NODE_ID``; what Helm and the dev launcher set),
- the parser that turns a string into the field's type,
- the help text, which names the variable and the default.

Precedence is flag > environment > default, so a value baked into a container's
environment can always be overridden on the command line while debugging.

Validation lives in the dataclass's ``__post_init__`` (so a config built directly
in a test is checked too) and raises :class:`ConfigError`, a ``ValueError`` naming
the field. :func:`from_args` rewrites that message to name where the bad value
came from (the flag or the variable), and :func:`from_args_or_exit` turns it into
a one-line CLI error with exit status 2::

    parser = argparse.ArgumentParser(prog="rangekv-raftnode")
    add_arguments(parser, ServerConfig)
    config = from_args_or_exit(parser, ServerConfig, parser.parse_args())
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from rangekv.common.certs import CA_CERT, NODE_CERT, NODE_KEY, client_files

T = TypeVar("T")

ENV_PREFIX = "RANGEKV_"
"""Every environment variable rangekv reads starts with this."""

_META_KEY = "rangekv.config"

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class ConfigError(ValueError):
    """A configuration value is missing, unparsable or invalid.

    ``field`` is the dataclass field name (empty when the error is not about one
    field), so callers can point at the flag or variable the value came from.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.reason = message


@dataclass(frozen=True)
class ConfigField:
    """The metadata one configuration field carries (see :func:`setting`)."""

    help: str
    env: str | None = None
    parse: Callable[[str], Any] | None = None
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    flag: str | None = None


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    env: str | None = None,
    parse: Callable[[str], Any] | None = None,
    choices: Sequence[str] = (),
    metavar: str | None = None,
    flag: str | None = None,
) -> Any:
    """Declare a documented configuration field.

    ``flag`` defaults to ``--field-name`` (set it when the field's name would
    collide with a command's own arguments); ``env`` defaults to ``RANGEKV_<FIELD_NAME>``; ``parse`` defaults to one
    derived from the field's annotation (str, int, float, bool, Path, or an
    optional of those, where an empty string means None). A field without a
    default is required: it must come from the flag or the environment.
    """
    meta = ConfigField(
        help=help, env=env, parse=parse, choices=tuple(choices), metavar=metavar, flag=flag
    )
    return dataclasses.field(default=default, metadata={_META_KEY: meta})


def require(condition: bool, field: str, message: str) -> None:
    """Raise :class:`ConfigError` for ``field`` unless ``condition`` holds.

    Meant for ``__post_init__``; keeps each validation a single readable line.
    """
    if not condition:
        raise ConfigError(field, message)


def check_choices(config: object) -> None:
    """Check every field declared with ``choices`` against them (for ``__post_init__``)."""
    for f in dataclasses.fields(config):  # type: ignore[arg-type]
        meta = f.metadata.get(_META_KEY)
        if meta is not None and meta.choices:
            value = getattr(config, f.name)
            require(
                value in meta.choices,
                f.name,
                f"must be one of {', '.join(meta.choices)}, got {value!r}",
            )


# --- deriving flags, variables and parsers from the declaration ----------------------


@dataclass(frozen=True)
class _Spec:
    name: str
    flag: str
    env: str
    help: str
    parse: Callable[[str], Any]
    is_bool: bool
    choices: tuple[str, ...]
    metavar: str | None
    default: Any


def flag_name(field_name: str) -> str:
    """The command-line flag for a field: ``listen_port`` -> ``--listen-port``."""
    return "--" + field_name.replace("_", "-")


def env_name(field_name: str) -> str:
    """The default environment variable for a field: ``listen_port`` -> ``RANGEKV_LISTEN_PORT``."""
    return ENV_PREFIX + field_name.upper()


def parse_bool(text: str) -> bool:
    """Parse the usual spellings of a boolean; anything else is an error, not False."""
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"expected one of {', '.join(sorted(_TRUE | _FALSE))}")


def _scalar_parser(kind: Any) -> Callable[[str], Any]:
    if kind is bool:
        return parse_bool
    if kind is int:
        return lambda text: int(text.strip())
    if kind is float:
        return lambda text: float(text.strip())
    if kind is str:
        return str
    if kind is Path:
        return Path
    raise TypeError(f"no default parser for {kind!r}; pass parse= to setting()")


def _parser_for(annotation: Any) -> tuple[Callable[[str], Any], bool]:
    """The string parser for an annotation, and whether the field is a boolean."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported config annotation {annotation!r}")
        inner = _scalar_parser(args[0])

        def optional(text: str) -> Any:
            return None if text == "" else inner(text)

        return optional, False
    return _scalar_parser(annotation), annotation is bool


def _specs(cls: type) -> list[_Spec]:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(_META_KEY)
        if meta is None:
            continue
        default_parse, is_bool = _parser_for(hints[f.name])
        specs.append(
            _Spec(
                name=f.name,
                flag=meta.flag or flag_name(f.name),
                env=meta.env or env_name(f.name),
                help=meta.help,
                parse=meta.parse or default_parse,
                is_bool=is_bool and meta.parse is None,
                choices=meta.choices,
                metavar=meta.metavar,
                default=f.default,
            )
        )
    return specs


def _describe_default(default: Any) -> str:
    if default is dataclasses.MISSING:
        return "required"
    if default is None:
        return "default: unset"
    return f"default: {default}"


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per configuration field of ``cls`` to ``parser``.

    Flags default to "not given" (``argparse.SUPPRESS``) rather than to the
    field's default so that :func:`from_args` can tell an explicit flag from an
    absent one and let the environment fill the gap.
    """
    group = parser.add_argument_group(
        cls.__name__, (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else None
    )
    for spec in _specs(cls):
        text = f"{spec.help} [env {spec.env}; {_describe_default(spec.default)}]"
        text = text.replace("%", "%%")
        if spec.is_bool:
            group.add_argument(
                spec.flag,
                dest=spec.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=text,
            )
        else:
            group.add_argument(
                spec.flag,
                dest=spec.name,
                default=argparse.SUPPRESS,
                metavar=spec.metavar
                or ("{" + ",".join(spec.choices) + "}" if spec.choices else None),
                help=text,
            )


def _parse(spec: _Spec, raw: str, source: str) -> Any:
    try:
        return spec.parse(raw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(spec.name, f"{source}: cannot parse {raw!r}: {exc}") from None


def from_args(
    cls: type[T], args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> T:
    """Build ``cls`` with precedence flag > environment > default.

    Raises :class:`ConfigError` whose message names the flag or variable the
    offending value came from, e.g. ``--metrics-port: must be ...`` or
    ``RANGEKV_METRICS_PORT: must be ...``.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for spec in _specs(cls):
        given = getattr(args, spec.name, argparse.SUPPRESS)
        if given is not argparse.SUPPRESS:
            sources[spec.name] = spec.flag
            values[spec.name] = given if spec.is_bool else _parse(spec, given, spec.flag)
        elif spec.env in env:
            sources[spec.name] = spec.env
            values[spec.name] = _parse(spec, env[spec.env], spec.env)
        elif spec.default is dataclasses.MISSING:
            raise ConfigError(spec.name, f"required: pass {spec.flag} or set {spec.env}")
    try:
        return cls(**values)
    except ConfigError as exc:
        where = sources.get(exc.field)
        if where is None:
            named = {s.name: s for s in _specs(cls)}.get(exc.field)
            where = f"{named.flag} / {named.env} (default)" if named else exc.field
        raise ConfigError(exc.field, f"{where}: {exc.reason}") from None


def from_args_or_exit(
    parser: argparse.ArgumentParser,
    cls: type[T],
    args: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
) -> T:
    """:func:`from_args`, but a bad value ends the process with ONE line on stderr.

    The line reads ``<prog>: error: invalid configuration: <where>: <why>`` and the
    exit status is 2, as for any other argparse usage error; a traceback would
    only bury the one fact the operator needs.
    """
    try:
        return from_args(cls, args, environ)
    except ConfigError as exc:
        parser.exit(2, f"{parser.prog}: error: invalid configuration: {exc.reason}\n")


def describe(config: object) -> dict[str, Any]:
    """The effective configuration as plain values, for one startup log record."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):  # type: ignore[arg-type]
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = describe(value)
        out[f.name] = str(value) if isinstance(value, Path) else value
    return out


# --- transport security -------------------------------------------------------------


@dataclass(frozen=True)
class SecurityConfig:
    """TLS settings shared by every service and the CLI (mutual TLS unless --insecure)."""

    certs_dir: Path | None = setting(  # noqa: RUF009 -- setting() is dataclasses.field()
        None,
        help="directory with ca.crt, node.crt/node.key (services) and "
        "client.NAME.crt/client.NAME.key (clients)",
    )
    # Fields named *_path so that they never collide with a command's own `key`.
    ca_cert_path: Path | None = setting(  # noqa: RUF009
        None,
        flag="--ca-cert",
        env="RANGEKV_CA_CERT",
        help="CA certificate that signs every peer (overrides DIR/ca.crt)",
    )
    cert_path: Path | None = setting(  # noqa: RUF009
        None,
        flag="--cert",
        env="RANGEKV_CERT",
        help="this process's certificate (overrides the one in --certs-dir)",
    )
    key_path: Path | None = setting(  # noqa: RUF009
        None,
        flag="--key",
        env="RANGEKV_KEY",
        help="this process's private key (overrides the one in --certs-dir)",
    )
    insecure: bool = setting(
        False, help="plaintext, no authentication: only for trying things out on loopback"
    )

    def __post_init__(self) -> None:
        explicit = [self.ca_cert_path, self.cert_path, self.key_path]
        if self.insecure:
            if self.certs_dir is not None or any(p is not None for p in explicit):
                raise ConfigError(
                    "insecure",
                    "--insecure cannot be combined with --certs-dir/--ca-cert/--cert/--key "
                    "(RANGEKV_CERTS_DIR, RANGEKV_CA_CERT, RANGEKV_CERT, RANGEKV_KEY): pick one",
                )
            return
        if self.certs_dir is None and not all(p is not None for p in explicit):
            raise ConfigError(
                "insecure",
                "no certificates: pass --certs-dir DIR (env RANGEKV_CERTS_DIR) or "
                "--ca-cert, --cert and --key; or --insecure (env RANGEKV_INSECURE=1) for "
                "plaintext without authentication (`rangekv cert --help` makes certificates)",
            )

    @staticmethod
    def plaintext() -> SecurityConfig:
        return SecurityConfig(insecure=True)

    def node_files(self) -> TLSFiles:
        """CA, certificate and key of a rangekv process (``node.crt``/``node.key``)."""
        return self._files(NODE_CERT, NODE_KEY)

    def client_files(self, name: str | None = None) -> TLSFiles:
        """A client's files: --cert/--key, else ``client.NAME.*`` in --certs-dir.

        Without a name: ``client.admin.*`` if present, else the only client pair,
        else the node pair (an operator on a node machine).
        """
        if self.certs_dir is None or (self.cert_path is not None and self.key_path is not None):
            return self._files(NODE_CERT, NODE_KEY)
        if name:
            return self._files(*client_files(name))
        if (self.certs_dir / client_files("admin")[0]).exists():
            return self._files(*client_files("admin"))
        pairs = sorted(self.certs_dir.glob("client.*.crt"))
        if len(pairs) == 1:
            stem = pairs[0].name[: -len(".crt")]
            return self._files(f"{stem}.crt", f"{stem}.key")
        return self._files(NODE_CERT, NODE_KEY)

    def _files(self, cert_name: str, key_name: str) -> TLSFiles:
        if self.insecure:
            raise ConfigError("insecure", "no certificate files in --insecure mode")
        d = self.certs_dir
        ca = self.ca_cert_path or (d / CA_CERT if d else None)
        cert = self.cert_path or (d / cert_name if d else None)
        key = self.key_path or (d / key_name if d else None)
        assert ca is not None and cert is not None and key is not None  # __post_init__
        return TLSFiles(ca, cert, key)


@dataclass(frozen=True)
class TLSFiles:
    """Where one identity's CA, certificate and key are."""

    ca: Path
    cert: Path
    key: Path

    def stamp(self) -> tuple[tuple[int, int, int], ...]:
        """Changes whenever any of the files is replaced or rewritten (cheap: three stats)."""
        out = []
        for path in (self.ca, self.cert, self.key):
            try:
                st = os.stat(path)
            except OSError:
                out.append((0, 0, 0))
            else:
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(out)


# --- the configuration every gRPC service shares -------------------------------------

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
METRICS_DISABLED = -1
"""``metrics_port`` value that turns the Prometheus endpoint off."""


def _port_ok(port: int, *, allow_disabled: bool = False) -> bool:
    return 0 <= port <= 65535 or (allow_disabled and port == METRICS_DISABLED)


EVENT_LOOPS = ("uvloop", "asyncio")
"""Event loops a service can run on (``ServerConfig.event_loop``)."""


@dataclass(frozen=True)
class ServerConfig:
    """Listening, identity, logging and telemetry settings of one gRPC service process."""

    listen_host: str = setting(
        "127.0.0.1", help="address the gRPC server binds to (0.0.0.0 or :: for all interfaces)"
    )
    listen_port: int = setting(0, help="gRPC port; 0 picks a free port, reported in the ready line")
    metrics_host: str = setting("127.0.0.1", help="address the Prometheus endpoint binds to")
    metrics_port: int = setting(
        0, help="Prometheus endpoint port; 0 picks a free port, -1 disables the endpoint"
    )
    node_id: int = setting(0, help="this process's node id; 0 for processes that are not nodes")
    pod_name: str = setting(
        "",
        help="the Kubernetes pod this process runs in (downward API metadata.name); a "
        "StatefulSet pod's name ends in its ordinal, which gives a node without --node-id "
        "its identity",
    )
    data_dir: Path | None = setting(  # noqa: RUF009 -- setting() is dataclasses.field()
        None, help="directory for persistent state (unset: none)"
    )
    log_level: str = setting(
        "INFO", help="minimum log level", parse=lambda s: s.strip().upper(), choices=LOG_LEVELS
    )
    log_format: str = setting(
        "text",
        help="log record format: one-line text for people, one JSON object per line for collectors",
        parse=lambda s: s.strip().lower(),
        choices=LOG_FORMATS,
    )
    otlp_endpoint: str | None = setting(
        None,
        help="OTLP/gRPC collector for traces, e.g. http://otel-collector:4317 (unset: no traces)",
    )
    max_message_bytes: int = setting(
        64 * 1024 * 1024, help="largest gRPC message sent or received, in bytes"
    )
    shutdown_grace_seconds: float = setting(
        5.0, help="on SIGTERM/SIGINT, how long in-flight RPCs may take to finish"
    )
    health_port: int = setting(
        -1,
        help="separate PLAINTEXT port serving only grpc.health.v1 (for Kubernetes gRPC probes, "
        "which cannot speak TLS); 0 picks a free port, -1 disables it",
    )
    max_concurrent_streams: int = setting(
        256, help="most concurrent calls (HTTP/2 streams) one client connection may have open"
    )
    default_deadline_seconds: float = setting(
        60.0,
        help="deadline given to a unary-request call that arrives without one "
        "(long-lived streams such as raft's are exempt)",
    )
    event_loop: str = setting(
        "uvloop",
        help="asyncio event loop: uvloop (libuv; about a fifth less CPU per gRPC call, "
        "see benchmarks/grpc_server_floor.py) or asyncio (the standard library's)",
        parse=lambda s: s.strip().lower(),
        choices=EVENT_LOOPS,
    )

    #: Transport security, parsed from its own flags (SecurityConfig) by the entry
    #: point. The in-code default is plaintext so that a ServerConfig built by hand
    #: in a test needs no certificates; a process started from flags and environment
    #: gets no such default (SecurityConfig refuses to be neither secure nor --insecure).
    security: SecurityConfig = dataclasses.field(default_factory=SecurityConfig.plaintext)

    def __post_init__(self) -> None:
        check_choices(self)
        require(self.listen_host != "", "listen_host", "must not be empty")
        require(
            1 <= self.max_concurrent_streams <= 100_000,
            "max_concurrent_streams",
            f"must be in [1, 100000], got {self.max_concurrent_streams}",
        )
        require(
            self.default_deadline_seconds > 0,
            "default_deadline_seconds",
            f"must be > 0, got {self.default_deadline_seconds}",
        )
        require(
            _port_ok(self.listen_port),
            "listen_port",
            f"must be 0 (pick a free port) or 1..65535, got {self.listen_port}",
        )
        require(self.metrics_host != "", "metrics_host", "must not be empty")
        require(
            _port_ok(self.metrics_port, allow_disabled=True),
            "metrics_port",
            f"must be -1 (disabled), 0 (pick a free port) or 1..65535, got {self.metrics_port}",
        )
        require(
            _port_ok(self.health_port, allow_disabled=True),
            "health_port",
            f"must be -1 (disabled), 0 (pick a free port) or 1..65535, got {self.health_port}",
        )
        require(self.node_id >= 0, "node_id", f"must be >= 0, got {self.node_id}")
        require(
            self.otlp_endpoint is None or self.otlp_endpoint.strip() != "",
            "otlp_endpoint",
            "must not be blank (leave it unset to disable traces)",
        )
        require(
            self.max_message_bytes >= 4 * 1024 * 1024,
            "max_message_bytes",
            f"must be at least 4194304 (gRPC's default), got {self.max_message_bytes}",
        )
        require(
            self.shutdown_grace_seconds >= 0,
            "shutdown_grace_seconds",
            f"must be >= 0, got {self.shutdown_grace_seconds}",
        )

    @property
    def metrics_enabled(self) -> bool:
        return self.metrics_port != METRICS_DISABLED

    @property
    def health_port_enabled(self) -> bool:
        return self.health_port != METRICS_DISABLED

    @property
    def ordinal(self) -> int | None:
        """The StatefulSet ordinal of this process's pod (None outside a StatefulSet)."""
        return pod_ordinal(self.pod_name) if self.pod_name else None


def pod_ordinal(pod_name: str) -> int | None:
    """``rk-raftnode-4`` -> 4: a StatefulSet names its pods ``<set>-<ordinal>``."""
    _prefix, sep, tail = pod_name.rpartition("-")
    if not sep or not _prefix or not tail.isdigit() or (len(tail) > 1 and tail[0] == "0"):
        return None
    return int(tail)


__all__ = [
    "ENV_PREFIX",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "METRICS_DISABLED",
    "ConfigError",
    "ConfigField",
    "SecurityConfig",
    "ServerConfig",
    "TLSFiles",
    "add_arguments",
    "check_choices",
    "describe",
    "env_name",
    "flag_name",
    "from_args",
    "from_args_or_exit",
    "parse_bool",
    "pod_ordinal",
    "require",
    "setting",
]
