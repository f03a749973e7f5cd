"""Fixtures of the CLI tests (the helpers they use live in ``cli_support``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import run

from crdtstore.testing.localcluster import ServeNode


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[ServeNode]]:
    started: list[ServeNode] = []
    try:
        yield started
    finally:
        for node in started:
            if node.alive():
                node.stop()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A node directory made by the command itself."""
    data = tmp_path / "d"
    done = run("put", "--data", str(data), "--create", "seed", "k", "0")
    assert done.returncode == 0, done.stderr
    return data
