"""The `rangekv` command line: one entry point, one verb per job.

    rangekv raftnode ...   run a storage node
    rangekv sim ...        run the deterministic raft cluster simulator

Each verb parses its own flags (and RANGEKV_* environment variables) in one
place and hands frozen configs down.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

#: verb -> (module, function, one-line help)
VERBS: dict[str, tuple[str, str, str]] = {
    "raftnode": ("rangekv.raftnode.main", "main", "run a storage node"),
    "metarange": ("rangekv.metarange.main", "main", "run a replica of the meta range"),
    "gateway": ("rangekv.gateway.main", "main", "serve the public KV API"),
    "dev": ("rangekv.cli.dev", "main", "run a local cluster (metarange, raftnodes, gateway)"),
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
