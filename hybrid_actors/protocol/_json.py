"""The one place that picks the JSON library for the wire (orjson: ~5x the stdlib on our frames).

Bybit sends every price and size as a string, so the parser never needs a float hook;
a JSON float where we expect a decimal is reported as a malformed field instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import orjson

JSONDecodeError = orjson.JSONDecodeError

#: orjson's own function, not a wrapper: it runs once per ticker frame, where one more
#: Python call is ~1% of the public reader's CPU
loads: Final[Callable[[str | bytes], Any]] = orjson.loads


def dumps(obj: Any) -> str:
    """Compact JSON text (what a WebSocket text frame carries)."""
    return orjson.dumps(obj).decode()
