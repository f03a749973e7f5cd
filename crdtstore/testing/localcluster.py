"""A cluster of ``crdtstore serve`` processes on loopback, for tests, benchmarks and demos.

Each :class:`ServeNode` is a separate OS process holding its directory's network role,
started with the real command line and observed from outside: through ``crdt-inspect``
and the ``status.json`` the node refreshes, never through objects inside the process.
A node given faults runs ``python -m crdtstore.testing.serve``, the same command with
them installed (:mod:`crdtstore.testing.faults`).
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crdtstore.testing.faults import FaultSpec

BIN = Path(sys.executable).parent
DEFAULT_TIMEOUT = 60.0

# Router ports below the kernel's ephemeral range, so an OS-picked PUB port of one node
# can never take the ROUTER port chosen for another.
_ports = itertools.count(random.Random(os.getpid()).randrange(20_000, 30_000, 10))


def free_port() -> int:
    for port in _ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("unreachable")


def wait_until(
    condition: Callable[[], Any], what: str, timeout: float = DEFAULT_TIMEOUT, every: float = 0.05
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting until {what}")
        time.sleep(every)  # the polling interval of a bounded wait, not a stand-in


def inspect_json(data: Path, *args: str) -> Any:
    out = subprocess.run(
        [str(BIN / "crdt-inspect"), "--json", str(data), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if out.returncode != 0:
        raise AssertionError(f"crdt-inspect {data} {args} failed: {out.stderr}")
    return json.loads(out.stdout)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


class ServeNode:
    """One ``crdtstore serve`` process and its directory."""

    def __init__(
        self,
        root: Path,
        name: str,
        seeds: list[str],
        config: dict[str, Any] | None = None,
        log_level: str = "INFO",
        faults: FaultSpec | None = None,
    ) -> None:
        self.name = name
        self.faults = faults
        self.log_level = log_level
        self.data = root / name
        self.bind = f"tcp://127.0.0.1:{free_port()}"
        self.seeds = seeds
        self.config = dict(config or {})
        self.log = root / f"{name}.log"
        self.proc: subprocess.Popen[str] | None = None

    def command(self) -> list[str]:
        if self.faults is None:
            cmd = [sys.executable, "-m", "crdtstore.cli", "serve"]
        else:
            cmd = [sys.executable, "-m", "crdtstore.testing.serve", *self.faults.args()]
        cmd += [
            "--data",
            str(self.data),
            "--bind",
            self.bind,
            "--node-id",
            self.name,
            "--log-level",
            self.log_level,
        ]
        for seed in self.seeds:
            cmd += ["--seed", seed]
        if self.config:
            path = self.data.with_suffix(".toml")
            path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in self.config.items()))
            cmd += ["--config", str(path)]
        return cmd

    def start(self, timeout: float = 30.0) -> ServeNode:
        # A caller that dies mid-way (a failed benchmark, an interrupted test run) must not
        # leave daemons behind: reap whatever is still running when this process exits.
        atexit.register(self._reap)
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=subprocess.PIPE, stderr=log, text=True
            )
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = b""

        def ready() -> bool:
            nonlocal buf
            assert self.proc is not None
            if select.select([fd], [], [], 0)[0]:
                buf += os.read(fd, 4096)
            if b"READY" in buf:
                return True
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited: {self.log.read_text()[-3000:]}")
            return False

        wait_until(ready, f"{self.name} is READY", timeout)
        return self

    def _reap(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind runs in the node."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit code (0 for a clean stop)."""
        if self.proc is None or self.proc.poll() is not None:
            return 0 if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.name} did not stop within 30s of SIGTERM") from None

    def status(self) -> dict[str, Any] | None:
        """The live status the node writes into its directory (None until the first one)."""
        try:
            status: dict[str, Any] = json.loads((self.data / "status.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return status

    def counter(self, layer: str, name: str) -> int:
        status = self.status()
        return 0 if status is None else int(status.get(layer, {}).get(name, 0))

    def member_status(self) -> dict[str, tuple[str, int]]:
        """node id -> (status, incarnation), as this node sees the cluster right now."""
        status = self.status()
        if status is None:
            return {}
        return {m["node_id"]: (m["status"], m["incarnation"]) for m in status["members"]}

    def dump(self, namespace: str) -> list[dict[str, Any]]:
        """Every entry of ``namespace`` on this node's disk ([] if it does not exist)."""
        summary = inspect_json(self.data)
        if namespace not in summary["namespaces"]:
            return []
        entries: list[dict[str, Any]] = inspect_json(self.data, "dump", namespace)["entries"]
        return entries

    def namespaces(self) -> dict[str, Any]:
        result: dict[str, Any] = inspect_json(self.data)["namespaces"]
        return result


def same_state(nodes: list[ServeNode], namespaces: list[str]) -> bool:
    """Whether every node holds identical entries (keys, values and dots) in each namespace."""
    for ns in namespaces:
        first = nodes[0].dump(ns)
        if any(node.dump(ns) != first for node in nodes[1:]):
            return False
    return True
