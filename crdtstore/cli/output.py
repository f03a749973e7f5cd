"""Values in and out of the shell: JSON on the command line, JSON on stdout.

Stored values are msgpack values, a little wider than JSON: bytes (shown as
``{"$bytes": BASE64}``) and maps with non-string keys (shown as a list of ``[key, value]``
pairs). Keys and set elements are strings unless ``--json-key`` says they are JSON.
"""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

from crdtstore.cli.exits import USAGE, CliError


def to_json(value: Any) -> Any:
    """A JSON-encodable form of a stored value."""
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: to_json(v) for k, v in value.items()}
        return [[to_json(k), to_json(v)] for k, v in value.items()]
    return value


def dumps(value: Any) -> str:
    return json.dumps(to_json(value), sort_keys=True, ensure_ascii=False)


def parse_value(text: str) -> Any:
    """A value given on the command line: JSON, so a string needs its quotes."""
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CliError(
            USAGE, f"value {text!r} is not JSON ({exc}); a string needs quotes: '\"{text}\"'"
        ) from None


def parse_key(text: str, as_json: bool) -> Any:
    """A key or set element: the text itself, or with ``--json-key`` a JSON int or string."""
    if not as_json:
        return text
    key = parse_value(text)
    if isinstance(key, bool) or not isinstance(key, str | int):
        raise CliError(USAGE, f"key {text!r} must be a JSON string or integer")
    return key


def emit(line: str) -> None:
    """Print one line, flushed at once: a consumer (``watch | jq``) sees it as it happens."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
