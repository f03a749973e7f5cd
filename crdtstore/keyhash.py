"""The hashes of keys and entries as bytes: the one definition of the bucket rule.

:mod:`crdtstore.sync.fingerprint` states what the hashes are (``key_hash``,
``entry_hash``; its docstring gives the reasons for the bucket rule); this module computes
them on a key's encoding in the form the codec and the storage kernel need, and holds the
bucket rule itself, which both import. Invariants, held by tests/storage/test_storage_kernel.py
against the fingerprint module:

- ``hash_key_encoding(ekey)`` is ``(h, bucket, cut)``: ``bucket`` is the first byte of
  ``key_hash`` as one byte, and ``h`` a blake2b of 8-byte digests that has hashed all of
  ``ekey``, whose digest's lower 56 bits are ``key_hash``'s;
- continuing that ``h`` with the dots of an entry, in (replica, seq) order, gives
  ``entry_hash`` as 8 bytes (:func:`continue_entry_hash`, :func:`entry_digest`).

Layer: below :mod:`crdtstore.codec` (which checks received entries with these), so it
imports nothing of the package.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from hashlib import blake2b
from typing import Any

new_hash = blake2b(digest_size=8).copy
"""A fresh blake2b of 8-byte digests, the hash of keys and entries, made by copying an
empty one: ``blake2b(digest_size=8)`` parses its keyword at every call."""


def hash_key_encoding(ekey: bytes) -> tuple[Any, bytes, int]:
    """``(h, bucket, cut)`` of the key whose encoding is ``ekey``: the hash of all of
    ``ekey``, still open for an entry hash to continue, the key's bucket (the first byte
    of ``key_hash``), and where the bucket rule cuts ``ekey``.

    The bucket rule: a key's bucket hashes its encoding less its last byte, or less its
    last two when both are ASCII digits and a byte at least comes before them
    (``ekey[:cut]``; the reasons are :mod:`crdtstore.sync.fingerprint`'s). It is here, in
    the function every key's hashing calls, rather than in a function of its own: the
    hot paths (a local write, a received entry) then pay one call for both."""
    cut = -2 if len(ekey) > 2 and 48 <= ekey[-1] <= 57 and 48 <= ekey[-2] <= 57 else -1
    h = new_hash()
    h.update(ekey[:cut])
    bucket = h.digest()[:1]
    h.update(ekey[cut:])
    return h, bucket, cut


def bucket_part(ekey: bytes) -> bytes:
    """What the bucket of the key whose encoding is ``ekey`` hashes (by the rule of
    :func:`hash_key_encoding`, whose hashing is wasted here: no hot path calls this)."""
    return ekey[: hash_key_encoding(ekey)[2]]


def continue_entry_hash(h: Any, ordered: Iterable[Sequence[Any]]) -> bytes:
    """The entry hash (8 bytes) of the key ``h`` has hashed, with the dots ``ordered``
    (each ``(replica, seq, ...)``, in (replica, seq) order). Consumes ``h``.

    A dot adds its replica's UTF-8, a NUL, and its seq in 8 big-endian bytes (as
    ``fingerprint.entry_hash``); :func:`dot_packer` is the same rule, by replica."""
    update = h.update
    for d in ordered:
        update(d[0].encode() + b"\0" + d[1].to_bytes(8, "big"))
    digest: bytes = h.digest()
    return digest


def dot_packer(replica: str) -> tuple[bytes, Callable[[bytes, int], bytes]]:
    """``(tag, pack)``: ``pack(tag, seq)`` is what the dot ``(replica, seq)`` adds to an
    entry hash (the rule of :func:`continue_entry_hash`) in one C call: for a loop that
    hashes many dots of a few replicas (a writer's own, a received batch's), with no
    frame per dot."""
    tag = replica.encode() + b"\0"
    return tag, struct.Struct(f">{len(tag)}sQ").pack


def entry_digest(ekey: bytes, ordered: Iterable[Sequence[Any]]) -> bytes:
    """The entry hash as a row stores it (8 bytes) of the key whose encoding is ``ekey``,
    with the dots ``ordered`` (see :func:`continue_entry_hash`)."""
    h = new_hash()
    h.update(ekey)
    return continue_entry_hash(h, ordered)
