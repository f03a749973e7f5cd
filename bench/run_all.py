"""Run every benchmark in bench/ in turn (``make bench``); each prints its own table.

``--quick`` is passed to the benchmarks that accept it. Benchmarks needing servers that
are absent (Redis, etcd) skip those columns with a message rather than fail.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def accepts_quick(script: Path) -> bool:
    out = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120
    )
    return "--quick" in out.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs where supported")
    parser.add_argument("only", nargs="*", help="names like 'sync' or 'bench_sync.py'")
    args = parser.parse_args()
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        wanted = {name.removeprefix("bench_").removesuffix(".py") for name in args.only}
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in wanted]
    failed = []
    for script in scripts:
        print(f"\n=== {script.name} ===", flush=True)
        cmd = [sys.executable, str(script)]
        if args.quick and accepts_quick(script):
            cmd.append("--quick")
        if subprocess.run(cmd).returncode != 0:
            failed.append(script.name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
