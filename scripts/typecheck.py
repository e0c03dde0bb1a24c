"""Run mypy over the whole `rangekv` namespace as it is installed.

mypy cannot follow setuptools' package-dir mapping of an editable install, so
this builds a tree of symlinks (``.mypy_tree/rangekv/raft -> libs/raft``, ...)
from pyproject.toml's ``[tool.setuptools.package-dir]`` and checks the package
there. Usage: python scripts/typecheck.py [extra mypy args]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / ".mypy_tree"


def build_tree() -> None:
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ]
    if TREE.exists():
        shutil.rmtree(TREE)
    # Parents first, so that "rangekv" exists before "rangekv.raft" is linked inside it.
    for package in sorted(mapping, key=lambda p: p.count(".")):
        target = TREE.joinpath(*package.split("."))
        source = ROOT / mapping[package]
        if package.count(".") == 0:
            target.mkdir(parents=True)
            for item in source.iterdir():
                os.symlink(item, target / item.name)
        elif not target.exists():
            os.symlink(source, target, target_is_directory=True)


def main() -> int:
    build_tree()
    cmd = [sys.executable, "-m", "mypy", "-p", "rangekv", *sys.argv[1:]]
    env = dict(os.environ, MYPYPATH=str(TREE))
    return subprocess.call(cmd, cwd=ROOT, env=env)


if __name__ == "__main__":
    raise SystemExit(main())
