"""Suite-wide settings and fixtures.

Hypothesis profiles, selected by HYPOTHESIS_PROFILE: ``dev`` (the default) keeps a local
run quick; ``ci`` searches more examples and is derandomized so that a CI failure
reproduces exactly. ``make test`` selects ``ci``.

Fixtures shared by the storage and API tests: real node directories under tmp_path, and
child interpreters for behaviour between processes.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from crdtstore.settings import NodeSettings
from crdtstore.storage import LMDBReplica
from crdtstore.testing.localcluster import wait_until

settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def make_replica(tmp_path: Path) -> Iterator[Callable[..., LMDBReplica]]:
    opened: list[LMDBReplica] = []

    def make(name: str = "n", node_id: str | None = None, **settings: object) -> LMDBReplica:
        replica = LMDBReplica(tmp_path / name, node_id or name, NodeSettings.from_mapping(settings))
        opened.append(replica)
        return replica

    yield make
    for replica in opened:
        replica.close()


def _spawn(script: str, *args: str) -> subprocess.Popen[str]:
    """Run ``script`` (Python source) in a child interpreter; stdout is a text pipe."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for(
    condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition"
) -> None:
    """Poll ``condition`` until true; fail after ``timeout`` seconds (a bound, not a sleep)."""
    wait_until(condition, what, timeout, every=0.01)


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start child interpreters; any still running at the end are killed and reaped."""
    children: list[subprocess.Popen[str]] = []

    def start(script: str, *args: str) -> subprocess.Popen[str]:
        child = _spawn(script, *args)
        children.append(child)
        return child

    yield start
    for child in children:
        if child.poll() is None:
            child.kill()
        child.communicate()


@pytest.fixture
def wait_for() -> Callable[..., None]:
    return _wait_for


class Lines:
    """A child's stdout lines, read by a thread so the test can wait with a bound."""

    def __init__(self, child: subprocess.Popen[str]) -> None:
        self.child = child
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.child.stdout is not None
        for line in self.child.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def next(self, timeout: float = 20.0) -> str | None:
        """The next line; None at end of output; AssertionError after ``timeout``."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            stderr = (
                self.child.stderr.read()
                if self.child.poll() is not None and self.child.stderr
                else ""
            )
            raise AssertionError(
                f"no line from child within {timeout} s; stderr: {stderr}"
            ) from None

    def expect(self, prefix: str, timeout: float = 20.0) -> str:
        line = self.next(timeout)
        if line is None or not line.startswith(prefix):
            err = (
                self.child.stderr.read()
                if self.child.stderr and self.child.poll() is not None
                else ""
            )
            raise AssertionError(f"expected {prefix!r} from child, got {line!r}; stderr: {err}")
        return line

    def rest(self) -> list[str]:
        """Every remaining line, once the child has exited."""
        out = []
        while (line := self.next()) is not None:
            out.append(line)
        return out


@pytest.fixture
def lines() -> type[Lines]:
    return Lines
