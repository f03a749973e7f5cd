"""``serve --log-format json``: one JSON object per line, with ts, level, logger, msg."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path

from cli_support import FlaggedNode

from crdtstore.cli.logs import JsonFormatter
from crdtstore.testing.localcluster import ServeNode


def test_serve_logs_one_json_object_per_line(tmp_path: Path, nodes: list[ServeNode]) -> None:
    node = FlaggedNode(tmp_path, "n1", [], flags=["--log-format", "json"])
    nodes.append(node.start())
    assert node.stop() == 0
    records = [json.loads(line) for line in node.log.read_text().splitlines()]
    assert records and all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    assert any(r["msg"].startswith("node n1 serving") for r in records)
    assert any(r["msg"] == "signal 15: stopping" and r["level"] == "INFO" for r in records)
    datetime.fromisoformat(records[0]["ts"])


def test_extra_fields_and_tracebacks_are_fields_of_the_object() -> None:
    record = logging.LogRecord("crdtstore.x", logging.ERROR, __file__, 1, "bad %s", ("peer",), None)
    record.peer_key = "abc"
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    out = json.loads(JsonFormatter().format(record))
    assert out["msg"] == "bad peer" and out["peer_key"] == "abc" and out["level"] == "ERROR"
    assert "ValueError: boom" in out["exc"]
