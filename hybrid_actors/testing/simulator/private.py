"""The private socket (``/v5/private``): auth, ping, ``position`` (un)subscribe.

Auth is checked for real: the key, ``hex(HMAC_SHA256(secret, "GET/realtime" + expires))``
and ``expires`` (int or digit string, ms) in the future by the injected wall clock.
Any failure answers ``Params Error`` and leaves the socket open; later subscribes get
``Request not authorized``. No position snapshot is sent on subscribe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import trio

from ...protocol.signing import constant_time_equals, ws_auth_signature
from . import wire
from .faults import DropMode

if TYPE_CHECKING:
    from .connection import Connection
    from .exchange import Exchange

ALL_IN_ONE: Final = "position"
TOPICS: Final = frozenset({ALL_IN_ONE, "position.linear", "position.inverse", "position.option"})


def handle(ex: Exchange, conn: Connection, frame: dict[str, Any]) -> None:
    op = frame.get("op")
    req_id = frame.get("req_id")
    if op == "auth":
        _auth(ex, conn, frame.get("args"), req_id)
    elif op == "ping":
        conn.last_activity = trio.current_time()  # a ping keeps a private socket from the idle cut
        ex.answer_ping(conn, req_id)
    elif op in ("subscribe", "unsubscribe"):
        _request(ex, conn, op, frame.get("args"), req_id)
    else:
        ex.refuse_op(conn, op, req_id)


def _parse_expires(raw: Any) -> int | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and raw.isdigit() and raw.isascii():
        return int(raw)
    return None


def check_auth(ex: Exchange, args: Any) -> str:
    """``"ok"`` or why the auth frame is refused (for the observer; the wire says ``Params Error``)."""
    if not isinstance(args, list) or len(args) != 3 or not isinstance(args[0], str) or not isinstance(args[2], str):
        return "malformed"
    expires = _parse_expires(args[1])
    if expires is None:
        return "malformed"
    if not constant_time_equals(args[0], ex.config.api_key):
        return "unknown key"
    if not constant_time_equals(args[2], ws_auth_signature(ex.config.api_secret, expires)):
        return "bad signature"
    if expires <= ex.now_ms():
        return "expired"
    return "ok"


def _auth(ex: Exchange, conn: Connection, args: Any, req_id: Any) -> None:
    reason = check_auth(ex, args)
    ret_msg = "Params Error"
    if reason == "ok" and ex.faults.take_auth_failure():
        reason = "forced failure"
        ret_msg = ex.faults.auth_failure_msg
    ok = reason == "ok"
    if ok:
        conn.authenticated = True
    ex.observer.auth(conn, ok, reason)
    if not ok and ex.faults.failed_auth_closes:
        conn.request_drop(DropMode.CLOSE, code=1008, reason="", cause="auth refused")
        return
    conn.push(wire.auth_reply(conn.conn_id, success=ok, req_id=req_id, ret_msg=ret_msg))


def _request(ex: Exchange, conn: Connection, op: str, raw_args: Any, req_id: Any) -> None:
    args: list[Any] = raw_args if isinstance(raw_args, list) else []
    error = _check_request(conn, op, args)
    if error is None:
        for topic in args:
            if op == "subscribe":
                conn.topics[topic] = None
            else:
                conn.topics.pop(topic, None)
        ex.observer.subscriptions_changed()
    conn.push(wire.ack(wire.PRIVATE, conn.conn_id, op, success=error is None, ret_msg=error or "", req_id=req_id))
    ex.observer.request(conn, op, args, req_id, error is None, error or "")


def _check_request(conn: Connection, op: str, args: list[Any]) -> str | None:
    if not conn.authenticated:
        return "Request not authorized"
    if not args or not all(isinstance(a, str) for a in args):
        return "Params Error"
    for topic in args:
        if topic not in TOPICS:
            return f"error:handler not found,topic:{topic}"
    if ALL_IN_ONE in args and len(args) > 1:  # all-in-one and categorised must not be mixed
        return "Params Error"
    if op == "subscribe":
        for topic in args:
            if topic in conn.topics:
                return f"error:already subscribed,topic:{topic}"
    return None
