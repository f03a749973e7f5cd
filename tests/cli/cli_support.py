"""The real ``crdtstore`` command, run as a subprocess, as an operator's shell runs it.

Imported by name (``from cli_support import ...``): a module name no other test directory
uses, unlike ``conftest`` (two test directories' ``conftest`` modules collide when pytest
is given both directories).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
from typing import Any

from crdtstore.testing.localcluster import BIN, ServeNode, wait_until

CRDTSTORE = str(BIN / "crdtstore")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CRDTSTORE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=None if env is None else {**os.environ, **env},
    )


def run_json(*args: str) -> Any:
    done = run(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


class Lines:
    """A running command's stdout, read line by line with a bound on every wait."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self._fd = proc.stdout.fileno()
        self._buf = b""

    def next(self, what: str) -> str:
        def line() -> str | None:
            if b"\n" not in self._buf and select.select([self._fd], [], [], 0.05)[0]:
                chunk = os.read(self._fd, 65536)
                if not chunk and self.proc.poll() is not None:
                    raise AssertionError(f"the command exited ({self.proc.returncode})")
                self._buf += chunk
            if b"\n" in self._buf:
                first, self._buf = self._buf.split(b"\n", 1)
                return first.decode()
            return None

        result: str = wait_until(line, what)
        return result

    def next_json(self, what: str) -> Any:
        return json.loads(self.next(what))


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [CRDTSTORE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_stderr(proc: subprocess.Popen[str], text: str) -> None:
    """Until ``proc`` wrote ``text`` on stderr (the streaming commands say when they
    are subscribed there)."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    seen = b""

    def said() -> bool:
        nonlocal seen
        if select.select([fd], [], [], 0.05)[0]:
            seen += os.read(fd, 4096)
        if proc.poll() is not None and text.encode() not in seen:
            raise AssertionError(f"exited: {seen.decode()}")
        return text.encode() in seen

    wait_until(said, f"the command says {text!r}")


class FlaggedNode(ServeNode):
    """A ``crdtstore serve`` with extra command-line flags."""

    def __init__(self, *args: Any, flags: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.flags = list(flags or [])

    def command(self) -> list[str]:
        return [*super().command(), *self.flags]
