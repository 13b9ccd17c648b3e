"""Fault matrix, REST: every way ``/v5/position/list`` can fail while the private socket
reconnects (which is when the stream needs it: opens and closes pushed to nobody are
recovered from it).

Each row arms the fault, cuts the private socket, opens and closes positions while it is
down, and checks: nothing lost once REST answers again, the public socket untouched, the
private socket reconnected once (a REST outage does not churn a socket that works), and
recovery within the row's bound from the moment REST is healthy again.
"""

from __future__ import annotations

import pytest
import trio

from rig import RECOVERY, rig, sim_config  # noqa: F401 (rig: the fixture)

pytestmark = [pytest.mark.integration, pytest.mark.failover]

PATH = "/v5/position/list"
TIMEOUT = 180
#: Bybit: after HTTP 403 (and 10009, "IP banned") wait at least 10 minutes
BAN = 600.0


async def _while_private_is_down(r) -> float:  # type: ignore[no-untyped-def]
    """Cut the private socket; change positions while it reconnects. When the cut happened."""
    r.sim.control.drop("private", "reset")
    cut_at = trio.current_time()
    r.change_positions()
    return cut_at


def _calls(r) -> list:  # type: ignore[no-untyped-def]
    return r.sim.observe.rest_calls(PATH)


ERRORS = {
    # name: (arm, bound after the cut)
    "10002_timestamp": (lambda c: c.rest_error(10002, "invalid request, please check your server timestamp or "
                                                      "recv_window param", count=2, path=PATH), RECOVERY),
    "10006_rate_limit": (lambda c: c.rest_error(10006, "Too many visits!", count=2, path=PATH), 2 * RECOVERY),
    "5xx": (lambda c: c.rest_http_error(502, count=3, path=PATH), 2 * RECOVERY),
    "timeout": (lambda c: c.rest_hang(30.0, count=2, path=PATH), 2 * 3.0 + 2 * RECOVERY),
    "missing_page": (lambda c: c.rest_http_error(503, count=2, path=PATH, query="settleCoin=USDC"), 2 * RECOVERY),
    "exchange_error_10016": (lambda c: c.rest_error(10016, "Internal System Error", count=3, path=PATH),
                             2 * RECOVERY),
}


@pytest.mark.parametrize("error", list(ERRORS))
async def test_a_failing_snapshot_is_retried_and_loses_nothing(rig, loopback_clock, error):
    """``missing_page``: the USDT page answers, the USDC page of the same snapshot fails;
    a snapshot with a page missing must not be taken as the whole truth (it would close
    whatever was on that page)."""
    arm, bound = ERRORS[error]
    with trio.fail_after(TIMEOUT):
        async with rig(rest_timeout=3.0) as r:
            r.open("BTCPERP")  # a USDC-settled position: on the page that goes missing
            await r.open_two()
            before = r.sockets()
            mark = r.mark()
            failures = r.hub.rest.failures
            arm(r.sim.control)
            cut_at = await _while_private_is_down(r)
            await r.recovered(bound, since=cut_at, replaced=before, names=["private"])
            r.assert_kept(before, ["public:linear"])
            assert r.hub.links.generation("private") == before.generations["private"] + 1  # no churn
            assert r.hub.health.actors["private"].crashes == 0
            assert not [e for e in r.positions_events(mark) if e.symbol == "BTCPERP"], "BTCPERP closed by mistake"
            statuses = [(c.status, c.ret_code) for c in _calls(r)]
            assert r.hub.rest.failures > failures or any(s != (200, 0) for s in statuses), statuses  # it did fail
            r.assert_nothing_lost()


@pytest.mark.parametrize("ban", ["http_403", "ret_code_10009"])
async def test_an_ip_ban_keeps_us_off_rest_for_ten_minutes_then_heals(rig, loopback_clock, ban):
    with trio.fail_after(BAN + TIMEOUT):
        async with rig(rest_timeout=3.0) as r:
            await r.open_two()
            before = r.sockets()
            if ban == "http_403":
                r.sim.control.rest_http_error(403, count=1, path=PATH)
            else:
                r.sim.control.rest_error(10009, "IP has been banned", count=1, path=PATH)
            await _while_private_is_down(r)
            first = await r.sim.observe.wait_until(lambda: [c for c in _calls(r) if c.status == 403 or c.ret_code == 10009])
            banned_at = first[0].at
            calls = len(r.sim.observe.rest_calls())
            await trio.sleep(BAN - 10)
            assert len(r.sim.observe.rest_calls()) == calls, "REST called during the ban"
            assert r.hub.health.actors["private"].crashes == 0
            await r.recovered(BAN + RECOVERY, since=banned_at)
            assert r.hub.links.generation("private") == before.generations["private"] + 1  # kept through the ban
            r.assert_kept(before, ["public:linear"])
            r.assert_nothing_lost()


@pytest.mark.parametrize("paging", ["last_page_cursor", "repeat_last_page"])
async def test_a_last_page_with_a_cursor_ends_paging_without_a_storm(rig, loopback_clock, paging):
    """The last page carries a cursor; following it answers an empty page (or the same rows)
    with the same cursor again. Paging stops there: a handful of requests, nothing lost."""
    with trio.fail_after(TIMEOUT):
        async with rig(arm=lambda sim: sim.control.set_account(paging=paging)) as r:
            await r.open_two()
            before = r.sockets()
            calls = len(_calls(r))
            cut_at = await _while_private_is_down(r)
            await r.recovered(RECOVERY, since=cut_at, replaced=before, names=["private"])
            # two settle coins, each: its page, then its cursor once
            assert len(_calls(r)) - calls <= 4, [(c.query, c.ret_code) for c in _calls(r)[calls:]]
            r.assert_kept(before, ["public:linear"])
            r.assert_nothing_lost()
