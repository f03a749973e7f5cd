"""Logging of ``crdtstore serve``: text for people, or one JSON object per line.

``--log-format json`` writes ``{"ts", "level", "logger", "msg", ...}`` per record, with
any ``extra={...}`` fields of the call and the traceback (``exc``) when there is one, so a
log shipper needs no parsing rules.
"""

from __future__ import annotations

import datetime
import json
import logging

from crdtstore.cli.exits import USAGE, CliError

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD and name not in out:
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def check_logging(level: str, fmt: str) -> int:
    """The numeric level of ``level``; a one-line error for a level or format unknown."""
    if level.upper() not in LEVELS:
        raise CliError(USAGE, f"--log-level {level!r}: expected one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise CliError(USAGE, f"--log-format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return logging.getLevelName(level.upper())  # type: ignore[no-any-return]


def setup_logging(level: str, fmt: str) -> None:
    numeric = check_logging(level, fmt)
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=numeric, handlers=[handler])
