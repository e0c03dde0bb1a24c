"""The data verbs (get, put, del, cas, scan) and the conventions every verb shares.

Data verbs speak the public `rangekv.v1.KV` API to a gateway (`--addr`),
exactly like any other client. The admin verbs live in `rangekv.cli.admin`;
they reuse the argument, output and error helpers defined here.

Conventions shared by every verb, so that scripts can rely on them:
- keys and values are UTF-8 text on the command line; `--hex` takes and prints
  hex instead (for binary data). Human output escapes control characters.
- `--json` prints machine-readable output on stdout (`scan --json` prints one
  JSON object per line, as the stream arrives).
- an error is ONE line on stderr (`rangekv: CODE: message`) and exit status 1;
  a usage error exits 2; `get` of a missing key and a `cas` whose comparison
  fails exit 1 too (with `--json`, their result is still printed on stdout).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import grpc

from rangekv.cli.output import error_line
from rangekv.common import errors as E
from rangekv.common.certs import CA_CERT, NODE_SERVER_NAME
from rangekv.common.config import ConfigError, SecurityConfig, add_arguments, from_args
from rangekv.common.tls import ChannelOpener, client_channels
from rangekv.v1 import (
    kv_pb2,
    kv_pb2_grpc,
    types_pb2,
)

DEFAULT_ADDR = "127.0.0.1:50051"
DEFAULT_DATA = "./data/dev"


class CLIError(Exception):
    """A failure already phrased for the user: printed as one line, exit status 1."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# --- argument plumbing -----------------------------------------------------------------


def _parser(verb: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"rangekv {verb}", description=description)


def add_common(parser: argparse.ArgumentParser, *, admin: bool = False) -> None:
    """--addr/--json/--timeout, the TLS flags and --data (for admin verbs also --meta;
    see `rangekv.cli.target`)."""
    default_addr = os.environ.get("RANGEKV_ADDR", DEFAULT_ADDR)
    if not admin:
        parser.add_argument(
            "--addr", default=default_addr, help=f"gateway host:port (default {default_addr})"
        )
        parser.add_argument(
            "--data",
            default=DEFAULT_DATA,
            help=f"data folder of a `rangekv dev` cluster, whose certs/ are used when no "
            f"TLS flag is given (default {DEFAULT_DATA})",
        )
    else:
        # None marks "not given", so that --data and --meta can be told apart from
        # the default gateway address.
        parser.add_argument(
            "--addr",
            default=None,
            help=f"gateway host:port (default: $RANGEKV_ADDR, else {DEFAULT_ADDR})",
        )
        parser.add_argument(
            "--data",
            default=None,
            help="data folder of a `rangekv dev` cluster: use its gateway (from DATA/cluster.json)",
        )
        parser.add_argument(
            "--meta",
            default=os.environ.get("RANGEKV_META", ""),
            help="metarange addresses, comma-separated: ask the meta range and the nodes "
            "directly, without a gateway (for when the gateways are down)",
        )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="deadline in seconds (default 5)"
    )
    add_security(parser)


SECURITY_ENV = (
    "RANGEKV_CERTS_DIR",
    "RANGEKV_CA_CERT",
    "RANGEKV_CERT",
    "RANGEKV_KEY",
    "RANGEKV_INSECURE",
)


def add_security(parser: argparse.ArgumentParser, client_flag: str = "--client") -> None:
    """The services' TLS flags (--certs-dir, --ca-cert, --cert, --key, --insecure) and the
    client certificate's name (``client_flag``, --client except where that means more)."""
    add_arguments(parser, SecurityConfig)
    parser.add_argument(
        client_flag,
        dest="client_name",
        default=os.environ.get("RANGEKV_CLIENT") or None,
        metavar="NAME",
        help="use client.NAME.crt/.key from --certs-dir [env RANGEKV_CLIENT; default: "
        "client.admin, else the only client pair, else node.crt]",
    )


def security(args: argparse.Namespace) -> SecurityConfig:
    """The TLS settings of a CLI call: flags > environment > DATA/certs of a dev cluster."""
    given = any(
        getattr(args, f.name, argparse.SUPPRESS) is not argparse.SUPPRESS
        for f in dataclasses.fields(SecurityConfig)
    ) or any(v in os.environ for v in SECURITY_ENV)
    # Admin verbs leave --data unset unless given (it also names a gateway there);
    # for certificates the default dev folder is looked at either way.
    data = getattr(args, "data", None) or DEFAULT_DATA
    if not given and (Path(data) / "certs" / CA_CERT).exists():
        return SecurityConfig(certs_dir=Path(data) / "certs")
    try:
        return from_args(SecurityConfig, args)
    except ConfigError as exc:
        raise CLIError(f"{exc.reason} (or --data DIR of a `rangekv dev` cluster)", code=2) from None


def channel_opener(args: argparse.Namespace, *, internal: bool = False) -> ChannelOpener:
    """Channels for this call. ``internal``: to a node or meta replica at a registry
    address, checked to be a node of the cluster rather than by host name."""
    return client_channels(
        security(args), args.client_name, server_name=NODE_SERVER_NAME if internal else None
    )


def add_hex(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hex", action="store_true", help="keys and values are hex on input and output"
    )


def to_bytes(args: argparse.Namespace, text: str, what: str) -> bytes:
    """A key or value from the command line (UTF-8, or hex with --hex)."""
    if getattr(args, "hex", False):
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise CLIError(f"{what} {text!r} is not hex", code=2) from None
    return text.encode()


def escape(data: bytes) -> str:
    """Text a terminal shows safely: invalid UTF-8 and control characters escaped.

    Tabs and newlines are escaped too, so `scan` output stays one
    `key<TAB>value` pair per line whatever the data holds. (Use --hex when the
    exact bytes matter: a literal backslash and an escape look alike.)
    """
    text = data.decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


def show(args: argparse.Namespace, data: bytes) -> str:
    """A key or value for human output."""
    return data.hex() if getattr(args, "hex", False) else escape(data)


def json_bytes(args: argparse.Namespace, data: bytes) -> str:
    """A key or value for JSON output (hex with --hex, else UTF-8 text)."""
    return data.hex() if getattr(args, "hex", False) else data.decode("utf-8", "backslashreplace")


def json_version(ts: types_pb2.Timestamp) -> dict[str, int]:
    return {"wall_time": ts.wall_time, "logical": ts.logical}


def emit_json(obj: Any) -> None:
    print(json.dumps(obj, sort_keys=False), flush=True)


def fail(message: str) -> None:
    """The one stderr line every failure prints (red on a terminal)."""
    error_line(message)


def rpc_error_line(exc: grpc.RpcError, target: str = "") -> str:
    """`CODE: message` for a failed call, with an unreachable server said plainly."""
    code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else grpc.StatusCode.UNKNOWN
    details = (exc.details() if isinstance(exc, grpc.aio.AioRpcError) else "") or ""
    if code == grpc.StatusCode.UNAVAILABLE and "failed to connect" in details.lower():
        reason = details.rsplit(":", 1)[-1].strip() or "no answer"
        where = f" {target}" if target else ""
        return f"UNAVAILABLE: cannot reach{where} ({reason})"
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return f"UNIMPLEMENTED: {details}"
    return f"{code.name}: {E.from_rpc_error(exc).message}"


def run(main: Callable[[], Coroutine[Any, Any, int]], target: str = "") -> int:
    """Run a verb's coroutine; turn every failure into one line and exit status 1."""
    try:
        return asyncio.run(main())
    except CLIError as exc:
        fail(exc.message)
        return exc.code
    except grpc.aio.AioRpcError as exc:
        fail(rpc_error_line(exc, target))
        return 1
    except E.RangeKVError as exc:
        fail(f"{exc.code.name}: {exc.message}")
        return 1
    except BrokenPipeError:
        # `rangekv scan | head`: the reader has what it wanted. Point stdout at
        # /dev/null so the interpreter's final flush does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (OSError, ValueError) as exc:
        fail(f"{type(exc).__name__}: {exc}")
        return 1


def channel(
    args: argparse.Namespace,
    addr: str,
    *,
    internal: bool = False,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """THE way the CLI connects (every verb, bench included): TLS as `args` say
    (`security`); `internal` for a node or meta replica rather than a gateway."""
    return channel_opener(args, internal=internal)(addr, list(options))


# --- data verbs --------------------------------------------------------------------------


def _consistency(args: argparse.Namespace) -> kv_pb2.ReadConsistency:
    if getattr(args, "stale", False):
        return kv_pb2.READ_CONSISTENCY_INCONSISTENT
    return kv_pb2.READ_CONSISTENCY_LINEARIZABLE


def get_main(argv: Sequence[str]) -> int:
    p = _parser("get", "Print the value of KEY (exit 1 if the key does not exist).")
    p.add_argument("key")
    p.add_argument("--stale", action="store_true", help="read any replica (may be stale)")
    add_hex(p)
    add_common(p)
    args = p.parse_args(argv)

    async def main() -> int:
        key = to_bytes(args, args.key, "key")
        async with channel(args, args.addr) as ch:
            resp = await kv_pb2_grpc.KVStub(ch).Get(
                kv_pb2.GetRequest(key=key, consistency=_consistency(args)), timeout=args.timeout
            )
        if args.json:
            out: dict[str, Any] = {"key": json_bytes(args, key), "found": resp.found}
            if resp.found:
                out["value"] = json_bytes(args, resp.kv.value)
                out["version"] = json_version(resp.kv.version)
            emit_json(out)
        if not resp.found:
            raise CLIError(f"not found: {show(args, key)}")
        if not args.json:
            print(show(args, resp.kv.value), flush=True)
        return 0

    return run(main, args.addr)


def put_main(argv: Sequence[str]) -> int:
    p = _parser("put", "Write VALUE at KEY.")
    p.add_argument("key")
    p.add_argument("value")
    add_hex(p)
    add_common(p)
    args = p.parse_args(argv)

    async def main() -> int:
        key = to_bytes(args, args.key, "key")
        value = to_bytes(args, args.value, "value")
        async with channel(args, args.addr) as ch:
            resp = await kv_pb2_grpc.KVStub(ch).Put(
                kv_pb2.PutRequest(key=key, value=value), timeout=args.timeout
            )
        if args.json:
            emit_json({"key": json_bytes(args, key), "version": json_version(resp.version)})
        else:
            print("OK", flush=True)
        return 0

    return run(main, args.addr)


def del_main(argv: Sequence[str]) -> int:
    p = _parser("del", "Delete KEY (deleting a missing key is not an error).")
    p.add_argument("key")
    add_hex(p)
    add_common(p)
    args = p.parse_args(argv)

    async def main() -> int:
        key = to_bytes(args, args.key, "key")
        async with channel(args, args.addr) as ch:
            resp = await kv_pb2_grpc.KVStub(ch).Delete(
                kv_pb2.DeleteRequest(key=key), timeout=args.timeout
            )
        if args.json:
            emit_json({"key": json_bytes(args, key), "deleted": resp.deleted})
        else:
            print("deleted" if resp.deleted else "not found", flush=True)
        return 0

    return run(main, args.addr)


def cas_main(argv: Sequence[str]) -> int:
    p = _parser(
        "cas",
        "Write NEW at KEY only if its value is --expect OLD (or it is absent, "
        "--expect-absent). Exit 1 when the comparison fails.",
    )
    p.add_argument("key")
    p.add_argument("new")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--expect", metavar="OLD", help="the value KEY must hold")
    group.add_argument("--expect-absent", action="store_true", help="KEY must not exist")
    add_hex(p)
    add_common(p)
    args = p.parse_args(argv)

    async def main() -> int:
        key = to_bytes(args, args.key, "key")
        req = kv_pb2.CompareAndSwapRequest(
            key=key,
            new_value=to_bytes(args, args.new, "value"),
            expect_absent=args.expect_absent,
            expected_value=b"" if args.expect_absent else to_bytes(args, args.expect, "value"),
        )
        async with channel(args, args.addr) as ch:
            resp = await kv_pb2_grpc.KVStub(ch).CompareAndSwap(req, timeout=args.timeout)
        current = resp.current.value if resp.HasField("current") else None
        if args.json:
            out: dict[str, Any] = {"key": json_bytes(args, key), "succeeded": resp.succeeded}
            out["current"] = None if current is None else json_bytes(args, current)
            emit_json(out)
        if not resp.succeeded:
            now = (
                "the key is absent"
                if current is None
                else f"current value is {show(args, current)}"
            )
            raise CLIError(f"cas failed: {now}")
        if not args.json:
            print("OK", flush=True)
        return 0

    return run(main, args.addr)


def prefix_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with `prefix` (b"" = keyspace end)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b""
    return stripped[:-1] + bytes([stripped[-1] + 1])


def scan_main(argv: Sequence[str]) -> int:  # noqa: C901 -- the CLI verb's flow: parse, stream, print as table or json
    p = _parser(
        "scan",
        "Stream the keys of [START, END) as `key<TAB>value` lines, in key order, "
        "at one consistent timestamp.",
    )
    p.add_argument("start", nargs="?", default="", help="first key (default: keyspace start)")
    p.add_argument("end", nargs="?", default="", help="end key, exclusive (default: keyspace end)")
    p.add_argument("--prefix", help="only keys starting with PREFIX (instead of START/END)")
    p.add_argument("--limit", type=int, default=0, help="at most N keys (default: all)")
    p.add_argument("--keys-only", action="store_true", help="print keys, not values")
    p.add_argument("--stale", action="store_true", help="read any replica (may be stale)")
    add_hex(p)
    add_common(p)
    args = p.parse_args(argv)
    if args.limit < 0:
        p.error("--limit must be >= 0")
    if args.prefix is not None and (args.start or args.end):
        p.error("--prefix excludes START and END")

    async def main() -> int:
        if args.prefix is not None:
            start = to_bytes(args, args.prefix, "prefix")
            end = prefix_end(start)
        else:
            start = to_bytes(args, args.start, "start key")
            end = to_bytes(args, args.end, "end key")
        req = kv_pb2.ScanRequest(
            start_key=start, end_key=end, limit=args.limit, consistency=_consistency(args)
        )
        count = 0
        async with channel(args, args.addr) as ch:
            # A scan may be long: the deadline bounds each wait for the next
            # chunk rather than the whole stream.
            call = kv_pb2_grpc.KVStub(ch).Scan(req)
            it = call.__aiter__()
            while True:
                try:
                    resp = await asyncio.wait_for(it.__anext__(), args.timeout)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    call.cancel()
                    raise CLIError(
                        f"DEADLINE_EXCEEDED: no answer within {args.timeout}s after {count} keys"
                    ) from None
                lines = []
                for kv in resp.kvs:
                    if args.json:
                        obj: dict[str, Any] = {"key": json_bytes(args, kv.key)}
                        if not args.keys_only:
                            obj["value"] = json_bytes(args, kv.value)
                        lines.append(json.dumps(obj))
                    elif args.keys_only:
                        lines.append(show(args, kv.key))
                    else:
                        lines.append(f"{show(args, kv.key)}\t{show(args, kv.value)}")
                count += len(resp.kvs)
                if lines:
                    sys.stdout.write("\n".join(lines) + "\n")
                    sys.stdout.flush()
        return 0

    return run(main, args.addr)


__all__ = [
    "CLIError",
    "add_common",
    "cas_main",
    "channel",
    "del_main",
    "get_main",
    "put_main",
    "scan_main",
]
