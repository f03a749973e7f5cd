"""The ZAP handler that also tells the operator whom it refused.

pyzmq's authenticator refuses a CURVE client whose key is not in the allow-list and says
so only at DEBUG; the monitor counts ``auth_failed`` with neither the key nor the address.
This handler logs each refusal with the client's address and z85 public key, at most once
per key every ``REFUSAL_LOG_INTERVAL_S`` (a refused peer retries every reconnect
interval; the log must not fill with it), saying how many were not logged in between.
It decides nothing itself: the verdict is still pyzmq's.

Imported only by a node with CURVE keys: ``zmq.auth.thread`` imports asyncio.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import zmq.utils.z85
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger(__name__)

REFUSAL_LOG_INTERVAL_S = 60.0
REFUSALS_REMEMBERED = 1024
"""Keys whose last logged refusal is kept; beyond, the oldest are forgotten (and may be
logged again sooner), so a stream of random keys cannot grow the table."""


class RefusalLog:
    """Rate limit of refusal messages, by key. ``clock`` is seconds, monotonic."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[str, tuple[float, int]] = {}

    def refused(self, address: str, key: str) -> bool:
        """Note one refusal; True if it was logged."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last[0] < REFUSAL_LOG_INTERVAL_S:
            self._last[key] = (last[0], last[1] + 1)
            return False
        unlogged = 0 if last is None else last[1]
        self._last.pop(key, None)
        if len(self._last) >= REFUSALS_REMEMBERED:
            del self._last[next(iter(self._last))]
        self._last[key] = (now, 0)
        log.warning(
            "refused CURVE client %s with public key %s: not in the keys directory%s",
            address or "?",
            key,
            f" ({unlogged} more refusals of it since last said)" if unlogged else "",
            extra={"peer_address": address, "peer_key": key},
        )
        return True


class LoggingAuthenticator(ThreadAuthenticator):
    """pyzmq's thread authenticator, logging the CURVE clients the allow-list refuses."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], domain: str) -> None:
        super().__init__(context)
        self._domain = domain
        self.refusals = RefusalLog()

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        # A ZAP request: version, request id, domain, address, identity, mechanism, key.
        if len(msg) == 7 and msg[5] == b"CURVE" and len(msg[6]) == 32:
            key = zmq.utils.z85.encode(msg[6])
            if not self.certs.get(self._domain, {}).get(key):
                address = msg[3].decode("utf-8", "replace")
                self.refusals.refused(address, key.decode("ascii"))
        await super().handle_zap_message(msg)
