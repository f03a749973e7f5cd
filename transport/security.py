"""CurveZMQ keys and the ZAP allow-list.

Invariants:
- With CURVE on, every server socket (ROUTER, PUB) authenticates each client key against
  the ``*.key`` certificates in ``CurveKeys.keys_dir`` through pyzmq's ZAP handler
  (``zmq.auth.thread.ThreadAuthenticator``); a client whose key is not there completes no
  handshake, so it receives no published frame and none of its frames are delivered.
- The allow-list fails closed: a missing or unreadable ``keys_dir`` admits nobody.
- Keys are z85 text (40 bytes), the format ``zmq.auth`` certificates store.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

import zmq
import zmq.auth
import zmq.utils.z85

from transport.errors import TransportError

ZAP_DOMAIN = "*"
"""The allow-list applies to every ZAP domain: the transport sets none of its own."""


@dataclass(frozen=True)
class CurveKeys:
    """CurveZMQ configuration of one node."""

    public: bytes
    """This node's public key, z85 (40 bytes)."""

    secret: bytes
    """This node's secret key, z85 (40 bytes)."""

    keys_dir: str
    """Directory of the allowed peers' public key files (``zmq.auth`` certificates,
    ``*.key``). Re-read by ``Transport.reload_keys``."""

    def __repr__(self) -> str:
        # A repr ends up in logs and tracebacks; the secret key must not.
        return f"CurveKeys(public={self.public!r}, secret=<hidden>, keys_dir={self.keys_dir!r})"


def generate_keypair(directory: str | os.PathLike[str], name: str) -> tuple[str, str]:
    """Write ``name.key`` (public) and ``name.key_secret`` into ``directory``.

    Returns the two paths, public first. The directory is created if missing. The secret
    file is created with mode 0600 (never readable by others, not even for a moment) and
    neither file may exist already (``FileExistsError``): a key is never overwritten.
    The format is the ZPL certificate that ``zmq.auth.load_certificate`` reads.
    """
    os.makedirs(directory, exist_ok=True)
    public, secret = zmq.curve_keypair()
    base = os.path.join(directory, name)
    public_file, secret_file = f"{base}.key", f"{base}.key_secret"
    for path in (public_file, secret_file):
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "exists", path)
    _write_certificate(secret_file, 0o600, public, secret)
    _write_certificate(public_file, 0o644, public, None)
    return public_file, secret_file


def _write_certificate(path: str, mode: int, public: bytes, secret: bytes | None) -> None:
    lines = ["#   ZeroMQ CURVE certificate, made by crdtstore keygen", "metadata", "curve"]
    lines.append(f'    public-key = "{public.decode("ascii")}"')
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode("ascii")}"')
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write("\n".join(lines) + "\n")


def load_keys(
    secret_key_file: str | os.PathLike[str], keys_dir: str | os.PathLike[str]
) -> CurveKeys:
    """Read this node's key pair from its ``.key_secret`` file; peers' keys from ``keys_dir``."""
    try:
        public, secret = zmq.auth.load_certificate(secret_key_file)
    except (OSError, ValueError) as exc:
        raise TransportError(
            f"cannot load CURVE key pair from {str(secret_key_file)!r}: {exc}"
        ) from exc
    if secret is None:
        raise TransportError(
            f"{str(secret_key_file)!r} holds no secret key (is it the public .key file?)"
        )
    if not os.path.isdir(keys_dir):
        raise TransportError(f"CURVE keys_dir {str(keys_dir)!r} is not a directory")
    return CurveKeys(public=public, secret=secret, keys_dir=str(keys_dir))


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    """The public key of a ``.key`` file (raises OSError or ValueError if unreadable)."""
    public, _ = zmq.auth.load_certificate(path)
    return bytes(public)


def z85_text(key: bytes) -> str:
    """The ``User-Id`` form of a key: what the ZAP handler reports for an authenticated client."""
    if len(key) == 32:
        key = zmq.utils.z85.encode(key)
    return key.decode("ascii")


class KeyAllowList:
    """The ZAP handler of one ZeroMQ context, allowing the keys found in ``keys_dir``.

    Must be started before any CURVE server socket of the context binds: libzmq lets every
    client in when no ZAP handler is listening.
    """

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], keys_dir: str) -> None:
        # Imported here: zmq.auth.thread imports asyncio, a large share of a node's
        # start-up imports, and only a node with CURVE keys needs it.
        from transport.zap import LoggingAuthenticator

        self._keys_dir = keys_dir
        self._auth = LoggingAuthenticator(context, ZAP_DOMAIN)

    def start(self) -> None:
        self._auth.start()
        self.reload()

    def reload(self) -> None:
        """Re-read ``keys_dir``; connections already authenticated are not re-checked."""
        if not os.path.isdir(self._keys_dir):
            # configure_curve would only log and keep the old list; say so to the caller.
            self._auth.certs[ZAP_DOMAIN] = {}
            raise TransportError(f"CURVE keys_dir {self._keys_dir!r} is not a directory")
        self._auth.configure_curve(domain=ZAP_DOMAIN, location=self._keys_dir)

    def stop(self) -> None:
        self._auth.stop()
