"""Nodes and clients as OS processes: started, signalled, restarted and reaped.

A node is ``crdtstore serve`` run by ``ip netns exec`` inside its namespace (``ip``
execs the command, so the pid we hold is the node's own and signals reach it). A client
is ``python -m chaos.client`` on the host: it needs no network, only the node's directory.

Each process knows whether its exit was asked for. One that exits on its own (a crash,
an abort in libzmq) is an *unexpected exit*, which the run reports as a failure and
answers the way a supervisor would: by starting the process again.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from crdtstore.testing.localcluster import wait_until

REPO = Path(__file__).resolve().parents[1]
NODE_PORT = 7100
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


def child_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


@dataclass(frozen=True, slots=True)
class Exit:
    """An exit nobody asked for."""

    name: str
    returncode: int
    log_tail: str

    def describe(self) -> str:
        how = (
            f"signal {signal.Signals(-self.returncode).name}"
            if self.returncode < 0
            else f"exit {self.returncode}"
        )
        return f"{self.name}: {how}"


@dataclass
class Process(ABC):
    """One OS process of the run (node, client or the delay line) and its log file."""

    name: str
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    paused: bool = False
    down: bool = False
    """Killed on purpose and not restarted yet."""
    unexpected: list[Exit] = field(default_factory=list)
    last_words: str = ""
    """What a process that announces READY printed after it, up to a stop we asked for."""
    announces_ready = False
    """Whether the process prints ``READY`` on stdout once it serves (start waits for it)."""

    @abstractmethod
    def command(self) -> list[str]:
        """The argv that starts the process."""

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.popen = subprocess.Popen(
                self.command(),
                stdout=subprocess.PIPE if self.announces_ready else log,
                stderr=log,
                env=child_env(),
                cwd=REPO,
                start_new_session=True,  # a Ctrl-C at the terminal reaches the runner only
            )
        self.paused = self.down = False
        if self.announces_ready:
            self._wait_ready()

    def _wait_ready(self) -> None:
        assert self.popen is not None and self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        buf = b""

        def ready() -> bool:
            nonlocal buf
            if select.select([fd], [], [], 0.1)[0]:
                buf += os.read(fd, 4096)
            if b"READY" in buf:
                return True
            if not self.running():
                raise RuntimeError(f"{self.name} exited before READY; see {self.log}")
            return False

        # select() above waits up to 0.1 s for output: the poll needs no other pause.
        wait_until(ready, f"{self.name} is READY", READY_TIMEOUT_S, every=0)

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.running():
            os.kill(self.pid, sig)

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.signal(signal.SIGCONT)
        self.paused = False

    def kill(self) -> None:
        """SIGKILL and reap: nothing in the process gets to clean up."""
        if self.popen is None:
            return
        self.signal(signal.SIGKILL)
        self.popen.wait(timeout=STOP_TIMEOUT_S)
        self._close_pipe()
        self.paused = False
        self.down = True

    def stop(self) -> int | None:
        """SIGCONT, SIGTERM and wait (bounded; then SIGKILL). The exit code, or None if
        the process had to be killed; 0 for one that was already down on purpose."""
        if self.popen is None or self.down:
            return 0
        if self.running():
            self.resume()
            self.signal(signal.SIGTERM)
        try:
            code: int | None = self.popen.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            code = None
        if self.announces_ready and self.popen.stdout is not None:
            self.last_words = self.popen.stdout.read().decode(errors="replace")
        self._close_pipe()
        self.down = True
        return code

    def _close_pipe(self) -> None:
        if self.popen is not None and self.popen.stdout is not None:
            self.popen.stdout.close()

    def exited_unexpectedly(self) -> Exit | None:
        """If the process is gone and nobody asked it to go: the record of that exit."""
        if self.popen is None or self.down or self.popen.poll() is None:
            return None
        tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        found = Exit(self.name, self.popen.returncode, tail)
        self.unexpected.append(found)
        self._close_pipe()
        self.down = True
        return found


@dataclass
class NodeProcess(Process):
    announces_ready = True
    namespace: str = ""
    address: str = ""
    data: Path = Path()
    seeds: tuple[str, ...] = ()

    @property
    def bind(self) -> str:
        return f"tcp://{self.address}:{NODE_PORT}"

    def command(self) -> list[str]:
        cmd = ["ip", "netns", "exec", self.namespace, sys.executable, "-m", "crdtstore.cli"]
        cmd += ["serve", "--data", str(self.data), "--bind", self.bind, "--node-id", self.name]
        for seed in self.seeds:
            cmd += ["--seed", seed]
        return cmd


@dataclass
class DelayerProcess(Process):
    """The delay line (:mod:`chaos.delayer`), inside the hub namespace."""

    announces_ready = True
    namespace: str = ""
    tap: str = ""
    seed: int = 0
    min_ms: float = 20.0
    max_ms: float = 300.0

    def command(self) -> list[str]:
        return [
            "ip",
            "netns",
            "exec",
            self.namespace,
            sys.executable,
            "-m",
            "chaos.delayer",
            "--tap",
            self.tap,
            "--seed",
            str(self.seed),
            "--min-ms",
            str(self.min_ms),
            "--max-ms",
            str(self.max_ms),
        ]


@dataclass
class ClientProcess(Process):
    client: str = ""
    node: str = ""
    data: Path = Path()
    history_dir: Path = Path()
    seed: int = 0
    rate: float = 20.0
    incarnation: int = 0

    @property
    def process(self) -> str:
        return f"{self.client}.{self.incarnation}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "chaos.client",
            "--data",
            str(self.data),
            "--node",
            self.node,
            "--client",
            self.client,
            "--process",
            self.process,
            "--history",
            str(self.history_dir / f"{self.process}.jsonl"),
            "--seed",
            str(self.seed),
            "--rate",
            str(self.rate),
        ]

    def restart(self) -> None:
        """A new incarnation: a new process, with its own history file."""
        self.incarnation += 1
        self.start()
