"""CurveZMQ between real nodes: allowed keys replicate, an unknown key gets and changes
nothing, and no payload crosses loopback in the clear."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import zmq
import zmq.auth
from cluster_support import BIN, Cluster, ServeNode, same_state, wait_until

import crdtstore


def keygen(directory: Path, name: str) -> tuple[Path, Path]:
    out = subprocess.run(
        [str(BIN / "crdtstore"), "keygen", str(directory), name],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "public key" in out.stdout
    return directory / f"{name}.key", directory / f"{name}.key_secret"


def curve_config(secret: Path, allowed: Path) -> dict[str, str]:
    return {"secret_key": str(secret), "keys_dir": str(allowed)}


def secure_cluster(cluster: Cluster, root: Path) -> tuple[ServeNode, ServeNode, ServeNode]:
    """n1 and n2 allow each other; rogue holds a key pair nobody allows, and n1's key."""
    secrets, allowed, rogue_allowed = root / "secrets", root / "allowed", root / "rogue-allowed"
    allowed.mkdir()
    rogue_allowed.mkdir()
    for name in ("n1", "n2", "rogue"):
        public, _ = keygen(secrets, name)
        if name != "rogue":
            shutil.copy(public, allowed)
        shutil.copy(public, rogue_allowed)
    n1 = cluster.add("n1", seeds=[], **curve_config(secrets / "n1.key_secret", allowed))
    n2 = cluster.add(
        "n2", seeds=[f"n1@{n1.bind}"], **curve_config(secrets / "n2.key_secret", allowed)
    )
    rogue = cluster.add(
        "rogue",
        seeds=[f"n1@{n1.bind}"],
        **curve_config(secrets / "rogue.key_secret", rogue_allowed),
    )
    return n1, n2, rogue


def test_allowed_keys_replicate_and_an_unknown_key_gets_and_changes_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    n1, n2, rogue = secure_cluster(cluster, tmp_path)
    with crdtstore.open(n1.data) as h:
        h.lww_map("secrets")["db-password"] = "hunter2"
    with crdtstore.open(rogue.data) as h:
        h.lww_map("secrets")["db-password"] = "pwned"
        h.or_set("backdoor").add("rogue")
    wait_until(lambda: n2.dump("secrets"), "n2 receives n1's write over CURVE")
    # The rogue keeps knocking: wait until n1's ZAP handler refused it several times.
    wait_until(lambda: n1.counter("transport", "auth_failed") >= 3, "n1 refused the rogue")
    with crdtstore.open(n2.data) as h:
        h.lww_map("secrets")["marker"] = "after the rogue tried"
    wait_until(lambda: same_state([n1, n2], ["secrets"]), "n1 and n2 agree")

    assert [e["value"] for e in n1.dump("secrets") if e["key"] == "db-password"] == ["hunter2"]
    assert "backdoor" not in n1.namespaces() and "backdoor" not in n2.namespaces()
    assert [e["value"] for e in rogue.dump("secrets")] == ["pwned"]  # nothing reached it
    assert {m for m in n1.member_status()} == {"n1", "n2"}
    # The refusals are logged with the rogue's address and key, once a minute, not each.
    rogue_key = zmq.auth.load_certificate(str(tmp_path / "secrets" / "rogue.key"))[0].decode()
    said = [line for line in n1.log.read_text().splitlines() if "refused CURVE client" in line]
    assert len(said) == 1 < n1.counter("transport", "auth_failed"), said
    assert f"refused CURVE client 127.0.0.1 with public key {rogue_key}" in said[0]


class LoopbackCapture:
    """Every byte on the loopback interface while open (AF_PACKET: needs root)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.1)
        self.data = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.data += self.sock.recv(65_536)
            except TimeoutError:
                continue

    @contextmanager
    def running(self) -> Iterator[LoopbackCapture]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
            self.sock.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="a loopback packet capture needs root")
@pytest.mark.parametrize("curve", [False, True], ids=["plain", "curve"])
def test_payload_on_the_wire_is_readable_only_without_keys(
    cluster: Cluster, tmp_path: Path, curve: bool
) -> None:
    marker = f"MARKER-{os.getpid()}-{curve}-9f3a"
    if curve:
        n1, n2, _ = secure_cluster(cluster, tmp_path)
    else:
        n1, n2 = cluster.start(2)
    with LoopbackCapture().running() as capture:
        with crdtstore.open(n1.data) as h:
            h.lww_map("secrets")["token"] = marker
        wait_until(lambda: n2.dump("secrets"), "n2 receives the write")
        # A raw subscriber without keys gets nothing from n1's PUB either.
        raw = zmq.Context.instance().socket(zmq.SUB)
        raw.setsockopt(zmq.LINGER, 0)
        raw.setsockopt(zmq.SUBSCRIBE, b"")
        refused = n1.counter("transport", "handshake_failed")
        raw.connect(n1.status()["pub"])  # type: ignore[index]
        if curve:
            wait_until(
                lambda: n1.counter("transport", "handshake_failed") > refused,
                "n1's PUB refused the raw subscriber's handshake",
            )
        else:
            wait_until(lambda: raw.poll(100), "the raw subscriber receives (a heartbeat)")
        with crdtstore.open(n1.data) as h:
            h.lww_map("secrets")["token2"] = marker
        wait_until(lambda: len(n2.dump("secrets")) == 2, "n2 receives the second write")
        raw_got = b""
        while raw.poll(200):
            raw_got += b"".join(raw.recv_multipart())
        raw.close()
    seen = marker.encode() in bytes(capture.data)
    # The control (no keys) proves the capture sees replication traffic at all.
    assert seen is not curve
    assert (marker.encode() in raw_got) is not curve


def test_sighup_reloads_the_allow_list(cluster: Cluster, tmp_path: Path) -> None:
    secrets, allowed = tmp_path / "secrets", tmp_path / "allowed"
    allowed.mkdir()
    public1, secret1 = keygen(secrets, "n1")
    public2, secret2 = keygen(secrets, "n2")
    shutil.copy(public1, allowed)  # n2 not admitted yet
    late = tmp_path / "late-allowed"
    late.mkdir()
    shutil.copy(public1, late)
    shutil.copy(public2, late)
    n1 = cluster.add("n1", seeds=[], **curve_config(secret1, allowed))
    n2 = cluster.add("n2", seeds=[f"n1@{n1.bind}"], **curve_config(secret2, late))
    with crdtstore.open(n1.data) as h:
        h.or_set("s").add("hello")
    wait_until(lambda: n1.counter("transport", "auth_failed") >= 2, "n1 refused n2's key")
    assert n2.dump("s") == []
    shutil.copy(public2, allowed)
    assert n1.proc is not None
    n1.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: n2.dump("s"), "n2, admitted after SIGHUP, receives n1's state")
    assert n1.alive()
