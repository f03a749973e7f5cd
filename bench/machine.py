"""What the benchmarks read about this machine from /proc (Linux only)."""

from __future__ import annotations

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
