"""systemd readiness, stop and watchdog notices from ``crdtstore serve``, received on a
real AF_UNIX datagram socket named by ``NOTIFY_SOCKET`` (a path, or abstract with '@')."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from crdtstore.testing.localcluster import ServeNode, wait_until


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    short = tempfile.mkdtemp(prefix="sd", dir="/tmp")  # sun_path holds 108 bytes at most
    try:
        if request.param == "path":
            name = os.path.join(short, "notify")
            sock.bind(name)
        else:
            name = f"@crdtstore-test-{os.getpid()}-{id(sock)}"
            sock.bind("\0" + name[1:])
        sock.setblocking(False)
        yield sock, name
    finally:
        sock.close()
        shutil.rmtree(short)


def test_ready_watchdog_and_stopping_reach_notify_socket(
    tmp_path: Path,
    notify_socket: tuple[socket.socket, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sock, name = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", name)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    got: list[str] = []

    def received(text: str, count: int = 1) -> bool:
        try:
            while True:
                got.append(sock.recv(4096).decode())
        except BlockingIOError:
            pass
        return sum(1 for g in got if text in g.splitlines()) >= count

    node = ServeNode(tmp_path, "n1", [])
    node.start()
    try:
        wait_until(lambda: received("READY=1"), "READY=1 arrives")
        ready = next(g for g in got if "READY=1" in g.splitlines())
        assert f"MAINPID={node.pid}" in ready.splitlines()
        assert not any("STOPPING=1" in g for g in got)
        wait_until(lambda: received("WATCHDOG=1", 3), "the watchdog is pinged")
    finally:
        assert node.stop() == 0
    wait_until(lambda: received("STOPPING=1"), "STOPPING=1 arrives")
    assert got.index(ready) < next(i for i, g in enumerate(got) if "STOPPING=1" in g)


def test_without_notify_socket_serve_runs_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    node = ServeNode(tmp_path, "n1", [])
    node.start()
    assert node.stop() == 0
    assert "sd_notify" not in node.log.read_text()
