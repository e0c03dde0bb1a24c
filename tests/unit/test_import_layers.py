"""The import layers hold: read from the sources with `ast`, nothing imported or run.

Layers, bottom up (a part imports only parts below it, and itself):

    rangekv.v1 (generated)
    rangekv.raft                          the pure core: nothing else of rangekv
                                          (its simulator, rangekv.raft.simulation,
                                          also uses the checker, rangekv.check)
    rangekv.common                        plumbing and descriptors
    rangekv.domain                        the values every service agrees on
    rangekv.check, rangekv.replication    the checker; the raft driver
    rangekv.raftnode, rangekv.metarange, rangekv.gateway
                                          services: libs, plus only another
                                          service's `client` module
    rangekv.cli                           anything

so a service can be read (and replaced) without the others' internals, and the
libraries never reach up into a service.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Where each part of the namespace lives.
PARTS = {
    "v1": "libs/proto/rangekv/v1",
    "raft": "libs/raft/rangekv/raft",
    "common": "libs/common/rangekv/common",
    "domain": "libs/domain/rangekv/domain",
    "check": "libs/check/rangekv/check",
    "replication": "libs/replication/rangekv/replication",
    "raftnode": "services/raftnode/rangekv/raftnode",
    "metarange": "services/metarange/rangekv/metarange",
    "gateway": "services/gateway/rangekv/gateway",
    "cli": "cli/rangekv/cli",
}
LIBS = {"v1", "raft", "common", "domain", "check", "replication"}
SERVICES = {"raftnode", "metarange", "gateway"}

#: What each library may import (besides itself).
LIB_ALLOWED = {
    "v1": set(),
    "raft": set(),
    "common": {"v1"},
    "domain": {"v1", "common"},
    "check": {"v1", "common"},
    "replication": {"v1", "raft", "common"},
}
#: Subpackages allowed more than their part.
SUBPACKAGE_ALLOWED = {"rangekv.raft.simulation": {"check"}}


def _imports(source: str, package: str) -> Iterator[tuple[int, str]]:
    """(line, module) of every `rangekv.*` import in `source`, a module of `package`
    (relative imports resolved; `from rangekv.x import y` counts as rangekv.x.y)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("rangekv."):
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.rsplit(".", node.level - 1)[0]
                module = f"{base}.{module}" if module else base
            if not module.startswith("rangekv."):
                continue
            if module.count(".") == 1:
                for alias in node.names:
                    yield node.lineno, f"{module}.{alias.name}"
            else:
                yield node.lineno, module


def _violations(part: str, sources: dict[str, tuple[str, str]]) -> list[str]:
    """The imports of `part`'s `sources` (name -> (package, text)) that break the layers."""
    out = []
    for name, (package, source) in sorted(sources.items()):
        allowed = LIB_ALLOWED.get(part, set()) | SUBPACKAGE_ALLOWED.get(package, set())
        for line, module in _imports(source, package):
            target = module.split(".")[1]
            if target == part or target not in PARTS:
                continue
            where = f"{name}:{line} imports {module}"
            if part in LIBS:
                if target not in allowed:
                    out.append(f"{where}: {package} may import only {sorted(allowed)}")
            elif target in SERVICES and module != f"rangekv.{target}.client":
                out.append(f"{where}: a service imports only another service's client")
            elif target == "cli":
                out.append(f"{where}: a service never imports the CLI")
    return out


def _sources(part: str) -> dict[str, tuple[str, str]]:
    base = ROOT / PARTS[part]
    out = {}
    for path in sorted(base.rglob("*.py")):
        sub = path.parent.relative_to(base).parts
        package = ".".join(("rangekv", part, *sub))
        out[str(path.relative_to(ROOT))] = (package, path.read_text())
    return out


@pytest.mark.parametrize("part", sorted(set(PARTS) - {"cli"}))
def test_every_part_imports_only_the_layers_below_it(part: str) -> None:
    sources = _sources(part)
    assert sources, f"no sources found for rangekv.{part}"
    assert _violations(part, sources) == []


def test_the_rule_sees_a_breach() -> None:
    """The check itself: what it must refuse, it refuses."""
    gw = "rangekv.gateway"
    bad = {
        "gateway/x.py": (gw, "from rangekv.metarange.records import IdKind\n"),
        "gateway/y.py": (gw, "from rangekv.metarange import client, state\n"),
        "gateway/z.py": (gw, "import rangekv.raftnode.store\n"),
    }
    assert _violations("gateway", bad) == [
        "gateway/x.py:1 imports rangekv.metarange.records: "
        "a service imports only another service's client",
        "gateway/y.py:1 imports rangekv.metarange.state: "
        "a service imports only another service's client",
        "gateway/z.py:1 imports rangekv.raftnode.store: "
        "a service imports only another service's client",
    ]
    repl, raft, domain = "rangekv.replication", "rangekv.raft", "rangekv.domain"
    assert _violations("replication", {"r.py": (repl, "from rangekv.domain.txn import T\n")})
    assert _violations("raft", {"r.py": (raft, "from ..common import errors\n")})  # relative
    assert not _violations(
        "raft", {"r.py": (f"{raft}.simulation", "from rangekv.check import C\n")}
    )
    assert _violations("raft", {"r.py": (raft, "from rangekv.check import C\n")})
    assert _violations("domain", {"d.py": (domain, "from rangekv.raftnode.keys import x\n")})
    assert not _violations("gateway", {"ok.py": (gw, "from rangekv.metarange.client import M\n")})
