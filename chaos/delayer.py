"""The delay line: a TAP device in the hub namespace whose frames come back late.

This kernel has no netem, so delay is made in userspace. ``tc`` redirects the picked
frames of a delayed node to the TAP (see :mod:`chaos.net`); this process reads each one,
holds it for a seeded random time in [min, max] ms and writes it back, into the bridge,
which forwards it to its destination. Frames that were not picked pass straight through
the bridge and overtake the held ones: that is the reordering.

Run inside the hub namespace (``ip netns exec HUB python -m chaos.delayer``). It prints
``READY`` once the TAP exists; the TAP disappears with the process. At most
``--max-held`` frames wait at a time; beyond that a frame is dropped (a full queue).
"""

from __future__ import annotations

import argparse
import fcntl
import heapq
import os
import random
import select
import signal
import struct
import sys
import time
from pathlib import Path
from typing import Any

TUNSETIFF = 0x400454CA  # linux/if_tun.h
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
MAX_FRAME = 65_536


def open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def serve(
    fd: int, own_mac: bytes, rng: random.Random, low_s: float, high_s: float, max_held: int
) -> dict[str, int]:
    """Delay frames until SIGTERM; returns how many were delayed, were the TAP's own,
    were dropped on a full queue, and were lost on a failed write."""
    counts = {"delayed": 0, "own": 0, "queue_full": 0, "write_failed": 0}
    held: list[tuple[float, int, bytes]] = []  # (release time, arrival number, frame)
    arrivals = 0
    running = True

    def stop(_signum: int, _frame: Any) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while running:
        timeout = max(0.0, held[0][0] - time.monotonic()) if held else 1.0
        try:
            readable, _, _ = select.select([fd], [], [], timeout)
        except InterruptedError:
            continue
        if readable:
            while True:
                try:
                    frame = os.read(fd, MAX_FRAME)
                except BlockingIOError:
                    break
                arrivals += 1
                if frame[6:12] == own_mac:
                    # The hub's own stack talking through the TAP (an IGMP report when it
                    # comes up), not a frame tc redirected: nothing to delay.
                    counts["own"] += 1
                    continue
                if len(held) >= max_held:
                    counts["queue_full"] += 1
                    continue
                release = time.monotonic() + rng.uniform(low_s, high_s)
                heapq.heappush(held, (release, arrivals, frame))
                counts["delayed"] += 1
        now = time.monotonic()
        while held and held[0][0] <= now:
            _, _, frame = heapq.heappop(held)
            try:
                os.write(fd, frame)
            except OSError:
                # The bridge port went down (the run is ending): the frame is lost, which
                # is all a real network would do with it.
                counts["write_failed"] += 1
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(prog="chaos.delayer", description=__doc__)
    parser.add_argument("--tap", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--min-ms", type=float, default=20.0)
    parser.add_argument("--max-ms", type=float, default=300.0)
    parser.add_argument("--max-held", type=int, default=20_000)
    args = parser.parse_args()
    fd = open_tap(args.tap)
    own_mac = bytes.fromhex(Path(f"/sys/class/net/{args.tap}/address").read_text().replace(":", ""))
    print("READY", flush=True)
    counts = serve(
        fd,
        own_mac,
        random.Random(args.seed),
        args.min_ms / 1000,
        args.max_ms / 1000,
        args.max_held,
    )
    print("DONE " + " ".join(f"{k}={v}" for k, v in counts.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
