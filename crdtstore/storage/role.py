"""The network role: at most one process per node directory talks to the network.

Several processes may open one directory and read and write it through LMDB; only the
holder of the role runs the sync engine and the sockets, so a node id never speaks with
two voices. The role is an exclusive ``flock`` on ``DIR/network.lock``, taken without
blocking. The kernel releases a flock when its holder's file description closes, which
includes the holder dying by ``SIGKILL``, so a waiting process takes over without any
lease or timeout. ``flock`` locks belong to the open file description, so two
``NetworkRole`` objects in one process also exclude each other. The file's text names the
holder (its pid, and the address it serves once bound) for a process refused the role.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

from crdtstore.errors import StorageError

LOCK_NAME = "network.lock"


def held_elsewhere(directory: str | os.PathLike[str]) -> bool:
    """Whether a process holds ``directory``'s role now. Asked with a shared lock that is
    given back at once, never by taking the role, so a standby is not kept out."""
    path = Path(directory) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StorageError(f"cannot open the network role lock {path}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError as exc:
        raise StorageError(f"cannot test the lock {path}: {exc}") from exc
    finally:
        os.close(fd)  # closing the description gives a shared lock taken here back
    return False


class NetworkRole:
    """Try-lock on a directory's network role. Thread-safe."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory) / LOCK_NAME
        self._fd: int | None = None
        self._mutex = threading.Lock()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the role if no other holder has it; True if this object holds it now."""
        with self._mutex:
            if self._fd is not None:
                return True
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise StorageError(f"cannot open the network role lock {self.path}: {exc}") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            except OSError as exc:
                os.close(fd)
                raise StorageError(f"cannot lock {self.path}: {exc}") from exc
            self._fd = fd
            self._describe(None)
            return True

    def announce(self, address: str) -> None:
        """Name the address this holder serves on, for whoever is refused the role."""
        with self._mutex:
            if self._fd is not None:
                self._describe(address)

    def _describe(self, address: str | None) -> None:
        assert self._fd is not None
        text = f"{os.getpid()}\n{address or ''}\n"
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, text.encode(), 0)  # what the holder says; the lock is the truth

    def holder(self) -> tuple[int | None, str | None]:
        """The pid and address the current holder wrote (None where it has not, yet)."""
        try:
            lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return None, None
        pid = int(lines[0]) if lines and lines[0].strip().isdigit() else None
        address = lines[1].strip() if len(lines) > 1 and lines[1].strip() else None
        return pid, address

    def release(self) -> None:
        """Give the role up (idempotent)."""
        with self._mutex:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                os.close(fd)  # closing the description releases the flock
