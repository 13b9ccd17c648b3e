"""Issue 11 rollout against the simulator, on virtual time: who feeds the consumer in each
mode, the REST/WS comparator, the stale-price fallback, each rollback trigger at its
threshold, and no lifecycle event lost or doubled across a rollback and a return."""

from __future__ import annotations

from decimal import Decimal

import pytest
import trio

from hybrid_actors.rollout import RolloutPolicy, routes_hybrid
from hybrid_actors.state import PositionClosed
from stack import TEST_TIMEOUT, Stack, eventually, running, sim_config

pytestmark = pytest.mark.integration

LONG = 1200  # virtual seconds for tests that wait out rollback thresholds


def sources(stack: Stack, after: int = 0) -> set[str]:
    return {e.source for e in stack.log.events[after:]}


def rollout(stack: Stack) -> dict:
    return stack.stream.health().rollout


def rollout_notices(stack: Stack) -> list:
    return [n for n in stack.log.notices if n.event in ("stream.rollback", "stream.return")]


# --- modes: who gets which source ------------------------------------------------------------------

async def test_rest_mode_feeds_the_consumer_from_rest_alone(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with running(sim_config(), mode="rest") as s:
            sim = s.sim
            assert sim.observe.opened_count("private") == 0 and sim.observe.opened_count("linear") == 0
            opened_at = trio.current_time()
            sim.control.open_position("BTCUSDT", "Buy", "2")
            opened = await s.log.wait_for(lambda e: e.symbol == "BTCUSDT")
            assert trio.current_time() - opened_at <= 5.5  # one position/list interval
            assert (opened.source, opened.size, opened.side) == ("rest", Decimal("2"), "Buy")
            moved_at = trio.current_time()
            sim.control.set_mark_price("BTCUSDT", "61234.5")
            moved = await s.log.wait_for(lambda e: e.mark_price == Decimal("61234.5"))
            assert trio.current_time() - moved_at <= 1.5  # the per-second ticker poll
            assert moved.source == "rest"
            sim.control.close_position("BTCUSDT")
            closed = await s.log.wait_for(lambda e: isinstance(e, PositionClosed))
            assert closed.source == "rest"
            assert sources(s) == {"rest"}
            assert sim.observe.opened_count() == 0  # no WebSocket ever
            health = rollout(s)
            assert (health["mode"], health["active"]) == ("rest", "rest")
            assert health["rest_position_polls"] >= 1 and health["rest_ticker_polls"] >= 1
            # what the consumer got is counted (hybrid_events_total{event,source="rest"})
            by_event = s.stream.health().events["by_event"]
            assert by_event["position.update"]["rest"] >= 2 and by_event["position.closed"]["rest"] == 1
            # within Bybit's limits: about one tickers call per second, one position/list per 5 s
            elapsed = trio.current_time()
            assert len(sim.observe.rest_calls("/v5/market/tickers")) <= elapsed + 2
            assert len(sim.observe.rest_calls("/v5/position/list")) <= 2 * (elapsed / 5 + 2)  # USDT + USDC


async def test_rest_mode_rides_out_a_rest_outage(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with running(sim_config(), mode="rest") as s:
            sim = s.sim
            sim.control.open_position("ETHUSDT", "Sell", "3")
            await s.log.wait_for(lambda e: e.symbol == "ETHUSDT")
            sim.control.rest_http_error(503, count=12)
            sim.control.set_mark_price("ETHUSDT", "3100")
            await s.log.wait_for(lambda e: e.mark_price == Decimal("3100"))
            assert s.hub.health.actors["rest"].outages >= 1
            assert sources(s) == {"rest"}


@pytest.mark.parametrize("mode", ["canary", "parallel"])
async def test_canary_and_parallel_feed_rest_while_hybrid_runs_beside_it(loopback_clock, mode):
    with trio.fail_after(TEST_TIMEOUT):
        async with running(sim_config(), mode=mode) as s:
            sim = s.sim
            sim.control.open_position("BTCUSDT", "Buy", "1")
            sim.control.open_position("ETHUSDT", "Sell", "2")
            await s.wait_subscriptions_match_positions()  # the hybrid stream is up and subscribed
            await eventually(lambda: len(s.hub.combiner.book) == 2)
            await s.log.wait_for(lambda e: e.symbol == "ETHUSDT")
            sim.control.set_mark_price("BTCUSDT", "60001")
            await s.log.wait_for(lambda e: e.mark_price == Decimal("60001"))
            # the hybrid combiner saw the live tick; the consumer got only REST
            assert s.hub.combiner.marks[("linear", "BTCUSDT")].price == Decimal("60001")
            assert sources(s) == {"rest"}
            assert {p.symbol for p in s.stream.positions()} == {"BTCUSDT", "ETHUSDT"}
            health = rollout(s)
            assert (health["mode"], health["active"]) == (mode, "rest")
            assert s.stream.health().connections["private"]["connected"]


@pytest.mark.parametrize("mode,cutover", [("canary", 100), ("parallel", 100), ("production", 50)])
async def test_consumer_event_counts_are_what_the_consumer_was_handed(loopback_clock, mode, cutover):
    """``events.by_event`` (and so ``hybrid_events_total``) counts the events handed to the
    consumer, whichever source fed it; the hybrid combiner's own counts, which in canary and
    parallel it only monitors, are ``hybrid_by_event`` beside them, never added in."""
    symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"]
    with trio.fail_after(TEST_TIMEOUT):
        async with running(sim_config(), mode=mode, rollout=RolloutPolicy(cutover_percent=cutover)) as s:
            sim = s.sim
            for symbol in symbols:
                sim.control.open_position(symbol, "Buy", "1")
            await s.wait_subscriptions_match_positions()
            await eventually(lambda: {e.symbol for e in s.log.events} == set(symbols))
            for n in range(3):
                for symbol in symbols:
                    sim.control.set_mark_price(symbol, sim.observe.mark_price("linear", symbol) + n + 1)
                await trio.sleep(2)
            sim.control.close_position("BTCUSDT")
            await s.log.wait_for(lambda e: isinstance(e, PositionClosed))
            await eventually(lambda: s.stream.health().events["emitted"] == len(s.log.events))
            events = s.stream.health().events
            delivered: dict[str, dict[str, int]] = {}
            for e in s.log.events:
                by_source = delivered.setdefault(e.name, {})
                by_source[e.source] = by_source.get(e.source, 0) + 1
            assert events["by_event"] == delivered
            assert sum(sum(v.values()) for v in events["by_event"].values()) == events["emitted"]
            hybrid = events["hybrid_by_event"]
            assert sum(sum(v.values()) for v in hybrid.values()) == events["hybrid_emitted"] > 0
            if mode != "production":
                assert set(sources(s)) == {"rest"}


async def test_production_cutover_sends_the_hashed_share_through_hybrid_and_the_rest_through_rest(loopback_clock):
    symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "DOGEUSDT", "SYM001USDT", "SYM002USDT", "SYM003USDT"]
    hybrid = {s for s in symbols if routes_hybrid(("linear", s, 0), 50)}
    assert 0 < len(hybrid) < len(symbols)  # the test needs both kinds
    with trio.fail_after(TEST_TIMEOUT):
        async with running(sim_config(), rollout=RolloutPolicy(cutover_percent=50)) as s:
            sim = s.sim
            for symbol in symbols:
                sim.control.open_position(symbol, "Buy", "1")
            await s.wait_subscriptions_match_positions()
            await eventually(lambda: {e.symbol for e in s.log.events} == set(symbols))
            mark = s.log.mark()
            for n, symbol in enumerate(symbols):
                price = sim.observe.mark_price("linear", symbol) + n + 1
                sim.control.set_mark_price(symbol, price)
            await eventually(lambda: {e.symbol for e in s.log.events[mark:]} == set(symbols))
            for symbol in symbols:
                got = {e.source for e in s.log.of(symbol)}
                if symbol in hybrid:
                    assert "rest" not in got and "ticker" in got, (symbol, got)
                else:
                    assert got == {"rest"}, (symbol, got)
            assert rollout(s)["cutover_percent"] == 50 and rollout(s)["active"] == "hybrid"


async def test_production_at_full_cutover_makes_no_rest_position_polls(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with running(sim_config(rate=5.0)) as s:
            sim = s.sim
            sim.control.open_position("BTCUSDT", "Buy", "1")
            await s.log.wait_for(lambda e: e.source == "ticker")
            before = len(sim.observe.rest_calls("/v5/position/list"))
            await trio.sleep(12)
            assert len(sim.observe.rest_calls("/v5/position/list")) == before  # only the reconciler's, every 5 min
            assert sources(s) <= {"position", "ticker", "rest"} and "ticker" in sources(s)
            assert rollout(s)["rest_position_polls"] == 0


# --- parallel: the comparator ----------------------------------------------------------------------------

@pytest.mark.parametrize("skew,flagged", [("2", True), ("0.1", False)])
async def test_parallel_comparator_flags_a_two_percent_divergence_and_not_a_tenth(loopback_clock, skew, flagged):
    with trio.fail_after(TEST_TIMEOUT):
        async with running(sim_config(), mode="parallel") as s:
            sim = s.sim
            sim.control.open_position("BTCUSDT", "Buy", "1")
            sim.control.open_position("ETHUSDT", "Buy", "1")
            await s.wait_subscriptions_match_positions()
            await eventually(lambda: rollout(s)["comparisons"] >= 4)
            assert rollout(s)["divergences"] == 0
            sim.control.set_rest_divergence(skew, symbol="ETHUSDT")
            start = rollout(s)["comparisons"]
            await eventually(lambda: rollout(s)["comparisons"] >= start + 10)
            health = rollout(s)
            if flagged:
                assert health["divergences"] >= 4
                assert Decimal("0.0195") < Decimal(health["divergence_max_ratio"]) < Decimal("0.0205")
                assert health["last_divergence"]["symbol"] == "ETHUSDT"
            else:
                assert health["divergences"] == 0
                assert Decimal(health["divergence_max_ratio"]) < Decimal("0.0015")


async def test_parallel_comparator_compares_a_hedged_symbol_once_per_round(loopback_clock):
    """Marks are per symbol: the two legs of a hedge-mode symbol (positionIdx 1 and 2) are
    one comparison per REST ticker round, not two (which doubled its divergence count)."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running(sim_config(), mode="parallel") as s:
            sim = s.sim
            sim.control.open_position("BTCUSDT", "Buy", "1", position_idx=1)
            sim.control.open_position("BTCUSDT", "Sell", "2", position_idx=2)
            sim.control.open_position("ETHUSDT", "Buy", "1")
            await s.wait_subscriptions_match_positions()
            await eventually(lambda: len(s.hub.combiner.book) == 3 and rollout(s)["comparisons"] >= 4)
            sim.control.set_rest_divergence("2", symbol="BTCUSDT")
            before = rollout(s)
            await eventually(lambda: rollout(s)["rest_ticker_polls"] >= before["rest_ticker_polls"] + 10)
            after = rollout(s)
            rounds = after["rest_ticker_polls"] - before["rest_ticker_polls"]
            assert after["comparisons"] - before["comparisons"] == 2 * rounds  # BTCUSDT and ETHUSDT
            divergent = after["divergences"] - before["divergences"]
            assert rounds - 1 <= divergent <= rounds  # BTCUSDT once a round (the first may predate the skew)


# --- production: never a stale price -----------------------------------------------------------------------

async def test_stale_marks_come_from_rest_while_the_public_endpoint_refuses_then_live_ticks_return(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with running(sim_config()) as s:
            sim = s.sim
            sim.control.open_position("BTCUSDT", "Buy", "1")
            await s.wait_subscriptions_match_positions()
            sim.control.set_mark_price("BTCUSDT", "60000")
            await s.log.wait_for(lambda e: e.source == "ticker" and e.mark_price == Decimal("60000"))
            sim.control.reject_connections(None, status=503, target="linear")
            sim.control.drop_public("linear")
            await sim.observe.wait_until(lambda: not sim.observe.open_connections("linear"))
            await trio.sleep(4)  # past stale_after
            ages = []
            for n in range(5):
                changed_at = trio.current_time()
                price = Decimal(60010 + n * 10)
                sim.control.set_mark_price("BTCUSDT", price)  # nobody subscribed: only REST can tell
                event = await s.log.wait_for(lambda e, p=price: e.mark_price == p)
                ages.append(trio.current_time() - changed_at)
                assert event.source == "rest"
                await trio.sleep(1.7)
            assert max(ages) <= 2.0, ages
            assert "linear:BTCUSDT" in rollout(s)["stale_fallback"]
            quiet = s.log.mark()
            await trio.sleep(5)
            assert s.log.events[quiet:] == []  # the REST mark did not change: nothing emitted
            sim.control.clear_faults()
            await s.wait_subscriptions_match_positions()
            sim.control.set_mark_price("BTCUSDT", "60500")
            live = await s.log.wait_for(lambda e: e.mark_price == Decimal("60500"))
            assert live.source == "ticker"
            await eventually(lambda: rollout(s)["stale_fallback"] == [])


# --- rollback triggers ------------------------------------------------------------------------------------------

def rolled_back(s: Stack) -> bool:
    return s.hub.switch.rolled_back


async def wait_routing(s: Stack, *, rolled: bool = True) -> float:
    """Until the consumer is rolled back to REST (``rolled``) or returned to hybrid, and its
    notice is in the log; the (virtual) time the switch flipped. Waits on the switch's and
    the log's change events, so it is exact and costs no clock jumps polling."""
    while rolled_back(s) != rolled:
        await s.hub.switch.changed.wait()
    at = trio.current_time()
    notice = "stream.rollback" if rolled else "stream.return"
    await s.log.wait_until(lambda: rollout_notices(s)[-1:] and rollout_notices(s)[-1].event == notice)
    return at


async def wait_rollback(s: Stack) -> float:
    return await wait_routing(s, rolled=True)


async def test_disconnect_trigger_fires_at_its_threshold_and_not_before(loopback_clock):
    policy = RolloutPolicy(rollback_after_disconnect=120.0, stale_after=None)
    with trio.fail_after(LONG):
        async with running(sim_config(), rollout=policy) as s:
            sim = s.sim
            sim.control.open_position("BTCUSDT", "Buy", "1")
            await s.wait_subscriptions_match_positions()
            sim.control.reject_connections(None, status=503)
            sim.control.drop("all")
            await eventually(lambda: not any(l["connected"] for l in s.stream.health().connections.values()))
            down_at = max(st.disconnected_at for st in s.hub.health.links.values())
            await trio.sleep_until(down_at + 119.0)
            assert not rolled_back(s)
            at = await wait_rollback(s)
            assert 120.0 < at - down_at <= 120.5
            assert "every socket disconnected" in rollout(s)["last_rollback_reason"]
            # the consumer now gets REST
            mark = s.log.mark()
            sim.control.set_mark_price("BTCUSDT", "61000")
            event = await s.log.wait_for(lambda e: e.mark_price == Decimal("61000"), after=mark)
            assert event.source == "rest"


async def test_silence_trigger_fires_at_its_threshold_while_positions_are_open(loopback_clock):
    policy = RolloutPolicy(rollback_after_silence=100.0, rollback_after_disconnect=None, stale_after=None)
    with trio.fail_after(LONG):
        async with running(sim_config(), rollout=policy) as s:
            sim = s.sim
            await trio.sleep(150)  # no positions: silence does not count
            assert not rolled_back(s)
            sim.control.open_position("BTCUSDT", "Buy", "1")
            await s.log.wait_for(lambda e: e.symbol == "BTCUSDT")
            await s.wait_subscriptions_match_positions()
            await eventually(lambda: s.hub.health.last_event_at is not None and len(s.hub.combiner.book) == 1)
            # rate 0 alone is a quiet market, not silence: a resubscribe of the quiet topic is
            # answered by a snapshot frame, a sign of life. A frozen feed sends nothing.
            sim.control.stop_ticker("BTCUSDT")
            await trio.sleep(0.1)
            last = max(s.hub.health.last_event_at, s.hub.activity["linear"].get("BTCUSDT", -1.0))
            await trio.sleep_until(last + 99.0)
            assert s.hub.health.last_event_at <= last  # truly silent: no event, no frame
            assert s.hub.activity["linear"].get("BTCUSDT", -1.0) <= last
            assert not rolled_back(s)
            at = await wait_rollback(s)
            assert 100.0 < at - last <= 100.5
            assert "no events for" in rollout(s)["last_rollback_reason"]


async def test_subscription_failure_trigger_fires_past_n_failures_in_an_hour(loopback_clock):
    policy = RolloutPolicy(rollback_sub_failures=3, stale_after=None)
    with trio.fail_after(LONG):
        async with running(sim_config(), rollout=policy) as s:
            sim = s.sim
            sim.control.reject_subscribes("ETHUSDT", None)
            sim.control.open_position("ETHUSDT", "Buy", "1")
            await eventually(lambda: len(s.hub.health.subscription_failures) >= 3 or rolled_back(s))
            assert not rolled_back(s) or len(s.hub.health.subscription_failures) > 3
            await eventually(lambda: len(s.hub.health.subscription_failures) >= 4)
            await wait_rollback(s)
            assert "4 subscription failures" in rollout(s)["last_rollback_reason"]


async def test_crash_loop_rolls_back_and_the_consumer_keeps_getting_events(loopback_clock, monkeypatch):
    from hybrid_actors import RestartPolicy
    from hybrid_actors.actors import public_ws

    def always_broken(*_args, **_kwargs):
        raise ZeroDivisionError("a bug in frame handling")

    with trio.fail_after(LONG):
        async with running(sim_config(), restart=RestartPolicy(max_restarts=3, window=60.0, backoff_max=1.0)) as s:
            sim = s.sim
            sim.control.open_position("BTCUSDT", "Buy", "1")
            await s.wait_subscriptions_match_positions()
            monkeypatch.setattr(public_ws, "decode_hot", always_broken)
            sim.control.set_mark_price("BTCUSDT", "60100")
            await wait_rollback(s)
            assert "crash loop: actor public:linear" in rollout(s)["last_rollback_reason"]
            await eventually(lambda: rollout_notices(s))
            assert [n.event for n in rollout_notices(s)] == ["stream.rollback"]
            assert "crash loop" in rollout_notices(s)[0].reason
            mark = s.log.mark()
            sim.control.set_mark_price("BTCUSDT", "60200")
            event = await s.log.wait_for(lambda e: e.mark_price == Decimal("60200"), after=mark)
            assert event.source == "rest"
            sim.control.open_position("ETHUSDT", "Sell", "4")
            opened = await s.log.wait_for(lambda e: e.symbol == "ETHUSDT", after=mark)
            assert (opened.source, opened.size) == ("rest", Decimal("4"))


# --- across a rollback and a return: nothing lost, nothing doubled ----------------------------------------------

def lifecycle_history(events) -> dict[tuple, list]:
    """Per position, the lifecycle states the consumer was shown, in order."""
    history: dict[tuple, list] = {}
    for event in events:
        state = None if isinstance(event, PositionClosed) else (event.side, event.size, event.entry_price)
        states = history.setdefault(event.key, [])
        if not states or states[-1] != state:
            states.append(state)
    return history


def observed(event) -> tuple:
    """What a consumer sees of an update, its timestamps and source aside."""
    return (event.side, event.size, event.entry_price, event.mark_price, event.unrealized_pnl, event.leverage,
            event.liq_price, event.take_profit, event.stop_loss, event.trailing_stop, event.cum_realised_pnl)


def check_no_doubles(events) -> None:
    """No open of an open position, no close of a closed one, and no position or REST update
    that tells the consumer nothing it did not have: one that keeps side, size and entry
    must bring a new mark, PnL or record field (a mark-only REST update), else it is a double."""
    last: dict[tuple, tuple] = {}
    for event in events:
        if isinstance(event, PositionClosed):
            assert event.key in last, f"close of a position the consumer did not have: {event}"
            del last[event.key]
            continue
        now = observed(event)
        if event.source in ("position", "rest"):
            assert last.get(event.key) != now, f"a doubled update, the consumer already had all of it: {event}"
        last[event.key] = now


async def test_no_lifecycle_event_lost_or_doubled_across_a_rollback_and_a_return(loopback_clock):
    policy = RolloutPolicy(rollback_after_disconnect=20.0, auto_return=30.0, stale_after=None)
    with trio.fail_after(LONG):
        async with running(sim_config(), rollout=policy) as s:
            sim, ctl = s.sim, s.sim.control
            ctl.open_position("BTCUSDT", "Buy", "1")
            ctl.open_position("ETHUSDT", "Sell", "2")
            await s.wait_subscriptions_match_positions()
            await eventually(lambda: {e.symbol for e in s.log.events} == {"BTCUSDT", "ETHUSDT"})
            # roll back: every socket down for more than 20 s
            ctl.reject_connections(None, status=503)
            ctl.drop("all")
            await wait_rollback(s)
            # lifecycle while on REST, spaced beyond the 5 s REST interval
            ctl.open_position("SOLUSDT", "Buy", "7")
            await s.log.wait_for(lambda e: e.symbol == "SOLUSDT")
            ctl.modify_position("BTCUSDT", size="3")
            await s.log.wait_for(lambda e: e.symbol == "BTCUSDT" and e.size == Decimal("3"))
            ctl.close_position("ETHUSDT")
            await s.log.wait_for(lambda e: e.symbol == "ETHUSDT" and isinstance(e, PositionClosed))
            assert sources(s, s.log.mark() - 3) == {"rest"}
            # the exchange comes back; 30 s of health later the consumer returns to hybrid
            ctl.clear_faults()
            await s.wait_subscriptions_match_positions()
            await wait_routing(s, rolled=False)
            returned = s.log.mark()
            ctl.open_position("XRPUSDT", "Buy", "5")
            ctl.close_position("SOLUSDT")
            await s.log.wait_for(lambda e: e.symbol == "XRPUSDT", after=returned)
            await s.log.wait_for(lambda e: e.symbol == "SOLUSDT" and isinstance(e, PositionClosed), after=returned)
            ctl.set_mark_price("XRPUSDT", sim.observe.mark_price("linear", "XRPUSDT") + 1)
            live = await s.log.wait_for(lambda e: e.symbol == "XRPUSDT" and e.source == "ticker", after=returned)
            assert live.source == "ticker"
            assert {e.source for e in s.log.events[returned:]} <= {"position", "ticker"}
            events = s.log.events
            check_no_doubles(events)
            # side and size of every state each position went through, in order (None: closed);
            # entries as the exchange has them, which a resize may move
            history = lifecycle_history(events)
            assert {key: [state and state[:2] for state in states] for key, states in history.items()} == {
                ("linear", "BTCUSDT", 0): [("Buy", Decimal("1")), ("Buy", Decimal("3"))],
                ("linear", "ETHUSDT", 0): [("Sell", Decimal("2")), None],
                ("linear", "SOLUSDT", 0): [("Buy", Decimal("7")), None],
                ("linear", "XRPUSDT", 0): [("Buy", Decimal("5"))],
            }
            assert all(type(state[2]) is Decimal for states in history.values() for state in states if state)
            health = rollout(s)
            assert (health["rollbacks"], health["returns"], health["active"]) == (1, 1, "hybrid")
            # the notices went out on the event stream, in order with the position events
            notices = rollout_notices(s)
            assert [n.event for n in notices] == ["stream.rollback", "stream.return"]
            assert "every socket disconnected" in notices[0].reason
            assert notices[0].to_json()["event"] == "stream.rollback"
            order = [e for e in s.log.everything if e.event not in ("stream.state", "stream.alert")]
            rollback_at, return_at = order.index(notices[0]), order.index(notices[1])
            assert all(e.source == "rest" for e in order[rollback_at + 1:return_at])
            assert all(e.source != "rest" for e in order[return_at + 1:])
            # and the critical alert (h11-observe's rules over health()['rollout']) fired with the reason
            alerts = [n for n in s.log.notices if n.event == "stream.alert" and n.name == "rolled_back"]
            assert alerts and (alerts[0].level, alerts[0].state) == ("critical", "firing")
            assert "every socket disconnected" in alerts[0].message
            assert {p.symbol for p in s.stream.positions()} == {"BTCUSDT", "XRPUSDT"}


async def test_auto_return_does_not_flap_while_the_sockets_keep_dropping(loopback_clock):
    policy = RolloutPolicy(rollback_after_disconnect=10.0, auto_return=30.0, stale_after=None,
                           ticker_interval=5.0, rest_interval=30.0)
    with trio.fail_after(LONG):
        async with running(sim_config(), rollout=policy) as s:
            ctl = s.sim.control
            ctl.open_position("BTCUSDT", "Buy", "1")
            await s.wait_subscriptions_match_positions()
            ctl.reject_connections(None, status=503)
            ctl.drop("all")
            await wait_rollback(s)
            ctl.clear_faults()
            for _ in range(4):  # up ~20 s, then a drop: never 30 s of health
                await s.wait_subscriptions_match_positions()
                await trio.sleep(20)
                ctl.drop("all")
            assert s.hub.switch.returns == 0 and rolled_back(s)
            await s.wait_subscriptions_match_positions()
            await wait_routing(s, rolled=False)
            healthy_for = s.hub.switch.returned_at - s.hub.rollout.gate.healthy_since
            assert 30.0 <= healthy_for <= 31.0  # 30 s of uninterrupted health, then back
            assert [n.event for n in rollout_notices(s)] == ["stream.rollback", "stream.return"]
            assert (s.hub.switch.rollbacks, s.hub.switch.returns) == (1, 1)


# --- silence: what it is, and what it is not --------------------------------------------------------------------

def alert_notices(s: Stack, name: str) -> list:
    return [n for n in s.log.notices if n.event == "stream.alert" and n.name == name]


async def test_a_quiet_market_whose_ticker_frames_keep_coming_is_not_silent_but_a_frozen_feed_is(loopback_clock):
    from hybrid_actors.config import AlertPolicy

    policy = RolloutPolicy(rollback_after_silence=100.0)  # stale_after as by default (3 s)
    with trio.fail_after(LONG):
        async with running(sim_config(), rollout=policy, alerts=AlertPolicy(no_events_critical=100.0)) as s:
            ctl = s.sim.control
            ctl.open_position("BTCUSDT", "Buy", "1")
            await s.wait_subscriptions_match_positions()
            await s.log.wait_for(lambda e: e.symbol == "BTCUSDT" and e.source == "ticker")
            price = s.sim.observe.mark_price("linear", "BTCUSDT")
            events = s.log.mark()
            for _ in range(50):  # 250 s of a live ticker whose mark does not move: a frame every 5 s
                ctl.set_mark_price("BTCUSDT", price)
                await trio.sleep(5)
            assert s.log.mark() == events  # no event all along: an unchanged mark makes none
            assert trio.current_time() - s.hub.activity["linear"]["BTCUSDT"] <= 5.0
            assert not rolled_back(s) and not alert_notices(s, "no_events")
            # the feed freezes (socket up, no frame): that is silence, from its last frame on
            ctl.stop_ticker("BTCUSDT")
            await trio.sleep(0.1)
            last_frame = s.hub.activity["linear"]["BTCUSDT"]
            at = await wait_rollback(s)
            assert 100.0 < at - last_frame <= 101.5
            assert "no events for" in rollout(s)["last_rollback_reason"]
            assert await s.log.wait_until(lambda: [n.state for n in alert_notices(s, "no_events")] == ["firing"])


async def open_then_freeze(s: Stack, symbol: str = "BTCUSDT") -> None:
    """A position open with its ticker live, then the ticker frozen: every socket stays up,
    no frame comes for it."""
    s.sim.control.open_position(symbol, "Buy", "1")
    await s.wait_subscriptions_match_positions()
    await s.log.wait_for(lambda e: e.symbol == symbol)
    s.sim.control.stop_ticker(symbol)


async def test_rest_fallback_marks_do_not_hide_a_dead_ticker_feed(loopback_clock):
    policy = RolloutPolicy(rollback_after_silence=100.0)  # stale_after 3 s: REST marks stand in
    with trio.fail_after(LONG):
        async with running(sim_config(), rollout=policy) as s:
            ctl = s.sim.control
            await open_then_freeze(s)
            await trio.sleep(0.1)
            last_frame = s.hub.activity["linear"]["BTCUSDT"]
            stopped = s.log.mark()
            with trio.move_on_after(200):
                while not rolled_back(s):  # the market moves; only the REST fallback can tell
                    ctl.set_mark_price("BTCUSDT", s.sim.observe.mark_price("linear", "BTCUSDT") + 1)
                    await trio.sleep(1)
            assert rolled_back(s), "REST fallback marks kept the silence trigger from firing"
            assert 100.0 < s.hub.switch.rolled_back_at - last_frame <= 101.5
            fallback = [e for e in s.log.events[stopped:] if e.source == "rest"]
            assert len(fallback) > 50  # the consumer was priced from REST meanwhile
            # and the stale fallback was reported once it had lasted 60 s (a warning)
            stale = alert_notices(s, "stale_fallback")
            assert stale and (stale[0].level, stale[0].state) == ("warning", "firing")
            assert "linear:BTCUSDT" in stale[0].message and 60.0 < stale[0].value <= 62.0


async def test_a_silence_rollback_returns_only_once_the_feed_is_back_and_does_not_flap(loopback_clock):
    policy = RolloutPolicy(rollback_after_silence=100.0, rollback_after_disconnect=None, stale_after=None,
                           auto_return=30.0)
    with trio.fail_after(LONG):
        async with running(sim_config(), rollout=policy) as s:
            ctl = s.sim.control
            await open_then_freeze(s)
            await wait_rollback(s)
            assert "no events for" in rollout(s)["last_rollback_reason"]
            await trio.sleep(300)  # sockets up and actors running all along, but still silent
            assert (s.hub.switch.rollbacks, s.hub.switch.returns) == (1, 0), [n.reason for n in rollout_notices(s)]
            ctl.start_ticker("BTCUSDT")  # the feed is back
            ctl.set_mark_price("BTCUSDT", s.sim.observe.mark_price("linear", "BTCUSDT") + 1)
            back = trio.current_time()
            returned = await wait_routing(s, rolled=False)
            assert 30.0 <= returned - back <= 32.0
            for _ in range(20):  # a live market after the return: no new rollback
                ctl.set_mark_price("BTCUSDT", s.sim.observe.mark_price("linear", "BTCUSDT") + 1)
                await trio.sleep(10)
            assert [n.event for n in rollout_notices(s)] == ["stream.rollback", "stream.return"]
            assert (s.hub.switch.rollbacks, s.hub.switch.returns) == (1, 1)
