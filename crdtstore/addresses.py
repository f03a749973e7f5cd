"""What a bind address and a seed look like: the one check behind every way of giving them.

``crdtstore.open(bind=, seeds=)``, ``crdtstore serve`` (flags and TOML), the ``pub_bind``
setting and the tooz URL all come here, so a bad value fails the same way everywhere:
one line naming the value, raised before the node binds, joins or prints READY.
Examples of what went wrong before: a TOML ``seeds = "tcp://..."`` iterated one
character at a time (``addr='t'``), and ``127.0.0.1:7101`` without a scheme, both failing
only later inside ZeroMQ while the node reported itself ready.
"""

from __future__ import annotations

from typing import Any

from crdtstore.errors import InvalidValue

SCHEME = "tcp://"
MAX_PORT = 65_535


def split_tcp(address: str, what: str) -> tuple[str, str]:
    """``(host, port)`` of ``tcp://HOST:PORT``, or InvalidValue naming ``what`` and the value."""
    if not address.startswith(SCHEME):
        hint = f" (did you mean {SCHEME + address!r}?)" if "://" not in address else ""
        raise InvalidValue(f"{what} {address!r} must look like tcp://HOST:PORT{hint}")
    host, sep, port = address[len(SCHEME) :].rpartition(":")
    if not sep or not host or not port:
        raise InvalidValue(f"{what} {address!r} must look like tcp://HOST:PORT")
    return host, port


def check_bind(address: Any, what: str = "bind address") -> str:
    """A ROUTER or PUB bind address: ``tcp://HOST:PORT``, PORT ``*`` or 0 for one the OS
    picks."""
    if not isinstance(address, str):
        raise InvalidValue(f"{what} {address!r} must be a string like tcp://HOST:PORT")
    _, port = split_tcp(address, what)
    if port != "*" and not (port.isdigit() and int(port) <= MAX_PORT):
        raise InvalidValue(f"{what} {address!r}: the port must be 0-{MAX_PORT} or *")
    return address


def check_seed(seed: Any) -> str:
    """A seed: ``tcp://HOST:PORT``, or ``KEYNAME@tcp://HOST:PORT`` with CURVE keys."""
    if not isinstance(seed, str):
        raise InvalidValue(f"seed {seed!r} must be a string like tcp://HOST:PORT")
    name, at, address = seed.rpartition("@")
    if at and not name:
        raise InvalidValue(f"seed {seed!r}: the key name before '@' is empty")
    host, port = split_tcp(address if at else seed, "seed")
    if host == "*" or not (port.isdigit() and 1 <= int(port) <= MAX_PORT):
        raise InvalidValue(f"seed {seed!r} must name a host and a port 1-{MAX_PORT}")
    return seed


def check_seeds(seeds: Any) -> tuple[str, ...]:
    """A list of seeds (a lone string is refused: iterating it would give characters)."""
    if isinstance(seeds, str | bytes):
        raise InvalidValue(
            f"seeds={seeds!r} must be a list of addresses, not one string (seeds=[{seeds!r}])"
        )
    try:
        items = list(seeds)
    except TypeError:
        raise InvalidValue(f"seeds={seeds!r} must be a list of addresses") from None
    return tuple(check_seed(seed) for seed in items)


def derive_pub_address(router: str) -> str:
    """The default PUB endpoint beside a ROUTER endpoint: same host, a port the OS picks.

    Peers learn the PUB address from the handshake and the member record, so nothing
    relies on a port convention (``router + 1`` would collide with a neighbour's ROUTER
    on consecutive ports, as in ``tcp://127.0.0.1:7101`` / ``:7102``).
    """
    host, _ = split_tcp(check_bind(router), "bind address")
    return f"tcp://{host}:*"
