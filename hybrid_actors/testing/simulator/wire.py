"""Bytes on the wire: connection ids and the control frames of each socket kind.

Encoded here with orjson, deliberately independent of the client codec: the shapes
follow the recorded frames in ``tests/vectors`` (BYBIT_V5.md §2-§4), including their
per-socket differences. Dict insertion order reproduces the recorded key order.
"""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any, Final

import orjson

#: socket kinds: the four public categories and the private stream
PUBLIC_KINDS: Final = ("linear", "inverse", "spot", "option")
PRIVATE: Final = "private"
KINDS: Final = (*PUBLIC_KINDS, PRIVATE)

_BASE32HEX: Final = "0123456789abcdefghijklmnopqrstuv"
_BASE36: Final = "0123456789abcdefghijklmnopqrstuvwxyz"


def kind_of_path(path: str) -> str | None:
    """The socket kind served at a WebSocket path (``/v5/public/linear`` → ``linear``)."""
    if path == "/v5/private":
        return PRIVATE
    prefix = "/v5/public/"
    kind = path[len(prefix):] if path.startswith(prefix) else None
    return kind if kind in PUBLIC_KINDS else None


def dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def fmt_units(units: int, decimals: int) -> str:
    """``fmt_units(6666660, 2) == "66666.60"``: fixed decimals, no float anywhere."""
    if decimals <= 0:
        return str(units)
    negative = units < 0
    digits = str(-units if negative else units)
    if len(digits) <= decimals:
        digits = "0" * (decimals + 1 - len(digits)) + digits
    text = f"{digits[:-decimals]}.{digits[-decimals:]}"
    return f"-{text}" if negative else text


def fmt_decimal(value: Decimal, places: int | None = None) -> str:
    """Plain notation (never ``1E+2``), quantized to ``places`` decimals when given; zero is ``"0"``."""
    if value == 0:
        return "0"
    if places is not None:
        value = value.quantize(Decimal(1).scaleb(-places))
    return format(value, "f")


def new_conn_id(kind: str, rng: random.Random) -> str:
    """A conn_id in the format Bybit uses on that socket kind.

    private: ``cejreaspqfh3sjdnldmg-p`` (20 base32hex chars, dash, short base36 suffix);
    spot/linear/inverse: a UUID4; option: ``aa01fbfffe80af37-00000001-000b37b9-7147f432704fd28c-00e1c172``.
    """
    if kind == PRIVATE:
        head = "".join(rng.choice(_BASE32HEX) for _ in range(20))
        tail = "".join(rng.choice(_BASE36) for _ in range(rng.randint(1, 5)))
        return f"{head}-{tail}"
    if kind == "option":
        widths = (16, 8, 8, 16, 8)
        return "-".join(f"{rng.getrandbits(4 * w):0{w}x}" for w in widths)
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[rng.getrandbits(2)]}{h[17:20]}-{h[20:]}"


def ack(kind: str, conn_id: str, op: str, *, success: bool, ret_msg: str = "",
        req_id: Any = None, success_topics: list[str] | None = None,
        fail_topics: list[str] | None = None) -> str:
    """The answer to ``subscribe`` / ``unsubscribe`` (and the error answer to anything else)."""
    if kind == PRIVATE:
        body: dict[str, Any] = {} if req_id is None else {"req_id": req_id}
        body.update(success=success, ret_msg=ret_msg, op=op, conn_id=conn_id)
        return dumps(body)
    if kind == "option" and op in ("subscribe", "unsubscribe") and success_topics is not None:
        return dumps({"success": success, "conn_id": conn_id,
                      "data": {"failTopics": fail_topics or [], "successTopics": success_topics},
                      "type": "COMMAND_RESP"})
    if kind == "spot":
        body = {"success": success, "ret_msg": ret_msg if (ret_msg or not success) else op, "conn_id": conn_id}
        if req_id is not None:
            body["req_id"] = req_id
        body["op"] = op
        return dumps(body)
    if kind == "option":
        # anything but a (un)subscribe on the option socket: the generic error envelope
        return dumps({"success": success, "ret_msg": ret_msg, "conn_id": conn_id, "op": op})
    return dumps({"success": success, "ret_msg": ret_msg, "conn_id": conn_id,
                  "req_id": "" if req_id is None else req_id, "op": op})


def auth_reply(conn_id: str, *, success: bool, req_id: Any = None, ret_msg: str = "Params Error") -> str:
    body: dict[str, Any] = {} if req_id is None else {"req_id": req_id}
    body.update(success=success, ret_msg="" if success else ret_msg, op="auth", conn_id=conn_id)
    return dumps(body)


def pong(kind: str, conn_id: str, now_ms: int, req_id: Any = None) -> str:
    """The three public pong shapes and the private one (BYBIT_V5.md §4)."""
    if kind == PRIVATE:
        body: dict[str, Any] = {} if req_id is None else {"req_id": req_id}
        body.update(op="pong", args=[str(now_ms)], conn_id=conn_id)
        return dumps(body)
    if kind == "option":
        return dumps({"args": [str(now_ms)], "op": "pong"})
    if kind == "spot":
        return dumps({"success": True, "ret_msg": "pong", "conn_id": conn_id, "op": "ping"})
    return dumps({"success": True, "ret_msg": "pong", "conn_id": conn_id,
                  "req_id": "" if req_id is None else req_id, "op": "ping"})


def decode_error_text(raw: str) -> str:
    """The wording Bybit's (Go) decoder uses for text that is not a JSON object."""
    first = raw[:1] or "EOF"
    context = raw[:32]
    return (f"Failed to decode incoming data:readObjectStart: expect {{ or n, but found {first}, "
            f"error found in #1 byte of ...|{context}|..., bigger context ...|{context}|...")
