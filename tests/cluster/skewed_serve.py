"""``crdtstore serve`` whose clock is off: ``skewed_serve.py OFFSET_MS serve ARGS...``.

What ``faketime -f +5m crdtstore serve ...`` does, without faketime: the node reads its
one wall clock through the ``clock`` parameter of ``crdtstore.open`` (and of the CLI's
``main``), and this passes the system's shifted by OFFSET_MS (negative: behind).
"""

from __future__ import annotations

import sys
import time

from crdtstore import cli


def main() -> int:
    offset = int(sys.argv[1])

    def clock() -> int:
        return time.time_ns() // 1_000_000 + offset

    return cli.main(sys.argv[2:], clock=clock)


if __name__ == "__main__":
    sys.exit(main())
