"""The exchange's state in one place: market, position book, connections, faults, observer.

Pure bookkeeping plus the non-blocking pushes that follow each change; the sockets
themselves live in ``server.py`` and ``rest_http.py``.
"""

from __future__ import annotations

import logging
import math
import random
from collections import deque
from typing import Any

import attrs
import orjson
import trio

from . import private, public, wire
from .account import Account
from .config import SimulatorConfig
from .connection import Connection
from .faults import DropMode, Faults, target_matches
from .instruments import generate_instruments
from .market import Market
from .observe import Observer
from .positions import SETTLEMENT_INTERVAL, Position, PositionBook, ws_record

log = logging.getLogger(__name__)


@attrs.define(eq=False)
class Exchange:
    config: SimulatorConfig
    seed: int
    rng: random.Random
    market: Market
    book: PositionBook
    faults: Faults
    observer: Observer = attrs.field(init=False)
    #: Classic or unified, REST paging and rate-limit behaviour (see account.py)
    account: Account = attrs.Factory(Account)
    _open: dict[str, Connection] = attrs.Factory(dict)
    _closed: deque[Connection] = attrs.field(init=False)
    _serial: int = 0
    _message_serial: int = 0

    def __attrs_post_init__(self) -> None:
        self.observer = Observer(self, self.config.history_limit)
        self.observer.record_frames(self.config.record_frames)
        self._closed = deque(maxlen=self.config.history_limit)
        self.market.on_change = self.observer.changed

    @classmethod
    def create(cls, config: SimulatorConfig, seed: int) -> Exchange:
        instruments = generate_instruments(config.symbols, seed)
        market = Market(instruments, random.Random(seed + 1), config.wall_clock, config.rate,
                        config.mark_move_probability, config.trade_probability)
        book = PositionBook(lambda c, s: market.require(c, s).instrument, market.mark_price, market.now_ms,
                            random.Random(seed + 2))
        faults = Faults(config.max_connections_per_window, config.connection_window, config.connection_limit_status)
        exchange = cls(config, seed, random.Random(seed + 3), market, book, faults)
        exchange.open_random_positions(config.positions, config.position_categories)
        return exchange

    def now_ms(self) -> int:
        return self.market.now_ms()

    def changed(self) -> None:
        self.observer.changed()

    # --- connections --------------------------------------------------------------------------
    def open_connection(self, kind: str, path: str, query: str, peer: tuple[str, int],
                        max_active_time: float | None) -> Connection:
        self._serial += 1
        now = trio.current_time()
        conn = Connection(wire.new_conn_id(kind, self.rng), kind, path, query, peer, now, self._serial,
                          self.config.outbox_limit, self._overflow, max_active_time=max_active_time,
                          last_activity=now)
        self._open[conn.conn_id] = conn
        self.observer.opened(kind)
        return conn

    def _overflow(self, conn: Connection) -> None:
        log.warning("%s %s: client %d frames behind; cutting it", conn.kind, conn.conn_id, conn.queued)
        conn.request_drop(DropMode.RESET, cause="overflow")

    def close_connection(self, conn: Connection, cause: str) -> None:
        if conn.closed_at is not None:
            return
        if conn.kind == wire.PRIVATE:
            conn.topics.clear()
        else:
            public.drop_all(self, conn)
        conn.closed_at = trio.current_time()
        conn.close_cause = conn.drop_cause or cause
        self._open.pop(conn.conn_id, None)
        self._closed.append(conn)
        self.observer.subscriptions_changed()

    def connections(self, target: str = "all") -> list[Connection]:
        """Open connections matching a fault target ("all", "public", "private", a category, a conn_id)."""
        return [c for c in self._open.values() if target_matches(target, c.kind, c.conn_id)]

    def all_connections(self) -> list[Connection]:
        return sorted([*self._closed, *self._open.values()], key=lambda c: c.serial)

    # --- incoming frames ----------------------------------------------------------------------
    def on_message(self, conn: Connection, message: str | bytes) -> None:
        """Answer one client frame. Garbage gets Bybit's error answer; nothing here raises on input."""
        text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
        try:
            frame = orjson.loads(text)
        except orjson.JSONDecodeError:
            frame = None
        if not isinstance(frame, dict):
            conn.push(wire.ack(conn.kind, conn.conn_id, "", success=False, ret_msg=wire.decode_error_text(text)))
            return
        (private.handle if conn.kind == wire.PRIVATE else public.handle)(self, conn, frame)

    def answer_ping(self, conn: Connection, req_id: Any) -> None:
        """Record a JSON ping and answer it with the socket's pong shape, unless pongs are withheld."""
        answered = not self.faults.take_pong_withheld(conn.kind, conn.conn_id)
        self.observer.ping(conn, req_id, answered)
        if answered:
            conn.push(wire.pong(conn.kind, conn.conn_id, self.now_ms(), req_id))

    def refuse_op(self, conn: Connection, op: Any, req_id: Any) -> None:
        conn.push(wire.ack(conn.kind, conn.conn_id, op if isinstance(op, str) else "", success=False,
                           ret_msg="error:invalid op", req_id=req_id))

    # --- positions ----------------------------------------------------------------------------
    def push_position(self, pos: Position) -> None:
        """Push one full record to every authenticated ``position`` / ``position.<category>`` subscriber."""
        record = ws_record(pos, self.market.require(pos.category, pos.symbol).instrument)
        record["side"] = self.account.side(record["side"])
        now_ms, now = self.now_ms(), trio.current_time()
        frames: dict[str, str] = {}
        for conn in self._open.values():
            if conn.kind != wire.PRIVATE or not conn.authenticated:
                continue
            for topic in (private.ALL_IN_ONE, f"position.{pos.category}"):
                if topic in conn.topics:
                    frame = frames.get(topic)
                    if frame is None:
                        frame = frames[topic] = wire.dumps(
                            {"id": self._message_id(), "topic": topic, "creationTime": now_ms, "data": [record]})
                    conn.push(frame)
                    conn.last_activity = now
        self.changed()

    def _message_id(self) -> str:
        self._message_serial += 1
        h = f"{self.rng.getrandbits(128):032x}"
        return f"{self._message_serial}{h[:12]}-{h[12:16]}-{h[16:20]}-{h[20:24]}-{h[24:]}"

    def open_position(self, category: str, symbol: str, side: str, size: Any, **kwargs: Any) -> Position:
        inst = self.market.require(category, symbol).instrument
        if self.account.lacks(category, inst.settle_coin):
            raise ValueError(f"a Classic account holds no {category} {inst.settle_coin} position ({symbol})")
        pos = self.book.open(category, symbol, side, size, **kwargs)
        self.push_position(pos)
        return pos

    def modify_position(self, category: str, symbol: str, **kwargs: Any) -> Position:
        pos = self.book.modify(category, symbol, **kwargs)
        self.push_position(pos)
        return pos

    def close_position(self, category: str, symbol: str, position_idx: int = 0) -> Position:
        pos = self.book.close(category, symbol, position_idx)
        self.push_position(pos)
        return pos

    def open_random_position(self, rng: random.Random, categories: tuple[str, ...] = ("linear", "inverse"),
                             symbols: int | None = None) -> Position | None:
        """Open 1..100 qty steps on a random side of a random symbol (among the first ``symbols``
        of each category) that has no open one-way position; None if there is none left."""
        candidates = []
        for category in categories:
            for symbol in list(self.market.instruments[category])[:symbols]:
                if self.account.lacks(category, self.market.instruments[category][symbol].settle_coin):
                    continue
                current = self.book.get(category, symbol)
                if current is None or not current.is_open:
                    candidates.append((category, symbol))
        if not candidates:
            return None
        category, symbol = rng.choice(candidates)
        step = self.market.require(category, symbol).instrument.qty_step
        return self.open_position(category, symbol, rng.choice(("Buy", "Sell")), step * rng.randint(1, 100))

    def open_random_positions(self, count: int, categories: tuple[str, ...] = ("linear", "inverse")) -> None:
        rng = random.Random(self.seed + 4)
        for _ in range(count):
            if self.open_random_position(rng, categories) is None:
                break

    # --- the 8-hourly USDC settlement ----------------------------------------------------------
    def settle_usdc(self) -> list[Position]:
        """Settle every open USDC contract now (``sessionAvgPrice`` := mark) and push each."""
        settled = self.book.settle()
        for pos in settled:
            self.push_position(pos)
        return settled

    async def run_settlement(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """At 00:00, 08:00 and 16:00 UTC of the simulator's wall clock, as Bybit does."""
        task_status.started()
        while True:
            now = self.config.wall_clock()
            wait = SETTLEMENT_INTERVAL - now % SETTLEMENT_INTERVAL
            await trio.sleep(wait)
            settled = self.settle_usdc()
            if settled:
                log.info("USDC settlement: %d position(s) settled at the mark", len(settled))

    # --- the private idle cut -----------------------------------------------------------------
    async def run_idle_sweeper(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Cut private sockets idle (no ping received, no push sent) for ``max_active_time``."""
        task_status.started()
        sweep = self.config.idle_sweep_interval
        while True:
            changed = self.observer.wait_changed
            live = [(c, c.max_active_time) for c in self._open.values()
                    if c.kind == wire.PRIVATE and c.drop_mode is None and c.max_active_time is not None]
            if not live:
                await changed()
                continue
            deadline = min(c.last_activity + max_active for c, max_active in live)
            if sweep > 0:
                deadline = math.ceil(deadline / sweep) * sweep
            with trio.move_on_at(deadline):
                await changed()  # a new socket or a ping may move the earliest deadline
            now = trio.current_time()
            for conn, max_active in live:
                if conn.drop_mode is None and conn.last_activity + max_active <= now:
                    log.info("private %s idle for %.0fs: cut", conn.conn_id, now - conn.last_activity)
                    conn.request_drop(DropMode.EOF, cause="idle")
