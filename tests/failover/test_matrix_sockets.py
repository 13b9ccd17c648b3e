"""Fault matrix, sockets: every way a socket can go away, for each socket, and both at once.

Each row: positions change while the socket is gone; afterwards nothing is lost (final
positions equal the exchange's, every open and close seen in order), the other socket kept
its connection, and everything is back within the row's bound of the exchange being
healthy again (``RECOVERY`` = 5 s, issue 8's target, unless the row says otherwise).
"""

from __future__ import annotations

import pytest
import trio

from conftest import LOOPBACK_AUTOJUMP
from hybrid_actors import AuthRejected, RestartPolicy
from hybrid_actors.rollout import RolloutPolicy
from rig import KINDS, RECOVERY, rig, sim_config  # noqa: F401 (rig: the fixture)

pytestmark = [pytest.mark.integration, pytest.mark.failover]

SOCKETS = ("private", "public:linear")
TIMEOUT = 120  # virtual seconds per row unless it says otherwise
#: the heartbeat interval of the rows that need the heartbeat to find a half-open socket
HEARTBEAT = 5.0


@pytest.mark.parametrize("mode", ["close", "reset", "eof"])
@pytest.mark.parametrize("socket", SOCKETS)
async def test_a_dropped_socket_comes_back_alone_and_loses_nothing(rig, loopback_clock, socket, mode):
    with trio.fail_after(TIMEOUT):
        async with rig() as r:
            await r.open_two()
            before = r.sockets()
            r.sim.control.drop(KINDS[socket], mode)
            dropped_at = trio.current_time()
            r.change_positions()
            await r.came_back_alone(before, socket, since=dropped_at)


@pytest.mark.parametrize("socket", SOCKETS)
async def test_a_half_open_socket_is_found_by_the_heartbeat(rig, loopback_clock, socket):
    with trio.fail_after(TIMEOUT):
        async with rig(heartbeat_interval=HEARTBEAT) as r:
            await r.open_two()
            before = r.sockets()
            r.sim.control.half_open(KINDS[socket])
            frozen_at = trio.current_time()
            r.change_positions()
            # a ping at most one interval after the freeze, its pong deadline one later
            await r.came_back_alone(before, socket, since=frozen_at, bound=2 * HEARTBEAT + RECOVERY)


@pytest.mark.parametrize("socket", SOCKETS)
async def test_a_flapping_socket_comes_back_each_time(rig, loopback_clock, socket):
    with trio.fail_after(TIMEOUT * 2):
        async with rig() as r:
            await r.open_two()
            first = r.sockets()
            for flap in range(8):  # dropped as soon as it is back, eight times
                before = r.sockets()
                r.sim.control.drop(KINDS[socket], "reset")
                dropped_at = trio.current_time()
                symbol = ("SOLUSDT", "XRPUSDT")[flap % 2]
                r.open(symbol) if flap < 2 else r.resize(symbol, str(flap + 1))
                await r.recovered(RECOVERY, since=dropped_at, replaced=before, names=[socket])
            r.close("SOLUSDT")
            await r.settled()
            r.assert_kept(first, r.others(socket))
            await r.prices_flow()
            r.assert_nothing_lost()


@pytest.mark.parametrize("mode", ["close", "reset", "half_open"])
async def test_both_sockets_down_at_once(rig, loopback_clock, mode):
    with trio.fail_after(TIMEOUT):
        async with rig(heartbeat_interval=HEARTBEAT) as r:
            await r.open_two()
            before = r.sockets()
            r.sim.control.drop("all", mode)
            dropped_at = trio.current_time()
            r.change_positions()
            bound = RECOVERY + (2 * HEARTBEAT if mode == "half_open" else 0)
            await r.recovered(bound, since=dropped_at, replaced=before, names=r.link_names)
            await r.prices_flow()
            r.assert_nothing_lost()


async def _refused_for(r, target: str, seconds: float, status: int = 503) -> float:  # type: ignore[no-untyped-def]
    """Refuse every handshake on ``target`` for ``seconds``, cutting its sockets first;
    positions change meanwhile. Returns when the exchange accepts again."""
    r.sim.control.reject_connections(None, status=status, target=target)
    r.sim.control.drop(target, "reset")
    await trio.sleep(seconds / 2)
    r.change_positions()
    await trio.sleep(seconds / 2)
    r.sim.control.clear_faults()
    return trio.current_time()


def _refusals(r, kind: str) -> list[float]:  # type: ignore[no-untyped-def]
    path = "/v5/private" if kind == "private" else f"/v5/public/{kind}"
    return [h.at for h in r.sim.observe.handshakes() if h.path == path and h.status != 101]


@pytest.mark.parametrize("socket", SOCKETS)
async def test_handshakes_refused_for_seconds(rig, loopback_clock, socket):
    with trio.fail_after(TIMEOUT):
        async with rig() as r:
            await r.open_two()
            before = r.sockets()
            back_at = await _refused_for(r, KINDS[socket], 6.0)
            await r.came_back_alone(before, socket, since=back_at)


@pytest.mark.parametrize("socket", SOCKETS)
async def test_handshakes_refused_for_minutes(rig, loopback_clock, socket):
    outage = 120.0
    # With the public socket up, the REST stale-price fallback is not what the private row is
    # about: the quiet simulator's marks go stale after 3 s and it would poll every second of
    # the outage (113 of the row's 186 clock jumps). The public row keeps it: there it is
    # what feeds prices while the socket is refused.
    stream = {"rollout": RolloutPolicy(stale_after=None)} if socket == "private" else {}
    with trio.fail_after(outage + TIMEOUT):
        async with rig(**stream) as r:
            await r.open_two()
            before = r.sockets()
            back_at = await _refused_for(r, KINDS[socket], outage)
            refused = _refusals(r, KINDS[socket])
            # not a storm: Bybit allows 500 new connections per 5 minutes per IP
            assert len(refused) <= outage / 1.0, f"{len(refused)} refused attempts in {outage}s"
            await r.came_back_alone(before, socket, since=back_at)


async def test_every_socket_and_rest_refused_for_48_virtual_hours(rig, loopback_clock):
    """48 h of refusals on every socket and every REST call, then the exchange returns: the
    stream is alive and converges. The cap is 30 min here (and the reconciliation hourly)
    so that 48 h cost ~130 handshakes per socket (the default 4 s cap would make it ~58,000
    per socket, measured at ~1.2 ms of real time each: 2.3 min, 4 min with the REST polling
    of a rollback; the unit tests of backoff.py cover any attempt count);
    the bound after the outage is that cap plus ``RECOVERY``. Until the stream has
    recovered the clock jumps without waiting (threshold 0): while nothing but refusals
    happen an attempt cut short by a jump is one more refusal, and waiting out up to 30 min
    of backoff after the outage takes 7,200 of the rig's re-checks (``POLL``), 3.6 min of
    real time at 30 ms each; a rare jump made while the kernel is still delivering would
    cost the recovery at most one ``POLL`` of its 5 s margin. ~7 s of real time in all."""
    outage = 48 * 3600.0
    cap = 1800.0
    with trio.fail_after(outage + TIMEOUT + cap):
        async with rig(restart=RestartPolicy(backoff_max=cap), reconcile_interval=3600.0) as r:
            await r.open_two()
            before = r.sockets()
            r.sim.control.rest_http_error(503, count=None)
            loopback_clock.autojump_threshold = 0
            back_at = await _refused_for(r, "all", outage)
            assert all(r.hub.health.actors[n].state != "failed" for n in r.hub.health.actors)
            refused = {kind: len(_refusals(r, kind)) for kind in ("private", "linear")}
            assert all(n >= 48 * 3600 / cap for n in refused.values()), refused  # retried all along
            await r.recovered(cap + RECOVERY, since=back_at, replaced=before, names=r.link_names)
            loopback_clock.autojump_threshold = LOOPBACK_AUTOJUMP
            await r.prices_flow()
            r.assert_nothing_lost()


async def test_a_public_endpoint_refused_from_the_start_hides_no_position(rig, loopback_clock):
    positions = (("BTCUSDT", "Buy", "1"), ("ETHUSDT", "Sell", "2"))
    with trio.fail_after(60):
        async with rig(positions=positions,
                       arm=lambda sim: sim.control.reject_connections(None, status=503, target="linear")) as r:
            await r.wait_until(lambda: r.client_positions() == r.exchange_positions())
            for symbol in ("BTCUSDT", "ETHUSDT"):  # the recorder task may not have run yet
                await r.wait_event(lambda e, s=symbol: getattr(e, "symbol", None) == s)
            rest = [e for e in r.positions_events() if e.source == "rest"]
            assert {e.symbol for e in rest} == {"BTCUSDT", "ETHUSDT"}
            assert all(e.mark_price is not None for e in rest)  # REST markPrice until live prices
            r.open("SOLUSDT")  # pushes flow although no public socket is up
            await r.wait_event(lambda e: e.symbol == "SOLUSDT")
            before = r.sockets()
            r.sim.control.clear_faults()
            await r.came_back_alone(before, "public:linear", replaced=False)  # it never was up


async def test_one_refused_auth_is_retried_and_costs_only_the_private_socket(rig, loopback_clock):
    with trio.fail_after(TIMEOUT):
        async with rig() as r:
            await r.open_two()
            before = r.sockets()
            r.sim.control.fail_auth(1)
            r.sim.control.drop("private", "reset")
            dropped_at = trio.current_time()
            r.open("SOLUSDT", "Buy", "7")
            await r.came_back_alone(before, "private", since=dropped_at)
            assert len(r.sim.observe.auth_attempts(ok=False)) == 1


async def test_rejected_credentials_end_the_stream_loudly(rig, loopback_clock):
    with trio.fail_after(TIMEOUT):
        with pytest.raises(BaseExceptionGroup) as caught:  # the simulator's nursery wraps it
            async with rig() as r:
                await r.open_two()
                r.sim.control.fail_auth(None)
                r.sim.control.drop("private", "reset")
                await trio.sleep_forever()
    assert caught.group_contains(AuthRejected, match="auth rejected for key 'test…'")


async def test_the_private_idle_cut_costs_nothing(rig, loopback_clock):
    """Bybit cuts a private socket that saw no ping for ``max_active_time``; here pings are
    rarer than the cut, so it happens every 30 s."""
    with trio.fail_after(TIMEOUT):
        async with rig(sim=sim_config(default_max_active_time=30.0), heartbeat_interval=45.0) as r:
            await r.open_two()
            before = r.sockets()
            cut = await r.sim.observe.wait_until(
                lambda: [c for c in r.sim.observe.connections("private") if c.close_cause == "idle"])
            cut_at = cut[0].closed_at
            r.open("SOLUSDT", "Buy", "7")
            await r.came_back_alone(before, "private", since=cut_at)
