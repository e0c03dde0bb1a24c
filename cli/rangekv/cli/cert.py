"""`rangekv cert`: make the certificates a secure cluster runs on.

    rangekv cert create-ca --certs-dir certs
    rangekv cert create-node node --host localhost --host 127.0.0.1 \\
        --host '*.rangekv.default.svc.cluster.local' --certs-dir certs
    rangekv cert create-client alice --role write --certs-dir certs
    rangekv cert list --certs-dir certs

Files land in --certs-dir (env RANGEKV_CERTS_DIR): ``ca.crt``/``ca.key``,
``node.crt``/``node.key`` (or ``NAME.crt`` with ``--out NAME``), and
``client.NAME.crt``/``client.NAME.key``; keys 0600. Nothing is overwritten without
``--overwrite``. The CA key may live elsewhere (``--ca-key``): only the machine
that signs needs it. How identities and roles are encoded: rangekv.common.certs.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from rangekv.common.certs import (
    CA_CERT,
    CA_KEY,
    NODE_CERT,
    NODE_KEY,
    KeyPair,
    client_files,
    create_ca,
    create_client,
    create_node,
    describe_dir,
    parse_role,
    write_pair,
)

USAGE = """usage: rangekv cert {create-ca,create-node,create-client,list} [options]

  create-ca                      a new cluster CA (ca.crt, ca.key)
  create-node NAME --host H ...  a node certificate (node.crt, node.key) for hosts H
  create-client NAME --role R    a client certificate (client.NAME.crt/.key), R: read|write|admin
  list                           what --certs-dir holds: identities, hosts, expiry

rangekv cert VERB --help shows a verb's options."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _parser(verb: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"rangekv cert {verb}", description=description)
    p.add_argument(
        "--certs-dir",
        default=os.environ.get("RANGEKV_CERTS_DIR") or None,
        help="directory of the cluster's certificates [env RANGEKV_CERTS_DIR; required]",
    )
    return p


def _certs_dir(p: argparse.ArgumentParser, args: argparse.Namespace) -> Path:
    if not args.certs_dir:
        p.error("pass --certs-dir DIR (or set RANGEKV_CERTS_DIR)")
    return Path(args.certs_dir)


def _signing(p: argparse.ArgumentParser) -> None:
    p.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.add_argument("--ca-key", help=f"the CA's private key (default DIR/{CA_KEY})")


def _load_ca(d: Path, ca_key: str | None) -> KeyPair:
    cert = d / CA_CERT
    key = Path(ca_key) if ca_key else d / CA_KEY
    for path in (cert, key):
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: run `rangekv cert create-ca` first")
    return KeyPair(cert.read_bytes(), key.read_bytes())


def create_ca_main(argv: Sequence[str]) -> int:
    p = _parser("create-ca", "Create the cluster CA: ca.crt (give to every process), ca.key.")
    p.add_argument("--days", type=int, default=3650, help="validity in days (default 3650)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing CA")
    args = p.parse_args(argv)
    d = _certs_dir(p, args)
    write_pair(d, CA_CERT, CA_KEY, create_ca(_now(), days=args.days), overwrite=args.overwrite)
    print(f"wrote {d / CA_CERT} and {d / CA_KEY} (keep ca.key private)")
    return 0


def create_node_main(argv: Sequence[str]) -> int:
    p = _parser(
        "create-node",
        "Create a node certificate (raftnode, metarange, gateway): server and client auth.",
    )
    p.add_argument("name", help="the node's identity name, e.g. its pod name or 'node'")
    p.add_argument(
        "--host",
        action="append",
        default=[],
        help="DNS name, wildcard (*.svc.ns.svc.cluster.local) or IP clients dial; repeat",
    )
    p.add_argument("--out", default="node", help="file stem: OUT.crt/OUT.key (default node)")
    _signing(p)
    args = p.parse_args(argv)
    d = _certs_dir(p, args)
    pair = create_node(_load_ca(d, args.ca_key), args.name, args.host, _now(), days=args.days)
    crt, key = (
        (NODE_CERT, NODE_KEY) if args.out == "node" else (f"{args.out}.crt", f"{args.out}.key")
    )
    write_pair(d, crt, key, pair, overwrite=args.overwrite)
    hosts = ", ".join(args.host) or "none (rangekv peers only)"
    print(f"wrote {d / crt} and {d / key}: node {args.name}, hosts {hosts}")
    return 0


def create_client_main(argv: Sequence[str]) -> int:
    p = _parser("create-client", "Create a client certificate carrying a role.")
    p.add_argument("name", help="the client's name")
    p.add_argument(
        "--role",
        required=True,
        choices=("read", "write", "admin"),
        help="read: Get, Scan; write: plus Put, Delete, CompareAndSwap, Batch; "
        "admin: plus split, transfer-lease, change-replicas, ranges, nodes",
    )
    _signing(p)
    args = p.parse_args(argv)
    d = _certs_dir(p, args)
    role = parse_role(args.role)
    pair = create_client(_load_ca(d, args.ca_key), args.name, role, _now(), days=args.days)
    crt, key = client_files(args.name)
    write_pair(d, crt, key, pair, overwrite=args.overwrite)
    print(f"wrote {d / crt} and {d / key}: client {args.name}, role {role.label}")
    return 0


def list_main(argv: Sequence[str]) -> int:
    p = _parser("list", "List the certificates in --certs-dir.")
    args = p.parse_args(argv)
    d = _certs_dir(p, args)
    if not d.is_dir():
        raise FileNotFoundError(f"{d} is not a directory")
    now = _now()
    rows = [("FILE", "IDENTITY", "HOSTS", "EXPIRES")]
    for info in describe_dir(d, now):
        expires = info.not_after.strftime("%Y-%m-%d %H:%M UTC") + (
            " EXPIRED" if info.expired else ""
        )
        rows.append((info.file, info.identity, ",".join(info.hosts) or "-", expires))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


VERBS = {
    "create-ca": create_ca_main,
    "create-node": create_node_main,
    "create-client": create_client_main,
    "list": list_main,
}


def main(argv: Sequence[str]) -> int:
    args = list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if args else 2
    verb = VERBS.get(args[0])
    if verb is None:
        print(f"rangekv cert: unknown verb {args[0]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    try:
        return verb(args[1:])
    except (OSError, ValueError) as exc:
        print(f"rangekv cert: {exc}", file=sys.stderr)
        return 1
