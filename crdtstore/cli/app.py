"""The ``crdtstore`` parser and dispatch: every subcommand, ``--version``, exit codes."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from crdtstore.cli import drop, local, members, serve
from crdtstore.cli.exits import OK, RUNTIME, USAGE, CliError
from crdtstore.version import package_version

if TYPE_CHECKING:
    from transport import TransportFaults

DATA_ENV = "CRDTSTORE_DATA"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crdtstore",
        description="A replicated state store with no centre. Exit codes: 0 done, 1 not "
        "found, 2 bad command line or input (nothing written), 3 cannot open or run.",
    )
    parser.add_argument("--version", action="version", version=f"crdtstore {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    common = argparse.ArgumentParser(add_help=False)
    default_data = os.environ.get(DATA_ENV)
    common.add_argument(
        "--data",
        type=Path,
        default=None if default_data is None else Path(default_data),
        help=f"the node directory (default: ${DATA_ENV})",
    )
    common.add_argument("--json", action="store_true", help="JSON output, for scripts")

    serve.add_parser(sub)
    local.add_parsers(sub, common)
    members.add_parsers(sub, common)
    drop.add_parser(sub)

    demo = sub.add_parser("demo", help="run a 3-node cluster on loopback and show it converge")
    demo.add_argument("--keep", action="store_true", help="keep the temporary directory")
    demo.set_defaults(run=lambda args: run_demo(args))

    keygen = sub.add_parser("keygen", help="make a CurveZMQ key pair (the secret one 0600)")
    keygen.add_argument("directory", type=Path)
    keygen.add_argument("name")
    keygen.set_defaults(run=run_keygen)
    return parser


def run_demo(args: argparse.Namespace) -> int:
    from crdtstore.demo import run_demo

    return run_demo(keep=args.keep)


def run_keygen(args: argparse.Namespace) -> int:
    from transport import TransportError, generate_keypair

    try:
        public, secret = generate_keypair(str(args.directory), args.name)
    except FileExistsError as exc:
        raise CliError(USAGE, f"{exc.filename} exists: not overwriting a key") from None
    except (OSError, TransportError) as exc:
        raise CliError(RUNTIME, f"cannot write keys into {args.directory}: {exc}") from None
    print(f"public key: {public}\nsecret key: {secret}")
    return OK


def main(
    argv: Sequence[str] | None = None,
    clock: Callable[[], int] | None = None,
    faults: TransportFaults | None = None,
) -> int:
    """Run one command; returns its exit code (see :mod:`crdtstore.cli.exits`).
    ``clock`` and ``faults`` (test seams): for ``serve``, see ``crdtstore.open``."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return serve.serve(args, clock, faults)
        code: int = args.run(args)
        return code
    except CliError as exc:
        print(f"crdtstore {args.command}: {exc.message}", file=sys.stderr)
        return exc.code
    except BrokenPipeError:
        # The reader went away (`crdtstore ls NS | head`): not an error of ours. Point
        # stdout at nothing so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return OK
    except KeyboardInterrupt:
        return 130  # the shell's code for a command ended by Ctrl-C
