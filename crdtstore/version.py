"""The installed package's version, for ``--version`` of both command lines."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    try:
        return version("crdtstore")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"
