"""Pure domain state: positions, merged tickers, and the combiner that turns them into events.

No trio, no I/O, no clocks: timestamps are arguments. Everything here is exercised
exhaustively by unit and property tests.

- :class:`PositionBook`   open positions keyed by ``(category, symbol, position_idx)``;
  stale pushes ignored; a REST snapshot is authoritative and returns the diff.
- :class:`TickerBook`     one connection's merged ``tickers.*`` state (snapshot + deltas).
- :class:`Combiner`       book + latest mark prices → :class:`PositionUpdate` /
  :class:`PositionClosed`, deduplicated, with unrealized PnL from the fresh mark.
"""

from __future__ import annotations

import decimal
from collections.abc import Iterable, Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Any, ClassVar, Final, Literal

import attrs

from .protocol.frames import Position, TickerFrame, TickerSnapshot
from .protocol.rest import Scope

__all__ = ["Key", "BookDiff", "settle_coin_hint", "LINEAR_SETTLE_COINS", "PositionBook", "TickerBook", "Mark",
           "PositionUpdate", "PositionClosed", "PositionEvent", "Event", "Combiner", "unrealized_pnl", "pnl_entry",
           "Source", "plain_decimal"]

Key = tuple[str, str, int]
Source = Literal["ticker", "position", "rest"]
ZERO: Final = Decimal(0)
#: a REST page's ``time`` is stamped when the response is built, a little after the read
SNAPSHOT_SKEW_MS: Final = 1000
#: how long the book remembers a closed position's version (so an older record of it stays
#: stale): a record that old can come only from a REST list or a push delayed by an hour.
#: Past that it is forgotten, so symbols churning for months (options, dated futures) cost
#: nothing once closed
CLOSED_RETAIN_MS: Final = 3_600_000
#: one context for all PnL arithmetic, whatever the caller's thread-local context says
_CTX: Final = decimal.Context(prec=28, rounding=decimal.ROUND_HALF_EVEN)
#: every coin Bybit settles linear contracts in: a snapshot of all of them covers the category
LINEAR_SETTLE_COINS: Final = frozenset({"USDT", "USDC"})


def settle_coin_hint(category: str, symbol: str) -> str | None:
    """The settle coin Bybit's naming implies for a linear symbol, None if it does not say.

    USDT perpetuals are ``BTCUSDT``, USDT futures ``BTCUSDT-26DEC25``; USDC perpetuals are
    ``BTCPERP`` (newer ones ``BTCUSDC``), USDC futures ``BTC-26DEC25``. Used only for a
    position no REST page has placed yet (a push does not carry its settle coin).
    """
    if category != "linear":
        return None
    head = symbol.split("-", 1)[0]
    if head.endswith("USDT"):
        return "USDT"
    if head.endswith(("PERP", "USDC")) or "-" in symbol:
        return "USDC"
    return None


# --- positions --------------------------------------------------------------------------

@attrs.frozen
class BookDiff:
    """What a push or snapshot changed. ``closed`` holds each position's last open record."""

    opened: tuple[Position, ...] = ()
    changed: tuple[Position, ...] = ()
    closed: tuple[Position, ...] = ()
    #: when each of ``closed`` closed, aligned with it: the flat record's ``updatedTime``, or
    #: the snapshot's ``as_of_ms`` for a position that vanished from one (None if unknown)
    closed_at: tuple[int | None, ...] = ()
    #: every change in the order it happened: ``("open" | "change", record, None)`` or
    #: ``("close", last open record, closed_at)``. One push may close a position and open it
    #: again (or the reverse); the events must follow that order.
    steps: tuple[tuple[str, Position, int | None], ...] = ()
    #: a snapshot's open positions it did not list but that were updated within its skew
    #: (``snapshot_skew_ms``): kept open, since the list may predate their update; only a
    #: snapshot read after that update can close them
    unconfirmed: tuple[Key, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.opened or self.changed or self.closed)


@attrs.define(eq=False)
class PositionBook:
    """Open positions by ``(category, symbol, position_idx)`` (hedge mode has idx 1 and 2).

    Ordering uses ``(updatedTime, seq)``: a record older than what we applied is stale and
    ignored; an equal one is applied (a settings-only change re-uses seq, §5). A snapshot
    replaces everything in its categories except entries the book knows to be strictly
    newer (a push that raced the REST call); a position absent from the snapshot is
    closed unless the book saw it updated after the snapshot was taken (``as_of_ms``) or
    the snapshot did not cover its (category, settle coin): a linear snapshot asked for
    USDT only says nothing about a USDC position.

    A position a snapshot closed leaves a tombstone, the time the list was read: a push
    older than that is stale. A later snapshot is not: one read after the tombstone that
    lists the position open wins over it (the earlier list missed a live position, which
    the next reconciliation must heal, not confirm).

    In one-way mode a position that reverses in one record (``Buy`` to ``Sell`` through
    zero) is a close of the old position and an open of the new one, in that order.
    """

    #: how much earlier than the response's ``time`` a REST list may have been read
    snapshot_skew_ms: int = SNAPSHOT_SKEW_MS
    _open: dict[Key, Position] = attrs.Factory(dict)
    _versions: dict[Key, tuple[int, int]] = attrs.Factory(dict)
    #: when the snapshot that closed a position (no close record seen) was read, epoch ms
    _tombstones: dict[Key, int] = attrs.Factory(dict)
    _by_symbol: dict[tuple[str, str], set[Key]] = attrs.Factory(dict)
    #: the settle coin of each key a REST page (asked per coin) has shown
    _coins: dict[Key, str] = attrs.Factory(dict)
    #: closed keys and when they closed (epoch ms), oldest first: forgotten after CLOSED_RETAIN_MS
    _closed: dict[Key, int] = attrs.Factory(dict)

    def __len__(self) -> int:
        return len(self._open)

    def get(self, key: Key) -> Position | None:
        return self._open.get(key)

    def open_positions(self) -> tuple[Position, ...]:
        return tuple(self._open.values())

    def keys_for(self, category: str, symbol: str) -> tuple[Key, ...]:
        return tuple(self._by_symbol.get((category, symbol), ()))

    def symbols(self, category: str) -> frozenset[str]:
        """The desired ticker subscriptions of ``category``: symbols with an open position."""
        return frozenset(sym for (cat, sym), keys in self._by_symbol.items() if cat == category and keys)

    def apply_push(self, positions: Iterable[Position]) -> BookDiff:
        diff = _DiffBuilder()
        for position in positions:
            if position.updated_time is not None and self._stale(position):
                continue  # we already applied something newer, or a snapshot read later closed it
            self._set(position, diff)
        return diff.build()

    def _stale(self, position: Position, *, tombstone: bool = True) -> bool:
        key = position.key
        known = self._versions.get(key)
        if known is not None and position.version < known:
            return True
        closed = self._tombstones.get(key) if tombstone else None
        return closed is not None and position.version < (closed, -1)

    def apply_snapshot(self, positions: Iterable[Position], categories: Iterable[str],
                       as_of_ms: int | None, *, coverage: Iterable[Scope] | None = None,
                       uncertain: Iterable[tuple[str, str]] = ()) -> BookDiff:
        """Apply a REST snapshot of ``categories``. It closes an absent position only where it
        is authoritative: ``coverage`` lists the (category, settle coin) scopes it read
        completely (None: all of ``categories``, whatever the coin), and ``uncertain`` the
        (category, symbol) pairs whose records it could not read."""
        unknown = frozenset(uncertain)
        scope = frozenset(categories)
        covered = self._coverage(scope, coverage)
        latest: dict[Key, Position] = {}
        for position in positions:
            if position.category in scope:
                prior = latest.get(position.key)
                if prior is None or position.version >= prior.version:
                    latest[position.key] = position
        # ``as_of_ms`` is when the response was built; the list was read a little earlier.
        read_at = None if as_of_ms is None else as_of_ms - self.snapshot_skew_ms
        diff = _DiffBuilder()
        for key, position in latest.items():
            if position.settle_coin is not None:
                self._coins[key] = position.settle_coin
            tombstone = self._tombstones.get(key)
            # a list read after the one that closed it wins over its tombstone (``_set`` drops it)
            later = tombstone is not None and read_at is not None and read_at > tombstone
            if position.updated_time is not None and self._stale(position, tombstone=not later):
                continue  # a push newer than the snapshot already arrived
            self._set(position, diff)
        for key, current in list(self._open.items()):
            if key[0] not in scope or key in latest or not self._covers(covered, key) or key[:2] in unknown:
                continue
            # A position updated within the skew may simply be missing from the list.
            if read_at is not None and current.updated_time is not None and current.updated_time > read_at:
                diff.unconfirmed.append(key)  # (re)opened after the snapshot was read, or closed since
                continue
            self._remove(key, diff, as_of_ms)
            if read_at is not None:
                self._tombstones[key] = read_at  # older pushes stay ignored
        return diff.build()

    def settle_coin(self, key: Key) -> str | None:
        """The settle coin a REST page placed ``key`` in, else what its symbol implies."""
        return self._coins.get(key) or settle_coin_hint(key[0], key[1])

    @staticmethod
    def _coverage(scope: frozenset[str], coverage: Iterable[Scope] | None) -> dict[str, frozenset[str | None]]:
        if coverage is None:
            return {category: frozenset({None}) for category in scope}
        coins: dict[str, set[str | None]] = {}
        for category, coin in coverage:
            coins.setdefault(category, set()).add(coin)
        return {category: frozenset(c) for category, c in coins.items()}

    def _covers(self, covered: Mapping[str, frozenset[str | None]], key: Key) -> bool:
        coins = covered.get(key[0])
        if not coins:
            return False
        if None in coins:
            return True
        coin = self.settle_coin(key)
        return coin in coins if coin is not None else LINEAR_SETTLE_COINS <= coins

    def _set(self, position: Position, diff: _DiffBuilder) -> None:
        key = position.key
        if position.updated_time is not None:
            self._versions[key] = position.version
        self._tombstones.pop(key, None)  # this record is newer than the snapshot that closed it
        previous = self._open.get(key)
        if position.is_open:
            self._closed.pop(key, None)
            if previous is not None and previous.side != position.side:
                # reversed through zero in one record (one-way mode): the old position closed
                self._remove(key, diff, position.updated_time)
                previous = None
            self._open[key] = position
            self._by_symbol.setdefault((key[0], key[1]), set()).add(key)
            if previous is None:
                diff.opened.append(position)
                diff.steps.append(("open", position, None))
            elif previous != position:
                diff.changed.append(position)
                diff.steps.append(("change", position, None))
        elif previous is not None:
            self._remove(key, diff, position.updated_time)
        elif position.updated_time is not None:  # flat and not open here (a hedge mode's idle leg)
            self._closed.pop(key, None)
            self._closed[key] = position.updated_time  # its version expires like a close's
            self._forget_closed_before(position.updated_time - CLOSED_RETAIN_MS)

    def _remove(self, key: Key, diff: _DiffBuilder, closed_at: int | None) -> None:
        last = self._open.pop(key)
        at = closed_at if closed_at is not None else last.updated_time
        if at is not None:
            self._closed.pop(key, None)
            self._closed[key] = at  # the newest close last
            self._forget_closed_before(at - CLOSED_RETAIN_MS)
        diff.closed.append(last)
        diff.closed_at.append(closed_at)
        diff.steps.append(("close", last, closed_at))
        keys = self._by_symbol.get((key[0], key[1]))
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_symbol[(key[0], key[1])]

    def _forget_closed_before(self, cutoff_ms: int) -> None:
        """Drop what the book keeps of positions closed before ``cutoff_ms`` (oldest first;
        amortised O(1) per close)."""
        closed = self._closed
        while closed:
            key = next(iter(closed))
            if closed[key] >= cutoff_ms:
                return
            del closed[key]
            if key not in self._open:
                self._versions.pop(key, None)
                self._tombstones.pop(key, None)
                self._coins.pop(key, None)


@attrs.define
class _DiffBuilder:
    opened: list[Position] = attrs.Factory(list)
    changed: list[Position] = attrs.Factory(list)
    closed: list[Position] = attrs.Factory(list)
    closed_at: list[int | None] = attrs.Factory(list)
    steps: list[tuple[str, Position, int | None]] = attrs.Factory(list)
    unconfirmed: list[Key] = attrs.Factory(list)

    def build(self) -> BookDiff:
        return BookDiff(tuple(self.opened), tuple(self.changed), tuple(self.closed), tuple(self.closed_at),
                        tuple(self.steps), tuple(self.unconfirmed))


# --- tickers ----------------------------------------------------------------------------

#: what a marks-only book holds for a symbol it has a snapshot of (never written to)
_NO_FIELDS: Final[Mapping[str, Any]] = MappingProxyType({})


#: deltas in a row with a ``cs`` below the last one after which the sequence is taken to
#: have restarted (one or two are stray frames, dropped)
CS_RESET_AFTER: Final = 3

@attrs.define(eq=False)
class TickerBook:
    """Merged ticker state of one public connection; create a new one per connection.

    A snapshot replaces a symbol's state; a delta updates it in place (absent fields are
    unchanged). A delta with no snapshot before it on this connection, or with a ``cs``
    lower than the last one, is ignored and counted. ``markPrice`` is read from the
    merged state only, so a delta without it keeps the last one.

    ``fields=False`` keeps only what the stream reads, the mark (and the snapshot, ``cs``
    and ``ts`` bookkeeping that decides whether a frame counts): the public actors' books,
    where merging the other fields cost ~7% of the stream's CPU and nothing read them.
    Marks, return values and counters are the same either way (a property test holds them
    equal); :meth:`ticker` needs ``fields=True``.
    """

    category: str | None = None
    fields: bool = attrs.field(default=True, kw_only=True)
    _state: dict[str, Mapping[str, Any]] = attrs.Factory(dict)
    _marks: dict[str, Decimal] = attrs.Factory(dict)
    _cs: dict[str, int] = attrs.Factory(dict)
    last_ts: dict[str, int] = attrs.Factory(dict)
    orphan_deltas: int = 0
    out_of_order: int = 0
    #: symbol -> deltas in a row whose ``cs`` went back (see CS_RESET_AFTER)
    _behind: dict[str, int] = attrs.Factory(dict)
    #: times a symbol's ``cs`` was taken to have restarted lower
    cs_resets: int = 0

    def apply(self, frame: TickerFrame) -> Decimal | None:
        """Merge ``frame``; return the mark price if this frame set or changed it."""
        return self.apply_fields(frame.symbol, isinstance(frame, TickerSnapshot), frame.data, frame.mark_price,
                                 frame.ts, frame.cs)

    def apply_fields(self, symbol: str, snapshot: bool, data: Mapping[str, Any], mark: Decimal | None,
                     ts: int, cs: int | None) -> Decimal | None:
        """:meth:`apply` for a frame given as its fields (``protocol.frames.TickerFields``,
        what the public socket's hot path decodes to)."""
        if snapshot:
            self._state[symbol] = dict(data) if self.fields else _NO_FIELDS
        else:
            state = self._state.get(symbol)
            if state is None:
                self.orphan_deltas += 1
                return None
            if cs is not None:
                last_cs = self._cs.get(symbol)
                if last_cs is not None and cs < last_cs:
                    # A stray older frame is dropped. A sequence that went back and stays
                    # back is the exchange's cs restarting (a matching-engine restart): its
                    # deltas are taken, or the mark would freeze while frames keep coming,
                    # and nothing (silence check, REST fallback) would notice.
                    behind = self._behind.get(symbol, 0) + 1
                    if behind < CS_RESET_AFTER:
                        self._behind[symbol] = behind
                        self.out_of_order += 1
                        return None
                    self.cs_resets += 1
                    del self._behind[symbol]
                elif self._behind:
                    self._behind.pop(symbol, None)
            if self.fields:
                state.update(data)  # type: ignore[attr-defined]  # a dict when fields are kept
        if cs is not None:
            self._cs[symbol] = cs
        self.last_ts[symbol] = ts
        if mark is None:
            if snapshot:
                self._marks.pop(symbol, None)
            return None
        if not snapshot and self._marks.get(symbol) == mark:
            return None
        self._marks[symbol] = mark
        return mark

    def mark_price(self, symbol: str) -> Decimal | None:
        return self._marks.get(symbol)

    def ticker(self, symbol: str) -> Mapping[str, Any] | None:
        """A read-only view of the merged fields (no copy)."""
        if not self.fields:
            raise ValueError("this TickerBook keeps marks only (fields=False): it has no merged fields")
        state = self._state.get(symbol)
        return None if state is None else MappingProxyType(state)

    def symbols(self) -> frozenset[str]:
        return frozenset(self._state)

    def __len__(self) -> int:
        return len(self._state)

    def forget(self, symbol: str) -> None:
        """Drop everything known of ``symbol`` (its topic was unsubscribed): a later
        subscribe starts again from its snapshot."""
        for table in (self._state, self._marks, self._cs, self.last_ts, self._behind):
            table.pop(symbol, None)


# --- events -----------------------------------------------------------------------------

@attrs.frozen
class Mark:
    """The latest mark price of a symbol and when the exchange / we saw it (epoch ms).
    ``read_at``: our read of the frame in epoch seconds, finer than ``received_ts`` (for the
    frame-to-event latency; None if the producer did not stamp it)."""

    price: Decimal
    exchange_ts: int | None
    received_ts: int
    read_at: float | None = attrs.field(default=None, eq=False)


def unrealized_pnl(category: str, side: str, size: Decimal, entry: Decimal | None,
                   mark: Decimal | None) -> Decimal | None:
    """Linear and option: ``(mark - entry) * size``; inverse: ``size * (1/entry - 1/mark)``
    (computed as ``size * (mark - entry) / (entry * mark)``, one rounding); negated for Sell.
    None when a price is unknown."""
    if side == "" or size == 0:
        return ZERO
    if entry is None or mark is None:
        return None
    if category == "inverse":
        if entry == 0 or mark == 0:
            return None
        pnl = _CTX.divide(_CTX.multiply(size, _CTX.subtract(mark, entry)), _CTX.multiply(entry, mark))
    else:
        pnl = _CTX.multiply(_CTX.subtract(mark, entry), size)
    if side == "Sell":
        pnl = _CTX.minus(pnl)
    return pnl if pnl != 0 else ZERO


def pnl_entry(position: Position) -> Decimal | None:
    """The price ``unrealized_pnl`` is measured from.

    USDC perpetuals and futures are settled every 8 hours: Bybit then realises the PnL so
    far and its UI shows PnL since the last settlement, from ``sessionAvgPrice``. We follow
    the UI for those (a record carrying a non-zero ``sessionAvgPrice``); every other
    contract, and a USDC one before its first settlement data, uses the entry (``avgPrice``
    / ``entryPrice``), which the event still reports as ``entry_price``.
    """
    return position.session_avg_price if position.session_avg_price is not None else position.entry_price


def plain_decimal(value: Decimal | None) -> str | None:
    """Decimal → JSON string without exponent (``1E-7`` → ``0.0000001``): ``format(value, "f")``.
    ``str`` spells it the same whenever it has no exponent (prices and sizes as Bybit sends
    them) at a third of the cost; a property test holds the two equal."""
    if value is None:
        return None
    text = str(value)
    return text if "E" not in text else format(value, "f")


@attrs.frozen
class PositionEvent:
    """Base of the two events; ``name`` is the event name the bot routes on.

    ``source`` says what caused it: ``"ticker"`` (mark moved; conflatable), ``"position"``
    (a private push) or ``"rest"`` (a snapshot after (re)connect or reconciliation).
    Timestamps are epoch milliseconds.
    """

    name: ClassVar[str]

    symbol: str
    category: str
    side: str
    size: Decimal
    entry_price: Decimal | None
    mark_price: Decimal | None
    unrealized_pnl: Decimal | None
    position_idx: int
    source: Source
    exchange_ts: int | None
    received_ts: int
    #: what the position record says (None when the exchange left it empty)
    leverage: Decimal | None = None
    liq_price: Decimal | None = None
    take_profit: Decimal | None = None
    stop_loss: Decimal | None = None
    trailing_stop: Decimal | None = None
    cum_realised_pnl: Decimal | None = None
    #: the exchange's ``createdTime`` / ``updatedTime`` of the position (epoch ms): the
    #: position's age survives our restarts
    created_time: int | None = None
    updated_time: int | None = None
    #: how old ``mark_price`` was when this event was made (ms since we received it from the
    #: ticker stream, or since the position record that carried it was updated)
    mark_age_ms: int | None = None

    @property
    def key(self) -> Key:
        return (self.category, self.symbol, self.position_idx)

    @property
    def event(self) -> str:
        """The event name (``name``), as on :mod:`~hybrid_actors.notices`: what consumers route on."""
        return self.name

    @property
    def is_lifecycle(self) -> bool:
        """Open / size / side / entry changes are never dropped; price moves may conflate."""
        return self.source != "ticker"

    def as_dict(self) -> dict[str, Any]:
        """The event's data with Decimals kept (for Python consumers such as the bridge)."""
        return {"event": self.name, "symbol": self.symbol, "category": self.category, "side": self.side,
                "size": self.size,
                "entry_price": self.entry_price, "mark_price": self.mark_price,
                "unrealized_pnl": self.unrealized_pnl, "position_idx": self.position_idx,
                "source": self.source, "exchange_ts": self.exchange_ts, "received_ts": self.received_ts,
                "leverage": self.leverage, "liq_price": self.liq_price, "take_profit": self.take_profit,
                "stop_loss": self.stop_loss, "trailing_stop": self.trailing_stop,
                "cum_realised_pnl": self.cum_realised_pnl, "created_time": self.created_time,
                "updated_time": self.updated_time, "mark_age_ms": self.mark_age_ms}

    def to_json(self) -> dict[str, Any]:
        """The JSON contract: decimals as strings, timestamps as integer ms."""
        return {"event": self.name, "symbol": self.symbol, "category": self.category, "side": self.side,
                "size": plain_decimal(self.size), "entry_price": plain_decimal(self.entry_price),
                "mark_price": plain_decimal(self.mark_price), "unrealized_pnl": plain_decimal(self.unrealized_pnl),
                "position_idx": self.position_idx, "source": self.source,
                "exchange_ts": self.exchange_ts, "received_ts": self.received_ts,
                "leverage": plain_decimal(self.leverage), "liq_price": plain_decimal(self.liq_price),
                "take_profit": plain_decimal(self.take_profit), "stop_loss": plain_decimal(self.stop_loss),
                "trailing_stop": plain_decimal(self.trailing_stop),
                "cum_realised_pnl": plain_decimal(self.cum_realised_pnl),
                "created_time": self.created_time, "updated_time": self.updated_time,
                "mark_age_ms": self.mark_age_ms}


@attrs.frozen
class PositionUpdate(PositionEvent):
    """``position.update``: a position's state with a fresh mark price and PnL."""

    name: ClassVar[str] = "position.update"


@attrs.frozen
class PositionClosed(PositionEvent):
    """``position.closed``: size is 0; side and entry are the closed position's last ones."""

    name: ClassVar[str] = "position.closed"

    @property
    def is_lifecycle(self) -> bool:
        return True


Event = PositionUpdate | PositionClosed


def reversed_side(shown: PositionEvent, side: str) -> bool:
    """Whether a position the consumer last saw as ``shown`` now on ``side`` reversed through
    zero (one-way mode): both sides set and different."""
    return bool(shown.side) and bool(side) and shown.side != side


def closed_from(shown: PositionEvent, *, source: Source, exchange_ts: int | None, received_ts: int) -> PositionClosed:
    """``position.closed`` for a position the consumer last saw as ``shown`` (its side, entry,
    mark and record fields), closed at ``exchange_ts``."""
    return PositionClosed(
        symbol=shown.symbol, category=shown.category, side=shown.side, size=ZERO,
        entry_price=shown.entry_price, mark_price=shown.mark_price, unrealized_pnl=ZERO,
        position_idx=shown.position_idx, source=source, exchange_ts=exchange_ts,
        received_ts=received_ts, leverage=shown.leverage, liq_price=shown.liq_price,
        take_profit=shown.take_profit, stop_loss=shown.stop_loss, trailing_stop=shown.trailing_stop,
        cum_realised_pnl=shown.cum_realised_pnl, created_time=shown.created_time,
        updated_time=exchange_ts if exchange_ts is not None else shown.updated_time,
        mark_age_ms=None if shown.mark_age_ms is None else shown.mark_age_ms + max(0, received_ts - shown.received_ts))


#: what the consumer can see of a position: side, size, entry, mark, whether the mark is
#: live (from the ticker stream) or the snapshot a push / REST record carried, the PnL, and
#: the record's settings (leverage, liq. price, TP, SL, trailing stop, realised PnL)
_Observed = tuple[Any, ...]


def _record_fields(position: Position) -> dict[str, Any]:
    """The position record's fields every event of it carries."""
    return {"leverage": position.leverage, "liq_price": position.liq_price, "take_profit": position.take_profit,
            "stop_loss": position.stop_loss, "trailing_stop": position.trailing_stop,
            "cum_realised_pnl": position.cum_realised_pnl, "created_time": position.created_time,
            "updated_time": position.updated_time}


def _age(now_ms: int, seen_ms: int | None) -> int | None:
    return None if seen_ms is None else max(0, now_ms - seen_ms)


@attrs.define(eq=False)
class Combiner:
    """Book + marks → deduplicated events. Kept outside the socket actors, so an actor
    restart loses none of it."""

    book: PositionBook = attrs.Factory(PositionBook)
    marks: dict[tuple[str, str], Mark] = attrs.Factory(dict)
    #: REST ticker marks for symbols whose live mark went stale (see :meth:`apply_fallback_marks`)
    fallback: dict[tuple[str, str], Mark] = attrs.Factory(dict)
    #: what the consumer has been given, per open position (committed once enqueued)
    _shown: dict[Key, tuple[_Observed, PositionUpdate]] = attrs.Factory(dict)
    #: changes to ``_shown`` made by events not yet handed over (None: a close)
    _staged: dict[Key, tuple[_Observed, PositionUpdate] | None] = attrs.Factory(dict)
    _views: dict[Key, PositionUpdate] = attrs.Factory(dict)
    #: the last snapshot's :attr:`BookDiff.unconfirmed`: open positions it could not close
    #: because they were updated within its skew (a snapshot read a little later can)
    unconfirmed: tuple[Key, ...] = ()
    #: symbols whose last position closed, and when (received ms), oldest first: their marks
    #: are dropped after CLOSED_RETAIN_MS unless a position holds them again
    _unheld: dict[tuple[str, str], int] = attrs.Factory(dict)

    def apply_push(self, positions: Iterable[Position], *, received_ts: int, commit: bool = True) -> list[Event]:
        return self._done(self._diff_events(self.book.apply_push(positions), "position", received_ts), commit)

    def apply_snapshot(self, positions: Iterable[Position], *, categories: Iterable[str],
                       as_of_ms: int | None, received_ts: int, commit: bool = True,
                       coverage: Iterable[Scope] | None = None,
                       uncertain: Iterable[tuple[str, str]] = ()) -> list[Event]:
        diff = self.book.apply_snapshot(positions, categories, as_of_ms, coverage=coverage, uncertain=uncertain)
        self.unconfirmed = diff.unconfirmed
        return self._done(self._diff_events(diff, "rest", received_ts), commit)

    def apply_marks(self, category: str, marks: Mapping[str, Mark], *, commit: bool = True) -> list[Event]:
        """New mark prices from one public batch; events for the positions they move."""
        events: list[Event] = []
        latest, fallback, view, ticker_view, emit = (self.marks, self.fallback, self._view, self._ticker_view,
                                                     self._emit_if_changed)
        # the book's own tables, read only (``keys_for`` + ``get`` without a tuple per mark)
        by_symbol, positions = self.book._by_symbol, self.book._open
        for symbol, mark in marks.items():
            pair = (category, symbol)
            latest[pair] = mark
            keys = by_symbol.get(pair)
            if not keys:
                continue
            if pair in fallback:  # a REST mark may be the fresher one: the general path decides
                for key in keys:
                    position = positions.get(key)
                    if position is not None:
                        emit(*view(position, "ticker", mark.received_ts), events, key)
                continue
            for key in keys:
                position = positions.get(key)
                if position is not None:
                    emit(*ticker_view(position, mark), events, key)
        return self._done(events, commit)

    def apply_fallback_marks(self, category: str, marks: Mapping[str, Mark], *, commit: bool = True) -> list[Event]:
        """Marks from the REST ticker poll for symbols whose live mark went stale: events
        (``source="rest"``) for the positions whose mark they change. A REST mark equal to
        the mark the consumer has is no news; a live tick newer than it wins again."""
        events: list[Event] = []
        for symbol, mark in marks.items():
            self.fallback[(category, symbol)] = mark
            for key in self.book.keys_for(category, symbol):
                position = self.book.get(key)
                if position is None:
                    continue
                view, live = self._view(position, "rest", mark.received_ts)
                seen = self._seen(key)
                if seen is not None and seen[0][:4] == (view.side, view.size, view.entry_price, view.mark_price):
                    self._views[key] = view
                    continue  # same price: nothing to say (and a later live tick is news only if it moves)
                self._emit_if_changed(view, live, events)
        return self._done(events, commit)

    def commit(self) -> None:
        """The events returned since the last commit have been handed over."""
        for key, shown in self._staged.items():
            if shown is None:
                self._shown.pop(key, None)
            else:
                self._shown[key] = shown
        self._staged.clear()

    def rollback(self) -> None:
        """The events returned since the last commit were not handed over."""
        self._staged.clear()

    def resync(self, received_ts: int, *, commit: bool = True) -> list[Event]:
        """After a crash between a state change and the hand-over of its events: drop what
        was not handed over and emit whatever the consumer has not seen of the book now
        (opens, changes, and closes, from the last view it was given)."""
        self.rollback()
        events: list[Event] = []
        for key, (_observed, view) in list(self._shown.items()):
            if self.book.get(key) is None:
                self._staged[key] = None
                self._views.pop(key, None)
                events.append(PositionClosed(
                    symbol=view.symbol, category=view.category, side=view.side, size=ZERO,
                    entry_price=view.entry_price, mark_price=view.mark_price, unrealized_pnl=ZERO,
                    position_idx=view.position_idx, source="rest", exchange_ts=view.exchange_ts,
                    received_ts=received_ts, leverage=view.leverage, liq_price=view.liq_price,
                    take_profit=view.take_profit, stop_loss=view.stop_loss, trailing_stop=view.trailing_stop,
                    cum_realised_pnl=view.cum_realised_pnl, created_time=view.created_time,
                    updated_time=view.updated_time,
                    mark_age_ms=None if view.mark_age_ms is None
                    else view.mark_age_ms + max(0, received_ts - view.received_ts)))
        for position in self.book.open_positions():
            shown = self._shown.get(position.key)
            if shown is not None and reversed_side(shown[1], position.side):  # the close was not handed over
                self._staged[position.key] = None
                events.append(closed_from(shown[1], source="rest", exchange_ts=position.updated_time,
                                          received_ts=received_ts))
            self._emit_if_changed(*self._view(position, "rest", received_ts), events)
        return self._done(events, commit)

    def _done(self, events: list[Event], commit: bool) -> list[Event]:
        if commit:
            self.commit()
        return events

    def _seen(self, key: Key) -> tuple[_Observed, PositionUpdate] | None:
        return self._staged[key] if key in self._staged else self._shown.get(key)

    def desired_symbols(self, category: str) -> frozenset[str]:
        return self.book.symbols(category)

    def current(self) -> tuple[PositionUpdate, ...]:
        """The latest view of every open position (what ``stream.positions()`` returns)."""
        return tuple(self._views.values())

    def _diff_events(self, diff: BookDiff, source: Source, received_ts: int) -> list[Event]:
        events: list[Event] = []
        for kind, position, closed_at in diff.steps:  # in order: a close and a reopen in one push
            if kind != "close":
                self._emit_if_changed(*self._view(position, source, received_ts), events)
                continue
            if self._seen(position.key) is None:
                self._views.pop(position.key, None)  # opened and closed before anyone saw it
                continue
            self._staged[position.key] = None
            self._views.pop(position.key, None)
            mark = self._mark_for(position)
            # the close's own time, not the last open record's (which may predate the close
            # by hours and precede ticker events already emitted for the position)
            fields = _record_fields(position)
            if closed_at is not None:
                fields["updated_time"] = closed_at
            events.append(PositionClosed(
                symbol=position.symbol, category=position.category, side=position.side, size=ZERO,
                entry_price=position.entry_price, mark_price=mark[0], unrealized_pnl=ZERO,
                position_idx=position.position_idx, source=source,
                exchange_ts=closed_at if closed_at is not None else position.updated_time,
                received_ts=received_ts, mark_age_ms=_age(received_ts, mark[3]), **fields))
        self._forget_unheld_marks(diff, received_ts)
        return events

    def _forget_unheld_marks(self, diff: BookDiff, now_ms: int) -> None:
        """Marks of symbols nobody holds any more are kept for :data:`CLOSED_RETAIN_MS` (a
        position reopened while its ticker is still subscribed has its live mark at once),
        then dropped, so symbols churning for months cost nothing once closed."""
        unheld, held = self._unheld, self.book._by_symbol
        for kind, position, _closed_at in diff.steps:
            pair = (position.category, position.symbol)
            if pair in held:
                unheld.pop(pair, None)
            elif kind == "close":
                unheld.pop(pair, None)
                unheld[pair] = now_ms  # the newest last
        cutoff = now_ms - CLOSED_RETAIN_MS
        while unheld:
            pair = next(iter(unheld))
            if unheld[pair] >= cutoff:
                return
            del unheld[pair]
            if pair not in held:
                self.marks.pop(pair, None)
                self.fallback.pop(pair, None)

    def _emit_if_changed(self, view: PositionUpdate, live: bool, events: list[Event], key: Key | None = None) -> None:
        """Emit ``view`` if anything observable changed. The first live mark of a position
        is news even at an unchanged price: it says the ticker stream now covers it.
        ``key``: ``view.key``, when the caller has it at hand."""
        if key is None:
            key = view.key
        observed = (view.side, view.size, view.entry_price, view.mark_price, live, view.unrealized_pnl,
                    view.leverage, view.liq_price, view.take_profit, view.stop_loss, view.trailing_stop,
                    view.cum_realised_pnl)
        self._views[key] = view
        staged = self._staged
        seen = staged[key] if key in staged else self._shown.get(key)
        if seen is None or seen[0] != observed:
            staged[key] = (observed, view)
            events.append(view)

    def _mark_for(self, position: Position) -> tuple[Decimal | None, int | None, bool, int | None]:
        """The fresher of the ticker mark and the mark the position record carried:
        ``(price, exchange_ts, live, seen_ms)``; ``seen_ms`` is when we received the ticker
        (or REST fallback) mark, or the record's ``updatedTime`` (the mark's age counts from it)."""
        pair = (position.category, position.symbol)
        mark = self.marks.get(pair)
        live = mark is not None
        fallback = self.fallback.get(pair)
        if fallback is not None and (mark is None or (fallback.exchange_ts is not None and mark.exchange_ts is not None
                                                      and fallback.exchange_ts > mark.exchange_ts)):
            mark, live = fallback, False  # a REST mark newer than the last live one
        if mark is not None and (position.mark_price is None or mark.exchange_ts is None
                                 or position.updated_time is None
                                 or mark.exchange_ts >= position.updated_time):
            return mark.price, mark.exchange_ts, live, mark.received_ts
        seen = position.updated_time if position.mark_price is not None else None
        return position.mark_price, position.updated_time, False, seen

    @staticmethod
    def _ticker_view(position: Position, mark: Mark) -> tuple[PositionUpdate, bool]:
        """``_view(position, "ticker", mark.received_ts)`` when ``mark`` is the position's latest
        live mark and no REST fallback mark is known for it (the ticker hot path: the same
        event, without looking the mark up again; a property test holds the two equal)."""
        received_ts = mark.received_ts
        mark_ts = mark.exchange_ts
        updated = position.updated_time
        if position.mark_price is None or mark_ts is None or updated is None or mark_ts >= updated:
            price, live, age = mark.price, True, 0  # seen when received: age 0
        else:  # the record carried a newer mark than the ticker's
            price, mark_ts, live, age = position.mark_price, updated, False, max(0, received_ts - updated)
        category, side, size = position.category, position.side, position.size
        session = position.session_avg_price
        return PositionUpdate(
            position.symbol, category, side, size, position.entry_price, price,
            unrealized_pnl(category, side, size, position.entry_price if session is None else session, price),
            position.position_idx, "ticker", mark_ts, received_ts,
            position.leverage, position.liq_price, position.take_profit, position.stop_loss, position.trailing_stop,
            position.cum_realised_pnl, position.created_time, updated, age), live

    def _view(self, position: Position, source: Source, received_ts: int) -> tuple[PositionUpdate, bool]:
        mark_price, mark_ts, live, seen_ms = self._mark_for(position)
        if source == "rest" and not live and mark_price is not None:
            seen_ms = received_ts  # a REST record's mark is as of the answer, not of its updatedTime
        # positional, in PositionEvent's field order (a third of the cost of keywords on the
        # ticker path; test_foundation_state checks every field of the views it makes)
        return PositionUpdate(
            position.symbol, position.category, position.side, position.size, position.entry_price, mark_price,
            unrealized_pnl(position.category, position.side, position.size, pnl_entry(position), mark_price),
            position.position_idx, source, mark_ts if source == "ticker" else position.updated_time, received_ts,
            position.leverage, position.liq_price, position.take_profit, position.stop_loss, position.trailing_stop,
            position.cum_realised_pnl, position.created_time, position.updated_time,
            None if seen_ms is None else max(0, received_ts - seen_ms)), live
