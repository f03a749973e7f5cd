"""systemd's notification protocol (``sd_notify``), for ``Type=notify`` units.

A datagram of ``KEY=VALUE`` lines to the unix socket named in ``$NOTIFY_SOCKET``; a name
starting with ``@`` is in the abstract namespace (a leading NUL byte). Without the
variable (not started by systemd) every call does nothing. ``WATCHDOG_USEC`` (with
``WATCHDOG_PID``, when it names this process) asks for ``WATCHDOG=1`` at least that often.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        name = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + name[1:] if name.startswith("@") else name
        self.watchdog_s: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1_000_000

    def notify(self, state: str) -> bool:
        """Send ``state`` (e.g. ``"READY=1"``); False when there is no socket or it failed."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(state.encode(), self.address)
        except OSError as exc:
            # systemd not listening must not stop a node: say so, and carry on.
            log.warning("sd_notify %s to %r failed: %s", state, self.address, exc)
            return False
        return True
