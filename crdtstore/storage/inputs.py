"""Keys and values from the API, checked and encoded before anything is written.

Rule: a key or value that a peer's decoder would refuse (:func:`crdtstore.codec.unpack`,
``check_depth``, ``check_key``), or that exceeds a size setting, raises
:class:`~crdtstore.errors.InvalidValue` or :class:`~crdtstore.errors.ValueTooLarge` here,
naming the value and the limit, and nothing is written: stored, it could never be read
or replicated again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgpack

from crdtstore.crdt import check_key
from crdtstore.crdt.dotmap import MAX_INT_KEY, MIN_INT_KEY
from crdtstore.errors import InvalidValue, ValueTooLarge
from crdtstore.storage import layout

if TYPE_CHECKING:
    from crdtstore.settings import NodeSettings

SCALARS = (str, int, float, bytes, bool, type(None))
"""The exact types of values that pack with no walk, checked by their size alone."""
_EXTENSIONS = (msgpack.ExtType, msgpack.Timestamp)
"""What msgpack packs as an extension type, which no decoder of a row or of the wire
accepts: stored, the key could then be neither read nor written again."""
_CHECKED = (list, tuple, dict, *_EXTENSIONS)
"""What :func:`check_value` walks into or refuses."""


def encode_key(key: object, settings: NodeSettings) -> bytes:
    kt = type(key)
    # ``kt is int`` (exact type, not isinstance: a bool is refused below) does not narrow
    # ``key`` for mypy, hence the ignore on the bounds check.
    if not (kt is str or kt is bytes or (kt is int and MIN_INT_KEY <= key <= MAX_INT_KEY)):  # type: ignore[operator]
        check_key(key)  # the rare case (subclasses) or an invalid key: raises with the reason
    try:
        ekey = layout.pack_key(key)
    except (TypeError, ValueError, OverflowError) as exc:  # e.g. a str with lone surrogates
        raise InvalidValue(f"key {key!r} cannot be encoded: {exc}") from exc
    if len(ekey) > settings.max_key_bytes:
        raise ValueTooLarge(
            f"key {key!r:.60} encodes to {len(ekey)} bytes; max_key_bytes={settings.max_key_bytes}"
        )
    return ekey


def check_value(value: object, max_depth: int) -> None:
    """Refuse what peers' decoder (:func:`crdtstore.codec.check_depth`) would refuse once
    ``value`` is packed: nesting beyond ``max_depth``, containers as map keys, extension
    types. msgpack packs tuples and subclasses of list and dict as arrays and maps, so
    they count too (an ExtType is a tuple: it is refused before it is walked)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, _EXTENSIONS):
            raise InvalidValue(f"value holds a msgpack {type(item).__name__}: not storable")
        if depth > max_depth:
            raise InvalidValue(f"value nests deeper than max_value_depth={max_depth}")
        if isinstance(item, dict):
            if any(isinstance(k, _CHECKED) for k in item):
                raise InvalidValue("value has a container or an extension type as a map key")
            children: Any = item.values()
        else:
            children = item
        stack.extend((c, depth + 1) for c in children if isinstance(c, _CHECKED))


def encode_value(value: object, settings: NodeSettings) -> bytes:
    if isinstance(value, _CHECKED):
        check_value(value, settings.max_value_depth)
    try:
        data: bytes = layout.pack(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidValue(
            f"value of type {type(value).__name__} is not msgpack-able "
            f"(None, bool, int, float, str, bytes, list, dict): {exc}"
        ) from exc
    if len(data) > settings.max_value_bytes:
        raise ValueTooLarge(
            f"value encodes to {len(data)} bytes; max_value_bytes={settings.max_value_bytes}"
        )
    return data
