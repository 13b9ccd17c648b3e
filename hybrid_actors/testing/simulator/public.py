"""The public sockets (``/v5/public/{linear,inverse,spot,option}``): ping, subscribe, unsubscribe.

One answer per frame. linear/inverse/spot: a single ack, ``success:false`` naming the first
failed topic (the valid topics of that frame are subscribed anyway); option: a
``COMMAND_RESP`` listing ``successTopics`` and ``failTopics``. The socket stays open after
every error answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from . import wire

if TYPE_CHECKING:
    from .connection import Connection
    from .exchange import Exchange

SPOT_MAX_ARGS: Final = 10
#: the total length of all args on one public connection (BYBIT_V5.md §3, §12), counted as
#: a conservative client counts it: each topic with its two JSON quotes and a comma
ARGS_CHAR_LIMIT: Final = 21_000
ARGS_LIMIT_MESSAGE: Final = "Length of 'args' array over 21,000 characters"
TICKER_PREFIX: Final = "tickers."
#: a forced rejection's text; ``{topic}`` is replaced by the topic
DEFAULT_REJECTION: Final = "Params Error"


def handle(ex: Exchange, conn: Connection, frame: dict[str, Any]) -> None:
    op = frame.get("op")
    req_id = frame.get("req_id")
    if op == "ping":
        ex.answer_ping(conn, req_id)
    elif op in ("subscribe", "unsubscribe"):
        _request(ex, conn, op, frame.get("args"), req_id)
    else:
        ex.refuse_op(conn, op, req_id)


def _request(ex: Exchange, conn: Connection, op: str, raw_args: Any, req_id: Any) -> None:
    args: list[Any] = raw_args if isinstance(raw_args, list) else []
    if not args or not all(isinstance(a, str) for a in args):
        _reply(ex, conn, op, args, req_id, [], [str(a) for a in args], "Params Error")
        return
    if conn.kind == "spot" and len(args) > SPOT_MAX_ARGS:
        _reply(ex, conn, op, args, req_id, [], list(args), f"args size >{SPOT_MAX_ARGS}")
        return
    if op == "subscribe" and conn.kind != "option" and _args_chars(conn.topics, args) > ARGS_CHAR_LIMIT:
        # the whole frame is refused, naming no topic; what the connection holds stays
        _reply(ex, conn, op, args, req_id, [], list(args), ARGS_LIMIT_MESSAGE)
        return
    ok: list[str] = []
    failed: list[str] = []
    first_error: str | None = None
    snapshots: list[str] = []
    for topic in args:
        if op == "subscribe":
            error = _subscribe(ex, conn, topic, snapshots)
        else:
            _unsubscribe(ex, conn, topic)  # never fails (see there)
            error = None
        if error is None:
            ok.append(topic)
        else:
            failed.append(topic)
            first_error = first_error or error
    _reply(ex, conn, op, args, req_id, ok, failed, first_error)
    for snapshot in snapshots:  # after the ack, as on the exchange
        conn.push(snapshot)
    if ok:
        ex.observer.subscriptions_changed()


def _args_chars(held: dict[str, None], args: list[str]) -> int:
    """What the connection's args would total with ``args`` added."""
    return sum(len(t) + 3 for t in {**held, **dict.fromkeys(args)})


def _reply(ex: Exchange, conn: Connection, op: str, args: list[Any], req_id: Any, ok: list[str],
           failed: list[str], error: str | None) -> None:
    success = error is None
    if conn.kind == "option":
        text = wire.ack("option", conn.conn_id, op, success=success, success_topics=ok, fail_topics=failed)
    else:
        text = wire.ack(conn.kind, conn.conn_id, op, success=success, ret_msg=error or "", req_id=req_id)
    conn.push(text)
    ex.observer.request(conn, op, args, req_id, success, error or "")


def _subscribe(ex: Exchange, conn: Connection, topic: str, snapshots: list[str]) -> str | None:
    symbol = topic[len(TICKER_PREFIX):] if topic.startswith(TICKER_PREFIX) else None
    model = ex.market.model(conn.kind, symbol) if symbol else None
    if model is None:
        if conn.kind == "spot" and symbol is not None:
            return f"Invalid symbol :[{topic}]"
        return f"error:handler not found,topic:{topic}"
    forced = ex.faults.take_subscribe_rejection(conn.kind, model.instrument.symbol)
    if forced is not None:
        return forced.replace("{topic}", topic)
    if topic in conn.topics:
        if conn.kind == "option":  # it lists every requested topic under successTopics (BYBIT_V5 §12)
            return None
        return f"error:already subscribed,topic:{topic}"
    conn.topics[topic] = None
    snapshot = ex.market.subscribe(model, conn)
    if snapshot is not None:
        snapshots.append(snapshot)
    return None


def _unsubscribe(ex: Exchange, conn: Connection, topic: str) -> None:
    """Unsubscribing a topic that is not subscribed is acknowledged as a success."""
    if topic in conn.topics:
        del conn.topics[topic]
        model = ex.market.model(conn.kind, topic[len(TICKER_PREFIX):])
        if model is not None:
            ex.market.unsubscribe(model, conn)


def drop_all(ex: Exchange, conn: Connection) -> None:
    """Forget every subscription of a closing connection."""
    for topic in list(conn.topics):
        _unsubscribe(ex, conn, topic)
