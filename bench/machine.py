"""What the benchmarks read about this machine from /proc, and the servers they install on
it (Linux only)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def lo_bytes() -> int:
    """Bytes received on the loopback interface so far: every frame between local nodes,
    with its TCP/IP framing, so deltas of it are what crossed the "wire"."""
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name.strip() == "lo":
            return int(rest.split()[0])
    return 0


def status_kib(field: str, pid: int | str = "self") -> int:
    """A size field of ``/proc/PID/status`` in KiB (``VmRSS``, ``VmHWM``: peak RSS), 0 if
    the process or the field is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0])
    return 0


def ensure_installed(binary: str, package: str) -> str | None:
    """The path of ``binary``, installing Debian's ``package`` with apt-get first when it is
    missing and this runs as root; None when it stays absent (the caller skips, saying so).
    """
    path = shutil.which(binary)
    if path is None and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing {package} with apt-get ...", flush=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", package],
            capture_output=True,
            timeout=600,
            check=False,
        )
        path = shutil.which(binary)
    return path
