"""The README's first command, run the way a new user runs it.

Slow (minutes: it creates a virtualenv in a fresh clone and installs every
dependency from the package registry), so it runs only with RANGEKV_SLOW=1
(see tests/conftest.py):

    RANGEKV_SLOW=1 .venv/bin/pytest tests/integration/test_readme.py

It clones the committed HEAD of this repository (uncommitted work is not what
a new user gets), runs the first command of the README's first code block
with a private data folder and port, waits for the ready screen, writes and
reads through the clone's own CLI and through grpcurl, stops it with SIGINT
(Ctrl-C), starts it again on the same folder and reads the data back.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dev_process import DevProcess, find_grpcurl, free_port, grpcurl_runs, printed_grpcurl_flags

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT = 1800.0  # first start: venv + pip install from the registry
RESTART_TIMEOUT = 300.0


def readme_first_command(readme: Path) -> str:
    """The first line of the README's first fenced code block, comment stripped."""
    match = re.search(r"```[a-z]*\n(.*?)```", readme.read_text(), re.S)
    assert match, "README.md has no code block"
    first = next(line for line in match.group(1).splitlines() if line.strip())
    return first.split("#", 1)[0].strip()


def new_user_env(home: Path) -> dict[str, str]:
    """The caller's environment minus everything that would leak our own install."""
    ours = str(Path(sys.executable).parent)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RANGEKV_", "PYTEST_", "VIRTUAL_ENV", "PYTHON"))
    }
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != ours)
    env["HOME"] = env.get("HOME", str(home))  # pip's cache stays the user's cache
    return env


def test_readme_first_command(tmp_path: Path) -> None:
    t0 = time.monotonic()
    command = readme_first_command(REPO / "README.md")
    assert command.startswith("./scripts/dev.sh"), command
    clone = tmp_path / "rangekv"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=300)
    assert not (clone / ".venv").exists()

    data = tmp_path / "data"
    port = free_port()
    addr = f"127.0.0.1:{port}"
    env = new_user_env(tmp_path)
    argv = [*shlex.split(command), "--data", str(data), "--port", str(port)]
    log = tmp_path / "dev-stdout.log"
    cli = clone / ".venv" / "bin" / "rangekv"

    def rangekv(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(cli), *args, "--addr", addr, "--data", str(data)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )

    first = DevProcess(argv, cwd=clone, env=env, log_path=log)
    try:
        first.wait_ready(INSTALL_TIMEOUT)
        t_ready = time.monotonic() - t0
        assert (clone / ".venv" / "bin" / "python").exists()
        assert f"gateway      {addr}" in first.output

        put = rangekv("put", "readme/cli", "from the CLI")
        assert put.returncode == 0, put.stderr
        got = rangekv("get", "readme/cli")
        assert (got.returncode, got.stdout) == (0, "from the CLI\n"), got.stderr

        # grpcurl: the clone's own (dev extra) if it has one, else ours.
        grpcurl = clone / ".venv" / "bin" / "grpcurl"
        exe = str(grpcurl) if grpcurl.exists() else find_grpcurl()
        why_not = grpcurl_runs(exe)
        if not why_not:
            assert exe is not None
            flags = printed_grpcurl_flags(first.output)
            body = {"key": _b64(b"readme/grpcurl"), "value": _b64(b"from grpcurl")}
            done = subprocess.run(
                [exe, *flags, "-d", json.dumps(body), addr, "rangekv.v1.KV/Put"],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
            )
            assert done.returncode == 0, done.stderr
            done = subprocess.run(
                [
                    exe,
                    *flags,
                    "-d",
                    json.dumps({"key": _b64(b"readme/cli")}),
                    addr,
                    "rangekv.v1.KV/Get",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
            )
            assert done.returncode == 0, done.stderr
            assert base64.b64decode(json.loads(done.stdout)["kv"]["value"]) == b"from the CLI"
            got = rangekv("get", "readme/grpcurl")
            assert got.stdout == "from grpcurl\n", got.stderr

        # Ctrl-C: a clean stop, and nothing left running.
        assert first.stop(signal.SIGINT, timeout=120) == 0, first.output
        assert "rangekv dev: stopped" in first.output
    finally:
        first.close()
    t_stopped = time.monotonic() - t0

    again = DevProcess(argv, cwd=clone, env=env, log_path=log)
    try:
        again.wait_ready(RESTART_TIMEOUT)
        t_restarted = time.monotonic() - t0
        got = rangekv("get", "readme/cli")
        assert (got.returncode, got.stdout) == (0, "from the CLI\n"), got.stderr
        if not why_not:
            got = rangekv("get", "readme/grpcurl")
            assert got.stdout == "from grpcurl\n", got.stderr
        assert again.stop(signal.SIGINT, timeout=120) == 0, again.output
    finally:
        again.close()
    print(
        f"\nREADME first command: ready after {t_ready:.0f}s (clone + venv + install + start), "
        f"stopped at {t_stopped:.0f}s, ready again at {t_restarted:.0f}s, "
        f"total {time.monotonic() - t0:.0f}s; grpcurl: {why_not or exe}"
    )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()
