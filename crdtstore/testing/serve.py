"""``python -m crdtstore.testing.serve [FAULTS] [SERVE OPTIONS]``: ``crdtstore serve`` with
network faults installed, for tests that need them between processes.

FAULTS are the flags of :class:`~crdtstore.testing.faults.FaultSpec`
(``--partition-file``, ``--drop-publish-fraction``, ``--drop-seed``); every other argument
is ``crdtstore serve``'s own, handled by it unchanged (its errors and exit codes too).
The production command line has no such flag: faults reach a node only through this
entry point or ``crdtstore.open(..., faults=...)``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from crdtstore.cli import main as cli_main
from crdtstore.testing.faults import FaultSpec


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m crdtstore.testing.serve",
        description="crdtstore serve with test faults installed",
    )
    parser.add_argument("--partition-file", help="file of node ids to cut off, one a line")
    parser.add_argument(
        "--drop-publish-fraction", type=float, default=0.0, help="fraction of PUB frames lost"
    )
    parser.add_argument("--drop-seed", type=int, default=0, help="seed of the lost frames")
    ours, rest = parser.parse_known_args(argv)
    try:
        spec = FaultSpec(ours.partition_file, ours.drop_publish_fraction, ours.drop_seed)
    except ValueError as exc:
        parser.error(str(exc))
    return cli_main(["serve", *rest], faults=spec.build())


if __name__ == "__main__":
    sys.exit(main())
