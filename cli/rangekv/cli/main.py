"""The `rangekv` command line: one entry point, one verb per job.

    rangekv dev ...        run a local cluster
    rangekv put|get|del|cas|scan ...        talk to a gateway
    rangekv ranges|nodes|split|transfer-lease|change-replicas|decommission ...
                           inspect and steer the cluster (through a gateway's Admin API)
    rangekv node decommission|recommission N ...   retire a storage node (or take it back)
    rangekv bench ...      load generator
    rangekv cert ...       make certificates (create-ca, create-node, create-client, list)
    rangekv raftnode|metarange|gateway ...  run one process of a cluster

Each verb parses its own flags (and RANGEKV_* environment variables) in one
place and hands frozen configs down.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

#: verb -> (module, function, one-line help)
VERBS: dict[str, tuple[str, str, str]] = {
    "raftnode": (
        "rangekv.cli.raftnode",
        "main",
        "run a storage node (it serves the KV API too)",
    ),
    "metarange": ("rangekv.metarange.main", "main", "run a replica of the meta range"),
    "gateway": ("rangekv.gateway.main", "main", "serve the public KV API"),
    "dev": ("rangekv.cli.dev", "main", "run a local cluster (metarange, raftnodes, gateway)"),
    "get": ("rangekv.cli.kv", "get_main", "print the value of a key"),
    "put": ("rangekv.cli.kv", "put_main", "write a key"),
    "del": ("rangekv.cli.kv", "del_main", "delete a key"),
    "cas": ("rangekv.cli.kv", "cas_main", "compare-and-swap a key"),
    "scan": ("rangekv.cli.kv", "scan_main", "stream the keys of a span"),
    "ranges": ("rangekv.cli.admin", "ranges_main", "table of ranges, replicas and leaseholders"),
    "nodes": ("rangekv.cli.admin", "nodes_main", "the store registry with liveness"),
    "transfer-lease": ("rangekv.cli.admin", "transfer_lease_main", "move a range's lease"),
    "split": ("rangekv.cli.admin", "split_main", "split the range holding a key"),
    "change-replicas": (
        "rangekv.cli.admin",
        "change_replicas_main",
        "add or remove a range's replica on a node",
    ),
    "decommission": (
        "rangekv.cli.admin",
        "decommission_main",
        "move every replica off a node (through the Admin API; see also `node`)",
    ),
    "node": (
        "rangekv.cli.node",
        "main",
        "decommission (or recommission) a storage node and follow it to the end",
    ),
    "bench": ("rangekv.cli.bench", "main", "load generator: put/get/mixed against a gateway"),
    "cert": ("rangekv.cli.cert", "main", "create-ca|create-node|create-client|list certificates"),
}


def usage() -> str:
    lines = ["usage: rangekv VERB [options]", "", "verbs:"]
    width = max(len(v) for v in VERBS)
    lines += [f"  {verb:<{width}}  {help_}" for verb, (_m, _f, help_) in VERBS.items()]
    lines += ["", "rangekv VERB --help shows a verb's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    verb, rest = args[0], args[1:]
    if verb not in VERBS:
        print(f"rangekv: unknown verb {verb!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, func_name, _help = VERBS[verb]
    func: Callable[[list[str]], int | None] = getattr(
        importlib.import_module(module_name), func_name
    )
    try:
        return func(rest) or 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
