"""Client → server frames: auth, subscribe/unsubscribe (chunked), JSON ping. Pure functions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

from ..config import SPOT_MAX_ARGS_PER_REQUEST
from ._json import dumps
from .signing import ws_auth_signature

__all__ = ["auth_frame", "ping_frame", "request_frame", "ticker_topic", "symbol_of_topic",
           "chunk_topics", "max_args_per_request"]

TICKER_PREFIX: Final = "tickers."


def auth_frame(api_key: str, api_secret: str, expires_ms: int, req_id: str | None = None) -> str:
    """``{"op":"auth","args":[key, expires, signature]}``. The text holds a signature:
    send it, never log it."""
    frame: dict[str, object] = {"op": "auth", "args": [api_key, int(expires_ms),
                                                       ws_auth_signature(api_secret, expires_ms)]}
    if req_id is not None:
        frame = {"req_id": req_id, **frame}
    return dumps(frame)


def ping_frame(req_id: str | None = None) -> str:
    """Bybit's JSON ping (not a WebSocket protocol ping, which Bybit does not count)."""
    return dumps({"req_id": req_id, "op": "ping"} if req_id is not None else {"op": "ping"})


def request_frame(op: str, topics: Sequence[str], req_id: str | None = None) -> str:
    frame: dict[str, object] = {"op": op, "args": list(topics)}
    if req_id is not None:
        frame = {"req_id": req_id, **frame}
    return dumps(frame)


def ticker_topic(symbol: str) -> str:
    return TICKER_PREFIX + symbol


def symbol_of_topic(topic: str) -> str | None:
    return topic[len(TICKER_PREFIX):] if topic.startswith(TICKER_PREFIX) else None


def max_args_per_request(category: str | None, chunk_size: int) -> int:
    """Spot refuses more than 10 args per request (``args size >10``); elsewhere the
    exchange has no limit, but one ack per frame names at most one failed topic, so
    small frames keep failures attributable."""
    if category == "spot":
        return min(chunk_size, SPOT_MAX_ARGS_PER_REQUEST)
    return chunk_size


def chunk_topics(topics: Iterable[str], size: int) -> list[tuple[str, ...]]:
    if size <= 0:
        raise ValueError(f"chunk size must be positive, got {size}")
    items = list(topics)
    return [tuple(items[i:i + size]) for i in range(0, len(items), size)]
