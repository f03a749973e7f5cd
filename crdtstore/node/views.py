"""Namespace views: :class:`LWWMapView` and :class:`ORSetView`, what ``node.lww_map()``
and ``node.or_set()`` return.

Invariants:

- A view holds no state of the namespace, only its name and, once resolved, its row-key
  prefix (namespace ids never change): every call reads or writes the directory through
  its :class:`~crdtstore.node.api.Node`, so a view sees every process's commits at once.
- A compound method of ``MutableMapping`` / ``MutableSet`` (``update``, ``pop``, ``|=``,
  ...) runs in one transaction: one commit and one delta batch, all or nothing, and no
  other writer between its read and its write.
- An invalid key reads as absent; only a write of one raises.
"""

from __future__ import annotations

from collections.abc import (
    Callable,
    ItemsView,
    Iterable,
    Iterator,
    MutableMapping,
    MutableSet,
    Set,
    ValuesView,
)
from typing import TYPE_CHECKING, Any

from crdtstore.crdt import check_key
from crdtstore.errors import Error
from crdtstore.storage.rows import winning_value

if TYPE_CHECKING:
    from crdtstore.node.api import Node

LWW = "lww_map"
ORSET = "or_set"


def _valid_key(key: object) -> bool:
    try:
        check_key(key)
    except Error:
        return False
    return True


class _NamespaceView:
    """What both views share: the namespace, its cached id, key lookup, iteration, size."""

    __slots__ = ("_name", "_node", "_prefix")
    TYPE: str

    def __init__(self, node: Node, name: str) -> None:
        self._node = node
        self._name = name
        self._prefix: bytes | None = None  # the namespace's row-key prefix, once resolved

    @property
    def name(self) -> str:
        return self._name

    def _lookup(self, key: object) -> list[list[Any]] | None:
        """The live dots of ``key`` (None or [] when absent; invalid keys are absent)."""
        if type(key) is not str and not _valid_key(key):  # every str is a valid key
            return None
        return self._node._row(self, key)

    def __iter__(self) -> Iterator[Any]:
        return (key for key, _ in self._node._rows(self._name, self.TYPE))

    def __len__(self) -> int:
        return self._node._count(self._name, self.TYPE)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._name!r} of node {self._node.node_id!r}>"


class LWWMapView(_NamespaceView, MutableMapping[Any, Any]):
    """A live view of one LWW-map namespace: every call reads or writes the directory."""

    __slots__ = ()
    TYPE = LWW

    def __getitem__(self, key: Any) -> Any:
        dots = self._node._row(self, key)
        if dots is None:
            raise KeyError(key)
        return winning_value(dots)  # a row holds a dot at least: none is DecodeError

    def __contains__(self, key: object) -> bool:
        return bool(self._lookup(key))

    def __setitem__(self, key: Any, value: Any) -> None:
        node = self._node
        w = node._tls.__dict__.get("write")
        if w is not None and not node._closed:  # in this thread's transaction: the hot path
            w.put(self._name, key, value)
        else:
            self._node._write(lambda w: w.put(self._name, key, value))

    def __delitem__(self, key: Any) -> None:
        if not self._node._write(lambda w: w.delete(self._name, key)):
            raise KeyError(key)

    # MutableMapping's compound methods, each in one transaction: one commit and one delta
    # batch, all or nothing (a bad value halfway through an update writes none of it), and
    # no other writer between its read and its write (pop, setdefault).

    def update(self, other: Any = (), /, **kwds: Any) -> None:
        with self._node.transaction():
            MutableMapping.update(self, other, **kwds)

    def clear(self) -> None:
        with self._node.transaction():
            for key in list(self):
                del self[key]

    def pop(self, key: Any, *default: Any) -> Any:
        with self._node.transaction():
            return MutableMapping.pop(self, key, *default)

    def popitem(self) -> tuple[Any, Any]:
        with self._node.transaction():
            return MutableMapping.popitem(self)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        with self._node.transaction():
            return MutableMapping.setdefault(self, key, default)

    def items(self) -> ItemsView[Any, Any]:
        return _Items(self)

    def values(self) -> ValuesView[Any]:
        return _Values(self)

    def _items(self) -> Iterator[tuple[Any, Any]]:
        for key, dots in self._node._rows(self._name, LWW):
            yield key, winning_value(dots)


class _Items(ItemsView[Any, Any]):
    _mapping: LWWMapView

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        return self._mapping._items()


class _Values(ValuesView[Any]):
    _mapping: LWWMapView

    def __iter__(self) -> Iterator[Any]:
        return (value for _, value in self._mapping._items())


class ORSetView(_NamespaceView, MutableSet[Any]):
    """A live view of one OR-Set namespace: every call reads or writes the directory."""

    __slots__ = ()
    TYPE = ORSET

    def __contains__(self, element: object) -> bool:
        return bool(self._lookup(element))

    def add(self, element: Any) -> None:
        node = self._node
        w = node._tls.__dict__.get("write")
        if w is not None and not node._closed:  # in this thread's transaction: the hot path
            w.add(self._name, element)
        else:
            self._node._write(lambda w: w.add(self._name, element))

    def discard(self, element: Any) -> None:
        self._node._write(lambda w: w.remove(self._name, element))

    def remove(self, element: Any) -> None:
        if not self._node._write(lambda w: w.remove(self._name, element)):
            raise KeyError(element)

    @classmethod
    def _from_iterable(cls, it: Iterable[Any]) -> set[Any]:
        """What ``s | t``, ``s & t``, ``s - t`` and ``s ^ t`` return: a plain set, a
        snapshot (a view is of a namespace, and cannot be built from elements)."""
        return set(it)

    # MutableSet's compound methods, each in one transaction (see LWWMapView.update).

    def clear(self) -> None:
        with self._node.transaction():
            for element in list(self):
                self.discard(element)

    def pop(self) -> Any:
        with self._node.transaction():
            return MutableSet.pop(self)

    def __ior__(self, it: Set[Any]) -> ORSetView:  # type: ignore[misc]  # as typeshed's
        return self._in_one_transaction(MutableSet.__ior__, it)

    def __iand__(self, it: Set[Any]) -> ORSetView:
        return self._in_one_transaction(MutableSet.__iand__, it)

    def __ixor__(self, it: Set[Any]) -> ORSetView:  # type: ignore[misc]  # as typeshed's
        return self._in_one_transaction(MutableSet.__ixor__, it)

    def __isub__(self, it: Set[Any]) -> ORSetView:
        return self._in_one_transaction(MutableSet.__isub__, it)

    def _in_one_transaction(self, op: Callable[[Any, Set[Any]], Any], it: Set[Any]) -> ORSetView:
        with self._node.transaction():
            op(self, it)
        return self


__all__ = ["LWWMapView", "ORSetView"]
