"""The one place that picks the JSON library for the wire (orjson: ~5x the stdlib on our frames).

Bybit sends every price and size as a string, so the parser never needs a float hook;
a JSON float where we expect a decimal is reported as a malformed field instead.
"""

from __future__ import annotations

from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError


def loads(data: str | bytes) -> Any:
    return orjson.loads(data)


def dumps(obj: Any) -> str:
    """Compact JSON text (what a WebSocket text frame carries)."""
    return orjson.dumps(obj).decode()
