"""Server → client frames of the Bybit v5 streams, decoded into frozen values.

:func:`decode` never raises: input it cannot use becomes a :class:`MalformedFrame`
(not JSON, wrong types) or an :class:`UnknownFrame` (valid JSON we have no use for),
each carrying enough context to log. Classification follows BYBIT_V5.md §10: control
frames by ``op``/``type`` first, then pongs, then data by ``topic``.

Hot path: a ticker frame is parsed once; its ``data`` dict is kept as sent (strings),
and only ``markPrice`` is converted to Decimal here, because it is the one field the
combiner reads. :func:`decode_hot` is :func:`decode` for the public sockets: a ticker frame
of the common shape comes back as a plain :data:`TickerFields` tuple (no object per frame),
with exactly the values :func:`decode` would put in its ``TickerSnapshot``/``TickerDelta``
(a test holds the two to that on every vector and on generated frames).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final, Literal

import attrs

from ._json import loads
from .fields import FieldError, dec, opt_dec, opt_int, opt_str, req_dec, req_int, req_str, to_int

__all__ = [
    "AuthResult", "SubscribeResult", "Pong", "Position", "PositionPush", "TickerFrame",
    "TickerSnapshot", "TickerDelta", "UnknownFrame", "MalformedFrame", "Frame", "decode",
    "SubscribeFailure", "classify_failure", "SIDES", "TickerFields", "decode_hot", "CREDENTIAL_REFUSAL_WORDS",
]

SIDES: Final = ("Buy", "Sell", "")
#: what a Classic account sends for the side of an empty one-way position (BYBIT_V5.md §12):
#: read exactly like ``""``, flat
FLAT_SIDE_ALIASES: Final = frozenset({"None"})
EXCERPT: Final = 200
_TOPIC_IN_MSG = re.compile(r"topic:(?P<topic>[^\s,\]]+)")
_INVALID_SYMBOL = re.compile(r"Invalid symbol\s*:\s*\[(?P<topics>[^\]]*)\]")

FailureKind = Literal["already_subscribed", "handler_not_found", "invalid_symbol", "too_many_args",
                      "not_authorized", "params_error", "other"]


def _excerpt(data: str | bytes) -> str:
    text = data if isinstance(data, str) else data[: EXCERPT * 4].decode("utf-8", "replace")
    return text if len(text) <= EXCERPT else f"{text[:EXCERPT]}… ({len(text)} chars)"


@attrs.frozen
class AuthResult:
    """Answer to ``op: auth``. ``ret_msg`` is ``"Params Error"`` for a bad or expired signature."""

    success: bool
    ret_msg: str
    conn_id: str | None = None
    req_id: str | None = None

    @property
    def refuses_credentials(self) -> bool:
        """A refusal that is about the key, the signature or ``expires`` (see
        :data:`CREDENTIAL_REFUSAL_WORDS`); False for a success and for any other text (a
        server error, a rate limit, an empty or undocumented text): those are no verdict
        on the keys."""
        if self.success:
            return False
        text = self.ret_msg.lower()
        return any(word in text for word in CREDENTIAL_REFUSAL_WORDS)


#: words of an auth refusal that is about the credentials. Bybit v5's one text on record is
#: ``Params Error``, for bad keys and an expired ``expires`` alike (BYBIT_V5.md §2); the
#: others cover wordings that name the key, the signature or the expiry (older sockets said
#: ``error:request expired``). Matched case-insensitively as substrings.
CREDENTIAL_REFUSAL_WORDS: Final = ("params error", "key", "sign", "expire", "permission")


@attrs.frozen
class SubscribeFailure:
    """Why a subscribe/unsubscribe failed, and which topics the exchange named."""

    kind: FailureKind
    topics: tuple[str, ...]
    ret_msg: str


@attrs.frozen
class SubscribeResult:
    """One ack per subscribe/unsubscribe frame.

    ``op`` is None for the option socket's ``COMMAND_RESP`` envelope, which reports
    ``success_topics`` / ``fail_topics`` instead of a message.
    """

    op: Literal["subscribe", "unsubscribe"] | None
    success: bool
    ret_msg: str
    conn_id: str | None = None
    req_id: str | None = None
    success_topics: tuple[str, ...] = ()
    fail_topics: tuple[str, ...] = ()

    @property
    def failure(self) -> SubscribeFailure | None:
        if self.success and not self.fail_topics:
            return None
        return classify_failure(self.ret_msg, self.fail_topics)


def classify_failure(ret_msg: str, fail_topics: tuple[str, ...] = ()) -> SubscribeFailure:
    """Map the (undocumented, observed) error texts of §3 to a kind and the topics they name."""
    topics = fail_topics or tuple(m.group("topic") for m in _TOPIC_IN_MSG.finditer(ret_msg))
    if "already subscribed" in ret_msg:
        return SubscribeFailure("already_subscribed", topics, ret_msg)
    if "handler not found" in ret_msg:
        return SubscribeFailure("handler_not_found", topics, ret_msg)
    match = _INVALID_SYMBOL.search(ret_msg)
    if match:
        named = tuple(t.strip() for t in match.group("topics").split(",") if t.strip())
        return SubscribeFailure("invalid_symbol", named or topics, ret_msg)
    if "args size" in ret_msg or "Length of 'args'" in ret_msg:
        return SubscribeFailure("too_many_args", topics, ret_msg)
    if "not authorized" in ret_msg:
        return SubscribeFailure("not_authorized", topics, ret_msg)
    if "Params Error" in ret_msg:
        return SubscribeFailure("params_error", topics, ret_msg)
    return SubscribeFailure("other", topics, ret_msg)


@attrs.frozen
class Pong:
    """Any of the documented pong shapes.

    ``shape`` is ``"public"`` (``ret_msg: "pong"``, spot/linear/inverse), ``"private"``
    (``op: "pong"`` with ``conn_id``) or ``"option"`` (``op: "pong"`` without ``conn_id``).
    """

    shape: Literal["public", "private", "option"]
    req_id: str | None = None
    conn_id: str | None = None
    server_time_ms: int | None = None


@attrs.frozen
class Position:
    """One position record, from a WebSocket push (``entryPrice``) or REST (``avgPrice``).

    Flat is ``side == ""`` or ``size == 0`` (a Classic account's ``"None"`` side is read as
    ``""``). Keyed by ``(category, symbol, position_idx)``. ``settle_coin`` is known only for
    a REST record (the coin the page was asked for); pushes do not carry it.
    """

    category: str
    symbol: str
    side: Literal["Buy", "Sell", ""]
    size: Decimal
    position_idx: int
    entry_price: Decimal | None = None
    mark_price: Decimal | None = None
    unrealised_pnl: Decimal | None = None
    updated_time: int | None = None
    seq: int | None = None
    created_time: int | None = None
    position_status: str | None = None
    leverage: Decimal | None = None
    liq_price: Decimal | None = None
    take_profit: Decimal | None = None
    stop_loss: Decimal | None = None
    trailing_stop: Decimal | None = None
    position_value: Decimal | None = None
    cum_realised_pnl: Decimal | None = None
    #: USDC contracts: the entry since the last 8-hourly settlement (what Bybit's UI shows)
    session_avg_price: Decimal | None = None
    settle_coin: str | None = attrs.field(default=None, eq=False)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.category, self.symbol, self.position_idx)

    @property
    def is_open(self) -> bool:
        return self.side != "" and self.size > 0

    @property
    def version(self) -> tuple[int, int]:
        """Ordering mark: ``(updatedTime, seq)``; equal versions are not duplicates (§5)."""
        return (self.updated_time if self.updated_time is not None else -1,
                self.seq if self.seq is not None else -1)

    @classmethod
    def from_wire(cls, item: Any, *, category: str | None = None, entry_key: str = "entryPrice") -> Position:
        """Parse one record. REST passes ``category`` (it is per response, not per item)
        and ``entry_key="avgPrice"``. Raises :class:`FieldError` on bad input."""
        if not isinstance(item, dict):
            raise FieldError(f"position record must be an object, got {type(item).__name__}")
        cat = category if category is not None else req_str(item, "category")
        if not isinstance(cat, str) or not cat:  # a push passes the item's own "category" value
            raise FieldError(f"position category must be a non-empty string, got {str(cat)[:20]!r}")
        symbol = req_str(item, "symbol")
        if not symbol:
            raise FieldError("position symbol is empty")
        side = req_str(item, "side")
        if side in FLAT_SIDE_ALIASES:
            side = ""
        if side not in SIDES:
            raise FieldError(f"position side {side[:20]!r} is not Buy, Sell, '' or 'None'")
        size = req_dec(item, "size")
        if size < 0:
            raise FieldError(f"position size {size} is negative")
        idx = req_int(item, "positionIdx")
        if idx not in (0, 1, 2):
            raise FieldError(f"positionIdx {idx} is not 0, 1 or 2")
        return cls(
            category=cat, symbol=symbol, side=side, size=size, position_idx=idx,  # type: ignore[arg-type]  # side in SIDES
            entry_price=opt_dec(item, entry_key),
            mark_price=opt_dec(item, "markPrice"),
            unrealised_pnl=opt_dec(item, "unrealisedPnl"),
            updated_time=opt_int(item, "updatedTime"),
            seq=opt_int(item, "seq"),
            created_time=opt_int(item, "createdTime"),
            position_status=opt_str(item, "positionStatus"),
            leverage=opt_dec(item, "leverage"),
            liq_price=opt_dec(item, "liqPrice"),
            take_profit=opt_dec(item, "takeProfit"),
            stop_loss=opt_dec(item, "stopLoss"),
            trailing_stop=opt_dec(item, "trailingStop"),
            position_value=opt_dec(item, "positionValue"),
            cum_realised_pnl=opt_dec(item, "cumRealisedPnl"),
            session_avg_price=_session_avg(item),
            settle_coin=opt_str(item, "settleCoin") or None,
        )


def _session_avg(item: Any) -> Decimal | None:
    """``sessionAvgPrice``: ``""`` and ``"0"`` (what non-USDC records carry) mean none."""
    value = opt_dec(item, "sessionAvgPrice")
    return None if value is None or value == 0 else value


@attrs.frozen
class PositionPush:
    """A private ``position`` push: several full records, no snapshot/delta distinction.

    ``rejected`` holds why each record we could not use was dropped: one bad record does
    not cost the others (they are independent full records). A push with no usable
    record at all decodes as a :class:`MalformedFrame`.
    """

    topic: str
    positions: tuple[Position, ...]
    id: str | None = None
    creation_time: int | None = None
    rejected: tuple[str, ...] = ()


@attrs.frozen
class TickerFrame:
    """A ``tickers.<SYMBOL>`` push. ``data`` holds the fields exactly as sent (strings).

    ``mark_price`` is ``data["markPrice"]`` parsed once, or None when the frame does not
    carry it (a delta very often does not: read the merged state, not the delta).
    """

    category: str | None
    symbol: str
    data: Mapping[str, Any] = attrs.field(repr=False)
    mark_price: Decimal | None
    ts: int
    cs: int | None = None

    @property
    def topic(self) -> str:
        return f"tickers.{self.symbol}"


@attrs.frozen
class TickerSnapshot(TickerFrame):
    """Full ticker state (first push on linear/inverse; every push on spot/option)."""


@attrs.frozen
class TickerDelta(TickerFrame):
    """Only the fields that changed (linear/inverse), plus ``symbol``."""


@attrs.frozen
class UnknownFrame:
    """Valid JSON we do not handle (an unknown topic, an ``error:invalid op`` reply...)."""

    reason: str
    payload: Mapping[str, Any] = attrs.field(repr=False)
    topic: str | None = None


@attrs.frozen
class MalformedFrame:
    """Input we could not decode. ``excerpt`` is truncated; never contains our secrets
    (the exchange never echoes them)."""

    reason: str
    excerpt: str


Frame = (AuthResult | SubscribeResult | Pong | PositionPush | TickerSnapshot | TickerDelta
         | UnknownFrame | MalformedFrame)

_SNAPSHOT_ONLY: Final = frozenset({"spot", "option"})
_DECODE_ERRORS: Final = (FieldError, ValueError, ArithmeticError)


#: a ticker frame as :func:`decode_hot` returns it: ``(symbol, snapshot, data, mark_price, ts, cs)``,
#: the fields of the ``TickerSnapshot`` (``snapshot`` True) or ``TickerDelta`` that :func:`decode` makes
TickerFields = tuple[str, bool, Mapping[str, Any], Decimal | None, int, int | None]


def decode(data: str | bytes, *, category: str | None = None) -> Frame:
    """Decode one WebSocket text message from a socket of ``category``
    (``None`` for the private socket). Never raises."""
    try:
        obj = loads(data)
    except ValueError as exc:  # orjson.JSONDecodeError, bad UTF-8
        return MalformedFrame(f"not JSON: {exc}", _excerpt(data))
    return _decode_parsed(obj, data, category)


def decode_hot(data: str | bytes, *, category: str | None = None) -> TickerFields | Frame:
    """:func:`decode`, except that a ticker frame comes back as :data:`TickerFields` instead
    of a ``TickerSnapshot``/``TickerDelta``, with the same values. The common shape (``ts``
    and ``cs`` JSON integers, a valid ``markPrice`` or none) is read inline, without the
    frame object; any other input takes :func:`decode`'s path. Never raises."""
    try:
        obj = loads(data)
    except ValueError as exc:
        return MalformedFrame(f"not JSON: {exc}", _excerpt(data))
    if type(obj) is dict:
        # inline: one dict lookup chain per frame, no intermediate object
        topic = obj.get("topic")
        if type(topic) is str and topic.startswith("tickers."):
            body = obj.get("data")
            ts = obj.get("ts")
            cs = obj.get("cs")
            if type(body) is dict and type(ts) is int and (cs is None or type(cs) is int):
                symbol = body.get("symbol")
                kind = obj.get("type")
                if (type(symbol) is str and topic[8:] == symbol
                        and (kind == "snapshot" or (kind == "delta" and category not in _SNAPSHOT_ONLY))):
                    raw_mark = body.get("markPrice")
                    if raw_mark is None:
                        return symbol, kind == "snapshot", body, None, ts, cs
                    try:
                        return symbol, kind == "snapshot", body, dec(raw_mark, "markPrice"), ts, cs
                    except _DECODE_ERRORS:
                        pass  # decode_object reports it
    frame = _decode_parsed(obj, data, category)
    if isinstance(frame, TickerFrame):  # a rarer shape (``ts`` as a digit string...): the same tuple
        return frame.symbol, isinstance(frame, TickerSnapshot), frame.data, frame.mark_price, frame.ts, frame.cs
    return frame


def _decode_parsed(obj: Any, data: str | bytes, category: str | None) -> Frame:
    if not isinstance(obj, dict):
        return MalformedFrame(f"expected a JSON object, got {type(obj).__name__}", _excerpt(data))
    try:
        return decode_object(obj, category=category)
    except _DECODE_ERRORS as exc:
        return MalformedFrame(f"{type(exc).__name__}: {exc}", _excerpt(data))


def decode_object(obj: dict[str, Any], *, category: str | None = None) -> Frame:
    """Classify an already-parsed frame. May raise :data:`_DECODE_ERRORS` (``decode`` catches)."""
    topic = obj.get("topic")
    if isinstance(topic, str) and topic.startswith("tickers."):  # the hot path first
        return _ticker(obj, topic, category)
    op = obj.get("op")
    if op == "auth":
        return AuthResult(success=_bool(obj, "success"), ret_msg=opt_str(obj, "ret_msg") or "",
                          conn_id=opt_str(obj, "conn_id"), req_id=_req_id(obj))
    if op in ("subscribe", "unsubscribe"):
        return SubscribeResult(op=op, success=_bool(obj, "success"), ret_msg=opt_str(obj, "ret_msg") or "",
                               conn_id=opt_str(obj, "conn_id"), req_id=_req_id(obj))
    if obj.get("type") == "COMMAND_RESP":
        return _command_resp(obj)
    if op == "pong" or obj.get("ret_msg") == "pong":
        return _pong(obj)
    if isinstance(topic, str):
        if topic == "position" or topic.startswith("position."):
            return _position_push(obj, topic)
        return UnknownFrame(f"unknown topic {topic[:80]!r}", obj, topic=topic)
    if op is not None:
        return UnknownFrame(f"unhandled op {str(op)[:40]!r}: {str(obj.get('ret_msg', ''))[:120]}", obj)
    return UnknownFrame("frame has no op, type or topic", obj)


def _bool(obj: Mapping[str, Any], key: str) -> bool:
    raw = obj.get(key)
    if not isinstance(raw, bool):
        raise FieldError(f"{key} must be true/false, got {type(raw).__name__}")
    return raw


def _req_id(obj: Mapping[str, Any]) -> str | None:
    raw = obj.get("req_id")
    if raw is None or raw == "":
        return None
    if isinstance(raw, (str, int)) and not isinstance(raw, bool):
        return str(raw)
    raise FieldError(f"req_id must be a string, got {type(raw).__name__}")


def _str_tuple(raw: Any, name: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(t, str) for t in raw):
        raise FieldError(f"{name} must be a list of strings")
    return tuple(raw)


def _command_resp(obj: Mapping[str, Any]) -> SubscribeResult:
    data = obj.get("data") or {}
    if not isinstance(data, dict):
        raise FieldError("COMMAND_RESP data must be an object")
    ok = _str_tuple(data.get("successTopics"), "successTopics")
    failed = _str_tuple(data.get("failTopics"), "failTopics")
    ret_msg = opt_str(obj, "ret_msg") or ("" if not failed else "failTopics: " + ",".join(failed))
    return SubscribeResult(op=None, success=_bool(obj, "success") and not failed, ret_msg=ret_msg,
                           conn_id=opt_str(obj, "conn_id"), req_id=_req_id(obj),
                           success_topics=ok, fail_topics=failed)


def _pong(obj: Mapping[str, Any]) -> Pong:
    server_ms = None
    args = obj.get("args")
    if isinstance(args, list) and args:
        server_ms = to_int(args[0], "pong args[0]")
    if obj.get("op") == "pong":
        shape: Literal["public", "private", "option"] = "private" if "conn_id" in obj else "option"
    else:
        shape = "public"
    return Pong(shape=shape, req_id=_req_id(obj), conn_id=opt_str(obj, "conn_id"), server_time_ms=server_ms)


def _position_push(obj: Mapping[str, Any], topic: str) -> PositionPush:
    data = obj.get("data")
    if not isinstance(data, list):
        raise FieldError("position push data must be a list")
    category = topic.split(".", 1)[1] if "." in topic else None
    positions: list[Position] = []
    rejected: list[str] = []
    for index, item in enumerate(data):
        try:
            positions.append(Position.from_wire(item, category=item.get("category", category)
                                                if isinstance(item, dict) else None))
        except _DECODE_ERRORS as exc:
            symbol = item.get("symbol") if isinstance(item, dict) else None
            rejected.append(f"record {index} ({str(symbol)[:40]}): {type(exc).__name__}: {exc}")
    if rejected and not positions:
        raise FieldError("; ".join(rejected))  # nothing usable: a malformed frame
    return PositionPush(topic=topic, positions=tuple(positions), id=opt_str(obj, "id"),
                        creation_time=opt_int(obj, "creationTime"), rejected=tuple(rejected))


def _ticker(obj: Mapping[str, Any], topic: str, category: str | None) -> TickerSnapshot | TickerDelta:
    data = obj.get("data")
    if not isinstance(data, dict):
        raise FieldError("ticker data must be an object")
    symbol = data.get("symbol")
    if not isinstance(symbol, str) or topic[8:] != symbol:
        raise FieldError(f"ticker data.symbol {symbol!r} does not match topic {topic[:60]!r}")
    kind = obj.get("type")
    ts = obj.get("ts")
    if type(ts) is not int:  # the common case costs one type check
        ts = req_int(obj, "ts")
    cs = obj.get("cs")
    if cs is not None and type(cs) is not int:
        cs = to_int(cs, "cs")
    raw_mark = data.get("markPrice")
    mark = None if raw_mark is None else dec(raw_mark, "markPrice")
    if kind == "snapshot":
        return TickerSnapshot(category, symbol, data, mark, ts, cs)
    if kind == "delta":
        if category in _SNAPSHOT_ONLY:
            raise FieldError(f"a {category} ticker never sends deltas (got one for {symbol})")
        return TickerDelta(category, symbol, data, mark, ts, cs)
    raise FieldError(f"ticker type {str(kind)[:20]!r} is neither snapshot nor delta")
