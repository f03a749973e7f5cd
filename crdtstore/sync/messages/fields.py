"""What every protocol message shares: the kind registry and the strict field checks.

Invariants:

- Each message kind names one class, registered by :func:`register` (two kinds may
  not share a name: a later registration of a kind would replace the earlier one).
- A field check returns the value or raises :class:`~crdtstore.errors.DecodeError`
  naming the field and the bound, and nothing else: namespaces are 1 to
  :data:`MAX_NAMESPACE_LEN` bytes, key-hash ranges are non-empty and within 64 bits (they
  travel as ``[lo, last]``, ``last = hi - 1`` inclusive, since the exclusive bound of the
  whole space, 2**64, does not fit msgpack's uint64).
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from crdtstore.codec import (
    DEFAULT_LIMITS,
    expect,
    expect_int,
    expect_replica,
)
from crdtstore.errors import DecodeError
from crdtstore.sync.digests import VV_HASH_BYTES

MAX_NAMESPACE_LEN = 255


def expect_namespace(obj: Any) -> str:
    name: str = expect(obj, str, "namespace")
    if not name or len(name.encode()) > MAX_NAMESPACE_LEN:
        raise DecodeError(f"namespace length outside [1, {MAX_NAMESPACE_LEN}] bytes")
    return name


class Message(Protocol):
    KIND: ClassVar[str]

    def to_wire(self) -> list[Any]: ...


MESSAGE_TYPES: dict[str, Any] = {}
"""Message kind -> class, filled by :func:`register` as each module of messages loads."""


def register(cls: Any) -> Any:
    """Class decorator: make a message kind decodable."""
    MESSAGE_TYPES[cls.KIND] = cls
    return cls


HASH_MAX = (1 << 64) - 1
MAX_RANGE_ITEMS = 65_536
MAX_SHIPPED_ENTRIES = DEFAULT_LIMITS.max_container_len


def expect_range(lo_obj: Any, last_obj: Any) -> tuple[int, int]:
    lo = expect_int(lo_obj, "range start", 0, HASH_MAX)
    last = expect_int(last_obj, "range end", 0, HASH_MAX)
    if last < lo:
        raise DecodeError(f"key range [{lo}, {last}] is empty")
    return lo, last + 1


def expect_vv(obj: Any) -> dict[str, int]:
    return {
        expect_replica(r, "digest origin"): expect_int(s, "digest seq")
        for r, s in expect(obj, dict, "version vector").items()
    }


def expect_hash(obj: Any) -> bytes:
    digest: bytes = expect(obj, bytes, "version vector hash")
    if len(digest) != VV_HASH_BYTES:
        raise DecodeError(f"a version vector hash is {VV_HASH_BYTES} bytes, not {len(digest)}")
    return digest
