"""The status query: an operator's tool asks a running node, over its ROUTER, for the
status it writes into ``status.json`` (``crdt-inspect status --connect``, ``crdtstore
members --connect``).

Wire format, on the replicator's query channel ``Q``. Request: exactly ``Q 0x01 "status"``
(any other body is refused and counted, never interpreted). Reply: ``Q 0x01`` then the
status as a UTF-8 JSON object. Both sides treat every byte as untrusted: the node answers
only the one request it knows and never a sender that is a member (a client could borrow a
member's id to have the answer sent to that member); the client accepts one reply of at
most ``MAX_REPLY_BYTES``, that must be a JSON object, within its timeout. With CURVE the
client presents a key the node's allow-list holds, like any peer.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

CHANNEL_QUERY = b"Q"
VERSION = b"\x01"
STATUS_REQUEST = CHANNEL_QUERY + VERSION + b"status"
MAX_REPLY_BYTES = 64 * 1024 * 1024
"""Largest status reply a client takes: tens of bytes per counter, about 400 per member."""


class QueryError(Exception):
    """No usable answer: unreachable, timed out, refused, or a malformed reply."""


def is_status_request(body: bytes) -> bool:
    """``body``: the payload after the channel byte."""
    return body == STATUS_REQUEST[1:]


def encode_status_reply(status: dict[str, Any]) -> bytes:
    return CHANNEL_QUERY + VERSION + json.dumps(status, sort_keys=True).encode()


def decode_status_reply(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_REPLY_BYTES:
        raise QueryError(f"reply of {len(payload)} bytes exceeds {MAX_REPLY_BYTES}")
    if payload[:2] != CHANNEL_QUERY + VERSION:
        raise QueryError(f"not a status reply (starts {payload[:2]!r})")
    try:
        status = json.loads(payload[2:].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise QueryError(f"malformed status reply: {exc}") from None
    if not isinstance(status, dict) or not isinstance(status.get("members"), list):
        raise QueryError("malformed status reply: not a status object")
    return status


def ask_status(
    address: str,
    timeout_s: float = 5.0,
    secret_key: str | None = None,
    server_key: str | None = None,
) -> dict[str, Any]:
    """Ask the node serving ``address`` (its ROUTER) for its status. With CURVE:
    ``secret_key`` is this client's ``.key_secret`` file (its public key must be in the
    node's keys directory), ``server_key`` the node's public ``.key`` file."""
    import zmq
    import zmq.auth

    if (secret_key is None) != (server_key is None):
        raise QueryError("--secret-key and --server-key go together (CURVE)")
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_REPLY_BYTES + 2)
        # A fresh id: never a member's, and never another client's waiting for its answer.
        sock.setsockopt(zmq.ROUTING_ID, b"status-query-" + secrets.token_hex(8).encode())
        if secret_key is not None and server_key is not None:
            try:
                public, secret = zmq.auth.load_certificate(secret_key)
                server_public, _ = zmq.auth.load_certificate(server_key)
            except (OSError, ValueError) as exc:
                raise QueryError(f"cannot load CURVE keys: {exc}") from None
            if secret is None:
                raise QueryError(f"{secret_key} holds no secret key")
            sock.curve_publickey, sock.curve_secretkey = public, secret
            sock.curve_serverkey = server_public
        try:
            sock.connect(address)
        except zmq.ZMQError as exc:
            raise QueryError(f"cannot connect to {address!r}: {exc}") from None
        sock.send(STATUS_REQUEST)
        if not sock.poll(int(timeout_s * 1000)):
            raise QueryError(
                f"no answer from {address} within {timeout_s:g}s (not running, not a node, "
                "or refused: with CURVE, is this client's key in its keys directory?)"
            )
        frames = sock.recv_multipart()
    finally:
        ctx.destroy(linger=0)
    if len(frames) != 1:
        raise QueryError(f"malformed status reply: {len(frames)} frames")
    return decode_status_reply(frames[0])
